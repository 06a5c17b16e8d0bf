"""The compiled timing loop (`_timedloop`) and the timer choice, without MPI.

The extension is driven with libc functions of the same calling shape (kind 5: one integer
argument, an int result), so its loop, its clock and its error path are checked here, and its
ping-pong kinds (6, 7) with ctypes callbacks of MPI_Send's and MPI_Recv's signatures that
record every call; the MPI kinds run for real under `mpirun` in tests/real/test_probe_mpi.py. The extension must be
built (`pip install -e .` builds it): its absence fails these tests rather than skipping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hpcobs.exporters.probe import timedloop
from hpcobs.exporters.probe.timedloop import (
    KIND_PING,
    KIND_PONG,
    KIND_TEST,
    CompiledCall,
    CompiledTimer,
    PythonPingPong,
    PythonTimer,
    TimerUnavailable,
    choose,
)

pytestmark = pytest.mark.unit

LIBC = ctypes.CDLL(None)


def address(function: Any) -> int:
    value = ctypes.cast(function, ctypes.c_void_p).value
    assert value
    return int(value)


@pytest.fixture(scope="module")
def ext() -> ModuleType:
    try:
        return timedloop.load_extension()
    except TimerUnavailable as exc:
        pytest.fail(f"{exc} (run scripts/bootstrap.sh)")


def test_every_call_is_timed_on_its_own(ext: ModuleType) -> None:
    out = np.full(5, -1.0)
    rc = ext.run(KIND_TEST, 8, address(LIBC.usleep), [2000], out)  # 2 ms per call
    assert rc == 0
    assert all(0.002 <= t < 1.0 for t in out), out


def test_the_loop_stops_at_the_first_failing_call_and_returns_its_code(ext: ModuleType) -> None:
    out = np.full(4, -1.0)
    assert ext.run(KIND_TEST, 8, address(LIBC.abs), [-7], out) == 7  # abs(-7) = 7 ≠ 0
    assert out[0] >= 0 and list(out[1:]) == [-1.0, -1.0, -1.0]


def test_four_byte_handles_take_the_int_path(ext: ModuleType) -> None:
    out = np.full(3, -1.0)
    assert ext.run(KIND_TEST, 4, address(LIBC.abs), [0], out) == 0
    assert all(t >= 0 for t in out)


def test_an_empty_output_runs_nothing(ext: ModuleType) -> None:
    assert ext.run(KIND_TEST, 8, address(LIBC.abs), [-7], np.empty(0)) == 0


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((9, 8, 1, [0], np.empty(1)), ValueError, "kind must be 0..7"),
        ((KIND_TEST, 2, 1, [0], np.empty(1)), ValueError, "handle_bytes must be 8 or 4"),
        ((KIND_TEST, 8, 0, [0], np.empty(1)), ValueError, "not 0"),
        ((KIND_TEST, 8, 1, [0, 1], np.empty(1)), ValueError, "takes 1 arguments, got 2"),
        ((KIND_TEST, 8, 1, 5, np.empty(1)), TypeError, "sequence of integers"),
        ((KIND_TEST, 8, 1, ["x"], np.empty(1)), TypeError, "integer is required"),
        ((KIND_TEST, 8, 1, [1 << 64], np.empty(1)), OverflowError, "too big"),
        ((KIND_TEST, 8, 1, [0], bytearray(3)), TypeError, "float64 buffer"),
        ((KIND_TEST, 8, 1, [0], b"12345678"), TypeError, "read-write"),
    ],
)
def test_bad_arguments_raise_before_anything_is_called(
    ext: ModuleType, args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ext.run(*args)


# -- ping-pong kinds -----------------------------------------------------------------------


@dataclass
class FakePointToPoint:
    """MPI_Send and MPI_Recv as ctypes callbacks with the MPI-3 signatures (handles of
    `handle_bytes`), recording each call; `fail` maps (name, call number) to a return code,
    `recv_seconds` makes every receive take that long."""

    handle_bytes: int = 8
    fail: dict[tuple[str, int], int] = field(default_factory=dict)
    recv_seconds: float = 0.0
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        h = ctypes.c_int64 if self.handle_bytes == 8 else ctypes.c_int
        i, p = ctypes.c_int, ctypes.c_void_p
        send_type = ctypes.CFUNCTYPE(i, p, i, h, i, i, h)
        recv_type = ctypes.CFUNCTYPE(i, p, i, h, i, i, h, p)
        self._send = send_type(self._record("send"))
        self._recv = recv_type(self._record("recv"))

    def _record(self, name: str) -> Callable[..., int]:
        def call(*args: Any) -> int:
            self.calls.append((name, *args))
            if name == "recv" and self.recv_seconds:
                time.sleep(self.recv_seconds)
            return self.fail.get((name, sum(c[0] == name for c in self.calls)), 0)

        return call

    @property
    def send(self) -> int:
        return address(self._send)

    @property
    def recv(self) -> int:
        return address(self._recv)

    def args(self, peer: int = 3, tag: int = 7101) -> list[int]:
        """buf, count, datatype, peer, tag, comm, MPI_Recv, status"""
        return [0x1000, 8, 41, peer, tag, 42, self.recv, 0x2000]


SEND = ("send", 0x1000, 8, 41, 3, 7101, 42)
RECV = ("recv", 0x1000, 8, 41, 3, 7101, 42, 0x2000)


@pytest.mark.parametrize("handle_bytes", [8, 4])
def test_ping_times_each_round_trip_of_a_send_then_a_receive(
    ext: ModuleType, handle_bytes: int
) -> None:
    fake = FakePointToPoint(handle_bytes, recv_seconds=0.002)
    out = np.full(3, -1.0)
    assert ext.run(KIND_PING, handle_bytes, fake.send, fake.args(), out) == 0
    assert fake.calls == [SEND, RECV] * 3
    assert all(0.002 <= t < 1.0 for t in out), out  # the receive is inside each sample


@pytest.mark.parametrize("handle_bytes", [8, 4])
def test_pong_answers_each_receive_with_a_send_untimed(ext: ModuleType, handle_bytes: int) -> None:
    fake = FakePointToPoint(handle_bytes, recv_seconds=0.001)
    out = np.full(3, -1.0)
    assert ext.run(KIND_PONG, handle_bytes, fake.send, fake.args(), out) == 0
    assert fake.calls == [RECV, SEND] * 3
    assert list(out) == [0.0, 0.0, 0.0]


def test_the_calibration_peer_and_negative_values_pass_through(ext: ModuleType) -> None:
    """MPI_PROC_NULL is negative (Open MPI -2, MPICH -1): it must reach MPI as such."""
    for handle_bytes in (8, 4):
        fake = FakePointToPoint(handle_bytes)
        assert ext.run(KIND_PING, handle_bytes, fake.send, fake.args(peer=-2), np.empty(1)) == 0
        assert [c[4] for c in fake.calls] == [-2, -2]


@pytest.mark.parametrize(
    ("kind", "fail", "calls"),
    [
        (KIND_PING, ("send", 2), [SEND, RECV, SEND]),  # no receive after a failed send
        (KIND_PING, ("recv", 1), [SEND, RECV]),
        (KIND_PONG, ("recv", 2), [RECV, SEND, RECV]),  # no answer after a failed receive
        (KIND_PONG, ("send", 1), [RECV, SEND]),
    ],
)
def test_a_ping_pong_stops_at_the_first_failing_call(
    ext: ModuleType, kind: int, fail: tuple[str, int], calls: list[tuple[Any, ...]]
) -> None:
    fake = FakePointToPoint(fail={fail: 15})
    assert ext.run(kind, 8, fake.send, fake.args(), np.full(5, -1.0)) == 15
    assert fake.calls == calls


def test_a_ping_pong_needs_the_receive_function_and_all_eight_arguments(ext: ModuleType) -> None:
    fake = FakePointToPoint()
    args = fake.args()
    args[6] = 0
    with pytest.raises(ValueError, match="MPI_Recv's address"):
        ext.run(KIND_PING, 8, fake.send, args, np.empty(1))
    with pytest.raises(ValueError, match="kind 7 takes 8 arguments, got 7"):
        ext.run(KIND_PONG, 8, fake.send, fake.args()[:7], np.empty(1))
    assert fake.calls == []


def compiled_timer(ext: ModuleType, fake: FakePointToPoint) -> CompiledTimer:
    """A CompiledTimer over the fake Send/Recv (no MPI library): handles are small ints."""
    statuses: list[ctypes.Array[ctypes.c_char]] = []

    def addressof(status: ctypes.Array[ctypes.c_char]) -> int:
        statuses.append(status)
        return ctypes.addressof(status)

    timer = object.__new__(CompiledTimer)
    timer.MPI = SimpleNamespace(  # type: ignore[assignment]
        Status=lambda: ctypes.create_string_buffer(64),
        _addressof=addressof,
        _handleof=lambda comm: comm,
        Exception=RuntimeError,
    )
    timer.extension = ext
    timer.handle_bytes = fake.handle_bytes
    timer.byte = 41
    timer.send_address, timer.recv_address = fake.send, fake.recv
    return timer


def test_the_compiled_timer_binds_a_ping_pong_to_the_extension(ext: ModuleType) -> None:
    fake = FakePointToPoint(fail={("recv", 3): 9})
    timer = compiled_timer(ext, fake)
    buf = np.zeros(16, dtype=np.uint8)
    ping = timer.pingpong(42, buf, 8, 3, 7101)
    assert isinstance(ping, CompiledCall) and ping.kind == KIND_PING
    assert len(ping.run(2)) == 2
    send, recv = fake.calls[:2]
    assert send == ("send", buf.ctypes.data, 8, 41, 3, 7101, 42)
    assert recv[:7] == ("recv", buf.ctypes.data, 8, 41, 3, 7101, 42) and recv[7]  # a status
    with pytest.raises(RuntimeError):  # the third receive fails: the MPI error is raised
        timer.pingpong(42, buf, 8, 3, 7101, answer=True).run(5)
    with pytest.raises(ValueError, match="do not fit"):
        timer.pingpong(42, buf, 17, 3, 7101)
    with pytest.raises(ValueError, match="no delay hook"):
        timer.pingpong(42, buf, 8, 3, 7101, delay=0.001)


class RecordingComm:
    """What PythonPingPong calls: comm.Send / comm.Recv, recorded with the clock."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, int, int, float]] = []

    def Send(self, message: Any, peer: int, tag: int) -> None:
        self.calls.append(("send", message, peer, tag, time.perf_counter()))

    def Recv(self, message: Any, peer: int, tag: int) -> None:
        self.calls.append(("recv", message, peer, tag, time.perf_counter()))


