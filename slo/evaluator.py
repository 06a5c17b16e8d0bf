"""Compute every SLO's event counts, SLIs, burn rates and error budget from Prometheus.

Batching: all selectors on one metric, across all SLOs, share one query per window,

    sum by (<labels any of them matches on>) (increase(<metric>{<common filter>}[<window>]))

and each SLO takes the groups its terms match (`Term.matches`), so the number of
queries depends on the metrics and windows in use, not on the number of SLOs.

Windows:
- 5m, 30m, 1h, 2h, 6h, 1d, 3d: `increase` over the window ending at the evaluation time;
- the period (30d, calendar month, ...): the sum of hourly event counts ("tiles") over the
  whole hours of the period that ended at least `settle` seconds ago, plus the remainder:
  `increase` from the end of the last of those hours up to the evaluation time, like the
  short windows (one more batched query per metric, whatever the number of SLOs). Tiles
  are fetched once with one range query per metric (step 1h) and kept, so a cycle never
  reads 30 days of raw samples again: at most one new hour per metric per hour. A
  rolling period thus covers N days of whole hours plus the remainder (up to an hour and
  `settle` more); a calendar month starts at the start of the evaluation time's month.

Every window is event-weighted (bad events / total events), as in the generated rules.
An SLO whose queries failed gets no figures in that evaluation (`SLOResult.error`), never
made-up ones.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode, Tracer

from hpcobs.exporters.runtime.once import OnceLog
from hpcobs.slo.model import (
    SHORT_WINDOWS,
    SLO,
    TILE,
    AlertDef,
    Term,
    Window,
    burn_state,
    count_events,
    events_promql,
    range_events_promql,
)
from hpcobs.slo.promapi import PrometheusClient, QueryError, QueryStats, Sample
from hpcobs.slo.selector import Matcher, Selector, regex_escape

log = logging.getLogger("hpcobs.slo")
HOUR = TILE.seconds


# -- the query plan ------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """One aggregation over one metric, shared by every term on that metric."""

    metric: str
    by: tuple[str, ...]
    prefilter: tuple[Matcher, ...]
    below: float | None = None  # as Term.below: None for counters

    def expr(self, window: Window) -> str:
        inner = events_promql(Selector(self.metric, self.prefilter), self.below, window)
        return self._sum(inner)

    def live_expr(self, millis: int) -> str:
        """Events over the last `millis` milliseconds (the period's remainder)."""
        return self._sum(
            range_events_promql(Selector(self.metric, self.prefilter), self.below, millis)
        )

    def _sum(self, inner: str) -> str:
        return f"sum by ({', '.join(self.by)}) ({inner})" if self.by else f"sum({inner})"


@dataclass(frozen=True)
class Plan:
    batches: tuple[Batch, ...]
    batch_of: Mapping[Term, Batch]


def make_plan(slos: Iterable[SLO]) -> Plan:
    groups: dict[tuple[str, float | None], list[Term]] = {}
    for slo in slos:
        for term in slo.sli.events().terms():
            group = groups.setdefault((term.selector.metric, term.below), [])
            if term not in group:
                group.append(term)
    batches = []
    batch_of: dict[Term, Batch] = {}
    for (metric, below), terms in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1.0)
    ):
        sels = [t.selector for t in terms]
        by = tuple(sorted(set().union(*(s.labels() for s in sels))))
        batch = Batch(metric, by, _prefilter(sels), below)
        batches.append(batch)
        for term in terms:
            batch_of[term] = batch
    return Plan(tuple(batches), batch_of)


def _prefilter(sels: Sequence[Selector]) -> tuple[Matcher, ...]:
    """Matchers every selector implies, so the server reads fewer series.

    A label that every selector constrains positively (= or =~) becomes one regex matcher
    accepting the union; a matcher shared verbatim by all selectors is kept as is.
    """
    out: list[Matcher] = []
    labels = set.intersection(*(s.labels() for s in sels)) if sels else set()
    for label in sorted(labels):
        per_sel = [[m for m in s.matchers if m.label == label] for s in sels]
        shared = set.intersection(*(set(ms) for ms in per_sel))
        if shared:
            out.extend(sorted(shared, key=lambda m: (m.op, m.value)))
            continue
        if all(any(m.op in ("=", "=~") for m in ms) for ms in per_sel):
            alternatives = []
            for ms in per_sel:
                m = next(m for m in ms if m.op in ("=", "=~"))
                alternatives.append(regex_escape(m.value) if m.op == "=" else f"(?:{m.value})")
            out.append(Matcher(label, "=~", "|".join(dict.fromkeys(alternatives))))
    return tuple(out)


