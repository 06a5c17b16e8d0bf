"""hpcobs-mpi-probe under Debian's Open MPI (`mpirun --oversubscribe`), with real outputs.

Every test launches the installed console script with `mpirun`, keeps budgets small (the
whole module runs in well under two minutes on two cores), and checks what the probe
delivered where it delivered it: JSON on stdout, a Pushgateway that a real Prometheus
scrapes, a textfile that Debian's node_exporter serves, and OTLP that a loopback receiver
decodes with opentelemetry-proto.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import NodeExporterFactory, PrometheusFactory, Pushgateway, free_port

pytestmark = pytest.mark.real

PROBE = Path(sys.executable).parent / "hpcobs-mpi-probe"
REPO = Path(__file__).resolve().parents[2]
OPS = ("allreduce", "bcast", "allgather", "alltoall", "reduce_scatter", "barrier")
SIZES = (8, 32, 128, 512, 2048, 8192, 32768, 131072, 524288, 2097152, 4194304)
# a quick configuration for the tests that check outputs rather than numbers
QUICK = ["--budget-seconds", "0.6", "--ops", "allreduce,barrier", "--sizes", "8,64KiB,1MiB"]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def doc(self) -> dict[str, Any]:
        try:
            parsed: dict[str, Any] = json.loads(self.stdout)
        except ValueError:
            pytest.fail(f"stdout is not one JSON document:\n{self.stdout}\n{self.stderr}")
        return parsed

    def __str__(self) -> str:
        return f"exit {self.rc} after {self.seconds:.1f} s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def mpirun(
    ranks: int,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 90,
) -> Run:
    launcher = shutil.which("mpirun")
    if launcher is None:
        pytest.fail("mpirun not found: install Open MPI (scripts/bootstrap.sh, Debian openmpi-bin)")
    if not PROBE.exists():
        pytest.fail(f"{PROBE} missing: install the package (pip install -e '.[probe]')")
    extra = dict(env or {})
    cmd = [launcher, "--oversubscribe", "-n", str(ranks)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    for name in extra:
        cmd += ["-x", name]
    cmd += [str(PROBE), *args]
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **extra},
        start_new_session=True,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    rx, ry = ranks(xs), ranks(ys)
    n = len(xs)
    return 1 - 6 * sum((a - b) ** 2 for a, b in zip(rx, ry, strict=True)) / (n * (n * n - 1))


def monotone_within_noise(sizes: Sequence[int], p50: Sequence[float], outliers: int = 2) -> bool:
    """Latency grows with size: once up to `outliers` cells a noisy neighbour disturbed (on a
    shared two-core machine a cell can land in a burst) are set aside, the ranks of the rest
    agree with their sizes (Spearman ≥ 0.8) and the largest is > 10× the smallest."""
    n = len(sizes)
    for k in range(outliers + 1):
        for dropped in itertools.combinations(range(n), k):
            keep = [i for i in range(n) if i not in dropped]
            xs, ys = [sizes[i] for i in keep], [p50[i] for i in keep]
            if spearman(xs, ys) >= 0.8 and ys[-1] > 10 * ys[0]:
                return True
    return False


def check_sane(doc: dict[str, Any], ranks: int) -> None:
    """Every op at every size, ordered statistics, and latency growing with size."""
    assert doc["ranks"] == ranks
    cells = {(c["op"], c["size_bytes"]): c for c in doc["collectives"]}
    expected = {(op, 0) if op == "barrier" else (op, s) for op in OPS for s in SIZES}
    expected = {(op, size) for op, size in expected if op != "barrier" or size == 0}
    assert set(cells) == expected, f"missing {expected - set(cells)}"
    for (op, size), c in cells.items():
        raw, corrected = c["raw_seconds"], c["corrected_seconds"]
        assert 0 < raw["min"] <= raw["p50"] <= raw["p99"] <= raw["max"] < 5, (op, size, raw)
        assert 0 <= corrected["min"] <= corrected["p50"] <= corrected["p99"] <= corrected["max"]
        assert corrected["p50"] <= raw["p50"] and c["iterations"] >= 5
    for op in OPS:
        if op == "barrier":
            continue
        p50 = [cells[(op, s)]["raw_seconds"]["p50"] for s in SIZES]
        assert monotone_within_noise(SIZES, p50), (op, p50)
    overhead = doc["calibration"]["overhead_seconds"]
    assert set(overhead) == set(OPS)
    assert all(0 <= v < 1e-4 for v in overhead.values()), overhead


def debug_panels() -> list[dict[str, Any]]:
    doc = json.loads((REPO / "dashboards" / "hpcobs-debug.json").read_text())
    panels: list[dict[str, Any]] = doc["panels"]
    return panels


def check_pairs(doc: dict[str, Any], compiled_pairs: int | None = None) -> None:
    """Every pair overhead-corrected: corrected = raw − overhead / 2 (one way), the overhead
    that of the pair's timing loop; `compiled_pairs` of them timed by the compiled loop (its
    calibrated overhead is a few tens of ns a round trip, Python's several hundred)."""
    pairs = doc["pairwise"]["pairs"]
    assert pairs
    for pair in pairs:
        raw, corrected = pair["latency_raw_seconds"], pair["latency_seconds"]
        overhead = pair["overhead_seconds"]
        assert 0 < overhead < 20e-6, pair
        assert 0 < raw["min"] <= raw["p50"] <= raw["p99"] <= raw["max"] < 1, pair
        assert 0 <= corrected["min"] <= corrected["p50"] <= corrected["p99"] <= corrected["max"]
        if raw["min"] > overhead / 2:  # no sample floored at zero: an exact shift
            for stat in ("min", "p50", "p99", "max"):
                assert corrected[stat] == pytest.approx(raw[stat] - overhead / 2, rel=1e-9)
    if compiled_pairs is not None:
        fast = [p for p in pairs if p["overhead_seconds"] < 0.25e-6]
        assert len(fast) == compiled_pairs, [p["overhead_seconds"] for p in pairs]


