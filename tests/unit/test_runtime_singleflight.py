"""The single-flight runner: one run per key in flight, callers join it, one persistent worker
per key that leaves when idle, errors handed to the caller."""

from __future__ import annotations

import threading

import pytest

from hpcobs.exporters.runtime.singleflight import SingleFlight

from harness.collectors import wait_until

pytestmark = pytest.mark.unit


def test_a_second_caller_joins_the_run_in_flight() -> None:
    runner = SingleFlight("t")
    release = threading.Event()
    calls = []

    def work() -> int:
        calls.append(1)
        release.wait(5)
        return 42

    first = runner.submit("a", work)
    second = runner.submit("a", work)
    assert not first.joined and second.joined
    assert second.future is first.future and second.submitted == first.submitted
    assert runner.running("a")
    release.set()
    assert first.future.result(5) == 42
    assert calls == [1]
    assert not runner.running("a")


def test_one_persistent_worker_per_key() -> None:
    runner = SingleFlight("t")
    names = set()
    for _ in range(20):
        runner.submit("a", lambda: names.add(threading.current_thread().name)).future.result(5)
    runner.submit("b", lambda: names.add(threading.current_thread().name)).future.result(5)
    assert names == {"t-a", "t-b"}
    assert runner.workers() == 2


def test_errors_reach_the_caller_and_the_worker_survives() -> None:
    runner = SingleFlight("t")

    def boom() -> None:
        raise KeyboardInterrupt("x")  # even a BaseException

    with pytest.raises(KeyboardInterrupt):
        runner.submit("a", boom).future.result(5)
    assert runner.submit("a", lambda: 7).future.result(5) == 7


def test_an_idle_worker_exits_and_a_new_one_starts_on_demand() -> None:
    runner = SingleFlight("t", idle_exit=0.05)
    assert runner.submit("a", lambda: 1).future.result(5) == 1
    assert wait_until(lambda: runner.workers() == 0, timeout=5)
    assert runner.submit("a", lambda: 2).future.result(5) == 2


def test_a_hung_run_holds_one_thread_not_one_per_call() -> None:
    runner = SingleFlight("t")
    hang = threading.Event()
    before = threading.active_count()
    flights = [runner.submit("stuck", lambda: hang.wait(10)) for _ in range(50)]
    assert sum(not f.joined for f in flights) == 1
    assert threading.active_count() <= before + 1
    hang.set()
