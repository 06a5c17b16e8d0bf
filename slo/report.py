"""`hpcobs-slo report`: the evaluator's results as a table, JSON, or a self-contained HTML page.

The HTML page has, per SLO, an error-budget burn-down chart (inline SVG, no scripts, no
external resources) over the period's hours and the remainder up to the evaluation time: the
share of the period's budget (objective × events) still left after each hour's bad events,
next to the line an evenly spread error rate at exactly the objective would follow.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcobs.slo.evaluator import Evaluation, Evaluator, SLOResult
from hpcobs.slo.model import Term, count_events, decimal_text

TABLE_BURN_WINDOWS = ("1h", "6h", "1d", "3d")


@dataclass(frozen=True)
class BurnDown:
    hours: tuple[float, ...]  # each hour's end, then the evaluation time (the remainder)
    remaining: tuple[float, ...]  # share of the period's budget left after each hour
    even: tuple[float, ...]  # the same at a constant error ratio equal to the budget


def status(result: SLOResult) -> str:
    if not result.ok:
        return "error"
    period = result.period
    if period is None or period.total <= 0:
        return "no data"
    alert = result.alert()
    if alert is not None:
        return alert.severity
    remaining = result.error_budget_remaining
    if remaining is not None and remaining <= 0:
        return "exhausted"
    return "ok"


def burn_down(evaluator: Evaluator, result: SLOResult) -> BurnDown | None:
    """Cumulative budget use over the period's hours (the evaluator's hourly tiles), then the
    remainder up to the evaluation time."""
    period = result.period
    if period is None or period.total <= 0:
        return None
    events = result.slo.sli.events()
    tiles_end = period.end if result.remainder is None else result.remainder.start
    per_sel: dict[Term, dict[int, float]] = {
        sel: dict(evaluator.tiles.series(sel, period.start, tiles_end)) for sel in events.terms()
    }
    hours = sorted({h for values in per_sel.values() for h in values})
    allowed = float(result.slo.error_budget) * period.total
    cum_bad = cum_total = 0.0
    remaining: list[float] = []
    even: list[float] = []
    steps: list[tuple[float, float, float]] = []  # (end, bad, total)
    for h in hours:

        def hour_events(sel: Term, hour: int = h) -> float:
            return per_sel[sel].get(hour, 0.0)

        steps.append((h, *count_events(events, hour_events)))
    if result.remainder is not None:
        steps.append((result.remainder.end, result.remainder.bad, result.remainder.total))
    for _, bad, total in steps:
        cum_bad += bad
        cum_total += total
        remaining.append(
            1.0 - cum_bad / allowed if allowed > 0 else (1.0 if cum_bad == 0 else -1.0)
        )
        even.append(1.0 - cum_total / period.total)
    return BurnDown(tuple(t for t, _, _ in steps), tuple(remaining), tuple(even))


# -- JSON ----------------------------------------------------------------------------------
def to_json(evaluation: Evaluation, evaluator: Evaluator | None = None) -> dict[str, Any]:
    slos = []
    for r in evaluation.results:
        slo = r.slo
        item: dict[str, Any] = {
            "id": slo.id,
            "service": slo.service,
            "description": slo.description,
            "kind": slo.sli.kind,
            "objective": float(decimal_text(slo.objective)),
            "period": slo.period.name,
            "labels": dict(slo.labels),
            "status": status(r),
            "error": r.error,
            "sli": None,
            "error_budget_remaining": r.error_budget_remaining,
            "alert": None,
            "windows": {},
        }
        if r.ok:
            period = r.period
            item["sli"] = None if period is None else period.sli
            alert = r.alert()
            item["alert"] = alert.alert if alert else None
            for name, w in r.windows.items():
                item["windows"][name] = {
                    "start": w.start,
                    "end": w.end,
                    "good": w.good,
                    "bad": w.bad,
                    "total": w.total,
                    "sli": w.sli,
                    "error_ratio": w.error_ratio,
                    "burn_rate": r.burn_rate(name),
                }
            if evaluator is not None:
                bd = burn_down(evaluator, r)
                if bd is not None:
                    item["burn_down"] = [
                        [h, v] for h, v in zip(bd.hours, bd.remaining, strict=True)
                    ]
        slos.append(item)
    return {
        "time": evaluation.time,
        "time_utc": _iso(evaluation.time),
        "period_end": evaluation.period_end,
        "success": evaluation.success,
        "queries": evaluation.queries,
        "slos": slos,
    }


def render_json(evaluation: Evaluation, evaluator: Evaluator | None = None) -> str:
    return json.dumps(to_json(evaluation, evaluator), indent=2, allow_nan=False) + "\n"


# -- table ---------------------------------------------------------------------------------
def _pct(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows(evaluation: Evaluation) -> list[list[str]]:
    header = [
        "SLO",
        "objective",
        "SLI",
        "budget left",
        *(f"burn {w}" for w in TABLE_BURN_WINDOWS),
        "burn period",
        "events",
        "status",
    ]
    out = [header]
    for r in evaluation.results:
        period = r.period
        out.append(
            [
                r.slo.id,
                f"{decimal_text(r.slo.objective * 100)}% / {r.slo.period.name}",
                _pct(period.sli if period else None),
                _pct(r.error_budget_remaining, 1),
                *(_rate(r.burn_rate(w)) for w in TABLE_BURN_WINDOWS),
                _rate(r.burn_rate(r.slo.period.name)),
                "-" if period is None else f"{period.total:.6g}",
                status(r) + (f": {r.error}" if r.error else ""),
            ]
        )
    return out


def render_table(evaluation: Evaluation) -> str:
    table = rows(evaluation)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines = []
    for row in table:
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(row[:-1])
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.append("")
    lines.append(
        f"as of {_iso(evaluation.time)}; period windows: whole hours up to "
        f"{_iso(evaluation.period_end)}, then the events since, up to {_iso(evaluation.time)}; "
        f"{evaluation.queries} queries"
    )
    return "\n".join(lines) + "\n"


# -- HTML ----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}.ok{color:#1a7f37}.page,.exhausted,.error{color:#cf222e;font-weight:bold}
.ticket{color:#9a6700;font-weight:bold}.card{border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0;max-width:760px}
.muted{color:#666;font-size:.9em}svg text{font-size:11px;fill:#555}
"""


