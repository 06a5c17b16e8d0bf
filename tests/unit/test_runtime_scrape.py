from __future__ import annotations

import logging
import time

import pytest
from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.scrape import ScrapeCoordinator

from harness.collectors import AbsentCollector, RaisingCollector, SleepingCollector, StaticCollector

pytestmark = pytest.mark.unit


def samples(metrics: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in metrics for s in m.samples}


def up(metrics: list[Metric], collector: str) -> float:
    return samples(metrics)[("hpcobs_collector_up", (("collector", collector),))]


def test_failure_and_hang_leave_other_collectors_intact() -> None:
    hung = SleepingCollector()
    coord = ScrapeCoordinator(
        [StaticCollector(), RaisingCollector(), hung, AbsentCollector()], timeout=0.3
    )
    started = time.monotonic()
    metrics = list(coord.scrape())
    took = time.monotonic() - started
    try:
        assert took < 1.0
        values = samples(metrics)
        assert values[("hpcobs_test_value", (("source", "good"),))] == 42.0
        assert (
            "hpcobs_test_value",
            (("source", "broken"),),
        ) not in values  # partial output dropped
        assert ("hpcobs_test_value", (("source", "hung"),)) not in values
        assert up(metrics, "good") == 1.0
        assert up(metrics, "broken") == 0.0
        assert up(metrics, "hung") == 0.0
        assert up(metrics, "absent") == 1.0  # nothing to collect is not a failure
        duration = values[("hpcobs_collector_duration_seconds", (("collector", "hung"),))]
        assert 0.25 <= duration < 1.0
    finally:
        coord.close()


def test_hung_collector_is_single_flight_and_recovers() -> None:
    hung = SleepingCollector()
    coord = ScrapeCoordinator([hung], timeout=0.1)
    try:
        for _ in range(5):
            assert up(list(coord.scrape()), "hung") == 0.0
        assert hung.started == 1  # later scrapes waited on the same stuck run
        hung.release.set()
        time.sleep(0.05)
        metrics = list(coord.scrape())  # the finished run's result is served
        assert up(metrics, "hung") == 1.0
        assert samples(metrics)[("hpcobs_test_value", (("source", "hung"),))] == 7.0
    finally:
        coord.close()


def test_concurrent_scrapes_share_one_collection() -> None:
    import threading

    slow = SleepingCollector(seconds=0.2)
    coord = ScrapeCoordinator([slow], timeout=2.0)
    results: list[float] = []

    def scrape() -> None:
        results.append(up(list(coord.scrape()), "hung"))

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    coord.close()
    assert results == [1.0] * 4
    assert slow.started == 1


def test_state_changes_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(StaticCollector):
        fail = True

        def collect(self):  # type: ignore[no-untyped-def]
            if self.fail:
                raise RuntimeError("boom")
            return super().collect()

    flaky = Flaky(name="flaky")
    coord = ScrapeCoordinator([flaky], timeout=1.0)
    with caplog.at_level(logging.DEBUG, logger="hpcobs.scrape"):
        for _ in range(3):
            list(coord.scrape())
        flaky.fail = False
        for _ in range(3):
            list(coord.scrape())
    coord.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("collector failed") == 1
    assert messages.count("collector recovered") == 1
    failed = next(r for r in caplog.records if r.getMessage() == "collector failed")
    assert "boom" in failed.err  # type: ignore[attr-defined]


def test_only_selected_collectors_run() -> None:
    a, b = StaticCollector("a"), StaticCollector("b")
    coord = ScrapeCoordinator([a, b], timeout=1.0)
    metrics = list(coord.scrape(only=["b"]))
    coord.close()
    assert a.calls == 0 and b.calls == 1
    assert ("hpcobs_collector_up", (("collector", "a"),)) not in samples(metrics)


def test_timeout_argument_cannot_exceed_configured_deadline() -> None:
    hung = SleepingCollector()
    coord = ScrapeCoordinator([hung], timeout=0.2)
    started = time.monotonic()
    list(coord.scrape(timeout=30.0))
    assert time.monotonic() - started < 1.0
    coord.close()


def test_duplicate_names_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        ScrapeCoordinator([StaticCollector("x"), StaticCollector("x")], timeout=1.0)


