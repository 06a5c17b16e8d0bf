"""`hpcobs-slo serve` against a real Prometheus holding 31 days of backfilled counters.

The test generates Slurm-exporter-like counters (uneven traffic, a burn in the last hours,
a bad GPU day, an exporter restart resetting every counter), backfills them with
`promtool tsdb create-blocks-from openmetrics`, runs the daemon as a subprocess, and checks
its SLIs, burn rates and error budgets against values it computes itself from the generated
samples (to 1e-6). Then it kills Prometheus: the daemon must stay up and report stale, with
no SLI at all rather than a wrong one.

Why the comparison is exact: every series shares one sample grid (10 minutes, then 1
minute for the last day), offset by 7 s from whole minutes as real scrapes are offset from
the evaluations, so no sample lies on the edge of an hourly tile or of the rest of the
period, and Prometheus 2 (closed ranges) and 3 (left-open ranges) select the same samples.
`increase()` over any window is then the increase between the first and last samples inside,
extrapolated towards the window's edges by a factor that is the same for every series (one
grid; counters start high, so no series is extrapolated to zero) and that
`Data.extrapolation()` computes from the grid, as Prometheus documents it:
- over a short window the factor cancels in bad / total;
- a period window sums hourly tiles (each extrapolated: 60/50 on the 10-minute grid, 60/59
  on the 1-minute one) and the rest of the period, from the last whole hour to the
  evaluation time; `expected_period()` adds them up the same way.
Were a sample on a window's start after all (the evaluation time is arbitrary), `Data`
selects it or not as the running Prometheus' version does.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import PrometheusFactory, backfill, free_port, prometheus_version

pytestmark = pytest.mark.real

SPEC = Path(__file__).resolve().parent.parent / "data" / "slo" / "real.spec.yaml"
DAY, HOUR = 86400, 3600
OFFSET = 7  # seconds from whole minutes to the samples, as real scrapes are offset
SHORT = {"5m": 300, "30m": 1800, "1h": 3600, "2h": 7200, "6h": 21600, "1d": 86400, "3d": 259200}
Key = tuple[str, tuple[tuple[str, str], ...]]


# -- synthetic data ------------------------------------------------------------------------
@dataclass
class Data:
    times: list[int]
    series: dict[Key, list[float]] = field(default_factory=dict)
    left_open: bool = False
    """Prometheus 3: a range selector leaves out a sample on the window's start."""
    _increments: dict[Key, list[float]] = field(default_factory=dict)

    def add(self, name: str, labels: dict[str, str], values: list[float]) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.series[key] = values
        # the running sum of sample-to-sample increments, resets included (a drop counts
        # the new value)
        running, total = [0.0], 0.0
        for prev, v in itertools.pairwise(values):
            total += v if v < prev else v - prev
            running.append(total)
        self._increments[key] = running

    def inside(self, start: float, end: float) -> tuple[int, int]:
        """Indices [lo, hi) of the samples a range selector over [start, end] (Prometheus 2)
        or (start, end] (Prometheus 3) selects."""
        lo = (bisect.bisect_right if self.left_open else bisect.bisect_left)(self.times, start)
        return lo, bisect.bisect_right(self.times, end)

    def openmetrics(self) -> str:
        out = []
        for name in sorted({k[0] for k in self.series}):
            family = name.removesuffix("_total")
            for suffix in ("_bucket", "_count"):
                family = family.removesuffix(suffix)
            kind = "histogram" if name.endswith(("_bucket", "_count")) else "counter"
            out.append(f"# TYPE {family} {kind}")
            for (n, labels), values in self.series.items():
                if n != name:
                    continue
                text = ",".join(f'{k}="{v}"' for k, v in labels)
                out.extend(
                    f"{n}{{{text}}} {v!r} {t}" for t, v in zip(self.times, values, strict=True)
                )
        out.append("# EOF")
        return "\n".join(out) + "\n"

    def increase(
        self, name: str, match: Callable[[dict[str, str]], bool], start: float, end: float
    ) -> float:
        """Counter increase between the first and last samples in the window, resets
        included: the sum of sample-to-sample increments (a drop counts the new value)."""
        lo, hi = self.inside(start, end)
        if hi - lo < 2:
            return 0.0
        total = 0.0
        for (n, labels), running in self._increments.items():
            if n == name and match(dict(labels)):
                total += running[hi - 1] - running[lo]
        return total

    def extrapolation(self, start: float, end: float) -> float:
        """The factor by which `increase()` over the window stretches the increase between
        the first and last samples inside (the same for every series here: one sample grid,
        counters far from zero): towards each edge by the distance to it when that is under
        1.1 × the mean sample interval, else by half an interval. 0: fewer than 2 samples,
        no result."""
        lo, hi = self.inside(start, end)
        if hi - lo < 2:
            return 0.0
        first, last = self.times[lo], self.times[hi - 1]
        sampled = last - first
        mean = sampled / (hi - lo - 1)
        stretch: float = sampled
        for gap in (first - start, end - last):
            stretch += gap if gap < 1.1 * mean else mean / 2
        return stretch / sampled


