"""The collector interface: one class per source.

A collector reads its source at scrape time and yields prometheus_client metric families
(`GaugeMetricFamily`, `CounterMetricFamily`, ...); it does not mirror state in long-lived
metric objects. Raising from `collect()` marks that collector down for this scrape
(`hpcobs_collector_up{collector} 0`) and never fails the scrape. Raising `NoDataError`
means "nothing to collect here" (no HCA, no Lustre): a normal state, the collector stays up.

A daemon declares its collectors as `CollectorSpec`s; the spec carries the collector's
own flags (`--collector.<name>.<option>`) and the factory that builds it from parsed flags.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


CollectorFactory = Callable[[argparse.Namespace], Collector]
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
