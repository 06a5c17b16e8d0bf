"""`hpcobs-job report` against the e2e stack (tests/harness/stack.py): a Slurm job on the
private cluster whose processes the jobs collector attributes, that holds two fake GPUs,
owns a job of the Lustre fixture's job_stats, records two checkpoints (one failing) through
the Pushgateway, sees an XID storm alert on its node, and ends FAILED.

Every figure the report prints is compared with a direct PromQL query: one series at a
time, raw samples for times, no `or`, no `label_replace`. The expected report is built from
those answers (and Slurm's own view of the job) and rendered; the printed text must equal it
character for character, and the JSON figures must equal the answers."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcobs.slo.jobreport import findings as findings_mod
from hpcobs.slo.jobreport.gather import alert_order
from hpcobs.slo.jobreport.model import (
    Alert,
    CheckpointStream,
    Fact,
    GpuUsage,
    JobReport,
    LustreUsage,
    NodeUsage,
    Query,
    Slurm,
    Window,
)
from hpcobs.slo.jobreport.queries import RECORD_LABELS
from hpcobs.slo.jobreport.render import render_text

from harness.servers import PrometheusFactory
from harness.slurm import SlurmCluster
from harness.stack import BIN, CLUSTER, Suite

pytestmark = pytest.mark.real

MATCH = 15.0  # --slurm.match-window: the stack scrapes and polls every second
SETTLE = 120.0  # --settle (default)
FIXTURE_JOB = "43"  # a job of the Lustre fixture: 21711745024 bytes written to OST0000
FIXTURE_WRITE_BYTES = 21_711_745_024


@pytest.fixture
def suite(
    tmp_path: Path, slurm_cluster_factory: Callable[..., SlurmCluster], fixture_trees: Path
) -> Iterator[Suite]:
    # job ids of its own: the jobs collector reads this machine's /proc, where other private
    # clusters (other tests running at the same time) may run a job 1 too
    cluster = slurm_cluster_factory(extra_conf=[f"FirstJobId={random.randint(10**6, 5 * 10**7)}"])
    running = Suite(tmp_path / "suite", cluster, fixture_trees)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def report(suite: Suite, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcobs.slo.jobreport",
            "report",
            *args,
            f"--prometheus.url={suite.prometheus.url}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def job_script(suite: Suite, may_end: Path) -> str:
    """Two seconds of CPU, a checkpoint that succeeds and one that fails, then wait for the
    test and fail (exit 3)."""
    # SLURM_CLUSTER_NAME is pushed as `cluster`: the stack's targets carry the same name
    ckpt = (
        f"{BIN / 'hpcobs-checkpoint'} run --name model --pushgateway.url {suite.pushgateway.url}"
        f" --state.directory {suite.workdir / 'checkpoint-state'}"
    )
    return (
        "#!/bin/sh\n"
        f"{sys.executable} -c 'import time\nt = time.time()\nwhile time.time() - t < 2: pass'\n"
        f"{ckpt} -- sleep 1\n"
        f"{ckpt} -- sh -c 'sleep 0.3; exit 1'\n"
        f"while [ ! -e {may_end} ]; do sleep 0.1; done\n"
        "exit 3\n"
    )


def give_fixture_job_to(node_root: Path, old: str, new: str) -> None:
    """The Lustre fixture's job `old` becomes job `new` in the node's copy of the tree."""
    changed = 0
    for path in sorted((node_root / "proc" / "fs" / "lustre").glob("*/*/job_stats")):
        text = path.read_text()
        renamed = re.sub(rf"^(- job_id:\s+){old}$", rf"\g<1>{new}", text, flags=re.M)
        if renamed != text:
            path.write_text(renamed)
            changed += 1
    assert changed == 2, "job 43 is on OST0000 and MDT0000 in the fixture"


def ms(seconds: float) -> str:
    return f"{round(seconds * 1000) + 1}ms"


class Direct:
    """Direct queries: one series at a time."""

    def __init__(self, suite: Suite) -> None:
        self.prom = suite.prometheus

    def value(self, expr: str, at: float) -> float:
        return self.prom.query_value(expr, at)

    def maybe(self, expr: str, at: float) -> float | None:
        result = self.prom.query(expr, at)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def vector(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        return [(r["metric"], float(r["value"][1])) for r in self.prom.query(expr, at)]

    def stamps(self, expr: str, at: float) -> list[tuple[dict[str, str], list[float]]]:
        """Raw sample times of a range selector."""
        return [
            (r["metric"], [float(t) for t, _ in r["values"]]) for r in self.prom.query(expr, at)
        ]


def sel(metric: str, **labels: str) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def test_every_printed_figure_equals_a_direct_query(suite: Suite) -> None:
    prom = suite.prometheus
    prom.wait_for("count(up == 1) == 5", timeout=60)
    # the Slurm exporter's counters must have samples from before the job's start window
    prom.wait_for(
        f'hpcobs_slurm_job_queue_wait_seconds_count{{partition="debug"}} offset {MATCH + 2:g}s',
        timeout=60,
    )
    may_end = suite.workdir / "job-may-end"
    job = suite.slurm.sbatch(job_script(suite, may_end), "--no-requeue", "--partition=debug")
    jid = str(job)
    assert jid != FIXTURE_JOB
    suite.slurm.wait_job_state(job, {"RUNNING"}, timeout=60)
    suite.map_gpus_to_jobs({0: job, 1: job})  # what a prolog writes
    give_fixture_job_to(suite.node_root, FIXTURE_JOB, jid)
    prom.wait_for(sel("hpcobs_checkpoints_total", job_id=jid, result="failure"), timeout=60)
    # the job now waits in its shell: NVML shows its processes on GPUs 0 and 1
    pids = sorted(suite.slurm.job_processes())
    assert pids
    suite.gpu_processes.write_text(
        "".join(f"{i % 2} {pid} {(i + 1) * 2**28}\n" for i, pid in enumerate(pids))
    )
    prom.wait_for(sel("hpcobs_gpu_job_memory_used_bytes", job_id=jid), timeout=30)
    prom.wait_for(sel("hpcobs_lustre_job_write_bytes_total", job_id=jid), timeout=30)
    prom.wait_for(sel("hpcobs_job_cpu_seconds_total", job_id=jid) + " > 0", timeout=30)
    suite.xid_burst()  # a failure on its node during the run
    prom.wait_for(
        sel("ALERTS", alertname="HpcobsGPUXidStorm", alertstate="firing", node="node1"),
        timeout=60,
    )

    running = report(suite, jid, "--format=json", f"--slurm.match-window={MATCH:g}s")
    assert running.returncode == 0, running.stderr
    live = json.loads(running.stdout)
    assert live["window"]["live"] is True
    assert live["slurm"]["state"]["value"] == "running"

    may_end.touch()
    assert suite.slurm.wait_job_state(job, {"FAILED"}, timeout=60) == "FAILED"
    for gpu in (0, 1):  # what the epilog does
        (suite.gpu_jobs / str(gpu)).unlink()
    suite.gpu_processes.write_text("")
    prom.wait_for('sum(hpcobs_slurm_jobs_finished_total{state="failed"}) == 1', timeout=60)
    # gone for good: a single failed scrape also makes every series of its target absent
    prom.wait_for(
        f"absent_over_time({sel('hpcobs_job_processes', job_id=jid)}[5s]) "
        f"and absent_over_time({sel('hpcobs_gpu_job_info', job_id=jid)}[5s])",
        timeout=60,
    )
    time.sleep(3)  # a past time whose scrapes have all landed: every run reads the same data
    as_of = time.time() - 2

    args = [jid, f"--time={as_of}", f"--slurm.match-window={MATCH:g}s"]
    out = {fmt: report(suite, *args, f"--format={fmt}") for fmt in ("text", "json", "html")}
    for fmt, result in out.items():
        assert result.returncode == 0, (fmt, result.stderr)
    doc: dict[str, Any] = json.loads(out["json"].stdout)
    printed = out["text"].stdout

    d = Direct(suite)
    # -- the run window: raw sample times of its processes and GPUs ----------------------
    stamps = [
        t
        for metric in ("hpcobs_job_processes", "hpcobs_gpu_job_info")
        for _, ts in d.stamps(sel(metric, job_id=jid) + "[1h]", as_of)
        for t in ts
    ]
    t0, t1 = min(stamps), max(stamps)
    assert doc["window"]["first"] == pytest.approx(t0, abs=1e-6)
    assert doc["window"]["last"] == pytest.approx(t1, abs=1e-6)
    assert doc["window"]["live"] is False
    run, settled = ms(t1 - t0), min(t1 + SETTLE, as_of)
    run_settled = ms(settled - t0)

    # -- per node ---------------------------------------------------------------------------
    cpu = d.value(
        f"max_over_time({sel('hpcobs_job_cpu_seconds_total', job_id=jid, node='node1')}[{run}])", t1
    )
    mem = d.value(
        f"max_over_time({sel('hpcobs_job_memory_bytes', job_id=jid, node='node1')}[{run}])", t1
    )
    assert doc["nodes"] == [
        {
            "node": "node1",
            "cpu_seconds": pytest.approx(cpu),
            "memory_peak_bytes": pytest.approx(mem),
        }
    ]

    # -- GPUs -------------------------------------------------------------------------------
    held = {
        m["gpu"]: m["uuid"]
        for m, _ in d.vector(
            f"count_over_time({sel('hpcobs_gpu_job_info', job_id=jid)}[{run}])", t1
        )
    }
    assert sorted(held) == ["0", "1"]
    gpus = []
    for gpu, uuid in sorted(held.items()):
        one = {"node": "node1", "gpu": gpu}
        gpus.append(
            GpuUsage(
                "node1",
                gpu,
                uuid,
                d.value(f"avg_over_time({sel('hpcobs_gpu_utilization_ratio', **one)}[{run}])", t1),
                d.value(f"max_over_time({sel('hpcobs_gpu_utilization_ratio', **one)}[{run}])", t1),
                d.value(
                    f"max_over_time({sel('hpcobs_gpu_job_memory_used_bytes', job_id=jid, gpu=gpu)}[{run}])",
                    t1,
                ),
                d.value(f"max_over_time({sel('hpcobs_gpu_memory_total_bytes', **one)}[{run}])", t1),
            )
        )
    assert [(g["gpu"], g["uuid"]) for g in doc["gpus"]] == [(g.gpu, g.uuid) for g in gpus]
    for got, want in zip(doc["gpus"], gpus, strict=True):
        assert got["utilization_mean"] == pytest.approx(want.utilization_mean)
        assert got["utilization_max"] == pytest.approx(want.utilization_max)
        assert got["memory_peak_bytes"] == pytest.approx(want.memory_peak_bytes)
        assert got["memory_total_bytes"] == pytest.approx(want.memory_total_bytes)

    # -- Lustre: per target, summed here ---------------------------------------------------
    def per_target(metric: str) -> list[tuple[dict[str, str], float]]:
        return d.vector(f"max_over_time({sel(metric, job_id=jid)}[{run_settled}])", settled)

    read = sum(v for _, v in per_target("hpcobs_lustre_job_read_bytes_total"))
    write = sum(v for _, v in per_target("hpcobs_lustre_job_write_bytes_total"))
    assert write == FIXTURE_WRITE_BYTES  # and the fixture agrees with Prometheus
    ops: dict[str, float] = defaultdict(float)
    for labels, v in per_target("hpcobs_lustre_job_operations_total"):
        ops[labels["operation"]] += v
    assert ops["setattr"] == 1  # MDT0000's job_stats of job 43
    lustre = LustreUsage("lustrefs", read, write, dict(sorted(ops.items())), 0)
    assert doc["lustre"] == [
        {
            "fs": "lustrefs",
            "read_bytes": pytest.approx(read),
            "write_bytes": pytest.approx(write),
            "operations": pytest.approx(lustre.operations),
            "counter_resets": 0,
        }
    ]

    # -- checkpoints ----------------------------------------------------------------------
    stream = {"job_id": jid, "name": "model"}
    ckpt = CheckpointStream(
        "node1",
        "model",
        {
            result: d.value(
                f"max_over_time({sel('hpcobs_checkpoints_total', result=result, **stream)}[{run_settled}])",
                settled,
            )
            for result in ("failure", "success")
        },
        d.value(
            f"max_over_time({sel('hpcobs_checkpoint_seconds_total', **stream)}[{run_settled}])",
            settled,
        ),
        d.value(
            f"max_over_time({sel('hpcobs_checkpoint_duration_seconds', **stream)}[{run_settled}])",
            settled,
        ),
        d.value(
            f"last_over_time({sel('hpcobs_checkpoint_duration_seconds', **stream)}[{run_settled}])",
            settled,
        ),
    )
    assert ckpt.attempts == {"failure": 1, "success": 1}
    assert doc["checkpoints"] == [
        {
            "node": "node1",
            "name": "model",
            "attempts": ckpt.attempts,
            "seconds_total": pytest.approx(ckpt.seconds_total),
            "longest_seconds": pytest.approx(ckpt.longest_seconds),
            "last_seconds": pytest.approx(ckpt.last_seconds),
        }
    ]

    # -- alerts on node1 (or naming the job) firing in the window: raw samples ----------------
    firing = d.stamps(sel("ALERTS", alertstate="firing", node="node1") + f"[{run}]", t1) + d.stamps(
        sel("ALERTS", alertstate="firing", job_id=jid) + f"[{run}]", t1
    )
    alerts = []
    for labels, ts in firing:
        key = {k: v for k, v in labels.items() if k not in ("__name__", "alertstate")}
        since = [
            v for _, v in d.vector(f"min_over_time({sel('ALERTS_FOR_STATE', **key)}[{run}])", t1)
        ]
        alerts.append(
            Alert(
                key["alertname"],
                key.get("severity", ""),
                {k: v for k, v in key.items() if k not in ("alertname", "severity")},
                min(since) if since else None,
                max(ts),
            )
        )
    alerts.sort(key=alert_order)
    assert "HpcobsGPUXidStorm" in {a.alertname for a in alerts}
    assert [(a["alertname"], a["labels"]) for a in doc["alerts"]] == [
        (a.alertname, dict(a.labels)) for a in alerts
    ]
    for got, want in zip(doc["alerts"], alerts, strict=True):
        assert got["active_since"] == pytest.approx(want.active_since)
        assert got["last_firing"] == pytest.approx(want.last_firing, abs=1e-6)

    # -- Slurm: Slurm's own record, and the exporter's series of this (the only) job --------
    record = d.vector(
        f"max_over_time({sel('hpcobs_slurm_job_failed_info', job_id=jid)}[{run_settled}])", settled
    )
    assert d.value('sum(hpcobs_slurm_job_queue_wait_seconds_count{partition="debug"})', as_of) == 1
    wait = d.value('hpcobs_slurm_job_queue_wait_seconds_sum{partition="debug"}', as_of)
    ended = [(m, v) for m, v in d.vector("hpcobs_slurm_jobs_finished_total != 0", as_of)]
    assert len(ended) == 1 and ended[0][1] == 1, ended
    end_labels = ended[0][0]
    assert (end_labels["partition"], end_labels["state"], end_labels["cause"]) == (
        "debug",
        "failed",
        "user",
    )
    allocated = {
        m["resource"]: v
        for m, v in d.vector(
            'hpcobs_slurm_job_resource_seconds_total{partition="debug",state="failed"} != 0',
            as_of,
        )
    }
    got = doc["slurm"]
    failed_record = record[0][0] if record else None
    state = failed_record["state"] if failed_record else "failed"
    exit_code = failed_record["exit_code"] if failed_record else None
    assert got["partition"]["value"] == "debug"
    assert got["state"]["value"] == state
    assert got["cause"]["value"] == "user"
    assert got["exit_code"]["value"] == exit_code
    assert got["queue_wait_seconds"]["value"] == pytest.approx(wait)
    assert got["allocated_resource_seconds"] == pytest.approx(allocated)
    slurm_record = {
        k: failed_record[k] for k in RECORD_LABELS if failed_record and failed_record.get(k)
    }
    assert got["record"] == slurm_record
    if failed_record:  # the exporter's failed-job list (issue 17) has the job
        assert slurm_record["nodes"] == "node1"

    # -- the printed text: the expected report from the answers above, rendered ------------
    def fact(key: str, value: Any) -> Fact[Any]:
        return Fact(value, got[key]["source"])  # sources are prose, not figures

    expected = JobReport(
        job_id=jid,
        cluster=CLUSTER,
        as_of=as_of,
        prometheus=suite.prometheus.url.rstrip("/"),
        window=Window(t0, t1, live=False),
        nodes=("node1",),
        slurm=Slurm(
            partition=fact("partition", "debug"),
            state=fact("state", state),
            cause=fact("cause", "user"),
            exit_code=fact("exit_code", exit_code),
            queue_wait_seconds=fact("queue_wait_seconds", wait),
            allocated=allocated,
            allocated_source=got["allocated_source"] or "",
            record=slurm_record,
        ),
        node_usage=(NodeUsage("node1", cpu, mem),),
        gpus=tuple(gpus),
        lustre=(lustre,),
        checkpoints=(ckpt,),
        alerts=tuple(alerts),
        queries=tuple(Query(q["kind"], q["expr"]) for q in doc["queries"]),
        notes=tuple(doc["notes"]),
    )
    expected = dataclasses.replace(expected, findings=findings_mod.findings(expected))
    assert printed == render_text(expected)

    # the findings the issue names, in words
    keys = {f["key"] for f in doc["findings"]}
    assert {"gpu_idle", "checkpoint_share", "cpu_efficiency", "alerts", "outcome"} <= keys, keys
    assert len(doc["queries"]) == 3

    # the page has the same figures, escaped
    page = out["html"].stdout
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    for g in gpus:
        assert g.uuid in page
    assert "HpcobsGPUXidStorm" in page


def test_unknown_job_is_one_line_and_exit_2(prometheus_factory: PrometheusFactory) -> None:
    prom = prometheus_factory()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpcobs.slo.jobreport",
            "report",
            "987654",
            f"--prometheus.url={prom.url}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "987654" in lines[0] and "retention" in lines[0]