def test_the_python_fallback_ping_pongs_with_byte_messages() -> None:
    mpi: Any = SimpleNamespace(buffer=lambda a: ("buffer", a.nbytes), BYTE="byte")
    comm = RecordingComm()
    buf = np.zeros(64, dtype=np.uint8)
    ping = PythonTimer(mpi).pingpong(comm, buf, 8, 1, 9)
    assert isinstance(ping, PythonPingPong)
    samples = ping.run(2)
    assert len(samples) == 2 and all(t >= 0 for t in samples)
    message = (("buffer", 8), "byte")
    assert [c[:4] for c in comm.calls] == [("send", message, 1, 9), ("recv", message, 1, 9)] * 2
    comm.calls.clear()
    pong = PythonTimer(mpi).pingpong(comm, buf, 8, 1, 9, answer=True)
    assert pong.run(2) == [0.0, 0.0]
    assert [c[0] for c in comm.calls] == ["recv", "send"] * 2


def test_the_test_hooks_delay_is_timed_by_the_ping_and_sits_between_pong_calls() -> None:
    comm = RecordingComm()
    ping = PythonPingPong(comm.Send, comm.Recv, ("m", "byte"), 1, 9, delay=0.002)
    assert all(t >= 0.002 for t in ping.run(3))
    comm.calls.clear()
    PythonPingPong(comm.Send, comm.Recv, ("m", "byte"), 1, 9, answer=True, delay=0.002).run(1)
    (recv, *_, t_recv), (send, *_, t_send) = comm.calls
    assert (recv, send) == ("recv", "send") and t_send - t_recv >= 0.002


