"""The probe's statistics, as pure functions on numbers: no MPI, no clock, no I/O.

- `summarize`: min / p50 / p99 / max of a sample (linear-interpolated quantiles, numpy's
  default method, so the C reference benchmark computes the same figures).
- `slowest_per_iteration`: a collective's latency per iteration is the slowest rank's time.
- `subtract_overhead`: the Python-overhead correction (each rank's calibrated no-op time is
  subtracted from that rank's samples, never below zero).
- `plan_iterations`: how many timed iterations fit a time budget.
- `node_scores` / `slowness_ratios` / `worst_pairs`: from pairwise latencies to a per-node
  score, so one bad node stands out.
- `node_latencies`: per node, `NODE_STATS` over its pairs' latency summaries (the fabric
  heatmap's figures: one series per node and statistic, bounded by the node count).

Everything here raises `ValueError` on input it cannot summarise (empty samples, NaN,
negative times, ragged matrices) and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

STATS = ("min", "p50", "p99", "max")
NODE_STATS = ("p50", "p99", "max")
"""Per-node pairwise statistics (`node_latencies`)."""


@dataclass(frozen=True)
class Summary:
    """Order statistics of one sample, in seconds (or whatever unit the sample had)."""

    min: float
    p50: float
    p99: float
    max: float

    def stat(self, name: str) -> float:
        if name not in STATS:
            raise ValueError(f"unknown statistic {name!r}")
        value: float = getattr(self, name)
        return value

    def as_dict(self) -> dict[str, float]:
        return {name: self.stat(name) for name in STATS}

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> Summary:
        values = []
        for name in STATS:
            value = doc.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"summary field {name!r} must be a number, not {value!r}")
            values.append(float(value))
        return cls(*values)


def _checked(values: Iterable[float]) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError("empty sample")
    for v in out:
        if math.isnan(v) or math.isinf(v):
            raise ValueError(f"non-finite value in sample: {v!r}")
    return out


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) of an ascending sample, interpolating linearly."""
    if not sorted_values:
        raise ValueError("empty sample")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], not {q!r}")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    a, b = sorted_values[lo], sorted_values[hi]
    # a + (b - a) * frac can leave [a, b] by one ulp; clamp to keep quantiles monotone.
    return min(max(a + (b - a) * frac, a), b)


def summarize(values: Iterable[float]) -> Summary:
    """min, p50, p99 and max of a non-empty sample of finite numbers."""
    ordered = sorted(_checked(values))
    return Summary(ordered[0], quantile(ordered, 0.5), quantile(ordered, 0.99), ordered[-1])


