"""The per-scrape family builder gives the same families prometheus_client's own add_metric
would, in the declared order, without empty ones."""

from __future__ import annotations

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from hpcobs.exporters.runtime.families import Families
from hpcobs.exporters.runtime.metricdef import MetricDef

pytestmark = pytest.mark.unit

RX = MetricDef("hpcobs_test_receive_bytes_total", "counter", "Bytes.", ("device", "port"))
UP = MetricDef("hpcobs_test_up", "gauge", "Up.", ("device",))
LAT = MetricDef("hpcobs_test_latency_seconds", "histogram", "Latency.", ("target",))
UNUSED = MetricDef("hpcobs_test_unused", "gauge", "Never set.")


def test_samples_equal_prometheus_client_add_metric() -> None:
    out = Families((UP, RX, UNUSED))
    out.add(RX, {"device": "mlx5_0", "port": "1"}, 5.0)
    out.add_values(RX, ("mlx5_0", "2"), 7.0)
    out.add_values(UP, ("mlx5_0",), 1.0)
    out.histogram(LAT, ("ost0",), [("0.1", 1), ("+Inf", 3)], 0.9)

    rx = CounterMetricFamily(RX.name, RX.help, labels=["device", "port"])
    rx.add_metric(["mlx5_0", "1"], 5.0)
    rx.add_metric(["mlx5_0", "2"], 7.0)
    up = GaugeMetricFamily(UP.name, UP.help, labels=["device"])
    up.add_metric(["mlx5_0"], 1.0)
    lat = HistogramMetricFamily(LAT.name, LAT.help, labels=["target"])
    lat.add_metric(["ost0"], [("0.1", 1), ("+Inf", 3)], 0.9)

    assert list(out) == [up, rx, lat]  # declared order first, then first use; no empty family


def test_label_values_must_match_the_declaration() -> None:
    with pytest.raises(ValueError):
        Families().add_values(RX, ("mlx5_0",), 1.0)
