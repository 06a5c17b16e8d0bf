"""Small collectors for exercising the runtime: one that works, one that raises, one that hangs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.collector import Collector, NoDataError
from hpcobs.exporters.runtime.metricdef import MetricDef

VALUE = MetricDef("hpcobs_test_value", "gauge", "A constant for tests.", ("source",))
EVENTS = MetricDef("hpcobs_test_events_total", "counter", "A counter for tests.")


class StaticCollector(Collector):
    def __init__(self, name: str = "good", value: float = 42.0) -> None:
        self.name = name
        self.value = value
        self.calls = 0

    def collect(self) -> Iterator[Metric]:
        self.calls += 1
        family = VALUE.gauge()
        family.add_metric([self.name], self.value)
        yield family
        counter = EVENTS.counter()
        counter.add_metric([], float(self.calls))
        yield counter


class RaisingCollector(Collector):
    def __init__(self, name: str = "broken") -> None:
        self.name = name

    def collect(self) -> Iterator[Metric]:
        family = VALUE.gauge()
        family.add_metric([self.name], 1.0)
        yield family  # a partial result must not leak into the scrape
        raise OSError("simulated: device vanished")


class SleepingCollector(Collector):
    """Blocks until released (a wedged driver call), counting how often it was started."""

    def __init__(self, name: str = "hung", seconds: float = 3600.0) -> None:
        self.name = name
        self.seconds = seconds
        self.started = 0
        self.release = threading.Event()

    def collect(self) -> Iterator[Metric]:
        self.started += 1
        self.release.wait(self.seconds)
        family = VALUE.gauge()
        family.add_metric([self.name], 7.0)
        yield family

    def close(self) -> None:
        self.release.set()


class AbsentCollector(Collector):
    def __init__(self, name: str = "absent") -> None:
        self.name = name

    def collect(self) -> Iterator[Metric]:
        raise NoDataError("no such hardware here")


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll `predicate` until it is true; False when `timeout` seconds passed first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False
