"""Metric definitions: one declaration per metric, used by the code and by the reference docs.

A module that exports metrics declares them at module level:

    RX = MetricDef("hpcobs_rdma_port_receive_bytes_total", "counter",
                   "Bytes received on the port.", ("device", "port"))
    METRICS = (RX, ...)

and builds its families from them at scrape time (`RX.family()`), so the name, type, help
and label names cannot drift between the code and `docs/metrics.md` (generated from every
module's `METRICS` by `scripts/gen_metrics_doc.py`, and checked against the code by a test).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric

Kind = Literal["gauge", "counter", "histogram"]
_NAME = re.compile(r"^hpcobs_[a-z][a-z0-9_]*[a-z0-9]$")
_LABEL = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"metric names are hpcobs_<snake_case>: {self.name!r}")
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"counters, and only counters, end in _total: {self.name!r}")
        if self.kind == "histogram" and self.name.endswith(("_bucket", "_sum", "_count")):
            raise ValueError(
                f"histogram base names must not end in _bucket/_sum/_count: {self.name!r}"
            )
        for label in self.labels:
            if not _LABEL.match(label) or label in ("le", "quantile") or label.startswith("__"):
                raise ValueError(f"{self.name}: bad label name {label!r}")
        if not self.help.strip():
            raise ValueError(f"{self.name}: help text is required")

    def family(self) -> Metric:
        """A fresh, empty family for one scrape."""
        labels = list(self.labels)
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=labels)
        if self.kind == "histogram":
            return HistogramMetricFamily(self.name, self.help, labels=labels)
        return GaugeMetricFamily(self.name, self.help, labels=labels)

    def gauge(self) -> GaugeMetricFamily:
        family = self.family()
        assert isinstance(family, GaugeMetricFamily), self.name
        return family

    def counter(self) -> CounterMetricFamily:
        family = self.family()
        assert isinstance(family, CounterMetricFamily), self.name
        return family

    def histogram(self) -> HistogramMetricFamily:
        family = self.family()
        assert isinstance(family, HistogramMetricFamily), self.name
        return family
