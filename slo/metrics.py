"""The daemon's metrics: declarations, and families built from the last evaluation (pure).

Per SLO, from the latest evaluation only: when the SLO's queries failed in it, its SLI,
burn-rate, budget and event series are left out (absent, never a stale or made-up value),
`hpcobs_slo_stale{slo}` is 1 and `hpcobs_slo_data_age_seconds{slo}` keeps growing from
the last evaluation that did compute it.

Staleness is judged at scrape time, from the data's age: figures older than `stale_after`
(the daemon passes twice `--eval-interval`) are stale too, and left out, even while the
evaluation meant to replace them is still waiting for a hanging Prometheus; and
`hpcobs_slo_evaluation_success` is then 0, as the latest evaluation is overdue.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.slo.evaluator import Evaluation, SLOResult
from hpcobs.slo.model import SLO, decimal_text

INFO = MetricDef(
    "hpcobs_slo_info",
    "gauge",
    "1 for every SLO, labelled with its service, SLI kind and period.",
    ("slo", "service", "kind", "period"),
)
OBJECTIVE = MetricDef(
    "hpcobs_slo_objective_ratio", "gauge", "The SLO's objective (0.99 for 99 %).", ("slo",)
)
SLI = MetricDef(
    "hpcobs_slo_sli_ratio",
    "gauge",
    "Good events over all events in the window (event-weighted); absent for a window "
    "without events. The period window sums whole hours up to "
    "hpcobs_slo_period_end_timestamp_seconds, then the events since, up to the evaluation time.",
    ("slo", "window"),
)
BURN = MetricDef(
    "hpcobs_slo_burn_rate",
    "gauge",
    "Error ratio in the window over the error budget (1 - objective): 1 spends the budget "
    "exactly over the period.",
    ("slo", "window"),
)
BUDGET = MetricDef(
    "hpcobs_slo_error_budget_remaining_ratio",
    "gauge",
    "Share of the period's error budget left: 1 - period burn rate (negative when overspent).",
    ("slo",),
)
EVENTS = MetricDef(
    "hpcobs_slo_events",
    "gauge",
    "Events counted in the window: kind good or total (for weighted SLIs: resource-seconds).",
    ("slo", "kind", "window"),
)
STALE = MetricDef(
    "hpcobs_slo_stale",
    "gauge",
    "1 when the SLO's figures could not be computed in the latest evaluation, or are older "
    "than twice the evaluation interval (an evaluation is overdue); its series are then "
    "absent. Else 0.",
    ("slo",),
)
DATA_AGE = MetricDef(
    "hpcobs_slo_data_age_seconds",
    "gauge",
    "Seconds since the evaluation time of the SLO's latest computed figures.",
    ("slo",),
)
PERIOD_END = MetricDef(
    "hpcobs_slo_period_end_timestamp_seconds",
    "gauge",
    "End of the whole hours that the period windows of the latest evaluation sum.",
)
SUCCESS = MetricDef(
    "hpcobs_slo_evaluation_success",
    "gauge",
    "1 when every query of the latest evaluation succeeded and it is not overdue (its time "
    "is at most twice the evaluation interval ago), else 0.",
)
EVAL_TIME = MetricDef(
    "hpcobs_slo_evaluation_timestamp_seconds",
    "gauge",
    "Time the latest evaluation queried Prometheus for (its windows end there).",
)
LAST_SUCCESS = MetricDef(
    "hpcobs_slo_last_success_timestamp_seconds",
    "gauge",
    "Time of the latest evaluation in which every query succeeded.",
)
DURATION = MetricDef(
    "hpcobs_slo_evaluation_duration_seconds", "gauge", "Wall time of the latest evaluation."
)
QUERIES = MetricDef(
    "hpcobs_slo_evaluation_queries",
    "gauge",
    "Queries the latest evaluation sent (independent of the number of SLOs).",
)
EVALUATIONS = MetricDef(
    "hpcobs_slo_evaluations_total",
    "counter",
    "Evaluations, by result (success, failure).",
    ("result",),
)
QUERIES_TOTAL = MetricDef(
    "hpcobs_slo_queries_total",
    "counter",
    "Prometheus queries sent, by result (success, failure after retries).",
    ("result",),
)
METRICS = (
    INFO,
    OBJECTIVE,
    SLI,
    BURN,
    BUDGET,
    EVENTS,
    STALE,
    DATA_AGE,
    PERIOD_END,
    SUCCESS,
    EVAL_TIME,
    LAST_SUCCESS,
    DURATION,
    QUERIES,
    EVALUATIONS,
    QUERIES_TOTAL,
)


@dataclass(frozen=True)
class DaemonState:
    """What the daemon knows at a scrape: immutable, swapped whole after each evaluation."""

    slos: tuple[SLO, ...]
    latest: Evaluation | None = None
    last_success: float | None = None
    computed_at: Mapping[str, float] = field(default_factory=dict)  # slo id → eval time
    evaluations: Mapping[str, int] = field(default_factory=dict)
    queries: Mapping[str, int] = field(default_factory=dict)

    def after(self, evaluation: Evaluation) -> DaemonState:
        computed = dict(self.computed_at)
        for r in evaluation.results:
            if r.ok:
                computed[r.slo.id] = evaluation.time
        result = "success" if evaluation.success else "failure"
        evaluations = dict(self.evaluations)
        evaluations[result] = evaluations.get(result, 0) + 1
        queries = dict(self.queries)
        queries["success"] = (
            queries.get("success", 0) + evaluation.queries - evaluation.failed_queries
        )
        queries["failure"] = queries.get("failure", 0) + evaluation.failed_queries
        return DaemonState(
            slos=self.slos,
            latest=evaluation,
            last_success=evaluation.time if evaluation.success else self.last_success,
            computed_at=computed,
            evaluations=evaluations,
            queries=queries,
        )


def families(state: DaemonState, now: float, stale_after: float | None = None) -> Iterator[Metric]:
    """The families at time `now`; figures older than `stale_after` seconds are stale."""
    info, objective, stale, age = INFO.gauge(), OBJECTIVE.gauge(), STALE.gauge(), DATA_AGE.gauge()
    sli, burn, budget, events = SLI.gauge(), BURN.gauge(), BUDGET.gauge(), EVENTS.gauge()
    latest = state.latest
    results: dict[str, SLOResult] = {r.slo.id: r for r in latest.results} if latest else {}
    overdue = latest is not None and stale_after is not None and now - latest.time > stale_after
    for slo in state.slos:
        info.add_metric([slo.id, slo.service, slo.sli.kind, slo.period.name], 1.0)
        objective.add_metric([slo.id], float(decimal_text(slo.objective)))
        result = results.get(slo.id)
        fresh = result is not None and result.ok and not overdue
        stale.add_metric([slo.id], 0.0 if fresh else 1.0)
        if slo.id in state.computed_at:
            age.add_metric([slo.id], max(0.0, now - state.computed_at[slo.id]))
        if result is None or not fresh:
            continue
        for name, w in result.windows.items():
            events.add_metric([slo.id, "good", name], w.good)
            events.add_metric([slo.id, "total", name], w.total)
            if w.sli is not None:
                sli.add_metric([slo.id, name], w.sli)
            rate = result.burn_rate(name)
            if rate is not None:
                burn.add_metric([slo.id, name], rate)
        remaining = result.error_budget_remaining
        if remaining is not None:
            budget.add_metric([slo.id], remaining)
    yield from (info, objective, sli, burn, budget, events, stale, age)

    success, eval_time, last_ok = SUCCESS.gauge(), EVAL_TIME.gauge(), LAST_SUCCESS.gauge()
    duration, queries, period_end = DURATION.gauge(), QUERIES.gauge(), PERIOD_END.gauge()
    success.add_metric([], 1.0 if latest is not None and latest.success and not overdue else 0.0)
    if latest is not None:
        eval_time.add_metric([], latest.time)
        duration.add_metric([], latest.duration)
        queries.add_metric([], float(latest.queries))
        period_end.add_metric([], float(latest.period_end))
    if state.last_success is not None:
        last_ok.add_metric([], state.last_success)
    yield from (success, eval_time, last_ok, duration, queries, period_end)

    evaluations, queries_total = EVALUATIONS.counter(), QUERIES_TOTAL.counter()
    for result_name in ("success", "failure"):
        evaluations.add_metric([result_name], float(state.evaluations.get(result_name, 0)))
        queries_total.add_metric([result_name], float(state.queries.get(result_name, 0)))
    yield from (evaluations, queries_total)
