"""The compiled timing loop (`_timedloop`) and the timer choice, without MPI.

The extension is driven with libc functions of the same calling shape (kind 5: one integer
argument, an int result), so its loop, its clock and its error path are checked here; the
MPI kinds run for real under `mpirun` in tests/real/test_probe_mpi.py. The extension must be
built (`pip install -e .` builds it): its absence fails these tests rather than skipping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hpcobs.exporters.probe import timedloop
from hpcobs.exporters.probe.timedloop import (
    KIND_TEST,
    CompiledCall,
    CompiledTimer,
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
        ((9, 8, 1, [0], np.empty(1)), ValueError, "kind must be 0..5"),
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