def generate(now: float) -> Data:
    rng = random.Random(7)
    t0 = int((now - 31 * DAY) // HOUR * HOUR) + OFFSET
    fine = int((now - DAY) // HOUR * HOUR) + OFFSET
    end = int((now - 30) // 60 * 60) + OFFSET
    times = list(range(t0, fine, 600)) + list(range(fine, end + 1, 60))
    reset_at = t0 + 20 * DAY + 7 * 600  # the exporter restarts: every counter drops
    data = Data(times)
    cols: dict[Key, list[float]] = {}

    def counter(name: str, **labels: str) -> list[float]:
        return cols.setdefault((name, tuple(sorted(labels.items()))), [])

    for i, t in enumerate(times):
        step = times[i] - times[i - 1] if i else 600
        busy = 3.0 if (t // DAY) % 7 < 5 else 0.4  # weekdays busy, weekends quiet
        for p, jobs_per_min in (("cpu", 40.0), ("gpu", 6.0)):
            jobs = rng.uniform(0.7, 1.3) * jobs_per_min * busy * step / 60
            sys_rate = 0.004
            if p == "cpu" and t > end - 3 * HOUR:
                sys_rate = 0.08  # a burn right now
            if p == "gpu" and end - 6 * DAY < t < end - 5 * DAY:
                sys_rate = 0.05  # a bad day
            inc = {
                ("hpcobs_slurm_jobs_finished_total", "completed", "none"): jobs * (0.97 - sys_rate),
                ("hpcobs_slurm_jobs_finished_total", "failed", "user"): jobs * 0.03,
                ("hpcobs_slurm_jobs_finished_total", "node_fail", "system"): jobs * sys_rate,
            }
            for (name, state, cause), v in inc.items():
                _bump(
                    counter(name, partition=p, state=state, cause=cause), round(v, 3), t == reset_at
                )
            late = 0.02 if p == "cpu" else (0.15 if t > end - 2 * DAY else 0.05)
            fast, ok = jobs * 0.7, jobs * (0.98 - late)
            stuck = jobs * late * 0.5  # still pending, already late
            for le, v in (("600.0", fast), ("3600.0", ok), ("+Inf", jobs)):
                _bump(
                    counter("hpcobs_slurm_job_queue_wait_seconds_bucket", partition=p, le=le),
                    round(v, 3),
                    t == reset_at,
                )
            _bump(
                counter("hpcobs_slurm_job_queue_wait_seconds_count", partition=p),
                round(jobs, 3),
                t == reset_at,
            )
            _bump(
                counter("hpcobs_slurm_jobs_wait_exceeded_total", partition=p, threshold="3600"),
                round(jobs - ok + stuck, 3),
                t == reset_at,
            )
            if p == "gpu":
                gpu_seconds = jobs * 8 * 5400
                lost = (
                    gpu_seconds * sys_rate * (6.0 if rng.random() < 0.02 else 1.0)
                )  # big jobs fail too
                for state, v in (("completed", gpu_seconds - lost), ("node_fail", lost)):
                    for resource, scale in (("gpu", 1.0), ("cpu", 16.0)):
                        _bump(
                            counter(
                                "hpcobs_slurm_job_resource_seconds_total",
                                partition=p,
                                state=state,
                                resource=resource,
                            ),
                            round(v * scale, 1),
                            t == reset_at,
                        )
    for (name, labels), vals in cols.items():
        data.add(name, dict(labels), vals)
    return data


def _bump(column: list[float], inc: float, reset: bool) -> None:
    # Counters start high (a long-running exporter), so no window starts near zero; a reset
    # restarts them low, as a restarted exporter's first scrape would show.
    current = column[-1] if column else 1e6
    column.append(inc + 1.0 if reset else current + inc)


# -- the daemon ----------------------------------------------------------------------------
def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], str]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        log = open(tmp_path / f"daemon-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpcobs.slo.cli",
                "serve",
                f"--web.listen-address=127.0.0.1:{port}",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}/metrics"

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_metrics(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    pred: Callable[[dict], bool],
    timeout: float = 60,
) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            last = scrape(url)
        except OSError:
            last = {}
        if last and pred(last):
            return last
        time.sleep(0.2)
    pytest.fail(
        f"condition not met within {timeout}s; last metrics: {sorted(last)[:20]}\nlog:\n{log.read_text()[-3000:]}"
    )


# -- what each SLO counts (written independently of the code under test) --------------------
JOBS = "hpcobs_slurm_jobs_finished_total"


def expected_events(data: Data, slo: str, start: float, end: float) -> tuple[float, float]:
    """(bad, total) of an SLO between the first and last samples in the window (not
    extrapolated), from the generated samples."""
    if slo.startswith("job-success-"):
        p = slo.removeprefix("job-success-")
        bad = data.increase(
            JOBS, lambda lab: lab["partition"] == p and lab["cause"] == "system", start, end
        )
        return bad, data.increase(JOBS, lambda lab: lab["partition"] == p, start, end)
    if slo.startswith("queue-wait-"):
        p = slo.removeprefix("queue-wait-")
        good = data.increase(
            "hpcobs_slurm_job_queue_wait_seconds_bucket",
            lambda lab: lab["partition"] == p and lab["le"] == "3600.0",
            start,
            end,
        )
        bad = data.increase(
            "hpcobs_slurm_jobs_wait_exceeded_total", lambda lab: lab["partition"] == p, start, end
        )
        return bad, good + bad
    if slo == "gpu-hours-lost":
        res = "hpcobs_slurm_job_resource_seconds_total"
        bad = data.increase(
            res, lambda lab: lab["resource"] == "gpu" and lab["state"] == "node_fail", start, end
        )
        return bad, data.increase(res, lambda lab: lab["resource"] == "gpu", start, end)
    assert slo == "jobs-month"
    total = data.increase(JOBS, lambda lab: True, start, end)
    good = data.increase(JOBS, lambda lab: lab["cause"] != "system", start, end)
    return total - good, total


def expected_increase(data: Data, slo: str, start: float, end: float) -> tuple[float, float]:
    """(bad, total) of an SLO over the window as Prometheus' `increase()` counts them."""
    factor = data.extrapolation(start, end)
    bad, total = expected_events(data, slo, start, end)
    return factor * bad, factor * total


def expected_period(
    data: Data, slo: str, start: float, tiles_end: float, at: float
) -> tuple[float, float]:
    """(bad, total) of a period window: the hourly tiles (h - 1h, h] of the whole hours up to
    `tiles_end`, then the rest (tiles_end, at], each as `increase()` counts it."""
    bad = total = 0.0
    for hour in range(int(start) + HOUR, int(tiles_end) + 1, HOUR):
        tile_bad, tile_total = expected_increase(data, slo, hour - HOUR, hour)
        bad, total = bad + tile_bad, total + tile_total
    rest_bad, rest_total = expected_increase(data, slo, tiles_end, at)
    return bad + rest_bad, total + rest_total


OBJECTIVES = {
    "job-success-cpu": 0.99,
    "job-success-gpu": 0.99,
    "queue-wait-cpu": 0.95,
    "queue-wait-gpu": 0.95,
    "gpu-hours-lost": 0.995,
    "jobs-month": 0.98,
}


def period_start(slo: str, end: float) -> tuple[str, float]:
    if slo == "jobs-month":
        d = dt.datetime.fromtimestamp(end, dt.UTC)
        return "month", calendar.timegm((d.year, d.month, 1, 0, 0, 0))
    return "30d", end - 30 * DAY


def check_validate_online(url: str, tmp_path: Path) -> None:
    """`validate --prometheus.url`: thresholds against the server's buckets and counters."""
    cli = [sys.executable, "-m", "hpcobs.slo.cli", "validate", f"--prometheus.url={url}"]
    done = subprocess.run([*cli, str(SPEC)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "thresholds.yaml"
    bad.write_text(
        "version: hpcobs.slo/v1\nservice: slurm\nslos:\n"
        "  - id: no-bucket\n    objective: 95\n    sli:\n      latency:\n"
        "        histogram: hpcobs_slurm_job_queue_wait_seconds\n        threshold: 7200\n"
        "  - id: not-counted\n    objective: 95\n    sli:\n      latency:\n"
        "        histogram: hpcobs_slurm_job_queue_wait_seconds\n        threshold: 600\n"
        "        exceeded: hpcobs_slurm_jobs_wait_exceeded_total\n"
    )
    done = subprocess.run([*cli, str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    # the generated histogram has the bounds 600, 3600 and +Inf; exceeded counts 3600 only
    assert f"{bad}:4: error: SLO 'no-bucket': threshold 7200 is not a bucket bound" in done.stderr
    assert "(bounds: 600, 3600, +Inf)" in done.stderr
    assert (
        f"{bad}:10: error: SLO 'not-counted': hpcobs_slurm_jobs_wait_exceeded_total is counted for thresholds 3600, not 600"
        in done.stderr
    )


def check_report(data: Data, url: str, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "hpcobs.slo.cli", "report", f"--prometheus.url={url}"]
    out = tmp_path / "report.json"
    done = subprocess.run(
        [*cli, "--format=json", "--query.settle-time=0s", "-o", str(out), str(SPEC)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert {s["id"] for s in doc["slos"]} == set(OBJECTIVES)
    assert doc["period_end"] == math.floor(doc["time"] / HOUR) * HOUR
    for item in doc["slos"]:
        w = item["windows"]["1h"]
        bad, total = expected_events(data, item["id"], w["start"], w["end"])
        assert w["sli"] == pytest.approx(1 - bad / total, abs=1e-6), item["id"]
        w = item["windows"][item["period"]]
        assert w["end"] == doc["time"]
        bad, total = expected_period(data, item["id"], w["start"], doc["period_end"], w["end"])
        assert w["sli"] == pytest.approx(1 - bad / total, abs=1e-6), item["id"]
        assert w["total"] == pytest.approx(total, rel=1e-9), item["id"]
    page = tmp_path / "report.html"
    done = subprocess.run(
        [*cli, "--format=html", "-o", str(page), str(SPEC)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert page.read_text().count("<svg") == len(OBJECTIVES)


def test_daemon_matches_independent_computation_and_survives_prometheus_death(
    tmp_path: Path,
    prometheus_factory: PrometheusFactory,
    daemon_factory: Callable[..., tuple[subprocess.Popen[bytes], str]],
) -> None:
    data = generate(time.time())
    data.left_open = prometheus_version() >= (3, 0, 0)
    tsdb = tmp_path / "tsdb"
    backfill(data.openmetrics(), tsdb)
    prom = prometheus_factory(tsdb_path=tsdb)
    proc, url = daemon_factory(
        f"--prometheus.url={prom.url}",
        "--eval-interval=1s",
        "--query.settle-time=0s",
        "--query.retries=1",
        "--query.retry-backoff=100ms",
        "--query.timeout=10s",
        str(SPEC),
    )
    log = next(tmp_path.glob("daemon-*.log"))
    m = wait_metrics(url, proc, log, lambda m: value(m, "hpcobs_slo_evaluation_success") == 1.0)

    at = value(m, "hpcobs_slo_evaluation_timestamp_seconds")
    period_end = value(m, "hpcobs_slo_period_end_timestamp_seconds")
    assert at is not None and period_end is not None
    assert period_end == math.floor(at / HOUR) * HOUR
    assert value(m, "hpcobs_slo_evaluation_queries") is not None
    checked = 0
    for slo, objective in OBJECTIVES.items():
        budget = 1 - objective
        assert value(m, "hpcobs_slo_objective_ratio", slo=slo) == pytest.approx(
            objective, abs=1e-12
        )
        assert value(m, "hpcobs_slo_stale", slo=slo) == 0.0
        name, start = period_start(slo, period_end)
        windows = {w: (at - s, at) for w, s in SHORT.items()} | {name: (start, at)}
        for window, (ws, we) in windows.items():
            if window == name:  # whole hours, then the rest up to the evaluation time
                bad, total = expected_period(data, slo, start, period_end, at)
            else:
                bad, total = expected_events(data, slo, ws, we)
            got_sli = value(m, "hpcobs_slo_sli_ratio", slo=slo, window=window)
            got_burn = value(m, "hpcobs_slo_burn_rate", slo=slo, window=window)
            if total <= 0:
                assert got_sli is None and got_burn is None, (slo, window)
                continue
            ratio = bad / total
            assert got_sli == pytest.approx(1 - ratio, abs=1e-6), (slo, window)
            assert got_burn == pytest.approx(ratio / budget, abs=1e-6), (slo, window)
            got_total = value(m, "hpcobs_slo_events", slo=slo, kind="total", window=window)
            assert got_total is not None
            if window == name:  # period windows: hourly tiles, then the rest
                assert got_total == pytest.approx(total, rel=1e-9), (slo, window)
            else:  # short windows: increase() extrapolates from the first and last
                # samples in the window towards its edges, never beyond them
                lo, hi = data.inside(ws, we)
                stretch = SHORT[window] / (data.times[hi - 1] - data.times[lo])
                assert total * (1 - 1e-9) <= got_total <= total * stretch * (1 + 1e-9), (
                    slo,
                    window,
                )
            checked += 1
        bad, total = expected_period(data, slo, start, period_end, at)
        remaining = value(m, "hpcobs_slo_error_budget_remaining_ratio", slo=slo)
        if total > 0:
            assert remaining == pytest.approx(1 - (bad / total) / budget, abs=1e-6), slo
    assert checked >= 40
    # The data has what the test is about: a burn now, uneven history.
    assert value(m, "hpcobs_slo_burn_rate", slo="job-success-cpu", window="1h") > 5
    assert value(m, "hpcobs_slo_burn_rate", slo="job-success-cpu", window="30d") < 2

    # The report reads the same model through the same evaluator: check it too.
    check_report(data, prom.url, tmp_path)
    check_validate_online(prom.url, tmp_path)

    # Prometheus dies: the daemon stays up, says stale, and reports no SLI at all.
    last_success = value(m, "hpcobs_slo_last_success_timestamp_seconds")
    prom.stop()
    # (an evaluation in flight when Prometheus died may still have computed some SLOs)
    m = wait_metrics(
        url,
        proc,
        log,
        lambda m: (
            value(m, "hpcobs_slo_evaluation_success") == 0.0
            and all(value(m, "hpcobs_slo_stale", slo=slo) == 1.0 for slo in OBJECTIVES)
        ),
        timeout=30,
    )
    assert proc.poll() is None
    for slo in OBJECTIVES:
        assert value(m, "hpcobs_slo_stale", slo=slo) == 1.0
        assert value(m, "hpcobs_slo_objective_ratio", slo=slo) is not None
        assert value(m, "hpcobs_slo_error_budget_remaining_ratio", slo=slo) is None
    for name, _labels in m:
        assert name not in ("hpcobs_slo_sli_ratio", "hpcobs_slo_burn_rate", "hpcobs_slo_events"), (
            name
        )
    stopped_at = value(m, "hpcobs_slo_last_success_timestamp_seconds")
    assert stopped_at is not None and last_success is not None
    assert last_success <= stopped_at < value(m, "hpcobs_slo_evaluation_timestamp_seconds")
    age1 = value(m, "hpcobs_slo_data_age_seconds", slo="job-success-cpu")
    time.sleep(1.2)
    m2 = scrape(url)
    age2 = value(m2, "hpcobs_slo_data_age_seconds", slo="job-success-cpu")
    assert age1 is not None and age2 is not None and age2 > age1 >= 0
    assert value(m2, "hpcobs_slo_evaluations_total", result="failure") >= 1
    assert value(m2, "hpcobs_slo_last_success_timestamp_seconds") == stopped_at
    assert proc.poll() is None


# -- a fake Prometheus: credentials in the URL, and a hang (issue 14, items 5 and 10) -------
class FakePrometheus:
    """The query API on 127.0.0.1 answering empty results; it may require basic auth, fail
    with 503, or hang (hold each request until closed)."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        import base64
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.auth_headers: list[str | None] = []
        self.mode = "ok"  # "ok", "fail" or "hang"
        self.released = threading.Event()
        expected = (
            None if auth is None else "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got = self.headers.get("Authorization")
                fake.auth_headers.append(got)
                if fake.mode == "hang":
                    fake.released.wait(120)
                    return
                if expected is not None and got != expected:
                    status, body = 401, {"status": "error", "error": "unauthorized"}
                elif fake.mode == "fail":
                    status, body = 503, {"status": "error", "error": "overloaded"}
                else:
                    kind = "matrix" if self.path.endswith("query_range") else "vector"
                    status, body = (
                        200,
                        {"status": "success", "data": {"resultType": kind, "result": []}},
                    )
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_daemon_sends_url_credentials_as_basic_auth_and_never_logs_the_password(
    tmp_path: Path, daemon_factory: Callable[..., tuple[subprocess.Popen[bytes], str]]
) -> None:
    """Issue 14.5: `http://user:password@host/` failed ("Name or service not known") and the
    password was logged on every query failure."""
    secret = "pa55:w@rd"  # percent-encoded in the URL
    fake = FakePrometheus(auth=("slo", secret))
    try:
        proc, url = daemon_factory(
            f"--prometheus.url=http://slo:pa55%3Aw%40rd@127.0.0.1:{fake.port}/",
            "--eval-interval=1s",
            "--query.retries=0",
            "--log.level=debug",
            str(SPEC),
        )
        log = next(tmp_path.glob("daemon-*.log"))
        wait_metrics(url, proc, log, lambda m: value(m, "hpcobs_slo_evaluation_success") == 1.0)
        assert fake.auth_headers and all(h and h.startswith("Basic ") for h in fake.auth_headers)
        fake.mode = "fail"  # every query fails now, and is logged
        wait_metrics(url, proc, log, lambda m: value(m, "hpcobs_slo_evaluation_success") == 0.0)
        time.sleep(1.5)  # a few failed evaluations more
        text = log.read_text()
        assert "query failed" in text and "HTTP 503" in text
        assert f"127.0.0.1:{fake.port}" in text
        assert "pa55" not in text and "w%40rd" not in text and "w@rd" not in text
    finally:
        fake.close()


def test_daemon_reports_stale_while_prometheus_hangs(
    tmp_path: Path, daemon_factory: Callable[..., tuple[subprocess.Popen[bytes], str]]
) -> None:
    """Issue 14.10: while Prometheus hangs, the evaluation waits up to its time limit (30 s);
    meanwhile the daemon kept evaluation_success 1 and stale 0. Staleness must follow the
    data's age: stale within about two evaluation intervals."""
    fake = FakePrometheus()
    try:
        proc, url = daemon_factory(
            f"--prometheus.url=http://127.0.0.1:{fake.port}",
            "--eval-interval=1s",
            "--eval.timeout=60s",
            "--query.timeout=60s",
            str(SPEC),
        )
        log = next(tmp_path.glob("daemon-*.log"))
        m = wait_metrics(url, proc, log, lambda m: value(m, "hpcobs_slo_evaluation_success") == 1.0)
        slos = [dict(labels)["slo"] for name, labels in m if name == "hpcobs_slo_stale"]
        assert slos and all(value(m, "hpcobs_slo_stale", slo=s) == 0.0 for s in slos)
        fake.mode = "hang"
        hung_at = time.monotonic()
        m = wait_metrics(
            url,
            proc,
            log,
            lambda m: (
                value(m, "hpcobs_slo_evaluation_success") == 0.0
                and all(value(m, "hpcobs_slo_stale", slo=s) == 1.0 for s in slos)
            ),
            timeout=15,  # 2 intervals, plus the evaluation in flight, plus a loaded machine
        )
        assert time.monotonic() - hung_at < 15
        age1 = value(m, "hpcobs_slo_data_age_seconds", slo=slos[0])
        assert age1 is not None and age1 > 2.0
        for name, _labels in m:
            assert name not in ("hpcobs_slo_sli_ratio", "hpcobs_slo_burn_rate"), name
        time.sleep(1.0)
        m2 = scrape(url)
        age2 = value(m2, "hpcobs_slo_data_age_seconds", slo=slos[0])
        assert age2 is not None and age2 > age1
        assert value(m2, "hpcobs_slo_stale", slo=slos[0]) == 1.0
        # the evaluation is still waiting on Prometheus: no evaluation has ended since
        assert value(m2, "hpcobs_slo_evaluations_total", result="failure") in (None, 0.0)
        assert proc.poll() is None
    finally:
        fake.close()
