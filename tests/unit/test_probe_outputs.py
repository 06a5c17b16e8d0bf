"""Outputs of the MPI probe without MPI: textfile, Pushgateway retries and fallback, metrics,
summary and JSON (exporters/probe/{outputs,metrics,report}.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.exporters.probe import metrics, outputs, report
from hpcobs.exporters.probe.model import CollectiveResult, PairResult, ProbeResult
from hpcobs.exporters.probe.stats import NODE_STATS, PairSummary, Summary, node_latencies
from hpcobs.exporters.probe.verdict import compare, make_baseline, no_baseline
from hpcobs.exporters.runtime.metricdef import MetricDef

from harness.servers import find_binary

pytestmark = pytest.mark.unit


def make_result() -> ProbeResult:
    """A small run: 3 nodes, two collectives, node n2 slow."""
    s = Summary

    def pair(a: int, b: int, lat: float) -> PairResult:
        raw = lat + 5e-8  # half of a 100 ns calibrated overhead per round trip
        return PairResult(
            f"n{a}",
            f"n{b}",
            a,
            b,
            s(lat, lat, 2 * lat, 3 * lat),
            1e9 / (1 + lat),
            1 << 20,
            9,
            latency_raw=s(raw, raw, 2 * lat + 5e-8, 3 * lat + 5e-8),
            overhead_seconds=1e-7,
        )

    pairs = [pair(0, 1, 1e-6), pair(0, 2, 1e-4), pair(1, 2, 1.1e-4)]
    return ProbeResult(
        ranks=3,
        identity_mode="host",
        rank_nodes=["n0", "n1", "n2"],
        nodes=["n0", "n1", "n2"],
        started_unix=1000.0,
        finished_unix=1002.5,
        budget_seconds=2.0,
        overhead_seconds={"allreduce": 5e-7, "barrier": 1e-7},
        overhead_per_rank={"allreduce": [5e-7] * 3, "barrier": [1e-7] * 3},
        collectives=[
            CollectiveResult(
                "allreduce", 8, 100, s(1e-6, 2e-6, 3e-6, 4e-6), s(5e-7, 1.5e-6, 2.5e-6, 3.5e-6), 1
            ),
            CollectiveResult(
                "allreduce", 4 << 20, 5, s(1e-3, 2e-3, 3e-3, 4e-3), s(1e-3, 2e-3, 3e-3, 4e-3), 0
            ),
            CollectiveResult(
                "barrier", 0, 50, s(1e-6, 1e-6, 1e-6, 1e-6), s(9e-7, 9e-7, 9e-7, 9e-7), 2
            ),
        ],
        pairs=pairs,
        node_slowness={"n0": 1.0, "n1": 1.0, "n2": 100.0},
        node_latency=node_latencies(PairSummary(p.node_a, p.node_b, p.latency) for p in pairs),
        worst_pairs=[pair(1, 2, 1.1e-4), pair(0, 2, 1e-4)],
        pairwise_rounds=3,
    )


def parsed(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_families_follow_the_metric_contract() -> None:
    result = make_result()
    reg = metrics.registry(result, no_baseline(), top_k=1)
    values = parsed(generate_latest(reg))
    key = (
        "hpcobs_mpi_collective_latency_seconds",
        (("op", "allreduce"), ("size_bytes", "8"), ("stat", "p50")),
    )
    assert values[key] == 1.5e-6
    assert values[("hpcobs_mpi_collective_latency_raw_seconds", key[1])] == 2e-6
    assert (
        values[
            (
                "hpcobs_mpi_collective_latency_seconds",
                (("op", "barrier"), ("size_bytes", "0"), ("stat", "max")),
            )
        ]
        == 9e-7
    )
    assert values[("hpcobs_mpi_probe_ranks", ())] == 3
    assert values[("hpcobs_mpi_probe_last_success_timestamp_seconds", ())] == 1002.5
    assert values[("hpcobs_mpi_node_slowness_ratio", (("node", "n2"),))] == 100.0
    pair_series = [k for k in values if k[0] == "hpcobs_mpi_pair_latency_seconds"]
    assert pair_series == [
        ("hpcobs_mpi_pair_latency_seconds", (("node_a", "n1"), ("node_b", "n2")))
    ]
    assert not any(k[0] == "hpcobs_mpi_probe_regressions" for k in values)  # no baseline given
    names = {k[0] for k in values}
    declared = {m.name for m in metrics.METRICS}
    assert names <= declared
    assert all(isinstance(m, MetricDef) for m in metrics.METRICS)


def node_series(values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    """hpcobs_mpi_node_latency_seconds as {"node/stat": value}."""
    out = {}
    for (name, labels), value in values.items():
        if name == "hpcobs_mpi_node_latency_seconds":
            label = dict(labels)
            assert set(label) == {"node", "stat"}
            out[f"{label['node']}/{label['stat']}"] = value
    return out


def test_node_latency_is_exported_per_node_and_stat() -> None:
    """n0's pairs: n1 at 1 µs, n2 at 100 µs; n2's: n0 at 100 µs, n1 at 110 µs (p99 = 2 × p50)."""
    values = parsed(generate_latest(metrics.registry(make_result(), no_baseline(), top_k=1)))
    assert node_series(values) == {
        "n0/p50": 1e-6,  # lower median: the slow link to n2 does not make n0 slow
        "n0/p99": 2e-6,
        "n0/max": 1e-4,  # … but shows as its worst link
        "n1/p50": 1e-6,
        "n1/p99": 2e-6,
        "n1/max": 1.1e-4,
        "n2/p50": 1e-4,  # every pair of n2 is slow
        "n2/p99": 2e-4,
        "n2/max": 1.1e-4,
    }


def mesh_result(nodes: int) -> ProbeResult:
    """A run over `nodes` nodes with every pair measured (latencies all different)."""
    names = [f"node{i:03d}" for i in range(nodes)]
    pairs = []
    for i in range(nodes):
        for j in range(i + 1, nodes):
            lat = 1e-6 * (1 + i + j / 1000)
            summary = Summary(lat, lat, 2 * lat, 3 * lat)
            pairs.append(
                PairResult(names[i], names[j], i, j, summary, 1e9, 1 << 20, 9, summary, 0.0)
            )
    return ProbeResult(
        ranks=nodes,
        identity_mode="host",
        rank_nodes=names,
        nodes=names,
        started_unix=0.0,
        finished_unix=1.0,
        budget_seconds=1.0,
        overhead_seconds={},
        overhead_per_rank={},
        pairs=pairs,
        worst_pairs=sorted(pairs, key=lambda p: -p.latency.p50),
        node_latency=node_latencies(PairSummary(p.node_a, p.node_b, p.latency) for p in pairs),
    )


@pytest.mark.parametrize("top_k", [0, 5])
@pytest.mark.parametrize("nodes", [2, 3, 17, 64])
def test_node_latency_series_are_bounded_by_the_node_count(nodes: int, top_k: int) -> None:
    """nodes × 3 series, whatever the number of pairs (64 nodes: 2016 pairs) or --top-k."""
    result = mesh_result(nodes)
    values = parsed(generate_latest(metrics.registry(result, no_baseline(), top_k)))
    series = node_series(values)
    assert len(series) == nodes * len(NODE_STATS)
    assert {key.split("/")[0] for key in series} == set(result.nodes)
    assert {key.split("/")[1] for key in series} == set(NODE_STATS)
    pair_series = [k for k in values if k[0] == "hpcobs_mpi_pair_latency_seconds"]
    assert len(pair_series) == min(top_k, len(result.pairs))


def test_a_run_without_pairs_exports_no_node_latency() -> None:
    result = make_result()
    result.pairs, result.worst_pairs, result.node_latency = [], [], {}
    values = parsed(generate_latest(metrics.registry(result, no_baseline(), 5)))
    assert node_series(values) == {}


def test_exposition_passes_promtool_check_metrics() -> None:
    text = generate_latest(metrics.registry(make_result(), no_baseline(), 5))
    proc = subprocess.run(
        [find_binary("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc


def test_baseline_figures_are_exported_when_compared() -> None:
    result = make_result()
    base = make_baseline({("allreduce", 8): 1e-7, ("barrier", 0): 9e-7}, 3, 3, 0.0)
    verdict = compare(base, result.p50_by_cell(), 3, 3, 0.3, 0.0)
    values = parsed(generate_latest(metrics.registry(result, verdict, 5)))
    assert values[("hpcobs_mpi_probe_regressions", ())] == 1
    ratio = values[
        ("hpcobs_mpi_collective_baseline_ratio", (("op", "allreduce"), ("size_bytes", "8")))
    ]
    assert ratio == pytest.approx(15.0)


def test_textfile_is_written_atomically(tmp_path: Path) -> None:
    (tmp_path / outputs.TEXTFILE_NAME).write_text("old\n")
    path = outputs.write_textfile(tmp_path, b"new 1\n")
    assert path == tmp_path / "hpcobs_mpi_probe.prom"
    assert path.read_bytes() == b"new 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpcobs_mpi_probe.prom"]
    with pytest.raises(OSError):
        outputs.write_textfile(tmp_path / "missing", b"x\n")


def test_retry_counts_attempts_and_backs_off() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("refused")

    assert outputs.retry(flaky, 5, "x", sleep=sleeps.append) == (3, "")
    assert sleeps == [0.5, 1.0]
    calls.clear()
    attempts, error = outputs.retry(
        lambda: (_ for _ in ()).throw(OSError("down")), 2, "x", sleep=sleeps.append
    )
    assert attempts == 3 and "down" in error


class _Recorder:
    """A loopback HTTP server answering every request with `status`, recording them."""

    def __init__(self, status: int) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append((self.command, self.path, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def failing_gateway() -> Iterator[_Recorder]:
    server = _Recorder(500)
    yield server
    server.close()


@pytest.fixture
def ok_gateway() -> Iterator[_Recorder]:
    server = _Recorder(200)
    yield server
    server.close()


def test_push_uses_the_grouping_key(ok_gateway: _Recorder, tmp_path: Path) -> None:
    reg = metrics.registry(make_result(), no_baseline(), 5)
    targets = outputs.Targets(
        pushgateway=ok_gateway.url,
        grouping_key={"cluster": "c1", "partition": ""},
        fallback_dir=str(tmp_path),
    )
    deliveries = outputs.deliver(reg, targets, sleep=lambda s: None)
    assert [(d.target, d.ok) for d in deliveries] == [("pushgateway", True)]
    method, path, body = ok_gateway.requests[0]
    assert method == "PUT"
    # an empty value travels base64-encoded, as the Pushgateway's URL scheme wants
    assert path == "/metrics/job/hpcobs_mpi_probe/cluster/c1/partition@base64/="
    assert b"hpcobs_mpi_collective_latency_seconds" in body
    assert list(tmp_path.iterdir()) == []  # no fallback needed


def test_failed_push_is_retried_then_falls_back_to_the_textfile(
    failing_gateway: _Recorder, tmp_path: Path
) -> None:
    reg = metrics.registry(make_result(), no_baseline(), 5)
    targets = outputs.Targets(
        pushgateway=failing_gateway.url, retries=2, fallback_dir=str(tmp_path)
    )
    sleeps: list[float] = []
    deliveries = outputs.deliver(reg, targets, sleep=sleeps.append)
    assert len(failing_gateway.requests) == 3 and sleeps == [0.5, 1.0]
    push, fallback = deliveries
    assert (push.target, push.ok, push.attempts) == ("pushgateway", False, 3)
    assert "500" in push.detail
    assert (fallback.target, fallback.ok) == ("fallback-textfile", True)
    written = (tmp_path / "hpcobs_mpi_probe.prom").read_bytes()
    assert parsed(written) == parsed(generate_latest(reg))


def test_with_a_textfile_already_written_the_fallback_is_that_file(
    failing_gateway: _Recorder, tmp_path: Path
) -> None:
    reg = metrics.registry(make_result(), no_baseline(), 5)
    other = tmp_path / "fallback"
    other.mkdir()
    targets = outputs.Targets(
        textfile_dir=str(tmp_path),
        pushgateway=failing_gateway.url,
        retries=0,
        fallback_dir=str(other),
    )
    deliveries = outputs.deliver(reg, targets, sleep=lambda s: None)
    assert [(d.target, d.ok) for d in deliveries] == [("textfile", True), ("pushgateway", False)]
    assert (tmp_path / "hpcobs_mpi_probe.prom").exists()
    assert list(other.iterdir()) == []


def test_when_even_the_fallback_fails_the_metrics_go_to_stderr(
    failing_gateway: _Recorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = metrics.registry(make_result(), no_baseline(), 5)
    targets = outputs.Targets(
        pushgateway=failing_gateway.url, retries=0, fallback_dir=str(tmp_path / "nope")
    )
    deliveries = outputs.deliver(reg, targets, sleep=lambda s: None)
    assert deliveries[-1].target == "stderr"
    err = capsys.readouterr().err
    assert "undelivered metrics follow" in err
    assert 'hpcobs_mpi_collective_latency_seconds{op="allreduce",size_bytes="8",stat="p50"}' in err


def test_fallback_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert outputs.fallback_dir("/x", "/y") == Path("/x")
    assert outputs.fallback_dir(None, "/y") == Path("/y")
    monkeypatch.setattr(outputs, "DEFAULT_TEXTFILE_DIR", str(tmp_path / "absent"))
    monkeypatch.chdir(tmp_path)
    assert outputs.fallback_dir(None, None) == tmp_path


def test_otlp_url() -> None:
    assert outputs.otlp_url("http://c:4318") == "http://c:4318/v1/metrics"
    assert outputs.otlp_url("http://c:4318/") == "http://c:4318/v1/metrics"
    assert outputs.otlp_url("http://c:4318/custom/path") == "http://c:4318/custom/path"


def test_otlp_failure_is_retried_and_falls_back(failing_gateway: _Recorder, tmp_path: Path) -> None:
    reg = metrics.registry(make_result(), no_baseline(), 5)
    targets = outputs.Targets(
        otlp_endpoint=failing_gateway.url, retries=1, timeout=2.0, fallback_dir=str(tmp_path)
    )
    deliveries = outputs.deliver(reg, targets, sleep=lambda s: None)
    assert [(d.target, d.ok) for d in deliveries] == [("otlp", False), ("fallback-textfile", True)]
    assert deliveries[0].attempts == 2
    assert all(path == "/v1/metrics" for _, path, _ in failing_gateway.requests)
    assert (tmp_path / "hpcobs_mpi_probe.prom").exists()


def test_summary_and_json_document() -> None:
    result = make_result()
    deliveries = [outputs.Delivery("textfile", True, "/x/hpcobs_mpi_probe.prom")]
    lines = report.summary_lines(result, no_baseline(), deliveries, 0)
    text = "\n".join(lines)
    assert text.startswith("hpcobs-mpi-probe: 3 ranks, 3 nodes")
    assert "slowest node: n2 (100.00× the median node)" in text
    assert "slowest pair n1 – n2" in text
    assert "pairwise calibration: 100 ns–100 ns per round trip subtracted" in text
    assert "verdict: healthy (exit 0)" in text
    failed = report.summary_lines(result, no_baseline(), deliveries, 2)
    assert "probe failed (exit 2)" in failed[-1]

    doc = json.loads(report.json_document(result, no_baseline(), deliveries, 0))
    assert doc["exit_code"] == 0 and doc["ranks"] == 3
    assert doc["collectives"][0]["corrected_seconds"]["p50"] == 1.5e-6
    assert doc["pairwise"]["node_slowness_ratio"]["n2"] == 100.0
    assert doc["pairwise"]["node_latency_seconds"]["n2"] == {
        "p50": 1e-4,
        "p99": 2e-4,
        "max": 1.1e-4,
    }
    first = doc["pairwise"]["pairs"][0]
    assert first["latency_seconds"]["p50"] == 1e-6 and first["overhead_seconds"] == 1e-7
    assert first["latency_raw_seconds"]["p50"] == pytest.approx(1e-6 + 5e-8)
    assert doc["outputs"][0]["target"] == "textfile"


def test_json_has_no_infinities() -> None:
    result = make_result()
    result.node_slowness["n0"] = float("inf")
    text = report.json_document(result, no_baseline(), [], 0)
    assert json.loads(text)["pairwise"]["node_slowness_ratio"]["n0"] == "inf"


def test_units_for_otlp() -> None:
    assert metrics.unit_of("hpcobs_mpi_collective_latency_seconds") == "s"
    assert metrics.unit_of("hpcobs_mpi_pair_bandwidth_bytes_per_second") == "By/s"
    assert metrics.unit_of("hpcobs_mpi_node_slowness_ratio") == "1"
    assert metrics.unit_of("hpcobs_mpi_probe_ranks") == "1"


def test_no_environment_leaks_into_tests() -> None:
    assert "HPCOBS_PROBE_TEST_SLOW_RANK" not in os.environ