def check_node_latency(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One entry per node, from its pairs: p50 the lower median, max the highest p50."""
    per_node: dict[str, dict[str, float]] = doc["pairwise"]["node_latency_seconds"]
    assert set(per_node) == set(doc["nodes"])
    for node, figures in per_node.items():
        assert set(figures) == {"p50", "p99", "max"}
        p50s = sorted(
            p["latency_seconds"]["p50"]
            for p in doc["pairwise"]["pairs"]
            if node in (p["node_a"], p["node_b"])
        )
        assert figures["p50"] == p50s[(len(p50s) - 1) // 2] and figures["max"] == p50s[-1]
        assert 0 <= figures["p50"] <= figures["max"] and figures["p50"] <= figures["p99"]
    return per_node


def test_two_ranks_measure_every_op_and_size_and_a_baseline_flips_the_exit_code(
    tmp_path: Path,
) -> None:
    baseline = tmp_path / "baseline.json"
    run = mpirun(2, ["--budget-seconds", "2", "--json", "--write-baseline", str(baseline)])
    assert run.rc == 0, run
    doc = run.doc()
    check_sane(doc, 2)
    # --timer auto: the compiled loop, which `pip install -e .` built here
    assert doc["timer"] == "compiled", "the compiled timing loop was not built or not used"
    assert doc["mpi_library"].startswith("Open MPI v4."), doc["mpi_library"]
    assert doc["exit_code"] == 0 and doc["verdict"]["label"] == "healthy"
    assert "verdict: healthy (exit 0)" in run.stderr  # the human summary (stderr with --json)
    stored = json.loads(baseline.read_text())
    assert stored["ranks"] == 2 and len(stored["p50_seconds"]) == len(doc["collectives"])
    assert stored["timer"] == "compiled"
    assert stored["p50_seconds"]["allreduce/4194304"] == pytest.approx(
        next(
            c["corrected_seconds"]["p50"]
            for c in doc["collectives"]
            if (c["op"], c["size_bytes"]) == ("allreduce", 4194304)
        )
    )

    def scaled(factor: float) -> Path:
        path = tmp_path / f"baseline-x{factor}.json"
        edited = dict(stored, p50_seconds={k: v * factor for k, v in stored["p50_seconds"].items()})
        path.write_text(json.dumps(edited))
        return path

    quick = ["--budget-seconds", "0.6", "--ops", "allreduce,alltoall", "--sizes", "8,4MiB"]
    # a baseline 100× faster than reality: the large messages must regress → exit 1
    regressed = mpirun(2, [*quick, "--baseline", str(scaled(0.01)), "--tolerance", "0.5"])
    assert regressed.rc == 1, regressed
    assert "REGRESSION allreduce 4 MiB" in regressed.stdout
    assert "verdict: regression (exit 1)" in regressed.stdout
    # the same run against a baseline 100× slower than reality is healthy → exit 0
    healthy = mpirun(2, [*quick, "--baseline", str(scaled(100.0)), "--tolerance", "0.5"])
    assert healthy.rc == 0, healthy
    assert "0 regressed" in healthy.stdout
    # a baseline for another shape is not silently passed: the probe fails → exit 2
    other = mpirun(3, [*quick, "--baseline", str(baseline), "--no-pairwise"])
    assert other.rc == 2, other
    assert "not comparable" in other.stdout
    # … nor is a baseline measured with the other timing loop
    python = mpirun(2, [*quick, "--baseline", str(baseline), "--timer", "python"])
    assert python.rc == 2, python
    assert "measured with the compiled timing loop, this run with the python loop" in python.stdout


def test_the_python_timing_loop_measures_every_op_and_size() -> None:
    run = mpirun(2, ["--budget-seconds", "2", "--json", "--no-pairwise", "--timer", "python"])
    assert run.rc == 0, run
    doc = run.doc()
    check_sane(doc, 2)
    assert doc["timer"] == "python"
    assert "same python timing loop around a no-op call" in run.stderr


def test_four_ranks_are_sane_and_a_slow_rank_is_named_the_slowest_node() -> None:
    run = mpirun(
        4,
        ["--budget-seconds", "3", "--json"],
        env={"HPCOBS_PROBE_TEST_SLOW_RANK": "2", "HPCOBS_PROBE_TEST_SLOW_SECONDS": "0.0005"},
    )
    assert run.rc == 0, run
    doc = run.doc()
    check_sane(doc, 4)
    pairwise = doc["pairwise"]
    slow_node = doc["rank_nodes"][2]
    assert doc["identity_mode"] == "rank" and len(set(doc["rank_nodes"])) == 4
    assert pairwise["rounds"] == 3  # N - 1 rounds for N = 4
    assert len(pairwise["pairs"]) == 6  # every pair once
    ratios = pairwise["node_slowness_ratio"]
    assert max(ratios, key=ratios.get) == slow_node, ratios
    assert ratios[slow_node] > 3 * max(r for n, r in ratios.items() if n != slow_node)
    worst = pairwise["worst_pairs"][0]
    assert slow_node in (worst["node_a"], worst["node_b"])
    # the injected 0.5 ms sleep per round trip shows as at least half of it one way
    assert worst["latency_seconds"]["p50"] >= 0.00025
    assert f"slowest node: {slow_node}" in run.stderr
    # the slow rank runs its ping-pongs in Python (the hook sleeps between the calls): the
    # one pair it times (2–3) has the Python loop's overhead, the 5 others the compiled one's
    check_pairs(doc, compiled_pairs=5)
    per_node = check_node_latency(doc)
    assert max(per_node, key=lambda n: per_node[n]["p50"]) == slow_node, per_node
    assert per_node[slow_node]["p50"] >= 0.00025


def test_node_latency_appears_per_node_in_the_textfile_node_exporter_serves(
    tmp_path: Path, node_exporter_factory: NodeExporterFactory
) -> None:
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    run = mpirun(4, [*QUICK, "--json", "--textfile-dir", str(textdir), "--pairwise.top-k", "1"])
    assert run.rc == 0, run
    doc = run.doc()
    assert doc["timer"] == "compiled" and len(doc["nodes"]) == 4
    check_pairs(doc, compiled_pairs=6)
    per_node = check_node_latency(doc)
    node = node_exporter_factory(
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textdir}",
    )
    text = node.scrape()
    assert "node_textfile_scrape_error 0" in text, text[-2000:]
    served = {
        (s.labels["node"], s.labels["stat"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hpcobs_mpi_node_latency_seconds"
    }
    # one series per node and stat (4 × 3), while only --pairwise.top-k 1 pair is exported
    assert served == {
        (n, stat): pytest.approx(value) for n, f in per_node.items() for stat, value in f.items()
    }
    assert text.count("hpcobs_mpi_pair_latency_seconds{") == 1


def test_the_python_timing_loop_times_and_corrects_the_pairwise_phase() -> None:
    run = mpirun(3, [*QUICK, "--json", "--timer", "python"])
    assert run.rc == 0, run
    doc = run.doc()
    assert doc["timer"] == "python" and doc["pairwise"]["rounds"] == 3
    check_pairs(doc, compiled_pairs=0)
    check_node_latency(doc)


def test_ranks_sharing_a_node_name_form_one_node_led_by_their_first_rank() -> None:
    """HPCOBS_PROBE_NODE_NAME gives two "hosts" of two ranks each (MPMD): the pairwise phase
    runs between the nodes' first ranks, the others wait."""
    launcher = shutil.which("mpirun")
    assert launcher is not None, "mpirun not found"
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    args = [str(PROBE), "--json", "--budget-seconds", "0.5", "--ops", "barrier"]
    cmd = [launcher, *root, "--oversubscribe",
           "-n", "2", "env", "HPCOBS_PROBE_NODE_NAME=nodeA", *args, ":",
           "-n", "2", "env", "HPCOBS_PROBE_NODE_NAME=nodeB", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc
    doc = json.loads(proc.stdout)
    assert doc["identity_mode"] == "host"
    assert doc["rank_nodes"] == ["nodeA", "nodeA", "nodeB", "nodeB"]
    assert doc["nodes"] == ["nodeA", "nodeB"]
    [pair] = doc["pairwise"]["pairs"]
    assert (pair["node_a"], pair["node_b"], pair["rank_a"], pair["rank_b"]) == (
        "nodeA",
        "nodeB",
        0,
        2,
    )
    assert doc["pairwise"]["node_slowness_ratio"] == {"nodeA": 1.0, "nodeB": 1.0}


def test_a_rank_that_exits_early_makes_the_probe_exit_2_within_the_timeout() -> None:
    run = mpirun(
        2,
        ["--budget-seconds", "1", "--timeout", "6", *QUICK[2:]],
        env={"HPCOBS_PROBE_TEST_EXIT_RANK": "1"},
    )
    assert run.rc == 2, run
    assert run.seconds < 6 + 3, run  # the deadline counts from process start; teardown slack
    assert "leaving early" in run.stderr and "watchdog" in run.stderr, run


def test_a_stalled_rank_makes_the_probe_exit_2_within_the_timeout() -> None:
    run = mpirun(
        3,
        ["--budget-seconds", "1", "--timeout", "5", *QUICK[2:]],
        env={"HPCOBS_PROBE_TEST_STALL_RANK": "0"},
    )
    assert run.rc == 2, run
    assert run.seconds < 5 + 3, run
    assert "pairwise" in run.stderr and "watchdog" in run.stderr, run


def test_push_reaches_a_pushgateway_that_prometheus_scrapes(
    pushgateway: Pushgateway, prometheus_factory: PrometheusFactory
) -> None:
    prom = prometheus_factory(
        scrape_configs=[
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [pushgateway.listen_address]}],
            }
        ],
        wait=False,  # starts while the probe measures
    )
    run = mpirun(
        2,
        [
            *QUICK,
            "--json",
            "--pushgateway",
            pushgateway.url,
            "--cluster",
            "c1",
            "--partition",
            "debug",
        ],
    )
    assert run.rc == 0, run
    doc = run.doc()
    assert [(o["target"], o["ok"]) for o in doc["outputs"]] == [("pushgateway", True)]
    p50 = next(c for c in doc["collectives"] if c["op"] == "allreduce" and c["size_bytes"] == 8)
    prom.wait_ready()
    selector = (
        'hpcobs_mpi_collective_latency_seconds{job="hpcobs_mpi_probe",cluster="c1",'
        'partition="debug",op="allreduce",size_bytes="8",stat="p50"}'
    )
    result = prom.wait_for(selector, timeout=30)
    assert float(result[0]["value"][1]) == pytest.approx(p50["corrected_seconds"]["p50"])
    assert prom.query_value('hpcobs_mpi_probe_ranks{cluster="c1"}') == 2
    stamp = prom.query_value('hpcobs_mpi_probe_last_success_timestamp_seconds{cluster="c1"}')
    assert abs(stamp - time.time()) < 120
    barrier = prom.query('hpcobs_mpi_collective_latency_seconds{op="barrier"}')
    assert {r["metric"]["size_bytes"] for r in barrier} == {"0"}
    # the Debug dashboard's fabric heatmaps, as Grafana asks them: one row per node, the
    # node's figure of this run
    per_node = check_node_latency(doc)
    heatmaps = [p for p in debug_panels() if p["title"].startswith("Fabric latency per node")]
    assert len(heatmaps) == 2
    for panel in heatmaps:
        [target] = panel["targets"]
        expr = target["expr"].replace("$cluster", "c1").replace("$partition", "debug")
        stat = "max" if 'stat="max"' in expr else "p50"
        rows = {r["metric"]["node"]: float(r["value"][1]) for r in prom.query(expr)}
        assert rows == {n: pytest.approx(f[stat]) for n, f in per_node.items()}, expr


