"""The probe's two timing loops: compiled (the default where built) and Python.

Both time every call on its own and return one sample per call; `measure` uses whichever
the run chose, for the collectives, the pairwise ping-pongs and their no-op calibrations
alike. A ping-pong sample is one round trip (Send, then Recv) timed on the side that starts
it; the answering side (Recv, then Send) runs the same loop untimed.

- **python**: `perf_counter()` around one mpi4py call per iteration (numpy buffers, no
  pickling). Between two calls the interpreter and mpi4py's argument handling run for about
  0.4 µs; that delay and its footprint in the caches slow the next small collective itself,
  which no calibration can subtract (see docs/probe.md): corrected 8-byte figures stay
  1.2–1.4 × a C loop's.
- **compiled**: the C extension `_timedloop` runs the loop. The communicators, datatypes,
  ops and numpy buffers are mpi4py's and numpy's; Python resolves the MPI functions' addresses
  in the very library mpi4py loaded (through the mpi4py extension module's own dependency
  list, so it can never pick another MPI) and passes the handles mpi4py holds. Nothing runs
  between two calls but the clock reads, as in a C benchmark.

`choose` turns `--timer auto|compiled|python` into a `Timer`; `auto` falls back to python
(with a warning) where the extension was not built or the MPI functions cannot be found.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

log = logging.getLogger("hpcobs.probe")

TimerName = Literal["compiled", "python"]
TIMER_CHOICES = ("auto", "compiled", "python")

# the extension's call kinds (see _timedloop.c)
KIND_BARRIER, KIND_BCAST, KIND_ALLREDUCE, KIND_EXCHANGE, KIND_REDUCE_SCATTER, KIND_TEST = range(6)
KIND_PING, KIND_PONG = 6, 7

_MPI_FUNCTIONS = {
    "barrier": ("MPI_Barrier", KIND_BARRIER),
    "bcast": ("MPI_Bcast", KIND_BCAST),
    "allreduce": ("MPI_Allreduce", KIND_ALLREDUCE),
    "allgather": ("MPI_Allgather", KIND_EXCHANGE),
    "alltoall": ("MPI_Alltoall", KIND_EXCHANGE),
    "reduce_scatter": ("MPI_Reduce_scatter", KIND_REDUCE_SCATTER),
}


class TimerUnavailable(RuntimeError):
    """The compiled loop cannot run here; the message says why."""


def load_extension() -> ModuleType:
    try:
        return importlib.import_module("hpcobs.exporters.probe._timedloop")
    except ImportError as exc:
        raise TimerUnavailable(
            "the compiled timing loop (hpcobs.exporters.probe._timedloop) is not built: "
            "reinstall hpcobs where a C compiler is available"
        ) from exc


# -- the two loops ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonCall:
    """One mpi4py call bound to its (buffer, datatype) messages."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]

    def run(self, n: int) -> list[float]:
        fn, args, pc = self.fn, self.args, time.perf_counter
        out = [0.0] * n
        for i in range(n):
            t0 = pc()
            fn(*args)
            out[i] = pc() - t0
        return out


@dataclass(frozen=True)
class PythonPingPong:
    """One side of a ping-pong in mpi4py. The side that starts it (`answer=False`) times
    each round trip: Send, then Recv. The answering side runs Recv, then Send, untimed
    (zeros). `delay` (a test hook, never in production) sleeps once per round trip: inside
    the timed window on the starting side, between the Recv and the Send on the other."""

    send: Callable[..., Any]
    recv: Callable[..., Any]
    message: tuple[Any, Any]
    peer: int
    tag: int
    answer: bool = False
    delay: float = 0.0

    def run(self, n: int) -> list[float]:
        send, recv, message, peer, tag = self.send, self.recv, self.message, self.peer, self.tag
        delay, sleep, pc = self.delay, time.sleep, time.perf_counter
        out = [0.0] * n
        if self.answer:
            for _ in range(n):
                recv(message, peer, tag)
                if delay:
                    sleep(delay)
                send(message, peer, tag)
            return out
        for i in range(n):
            t0 = pc()
            if delay:
                sleep(delay)
            send(message, peer, tag)
            recv(message, peer, tag)
            out[i] = pc() - t0
        return out


