"""Hang safety: abort the whole MPI job when the probe has not finished within `--timeout`.

A rank that dies, stalls or leaves early leaves its peers blocked inside an MPI call
forever. Every rank runs a `Watchdog` thread; when the deadline passes before `disarm()`,
it names the phase the rank was in on stderr and calls the abort function, in the probe
`MPI.COMM_WORLD.Abort(2)`, which makes the launcher (`mpirun`, `srun`) kill every rank and
exit 2 ("the probe itself failed"). mpi4py releases the GIL inside blocking MPI calls, so the
thread runs while the main thread waits on a dead peer.

Thread level: strictly, calling MPI from this second thread needs `MPI_THREAD_MULTIPLE`
(`--mpi.thread-level multiple`), but that makes every call dearer (Open MPI locks its
progress engine; about 0.1 µs per small collective on these machines, and mpi4py's own
per-call cost rises from `funneled` up). The default is `single`: only the main thread
communicates, and the watchdog's abort is a last resort that Open MPI (and MPICH) carry out
from any thread (tested: a rank blocked in MPI_Recv on a peer that left is aborted). Should
the abort ever return or hang, the watchdog exits the process with status 2 after
`backstop_seconds` (the launcher then kills the job).

The deadline counts from the process's start (its creation time), so interpreter and
mpi4py start-up count against `--timeout` too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import psutil

log = logging.getLogger("hpcobs.probe")

EXIT_CODE = 2  # "the probe itself failed"


def process_age_seconds() -> float:
    """Seconds since this process was created (0 when the OS will not say)."""
    try:
        created = psutil.Process(os.getpid()).create_time()
    except (psutil.Error, OSError):
        return 0.0
    return max(0.0, time.time() - created)


class Watchdog:
    def __init__(
        self,
        timeout: float,
        abort: Callable[[], None],
        *,
        already_elapsed: float = 0.0,
        rank: int = 0,
        backstop_seconds: float = 10.0,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.abort = abort
        self.rank = rank
        self.backstop_seconds = backstop_seconds
        self.exit = exit
        self.phase = "start-up"
        self.fired = False
        self._deadline = time.monotonic() + max(0.0, timeout - already_elapsed)
        self._disarmed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def enter(self, phase: str) -> None:
        """Name what the rank does now (shown if the watchdog fires)."""
        self.phase = phase

    def disarm(self) -> None:
        self._disarmed.set()

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _run(self) -> None:
        if self._disarmed.wait(self.remaining()):
            return
        self.fired = True
        log.error(
            "watchdog: not finished within --timeout, aborting all ranks (exit 2)",
            extra={"rank": self.rank, "phase": self.phase, "timeout_seconds": self.timeout},
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        # Backstop: should MPI_Abort not end this process (it normally never returns), leave
        # with the same exit code anyway; the launcher then tears the job down.
        backstop = threading.Timer(self.backstop_seconds, self.exit, args=(EXIT_CODE,))
        backstop.daemon = True
        backstop.start()
        try:
            self.abort()
        finally:
            backstop.cancel()
            self.exit(EXIT_CODE)