def lower_median(values: Iterable[float]) -> float:
    """The median, taking the lower middle value for an even count (never an average)."""
    ordered = sorted(_checked(values))
    return ordered[(len(ordered) - 1) // 2]


def median(values: Iterable[float]) -> float:
    ordered = sorted(_checked(values))
    return quantile(ordered, 0.5)


def _matrix(per_rank: Sequence[Sequence[float]]) -> list[list[float]]:
    rows = [_checked(row) for row in per_rank]
    if not rows:
        raise ValueError("no ranks")
    width = len(rows[0])
    if any(len(row) != width for row in rows):
        raise ValueError("every rank must report the same number of iterations")
    return rows


def slowest_per_iteration(per_rank: Sequence[Sequence[float]]) -> list[float]:
    """Per iteration, the slowest rank's time: a collective is as fast as its slowest rank."""
    rows = _matrix(per_rank)
    return [max(column) for column in zip(*rows, strict=True)]


def subtract_overhead(
    per_rank: Sequence[Sequence[float]], overheads: Sequence[float]
) -> list[list[float]]:
    """Each rank's samples minus that rank's calibrated call overhead, floored at zero."""
    rows = _matrix(per_rank)
    costs = _checked(overheads)
    if len(costs) != len(rows):
        raise ValueError(f"{len(rows)} ranks but {len(costs)} overhead figures")
    if any(c < 0 for c in costs):
        raise ValueError("overheads must not be negative")
    return [[max(0.0, v - c) for v in row] for row, c in zip(rows, costs, strict=True)]


def plan_iterations(per_iteration: float, budget: float, minimum: int, maximum: int) -> int:
    """Timed iterations that fit `budget` seconds at `per_iteration` seconds each, clamped."""
    if minimum < 1 or maximum < minimum:
        raise ValueError(f"need 1 ≤ minimum ≤ maximum, got {minimum}, {maximum}")
    if math.isnan(per_iteration) or math.isnan(budget) or budget < 0 or per_iteration < 0:
        raise ValueError(f"bad estimate {per_iteration!r} or budget {budget!r}")
    if per_iteration == 0 or math.isinf(budget):
        return maximum
    fitting = budget / per_iteration
    if fitting >= maximum:
        return maximum
    return max(minimum, int(fitting))


@dataclass(frozen=True)
class PairLatency:
    """One pair of nodes and its typical (p50) one-way latency in seconds."""

    node_a: str
    node_b: str
    latency: float


def node_scores(pairs: Iterable[PairLatency]) -> dict[str, float]:
    """Per node, the lower median of the latencies of every pair it belongs to.

    A bad node makes all its pairs slow and so its own score; a single bad link makes only
    one of each end's pairs slow, which the lower median ignores for nodes in ≥ 2 pairs (the
    link itself shows in `worst_pairs`).
    """
    by_node: dict[str, list[float]] = {}
    for pair in pairs:
        if pair.node_a == pair.node_b:
            raise ValueError(f"a pair needs two different nodes, got {pair.node_a!r} twice")
        for node in (pair.node_a, pair.node_b):
            by_node.setdefault(node, []).append(pair.latency)
    return {node: lower_median(values) for node, values in sorted(by_node.items())}


def slowness_ratios(scores: Mapping[str, float]) -> dict[str, float]:
    """Each node's score over the median node score: 1 is typical, 3 is three times slower.

    With fewer than three nodes there is one pair and no way to tell its ends apart: both
    get 1.
    """
    if not scores:
        return {}
    values = _checked(scores.values())
    if any(v < 0 for v in values):
        raise ValueError("latencies must not be negative")
    typical = median(values)
    if len(scores) < 3 or typical <= 0:
        return dict.fromkeys(sorted(scores), 1.0)
    return {node: score / typical for node, score in sorted(scores.items())}


def worst_pairs(pairs: Iterable[PairLatency], k: int) -> list[PairLatency]:
    """The k slowest pairs, slowest first (ties broken by node names, so output is stable)."""
    if k < 0:
        raise ValueError("k must not be negative")
    ordered = sorted(pairs, key=lambda p: (-p.latency, p.node_a, p.node_b))
    return ordered[:k]


@dataclass(frozen=True)
class PairSummary:
    """One pair of nodes and the summary of its one-way latencies in seconds."""

    node_a: str
    node_b: str
    latency: Summary


@dataclass(frozen=True)
class NodeLatency:
    """A node's one-way latency over all the pairs it belongs to, in seconds.

    - `p50`: the lower median over its pairs of their p50: the node's typical latency (a bad
      node makes all its pairs slow; one bad link is ignored once a node has ≥ 2 pairs). The
      same figure as `node_scores`, behind `hpcobs_mpi_node_slowness_ratio`.
    - `p99`: the lower median over its pairs of their p99: its typical tail (jitter).
    - `max`: the highest p50 among its pairs: its worst link (a bad link shows at both ends).
    """

    p50: float
    p99: float
    max: float
    pairs: int

    def stat(self, name: str) -> float:
        if name not in NODE_STATS:
            raise ValueError(f"unknown node statistic {name!r}")
        value: float = getattr(self, name)
        return value

    def as_dict(self) -> dict[str, float]:
        return {name: self.stat(name) for name in NODE_STATS}


def node_latencies(pairs: Iterable[PairSummary]) -> dict[str, NodeLatency]:
    """Per node (sorted by name), `NODE_STATS` over the pairs it belongs to.

    One entry per node that appears in a pair, whatever the number of pairs: the metric built
    from it has at most nodes × len(NODE_STATS) series.
    """
    p50s: dict[str, list[float]] = {}
    p99s: dict[str, list[float]] = {}
    for pair in pairs:
        if pair.node_a == pair.node_b:
            raise ValueError(f"a pair needs two different nodes, got {pair.node_a!r} twice")
        p50, p99 = _checked([pair.latency.p50, pair.latency.p99])
        if p50 < 0 or p99 < 0:
            raise ValueError("latencies must not be negative")
        for node in (pair.node_a, pair.node_b):
            p50s.setdefault(node, []).append(p50)
            p99s.setdefault(node, []).append(p99)
    return {
        node: NodeLatency(
            p50=lower_median(p50s[node]),
            p99=lower_median(p99s[node]),
            max=max(p50s[node]),
            pairs=len(p50s[node]),
        )
        for node in sorted(p50s)
    }
