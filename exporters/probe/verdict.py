"""Baselines and the verdict, as pure functions (text in, text out; no files, no MPI).

A baseline is a JSON document holding the corrected p50 latency of every (op, size) cell of
a run, with the rank and node counts it was taken at and the timing loop that measured it:

    {"format": "hpcobs-mpi-probe-baseline/1", "created_unix": 1.7e9, "ranks": 4, "nodes": 4,
     "timer": "compiled", "p50_seconds": {"allreduce/8": 4.1e-07, "barrier/0": 9.0e-07, ...}}

(A baseline without "timer" predates the compiled loop: it was measured in Python.)

`compare` flags a cell as a regression when

    current > baseline × (1 + tolerance) + min_slack_seconds

(the absolute slack keeps sub-microsecond cells from flapping on scheduler noise). Cells only
one side has are listed, not judged. A baseline taken at another rank or node count is not
comparable: collective latency depends on both, so that is a probe failure (exit 2), not a
silent pass. So is a baseline measured with the other timing loop: the Python loop's small
cells read 0.1 µs or more slower than the compiled loop's.

Exit codes: 0 healthy, 1 at least one regression, 2 the probe itself failed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EXIT_HEALTHY = 0
EXIT_REGRESSION = 1
EXIT_FAILED = 2

BASELINE_FORMAT = "hpcobs-mpi-probe-baseline/1"
TIMERS = ("compiled", "python")

Cell = tuple[str, int]


def cell_key(cell: Cell) -> str:
    return f"{cell[0]}/{cell[1]}"


def parse_cell_key(key: str) -> Cell:
    op, sep, size = key.rpartition("/")
    if not sep or not op or not size.isdigit():
        raise ValueError(f"baseline cell {key!r} is not 'op/size_bytes'")
    return op, int(size)


@dataclass(frozen=True)
class Baseline:
    ranks: int
    nodes: int
    created_unix: float
    p50_seconds: dict[Cell, float]
    timer: str = "python"


def _finite_nonnegative(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, not {value!r}")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or number < 0:
        raise ValueError(f"{what} must be a finite, non-negative number, not {value!r}")
    return number


def _timer(value: Any) -> str:
    if value not in TIMERS:
        raise ValueError(f"timer must be one of {', '.join(map(repr, TIMERS))}, not {value!r}")
    return str(value)


def make_baseline(
    p50_seconds: Mapping[Cell, float],
    ranks: int,
    nodes: int,
    created_unix: float,
    timer: str = "python",
) -> Baseline:
    figures = {
        cell: _finite_nonnegative(v, cell_key(cell)) for cell, v in sorted(p50_seconds.items())
    }
    return Baseline(ranks, nodes, created_unix, figures, _timer(timer))


def dumps_baseline(baseline: Baseline) -> str:
    doc = {
        "format": BASELINE_FORMAT,
        "created_unix": baseline.created_unix,
        "ranks": baseline.ranks,
        "nodes": baseline.nodes,
        "timer": baseline.timer,
        "p50_seconds": {cell_key(c): v for c, v in sorted(baseline.p50_seconds.items())},
    }
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def loads_baseline(text: str) -> Baseline:
    """Parse a baseline document; ValueError (naming the problem) on anything else."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("a baseline is a JSON object")
    if doc.get("format") != BASELINE_FORMAT:
        raise ValueError(f"format must be {BASELINE_FORMAT!r}, not {doc.get('format')!r}")
    counts = []
    for name in ("ranks", "nodes"):
        value = doc.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
        counts.append(value)
    created = _finite_nonnegative(doc.get("created_unix", 0.0), "created_unix")
    figures = doc.get("p50_seconds")
    if not isinstance(figures, dict) or not figures:
        raise ValueError("p50_seconds must be a non-empty object of 'op/size_bytes': seconds")
    parsed: dict[Cell, float] = {}
    for key, value in figures.items():
        parsed[parse_cell_key(str(key))] = _finite_nonnegative(value, f"p50_seconds[{key!r}]")
    return Baseline(counts[0], counts[1], created, parsed, _timer(doc.get("timer", "python")))


@dataclass(frozen=True)
class Comparison:
    cell: Cell
    baseline: float
    current: float
    limit: float

    @property
    def regressed(self) -> bool:
        return self.current > self.limit

    @property
    def ratio(self) -> float:
        """current / baseline (inf when the baseline is 0 and the current figure is not)."""
        if self.baseline > 0:
            return self.current / self.baseline
        return 1.0 if self.current == 0 else math.inf