@pytest.mark.parametrize("asked", [0.001, 0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_client_deadline_is_clamped_and_invalid_ones_ignored(asked: float) -> None:
    """A 0.05 s collector stays up whatever deadline a client asks for: too short is raised to
    the floor (0.25 s), zero/negative/NaN/infinite mean "no client deadline"."""
    slow = SleepingCollector("slow", seconds=0.05)
    coord = ScrapeCoordinator([slow], timeout=10.0)
    try:
        assert up(list(coord.scrape(timeout=asked)), "slow") == 1.0
        assert coord.states()[0].up is True
    finally:
        coord.close()


def test_budget_bounds() -> None:
    coord = ScrapeCoordinator([StaticCollector()], timeout=2.0, min_timeout=0.25)
    assert coord.budget(None) == 2.0
    assert coord.budget(0.01) == 0.25
    assert coord.budget(1.0) == 1.0
    assert coord.budget(30.0) == 2.0
    assert coord.budget(float("nan")) == 2.0
    assert (
        ScrapeCoordinator([StaticCollector()], timeout=0.1).budget(0.01) == 0.1
    )  # floor ≤ timeout


def test_short_client_deadlines_neither_flip_state_nor_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 scrapes asking for less time than the collector needs, among ordinary ones: each
    short one says up 0 in its own answer, but the recorded state stays up and nothing is
    logged (it used to log one failed/recovered pair per flip)."""
    slow = SleepingCollector("slow", seconds=0.05)
    coord = ScrapeCoordinator([slow], timeout=5.0, min_timeout=0.005)
    short_up: list[float] = []
    try:
        with caplog.at_level(logging.DEBUG, logger="hpcobs.scrape"):
            assert up(list(coord.scrape()), "slow") == 1.0
            for i in range(200):
                short_up.append(up(list(coord.scrape(timeout=0.001)), "slow"))
                assert coord.states()[0].up is True
                if i % 20 == 19:
                    assert up(list(coord.scrape()), "slow") == 1.0
    finally:
        coord.close()
    assert 0.0 in short_up  # the short deadlines were really missed
    flips = [
        r for r in caplog.records if r.getMessage() in ("collector failed", "collector recovered")
    ]
    assert flips == []


def test_run_past_the_configured_timeout_is_recorded_down_even_by_short_scrapes() -> None:
    hung = SleepingCollector()
    coord = ScrapeCoordinator([hung], timeout=1.0, min_timeout=0.05)
    try:
        assert up(list(coord.scrape(timeout=0.05)), "hung") == 0.0
        assert coord.states()[0].up is None  # only the client's shorter deadline was missed
        time.sleep(1.0)
        assert up(list(coord.scrape(timeout=0.05)), "hung") == 0.0
        state = coord.states()[0]
        assert state.up is False and "TimeoutError" in state.last_error
    finally:
        coord.close()


def test_collections_run_on_one_persistent_worker_per_collector() -> None:
    """Issue 16: no thread started per collection; the same worker serves every scrape, and
    closing the coordinator lets it exit."""
    import threading

    from harness.collectors import wait_until

    seen: list[str] = []

    class Recording(StaticCollector):
        def collect(self):  # type: ignore[no-untyped-def]
            seen.append(threading.current_thread().name)
            return super().collect()

    coord = ScrapeCoordinator([Recording("rec")], timeout=2.0)
    thread_ids = set()
    for _ in range(20):
        assert up(list(coord.scrape()), "rec") == 1.0
        thread_ids.update(t.ident for t in threading.enumerate() if t.name == "collector-rec")
    assert seen == ["collector-rec"] * 20
    assert len(thread_ids) == 1
    coord.close()
    assert wait_until(
        lambda: not any(t.name == "collector-rec" for t in threading.enumerate()), timeout=5
    )


def test_a_base_exception_in_a_collector_is_a_failure_not_a_failed_scrape() -> None:
    class Exiting(StaticCollector):
        def collect(self):  # type: ignore[no-untyped-def]
            raise SystemExit("collector called exit")

    coord = ScrapeCoordinator([Exiting("exiting"), StaticCollector()], timeout=2.0)
    try:
        metrics = list(coord.scrape())
        assert up(metrics, "exiting") == 0.0 and up(metrics, "good") == 1.0
        assert "SystemExit" in {s.name: s for s in coord.states()}["exiting"].last_error
        assert up(list(coord.scrape()), "good") == 1.0  # the workers survive it
    finally:
        coord.close()


def test_an_abandoned_coordinator_leaves_no_idle_worker() -> None:
    import gc
    import threading

    from harness.collectors import wait_until

    coord = ScrapeCoordinator([StaticCollector("abandoned")], timeout=2.0)
    list(coord.scrape())
    del coord
    gc.collect()
    assert wait_until(
        lambda: not any(t.name == "collector-abandoned" for t in threading.enumerate()),
        timeout=5,
    )
