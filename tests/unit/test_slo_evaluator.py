"""The evaluator on a fake Prometheus: batching, event arithmetic, hourly tiles, failures,
traces. (tests/real/test_slo_serve.py runs it against a real Prometheus.)

The fake serves the daemon's batched query shapes from series with constant rates (from
`born` on, a stack's start), so every expected count is rate × seconds, computed here by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from hpcobs.slo.evaluator import Evaluator, _prefilter, make_plan
from hpcobs.slo.loader import load_texts
from hpcobs.slo.model import SLO
from hpcobs.slo.promapi import QueryError, QueryStats, Sample, Series
from hpcobs.slo.selector import Matcher, Selector

pytestmark = pytest.mark.unit

HOUR = 3600
NOW = 1_700_000_000.0 + 1234.5  # not on an hour
QUERY = re.compile(
    r"^sum(?: by \((?P<by>[^)]*)\) )?\((?P<fn>increase|count_over_time)\((?P<inner>.*)\[(?P<w>[^\]]+)\]\)\)$"
)
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.split(":")[0])
    assert m, f"unexpected range: {text}"
    return int(m.group(1)) * UNITS[m.group(2)]


@dataclass
class FakePrometheus:
    """Series with constant rates (events per second; for gauges, a constant value)."""

    counters: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    gauges: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)  # metric names whose queries fail
    calls: list[tuple[str, str]] = field(default_factory=list)  # (kind, expr)
    born: float = -math.inf  # no events before this time (a fresh stack)

    def _answer(self, expr: str, at: float) -> list[Sample]:
        m = QUERY.match(expr)
        assert m, f"unexpected query shape: {expr}"
        by = [b.strip() for b in m.group("by").split(",")] if m.group("by") else []
        inner, window = m.group("inner"), seconds(m.group("w"))
        window = max(0.0, min(window, at - self.born))
        metric = re.match(r"\(?([a-zA-Z_:][a-zA-Z0-9_:]*)", inner).group(1)  # type: ignore[union-attr]
        if metric in self.fail:
            raise QueryError(f"{metric}: down", retryable=True)
        groups: dict[tuple[str, ...], float] = {}
        if m.group("fn") == "increase":
            for labels, rate in self.counters.get(metric, []):
                key = tuple(labels.get(b, "") for b in by)
                groups[key] = groups.get(key, 0.0) + rate * window
        else:  # count_over_time over 1-minute slices, optionally of `<= threshold`
            limit = re.search(r"<= ([0-9.e+-]+)\)$", inner)
            for labels, value in self.gauges.get(metric, []):
                if limit is None or value <= float(limit.group(1)):
                    key = tuple(labels.get(b, "") for b in by)
                    groups[key] = groups.get(key, 0.0) + (window + 1) // 60  # whole minutes
        return [Sample(dict(zip(by, key, strict=True)), v) for key, v in groups.items()]

    def query(
        self,
        expr: str,
        at: float,
        *,
        deadline: float | None = None,
        stats: QueryStats | None = None,
    ) -> list[Sample]:
        self.calls.append(("query", expr))
        if stats is not None:
            stats.attempts += 1
        return self._answer(expr, at)

    def query_range(
        self,
        expr: str,
        start: float,
        end: float,
        step: float,
        *,
        deadline: float | None = None,
        stats: QueryStats | None = None,
    ) -> list[Series]:
        self.calls.append(("range", expr))
        steps = int((end - start) // step) + 1
        points: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for i in range(steps):
            for s in self._answer(expr, start + i * step):
                points.setdefault(tuple(sorted(s.labels.items())), []).append(
                    (start + i * step, s.value)
                )
        return [Series(dict(k), tuple(v)) for k, v in points.items()]


SPEC = """
version: hpcobs.slo/v1
service: slurm
slos:
  - id: jobs
    objective: 99
    expand: {partition: [cpu, gpu]}
    sli:
      ratio:
        bad: hpcobs_slurm_jobs_finished_total{cause="system"}
        total: hpcobs_slurm_jobs_finished_total
    alerting: {min_events: {1h: 100}}
  - id: good-based
    objective: 99
    sli:
      ratio:
        good: hpcobs_slurm_jobs_finished_total{cause!="system"}
        total: hpcobs_slurm_jobs_finished_total
  - id: wait
    objective: 95
    sli:
      latency:
        histogram: hpcobs_slurm_job_queue_wait_seconds
        threshold: 3600
        exceeded: hpcobs_slurm_jobs_wait_exceeded_total
        selector: {partition: gpu}
  - id: lost
    objective: 99.5
    sli:
      weighted: {resource: gpu}
  - id: probe
    objective: 99
    sli:
      latency:
        gauge: hpcobs_mpi_collective_latency_seconds
        selector: {op: allreduce}
        threshold: 0.0001
  - id: idle
    objective: 99
    sli:
      ratio:
        bad: nothing_total{x="1"}
        total: nothing_total
