"""hpcobs-job report: the queries (three per report, whatever the job's size), the parsing of
their answers, the Slurm facts inferred from the exporter's counters, and the command line,
against a fake Prometheus HTTP API on 127.0.0.1."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.slo.jobreport import cli
from hpcobs.slo.jobreport import queries as q
from hpcobs.slo.jobreport.gather import AmbiguousJob, Options, gather, slurm_facts
from hpcobs.slo.jobreport.model import JobNotFound
from hpcobs.slo.promapi import ClientConfig, PrometheusClient, Sample

pytestmark = pytest.mark.unit

AS_OF = 1_700_100_000.0
T0, T1 = 1_700_050_000.0, 1_700_053_600.0
Answer = Callable[[str, dict[str, str]], dict[str, Any]]


class FakePrometheus:
    """`/api/v1/query` and `/api/v1/query_range`, answered by `answer(endpoint, form)`."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = dict(urllib.parse.parse_qsl(body))
                endpoint = self.path.rsplit("/", 1)[-1]
                fake.requests.append((endpoint, form))
                data = json.dumps({"status": "success", "data": answer(endpoint, form)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[Callable[[Answer], FakePrometheus]]:
    started: list[FakePrometheus] = []

    def start(answer: Answer) -> FakePrometheus:
        started.append(FakePrometheus(answer))
        return started[-1]

    yield start
    for f in started:
        f.close()


def vector(*samples: tuple[dict[str, str], float]) -> dict[str, Any]:
    return {
        "resultType": "vector",
        "result": [{"metric": m, "value": [AS_OF, repr(v)]} for m, v in samples],
    }


def job(nodes: int, gpus: int, *, clusters: tuple[str, ...] = ("c1",), live: bool = False,
        run: bool = True, failed: bool = False) -> Answer:  # fmt: skip
    """A job on `nodes` nodes with `gpus` GPUs each, as Prometheus would answer for it."""
    names = [f"gpu{i:03d}" for i in range(nodes)]

    def answer(endpoint: str, form: dict[str, str]) -> dict[str, Any]:
        expr = form["query"]
        if endpoint == "query_range":
            start, step = float(form["start"]), float(form["step"])
            sources = (["processes", "gpus"] if run else []) + (["failed"] if failed else [])
            return {
                "resultType": "matrix",
                "result": [
                    {"metric": {"source": s}, "values": [[start + k * step, "4"] for k in (5, 6)]}
                    for s in sources
                ],
            }
        if '"edge"' in expr:
            out: list[tuple[dict[str, str], float]] = [
                ({"edge": "first"}, T0),
                ({"edge": "last"}, T1),
                ({"edge": "live"}, 1.0 if live else 0.0),
            ]
            for i, n in enumerate(names):
                cluster = clusters[i % len(clusters)]
                out.append(({"edge": "node", "cluster": cluster, "node": n}, 1))
            return vector(*out)
        out = []
        for n in names:
            out.append(({"figure": "cpu_seconds", "node": n}, 3600.0))
            out.append(({"figure": "memory_peak", "node": n}, 2.0**30))
            for g in range(gpus):
                key = {"node": n, "gpu": str(g), "uuid": f"GPU-{n}-{g}"}
                out.append(({"figure": "gpu_held", **key}, 1))
                out.append(({"figure": "gpu_util_mean", **key}, 0.25))
                out.append(({"figure": "gpu_util_max", **key}, 0.5))
                out.append(({"figure": "gpu_memory_peak", **key}, 2.0**33))
                out.append(({"figure": "gpu_memory_total", **key}, 2.0**36))
        if failed:
            record = {"partition": "gpu", "state": "failed", "exit_code": "2:0", "user": "u"}
            out.append(({"figure": "failed_info", **record}, 1))
        out.append(({"figure": "starts", "partition": "gpu"}, 1))
        out.append(({"figure": "waits", "partition": "gpu"}, 42.0))
        if "ends" in expr:
            out.append(
                ({"figure": "ends", "partition": "gpu", "state": "failed", "cause": "user"}, 1)
            )
        return vector(*out)

    return answer


def run(url: str, job_id: str = "77", **kw: Any) -> Any:
    client = PrometheusClient(ClientConfig(url=url, retries=0))
    return gather(client, Options(job_id=job_id, as_of=AS_OF, **kw))


# -- batching: three requests whatever the size --------------------------------------------
@pytest.mark.parametrize(("nodes", "gpus"), [(1, 0), (1, 8), (64, 8)])
def test_three_requests_per_report(
    fake: Callable[[Answer], FakePrometheus], nodes: int, gpus: int
) -> None:
    api = fake(job(nodes, gpus))
    report = run(api.url)
    assert [e for e, _ in api.requests] == ["query_range", "query", "query"]
    assert len(report.queries) == 3
    assert len(report.node_usage) == nodes and len(report.gpus) == nodes * gpus
    assert report.window is not None and report.window.seconds == T1 - T0
    assert report.cluster == "c1"
    figures = api.requests[2][1]["query"]
    # one branch per figure, not per series: node names appear only inside one regex
    branches = re.findall(r'"figure", "(\w+)"', figures)
    assert len(branches) == len(set(branches)) < 40
    # (the node regex: in the three GPU branches and the three alert branches)
    assert figures.count("gpu000") == 6
    assert 'cluster="c1"' in figures and 'job_id="77"' in figures
    # every figure pinned to its own time; the query itself at the report's time
    assert all(float(form["time"]) == AS_OF for _, form in api.requests[1:])
    assert f"@ {T1:.3f}" in figures


def test_the_figures_of_a_job_on_many_nodes(fake: Callable[[Answer], FakePrometheus]) -> None:
    report = run(fake(job(3, 2)).url)
    assert [n.node for n in report.node_usage] == ["gpu000", "gpu001", "gpu002"]
    assert report.node_usage[0].cpu_seconds == 3600.0
    g = report.gpus[0]
    assert (g.node, g.gpu, g.utilization_mean, g.memory_peak_bytes) == ("gpu000", "0", 0.25, 2**33)
    assert report.slurm.partition.value == "gpu"
    assert report.slurm.queue_wait_seconds.value == 42.0
    assert report.slurm.state.value == "failed" and report.slurm.cause.value == "user"
    assert {f.key for f in report.findings} >= {"gpu_idle", "gpu_memory_low", "outcome"}


def test_a_running_job_asks_for_no_end(fake: Callable[[Answer], FakePrometheus]) -> None:
    api = fake(job(1, 1, live=True))
    report = run(api.url)
    assert '"ends"' not in api.requests[2][1]["query"]
    assert report.window is not None and report.window.live
    assert report.slurm.state.value == "running"
    assert report.slurm.cause.value is None and report.slurm.cause.source == "the job is running"


def test_unknown_job_is_one_request(fake: Callable[[Answer], FakePrometheus]) -> None:
    api = fake(job(1, 1, run=False))
    with pytest.raises(JobNotFound, match=r"job 77: no series of it in Prometheus.*retention"):
        run(api.url)
    assert len(api.requests) == 1
    query = api.requests[0][1]["query"]
    for metric in ("hpcobs_job_processes", "hpcobs_gpu_job_info", "hpcobs_slurm_job_failed_info"):
        assert f'{metric}{{job_id="77"}}' in query


def test_a_job_only_slurm_saw_fail(fake: Callable[[Answer], FakePrometheus]) -> None:
    api = fake(job(1, 0, run=False, failed=True))
    report = run(api.url)
    assert len(api.requests) == 2
    assert report.window is None and report.node_usage == ()
    assert report.slurm.state.value == "failed" and report.slurm.exit_code.value == "2:0"
    assert report.slurm.queue_wait_seconds.value is None
    assert "no process or GPU of the job was ever sampled" in report.notes[0]


def test_a_job_id_in_two_clusters_needs_cluster(fake: Callable[[Answer], FakePrometheus]) -> None:
    api = fake(job(2, 0, clusters=("east", "west")))
    with pytest.raises(AmbiguousJob, match=r"east, west.*--cluster"):
        run(api.url)
    api = fake(job(2, 0, clusters=("east", "west")))
    report = run(api.url, cluster="west")
    assert 'cluster="west"' in api.requests[0][1]["query"]
    assert report.cluster == "west"


# -- the command line --------------------------------------------------------------------
def test_cli_unknown_job_is_one_line_and_exit_2(
    fake: Callable[[Answer], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    api = fake(job(1, 0, run=False))
    assert cli.main(["report", "77", f"--prometheus.url={api.url}", "--time=1700100000"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("hpcobs-job: job 77: no series")


def test_cli_formats_and_output_file(
    fake: Callable[[Answer], FakePrometheus], capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    api = fake(job(1, 1))
    base = ["report", "77", f"--prometheus.url={api.url}"]
    assert cli.main([*base, "--format=json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["job_id"] == "77" and len(doc["queries"]) == 3
    target = tmp_path / "job.html"
    assert cli.main([*base, "--format=html", "-o", str(target)]) == 0
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert cli.main(base) == 0
    assert capsys.readouterr().out.startswith("Job 77 · cluster c1 · as of ")


@pytest.mark.parametrize("bad", ['1"} or vector(1) #', "a b", "", "x" * 129])
def test_cli_rejects_job_ids_that_are_not_ids(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", bad, "--prometheus.url=http://127.0.0.1:1"])
    assert exc.value.code == 2
    assert "invalid job id" in capsys.readouterr().err


def test_cli_unreachable_prometheus_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["report", "7", "--prometheus.url=http://127.0.0.1:1", "--query.retries=0"]
    assert cli.main(argv) == 1
    assert "cannot reach" in capsys.readouterr().err


# -- PromQL building blocks --------------------------------------------------------------
def test_label_values_are_quoted_and_escaped() -> None:
    assert q.regex_union(["gpu-01.a", "b+c", "gpu-01.a"]) == r"b\+c|gpu\-01\.a"
    assert q.quote(r"b\+c") == r'"b\\+c"'
    sel = q.Selectors("7", cluster='we"ird')
    assert sel.job("m") == r'm{cluster="we\"ird",job_id="7"}'
    assert sel.cluster_wide("m") == r'm{cluster="we\"ird"}'
    assert q.Selectors("7").cluster_wide("m") == "m"


def test_durations_are_whole_milliseconds() -> None:
    assert q.duration(0) == "1ms"
    assert q.duration(1.5) == "1500ms"
    assert q.duration(0.0011) == "2ms"


@given(st.floats(1e9, 2e9), st.floats(60, 400 * 86400))
def test_locate_grid(as_of: float, search: float) -> None:
    start, end, step = q.locate_grid(as_of, search)
    points = (end - start) / step + 1
    assert step >= 60 and step == int(step) and start == int(start)
    assert points <= 1000 and points == int(points)
    assert as_of <= end < as_of + 1
    assert end - start + step >= search  # the buckets cover the search range


# -- Slurm facts from the exporter's counters --------------------------------------------
def s(figure: str, value: float, **labels: str) -> Sample:
    return Sample({"figure": figure, **labels}, value)


def facts(*samples: Sample, live: bool = False) -> Any:
    figs: dict[str, list[Sample]] = {}
    for x in samples:
        figs.setdefault(x.labels["figure"], []).append(x)
    return slurm_facts(figs, 120.0, live, has_window=True)


END = {"partition": "gpu", "state": "completed", "cause": "none"}


def test_one_start_and_one_end_next_to_the_job_are_its_own() -> None:
    slurm, notes = facts(
        s("starts", 1, partition="gpu"),
        s("starts", 0, partition="cpu"),
        s("waits", 30, partition="gpu"),
        s("ends", 1, **END),
        s("allocated", 720, partition="gpu", state="completed", resource="cpu"),
        s("allocated", 5, partition="cpu", state="completed", resource="cpu"),
    )
    assert notes == ()
    assert slurm.partition.value == "gpu" and "only job start" in slurm.partition.source
    assert slurm.queue_wait_seconds.value == 30
    assert (slurm.state.value, slurm.cause.value, slurm.exit_code.value) == (
        "completed",
        "none",
        "0",
    )
    assert slurm.allocated == {"cpu": 720}


def test_several_starts_nearby_leave_the_wait_unknown() -> None:
    slurm, _ = facts(s("starts", 2, partition="gpu"), s("waits", 30, partition="gpu"))
    assert slurm.queue_wait_seconds.value is None
    assert "2 job starts counted" in slurm.queue_wait_seconds.source
    assert slurm.partition.value is None and slurm.state.value is None
    assert slurm.exit_code.value is None


def test_a_reset_counter_is_no_evidence() -> None:
    slurm, _ = facts(
        s("starts", -5, partition="gpu"), s("starts", 1, partition="cpu"), s("ends", -3, **END)
    )
    assert slurm.queue_wait_seconds.value is None and "reset" in slurm.queue_wait_seconds.source
    assert slurm.state.value is None and "reset" in str(slurm.state.source)


def test_the_failed_job_record_wins_and_exposes_a_wrong_inference() -> None:
    slurm, notes = facts(
        s("failed_info", 1, partition="gpu", state="failed", exit_code="1:0"),
        s("starts", 1, partition="cpu"),
        s("ends", 1, **END),
    )
    assert (slurm.partition.value, slurm.state.value, slurm.exit_code.value) == (
        "gpu",
        "failed",
        "1:0",
    )
    assert slurm.cause.value is None and slurm.queue_wait_seconds.value is None
    assert len(notes) == 2


def test_a_start_and_an_end_in_different_partitions_are_both_dropped() -> None:
    slurm, notes = facts(
        s("starts", 1, partition="cpu"), s("waits", 3, partition="cpu"), s("ends", 1, **END)
    )
    assert slurm.partition.value is None and slurm.state.value is None
    assert slurm.queue_wait_seconds.value is None
    assert "different partitions" in notes[0]


def test_a_running_job_has_no_end_yet() -> None:
    slurm, _ = facts(s("starts", 1, partition="gpu"), s("waits", 3, partition="gpu"), live=True)
    assert slurm.state.value == "running" and slurm.partition.value == "gpu"
    assert slurm.cause.value is None and slurm.exit_code.source == "the job is running"
