"""VictoriaMetrics as the rule engine: the rules of `hpcobs-slo rules --engine victoriametrics`,
evaluated by vmalert in `-replay` and live, agree with `hpcobs-slo report` run against the same
VictoriaMetrics (through its `/prometheus` path prefix, as vmselect serves the API per tenant).

Synthetic Slurm job counters (uneven traffic, a burn of system failures, an exporter restart
that resets every counter) are imported into a private VictoriaMetrics; the report's figures
come from the evaluator (`Evaluator`, what `report` and `serve` run) and once from the CLI.

The tolerance, and why it is this tight. Both sides count events with MetricsQL's `increase()`
on the same samples. It does not extrapolate: it is the difference between the last samples at
or before the window's two ends (resets counted), so counts over adjacent windows add up
exactly, and the rules' sums of hourly and 5-minute counts equal the report's hourly counts
plus its remainder. What is left is float rounding of sums taken in other orders, ~1e-15
relative; the test allows REL = 1e-9. With that:

- `-replay`: at every multiple of 5 minutes every recorded series (event counts over each
  window, ratios, burn rates, budget remaining, ALERTS) equals the report at that time;
- live: the counts over the raw windows (5m to 6h) equal the report at the evaluation time T;
  the 1d, 3d and period counts, which sum recorded 5-minute counts picked every 5 minutes,
  equal the report at the last 5-minute mark before T; a series that reads another rule's
  result (ratios, burn rates, alerts read the recorded counts) may see that of the previous
  evaluation or the one before, because vmalert writes results by remote write after the
  evaluation: the report at T, T - interval or T - 2 × interval, each to REL.

How far this is from Prometheus on the same data (extrapolation, the step before the window)
is in docs/slo.md, "VictoriaMetrics".

Time: the replay (about 35 s, mostly vmalert pausing between rules) starts in the background
when the module does, and the live test (about 35 s) runs meanwhile; the module takes ~45 s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcobs.slo.cli import main
from hpcobs.slo.evaluator import Evaluator, SLOResult
from hpcobs.slo.loader import load_specs
from hpcobs.slo.model import PAGE, SHORT_WINDOWS, SLO, TICKET, AlertDef, burn_state
from hpcobs.slo.promapi import ClientConfig, PrometheusClient
from hpcobs.slo.rules import BAD, RATIO, TILED_WINDOWS, TOTAL, period_window_name

from harness.servers import WebhookReceiver, _Registry
from harness.victoriametrics import Replay, ReplayResult, VictoriaMetrics, VMAlert

pytestmark = pytest.mark.real

SPEC = Path(__file__).resolve().parent.parent / "data" / "slo" / "victoriametrics.spec.yaml"
REL = 1e-9  # float rounding of sums in other orders (see the module docstring)
ABS = 1e-9  # for values that are 0 on one side
MINUTE, HOUR = 60, 3600
MARK = 300  # the rules pick recorded 5-minute counts at multiples of 5 minutes
LIVE_INTERVAL = 5  # seconds: vmalert's live evaluation interval here
STEP, OFFSET = 30, 7  # samples every 30 s, 7 s after whole minutes, as real scrapes are offset
QUIET = 0.005  # the share of jobs that fail because of the system, outside burns


def utc(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp())  # type: ignore[misc]


# -- servers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def victoriametrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """One VictoriaMetrics for the module: the replay's data (2025) and the live test's (now)
    lie far apart in time, so they never meet in a query."""
    vm = VictoriaMetrics(tmp_path_factory.mktemp("victoria-metrics"))
    try:
        vm.start()
        yield vm
    finally:
        vm.stop()


# -- synthetic data --------------------------------------------------------------------------
@dataclass(frozen=True)
class Burn:
    start: float
    end: float
    rate: float  # share of jobs failing because of the system


def counters(start: int, end: int, burns: Sequence[Burn] = (), reset_at: int | None = None) -> str:
    """Job outcome counters of partitions cpu and gpu, one sample every STEP s in [start, end)
    (OFFSET s after the minute), in Prometheus text with millisecond timestamps. System
    failures are QUIET of the jobs, or a burn's rate inside it; at `reset_at` every counter
    restarts from zero, as after an exporter restart. Counters start high, as on a long-
    running exporter (MetricsQL takes a small first sample for an increase from 0)."""
    rng = random.Random(15)
    value = {
        (p, state): base
        for p in ("cpu", "gpu")
        for state, base in (("completed", 250000.0), ("failed", 8000.0), ("node_fail", 1500.0))
    }
    cause = {"completed": "none", "failed": "user", "node_fail": "system"}
    lines = []
    for t in range(start + OFFSET, end, STEP):
        reset = reset_at is not None and t - STEP < reset_at <= t
        for p, per_step in (("cpu", 10.0), ("gpu", 1.5)):
            jobs = rng.uniform(0.5, 1.5) * per_step
            rate = next((b.rate for b in burns if b.start <= t < b.end), QUIET)
            for state, inc in (
                ("completed", jobs * (0.97 - rate)),
                ("failed", jobs * 0.03),
                ("node_fail", jobs * rate),
            ):
                v = 0.0 if reset else value[(p, state)]
                v = value[(p, state)] = round(v + inc, 3)
                labels = f'partition="{p}",state="{state}",cause="{cause[state]}"'
                lines.append(f"hpcobs_slurm_jobs_finished_total{{{labels}}} {v!r} {t * 1000}")
    return "\n".join(lines) + "\n"


# -- rules -----------------------------------------------------------------------------------
def generate_rules(tmp_path: Path, name: str, interval: str) -> list[dict[str, Any]]:
    """`hpcobs-slo rules --engine victoriametrics` on SPEC: its groups (one per SLO)."""
    out = tmp_path / f"{name}.rules.yml"
    args = ["rules", str(SPEC), "-o", str(out), "--engine", "victoriametrics"]
    assert main([*args, "--rules.interval", interval]) == 0
    groups: list[dict[str, Any]] = yaml.safe_load(out.read_text())["groups"]
    assert [g["name"] for g in groups] == [f"hpcobs-slo-{s.id}" for s in SLOS]
    return groups


def write_groups(path: Path, groups: Iterable[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": list(groups)}, sort_keys=False))
    return path


SLOS: tuple[SLO, ...] = load_specs([SPEC]).slos


# -- what VictoriaMetrics holds --------------------------------------------------------------
@dataclass
class Recorded:
    """Recorded series (rule name, slo) → {timestamp: value}; firing ALERTS (alertname, slo) →
    timestamps."""

    series: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    firing: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def at(self, name: str, slo: str, t: int) -> float | None:
        return self.series.get((name, slo), {}).get(t)

    def times(self, name: str, slo: str) -> list[int]:
        return sorted(self.series.get((name, slo), {}))


def recorded(vm: VictoriaMetrics, start: float, end: float, align: int = 1) -> Recorded:
    """The recorded series and firing alerts in [start, end]. Live, vmalert stamps ALERTS with
    the time it evaluated (recording rules with the aligned time): `align` floors them to the
    evaluation interval."""
    out = Recorded()
    series: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    firing: dict[tuple[str, str], set[int]] = defaultdict(set)
    for item in vm.export('{__name__=~"slo:.+|ALERTS"}', start, end):
        labels = item["metric"]
        stamps = [round(ms / 1000) for ms in item["timestamps"]]
        if labels["__name__"] == "ALERTS":
            if labels.get("alertstate") == "firing":
                firing[(labels["alertname"], labels["slo"])].update(
                    s // align * align for s in stamps
                )
        else:
            # one series may come in several blocks
            series[(labels["__name__"], labels["slo"])].update(
                zip(stamps, item["values"], strict=True)
            )
    out.series, out.firing = dict(series), dict(firing)
    return out


# -- what the report says --------------------------------------------------------------------
Expected = dict[str, float | None]


def expected(slo: SLO, raw: SLOResult, tiled: SLOResult) -> tuple[Expected, dict[str, bool]]:
    """What each recorded series of `slo` should read, and which alerts should fire, from the
    report: `raw` for the raw windows (5m to 6h), `tiled` for the 1d, 3d and period windows
    (the report at the last 5-minute mark, whose counts the rules sum)."""
    budget = float(slo.error_budget)
    out: Expected = {}
    ratios: dict[str, float | None] = {}
    totals: dict[str, float] = {}
    for w in (*(s.name for s in SHORT_WINDOWS), slo.period.name):
        source = tiled if w in TILED_WINDOWS or w == slo.period.name else raw
        window = source.windows[w]
        suffix = period_window_name(slo.period) if w == slo.period.name else w
        out[BAD + suffix] = window.bad
        out[TOTAL + suffix] = window.total
        out[RATIO + suffix] = ratios[w] = window.error_ratio
        totals[w] = window.total
    out["slo:current_burn_rate:ratio"] = raw.burn_rate("5m")
    out["slo:period_burn_rate:ratio"] = tiled.burn_rate(slo.period.name)
    out["slo:period_error_budget_remaining:ratio"] = tiled.error_budget_remaining
    out["slo:objective:ratio"] = float(slo.objective)
    out["slo:error_budget:ratio"] = budget
    fires = {
        alert.alert: burn_state(_only(slo, alert), ratios, totals) is not None
        for alert in slo.alert_defs()
    }
    return out, fires


def _only(slo: SLO, alert: AlertDef) -> SLO:
    """`slo` with only `alert` enabled (burn_state reports the first alert that holds)."""
    alerting = dataclasses.replace(slo.alerting, page=alert is PAGE, ticket=alert is TICKET)
    return dataclasses.replace(slo, alerting=alerting)


def close(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return math.isclose(got, want, rel_tol=REL, abs_tol=ABS)


def evaluator(vm: VictoriaMetrics) -> Evaluator:
    # through the /prometheus prefix, as a vmselect URL (…/select/0/prometheus) has one
    return Evaluator(SLOS, PrometheusClient(ClientConfig(vm.prometheus_url)))


class Report:
    """The evaluator's results by time (each time evaluated once)."""

    def __init__(self, vm: VictoriaMetrics) -> None:
        self.evaluator = evaluator(vm)
        self._cache: dict[int, dict[str, SLOResult]] = {}

    def __call__(self, t: int) -> dict[str, SLOResult]:
        if t not in self._cache:
            evaluation = self.evaluator.evaluate(t)
            assert evaluation.success, [r.error for r in evaluation.results]
            self._cache[t] = {r.slo.id: r for r in evaluation.results}
        return self._cache[t]


