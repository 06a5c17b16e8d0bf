"""The version of hpcobs and the `hpcobs_build_info` metric every daemon exports."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.metricdef import MetricDef

try:
    VERSION = version("hpcobs")
except PackageNotFoundError:  # running from a source tree without installation
    VERSION = "0.0.0+unknown"


BUILD_INFO = MetricDef(
    "hpcobs_build_info",
    "gauge",
    "A metric with a constant 1 labelled by the hpcobs version and Python version.",
    ("version", "python_version"),
)
METRICS = (BUILD_INFO,)
_BUILD_LABELS = [VERSION, platform.python_version()]  # constant for the process' lifetime


def build_info() -> Iterator[Metric]:
    family = BUILD_INFO.gauge()
    family.add_metric(_BUILD_LABELS, 1.0)
    yield family