# -- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowResult:
    name: str
    start: float
    end: float
    bad: float
    total: float

    @property
    def good(self) -> float:
        return self.total - self.bad

    @property
    def error_ratio(self) -> float | None:
        """bad / total; None for a window without events (no sample, never NaN)."""
        return self.bad / self.total if self.total > 0 else None

    @property
    def sli(self) -> float | None:
        ratio = self.error_ratio
        return None if ratio is None else 1.0 - ratio


@dataclass(frozen=True)
class SLOResult:
    slo: SLO
    windows: Mapping[str, WindowResult] = field(default_factory=dict)
    error: str | None = None
    # the part of the period window after the whole hours (included in the period's counts)
    remainder: WindowResult | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def period(self) -> WindowResult | None:
        return self.windows.get(self.slo.period.name)

    def burn_rate(self, window: str) -> float | None:
        w = self.windows.get(window)
        ratio = None if w is None else w.error_ratio
        return None if ratio is None else ratio / float(self.slo.error_budget)

    @property
    def error_budget_remaining(self) -> float | None:
        burn = self.burn_rate(self.slo.period.name)
        return None if burn is None else 1.0 - burn

    def alert(self) -> AlertDef | None:
        """The alert the generated rules would fire on these figures (page before ticket)."""
        if not self.ok:
            return None
        ratios = {name: w.error_ratio for name, w in self.windows.items()}
        totals = {name: w.total for name, w in self.windows.items()}
        return burn_state(self.slo, ratios, totals)


@dataclass(frozen=True)
class Evaluation:
    time: float  # the evaluation (query) time, unix seconds
    results: tuple[SLOResult, ...]
    queries: int
    failed_queries: int
    duration: float
    period_end: float  # end of the hourly tiles summed for period windows (then: remainder)

    @property
    def success(self) -> bool:
        return self.failed_queries == 0 and all(r.ok for r in self.results)


# -- hourly tiles --------------------------------------------------------------------------
class TileCache:
    """Hourly event counts per selector: tiles[selector][hour_end] = events in that hour."""

    def __init__(self) -> None:
        self._values: dict[Term, dict[int, float]] = {}
        self._fetched: dict[Batch, set[int]] = {}
        self._lock = threading.Lock()

    def missing(self, batch: Batch, first: int, last: int) -> list[int]:
        with self._lock:
            have = self._fetched.get(batch, set())
            return [h for h in range(first, last + 1, HOUR) if h not in have]

    def store(
        self,
        batch: Batch,
        hours: Iterable[int],
        sums: Mapping[int, Mapping[Term, float]],
        sels: Sequence[Term],
    ) -> None:
        """Record the hours fetched for `batch`; `sums[hour][selector]` (absent: 0 events)."""
        with self._lock:
            fetched = self._fetched.setdefault(batch, set())
            for h in hours:
                row = sums.get(h, {})
                for sel in sels:
                    self._values.setdefault(sel, {})[h] = row.get(sel, 0.0)
                fetched.add(h)

    def total(self, sel: Term, start: float, end: float) -> float:
        """Events of the hours ending in (start, end]."""
        with self._lock:
            values = self._values.get(sel, {})
            return math.fsum(v for h, v in values.items() if start < h <= end)

    def forget_before(self, oldest: int) -> None:
        with self._lock:
            for values in self._values.values():
                for h in [h for h in values if h < oldest]:
                    del values[h]
            for hours in self._fetched.values():
                hours.difference_update([h for h in hours if h < oldest])

    def series(self, sel: Term, start: float, end: float) -> list[tuple[int, float]]:
        """(hour end, events) of the hours ending in (start, end], in time order."""
        with self._lock:
            values = self._values.get(sel, {})
            return sorted((h, v) for h, v in values.items() if start < h <= end)