def mark(t: int) -> int:
    return t // MARK * MARK


# -- vmalert -replay -------------------------------------------------------------------------
MONTH_END = (utc(2025, 2, 28, 16), utc(2025, 3, 1, 4))


@dataclass
class MonthEnd:
    """The replays of twelve hours across a month's end, running in the background."""

    replays: list[Replay]
    results: list[ReplayResult] | None = None

    def wait(self) -> list[ReplayResult]:
        if self.results is None:
            self.results = [r.wait(timeout=240) for r in self.replays]
        return self.results


@pytest.fixture(scope="module", autouse=True)
def month_end(
    victoriametrics: VictoriaMetrics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MonthEnd]:
    """Started before the module's tests, so that the live test runs while this replays
    (a replay mostly sleeps: it pauses -replay.rulesDelay after each rule, so one group of
    32 rules takes about 35 s however short the range). One vmalert per group (SLO), side
    by side, with the flags docs/slo.md gives."""
    vm = victoriametrics
    tmp = tmp_path_factory.mktemp("month-end")
    start, end = MONTH_END
    burns = [Burn(utc(2025, 2, 28, 23), utc(2025, 3, 1, 0, 30), 0.25)]
    vm.import_prometheus(counters(start, end + 10 * MINUTE, burns, utc(2025, 3, 1, 2, 7, 30)))
    replays: list[Replay] = []
    try:
        for i, group in enumerate(generate_rules(tmp, "replay", "1m")):
            rules = write_groups(tmp / f"replay-{i}.yml", [group])
            log = tmp / f"replay-{i}.log"
            replays.append(
                Replay([rules], vm.url, start, end, log, rules_delay="1s", flush_interval="1s")
            )
        yield MonthEnd(replays)
    finally:
        for r in replays:
            r.stop()


