"""The validated SLO model, shared by `rules`, `serve` and `report`.

Spec files (hpcobs' own YAML or OpenSLO) are parsed into these frozen dataclasses; the rule
generator, the daemon's evaluator and the report read nothing else, so they cannot disagree
on what an SLO means. Every SLI kind reduces to `Events`: sums of counter increases that
count bad, good and total events over a window.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from hpcobs.slo.selector import Matcher, Selector, number_matcher

_DURATION = re.compile(r"^(\d+)(m|h|d|w)$")
_UNIT = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, order=True)
class Window:
    """A window over which events are counted; `name` is a PromQL duration."""

    seconds: int
    name: str = field(compare=False)

    def __str__(self) -> str:
        return self.name


def window(name: str) -> Window:
    """`5m`, `1h`, `30d`, `4w` → Window (named canonically: weeks become days)."""
    m = _DURATION.match(name.strip())
    if m is None:
        raise ValueError(f"invalid duration {name!r} (e.g. 5m, 1h, 30d)")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {name!r}")
    return Window(seconds, format_duration(seconds))


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# The multiwindow, multi-burn-rate windows of the SRE workbook (and Sloth's rule names).
SHORT_WINDOWS: tuple[Window, ...] = tuple(
    window(w) for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
)
WINDOWS_BY_NAME = {w.name: w for w in SHORT_WINDOWS}
TILE = window("1h")  # period windows are sums of hourly event counts


@dataclass(frozen=True)
class Period:
    """The SLO period: rolling N days, or the calendar month (UTC) to date."""

    kind: Literal["rolling", "calendar_month"]
    days: int = 30

    @property
    def name(self) -> str:
        return "month" if self.kind == "calendar_month" else f"{self.days}d"

    @property
    def max_seconds(self) -> int:
        return 31 * 86400 if self.kind == "calendar_month" else self.days * 86400

    def start(self, end: float) -> float:
        """Where the period window ending at `end` (unix seconds) starts."""
        if self.kind == "rolling":
            return end - self.days * 86400
        when = dt.datetime.fromtimestamp(end, dt.UTC)
        return dt.datetime(when.year, when.month, 1, tzinfo=dt.UTC).timestamp()

    def window_start(self, tiles_end: float, at: float) -> float:
        """Start of the period window that sums the whole hours up to `tiles_end` and the
        remainder up to `at`: `days` before `tiles_end` (so the hours tile it exactly), or
        the start of `at`'s calendar month."""
        return self.start(tiles_end if self.kind == "rolling" else at)


ROLLING_30D = Period("rolling", 30)


@dataclass(frozen=True)
class BurnRateCondition:
    """Error ratio above `factor` × error budget over both windows."""

    long: Window
    short: Window
    factor: Decimal


@dataclass(frozen=True)
class AlertDef:
    alert: str
    severity: str
    conditions: tuple[BurnRateCondition, ...]
    summary: str


def _cond(long: str, short: str, factor: str) -> BurnRateCondition:
    return BurnRateCondition(WINDOWS_BY_NAME[long], WINDOWS_BY_NAME[short], Decimal(factor))


PAGE = AlertDef(
    "SLOBurnRatePage",
    "page",
    (_cond("1h", "5m", "14.4"), _cond("6h", "30m", "6")),
    "burns its error budget fast: at this rate it is gone within days",
)
TICKET = AlertDef(
    "SLOBurnRateTicket",
    "ticket",
    (_cond("1d", "2h", "3"), _cond("3d", "6h", "1")),
    "burns its error budget steadily: it will be gone before the period ends",
)
ALERTS = (PAGE, TICKET)


SLICE = 60  # seconds: the time slice of gauge-based SLIs


@dataclass(frozen=True)
class Term:
    """One source of event counts.

    `below` None: the increase of a counter. Otherwise a gauge counted in 1-minute slices:
    the slices whose value is at or below `below` (math.inf: every slice with a sample).
    """

    selector: Selector
    below: float | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.selector.matches(labels)


def events_promql(selector: Selector, below: float | None, window: Window) -> str:
    """Per-series PromQL counting a term's events over `window` (callers sum it)."""
    return range_events_promql(selector, below, window.seconds * 1000)


def range_events_promql(selector: Selector, below: float | None, millis: int) -> str:
    """As `events_promql`, over a range of `millis` milliseconds (at least 1 s for gauges):
    the daemon's period remainder, from the end of the last whole hour to the evaluation."""
    if below is None:
        return f"increase({selector.promql()}[{_range(millis)}])"
    inner = selector.promql() if below == math.inf else f"({selector.promql()} <= {below!r})"
    # window - 1s with 1m steps picks exactly window/1m slices, whether or not the
    # evaluation time falls on a minute (subquery ranges are closed in Prometheus 2).
    return f"count_over_time({inner}[{_range(millis - 1000)}:{SLICE // 60}m])"


