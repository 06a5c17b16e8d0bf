"""The one per-scrape family builder every collector uses.

A collector's scrape maps its model to samples:

    out = Families(METRICS)               # families in METRICS order (or first use: Families())
    out.add(RX, {"device": "mlx5_0", "port": "1"}, 1234.0)
    out.add_values(RX, ("mlx5_0", "1"), 1234.0)   # label values in RX.labels order
    out.histogram(BRW, ("ost0",), [("4096.0", 3), ("+Inf", 5)], 20480.0)
    return list(out)                      # only families that got samples

Samples are appended as `Sample` tuples straight onto the family (what
`GaugeMetricFamily.add_metric` does, without its per-call list and dict copies): a scrape of
the 4 HCA × 2 port tree adds ~200 samples, and that loop is most of a collection's time.
A counter's samples carry the `_total` name, as prometheus_client's own would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from hpcobs.exporters.runtime.metricdef import MetricDef


class Families:
    """The metric families of one scrape, yielded in `order` (then first use), if not empty."""

    __slots__ = ("_families",)

    def __init__(self, order: Sequence[MetricDef] = ()) -> None:
        self._families: dict[str, Metric] = {d.name: d.family() for d in order}

    def family(self, definition: MetricDef) -> Metric:
        """The family of `definition` in this scrape, made on first use."""
        family = self._families.get(definition.name)
        if family is None:
            family = self._families[definition.name] = definition.family()
        return family

    def add(self, definition: MetricDef, labels: dict[str, str], value: float) -> None:
        """One gauge or counter sample; `labels` by name (the dict is kept, not copied)."""
        self.family(definition).samples.append(Sample(definition.name, labels, value))

    def add_values(self, definition: MetricDef, values: Sequence[str], value: float) -> None:
        """One gauge or counter sample; label values in `definition.labels` order."""
        labels = dict(zip(definition.labels, values, strict=True))
        self.family(definition).samples.append(Sample(definition.name, labels, value))

    def histogram(
        self,
        definition: MetricDef,
        values: Sequence[str],
        buckets: Sequence[tuple[str, float]],
        sum_value: float | None,
    ) -> None:
        """One histogram: cumulative `buckets` as (le, count), the last one `+Inf`."""
        family = self.family(definition)
        assert isinstance(family, HistogramMetricFamily), definition.name
        family.add_metric(list(values), list(buckets), sum_value)

    def __iter__(self) -> Iterator[Metric]:
        return (f for f in self._families.values() if f.samples)