def test_textfile_is_served_by_node_exporter_without_errors(
    tmp_path: Path, node_exporter_factory: NodeExporterFactory
) -> None:
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    run = mpirun(2, [*QUICK, "--json", "--textfile-dir", str(textdir)])
    assert run.rc == 0, run
    doc = run.doc()
    assert sorted(p.name for p in textdir.iterdir()) == ["hpcobs_mpi_probe.prom"]  # no temp left
    node = node_exporter_factory(
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textdir}",
    )
    text = node.scrape()
    assert "node_textfile_scrape_error 0" in text, text[-2000:]
    cell = next(c for c in doc["collectives"] if (c["op"], c["size_bytes"]) == ("allreduce", 65536))
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith(
            'hpcobs_mpi_collective_latency_seconds{op="allreduce",size_bytes="65536",stat="p99"}'
        )
    )
    assert float(line.split()[-1]) == pytest.approx(cell["corrected_seconds"]["p99"])
    assert "hpcobs_mpi_probe_ranks 2" in text
    assert "hpcobs_mpi_node_slowness_ratio{node=" in text


class OtlpReceiver:
    """A loopback OTLP/HTTP receiver: decodes each POSTed protobuf request."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                receiver.requests.append(request)
                receiver.paths.append(self.path)
                answer = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def points(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for request in self.requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        for point in metric.gauge.data_points:
                            labels = tuple(
                                sorted((a.key, a.value.string_value) for a in point.attributes)
                            )
                            out[(metric.name, labels)] = point.as_double
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def test_otlp_metrics_reach_a_receiver_that_decodes_them(otlp_receiver: OtlpReceiver) -> None:
    run = mpirun(2, [*QUICK, "--json", "--otlp.endpoint", otlp_receiver.url, "--cluster", "c9"])
    assert run.rc == 0, run
    doc = run.doc()
    assert [(o["target"], o["ok"]) for o in doc["outputs"]] == [("otlp", True)]
    assert otlp_receiver.paths == ["/v1/metrics"]
    request = otlp_receiver.requests[0]
    resource = {
        a.key: a.value.string_value for a in request.resource_metrics[0].resource.attributes
    }
    assert resource["service.name"] == "hpcobs-mpi-probe"
    assert resource["hpcobs.cluster"] == "c9"
    units = {
        m.name: m.unit
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert units["hpcobs_mpi_collective_latency_seconds"] == "s"
    points = otlp_receiver.points()
    for c in doc["collectives"]:
        for stat in ("min", "p50", "p99", "max"):
            key = (
                "hpcobs_mpi_collective_latency_seconds",
                (("op", c["op"]), ("size_bytes", str(c["size_bytes"])), ("stat", stat)),
            )
            assert points[key] == pytest.approx(c["corrected_seconds"][stat])
    assert points[("hpcobs_mpi_probe_ranks", ())] == 2
    node = doc["nodes"][0]
    assert points[("hpcobs_mpi_node_slowness_ratio", (("node", node),))] == pytest.approx(
        doc["pairwise"]["node_slowness_ratio"][node]
    )


def test_an_unreachable_pushgateway_falls_back_to_the_textfile_and_exits_2(
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    run = mpirun(
        2,
        [
            *QUICK,
            "--pushgateway",
            dead,
            "--push.retries",
            "1",
            "--push.fallback-dir",
            str(tmp_path),
        ],
    )
    assert run.rc == 2, run
    fallback = tmp_path / "hpcobs_mpi_probe.prom"
    assert "hpcobs_mpi_collective_latency_seconds" in fallback.read_text()
    assert "output pushgateway: FAILED" in run.stdout
    assert "output fallback-textfile: ok" in run.stdout
    assert "fallback textfile" in run.stderr