def render_html(
    evaluation: Evaluation, evaluator: Evaluator | None = None, title: str = "SLO report"
) -> str:
    esc = html.escape
    table = rows(evaluation)
    head = "".join(f"<th>{esc(c)}</th>" for c in table[0])
    body = []
    for r, row in zip(evaluation.results, table[1:], strict=True):
        cells = "".join(f"<td>{esc(c)}</td>" for c in row[:-1])
        st = status(r)
        body.append(f'<tr>{cells}<td class="{esc(st.replace(" ", "-"))}">{esc(row[-1])}</td></tr>')
    cards = []
    for r in evaluation.results:
        bd = burn_down(evaluator, r) if evaluator is not None and r.ok else None
        chart = (
            _svg(bd)
            if bd is not None
            else '<p class="muted">no burn-down: no data for the period</p>'
        )
        desc = esc(r.slo.description) if r.slo.description else ""
        cards.append(
            f'<div class="card"><h2>{esc(r.slo.id)} <span class="muted">{esc(r.slo.service)} · '
            f"{esc(r.slo.sli.kind)} · objective {esc(decimal_text(r.slo.objective * 100))} % over "
            f"{esc(r.slo.period.name)}</span></h2><p>{desc}</p>"
            f"<p>Error budget left: <b>{esc(_pct(r.error_budget_remaining, 1))}</b> · status "
            f'<span class="{esc(status(r).replace(" ", "-"))}">{esc(status(r))}</span></p>{chart}</div>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="muted">As of {esc(_iso(evaluation.time))}; period windows: '
        f"whole hours up to {esc(_iso(evaluation.period_end))}, then the events since. "
        "Burn rates: error ratio over the "
        "error budget (1 spends the budget exactly over the period).</p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>{''.join(cards)}</body></html>\n"
    )


def _svg(bd: BurnDown, width: int = 720, height: int = 220) -> str:
    left, right, top, bottom = 48, 12, 12, 28
    lo = min(0.0, *bd.remaining, *bd.even)
    hi = 1.0
    t0, t1 = bd.hours[0] - 3600, bd.hours[-1]
    span = max(t1 - t0, 1)

    def x(t: float) -> float:
        return left + (t - t0) / span * (width - left - right)

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    def line(values: Sequence[float]) -> str:
        points = [(x(t0), y(1.0))] + [(x(h), y(v)) for h, v in zip(bd.hours, values, strict=True)]
        return " ".join(f"{px:.1f},{py:.1f}" for px, py in points)

    ticks = sorted({1.0, 0.5, 0.0, lo})
    grid = "".join(
        f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
        f'stroke="{"#cf222e" if v == 0 else "#eee"}"/>'
        f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v * 100:.0f}%</text>'
        for v in ticks
    )
    dates = "".join(
        f'<text x="{x(t):.1f}" y="{height - 8}" text-anchor="middle">{html.escape(_iso(t)[:10])}</text>'
        for t in (t0, t0 + span / 2, t1)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="error budget burn-down">'
        f"{grid}{dates}"
        f'<polyline fill="none" stroke="#999" stroke-dasharray="4 3" points="{line(bd.even)}"/>'
        f'<polyline fill="none" stroke="#0969da" stroke-width="2" points="{line(bd.remaining)}"/>'
        "</svg>"
        '<p class="muted">blue: error budget left · dashed: at an error ratio equal to the budget</p>'
    )


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