def compare(
    rec: Recorded,
    slo: SLO,
    t: int,
    want: Expected,
    fires: Mapping[str, bool],
    *,
    lagging: Callable[[str], Sequence[tuple[Expected, Mapping[str, bool]]]] | None = None,
) -> list[str]:
    """Differences between the recorded series at `t` and `want`, `fires`. With `lagging`,
    a series that reads other rules' results may instead match one of the expectations it
    returns (those of earlier evaluations)."""
    problems = []
    for name, value in want.items():
        got = rec.at(name, slo.id, t)
        if close(got, value):
            continue
        if lagging is not None and any(close(got, w[name]) for w, _ in lagging(name)):
            continue
        problems.append(f"{slo.id} {name} at {iso(t)}: recorded {got}, report {value}")
    for alert, should in fires.items():
        got_fires = t in rec.firing.get((alert, slo.id), set())
        if got_fires == should:
            continue
        if lagging is not None and any(f[alert] == got_fires for _, f in lagging("ALERTS")):
            continue
        problems.append(f"{slo.id} {alert} at {iso(t)}: firing {got_fires}, report {should}")
    return problems


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def report_json(url: str, t: int) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(
            ["report", "--prometheus.url", url, "--format", "json", "--time", str(t), str(SPEC)]
        )
    assert rc == 0, out.getvalue()
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


