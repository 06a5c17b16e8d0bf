"""The encoders' cached layout (exporters/runtime/exposition.py): a scrape that changes values,
labels (even inside the same dict object), sample counts or order still gets exactly
prometheus_client's bytes."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Sample

from hpcobs.exporters.runtime import exposition
from hpcobs.exporters.runtime.exposition import generate_openmetrics, generate_text

pytestmark = pytest.mark.unit

ENCODERS = [
    (generate_text, text_format.generate_latest),
    (generate_openmetrics, openmetrics.generate_latest),
]


class Registry:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def port_family(values: list[Any], labels: list[dict[str, str]]) -> Metric:
    family = Metric("hpcobs_layout_test_bytes", "Bytes.", "counter")
    family.samples += [
        Sample("hpcobs_layout_test_bytes_total", lab, v)
        for v, lab in zip(values, labels, strict=True)
    ]
    return family


def check(metrics: list[Metric]) -> None:
    for fast, slow in ENCODERS:
        assert fast(Registry(metrics)) == slow(Registry(metrics))


def test_scrape_after_scrape_with_changes() -> None:
    shared = {"device": "mlx5_0", "port": "1"}
    labels = [shared, {"device": "mlx5_0", "port": "2"}, {"device": "mlx5_1", "port": "1"}]
    steps: list[list[Any]] = [
        [1, 2, 3],
        [1, 2, 3],  # unchanged: everything from the layout
        [1, 5, 3_000_000_000_000],  # some values move
        [0.0, -0.0, 0],  # float zeros are written differently although equal
        [-0.0, 0.0, 0],
        [True, 1, 1.0],  # equal values of other types
        [math.nan, math.inf, -math.inf],
        [math.nan, math.inf, -math.inf],
        [2**53 - 1, 2**53, 2**53 + 1],
        [10**20, -(10**9), 1_000_000],
    ]
    for values in steps:
        check([port_family(values, labels)])
    shared["port"] = "9"  # the same dict object, mutated between scrapes
    check([port_family([1, 2, 3], labels)])
    check([port_family([1, 2], labels[:2])])  # fewer samples
    check([port_family([1, 2, 3], labels[::-1])])  # another order
    check([port_family([1, 2, 3, 4], [*labels, {"device": 'a"b\\c', "port": "\n"}])])


def test_random_scrapes_match_prometheus_client() -> None:
    rng = random.Random(16)
    devices = [f"mlx5_{i}" for i in range(3)]
    for _ in range(300):
        labels = [
            {"device": rng.choice(devices), "port": str(rng.randint(1, 2))}
            for _ in range(rng.randint(0, 5))
        ]
        values = [
            rng.choice([0, 1, -0.0, 0.0, 7, 10**12 + rng.randint(0, 3), 0.5, math.nan])
            for _ in labels
        ]
        gauge = Metric("hpcobs_layout_test_state", "State.", "gauge")
        gauge.samples += [
            Sample("hpcobs_layout_test_state", lab, v, rng.choice([None, None, 1.5]))
            for v, lab in zip(values, labels, strict=True)
        ]
        check([port_family(values, labels), gauge])


def test_the_layout_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exposition, "_LAYOUT_MAX_SAMPLES", 10)
    exposition._LAYOUTS.clear()
    monkeypatch.setattr(exposition, "_layout_samples", 0)
    for n in range(20):
        family = Metric(f"hpcobs_layout_bound_{n}", "Bound.", "gauge")
        family.samples += [Sample(family.name, {"i": str(i)}, float(i)) for i in range(4)]
        check([family])
        assert sum(len(v) for v in exposition._LAYOUTS.values()) <= 10
