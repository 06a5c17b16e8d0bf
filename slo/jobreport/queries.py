"""The PromQL of a job report, as pure functions of the job and its window.

A report sends three requests whatever the job's size:

1. `locate_expr`, a range query over the search range (default 90 days) in coarse buckets:
   which buckets hold samples of the job's processes, GPUs or failed-job record;
2. `refine_expr`, one instant query: the exact first and last sample times inside the first
   and last bucket (1-second subqueries pinned there with `@`), the nodes and GPUs the job
   was seen on, and whether it is still live;
3. `figures_expr`, one instant query: every figure of the report, each branch tagged with a
   `figure` label and pinned to its own time with `@`, joined with `or`.

Branches are unions of aggregations (`by (node)`, `by (node, gpu, uuid)`, `by (fs)`, ...), so
the number of requests does not grow with nodes, GPUs, targets or checkpoints.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

RUN_METRICS = ("hpcobs_job_processes", "hpcobs_gpu_job_info")
FAILED_INFO = "hpcobs_slurm_job_failed_info"
LOCATE_SOURCES = {"processes": RUN_METRICS[0], "gpus": RUN_METRICS[1], "failed": FAILED_INFO}
RECORD_LABELS = ("user", "account", "nodes", "log_url")
RECORD_BY = ", ".join(("partition", "state", "exit_code", *RECORD_LABELS))
JOB_ID = re.compile(r"[A-Za-z0-9_.:@+-]{1,128}")


def quote(value: str) -> str:
    """A PromQL string literal (Go escapes, which JSON's are a subset of)."""
    return json.dumps(value)


def regex_union(values: Iterable[str]) -> str:
    """A PromQL regex matching exactly these values (PromQL anchors regexes itself)."""
    return "|".join(re.escape(v) for v in sorted(set(values)))


def duration(seconds: float) -> str:
    """A PromQL duration in whole milliseconds, at least 1 ms."""
    return f"{max(1, math.ceil(seconds * 1000 - 1e-6))}ms"


def at(t: float) -> str:
    return f"@ {t:.3f}"


def tagged(expr: str, label: str, value: str) -> str:
    return f"label_replace({expr}, {quote(label)}, {quote(value)}, '', '')"


def union(branches: Iterable[str]) -> str:
    return "\n or ".join(branches)


Matcher = tuple[str, str, str]  # (label, "=" or "=~", value)


def eq(label: str, value: str) -> Matcher:
    return (label, "=", value)


def re_(label: str, value: str) -> Matcher:
    return (label, "=~", value)


@dataclass(frozen=True)
class Selectors:
    """Label matchers of the job (`job_id`, plus `cluster` when known) and of its cluster."""

    job_id: str
    cluster: str | None = None
    cluster_label: str = "cluster"

    def matchers(self, *extra: Matcher) -> str:
        found = [] if self.cluster is None else [eq(self.cluster_label, self.cluster)]
        return ",".join(f"{label}{op}{quote(value)}" for label, op, value in [*found, *extra])

    def job(self, metric: str, *extra: Matcher) -> str:
        return f"{metric}{{{self.matchers(eq('job_id', self.job_id), *extra)}}}"

    def job_names(self, names_re: str) -> str:
        """The job's series of every metric whose name matches `names_re`."""
        return f"{{{self.matchers(re_('__name__', names_re), eq('job_id', self.job_id))}}}"

    def run(self) -> str:
        """Every run marker of the job: its processes and the GPUs it holds."""
        return self.job_names("|".join(RUN_METRICS))

    def cluster_wide(self, metric: str, *extra: Matcher) -> str:
        inner = self.matchers(*extra)
        return f"{metric}{{{inner}}}" if inner else metric


# -- 1. locate -----------------------------------------------------------------------------
def locate_expr(sel: Selectors, bucket: float) -> str:
    """Per source, how many samples fall in each bucket (range query with step = bucket)."""
    return union(
        tagged(f"sum(count_over_time({sel.job(metric)}[{duration(bucket)}]))", "source", name)
        for name, metric in LOCATE_SOURCES.items()
    )


def locate_grid(as_of: float, search: float, max_points: int = 1000) -> tuple[float, float, float]:
    """(start, end, step) of the locate query: whole seconds, at most `max_points` points,
    buckets of at least a minute, the last one ending at or after `as_of`."""
    step = max(60, math.ceil(search / max_points))
    end = float(math.ceil(as_of))
    points = max(1, math.ceil(search / step))
    return end - (points - 1) * step, end, float(step)


# -- 2. refine -----------------------------------------------------------------------------
def refine_expr(sel: Selectors, first_bucket: float, last_bucket: float, bucket: float) -> str:
    """Exact first and last sample times, nodes, GPUs and liveness (instant query at as_of).

    A bucket is the range (t - bucket, t]; a 1-second subquery there sees every sample
    timestamp (`timestamp()` of a selector is the sample's own time), so its min and max are
    the first and last sample exactly, for any scrape interval of a second or more."""
    span = last_bucket - first_bucket + bucket
    processes = sel.job(RUN_METRICS[0])
    gpus = sel.job(RUN_METRICS[1])
    return union(
        [
            tagged(
                f"min(min_over_time(timestamp({sel.run()})[{duration(bucket)}:1s] "
                f"{at(first_bucket)}))",
                "edge",
                "first",
            ),
            tagged(
                f"max(max_over_time(timestamp({sel.run()})[{duration(bucket)}:1s] "
                f"{at(last_bucket)}))",
                "edge",
                "last",
            ),
            tagged(
                f"count by (cluster, node) (last_over_time({processes}[{duration(span)}] "
                f"{at(last_bucket)}))",
                "edge",
                "node",
            ),
            tagged(
                f"count by (cluster, node) (last_over_time({gpus}[{duration(span)}] "
                f"{at(last_bucket)}))",
                "edge",
                "gpu_node",
            ),
            tagged(f"count({sel.run()})", "edge", "live"),
        ]
    )


# -- 3. figures ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Times:
    """Evaluation times of the figures query (all ≤ as_of)."""

    first: float  # t0: the first sample of the run
    last: float  # t1: the last sample of the run
    settled: float  # t1 + settle (capped at as_of): Lustre, checkpoints, failed-job record
    start_before: float  # t0 - match window: Slurm's counters before the job's start
    start_after: float  # t0 + match window (capped)
    end_before: float  # t1 - match window
    end_after: float  # t1 + match window (capped)
    alert_step: float  # subquery resolution for the last firing time of alerts

    @staticmethod
    def of(first: float, last: float, as_of: float, settle: float, match: float) -> Times:
        run = max(0.0, last - first)
        return Times(
            first=first,
            last=last,
            settled=min(last + settle, as_of),
            start_before=first - match,
            start_after=min(first + match, as_of),
            end_before=last - match,
            end_after=min(last + match, as_of),
            alert_step=float(max(1, math.ceil(run / 10_000))),
        )

    def run_range(self) -> str:
        return duration(self.last - self.first + 0.001)

    def settled_range(self) -> str:
        return duration(self.settled - self.first + 0.001)


GPU_KEY = "cluster, node, gpu, uuid"


def figures_expr(
    sel: Selectors, times: Times, nodes: Iterable[str], live: bool
) -> tuple[str, tuple[str, ...]]:
    """Every figure in one instant query; returns the expression and the figure names in it."""
    t = times
    r, r_end, settled = t.run_range(), at(t.last), at(t.settled)
    rs = t.settled_range()
    node_re = regex_union(nodes)
    held = f"max by ({GPU_KEY}) (max_over_time({sel.job('hpcobs_gpu_job_info')}[{r}] {r_end}))"

    def on_held(metric: str, fn: str) -> str:
        series = sel.cluster_wide(metric, re_("node", node_re))
        return (
            f"max by (node, gpu, uuid) ({fn}({series}[{r}] {r_end})"
            f" * on ({GPU_KEY}) group_left () {held})"
        )

    def delta(metric: str, by: str, before: float, after: float) -> str:
        series = sel.cluster_wide(metric)
        return f"sum by ({by}) ({series} {at(after)} - {series} {at(before)}) != 0"

    branches: dict[str, str] = {
        "cpu_seconds": f"max by (node) (max_over_time("
        f"{sel.job('hpcobs_job_cpu_seconds_total')}[{r}] {r_end}))",
        "memory_peak": f"max by (node) (max_over_time({sel.job('hpcobs_job_memory_bytes')}[{r}] {r_end}))",
        "gpu_held": f"max by (node, gpu, uuid) (max_over_time("
        f"{sel.job('hpcobs_gpu_job_info')}[{r}] {r_end}))",
        "gpu_memory_peak": f"max by (node, gpu, uuid) (max_over_time("
        f"{sel.job('hpcobs_gpu_job_memory_used_bytes')}[{r}] {r_end}))",
        "lustre_read": f"sum by (fs) (max_over_time("
        f"{sel.job('hpcobs_lustre_job_read_bytes_total')}[{rs}] {settled}))",
        "lustre_write": f"sum by (fs) (max_over_time("
        f"{sel.job('hpcobs_lustre_job_write_bytes_total')}[{rs}] {settled}))",
        "lustre_ops": f"sum by (fs, operation) (max_over_time("
        f"{sel.job('hpcobs_lustre_job_operations_total')}[{rs}] {settled}))",
        # one branch per counter: resets() drops the name, and read and write series of a
        # target would then collide
        **{
            f"lustre_resets_{metric}": f"sum by (fs) (resets("
            f"{sel.job(f'hpcobs_lustre_job_{metric}_total')}[{rs}] {settled}))"
            for metric in ("read_bytes", "write_bytes", "operations")
        },
        "ckpt_seconds": f"max by (node, name) (max_over_time("
        f"{sel.job('hpcobs_checkpoint_seconds_total')}[{rs}] {settled}))",
        "ckpt_longest": f"max by (node, name) (max_over_time("
        f"{sel.job('hpcobs_checkpoint_duration_seconds')}[{rs}] {settled}))",
        "ckpt_last": f"max by (node, name) (last_over_time("
        f"{sel.job('hpcobs_checkpoint_duration_seconds')}[{rs}] {settled}))",
        "ckpt_attempts": f"max by (node, name, result) (max_over_time("
        f"{sel.job('hpcobs_checkpoints_total')}[{rs}] {settled}))",
        "failed_info": f"max by ({RECORD_BY}) (max_over_time("
        f"{sel.job(FAILED_INFO)}[{rs}] {settled}))",
        "starts": delta(
            "hpcobs_slurm_job_queue_wait_seconds_count", "partition", t.start_before, t.start_after
        ),
        "waits": delta(
            "hpcobs_slurm_job_queue_wait_seconds_sum", "partition", t.start_before, t.start_after
        ),
        "alerts_job_since": f"min_over_time({sel.job('ALERTS_FOR_STATE')}[{r}] {r_end})",
        "alerts_job_last": f"max_over_time(timestamp("
        f"{sel.job('ALERTS', eq('alertstate', 'firing'))})[{r}:{duration(t.alert_step)}] {r_end})",
        # the subquery's steps are whole seconds: a sample in the run's last fraction of a
        # second is the latest sample at t1 itself
        "alerts_job_end": f"timestamp({sel.job('ALERTS', eq('alertstate', 'firing'))} {r_end})",
    }
    if node_re:
        branches["gpu_util_mean"] = on_held("hpcobs_gpu_utilization_ratio", "avg_over_time")
        branches["gpu_util_max"] = on_held("hpcobs_gpu_utilization_ratio", "max_over_time")
        branches["gpu_memory_total"] = on_held("hpcobs_gpu_memory_total_bytes", "max_over_time")
        alerts = sel.cluster_wide("ALERTS", eq("alertstate", "firing"), re_("node", node_re))
        for_state = sel.cluster_wide("ALERTS_FOR_STATE", re_("node", node_re))
        branches["alerts_node_since"] = f"min_over_time({for_state}[{r}] {r_end})"
        branches["alerts_node_last"] = (
            f"max_over_time(timestamp({alerts})[{r}:{duration(t.alert_step)}] {r_end})"
        )
        branches["alerts_node_end"] = f"timestamp({alerts} {r_end})"
    if not live:
        branches["ends"] = delta(
            "hpcobs_slurm_jobs_finished_total", "partition, state, cause", t.end_before, t.end_after
        )
        branches["allocated"] = delta(
            "hpcobs_slurm_job_resource_seconds_total",
            "partition, state, resource",
            t.end_before,
            t.end_after,
        )
    return union(tagged(expr, "figure", name) for name, expr in branches.items()), tuple(branches)


def failed_only_expr(sel: Selectors, first_bucket: float, last_bucket: float, bucket: float) -> str:
    """When no process or GPU of the job was sampled: its failed-job record alone."""
    span = last_bucket - first_bucket + bucket
    return tagged(
        f"max by ({RECORD_BY}) (max_over_time("
        f"{sel.job(FAILED_INFO)}[{duration(span)}] {at(last_bucket)}))",
        "figure",
        "failed_info",
    )