"""


def slos(text: str = SPEC) -> list[SLO]:
    loaded = load_texts([("spec.yaml", text)])
    assert loaded.ok, [str(p) for p in loaded.problems.items]
    return loaded.slos


def fake() -> FakePrometheus:
    jobs = "hpcobs_slurm_jobs_finished_total"
    return FakePrometheus(
        counters={
            jobs: [
                ({"partition": "cpu", "state": "completed", "cause": "none"}, 0.9),
                ({"partition": "cpu", "state": "node_fail", "cause": "system"}, 0.1),
                ({"partition": "gpu", "state": "completed", "cause": "none"}, 0.199),
                ({"partition": "gpu", "state": "failed", "cause": "user"}, 0.0),
                ({"partition": "gpu", "state": "node_fail", "cause": "system"}, 0.001),
            ],
            "hpcobs_slurm_job_queue_wait_seconds_bucket": [
                ({"partition": "gpu", "le": "600.0"}, 0.05),
                ({"partition": "gpu", "le": "3600.0"}, 0.09),
                ({"partition": "gpu", "le": "+Inf"}, 0.1),
                ({"partition": "cpu", "le": "3600.0"}, 5.0),
            ],
            "hpcobs_slurm_jobs_wait_exceeded_total": [
                ({"partition": "gpu", "threshold": "3600"}, 0.03),
                ({"partition": "cpu", "threshold": "3600"}, 9.0),
            ],
            "hpcobs_slurm_job_resource_seconds_total": [
                ({"partition": "gpu", "state": "completed", "resource": "gpu"}, 990.0),
                ({"partition": "gpu", "state": "boot_fail", "resource": "gpu"}, 10.0),
                ({"partition": "gpu", "state": "node_fail", "resource": "cpu"}, 5000.0),
            ],
        },
        gauges={
            "hpcobs_mpi_collective_latency_seconds": [
                ({"op": "allreduce", "size_bytes": "8"}, 0.00005),
                ({"op": "allreduce", "size_bytes": "1048576"}, 0.002),
                ({"op": "bcast", "size_bytes": "8"}, 0.00001),
            ]
        },
    )


def results(evaluation) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {r.slo.id: r for r in evaluation.results}


def test_event_counts_ratios_and_budgets_of_every_kind() -> None:
    prom = fake()
    ev = Evaluator(slos(), prom, settle=0).evaluate(NOW)
    assert ev.success and ev.time == NOW
    r = results(ev)
    cpu = r["jobs-cpu"]
    w = cpu.windows["1h"]
    assert (w.bad, w.total) == pytest.approx((360.0, 3600.0))
    assert w.error_ratio == pytest.approx(0.1) and w.sli == pytest.approx(0.9)
    assert cpu.burn_rate("1h") == pytest.approx(10.0)
    # the period: 30 days of whole hours up to the last hour before NOW, then the rest to NOW
    period, last_hour = cpu.windows["30d"], math.floor(NOW / HOUR) * HOUR
    assert ev.period_end == last_hour
    assert (period.start, period.end) == (last_hour - 30 * 86400, NOW)
    assert period.total == pytest.approx(1.0 * (30 * 86400 + NOW - last_hour))
    assert period.bad == pytest.approx(0.1 * (30 * 86400 + NOW - last_hour))
    rest = cpu.remainder
    assert rest is not None and (rest.start, rest.end) == (last_hour, NOW)
    assert rest.total == pytest.approx(NOW - last_hour) and rest.bad == pytest.approx(
        0.1 * (NOW - last_hour)
    )
    assert cpu.error_budget_remaining == pytest.approx(1 - 10.0)
    gpu = r["jobs-gpu"]
    assert gpu.windows["5m"].error_ratio == pytest.approx(0.001 / 0.2)
    good_based = r["good-based"]  # bad = total - good, over both partitions
    assert good_based.windows["6h"].error_ratio == pytest.approx(0.101 / 1.2)
    wait = r["wait"]  # good: le="3600.0" of gpu only; bad: exceeded of gpu; total = both
    assert wait.windows["1d"].good == pytest.approx(0.09 * 86400)
    assert wait.windows["1d"].error_ratio == pytest.approx(0.03 / 0.12)
    lost = r["lost"]  # GPU-seconds only, bad = boot_fail/node_fail
    assert lost.windows["3d"].error_ratio == pytest.approx(10.0 / 1000.0)
    probe = r["probe"]  # two allreduce series, one fast: half the slices are good
    assert probe.windows["1h"].total == 120 and probe.windows["1h"].error_ratio == pytest.approx(
        0.5
    )
    # 720 hours of 60 slices, then the whole minutes after the last hour (33 of 2034.5 s)
    assert NOW - last_hour == 2034.5
    assert probe.windows["30d"].total == 2 * (720 * 60 + 33)
    idle = r["idle"]
    assert idle.ok and idle.windows["1h"].total == 0
    assert idle.windows["1h"].error_ratio is None and idle.windows["1h"].sli is None
    assert idle.error_budget_remaining is None and idle.burn_rate("30d") is None


def test_alert_state_matches_rule_semantics_with_min_events() -> None:
    # jobs-cpu burns at 10x (error ratio 0.1): not above 0.144 (1h/5m), above 0.06 (6h/30m).
    strict = SPEC.replace(
        "alerting: {min_events: {1h: 100}}", "alerting: {min_events: {6h: 30000}}"
    )
    r = results(Evaluator(slos(), fake(), settle=0).evaluate(NOW))
    assert r["jobs-cpu"].alert().alert == "SLOBurnRatePage"
    assert r["jobs-gpu"].alert() is None  # 0.5 % on a 1 % budget
    # With at least 30000 events required over 6h (it saw 21600), the page is suppressed;
    # the ticket (3x over 1d and 2h) still holds.
    r = results(Evaluator(slos(strict), fake(), settle=0).evaluate(NOW))
    assert r["jobs-cpu"].windows["6h"].total == pytest.approx(21600)
    assert r["jobs-cpu"].alert().alert == "SLOBurnRateTicket"


def test_one_query_per_metric_and_window_whatever_the_number_of_slos() -> None:
    def spec(n: int) -> str:
        parts = ", ".join(f"p{i}" for i in range(n))
        return SPEC.replace("expand: {partition: [cpu, gpu]}", f"expand: {{partition: [{parts}]}}")

    few, many = fake(), fake()
    a = Evaluator(slos(spec(2)), few, settle=0).evaluate(NOW)
    b = Evaluator(slos(spec(60)), many, settle=0).evaluate(NOW)
    assert len(b.results) - len(a.results) == 58
    assert a.queries == b.queries == len(few.calls) == len(many.calls)
    metrics = {
        "hpcobs_slurm_jobs_finished_total",
        "hpcobs_slurm_job_queue_wait_seconds_bucket",
        "hpcobs_slurm_jobs_wait_exceeded_total",
        "hpcobs_slurm_job_resource_seconds_total",
        "hpcobs_mpi_collective_latency_seconds",
        "nothing_total",
    }
    batches = len(metrics) + 1  # the gauge needs two: all slices, and those below the threshold
    # 7 windows and the period's remainder, plus one tile range query each
    assert a.queries == batches * 8 + batches
    assert sorted(k for k, _ in few.calls).count("range") == batches
    by = {e for k, e in many.calls if "hpcobs_slurm_jobs_finished_total" in e and k == "query"}
    assert all(
        e.startswith("sum by (cause, partition) (increase(hpcobs_slurm_jobs_finished_total")
        for e in by
    )


def test_tiles_are_fetched_once_and_then_one_hour_at_a_time() -> None:
    prom = fake()
    evaluator = Evaluator(slos(), prom, settle=120)
    batches = len(evaluator.plan.batches)
    evaluator.evaluate(NOW)  # cold: one range query per batch for 30 days of hours
    assert [k for k, _ in prom.calls].count("range") == batches
    n = len(prom.calls)
    evaluator.evaluate(NOW + 60)  # same hour: only the 7 short windows and the remainder
    assert len(prom.calls) - n == 8 * batches
    n = len(prom.calls)
    ev = evaluator.evaluate(NOW + HOUR)  # one more hour ended: one instant tile query each
    assert len(prom.calls) - n == 9 * batches
    assert all(kind == "query" for kind, _ in prom.calls[n:])
    assert evaluator.queries_per_cycle == 8 * batches
    r = results(ev)["jobs-cpu"]
    last_hour = math.floor((NOW + HOUR - 120) / HOUR) * HOUR
    assert ev.period_end == last_hour
    # still exactly 720 hours, then the rest up to the evaluation time
    assert r.windows["30d"].total == pytest.approx(30 * 86400 + NOW + HOUR - last_hour)
    assert r.windows["30d"].end == NOW + HOUR


def test_failed_queries_make_only_their_slos_stale() -> None:
    prom = fake()
    prom.fail.add("hpcobs_slurm_jobs_wait_exceeded_total")
    ev = Evaluator(slos(), prom, settle=0).evaluate(NOW)
    assert not ev.success and ev.failed_queries == 9  # 7 windows, the tiles, the remainder
    r = results(ev)
    assert not r["wait"].ok and "hpcobs_slurm_jobs_wait_exceeded_total" in (r["wait"].error or "")
    assert r["wait"].windows == {} and r["wait"].error_budget_remaining is None
    assert r["wait"].alert() is None
    assert all(res.ok for sid, res in r.items() if sid != "wait")


def test_tiles_failing_once_are_fetched_again_next_cycle() -> None:
    prom = fake()
    prom.fail.add("hpcobs_slurm_job_resource_seconds_total")
    evaluator = Evaluator(slos(), prom, settle=0)
    assert not results(evaluator.evaluate(NOW))["lost"].ok
    prom.fail.clear()
    last_hour = math.floor(NOW / HOUR) * HOUR
    assert results(evaluator.evaluate(NOW + 1))["lost"].windows["30d"].total == pytest.approx(
        1000 * (30 * 86400 + NOW + 1 - last_hour)
    )


def test_traces_one_span_per_cycle_with_a_child_per_query() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    prom = fake()
    prom.fail.add("nothing_total")
    ev = Evaluator(slos(), prom, settle=0, tracer=provider.get_tracer("test")).evaluate(NOW)
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "slo.evaluation"]
    children = [s for s in spans if s.name == "prometheus.query"]
    assert len(children) == ev.queries
    assert all(c.parent is not None and c.parent.span_id == root.context.span_id for c in children)
    assert root.attributes["hpcobs.query.count"] == ev.queries
    assert root.attributes["hpcobs.evaluation.success"] is False
    assert root.status.status_code == StatusCode.ERROR
    failed = [c for c in children if c.status.status_code == StatusCode.ERROR]
    assert len(failed) == ev.failed_queries == 9
    assert all(c.attributes["hpcobs.metric"] == "nothing_total" for c in failed)
    ok = [c for c in children if c.status.status_code != StatusCode.ERROR]
    assert all("db.statement" in c.attributes and "hpcobs.query.series" in c.attributes for c in ok)


def test_a_fresh_stack_has_a_budget_from_its_first_minutes() -> None:
    # A stack 10 minutes old: every whole hour of the period is empty, yet its events count.
    prom = fake()
    prom.born = NOW - 600
    ev = Evaluator(slos(), prom).evaluate(NOW)  # default settle time (2 minutes)
    r = results(ev)
    cpu = r["jobs-cpu"]
    assert ev.success and cpu.windows["30d"].total == pytest.approx(600)
    assert cpu.windows["30d"].bad == pytest.approx(60)
    assert cpu.error_budget_remaining == pytest.approx(1 - 10.0)
    assert r["wait"].windows["30d"].error_ratio == pytest.approx(0.03 / 0.12)
    assert r["probe"].windows["30d"].total == 2 * 10  # the whole minutes since it started
    assert r["idle"].error_budget_remaining is None  # no events: no SLI, never a made-up one


def test_no_events_yet_means_no_period_figures() -> None:
    prom = fake()
    prom.born = NOW + 1
    r = results(Evaluator(slos(), prom).evaluate(NOW))
    assert all(res.ok for res in r.values())
    for res in r.values():
        period = res.windows[res.slo.period.name]
        assert period.total == 0 and period.sli is None and res.error_budget_remaining is None


def test_a_failing_remainder_query_makes_its_slos_stale() -> None:
    class FailRemainder(FakePrometheus):
        def query(self, expr: str, at: float, **kw: object) -> list[Sample]:
            if re.search(r"\d+ms[]:]", expr) and "nothing_total" not in expr:
                raise QueryError("down", retryable=True)
            return super().query(expr, at, **kw)  # type: ignore[arg-type]

    base = fake()
    prom = FailRemainder(counters=base.counters, gauges=base.gauges)
    ev = Evaluator(slos(), prom, settle=0).evaluate(NOW)
    r = results(ev)
    assert ev.failed_queries == len(make_plan(slos()).batches) - 1
    assert r["idle"].ok and not r["jobs-cpu"].ok and r["jobs-cpu"].windows == {}
    assert "after the whole hours" in (r["jobs-cpu"].error or "")


def test_no_remainder_query_on_the_hour() -> None:
    prom = fake()
    at = math.floor(NOW / HOUR) * HOUR
    evaluator = Evaluator(slos(), prom, settle=0)
    ev = evaluator.evaluate(at)
    batches = len(evaluator.plan.batches)
    assert ev.queries == 7 * batches + batches  # short windows and tiles only
    cpu = results(ev)["jobs-cpu"]
    assert cpu.windows["30d"].total == pytest.approx(30 * 86400)
    assert cpu.remainder is not None and cpu.remainder.total == 0


MONTH = 1_701_388_800  # 2023-12-01T00:00:00Z


def test_calendar_month_starts_with_the_month_even_before_its_first_whole_hour() -> None:
    spec = (
        SPEC
        + """  - id: month
    objective: 99
    period: calendar-month
    sli:
      ratio:
        bad: hpcobs_slurm_jobs_finished_total{partition="cpu",cause="system"}
        total: hpcobs_slurm_jobs_finished_total{partition="cpu"}
