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