@dataclass(frozen=True)
class CompiledCall:
    """One MPI function bound to integer arguments, run by the extension."""

    extension: ModuleType
    kind: int
    handle_bytes: int
    address: int
    args: tuple[int, ...]
    keep: tuple[Any, ...]  # the buffers and handles' owners the addresses point into
    error: Callable[[int], Exception]

    def run(self, n: int) -> list[float]:
        if n <= 0:
            return []
        import numpy as np

        out = np.empty(n, dtype=np.float64)
        rc = self.extension.run(self.kind, self.handle_bytes, self.address, self.args, out)
        if rc:
            raise self.error(rc)
        return list(out.tolist())


Call = PythonCall | PythonPingPong | CompiledCall


class PythonTimer:
    name: TimerName = "python"

    def __init__(self, mpi: ModuleType) -> None:
        self.MPI = mpi

    def _spec(self, array: Any, datatype: Any) -> tuple[Any, Any]:
        """(buffer, datatype): mpi4py does less per call for this form than for a bare
        ndarray (no buffer-format lookup)."""
        return (self.MPI.buffer(array), datatype)

    def collective(
        self, comm: Any, op: str, send: Any, recv: Any, size: int, counts: Sequence[int]
    ) -> Call:
        mpi, spec, n = self.MPI, self._spec, comm.Get_size()
        if op == "barrier":
            return PythonCall(comm.Barrier, ())
        if op == "bcast":
            return PythonCall(comm.Bcast, (spec(send[:size], mpi.BYTE),))
        if op == "allreduce":
            return PythonCall(
                comm.Allreduce, (spec(send[:size], mpi.DOUBLE), spec(recv[:size], mpi.DOUBLE))
            )
        if op in ("allgather", "alltoall"):
            fn = comm.Allgather if op == "allgather" else comm.Alltoall
            sent = size if op == "allgather" else size * n
            return PythonCall(fn, (spec(send[:sent], mpi.BYTE), spec(recv[: size * n], mpi.BYTE)))
        if op == "reduce_scatter":
            mine = counts[comm.Get_rank()] * 8
            return PythonCall(
                comm.Reduce_scatter,
                (spec(send[:size], mpi.DOUBLE), spec(recv[:mine], mpi.DOUBLE), list(counts)),
            )
        raise ValueError(f"unknown op {op!r}")

    def pingpong(
        self,
        comm: Any,
        buf: Any,
        nbytes: int,
        peer: int,
        tag: int,
        *,
        answer: bool = False,
        delay: float = 0.0,
    ) -> Call:
        """One side of a ping-pong of `nbytes` bytes of `buf` with `peer` (MPI.PROC_NULL: the
        no-op calibration, MPI returns at once)."""
        message = self._spec(buf[:nbytes], self.MPI.BYTE)
        return PythonPingPong(comm.Send, comm.Recv, message, peer, tag, answer, delay)


