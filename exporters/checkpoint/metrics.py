"""The checkpoint metrics: declarations, the families of a stream, and reading its totals back
from the exposition text it wrote (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from hpcobs.exporters.checkpoint.model import Attempt, Totals
from hpcobs.exporters.runtime.metricdef import MetricDef

LABELS = ("job_id", "name")
DURATION = MetricDef(
    "hpcobs_checkpoint_duration_seconds",
    "gauge",
    "Wall time of the stream's latest checkpoint attempt (hpcobs-checkpoint), whatever its result.",
    LABELS,
)
BYTES = MetricDef(
    "hpcobs_checkpoint_bytes",
    "gauge",
    "Bytes the latest checkpoint attempt wrote: the size of --path when given, else the "
    "command's (or the with-block's) storage write counter (write_bytes of /proc/<pid>/io).",
    LABELS,
)
LAST_SUCCESS = MetricDef(
    "hpcobs_checkpoint_last_success_timestamp_seconds",
    "gauge",
    "Unix time at which the stream's latest successful checkpoint ended (absent before the first).",
    LABELS,
)
CHECKPOINTS = MetricDef(
    "hpcobs_checkpoints_total",
    "counter",
    "Checkpoint attempts of the stream (job and name) on this node, by result (success, "
    "failure: a non-zero exit code, a signal, or an exception in the with-block).",
    (*LABELS, "result"),
)
SECONDS = MetricDef(
    "hpcobs_checkpoint_seconds_total",
    "counter",
    "Wall time the stream's checkpoints took on this node (failed ones included; overlapping "
    "attempts, such as several ranks checkpointing at once, counted once).",
    LABELS,
)
RUN_SECONDS = MetricDef(
    "hpcobs_checkpoint_run_seconds_total",
    "counter",
    "The job's run time up to the end of the stream's latest checkpoint; divide the increase of "
    "hpcobs_checkpoint_seconds_total by its increase for the share of the run spent checkpointing.",
    LABELS,
)
METRICS = (DURATION, BYTES, LAST_SUCCESS, CHECKPOINTS, SECONDS, RUN_SECONDS)

RESULTS = ("success", "failure")


def _usable(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def parse_totals(text: str, job_id: str, name: str) -> Totals | None:
    """The totals of stream (`job_id`, `name`) in exposition `text`; None when it has none.

    The text comes from a file anyone with write access to the directory could have left, so
    nothing in it may raise: unparsable text is None, odd values (negative, NaN) are ignored.
    """
    try:
        families = list(text_string_to_metric_families(text))
    except Exception:  # the parser raises ValueError, but also others on some malformed input
        return None
    values: dict[tuple[str, str], float] = {}
    for family in families:
        for sample in family.samples:
            if sample.labels.get("job_id") != job_id or sample.labels.get("name") != name:
                continue
            if not isinstance(sample.value, int | float) or not _usable(float(sample.value)):
                continue
            values[(sample.name, sample.labels.get("result", ""))] = float(sample.value)
    counted = CHECKPOINTS.name
    if (counted, "success") not in values and (counted, "failure") not in values:
        return None
    return Totals(
        success=values.get((counted, "success"), 0.0),
        failure=values.get((counted, "failure"), 0.0),
        seconds=values.get((SECONDS.name, ""), 0.0),
        run_seconds=values.get((RUN_SECONDS.name, ""), 0.0),
        last_success=values.get((LAST_SUCCESS.name, "")),
    )


def families(job_id: str, name: str, totals: Totals, attempt: Attempt) -> list[Metric]:
    """The stream's metric families after `attempt` (both results always present)."""
    labels = [job_id, name]
    duration = DURATION.gauge()
    duration.add_metric(labels, attempt.duration)
    out: list[Metric] = [duration]
    if attempt.written_bytes is not None:
        written = BYTES.gauge()
        written.add_metric(labels, attempt.written_bytes)
        out.append(written)
    if totals.last_success is not None:
        last = LAST_SUCCESS.gauge()
        last.add_metric(labels, totals.last_success)
        out.append(last)
    counted = CHECKPOINTS.counter()
    counted.add_metric([*labels, "success"], totals.success)
    counted.add_metric([*labels, "failure"], totals.failure)
    seconds = SECONDS.counter()
    seconds.add_metric(labels, totals.seconds)
    run = RUN_SECONDS.counter()
    run.add_metric(labels, totals.run_seconds)
    return [*out, counted, seconds, run]


class _Families(Collector):
    def __init__(self, metrics: Sequence[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def registry_of(metrics: Sequence[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(metrics))
    return registry
