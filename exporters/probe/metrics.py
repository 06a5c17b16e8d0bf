"""The probe's metrics: declarations, and families built from one run's result (pure)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from hpcobs.exporters.probe.model import ProbeResult
from hpcobs.exporters.probe.stats import NODE_STATS, STATS
from hpcobs.exporters.probe.verdict import Verdict
from hpcobs.exporters.runtime.metricdef import MetricDef

COLLECTIVE_LATENCY = MetricDef(
    "hpcobs_mpi_collective_latency_seconds",
    "gauge",
    "Latency of an MPI collective at one message size: per iteration the slowest rank's time, "
    "corrected for the calibrated Python call overhead; stat is min, p50, p99 or max over the "
    "iterations.",
    ("op", "size_bytes", "stat"),
)
COLLECTIVE_LATENCY_RAW = MetricDef(
    "hpcobs_mpi_collective_latency_raw_seconds",
    "gauge",
    "As hpcobs_mpi_collective_latency_seconds, before the Python call overhead is subtracted.",
    ("op", "size_bytes", "stat"),
)
COLLECTIVE_ITERATIONS = MetricDef(
    "hpcobs_mpi_collective_iterations",
    "gauge",
    "Timed iterations behind the latency figures of one collective and message size.",
    ("op", "size_bytes"),
)
CALL_OVERHEAD = MetricDef(
    "hpcobs_mpi_probe_call_overhead_seconds",
    "gauge",
    "Calibrated Python + mpi4py cost of one timed call (the same loop around a no-op on "
    "MPI_COMM_SELF), median over ranks; subtracted from the raw figures.",
    ("op",),
)
PAIR_LATENCY = MetricDef(
    "hpcobs_mpi_pair_latency_seconds",
    "gauge",
    "Median one-way point-to-point latency (half an 8-byte ping-pong round trip, less the "
    "timing loop's calibrated overhead) of the slowest node pairs only (--pairwise.top-k).",
    ("node_a", "node_b"),
)
PAIR_BANDWIDTH = MetricDef(
    "hpcobs_mpi_pair_bandwidth_bytes_per_second",
    "gauge",
    "Point-to-point ping-pong bandwidth of the node pairs with the lowest bandwidth only "
    "(--pairwise.top-k).",
    ("node_a", "node_b"),
)
NODE_SLOWNESS = MetricDef(
    "hpcobs_mpi_node_slowness_ratio",
    "gauge",
    "A node's pairwise latency score (lower median over its pairs) divided by the median "
    "node's score: about 1 is typical, above 1 is slower than its peers.",
    ("node",),
)
NODE_LATENCY = MetricDef(
    "hpcobs_mpi_node_latency_seconds",
    "gauge",
    "A node's one-way point-to-point latency over all its pairs in the pairwise phase "
    "(8-byte ping-pong, corrected for the timing loop's calibrated overhead): stat p50 is "
    "the lower median over its pairs of their p50, p99 the same of their p99, max its "
    "slowest pair's p50. One series per node and stat.",
    ("node", "stat"),
)
LAST_SUCCESS = MetricDef(
    "hpcobs_mpi_probe_last_success_timestamp_seconds",
    "gauge",
    "Unix time at which the probe last finished a measurement.",
)
RANKS = MetricDef("hpcobs_mpi_probe_ranks", "gauge", "MPI ranks the probe ran with.")
NODES = MetricDef(
    "hpcobs_mpi_probe_nodes", "gauge", "Nodes (as identified for the pairwise phase) probed."
)
DURATION = MetricDef(
    "hpcobs_mpi_probe_duration_seconds", "gauge", "Wall time of the probe's measurement."
)
REGRESSIONS = MetricDef(
    "hpcobs_mpi_probe_regressions",
    "gauge",
    "Figures beyond the baseline tolerance in the last run (absent without --baseline).",
)
BASELINE_RATIO = MetricDef(
    "hpcobs_mpi_collective_baseline_ratio",
    "gauge",
    "Corrected p50 latency over the baseline's, per collective and message size (absent "
    "without --baseline).",
    ("op", "size_bytes"),
)
METRICS = (
    COLLECTIVE_LATENCY,
    COLLECTIVE_LATENCY_RAW,
    COLLECTIVE_ITERATIONS,
    CALL_OVERHEAD,
    PAIR_LATENCY,
    PAIR_BANDWIDTH,
    NODE_SLOWNESS,
    NODE_LATENCY,
    LAST_SUCCESS,
    RANKS,
    NODES,
    DURATION,
    REGRESSIONS,
    BASELINE_RATIO,
)

UNITS = {"seconds": "s", "bytes_per_second": "By/s", "ratio": "1"}


def unit_of(name: str) -> str:
    """The UCUM unit OTLP wants for a metric, from its Prometheus name's suffix."""
    for suffix, unit in sorted(UNITS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith("_" + suffix):
            return unit
    return "1"


def families(result: ProbeResult, verdict: Verdict, top_k: int) -> Iterator[Metric]:
    """Every family of one run, built fresh."""
    latency = COLLECTIVE_LATENCY.gauge()
    raw = COLLECTIVE_LATENCY_RAW.gauge()
    iterations = COLLECTIVE_ITERATIONS.gauge()
    for c in result.collectives:
        size = str(c.size_bytes)
        for stat in STATS:
            latency.add_metric([c.op, size, stat], c.corrected.stat(stat))
            raw.add_metric([c.op, size, stat], c.raw.stat(stat))
        iterations.add_metric([c.op, size], c.iterations)
    yield from (latency, raw, iterations)

    overhead = CALL_OVERHEAD.gauge()
    for op, seconds in sorted(result.overhead_seconds.items()):
        overhead.add_metric([op], seconds)
    yield overhead

    pair_latency = PAIR_LATENCY.gauge()
    for p in result.worst_pairs[:top_k]:
        pair_latency.add_metric([p.node_a, p.node_b], p.latency.p50)
    yield pair_latency
    pair_bw = PAIR_BANDWIDTH.gauge()
    slowest_bw = sorted(
        result.pairs, key=lambda p: (p.bandwidth_bytes_per_second, p.node_a, p.node_b)
    )
    for p in slowest_bw[:top_k]:
        pair_bw.add_metric([p.node_a, p.node_b], p.bandwidth_bytes_per_second)
    yield pair_bw
    slowness = NODE_SLOWNESS.gauge()
    for node, ratio in sorted(result.node_slowness.items()):
        slowness.add_metric([node], ratio)
    yield slowness
    node_latency = NODE_LATENCY.gauge()
    for node, figures in sorted(result.node_latency.items()):
        for stat in NODE_STATS:
            node_latency.add_metric([node, stat], figures.stat(stat))
    yield node_latency

    for definition, value in (
        (LAST_SUCCESS, result.finished_unix),
        (RANKS, float(result.ranks)),
        (NODES, float(len(result.nodes))),
        (DURATION, result.duration_seconds),
    ):
        family = definition.gauge()
        family.add_metric([], value)
        yield family

    if verdict.compared and verdict.comparisons:
        regressions = REGRESSIONS.gauge()
        regressions.add_metric([], float(len(verdict.regressions)))
        yield regressions
        baseline_ratio = BASELINE_RATIO.gauge()
        for comparison in verdict.comparisons:
            op, size_bytes = comparison.cell
            baseline_ratio.add_metric([op, str(size_bytes)], comparison.ratio)
        yield baseline_ratio


class _Snapshot(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def registry(result: ProbeResult, verdict: Verdict, top_k: int) -> CollectorRegistry:
    """A registry holding just this run's families (for push_to_gateway / text exposition)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Snapshot(list(families(result, verdict, top_k))))
    return reg
