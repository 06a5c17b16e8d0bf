"""Pure statistics of the MPI probe (exporters/probe/stats.py), property-tested."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hpcobs.exporters.probe import stats
from hpcobs.exporters.probe.measure import slowest, split_counts
from hpcobs.exporters.probe.stats import PairLatency

pytestmark = pytest.mark.unit

times = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)
samples = st.lists(times, min_size=1, max_size=200)


@given(samples)
def test_summary_is_ordered_and_within_the_sample(values: list[float]) -> None:
    s = stats.summarize(values)
    assert min(values) == s.min <= s.p50 <= s.p99 <= s.max == max(values)


@given(samples, st.floats(min_value=0.0, max_value=1.0))
def test_quantile_matches_numpy_linear(values: list[float], q: float) -> None:
    ours = stats.quantile(sorted(values), q)
    assert math.isclose(ours, float(np.quantile(values, q)), rel_tol=1e-9, abs_tol=1e-12)


@given(samples, times)
def test_summary_shifts_with_a_constant(values: list[float], shift: float) -> None:
    a, b = stats.summarize(values), stats.summarize([v + shift for v in values])
    for name in stats.STATS:
        assert math.isclose(b.stat(name), a.stat(name) + shift, rel_tol=1e-9, abs_tol=1e-9)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20))
def test_summarize_raises_only_value_error(values: list[float]) -> None:
    try:
        s = stats.summarize(values)
    except ValueError:
        assert not values or any(math.isnan(v) or math.isinf(v) for v in values)
    else:
        assert s.min <= s.max


@st.composite
def matrices(draw: st.DrawFn) -> list[list[float]]:
    ranks = draw(st.integers(min_value=1, max_value=6))
    iterations = draw(st.integers(min_value=1, max_value=30))
    return [draw(st.lists(times, min_size=iterations, max_size=iterations)) for _ in range(ranks)]


@given(matrices())
def test_slowest_rank_defines_each_iteration(matrix: list[list[float]]) -> None:
    per_iteration = stats.slowest_per_iteration(matrix)
    assert len(per_iteration) == len(matrix[0])
    for i, value in enumerate(per_iteration):
        assert all(row[i] <= value for row in matrix)
        assert any(row[i] == value for row in matrix)


@given(matrices(), st.data())
def test_overhead_correction_is_floored_and_bounded(
    matrix: list[list[float]], data: st.DataObject
) -> None:
    overheads = data.draw(st.lists(times, min_size=len(matrix), max_size=len(matrix)))
    corrected = stats.subtract_overhead(matrix, overheads)
    for row, fixed, cost in zip(matrix, corrected, overheads, strict=True):
        for raw, value in zip(row, fixed, strict=True):
            assert 0.0 <= value <= raw
            assert value == max(0.0, raw - cost)


@settings(max_examples=50)
@given(matrices(), st.data())
def test_numpy_path_in_measure_matches_the_pure_functions(
    matrix: list[list[float]], data: st.DataObject
) -> None:
    overheads = data.draw(st.lists(times, min_size=len(matrix), max_size=len(matrix)))
    raw, corrected, who = slowest(np.asarray(matrix), np.asarray(overheads))
    assert raw.tolist() == stats.slowest_per_iteration(matrix)
    assert corrected.tolist() == stats.slowest_per_iteration(
        stats.subtract_overhead(matrix, overheads)
    )
    assert 0 <= who < len(matrix)


def test_ragged_or_mismatched_input_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        stats.slowest_per_iteration([[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError):
        stats.slowest_per_iteration([])
    with pytest.raises(ValueError):
        stats.subtract_overhead([[1.0]], [0.1, 0.2])
    with pytest.raises(ValueError):
        stats.subtract_overhead([[1.0]], [-0.1])


@given(
    st.floats(min_value=1e-9, max_value=10.0),
    st.floats(min_value=0.0, max_value=100.0),
    st.integers(min_value=1, max_value=100),
    st.integers(min_value=0, max_value=10000),
)
def test_iteration_plan_fits_the_budget_within_bounds(
    per_iteration: float, budget: float, minimum: int, extra: int
) -> None:
    maximum = minimum + extra
    n = stats.plan_iterations(per_iteration, budget, minimum, maximum)
    assert minimum <= n <= maximum
    if n > minimum:  # above the floor, the plan never overruns the budget
        assert n * per_iteration <= budget * (1 + 1e-9)
    if n < maximum:  # and below the cap it uses the budget (to one iteration)
        assert (n + 1) * per_iteration > budget * (1 - 1e-9) or n == minimum


def test_iteration_plan_grows_with_budget_and_shrinks_with_cost() -> None:
    assert stats.plan_iterations(1e-6, 0.01, 5, 10000) == 10000
    assert stats.plan_iterations(1e-3, 0.01, 5, 10000) == 10
    assert stats.plan_iterations(1.0, 0.01, 5, 10000) == 5
    assert stats.plan_iterations(0.0, 0.01, 5, 10000) == 10000
    with pytest.raises(ValueError):
        stats.plan_iterations(float("nan"), 1.0, 5, 10)


names = st.sampled_from([f"n{i}" for i in range(8)])


@st.composite
def full_meshes(draw: st.DrawFn) -> tuple[list[str], list[PairLatency], str]:
    """Every pair of 3–8 nodes with latencies around 1–2 µs; one node made 10× slower."""
    n = draw(st.integers(min_value=3, max_value=8))
    nodes = [f"n{i}" for i in range(n)]
    slow = draw(st.sampled_from(nodes))
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            base = draw(st.floats(min_value=1e-6, max_value=2e-6))
            factor = 10.0 if slow in (nodes[i], nodes[j]) else 1.0
            pairs.append(PairLatency(nodes[i], nodes[j], base * factor))
    return nodes, pairs, slow


@given(full_meshes())
def test_one_slow_node_stands_out(mesh: tuple[list[str], list[PairLatency], str]) -> None:
    nodes, pairs, slow = mesh
    ratios = stats.slowness_ratios(stats.node_scores(pairs))
    assert set(ratios) == set(nodes)
    assert max(ratios, key=lambda n: ratios[n]) == slow
    assert ratios[slow] >= 4.0
    assert all(ratios[n] <= 2.0 for n in nodes if n != slow)


def test_two_nodes_cannot_be_told_apart() -> None:
    ratios = stats.slowness_ratios(stats.node_scores([PairLatency("a", "b", 5e-6)]))
    assert ratios == {"a": 1.0, "b": 1.0}


@given(st.lists(st.tuples(names, names, times), max_size=30), st.integers(0, 10))
def test_worst_pairs_are_the_slowest_k(raw: list[tuple[str, str, float]], k: int) -> None:
    pairs = [PairLatency(a, b, t) for a, b, t in raw if a != b]
    worst = stats.worst_pairs(pairs, k)
    assert len(worst) == min(k, len(pairs))
    assert [p.latency for p in worst] == sorted((p.latency for p in worst), reverse=True)
    if worst:
        rest = [p for p in pairs if p not in worst]
        assert all(p.latency <= worst[-1].latency for p in rest)


@given(st.lists(st.tuples(names, names, times), max_size=30))
def test_node_scores_raise_only_value_error(raw: list[tuple[str, str, float]]) -> None:
    pairs = [PairLatency(a, b, t) for a, b, t in raw]
    try:
        scores = stats.node_scores(pairs)
    except ValueError:
        assert any(p.node_a == p.node_b for p in pairs)
        return
    ratios = stats.slowness_ratios(scores)
    assert set(ratios) == set(scores)
    assert all(r >= 0 for r in ratios.values())


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=512))
def test_split_counts_covers_the_vector_evenly(count: int, parts: int) -> None:
    counts = split_counts(count, parts)
    assert len(counts) == parts and sum(counts) == count
    assert max(counts) - min(counts) <= 1
    assume(count >= parts)
    assert min(counts) >= 1


# -- per-node latency (the fabric heatmap) ---------------------------------------------------


def summary_of(p50: float, spread: float) -> stats.Summary:
    return stats.Summary(p50, p50, p50 + spread, p50 + 2 * spread)


@st.composite
def pair_summaries(draw: st.DrawFn) -> list[stats.PairSummary]:
    """Pairs of distinct nodes (a pair may repeat, as from several runs), any latencies."""
    raw = draw(st.lists(st.tuples(names, names, times, times), max_size=40))
    return [stats.PairSummary(a, b, summary_of(p50, s)) for a, b, p50, s in raw if a != b]


@given(pair_summaries())
def test_node_latency_summarises_each_nodes_pairs(pairs: list[stats.PairSummary]) -> None:
    per_node = stats.node_latencies(pairs)
    mine = {n: [p for p in pairs if n in (p.node_a, p.node_b)] for n in per_node}
    assert set(per_node) == {n for p in pairs for n in (p.node_a, p.node_b)}
    assert list(per_node) == sorted(per_node)
    for node, figures in per_node.items():
        p50s = [p.latency.p50 for p in mine[node]]
        p99s = [p.latency.p99 for p in mine[node]]
        assert figures.pairs == len(mine[node])
        assert figures.p50 in p50s and figures.p99 in p99s  # a measured figure, not an average
        assert min(p50s) <= figures.p50 <= figures.max == max(p50s)
        assert min(p99s) <= figures.p99 <= max(p99s)
        assert sorted(figures.as_dict()) == sorted(stats.NODE_STATS)
    # the p50 is the node score behind hpcobs_mpi_node_slowness_ratio
    scores = stats.node_scores(PairLatency(p.node_a, p.node_b, p.latency.p50) for p in pairs)
    assert {n: f.p50 for n, f in per_node.items()} == scores


@given(pair_summaries(), st.integers(min_value=1, max_value=5))
def test_node_latency_is_bounded_by_the_node_count(
    pairs: list[stats.PairSummary], repeats: int
) -> None:
    """One entry per node, however many pairs (or repeated measurements of a pair)."""
    nodes = {n for p in pairs for n in (p.node_a, p.node_b)}
    per_node = stats.node_latencies(pairs * repeats)
    assert len(per_node) == len(nodes) <= 2 * len(pairs)
    assert per_node == {
        n: stats.NodeLatency(f.p50, f.p99, f.max, f.pairs * repeats)
        for n, f in stats.node_latencies(pairs).items()
    }


@given(full_meshes())
def test_a_slow_node_is_the_hottest_row(mesh: tuple[list[str], list[PairLatency], str]) -> None:
    nodes, pairs, slow = mesh
    per_node = stats.node_latencies(
        stats.PairSummary(p.node_a, p.node_b, summary_of(p.latency, 0.0)) for p in pairs
    )
    assert set(per_node) == set(nodes)
    assert max(per_node, key=lambda n: per_node[n].p50) == slow
    assert all(per_node[slow].p50 >= 4 * per_node[n].p50 for n in nodes if n != slow)


@given(st.integers(min_value=3, max_value=8), st.data())
def test_a_bad_link_shows_at_both_ends_only_as_max(n: int, data: st.DataObject) -> None:
    nodes = [f"n{i}" for i in range(n)]
    a, b = data.draw(st.sampled_from([(x, y) for x in nodes for y in nodes if x < y]))
    pairs = [
        stats.PairSummary(x, y, summary_of(1e-3 if (x, y) == (a, b) else 1e-6, 0.0))
        for i, x in enumerate(nodes)
        for y in nodes[i + 1 :]
    ]
    per_node = stats.node_latencies(pairs)
    assert {node for node, f in per_node.items() if f.max == 1e-3} == {a, b}
    assert all(f.p50 == 1e-6 for f in per_node.values())  # ≥ 2 pairs each: the link is ignored


@given(st.lists(st.tuples(names, names, st.floats(allow_nan=True, allow_infinity=True))))
def test_node_latencies_raise_only_value_error(raw: list[tuple[str, str, float]]) -> None:
    pairs = [stats.PairSummary(a, b, stats.Summary(t, t, t, t)) for a, b, t in raw]
    try:
        per_node = stats.node_latencies(pairs)
    except ValueError:
        assert any(
            p.node_a == p.node_b or not math.isfinite(p.latency.p50) or p.latency.p50 < 0
            for p in pairs
        )
    else:
        assert all(f.max >= f.p50 >= 0 for f in per_node.values())


def test_node_latency_stat_names() -> None:
    figures = stats.NodeLatency(1.0, 2.0, 3.0, 2)
    assert [figures.stat(s) for s in stats.NODE_STATS] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="unknown node statistic"):
        figures.stat("min")
