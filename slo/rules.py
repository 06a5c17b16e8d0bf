"""SLOs → a Prometheus rule file: SLI recordings, metadata recordings, burn-rate alerts.

Three generators, one rule group each per SLO (as Sloth does), named
`hpcobs-slo-{sli,meta}-recordings-<id>` and `hpcobs-slo-alerts-<id>`.

Event-weighted windows. Each window's error ratio is bad events / total events counted over
the window, never a mean of short-window ratios (Sloth's shortcut, wrong when traffic is
uneven, and a single NaN in it poisons 30 days):

- 5m, 30m, 1h, 2h, 6h: `sum(increase(<selector>[W]))` on the raw counters;
- 1d, 3d: the sum of the recorded 5m event counts at 5-minute steps (`[1d:5m]`): the
  subquery picks one recorded value per aligned 5 minutes, so the 5m windows tile the day
  without overlap and no raw series is read over more than 6 hours;
- the period (e.g. 30d): the sum of recorded 1h event counts at 1-hour steps (`[30d:1h]`),
  720 samples per series instead of 30 days of raw samples (a calendar month sums only the
  hours of the current month, UTC), plus the recorded 5m counts since the last whole hour,
  so the period lags by at most 5 minutes.

Ratios divide by `(total > 0)`, so an idle window yields no sample instead of NaN or Inf.
Alerts fire only when each window of a condition also saw `min_events` events.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from hpcobs.slo.model import (
    SLO,
    TILE,
    WINDOWS_BY_NAME,
    AlertDef,
    Events,
    Period,
    Term,
    decimal_text,
    events_promql,
)
from hpcobs.slo.selector import quote

RAW_WINDOWS = ("5m", "30m", "1h", "2h", "6h")
TILED_WINDOWS = ("1d", "3d")  # sums of recorded 5m counts
SHORT_TILE = WINDOWS_BY_NAME["5m"]
DEFAULT_RUNBOOK_BASE = "docs/runbooks"

BAD = "slo:sli_bad_events:increase"
TOTAL = "slo:sli_total_events:increase"
RATIO = "slo:sli_error:ratio_rate"


@dataclass(frozen=True)
class RuleOptions:
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE
    interval: str | None = None  # rule group `interval`; None: Prometheus' global one


def period_window_name(period: Period) -> str:
    """The suffix of the period's recording rules: `30d`, or `_month` for calendar months."""
    return "_month" if period.kind == "calendar_month" else period.name


# -- PromQL pieces -------------------------------------------------------------------------
def _increase_terms(terms: Sequence[Term], window: str) -> list[str]:
    w = WINDOWS_BY_NAME[window]
    return [f"(sum({events_promql(t.selector, t.below, w)}) or vector(0))" for t in terms]


def _sum(terms: list[str]) -> str:
    return " + ".join(terms)


def bad_events_expr(events: Events, window: str) -> str:
    """PromQL counting bad events over `window` (always a sample; 0 when idle)."""
    if events.bad:
        return _bare(_increase_terms(events.bad, window))
    total = _sum(_increase_terms(events.total, window))
    good = _sum(_increase_terms(events.good, window))
    return f"clamp_min({total} - ({good}), 0)"


def total_events_expr(events: Events, window: str) -> str:
    """PromQL counting all events over `window` (always a sample; 0 when idle)."""
    if events.total:
        return _bare(_increase_terms(events.total, window))
    return _sum(_increase_terms(events.good, window) + _increase_terms(events.bad, window))


def _bare(terms: list[str]) -> str:
    """A single term needs no outer parentheses."""
    return terms[0][1:-1] if len(terms) == 1 else _sum(terms)


def series(name: str, slo: SLO) -> str:
    return f"{name}{{slo={quote(slo.id)},service={quote(slo.service)}}}"


# -- generators ----------------------------------------------------------------------------
def sli_recording_rules(slo: SLO) -> list[dict[str, Any]]:
    events = slo.sli.events()
    labels = slo.rule_labels()
    period = period_window_name(slo.period)
    rules: list[dict[str, Any]] = []

    def record(name: str, expr: str) -> None:
        rules.append({"record": name, "expr": expr, "labels": dict(labels)})

    for w in RAW_WINDOWS:
        record(BAD + w, bad_events_expr(events, w))
        record(TOTAL + w, total_events_expr(events, w))
    for w in TILED_WINDOWS:
        for name in (BAD, TOTAL):
            record(
                name + w, f"sum_over_time({series(name + SHORT_TILE.name, slo)}[{w}:{SHORT_TILE}])"
            )
    for name in (BAD, TOTAL):
        record(
            name + period,
            _period_sum(
                series(name + TILE.name, slo), series(name + SHORT_TILE.name, slo), slo.period
            ),
        )
    for w in (*RAW_WINDOWS, *TILED_WINDOWS, period):
        record(RATIO + w, f"{series(BAD + w, slo)} / ({series(TOTAL + w, slo)} > 0)")
    return rules