def test_a_compiled_call_raises_the_mpi_error_of_a_failing_call(ext: ModuleType) -> None:
    errors: list[int] = []

    def error(code: int) -> Exception:
        errors.append(code)
        return RuntimeError(f"MPI error {code}")

    call = CompiledCall(ext, KIND_TEST, 8, address(LIBC.abs), (-3,), (), error)
    with pytest.raises(RuntimeError, match="MPI error 3"):
        call.run(10)
    assert errors == [3]
    ok = CompiledCall(ext, KIND_TEST, 8, address(LIBC.abs), (0,), (), error)
    samples = ok.run(10)
    assert len(samples) == 10 and all(isinstance(t, float) and t >= 0 for t in samples)
    assert ok.run(0) == []


class FakeMpi(SimpleNamespace):
    """What CompiledTimer reads of mpi4py's MPI module: here its file is libc's, which has
    no MPI functions."""

    def __init__(self, handle_bytes: int = 8) -> None:
        super().__init__(__file__=ctypes.util.find_library("c") or "libc.so.6", Comm=object)
        self.handle_bytes = handle_bytes

    def _sizeof(self, _kind: object) -> int:
        return self.handle_bytes


class FakeComm:
    def __init__(self, everyone: bool) -> None:
        self.everyone = everyone
        self.asked: list[bool] = []

    def allreduce(self, value: bool, op: object = None) -> bool:
        self.asked.append(value)
        return value and self.everyone


