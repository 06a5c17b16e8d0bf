"""The collector interface: one class per source.

A collector reads its source at scrape time and yields prometheus_client metric families
(`GaugeMetricFamily`, `CounterMetricFamily`, ...); it does not mirror state in long-lived
metric objects. Raising from `collect()` marks that collector down for this scrape
(`hpcobs_collector_up{collector} 0`) and never fails the scrape. Raising `NoDataError`
means "nothing to collect here" (no HCA, no Lustre): a normal state, the collector stays up.

A daemon declares its collectors as `CollectorSpec`s; the spec carries the collector's
own flags (`--collector.<name>.<option>`) and the factory that builds it from parsed flags and
the daemon's `Services`: the shared services (e.g. job attribution) that several collectors
receive rather than import from each other, each made once, on first request, and closed at
shutdown.
"""

from __future__ import annotations

import abc
import argparse
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric


class NoDataError(Exception):
    """The source is absent on this machine; not a failure (logged at debug)."""


class Collector(abc.ABC):
    """One source of metrics. `collect()` is called once per scrape, from a worker thread."""

    name: str = ""

    @abc.abstractmethod
    def collect(self) -> Iterable[Metric]:
        """Read the source and yield metric families."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background threads and release resources; called once at shutdown."""


T = TypeVar("T")


class Services:
    """The shared services of one daemon, made from its parsed flags on first request."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._lock = threading.Lock()
        self._made: dict[Callable[..., Any], Any] = {}

    def get(self, make: Callable[[argparse.Namespace], T]) -> T:
        """The service `make(args)` builds; made once, the same object for every caller."""
        with self._lock:
            if make not in self._made:
                self._made[make] = make(self.args)
            service: T = self._made[make]
            return service

    def close(self) -> None:
        """Close every service that has a `close()`, once."""
        with self._lock:
            made, self._made = list(self._made.values()), {}
        for service in made:
            close = getattr(service, "close", None)
            if callable(close):
                close()


CollectorFactory = Callable[[argparse.Namespace, Services], Collector]
ArgumentAdder = Callable[[argparse._ArgumentGroup], None]


def _no_arguments(group: argparse._ArgumentGroup) -> None:
    """Default for collectors without options of their own."""


@dataclass(frozen=True)
class CollectorSpec:
    """How a daemon knows a collector: name, default state, its own flags and a factory."""

    name: str
    factory: CollectorFactory
    help: str
    default_enabled: bool = True
    add_arguments: ArgumentAdder = _no_arguments

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"collector name must be a lower-case identifier: {self.name!r}")
