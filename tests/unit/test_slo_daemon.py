"""The daemon's state, metrics and evaluation loop, and OTLP/HTTP traces, without servers.

(tests/real/test_slo_serve.py runs `hpcobs-slo serve` against a real Prometheus.)
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from test_slo_evaluator import NOW, fake

from hpcobs.slo.daemon import Engine, SLOCollector
from hpcobs.slo.evaluator import Evaluation, Evaluator, SLOResult, WindowResult
from hpcobs.slo.loader import load_texts
from hpcobs.slo.metrics import METRICS, DaemonState, families
from hpcobs.slo.model import SLO
from hpcobs.slo.tracing import otlp_traces_url, tracer, tracer_provider

from harness.collectors import wait_until

pytestmark = pytest.mark.unit

SPEC = """
version: hpcobs.slo/v1
service: slurm
slos:
  - id: up
    objective: 99
    sli: {ratio: {bad: a_total, total: b_total}}
  - id: down
    objective: 99.5
    period: calendar-month
    sli: {ratio: {bad: c_total, total: d_total}}
"""


def two_slos() -> list[SLO]:
    loaded = load_texts([("s.yaml", SPEC)])
    assert loaded.ok
    return loaded.slos


def evaluation(slos: list[SLO], at: float, *, down_ok: bool) -> Evaluation:
    up, down = slos
    windows = {
        "1h": WindowResult("1h", at - 3600, at, 2.0, 100.0),
        "30d": WindowResult("30d", at - 2592000, at, 0.0, 0.0),
    }
    results = (
        SLOResult(up, windows),
        SLOResult(down, {"1h": WindowResult("1h", at - 3600, at, 1, 10)})
        if down_ok
        else SLOResult(down, error="down"),
    )
    return Evaluation(
        time=at,
        results=results,
        queries=14,
        failed_queries=0 if down_ok else 7,
        duration=0.5,
        period_end=at - 1000,
    )


class Registry:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def values(metrics: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in metrics for s in m.samples}


def test_before_the_first_evaluation_everything_is_stale() -> None:
    got = values(list(families(DaemonState(slos=tuple(two_slos())), now=100.0)))
    assert got[("hpcobs_slo_evaluation_success", ())] == 0.0
    assert got[("hpcobs_slo_stale", (("slo", "up"),))] == 1.0
    assert got[("hpcobs_slo_objective_ratio", (("slo", "down"),))] == 0.995
    assert not any(
        name in ("hpcobs_slo_sli_ratio", "hpcobs_slo_data_age_seconds") for name, _ in got
    )


def test_fresh_and_stale_slos() -> None:
    slos = two_slos()
    state = DaemonState(slos=tuple(slos)).after(evaluation(slos, 1000.0, down_ok=True))
    state = state.after(evaluation(slos, 1060.0, down_ok=False))
    got = values(list(families(state, now=1070.0)))
    assert got[("hpcobs_slo_sli_ratio", (("slo", "up"), ("window", "1h")))] == pytest.approx(0.98)
    assert got[("hpcobs_slo_burn_rate", (("slo", "up"), ("window", "1h")))] == pytest.approx(2.0)
    assert got[("hpcobs_slo_events", (("kind", "good"), ("slo", "up"), ("window", "1h")))] == 98.0
    assert got[("hpcobs_slo_events", (("kind", "total"), ("slo", "up"), ("window", "30d")))] == 0.0
    # an idle window: events, but no SLI, burn rate or budget rather than NaN
    assert ("hpcobs_slo_sli_ratio", (("slo", "up"), ("window", "30d"))) not in got
    assert ("hpcobs_slo_error_budget_remaining_ratio", (("slo", "up"),)) not in got
    # the failed SLO: stale, nothing made up, its data age counts from its last figures
    assert got[("hpcobs_slo_stale", (("slo", "down"),))] == 1.0
    assert got[("hpcobs_slo_stale", (("slo", "up"),))] == 0.0
    assert not [
        k
        for k in got
        if dict(k[1]).get("slo") == "down"
        and k[0]
        in (
            "hpcobs_slo_sli_ratio",
            "hpcobs_slo_burn_rate",
            "hpcobs_slo_events",
            "hpcobs_slo_error_budget_remaining_ratio",
        )
    ]
    assert got[("hpcobs_slo_data_age_seconds", (("slo", "down"),))] == pytest.approx(70.0)
    assert got[("hpcobs_slo_data_age_seconds", (("slo", "up"),))] == pytest.approx(10.0)
    assert got[("hpcobs_slo_evaluation_success", ())] == 0.0
    assert got[("hpcobs_slo_last_success_timestamp_seconds", ())] == 1000.0
    assert got[("hpcobs_slo_evaluation_timestamp_seconds", ())] == 1060.0
    assert got[("hpcobs_slo_evaluations_total", (("result", "failure"),))] == 1.0
    assert got[("hpcobs_slo_queries_total", (("result", "failure"),))] == 7.0
    assert got[("hpcobs_slo_queries_total", (("result", "success"),))] == 21.0
    assert (
        got[
            (
                "hpcobs_slo_info",
                (("kind", "ratio"), ("period", "month"), ("service", "slurm"), ("slo", "down")),
            )
        ]
        == 1.0
    )


def test_exposition_passes_promtool_check_metrics() -> None:
    slos = two_slos()
    state = DaemonState(slos=tuple(slos)).after(evaluation(slos, 1000.0, down_ok=True))
    text = generate_latest(Registry(list(families(state, now=1001.0))))  # type: ignore[arg-type]
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/bootstrap.sh"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {m.name for m in METRICS}
    for m in families(state, now=1001.0):
        assert m.name in names or m.name + "_total" in names


def test_engine_loop_survives_a_crashing_evaluation_and_stops() -> None:
    slos = two_slos()
    calls = []

    class Flaky(Evaluator):
        def evaluate(self, at: float | None = None) -> Evaluation:
            calls.append(time.monotonic())
            if len(calls) == 2:
                raise RuntimeError("bug")
            return evaluation(slos, 1000.0 + len(calls), down_ok=True)

    engine = Engine(Flaky(slos, fake()), interval=0.05)
    # the scrape clock follows the evaluations' times (1000 + n): the data is fresh
    collector = SLOCollector(engine, clock=lambda: 1000.0 + len(calls))
    deadline = time.monotonic() + 5
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    collector.close()
    n = len(calls)
    assert n >= 4
    time.sleep(0.15)
    assert len(calls) == n, "the loop must stop on close()"
    got = values(list(collector.collect()))
    assert got[("hpcobs_slo_evaluation_success", ())] == 1.0
    assert got[("hpcobs_slo_evaluations_total", (("result", "success"),))] == n - 1
    with pytest.raises(ValueError):
        Engine(Flaky(slos, fake()), interval=0)


class OTLPReceiver:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                receiver.paths.append(self.path)
                receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_evaluation_traces_are_exported_over_otlp_http() -> None:
    receiver = OTLPReceiver()
    provider = tracer_provider(receiver.url, headers={"X-Tenant": "hpc"}, timeout=5)
    try:
        ev = Evaluator(two_slos(), fake(), settle=0, tracer=tracer(provider)).evaluate(NOW)
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
        receiver.close()
    assert receiver.paths and all(p == "/v1/traces" for p in receiver.paths)
    spans = []
    for body in receiver.bodies:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
            assert service == "hpcobs-slo"
            for ss in rs.scope_spans:
                spans.extend(ss.spans)
    names = [s.name for s in spans]
    assert names.count("slo.evaluation") == 1
    assert names.count("prometheus.query") == ev.queries
    (root,) = [s for s in spans if s.name == "slo.evaluation"]
    assert all(s.parent_span_id == root.span_id for s in spans if s.name == "prometheus.query")


def test_otlp_url() -> None:
    assert otlp_traces_url("http://otel:4318") == "http://otel:4318/v1/traces"
    assert otlp_traces_url("https://otel/custom/path") == "https://otel/custom/path"
    with pytest.raises(ValueError):
        otlp_traces_url("otel:4318")


def test_figures_older_than_the_stale_age_are_stale_and_left_out() -> None:
    """Issue 14.10: staleness follows the data's age at scrape time, not only the result of
    the latest finished evaluation (which, while Prometheus hangs, stays the old one)."""
    slos = two_slos()
    state = DaemonState(slos=tuple(slos)).after(evaluation(slos, 1000.0, down_ok=True))
    fresh = values(list(families(state, now=1100.0, stale_after=120.0)))
    assert fresh[("hpcobs_slo_stale", (("slo", "up"),))] == 0.0
    assert fresh[("hpcobs_slo_evaluation_success", ())] == 1.0
    assert ("hpcobs_slo_sli_ratio", (("slo", "up"), ("window", "1h"))) in fresh

    old = values(list(families(state, now=1121.0, stale_after=120.0)))
    assert old[("hpcobs_slo_stale", (("slo", "up"),))] == 1.0
    assert old[("hpcobs_slo_stale", (("slo", "down"),))] == 1.0
    assert old[("hpcobs_slo_evaluation_success", ())] == 0.0
    assert old[("hpcobs_slo_data_age_seconds", (("slo", "up"),))] == pytest.approx(121.0)
    assert not [k for k in old if k[0] in ("hpcobs_slo_sli_ratio", "hpcobs_slo_burn_rate")]
    # what is not about freshness stays
    assert old[("hpcobs_slo_last_success_timestamp_seconds", ())] == 1000.0
    assert old[("hpcobs_slo_objective_ratio", (("slo", "up"),))] == 0.99


def test_the_daemon_turns_stale_while_an_evaluation_hangs() -> None:
    """Issue 14.10: with Prometheus hanging, the evaluation in flight does not end before its
    time limit; the scrape must say stale as soon as the data is older than two intervals."""
    slos = two_slos()
    release = threading.Event()
    calls: list[float] = []

    class Hanging(Evaluator):
        def evaluate(self, at: float | None = None) -> Evaluation:
            calls.append(time.time())
            if len(calls) > 1:
                release.wait(60)  # a query waiting on a Prometheus that never answers
            return evaluation(slos, calls[-1], down_ok=True)

    engine = Engine(Hanging(slos, fake()), interval=0.2)
    collector = SLOCollector(engine)
    try:
        assert wait_until(lambda: len(calls) >= 2, timeout=10), "no second evaluation"
        first = calls[0]

        def stale() -> bool:
            got = values(list(collector.collect()))
            return (
                got[("hpcobs_slo_stale", (("slo", "up"),))] == 1.0
                and got[("hpcobs_slo_evaluation_success", ())] == 0.0
            )

        assert wait_until(stale, timeout=10), "still fresh while the evaluation hangs"
        assert len(calls) == 2 and not release.is_set()  # the same evaluation, still hanging
        got = values(list(collector.collect()))
        assert got[("hpcobs_slo_data_age_seconds", (("slo", "up"),))] > 0.4
        assert got[("hpcobs_slo_evaluation_timestamp_seconds", ())] == first
        assert ("hpcobs_slo_sli_ratio", (("slo", "up"), ("window", "1h"))) not in got
        assert engine.stale_after == pytest.approx(0.4)  # twice the interval
    finally:
        release.set()
        collector.close()