def test_mpi_functions_are_looked_up_through_mpi4pys_own_library() -> None:
    with pytest.raises(TimerUnavailable, match="MPI_Barrier not found through"):
        CompiledTimer(FakeMpi())  # type: ignore[arg-type]
    with pytest.raises(TimerUnavailable, match="handles of 2 bytes"):
        CompiledTimer(FakeMpi(handle_bytes=2))  # type: ignore[arg-type]


def test_auto_falls_back_to_python_and_compiled_insists(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mpi: Any = FakeMpi()
    assert isinstance(choose("python", mpi), PythonTimer)
    with caplog.at_level(logging.WARNING, logger="hpcobs.probe"):
        assert isinstance(choose("auto", mpi), PythonTimer)
    assert "timing in Python instead of the compiled loop" in caplog.text
    with pytest.raises(TimerUnavailable, match="not found through"):
        choose("compiled", mpi)
    with pytest.raises(ValueError, match="timer must be one of"):
        choose("rdtsc", mpi)


def test_ranks_agree_on_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rank without the compiled loop makes every rank time in Python (auto), or fail
    (compiled): never a mix."""
    built = object.__new__(CompiledTimer)
    monkeypatch.setattr(timedloop, "CompiledTimer", lambda mpi: built)
    mpi: Any = SimpleNamespace(LAND="land")
    assert choose("auto", mpi, FakeComm(everyone=True)) is built
    comm = FakeComm(everyone=False)
    assert isinstance(choose("auto", mpi, comm), PythonTimer) and comm.asked == [True]
    with pytest.raises(TimerUnavailable, match="missing on another rank"):
        choose("compiled", mpi, FakeComm(everyone=False))