"""
    )
    for at, tiles_end in ((MONTH + 60, MONTH - HOUR), (MONTH + 1800, MONTH)):
        prom = fake()
        evaluator = Evaluator(slos(spec), prom, settle=120)
        ev = evaluator.evaluate(at)
        assert ev.period_end == tiles_end
        month, cpu = results(ev)["month"], results(ev)["jobs-cpu"]
        w = month.windows["month"]
        assert (w.start, w.end) == (MONTH, at)
        assert w.total == pytest.approx(at - MONTH)  # not the last hour of November
        assert month.remainder is not None and month.remainder.start == MONTH
        assert cpu.windows["30d"].total == pytest.approx(30 * 86400 + at - tiles_end)
        # one remainder query per metric, two on the metric the month uses while the month
        # is younger than the settle time
        extra = 1 if tiles_end < MONTH else 0
        assert ev.queries == 8 * len(evaluator.plan.batches) + len(evaluator.plan.batches) + extra


def test_prefilter_of_a_batch() -> None:
    a = Selector("m", (Matcher("partition", "=", "cpu"), Matcher("resource", "=", "gpu")))
    b = Selector("m", (Matcher("partition", "=~", "g.u"), Matcher("resource", "=", "gpu")))
    c = Selector("m", (Matcher("resource", "=", "gpu"),))
    assert _prefilter([a, b]) == (
        Matcher("partition", "=~", "cpu|(?:g.u)"),
        Matcher("resource", "=", "gpu"),
    )
    assert _prefilter([a, b, c]) == (Matcher("resource", "=", "gpu"),)
    plan = make_plan(slos())
    assert len({b.metric for b in plan.batches}) == len(plan.batches) - 1  # the gauge twice


_label = st.sampled_from(["a", "b", "c"])
_value = st.sampled_from(["x", "y", "x.y", "", "z"])
_matcher = st.builds(
    Matcher,
    _label,
    st.sampled_from(["=", "!=", "=~", "!~"]),
    st.sampled_from(["x", "y", "x.y", "x|z", ".*", ""]),
)


@given(
    st.lists(
        st.lists(_matcher, max_size=3).map(lambda ms: Selector("m", tuple(ms))),
        min_size=1,
        max_size=4,
    ),
    st.dictionaries(_label, _value),
)
def test_prefilter_never_drops_a_series_a_selector_wants(
    sels: list[Selector], labels: Mapping[str, str]
) -> None:
    pre = Selector("m", _prefilter(sels))
    if any(s.matches(labels) for s in sels):
        assert pre.matches(labels)