def _period_sum(hourly: str, short: str, period: Period) -> str:
    """Whole hours (the hourly counts at 1-hour steps) + the current hour so far (the 5m
    counts at 5-minute steps after the last whole hour), so the period lags by at most 5
    minutes; either part alone where the other has no sample (a stack under an hour old).
    """
    if period.kind == "rolling":
        hours = f"sum_over_time({hourly}[{period.name}:{TILE}])"
    else:
        # Calendar month: sum the hours of the current month only. Inside the subquery
        # time() is the pick's time (the end of its hour); `@ end()` reads the hourly series
        # at the evaluation time, whose timestamp gives the current month.
        current = f"scalar(month(timestamp({hourly} @ end())))"
        hours = (
            f"sum_over_time(\n  ({hourly} and on() month(vector(time() - 1)) == {current})\n"
            f"  [31d:{TILE}]\n)"
        )
    # The last whole hour: the latest 1-hour step of a subquery pinned to the evaluation time.
    # The current hour never straddles a month boundary, so a calendar month needs no filter.
    last_hour = f"scalar(max_over_time(vector(time())[{TILE}:{TILE}] @ end()))"
    since = (
        f"sum_over_time(\n  ({short} and on() (vector(time()) > {last_hour}))\n"
        f"  [{TILE}:{SHORT_TILE}]\n)"
    )
    return f"(\n{hours}\n+\n{since}\n)\nor\n{hours}\nor\n{since}\n"


def meta_recording_rules(slo: SLO) -> list[dict[str, Any]]:
    labels = slo.rule_labels()
    budget = decimal_text(slo.error_budget)
    period = period_window_name(slo.period)
    days = (
        "days_in_month()" if slo.period.kind == "calendar_month" else f"vector({slo.period.days})"
    )
    rows = [
        ("slo:objective:ratio", f"vector({decimal_text(slo.objective)})"),
        ("slo:error_budget:ratio", f"vector({budget})"),
        ("slo:time_period:days", days),
        ("slo:current_burn_rate:ratio", f"{series(RATIO + '5m', slo)} / {budget}"),
        ("slo:period_burn_rate:ratio", f"{series(RATIO + period, slo)} / {budget}"),
        (
            "slo:period_error_budget_remaining:ratio",
            f"1 - {series('slo:period_burn_rate:ratio', slo)}",
        ),
    ]
    return [{"record": name, "expr": expr, "labels": dict(labels)} for name, expr in rows]


def alert_rules(slo: SLO, options: RuleOptions) -> list[dict[str, Any]]:
    return [_alert(slo, alert, options) for alert in slo.alert_defs()]


def _alert(slo: SLO, alert: AlertDef, options: RuleOptions) -> dict[str, Any]:
    branches = []
    for cond in alert.conditions:
        limit = decimal_text(slo.threshold(cond))
        parts = [f"{series(RATIO + w.name, slo)} > {limit}" for w in (cond.long, cond.short)]
        for w in (cond.long, cond.short):
            minimum = slo.alerting.min_events_for(w.name)
            if minimum:
                parts.append(f"{series(TOTAL + w.name, slo)} >= {minimum}")
        branches.append("(\n  " + "\n  and\n  ".join(parts) + "\n)")
    expr = "\nor\n".join(branches) + "\n"
    windows = " or ".join(
        f"{decimal_text(c.factor)}× over {c.long} and {c.short}" for c in alert.conditions
    )
    objective = decimal_text(slo.objective * 100)
    runbook = slo.alerting.runbook_url or f"{options.runbook_base_url.rstrip('/')}/{alert.alert}.md"
    min_note = ""
    if slo.alerting.min_events:
        min_note = (
            " Only windows with enough events count ("
            + ", ".join(f"{w}: {n}" for w, n in slo.alerting.min_events)
            + ")."
        )
    return {
        "alert": alert.alert,
        "expr": expr,
        "labels": {**dict(slo.alerting.labels), "slo": slo.id, "severity": alert.severity},
        "annotations": {
            **dict(slo.alerting.annotations),
            "summary": f"SLO {slo.id} ({slo.service}) {alert.summary}",
            "description": (
                f"The error ratio of SLO {slo.id} (objective {objective} % over "
                f"{slo.period.name}) is above the burn-rate limit ({windows}); over the long "
                "window it is {{ $value | humanizePercentage }}." + min_note
            ),
            "runbook_url": runbook,
        },
    }


def rule_groups(slos: Iterable[SLO], options: RuleOptions | None = None) -> list[dict[str, Any]]:
    return list(_groups(slos, options or RuleOptions()))


def _groups(slos: Iterable[SLO], options: RuleOptions) -> Iterator[dict[str, Any]]:
    for slo in slos:
        for kind, rules in (
            ("sli-recordings", sli_recording_rules(slo)),
            ("meta-recordings", meta_recording_rules(slo)),
            ("alerts", alert_rules(slo, options)),
        ):
            if not rules:
                continue
            group: dict[str, Any] = {"name": f"hpcobs-slo-{kind}-{slo.id}"}
            if options.interval:
                group["interval"] = options.interval
            group["rules"] = rules
            yield group


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(
    slos: Sequence[SLO], options: RuleOptions | None = None, sources: Sequence[str] = ()
) -> str:
    """The rule file's text (YAML), deterministic for golden tests."""
    return "".join(render_chunks(slos, options, sources))


def render_chunks(
    slos: Iterable[SLO], options: RuleOptions | None = None, sources: Sequence[str] = ()
) -> Iterator[str]:
    """`render`'s text in pieces, one rule group at a time, so that a writer holds one
    group's YAML at a time instead of the whole file's (PyYAML's representation of a
    document costs about twenty times its text)."""
    header = "# Generated by hpcobs-slo rules"
    if sources:
        header += " from " + ", ".join(sources)
    header += ". Do not edit: change the spec and regenerate.\n"
    yield header
    options = options or RuleOptions()
    empty = True
    for group in _groups(slos, options):
        # each group as the only one of a document: the same text as within the whole file
        # (block style, no aliases: every rule's dicts are built afresh)
        text = _dump({"groups": [group]})
        if empty:
            empty = False
        else:
            text = text.removeprefix("groups:\n")
        yield text
    if empty:
        yield _dump({"groups": []})


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(
        doc,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
    )