# -- vmalert live ----------------------------------------------------------------------------
def test_live_vmalert_agrees_with_the_report(
    victoriametrics: VictoriaMetrics,
    webhook_receiver: WebhookReceiver,
    _servers: _Registry,
    tmp_path: Path,
) -> None:
    """vmalert evaluating the rules every 5 s on counters that run into the next minutes, a
    burn in the last 40 minutes; the hourly and 5-minute counts of the hours before come from
    a replay of just the rules that record them (they read only the raw counters, so no
    rulesDelay), started once live evaluation has begun so that no 5-minute mark is missing."""
    vm = victoriametrics
    now = int(time.time())
    start = now // HOUR * HOUR - 2 * HOUR
    burns = [Burn(now - 40 * MINUTE, now + 10 * MINUTE, 0.35)]
    vm.import_prometheus(counters(start, now + 10 * MINUTE, burns))
    live = write_groups(
        tmp_path / "live.yml", generate_rules(tmp_path, "live", f"{LIVE_INTERVAL}s")
    )
    tile_names = {n + w for n in (BAD, TOTAL) for w in ("5m", "1h")}
    tiles = [
        {**g, "rules": [r for r in g["rules"] if r.get("record") in tile_names]}
        for g in generate_rules(tmp_path, "tiles", "1m")
    ]
    assert all(len(g["rules"]) == 4 for g in tiles)

    vmalert = VMAlert(
        _servers.workdir("vmalert"),
        [live],
        vm.url,
        f"http://127.0.0.1:{webhook_receiver.port}",
        interval=f"{LIVE_INTERVAL}s",
    )
    _servers.start(vmalert, True)
    first = first_evaluations(vmalert, timeout=30)

    # the tiles of each group up to its first live evaluation (at that time both write the
    # same values: these rules read only the raw counters)
    replays = [
        Replay(
            [write_groups(tmp_path / f"tiles-{i}.yml", [g])],
            vm.url,
            start,
            first[g["name"]],
            tmp_path / f"tiles-{i}.log",
            rules_delay="0s",
        )
        for i, g in enumerate(tiles)
    ]
    try:
        results = [r.wait(timeout=120) for r in replays]
    finally:
        for r in replays:
            r.stop()
    for result in results:
        assert result.returncode == 0, result.output[-4000:]
    vm.flush()
    vm.reset_cache()
    settled = time.time() + 2

    # Live evaluations to compare: after the replay (two intervals, for chained reads), at
    # least four intervals after a 5-minute mark (the mark's counts are searchable by then,
    # also to rules reading them an evaluation or two late).
    iv = LIVE_INTERVAL

    def eligible(t: int) -> bool:
        return t - 2 * iv >= settled and t - mark(t) >= 4 * iv

    def ready() -> list[int]:
        vm.flush()
        rec = recorded(vm, settled, time.time() + MINUTE)
        times = set.intersection(
            *(set(rec.times("slo:period_burn_rate:ratio", s.id)) for s in SLOS)
        )
        # and a later evaluation seen: all of this one's results were sent (vmalert sends
        # them every -remoteWrite.flushInterval, 1 s here, an evaluation every 5 s)
        return sorted(t for t in times if eligible(t) and t + iv <= max(times))

    compare_at = wait_until(lambda: ready()[-2:] or None, want=2, timeout=90)
    vm.flush()
    rec = recorded(vm, start, time.time() + MINUTE, align=iv)

    report = Report(vm)
    problems = []
    for t in compare_at:
        for slo in SLOS:
            want, fires = expected(slo, report(t)[slo.id], report(mark(t))[slo.id])

            def earlier(
                name: str, t: int = t, slo: SLO = slo
            ) -> list[tuple[Expected, Mapping[str, bool]]]:
                return [
                    expected(slo, report(t - k * iv)[slo.id], report(mark(t))[slo.id])
                    for k in (1, 2)
                ]

            problems += compare(rec, slo, t, want, fires, lagging=earlier)
    assert not problems, f"{len(problems)} differences, first: " + "\n".join(problems[:25])

    # the burn pages for `jobs` (objective 99 %) and tickets `jobs-month` (98 %), live
    last = compare_at[-1]
    assert last in rec.firing.get((PAGE.alert, "jobs"), set())
    assert last in rec.firing.get((TICKET.alert, "jobs-month"), set())
    assert last not in rec.firing.get((PAGE.alert, "jobs-month"), set())
    payload = webhook_receiver.wait_for(
        lambda p: any(
            a.get("labels", {}).get("alertname") == PAGE.alert
            and a.get("labels", {}).get("slo") == "jobs"
            for a in (p.get("_raw") if isinstance(p.get("_raw"), list) else p.get("alerts", []))
        ),
        timeout=30,
    )
    assert payload