@dataclass(frozen=True)
class Verdict:
    exit_code: int
    comparisons: tuple[Comparison, ...] = ()
    only_in_baseline: tuple[Cell, ...] = ()
    only_in_run: tuple[Cell, ...] = ()
    problem: str = ""  # why the probe failed (exit 2), if it did
    compared: bool = False  # whether a baseline was given at all
    notes: tuple[str, ...] = field(default=())

    @property
    def regressions(self) -> tuple[Comparison, ...]:
        return tuple(c for c in self.comparisons if c.regressed)

    @property
    def label(self) -> str:
        return {EXIT_HEALTHY: "healthy", EXIT_REGRESSION: "regression"}.get(
            self.exit_code, "probe failed"
        )


def no_baseline() -> Verdict:
    return Verdict(EXIT_HEALTHY)


def failed(problem: str) -> Verdict:
    return Verdict(EXIT_FAILED, problem=problem)


def compare(
    baseline: Baseline,
    current: Mapping[Cell, float],
    ranks: int,
    nodes: int,
    tolerance: float,
    min_slack_seconds: float = 0.0,
    timer: str | None = None,
) -> Verdict:
    """Judge the current corrected p50 figures (measured with `timer`) against a baseline."""
    tolerance = _finite_nonnegative(tolerance, "tolerance")
    min_slack_seconds = _finite_nonnegative(min_slack_seconds, "minimum slack")
    if timer is not None and baseline.timer != timer:
        return Verdict(
            EXIT_FAILED,
            problem=(
                f"baseline was measured with the {baseline.timer} timing loop, this run with "
                f"the {timer} loop: not comparable (write a new baseline, or run with "
                f"--timer {baseline.timer})"
            ),
            compared=True,
        )
    if baseline.ranks != ranks or baseline.nodes != nodes:
        return Verdict(
            EXIT_FAILED,
            problem=(
                f"baseline was taken with {baseline.ranks} ranks on {baseline.nodes} nodes, "
                f"this run has {ranks} ranks on {nodes} nodes: not comparable "
                "(keep one baseline per shape)"
            ),
            compared=True,
        )
    comparisons = []
    for cell in sorted(set(baseline.p50_seconds) & set(current)):
        base = baseline.p50_seconds[cell]
        now = _finite_nonnegative(current[cell], cell_key(cell))
        comparisons.append(Comparison(cell, base, now, base * (1 + tolerance) + min_slack_seconds))
    only_base = tuple(sorted(set(baseline.p50_seconds) - set(current)))
    only_run = tuple(sorted(set(current) - set(baseline.p50_seconds)))
    if not comparisons:
        return Verdict(
            EXIT_FAILED,
            only_in_baseline=only_base,
            only_in_run=only_run,
            problem="the baseline shares no (op, size) cell with this run",
            compared=True,
        )
    code = EXIT_REGRESSION if any(c.regressed for c in comparisons) else EXIT_HEALTHY
    return Verdict(code, tuple(comparisons), only_base, only_run, compared=True)


def format_seconds(value: float) -> str:
    """A latency for humans: 412 ns, 3.18 µs, 1.25 ms, 2.00 s."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def format_bytes(n: int) -> str:
    for scale, unit in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def verdict_lines(verdict: Verdict, limit: int = 5) -> list[str]:
    """The verdict part of the human summary."""
    lines = [f"verdict: {verdict.label} (exit {verdict.exit_code})"]
    if verdict.problem:
        lines.append(f"  problem: {verdict.problem}")
    if verdict.compared and verdict.comparisons:
        worst = sorted(verdict.regressions, key=lambda c: -c.ratio)
        lines.append(
            f"  baseline: {len(verdict.comparisons)} figures compared, {len(worst)} regressed"
        )
        for c in worst[:limit]:
            op, size = c.cell
            lines.append(
                f"  REGRESSION {op} {format_bytes(size)}: p50 {format_seconds(c.current)} vs "
                f"baseline {format_seconds(c.baseline)} ({c.ratio:.2f}×, limit "
                f"{format_seconds(c.limit)})"
            )
        if len(worst) > limit:
            lines.append(f"  … and {len(worst) - limit} more")
    for note in verdict.notes:
        lines.append(f"  note: {note}")
    return lines
