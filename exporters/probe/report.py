"""The human summary and the JSON document of one run (pure: data in, text out)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from hpcobs.exporters.probe.flags import PROGRAM
from hpcobs.exporters.probe.model import ProbeResult
from hpcobs.exporters.probe.outputs import Delivery
from hpcobs.exporters.probe.verdict import (
    Verdict,
    cell_key,
    format_bytes,
    format_seconds,
    verdict_lines,
)
from hpcobs.exporters.version import VERSION


def summary_lines(
    result: ProbeResult, verdict: Verdict, deliveries: Sequence[Delivery], exit_code: int
) -> list[str]:
    lines = [
        f"{PROGRAM}: {result.ranks} ranks, {len(result.nodes)} nodes "
        f"(node identity: {result.identity_mode}), {result.duration_seconds:.1f} s"
    ]
    by_op: dict[str, list[Any]] = {}
    for c in result.collectives:
        by_op.setdefault(c.op, []).append(c)
    for op, cells in by_op.items():
        first, last = cells[0], cells[-1]
        text = (
            f"  {op:<15}{format_bytes(first.size_bytes):>8} p50 "
            f"{format_seconds(first.corrected.p50)} (raw {format_seconds(first.raw.p50)})"
        )
        if last is not first:
            text += f" … {format_bytes(last.size_bytes)} p50 {format_seconds(last.corrected.p50)}"
        lines.append(text)
    if result.overhead_seconds:
        low, high = min(result.overhead_seconds.values()), max(result.overhead_seconds.values())
        lines.append(
            f"  calibration: {format_seconds(low)}–{format_seconds(high)} per call subtracted "
            f"(same {result.timer} timing loop around a no-op call on MPI_COMM_SELF)"
        )
    if result.pairs:
        low = min(p.overhead_seconds for p in result.pairs)
        high = max(p.overhead_seconds for p in result.pairs)
        lines.append(
            f"  pairwise calibration: {format_seconds(low)}–{format_seconds(high)} per round "
            f"trip subtracted (same {result.timer} timing loop around Send/Recv to MPI_PROC_NULL)"
        )
    slowest = result.slowest_node()
    if slowest is not None and result.worst_pairs:
        node, ratio = slowest
        pair = result.worst_pairs[0]
        lines.append(
            f"  slowest node: {node} ({ratio:.2f}× the median node); slowest pair "
            f"{pair.node_a} – {pair.node_b}: p50 {format_seconds(pair.latency.p50)}, "
            f"{pair.bandwidth_bytes_per_second / 1e9:.2f} GB/s "
            f"({result.pairwise_rounds} rounds)"
        )
    if result.skipped_cells:
        lines.append(
            "  skipped (buffers over the limit): "
            + ", ".join(f"{op}/{size}" for op, size in result.skipped_cells)
        )
    for d in deliveries:
        lines.append(f"  output {d.target}: {'ok' if d.ok else 'FAILED'} {d.detail}")
    verdict_text = verdict_lines(verdict)
    if exit_code != verdict.exit_code:
        verdict_text[0] = f"verdict: probe failed (exit {exit_code}): an output failed"
    lines += verdict_text
    return lines


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def verdict_dict(verdict: Verdict) -> dict[str, Any]:
    return {
        "exit_code": verdict.exit_code,
        "label": verdict.label,
        "problem": verdict.problem,
        "compared": verdict.compared,
        "regressions": len(verdict.regressions),
        "comparisons": [
            {
                "cell": cell_key(c.cell),
                "baseline_seconds": c.baseline,
                "current_seconds": c.current,
                "limit_seconds": c.limit,
                "ratio": _finite(c.ratio),
                "regressed": c.regressed,
            }
            for c in verdict.comparisons
        ],
        "only_in_baseline": [cell_key(c) for c in verdict.only_in_baseline],
        "only_in_run": [cell_key(c) for c in verdict.only_in_run],
        "notes": list(verdict.notes),
    }


def _clean(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings ("inf") rather than produce invalid JSON."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def json_document(
    result: ProbeResult, verdict: Verdict, deliveries: Sequence[Delivery], exit_code: int
) -> str:
    doc = {
        "program": PROGRAM,
        "version": VERSION,
        "exit_code": exit_code,
        "verdict": verdict_dict(verdict),
        "outputs": [d.as_dict() for d in deliveries],
        **result.as_dict(),
    }
    return json.dumps(_clean(doc), allow_nan=False)