# -- the evaluator -------------------------------------------------------------------------
class Evaluator:
    """Evaluates a fixed set of SLOs; keeps the hourly tiles between evaluations."""

    def __init__(
        self,
        slos: Sequence[SLO],
        client: PrometheusClient,
        *,
        concurrency: int = 4,
        settle: float = 120.0,
        timeout: float = 30.0,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.slos = tuple(slos)
        self.client = client
        self.plan = make_plan(self.slos)
        self.concurrency = max(1, concurrency)
        self.settle = settle
        self.timeout = timeout
        self.tracer = tracer or trace.NoOpTracer()
        self.clock = clock
        self.tiles = TileCache()
        self._sels_of: dict[Batch, list[Term]] = {}
        for sel, batch in self.plan.batch_of.items():
            self._sels_of.setdefault(batch, []).append(sel)
        self._longest: dict[Batch, int] = {
            batch: max(s.period.max_seconds for s in self.slos if self._uses(s, batch))
            for batch in self.plan.batches
        }
        # label set of a result group → the selectors of its batch that match it
        self._match_cache: dict[tuple[Batch, tuple[tuple[str, str], ...]], tuple[Term, ...]] = {}
        self._cache_lock = threading.Lock()
        self._failures = OnceLog(log)

    @property
    def queries_per_cycle(self) -> int:
        """Instant queries of a steady-state cycle: the short windows and the period's
        remainder per metric (plus one tile query per metric an hour)."""
        return len(self.plan.batches) * (len(SHORT_WINDOWS) + 1)

    def period_end(self, at: float) -> int:
        return int((at - self.settle) // HOUR * HOUR)

    def evaluate(self, at: float | None = None) -> Evaluation:
        """Query Prometheus for the time `at` (default now) and compute every SLO."""
        at = round(self.clock() if at is None else at, 3)
        started = time.monotonic()
        deadline = started + self.timeout
        period_end = self.period_end(at)
        with self.tracer.start_as_current_span("slo.evaluation") as span:
            span.set_attribute("hpcobs.slo.count", len(self.slos))
            span.set_attribute("hpcobs.evaluation.time", at)
            ctx = _QueryContext(trace.set_span_in_context(span), deadline)
            sums: dict[tuple[Batch, str], dict[Term, float] | None] = {}
            tiles_ok: dict[Batch, bool] = {}
            remainders: dict[tuple[Batch, int], dict[Term, float] | None] = {}

            def instant(batch: Batch, window: Window) -> None:
                samples = self._query(ctx, "instant", batch, window.name, batch.expr(window), at)
                sums[(batch, window.name)] = (
                    None if samples is None else self._aggregate(batch, samples)
                )

            def fetch_tiles(batch: Batch) -> None:
                tiles_ok[batch] = self._fetch_tiles(ctx, batch, period_end)

            def remainder(batch: Batch, millis: int) -> None:
                expr = batch.live_expr(millis)
                samples = self._query(ctx, "remainder", batch, f"{millis}ms", expr, at)
                remainders[(batch, millis)] = (
                    None if samples is None else self._aggregate(batch, samples)
                )

            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="slo-query") as pool:
                jobs = [pool.submit(fetch_tiles, b) for b in self.plan.batches]
                jobs += [
                    pool.submit(instant, b, w) for b in self.plan.batches for w in SHORT_WINDOWS
                ]
                jobs += [
                    pool.submit(remainder, b, millis)
                    for b, millis in self._remainder_queries(at, period_end)
                ]
                for job in jobs:
                    job.result()
            oldest = period_end - max((s.period.max_seconds for s in self.slos), default=0)
            self.tiles.forget_before(oldest)
            results = tuple(
                self._result(slo, at, period_end, sums, tiles_ok, remainders) for slo in self.slos
            )
            evaluation = Evaluation(
                time=at,
                results=results,
                queries=ctx.queries,
                failed_queries=ctx.failed,
                duration=time.monotonic() - started,
                period_end=period_end,
            )
            span.set_attribute("hpcobs.query.count", evaluation.queries)
            span.set_attribute("hpcobs.query.failed", evaluation.failed_queries)
            span.set_attribute("hpcobs.evaluation.success", evaluation.success)
            if not evaluation.success:
                span.set_status(
                    Status(StatusCode.ERROR, f"{evaluation.failed_queries} queries failed")
                )
        return evaluation

    # -- queries ---------------------------------------------------------------------------
    def _query(
        self, ctx: _QueryContext, kind: str, batch: Batch, window: str, expr: str, at: float
    ) -> list[Sample] | None:
        """An instant query at `at`, run as `_run` runs it."""
        return self._run(
            ctx,
            kind,
            batch,
            window,
            expr,
            lambda stats: self.client.query(expr, at, deadline=ctx.deadline, stats=stats),
        )

    def _run(
        self,
        ctx: _QueryContext,
        kind: str,
        batch: Batch,
        window: str,
        expr: str,
        call: Callable[[QueryStats], list[Sample]],
    ) -> list[Sample] | None:
        """Run one query in a child span; None when it failed (logged, counted)."""
        stats = QueryStats()
        result: list[Sample] | None = None
        key = f"{kind} {batch.metric}" + (f" <= {batch.below}" if batch.below is not None else "")
        key += f" {window}" if kind == "instant" else ""  # remainders vary: one key
        with self.tracer.start_as_current_span("prometheus.query", context=ctx.parent) as span:
            span.set_attribute("db.system", "prometheus")
            span.set_attribute("db.statement", expr[:2000])
            span.set_attribute("hpcobs.query.kind", kind)
            span.set_attribute("hpcobs.metric", batch.metric)
            span.set_attribute("hpcobs.window", window)
            try:
                result = call(stats)
            except QueryError as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                self._failures.warning(
                    key,
                    "query failed (logged once until it succeeds again)",
                    query=expr,
                    window=window,
                    err=str(exc),
                    attempts=stats.attempts,
                )
            span.set_attribute("hpcobs.query.attempts", stats.attempts)
            if stats.status is not None:
                span.set_attribute("http.response.status_code", stats.status)
            if result is not None:
                span.set_attribute("hpcobs.query.series", len(result))
                self._failures.clear(key)
        for warning in stats.warnings:
            log.debug("query warning", extra={"query": expr, "warning": warning})
        ctx.count(failed=result is None)
        return result

    def _fetch_tiles(self, ctx: _QueryContext, batch: Batch, period_end: int) -> bool:
        """Make sure the hourly tiles of `batch` up to `period_end` are cached."""
        first = period_end - self._longest[batch] + HOUR
        missing = self.tiles.missing(batch, first, period_end)
        if not missing:
            return True
        start, end = missing[0], missing[-1]
        expr = batch.expr(TILE)
        rows: dict[int, list[Sample]] = {}
        if start == end:
            samples = self._query(ctx, "tiles", batch, TILE.name, expr, end)
            if samples is None:
                return False
            rows[end] = samples
        else:

            def call(stats: QueryStats) -> list[Sample]:
                series = self.client.query_range(
                    expr, start, end, HOUR, deadline=ctx.deadline, stats=stats
                )
                flat = []
                for s in series:
                    for t, v in s.points:
                        sample = Sample(s.labels, v)
                        rows.setdefault(round(t), []).append(sample)
                        flat.append(sample)
                return flat

            hours = (end - start) // HOUR + 1
            if self._run(ctx, "tiles", batch, f"{TILE.name}x{hours}", expr, call) is None:
                return False
        sums = {h: self._aggregate(batch, samples) for h, samples in rows.items()}
        self.tiles.store(batch, range(start, end + 1, HOUR), sums, self._sels_of[batch])
        return True

    # -- arithmetic ------------------------------------------------------------------------
    def _aggregate(self, batch: Batch, samples: Sequence[Sample]) -> dict[Term, float]:
        """Sum each selector's matching groups (matching is cached per label set)."""
        parts: dict[Term, list[float]] = {sel: [] for sel in self._sels_of[batch]}
        for sample in samples:
            for sel in self._matching(batch, sample.labels):
                parts[sel].append(sample.value)
        return {sel: math.fsum(values) for sel, values in parts.items()}

    def _matching(self, batch: Batch, labels: Mapping[str, str]) -> tuple[Term, ...]:
        key = (batch, tuple(sorted(labels.items())))
        with self._cache_lock:
            found = self._match_cache.get(key)
        if found is None:
            found = tuple(sel for sel in self._sels_of[batch] if sel.matches(labels))
            with self._cache_lock:
                if len(self._match_cache) > 100_000:  # bounded: label sets can churn
                    self._match_cache.clear()
                self._match_cache[key] = found
        return found

    def _remainder_start(self, slo: SLO, at: float, period_end: int) -> float:
        """Where the SLO's period remainder (the part after its whole hours) starts: the end
        of the whole hours, or a calendar month's start in its first `settle` seconds."""
        return max(float(period_end), slo.period.window_start(period_end, at))

    def _remainder_queries(self, at: float, period_end: int) -> list[tuple[Batch, int]]:
        """(batch, range in ms) of the remainder queries: one per metric (two while a
        calendar month is younger than `settle`); none for a remainder under 1 s."""
        out: dict[tuple[Batch, int], None] = {}
        for slo in self.slos:
            millis = _millis(at - self._remainder_start(slo, at, period_end))
            if millis >= 1000:
                for term in slo.sli.events().terms():
                    out[(self.plan.batch_of[term], millis)] = None
        return list(out)

    def _uses(self, slo: SLO, batch: Batch) -> bool:
        return any(self.plan.batch_of[t] == batch for t in slo.sli.events().terms())

    def _result(
        self,
        slo: SLO,
        at: float,
        period_end: int,
        sums: Mapping[tuple[Batch, str], Mapping[Term, float] | None],
        tiles_ok: Mapping[Batch, bool],
        remainders: Mapping[tuple[Batch, int], Mapping[Term, float] | None],
    ) -> SLOResult:
        events = slo.sli.events()
        out: dict[str, WindowResult] = {}
        for w in SHORT_WINDOWS:
            per_sel: dict[Term, float] = {}
            for sel in events.terms():
                got = sums.get((self.plan.batch_of[sel], w.name))
                if got is None:
                    return SLOResult(
                        slo, error=f"the query on {sel.selector.metric} over {w.name} failed"
                    )
                per_sel[sel] = got[sel]
            bad, total = count_events(events, per_sel.__getitem__)
            out[w.name] = WindowResult(w.name, at - w.seconds, at, bad, total)
        for sel in events.terms():
            if not tiles_ok.get(self.plan.batch_of[sel], False):
                return SLOResult(
                    slo,
                    error=f"the hourly event counts of {sel.selector.metric} could not be fetched",
                )
        start = slo.period.window_start(period_end, at)
        rest_start = self._remainder_start(slo, at, period_end)
        millis = _millis(at - rest_start)
        rest: dict[Term, float] = {}
        for sel in events.terms():
            if millis < 1000:
                rest[sel] = 0.0
                continue
            got = remainders.get((self.plan.batch_of[sel], millis))
            if got is None:
                return SLOResult(
                    slo,
                    error=f"the query on {sel.selector.metric} over the rest of the period "
                    "(after the whole hours) failed",
                )
            rest[sel] = got[sel]
        bad, total = count_events(events, rest.__getitem__)
        remainder = WindowResult(slo.period.name, rest_start, at, bad, total)
        # each term's events are summed over hours and remainder first, as for any window
        bad, total = count_events(
            events, lambda sel: self.tiles.total(sel, start, period_end) + rest[sel]
        )
        out[slo.period.name] = WindowResult(slo.period.name, start, at, bad, total)
        return SLOResult(slo, out, remainder=remainder)


def _millis(seconds: float) -> int:
    return round(seconds * 1000)


class _QueryContext:
    """Per-evaluation state shared by the query threads."""

    def __init__(self, parent: Context, deadline: float) -> None:
        self.parent = parent
        self.deadline = deadline
        self.queries = 0
        self.failed = 0
        self._lock = threading.Lock()

    def count(self, failed: bool) -> None:
        with self._lock:
            self.queries += 1
            self.failed += failed