def _range(millis: int) -> str:
    """A PromQL range: `5m`, `3599s` for whole seconds, else `2034500ms`."""
    if millis <= 0:
        raise ValueError(f"range must be positive: {millis} ms")
    return format_duration(millis // 1000) if millis % 1000 == 0 else f"{millis}ms"


@dataclass(frozen=True)
class Events:
    """How to count events: each list is summed; an empty `total` means good + bad, an
    empty `bad` means total - good (never below zero)."""

    bad: tuple[Term, ...] = ()
    good: tuple[Term, ...] = ()
    total: tuple[Term, ...] = ()

    def __post_init__(self) -> None:
        if not self.bad and not self.good:
            raise ValueError("events need bad or good terms")
        if not self.total and not (self.bad and self.good):
            raise ValueError("events need total, or both good and bad")

    def terms(self) -> Iterator[Term]:
        yield from self.bad
        yield from self.good
        yield from self.total


def count_events(events: Events, count: Callable[[Term], float]) -> tuple[float, float]:
    """(bad, total) from each term's event count; the rules compute the same in PromQL."""
    good = sum(count(t) for t in events.good)
    total = sum(count(t) for t in events.total)
    if events.bad:
        bad = sum(count(t) for t in events.bad)
        if not events.total:
            total = good + bad
    else:
        bad = max(total - good, 0.0)
    return bad, total


@dataclass(frozen=True)
class RatioSLI:
    """Bad (or good) events over total events, from counter selectors."""

    total: Selector
    bad: Selector | None = None
    good: Selector | None = None
    kind: Literal["ratio"] = "ratio"

    def events(self) -> Events:
        return Events(
            bad=(Term(self.bad),) if self.bad else (),
            good=(Term(self.good),) if self.good else (),
            total=(Term(self.total),),
        )


@dataclass(frozen=True)
class LatencySLI:
    """Events at or below `threshold` over all events.

    From a histogram (`source="histogram"`, `metric` its base name): good events are those
    in the bucket whose bound is `threshold`. With `exceeded` (a counter with a `threshold`
    label, such as hpcobs_slurm_jobs_wait_exceeded_total), bad events are those that crossed
    the threshold while still waiting, counted once each as soon as they are late, and
    total = good + bad; without it, bad = histogram count - bucket.

    From a gauge (`source="gauge"`, e.g. a probe's latest p99 latency): every minute with a
    sample is an event, good when the value was at or below `threshold`.
    """

    metric: str
    threshold: float
    matchers: tuple[Matcher, ...] = ()
    exceeded: str | None = None
    buckets: tuple[float, ...] = ()
    source: Literal["histogram", "gauge"] = "histogram"
    kind: Literal["latency"] = "latency"

    def events(self) -> Events:
        if self.source == "gauge":
            sel = Selector(self.metric, self.matchers)
            return Events(good=(Term(sel, self.threshold),), total=(Term(sel, math.inf),))
        good = Term(
            Selector(
                f"{self.metric}_bucket", (*self.matchers, number_matcher("le", self.threshold))
            )
        )
        if self.exceeded:
            bad = Term(
                Selector(
                    self.exceeded, (*self.matchers, number_matcher("threshold", self.threshold))
                )
            )
            return Events(bad=(bad,), good=(good,))
        return Events(good=(good,), total=(Term(Selector(f"{self.metric}_count", self.matchers)),))


@dataclass(frozen=True)
class WeightedSLI:
    """Resource-seconds of jobs that ended in `bad_states` over all resource-seconds, so a
    failed 512-GPU job weighs 512 times a failed 1-GPU job of the same length."""

    metric: str
    resource: str | None
    bad_states: tuple[str, ...]
    matchers: tuple[Matcher, ...] = ()
    kind: Literal["weighted"] = "weighted"

    def events(self) -> Events:
        base = list(self.matchers)
        if self.resource:
            base.append(Matcher("resource", "=", self.resource))
        states = "|".join(sorted(self.bad_states))
        bad = Selector(self.metric, (*base, Matcher("state", "=~", states)))
        return Events(bad=(Term(bad),), total=(Term(Selector(self.metric, tuple(base))),))


SLI = RatioSLI | LatencySLI | WeightedSLI


@dataclass(frozen=True)
class Alerting:
    page: bool = True
    ticket: bool = True
    min_events: tuple[tuple[str, int], ...] = ()  # (window name, minimum events)
    runbook_url: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    def min_events_for(self, window_name: str) -> int:
        return dict(self.min_events).get(window_name, 0)


@dataclass(frozen=True)
class SLO:
    id: str
    service: str
    objective: Decimal  # ratio, e.g. Decimal("0.99")
    sli: SLI
    period: Period = ROLLING_30D
    description: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    alerting: Alerting = field(default_factory=Alerting)
    file: str = ""
    line: int = 0

    @property
    def error_budget(self) -> Decimal:
        return 1 - self.objective

    def alert_defs(self) -> tuple[AlertDef, ...]:
        return tuple(
            a
            for a in ALERTS
            if (a is PAGE and self.alerting.page) or (a is TICKET and self.alerting.ticket)
        )

    def rule_labels(self) -> dict[str, str]:
        """Labels every recording rule of this SLO carries."""
        return {"slo": self.id, "service": self.service, **dict(self.labels)}

    def threshold(self, condition: BurnRateCondition) -> Decimal:
        """The error ratio above which a burn-rate condition holds."""
        return condition.factor * self.error_budget


def decimal_text(value: Decimal) -> str:
    """A Decimal as a plain PromQL number literal (`0.144`, not `1.44E-1`)."""
    text = format(value.normalize(), "f")
    return text if text not in ("-0", "") else "0"


def burn_state(
    slo: SLO, error_ratio: Mapping[str, float | None], total_events: Mapping[str, float]
) -> AlertDef | None:
    """Which alert (page before ticket) the rules would fire on these figures, if any.

    The same conditions the rule generator renders to PromQL: both windows' error ratios
    above factor × budget, and at least `min_events` events in each window that has one.
    """
    for alert in slo.alert_defs():
        for cond in alert.conditions:
            limit = float(slo.threshold(cond))
            ok = True
            for w in (cond.long, cond.short):
                ratio = error_ratio.get(w.name)
                if (
                    ratio is None
                    or not ratio > limit
                    or total_events.get(w.name, 0.0) < slo.alerting.min_events_for(w.name)
                ):
                    ok = False
            if ok:
                return alert
    return None