def first_evaluations(vmalert: VMAlert, timeout: float) -> dict[str, int]:
    """Group name → the timestamp of its first live evaluation (vmalert aligns evaluation
    times to the interval), watched from the start."""
    first: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for group in vmalert.groups():
            when = min(
                (_parse_time(r.get("lastEvaluation", "")) for r in group["rules"]), default=0.0
            )
            if when > 0 and group["name"] not in first:
                first[group["name"]] = int(when) // LIVE_INTERVAL * LIVE_INTERVAL
        if len(first) == len(SLOS):
            return first
        time.sleep(0.05)
    raise AssertionError(f"vmalert evaluated only {first} within {timeout} s")


def _parse_time(text: str) -> float:
    if not text or text.startswith("0001-"):
        return 0.0
    head, _, rest = text.rstrip("Z").partition(".")
    when = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp()
    digits = "".join(c for c in rest if c.isdigit())
    return when + (float("0." + digits) if digits else 0.0)


def wait_until(probe: Callable[[], list[int] | None], want: int, timeout: float) -> list[int]:
    """Poll `probe` until it returns `want` times."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None and len(got) >= want:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready within {timeout} s")
        time.sleep(0.5)


def test_replay_agrees_with_the_report(
    victoriametrics: VictoriaMetrics, month_end: MonthEnd
) -> None:
    """Twelve hours across a month's end (February 28, 16:00 to March 1, 04:00 UTC), replayed;
    every recorded series at every 5-minute mark equals the report's figure at that time."""
    vm = victoriametrics
    start, end = MONTH_END
    for result in month_end.wait():
        assert result.returncode == 0, result.output[-4000:]
    vm.flush()
    vm.reset_cache()
    rec = recorded(vm, start, end)

    report = Report(vm)
    problems: list[str] = []
    for t in range(start + MARK, end + 1, MARK):
        results_at = report(t)
        for slo in SLOS:
            r = results_at[slo.id]
            want, fires = expected(slo, r, r)
            problems += compare(rec, slo, t, want, fires)
    assert not problems, f"{len(problems)} differences, first: " + "\n".join(problems[:25])

    # what the data exercise: a page during the burn, on both sides of the month's end;
    # the calendar month restarting on March 1 while the 30 days go on
    page = {slo.id: rec.firing.get((PAGE.alert, slo.id), set()) for slo in SLOS}
    assert min(page["jobs"]) < utc(2025, 3, 1) < max(page["jobs"]), sorted(page["jobs"])
    assert not any(t < utc(2025, 2, 28, 23) for t in page["jobs"])
    march = utc(2025, 3, 1, 0, 5)
    month_total = rec.at(TOTAL + "_month", "jobs-month", march)
    days_total = rec.at(TOTAL + "30d", "jobs", march)
    assert month_total is not None and days_total is not None
    assert 0 < month_total < days_total / 10
    assert rec.at("slo:time_period:days", "jobs-month", utc(2025, 2, 28, 20)) == 28
    assert rec.at("slo:time_period:days", "jobs-month", march) == 31

    # `hpcobs-slo report` itself, through the prefix, once: the same figures as the rules
    t = utc(2025, 3, 1, 0, 15)
    doc = report_json(vm.prometheus_url, t)
    for item in doc["slos"]:
        slo = next(s for s in SLOS if s.id == item["id"])
        got = rec.at("slo:period_burn_rate:ratio", slo.id, t)
        assert close(got, item["windows"][slo.period.name]["burn_rate"]), (slo.id, got, item)
        got = rec.at("slo:period_error_budget_remaining:ratio", slo.id, t)
        assert close(got, item["error_budget_remaining"]), (slo.id, got, item)
        got = rec.at(RATIO + "1h", slo.id, t)
        assert close(got, item["windows"]["1h"]["error_ratio"]), (slo.id, got, item)
