"""The fast text encoders (exporters/runtime/exposition.py) write exactly prometheus_client's bytes."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Exemplar, Sample

from hpcobs.exporters.runtime.exposition import (
    choose_encoder,
    generate_openmetrics,
    generate_text,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

TYPES = [
    "counter",
    "gauge",
    "histogram",
    "summary",
    "info",
    "stateset",
    "unknown",
    "gaugehistogram",
]
SUFFIXES = ["", "_total", "_created", "_gsum", "_gcount", "_bucket", "_count", "_sum", "_info"]
label_names = st.sampled_from(
    ["device", "port", "le", "a-b", "1x", "__x", "é", "job_id", "x:y", "x\n", "a.b"]
)
label_values = st.text(max_size=12) | st.sampled_from(['a"b', "c\\d", "e\nf", "mlx5_0", ""])
values = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.sampled_from([0, 1, 1e6, 1234567.0, 12345678, 0.1, -0.0, 2.5e-10, math.inf])
)


class Registry:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


@st.composite
def families(draw: st.DrawFn) -> list[Metric]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        base = draw(
            st.sampled_from(
                ["hpcobs_x", "a:b", "node_seconds", "x_y_z", "hpcobs_gpu_info", "gpu.util", "1é"]
            )
        )
        typ = draw(st.sampled_from(TYPES))
        unit = "seconds" if base.endswith("_seconds") and draw(st.booleans()) else ""
        doc = draw(st.text(max_size=20) | st.just('help "with"\\ and\nnewline'))
        try:
            metric = Metric(base, doc, typ, unit)
        except ValueError:
            continue
        shared = draw(st.dictionaries(label_names, label_values, max_size=3))
        for _ in range(draw(st.integers(0, 6))):
            suffix = draw(st.sampled_from(SUFFIXES))
            labels = (
                shared
                if draw(st.booleans())
                else draw(st.dictionaries(label_names, label_values, max_size=3))
            )
            timestamp = draw(st.none() | st.floats(0, 2e9) | st.integers(0, 2**31))
            exemplar = None
            if draw(st.integers(0, 9)) == 0:
                exemplar = Exemplar({"trace_id": "abc"}, 1.5, draw(st.none() | st.floats(0, 2e9)))
            metric.samples.append(
                Sample(metric.name + suffix, labels, draw(values), timestamp, exemplar)
            )
        out.append(metric)
    return out


def both(fast: Any, slow: Any, metrics: list[Metric]) -> None:
    try:
        expected = slow(Registry(metrics))
    except Exception as exc:
        with pytest.raises(type(exc)):
            fast(Registry(metrics))
        return
    assert fast(Registry(metrics)) == expected


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(families())
def test_text_format_is_byte_identical(metrics: list[Metric]) -> None:
    both(generate_text, text_format.generate_latest, metrics)


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(families())
def test_openmetrics_is_byte_identical(metrics: list[Metric]) -> None:
    assume(metrics)
    both(generate_openmetrics, openmetrics.generate_latest, metrics)


def test_shared_label_dicts_and_special_samples() -> None:
    labels = {"device": "mlx5_0", "port": "1"}
    counter = Metric("hpcobs_rdma_port_receive_bytes", "Bytes.", "counter")
    counter.samples += [
        Sample("hpcobs_rdma_port_receive_bytes_total", labels, 4.0e12),
        Sample("hpcobs_rdma_port_receive_bytes_created", labels, 1.7e9),
        Sample("hpcobs_rdma_port_receive_bytes_total", {**labels, "port": "2"}, 7),
    ]
    gauge = Metric("hpcobs_rdma_port_state", 'State "x"\n', "gauge")
    gauge.samples += [
        Sample("hpcobs_rdma_port_state", labels, 4),
        Sample("hpcobs_rdma_port_state", {}, math.nan),
    ]
    for fast, slow in (
        (generate_text, text_format.generate_latest),
        (generate_openmetrics, openmetrics.generate_latest),
    ):
        assert fast(Registry([counter, gauge])) == slow(Registry([counter, gauge]))


@pytest.mark.parametrize(
    ("accept", "fast"),
    [
        ("", generate_text),
        ("text/plain; version=0.0.4", generate_text),
        ("*/*", generate_text),
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            generate_openmetrics,
        ),
        ("application/openmetrics-text", generate_openmetrics),
    ],
)
def test_choose_encoder_picks_the_fast_ones(accept: str, fast: Any) -> None:
    encoder, content_type = choose_encoder(accept)
    assert encoder is fast
    assert content_type == text_format.choose_encoder(accept)[1]


def test_choose_encoder_leaves_other_negotiations_to_prometheus_client() -> None:
    accept = "application/openmetrics-text;version=1.0.0;escaping=dots"
    encoder, content_type = choose_encoder(accept)
    assert encoder not in (generate_text, generate_openmetrics)
    assert content_type == text_format.choose_encoder(accept)[1]


def test_no_private_prometheus_client_names() -> None:
    """Our code uses prometheus_client's public API only: its private helpers change without
    notice (`openmetrics._escape` changed signature in 0.23), so a floor could not hold."""
    found = []
    for path in sorted([*REPO.glob("exporters/**/*.py"), *REPO.glob("slo/**/*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        bound: set[str] = set()  # names that prometheus_client modules are imported as
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "prometheus_client"
            ):
                for alias in node.names:
                    if alias.name.startswith("_") or "._" in f".{node.module}":
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {alias.name}")
                    bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("prometheus_client"):
                        bound.add(alias.asname or alias.name.partition(".")[0])
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, found
