"""Baselines, verdicts and exit codes of the MPI probe (exporters/probe/verdict.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.exporters.probe import verdict as v

pytestmark = pytest.mark.unit

ops = st.sampled_from(["allreduce", "bcast", "allgather", "alltoall", "reduce_scatter"])
cells = st.tuples(ops, st.integers(min_value=1, max_value=1 << 22).map(lambda n: n * 8))
seconds = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
figures = st.dictionaries(cells, seconds, min_size=1, max_size=20)


@given(figures, st.integers(1, 4096), st.integers(1, 4096), st.sampled_from(v.TIMERS))
def test_baseline_round_trips(
    p50: dict[tuple[str, int], float], ranks: int, nodes: int, timer: str
) -> None:
    base = v.make_baseline(p50, ranks, nodes, 1.7e9, timer=timer)
    again = v.loads_baseline(v.dumps_baseline(base))
    assert again == base and again.timer == timer


@given(st.text(max_size=300))
def test_loading_arbitrary_text_raises_only_value_error(text: str) -> None:
    try:
        base = v.loads_baseline(text)
    except ValueError:
        return
    assert base.ranks >= 1 and base.p50_seconds


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_loading_arbitrary_json_raises_only_value_error(doc: object) -> None:
    try:
        base = v.loads_baseline(json.dumps(doc))
    except ValueError:
        return
    assert base.ranks >= 1 and base.p50_seconds


def test_a_bad_baseline_names_the_problem() -> None:
    good = json.loads(v.dumps_baseline(v.make_baseline({("allreduce", 8): 1e-6}, 2, 2, 0.0)))
    for mutate, message in [
        (lambda d: d.update(format="other/1"), "format"),
        (lambda d: d.update(ranks=0), "ranks"),
        (lambda d: d.update(p50_seconds={}), "p50_seconds"),
        (lambda d: d["p50_seconds"].update({"allreduce/8": -1}), "allreduce/8"),
        (lambda d: d["p50_seconds"].update({"nonsense": 1.0}), "nonsense"),
        (lambda d: d.update(timer="rdtsc"), "timer"),
    ]:
        doc = json.loads(json.dumps(good))
        mutate(doc)
        with pytest.raises(ValueError, match=message):
            v.loads_baseline(json.dumps(doc))


@given(figures, st.floats(0.0, 2.0), st.floats(0.0, 1e-5), st.data())
def test_a_cell_regresses_exactly_when_it_exceeds_its_limit(
    p50: dict[tuple[str, int], float], tolerance: float, slack: float, data: st.DataObject
) -> None:
    base = v.make_baseline(p50, 4, 4, 0.0)
    factors = {c: data.draw(st.floats(0.0, 5.0)) for c in p50}
    current = {c: p50[c] * f for c, f in factors.items()}
    verdict = v.compare(base, current, 4, 4, tolerance, slack)
    assert verdict.compared and len(verdict.comparisons) == len(p50)
    for c in verdict.comparisons:
        limit = p50[c.cell] * (1 + tolerance) + slack
        assert c.regressed == (current[c.cell] > limit)
    expected = v.EXIT_REGRESSION if verdict.regressions else v.EXIT_HEALTHY
    assert verdict.exit_code == expected


@given(figures)
def test_the_same_figures_are_healthy_and_much_slower_ones_regress(
    p50: dict[tuple[str, int], float],
) -> None:
    base = v.make_baseline(p50, 2, 2, 0.0)
    assert v.compare(base, p50, 2, 2, 0.0).exit_code == v.EXIT_HEALTHY
    slower = {c: x * 3 + 1e-3 for c, x in p50.items()}
    verdict = v.compare(base, slower, 2, 2, 0.5, 1e-6)
    assert verdict.exit_code == v.EXIT_REGRESSION
    assert len(verdict.regressions) == len(p50)


def test_a_baseline_without_a_timer_was_measured_in_python() -> None:
    doc = json.loads(v.dumps_baseline(v.make_baseline({("allreduce", 8): 1e-6}, 2, 2, 0.0)))
    del doc["timer"]
    assert v.loads_baseline(json.dumps(doc)).timer == "python"


def test_a_baseline_from_the_other_timing_loop_is_a_probe_failure() -> None:
    base = v.make_baseline({("allreduce", 8): 3e-7}, 2, 2, 0.0, timer="python")
    same = v.compare(base, {("allreduce", 8): 3e-7}, 2, 2, 0.3, timer="python")
    assert same.exit_code == v.EXIT_HEALTHY
    other = v.compare(base, {("allreduce", 8): 3e-7}, 2, 2, 0.3, timer="compiled")
    assert other.exit_code == v.EXIT_FAILED and not other.comparisons
    assert "measured with the python timing loop, this run with the compiled loop" in (
        other.problem
    )
    assert "--timer python" in other.problem


def test_other_shape_or_no_shared_cell_is_a_probe_failure() -> None:
    base = v.make_baseline({("allreduce", 8): 1e-6}, 4, 4, 0.0)
    other_shape = v.compare(base, {("allreduce", 8): 1e-6}, 2, 2, 0.3)
    assert other_shape.exit_code == v.EXIT_FAILED and "not comparable" in other_shape.problem
    disjoint = v.compare(base, {("bcast", 8): 1e-6}, 4, 4, 0.3)
    assert disjoint.exit_code == v.EXIT_FAILED
    assert disjoint.only_in_baseline == (("allreduce", 8),)
    assert disjoint.only_in_run == (("bcast", 8),)


def test_verdict_lines_name_the_regressions() -> None:
    base = v.make_baseline({("allreduce", 8): 1e-6, ("bcast", 4 << 20): 1e-3}, 2, 2, 0.0)
    verdict = v.compare(base, {("allreduce", 8): 5e-6, ("bcast", 4 << 20): 1e-3}, 2, 2, 0.3)
    text = "\n".join(v.verdict_lines(verdict))
    assert "regression (exit 1)" in text
    assert "REGRESSION allreduce 8 B" in text and "bcast" not in text.split("REGRESSION")[-1]
    assert "1 regressed" in text


@pytest.mark.parametrize(
    ("value", "text"),
    [(4.12e-7, "412 ns"), (3.18e-6, "3.18 µs"), (1.25e-3, "1.25 ms"), (2.0, "2 s")],
)
def test_format_seconds(value: float, text: str) -> None:
    assert v.format_seconds(value) == text


def test_a_real_baseline_file_loads_and_judges(repo_root: Path) -> None:
    """tests/data/probe/baseline-2n-2r.json: written by a 2-rank run (Open MPI 4.1.4)."""
    base = v.loads_baseline((repo_root / "tests/data/probe/baseline-2n-2r.json").read_text())
    assert (base.ranks, base.nodes) == (2, 2)
    assert base.timer == "python"  # written before the compiled loop existed: no "timer"
    ops = {op for op, _ in base.p50_seconds}
    assert ops == {"allreduce", "bcast", "allgather", "alltoall", "reduce_scatter", "barrier"}
    assert len(base.p50_seconds) == 5 * 11 + 1
    assert v.compare(base, base.p50_seconds, 2, 2, 0.3).exit_code == v.EXIT_HEALTHY
    slower = dict(base.p50_seconds)
    slower[("allreduce", 4 << 20)] *= 3
    verdict = v.compare(base, slower, 2, 2, 0.3)
    assert verdict.exit_code == v.EXIT_REGRESSION
    assert [c.cell for c in verdict.regressions] == [("allreduce", 4 << 20)]
