"""SLOs → a Prometheus rule file: SLI recordings, metadata recordings, burn-rate alerts.

Three generators, one rule group each per SLO (as Sloth does), named
`hpcobs-slo-{sli,meta}-recordings-<id>` and `hpcobs-slo-alerts-<id>`.

`RuleOptions.engine` "victoriametrics" renders the same series and alerts for vmalert, live
and in `-replay` (see `_period_sum_portable`, `_ratio`): no `@` modifier, one group per SLO
(`hpcobs-slo-<id>`) with every rule after the rules it reads, and meta rules and alerts that
compute ratios from the recorded counts.

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
from typing import Any, Literal

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
    format_duration,
)
from hpcobs.slo.selector import quote

RAW_WINDOWS = ("5m", "30m", "1h", "2h", "6h")
TILED_WINDOWS = ("1d", "3d")  # sums of recorded 5m counts
SHORT_TILE = WINDOWS_BY_NAME["5m"]
DEFAULT_RUNBOOK_BASE = "docs/runbooks"

BAD = "slo:sli_bad_events:increase"
TOTAL = "slo:sli_total_events:increase"
RATIO = "slo:sli_error:ratio_rate"


Engine = Literal["prometheus", "victoriametrics"]
ENGINES: tuple[Engine, ...] = ("prometheus", "victoriametrics")


@dataclass(frozen=True)
class RuleOptions:
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE
    interval: str | None = None  # rule group `interval`; None: Prometheus' global one
    # which rule engine evaluates the file: "victoriametrics" (vmalert; see the module's
    # docstring) or "prometheus" (also Thanos Ruler, Mimir, Cortex)
    engine: Engine = "prometheus"


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
def sli_recording_rules(slo: SLO, engine: Engine = "prometheus") -> list[dict[str, Any]]:
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
    period_sum = _period_sum if engine == "prometheus" else _period_sum_portable
    for name in (BAD, TOTAL):
        record(
            name + period,
            period_sum(
                series(name + TILE.name, slo), series(name + SHORT_TILE.name, slo), slo.period
            ),
        )
    for w in (*RAW_WINDOWS, *TILED_WINDOWS, period):
        record(RATIO + w, ratio_expr(slo, w))
    return rules


def ratio_expr(slo: SLO, window: str) -> str:
    """The error ratio over `window` from the recorded event counts (no sample when idle)."""
    return f"{series(BAD + window, slo)} / ({series(TOTAL + window, slo)} > 0)"


def _ratio(slo: SLO, window: str, engine: Engine) -> str:
    """What the meta rules and alerts read as the error ratio over `window`.

    Prometheus: the recorded ratio. VictoriaMetrics: the ratio computed again from the
    recorded counts, which have a sample at every evaluation. Two reasons: `vmalert -replay`
    writes no staleness markers, so a ratio that vanished (an idle window, the first moment
    of a calendar month) would be read on for the query's look-back (`-datasource.queryStep`,
    5m by default); and live, vmalert writes a rule's results by remote write after the
    evaluation, so each rule read in a chain adds an evaluation interval of lag. `a / (b > 0)
    / budget` is computed as `(a / (b > 0)) / budget`: the same float as the recorded ratio
    divided by the budget.
    """
    return series(RATIO + window, slo) if engine == "prometheus" else ratio_expr(slo, window)


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


def _period_sum_portable(hourly: str, short: str, period: Period) -> str:
    """`_period_sum` without `@ end()`, for engines that resolve `@ end()` in a subquery to
    something else than the evaluation time: VictoriaMetrics (vmalert) takes the end of the
    subquery's step-aligned range live (the next hour from about xx:51 on) and the end of the
    replayed range in `vmalert -replay`.

    The same sums, with the current hour's picks told apart by parity instead: the 5-minute
    picks of `[55m:5m]` (at most 11 needed; 55 minutes, so that a subquery range closed on
    both ends, as in Prometheus 2, still reaches back no further than the hour before) fall
    in at most two hours, whose numbers (`floor((t - 1) / 3600)`: a pick on the hour ends
    the hour before) differ in parity. Each parity's sum is computed inside the subquery and
    the one of the evaluation time's hour is kept outside it, where `time()` is the
    evaluation time. A calendar month likewise: the hourly picks of `[31d:1h]` fall in at
    most three months, told apart by `(year × 12 + month) mod 3`. Valid PromQL and MetricsQL,
    with the same results as `_period_sum` on Prometheus.
    """
    if period.kind == "rolling":
        hours = f"sum_over_time({hourly}[{period.name}:{TILE}])"
    else:
        month = "(year({t}) * 12 + month({t})) % 3"
        hours = _pick_by(
            hourly,
            f"31d:{TILE}",
            month.format(t="vector(time() - 1)"),
            month.format(t="vector(time())"),
            3,
        )
    since = _pick_by(
        short,
        f"{format_duration(TILE.seconds - SHORT_TILE.seconds)}:{SHORT_TILE}",
        f"floor((vector(time()) - 1) / {TILE.seconds}) % 2",
        f"floor(vector(time()) / {TILE.seconds}) % 2",
        2,
    )
    # Each part 0 where it has no sample (a stack under an hour old, the first moment of a
    # calendar month), so the sum always has one, as the raw windows have: the meta rules and
    # alerts read the counts at the same evaluation time, never a previous one. Each part
    # is one series (or vector(0)): `on()` matches them whatever their labels.
    return f"(\n{hours}\nor on() vector(0)\n)\n+ on()\n(\n{since}\nor on() vector(0)\n)\n"


def _pick_by(series_: str, subquery: str, key_at_pick: str, key_now: str, keys: int) -> str:
    """The sum over `[subquery]` of the picks of `series_` whose key equals the evaluation
    time's: one branch per key value, each summing inside the subquery the picks with that
    key and kept outside it only when the evaluation time has that key."""
    branches = [
        f"(\n  sum_over_time(({series_} and on() {key_at_pick} == {k})[{subquery}])\n"
        f"  and on() {key_now} == {k}\n)"
        for k in range(keys)
    ]
    return "\nor\n".join(branches)


def meta_recording_rules(slo: SLO, engine: Engine = "prometheus") -> list[dict[str, Any]]:
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
        ("slo:current_burn_rate:ratio", f"{_ratio(slo, '5m', engine)} / {budget}"),
        ("slo:period_burn_rate:ratio", f"{_ratio(slo, period, engine)} / {budget}"),
        (
            "slo:period_error_budget_remaining:ratio",
            f"1 - {series('slo:period_burn_rate:ratio', slo)}"
            if engine == "prometheus"
            else f"1 - {_ratio(slo, period, engine)} / {budget}",
        ),
    ]
    return [{"record": name, "expr": expr, "labels": dict(labels)} for name, expr in rows]


def alert_rules(slo: SLO, options: RuleOptions) -> list[dict[str, Any]]:
    return [_alert(slo, alert, options) for alert in slo.alert_defs()]


def _alert(slo: SLO, alert: AlertDef, options: RuleOptions) -> dict[str, Any]:
    branches = []
    for cond in alert.conditions:
        limit = decimal_text(slo.threshold(cond))
        parts = [
            f"{_ratio(slo, w.name, options.engine)} > {limit}" for w in (cond.long, cond.short)
        ]
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
        kinds = [
            ("sli-recordings", sli_recording_rules(slo, options.engine)),
            ("meta-recordings", meta_recording_rules(slo, options.engine)),
            ("alerts", alert_rules(slo, options)),
        ]
        if options.engine == "victoriametrics":
            # One group per SLO, its rules in the order they depend on each other: vmalert
            # evaluates a group's rules in file order, but `vmalert -replay` 1.112 replays
            # groups sorted by name (alerts and meta before the SLI recordings they read;
            # 1.79 and 1.145 keep the file's order).
            kinds = [("", [rule for _, rules in kinds for rule in rules])]
        for kind, rules in kinds:
            if not rules:
                continue
            name = f"hpcobs-slo-{kind}-{slo.id}" if kind else f"hpcobs-slo-{slo.id}"
            group: dict[str, Any] = {"name": name}
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
