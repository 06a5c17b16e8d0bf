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