class CompiledTimer:
    name: TimerName = "compiled"

    def __init__(self, mpi: ModuleType, extension: ModuleType | None = None) -> None:
        self.MPI = mpi
        self.extension = extension if extension is not None else load_extension()
        self.handle_bytes = int(mpi._sizeof(mpi.Comm))
        if self.handle_bytes not in (4, 8):
            raise TimerUnavailable(f"MPI handles of {self.handle_bytes} bytes are not supported")
        library = ctypes.CDLL(mpi.__file__)
        self.addresses = {
            op: self._address(library, name) for op, (name, _) in _MPI_FUNCTIONS.items()
        }
        self.send_address = self._address(library, "MPI_Send")
        self.recv_address = self._address(library, "MPI_Recv")
        self.byte, self.double, self.sum = (
            int(mpi._handleof(h)) for h in (mpi.BYTE, mpi.DOUBLE, mpi.SUM)
        )

    def _address(self, library: ctypes.CDLL, name: str) -> int:
        """`name` in the MPI library the loaded mpi4py extension links (dlsym on its own
        handle searches its dependencies), not whatever libmpi the process might find."""
        try:
            function = getattr(library, name)
        except AttributeError as exc:
            raise TimerUnavailable(
                f"{name} not found through {self.MPI.__file__} (mpi4py loads its MPI library "
                "another way here)"
            ) from exc
        address = ctypes.cast(function, ctypes.c_void_p).value
        if not address:
            raise TimerUnavailable(f"{name} resolved to a null address")
        return int(address)

    def collective(
        self, comm: Any, op: str, send: Any, recv: Any, size: int, counts: Sequence[int]
    ) -> Call:
        import numpy as np

        if op not in _MPI_FUNCTIONS:
            raise ValueError(f"unknown op {op!r}")
        c, s, r = int(self.MPI._handleof(comm)), int(send.ctypes.data), int(recv.ctypes.data)
        keep: tuple[Any, ...] = (comm, send, recv)
        if op == "barrier":
            args: tuple[int, ...] = (c,)
        elif op == "bcast":
            args = (s, size, self.byte, 0, c)
        elif op == "allreduce":
            args = (s, r, size // 8, self.double, self.sum, c)
        elif op in ("allgather", "alltoall"):
            args = (s, size, self.byte, r, size, self.byte, c)
        else:
            table = np.asarray(counts, dtype=np.intc)
            keep += (table,)
            args = (s, r, int(table.ctypes.data), self.double, self.sum, c)
        return CompiledCall(
            self.extension,
            _MPI_FUNCTIONS[op][1],
            self.handle_bytes,
            self.addresses[op],
            args,
            keep,
            self.MPI.Exception,
        )

    def pingpong(
        self,
        comm: Any,
        buf: Any,
        nbytes: int,
        peer: int,
        tag: int,
        *,
        answer: bool = False,
        delay: float = 0.0,
    ) -> Call:
        """As PythonTimer.pingpong, run by the extension (kinds 6 and 7). MPI_Recv gets a
        status of its own rather than MPI_STATUS_IGNORE, whose value is the library's."""
        if delay:
            raise ValueError("the compiled loop has no delay hook: time a slowed rank in Python")
        if not 0 <= nbytes <= buf.nbytes:
            raise ValueError(f"{nbytes} bytes do not fit a buffer of {buf.nbytes}")
        status = self.MPI.Status()
        args = (
            int(buf.ctypes.data),
            nbytes,
            self.byte,
            peer,
            tag,
            int(self.MPI._handleof(comm)),
            self.recv_address,
            int(self.MPI._addressof(status)),
        )
        return CompiledCall(
            self.extension,
            KIND_PONG if answer else KIND_PING,
            self.handle_bytes,
            self.send_address,
            args,
            (comm, buf, status),
            self.MPI.Exception,
        )


# builds timed calls: the collectives, the ping-pongs, and their calibration no-ops
Timer = PythonTimer | CompiledTimer


def choose(requested: str, mpi: ModuleType, comm: Any | None = None) -> Timer:
    """`--timer`: compiled where it can run (auto), else python; `compiled` insists.

    With `comm`, every rank decides the same (a collective): one rank without the compiled
    loop makes `auto` time in Python everywhere, and `compiled` fail everywhere, so ranks
    never time differently or wait for each other in different code.
    """
    if requested not in TIMER_CHOICES:
        raise ValueError(f"timer must be one of {', '.join(TIMER_CHOICES)}, not {requested!r}")
    if requested == "python":
        return PythonTimer(mpi)
    compiled: CompiledTimer | None = None
    reason = ""
    try:
        compiled = CompiledTimer(mpi)
    except TimerUnavailable as exc:
        reason = str(exc)
    if comm is not None:
        everywhere = comm.allreduce(compiled is not None, op=mpi.LAND)
        if compiled is not None and not everywhere:
            compiled, reason = None, "the compiled timing loop is missing on another rank"
    if compiled is not None:
        return compiled
    if requested == "compiled":
        raise TimerUnavailable(reason)
    log.warning("timing in Python instead of the compiled loop", extra={"reason": reason})
    return PythonTimer(mpi)
