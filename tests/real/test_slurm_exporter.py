"""hpcobs-slurm-exporter against a real Slurm 22.05 (the harness's private single-node cluster).

One cluster runs every scenario at once (the slow one, TIMEOUT, overlaps the others): jobs that
complete, fail (exit 3), are cancelled (running, and while pending), time out, a held array of
1,000 tasks, a job waiting for licenses, and jobs killed by `scontrol update nodename=node1
state=down` (NODE_FAIL). Two exporter processes watch it: one tailing the jobcomp log, one
reading slurmctld only. Both are restarted mid-stream (jobs time out and fail while they are
down); afterwards their finished-job counters must equal the jobcomp log exactly, and their
gauges what `squeue --states=all -r`, `sinfo` and `scontrol show licenses` say.

TIMEOUT comes from slurmctld's own time-limit enforcement: the job runs with `--time=1` and
`scontrol update EndTime=now` moves its end, so the controller's next time-limit check (every
30 s) ends it as TIMEOUT instead of after about 72 s.

A second test stops slurmctld: scrapes stay fast, `hpcobs_slurm_up` drops to 0, gauges go
after `--slurm.stale-after`, counters stay.
"""

from __future__ import annotations

import functools
import os
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.runtime import ExporterProcess
from harness.slurm import SlurmCluster, SlurmClusterFactory

pytestmark = pytest.mark.real

PROGRAM = "hpcobs-slurm-exporter"
CAUSE = {
    "completed": "none",
    "failed": "user",
    "timeout": "user",
    "cancelled": "user",
    "out_of_memory": "user",
    "deadline": "user",
    "node_fail": "system",
    "boot_fail": "system",
    "preempted": "system",
}
EXTRA_CONF = [
    "Licenses=matlab:4",
    # Cores shared by up to 8 jobs: the long-running scenarios run side by side on 2 CPUs.
    "PartitionName=ovs Nodes=node1 OverSubscribe=FORCE:8 MaxTime=INFINITE State=UP",
]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(exporter: ExporterProcess, timeout: float = 10.0) -> tuple[Samples, float]:
    started = time.monotonic()
    with urllib.request.urlopen(exporter.url + "/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    took = time.monotonic() - started
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, took


def select(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """`name`'s values summed by `labels`; series still at 0 (every known partition's counters
    start at 0) are left out, so the result reads as "what was counted"."""
    out: dict[tuple[str, ...], float] = {}
    for (metric, lbls), value in samples.items():
        if metric == name:
            d = dict(lbls)
            key = tuple(d[k] for k in labels)
            out[key] = out.get(key, 0.0) + value
    return {k: v for k, v in out.items() if v}


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s; last: {last}")
        time.sleep(interval)


Starter = Callable[..., ExporterProcess]


@pytest.fixture
def start_exporter() -> Iterator[Starter]:
    """Start hpcobs-slurm-exporter processes on a cluster; all stopped (by PID) at teardown."""
    started: list[ExporterProcess] = []

    def start(cluster: SlurmCluster, workdir: Path, name: str, *extra: str) -> ExporterProcess:
        exporter = _exporter(cluster, workdir, name, *extra)
        started.append(exporter)
        return exporter.start()

    yield start
    for exporter in started:
        exporter.stop()


def _exporter(cluster: SlurmCluster, workdir: Path, name: str, *extra: str) -> ExporterProcess:
    return ExporterProcess(
        PROGRAM,
        [
            f"--slurm.conf={cluster.conf_path}",
            "--slurm.backend=auto",
            "--slurm.poll-interval=1s",
            "--slurm.timeout=5s",
            "--slurm.stale-after=4s",
            f"--slurm.state-file={workdir / f'{name}.state'}",
            *extra,
        ],
        workdir,
    )


def epoch(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp())


def jobcomp_truth(
    cluster: SlurmCluster,
) -> tuple[Counter[tuple[str, str, str]], dict[str, float], Counter[str]]:
    """From the jobcomp log (the harness's own reading of it): finished jobs by (partition,
    state, cause), CPU-seconds by state, and jobs that started (had nodes) by partition."""
    finished: Counter[tuple[str, str, str]] = Counter()
    cpu_seconds: dict[str, float] = {}
    started: Counter[str] = Counter()
    for r in cluster.jobcomp_records():
        state = r["JobState"].lower()
        finished[(r["Partition"], state, CAUSE[state])] += 1
        ran = r["NodeList"] not in ("(null)", "")
        seconds = int(r["ProcCnt"]) * (epoch(r["EndTime"]) - epoch(r["StartTime"])) if ran else 0
        cpu_seconds[state] = cpu_seconds.get(state, 0.0) + seconds
        started[r["Partition"]] += ran
    return finished, cpu_seconds, started


def squeue_truth(cluster: SlurmCluster) -> Counter[tuple[str, str]]:
    """Jobs (one line per array task, `-r`) by first partition and state."""
    out = cluster.run("squeue", "-h", "-r", "--states=all", "-o", "%P|%T").stdout
    return Counter(
        (line.split("|")[0].split(",")[0], line.split("|")[1].lower())
        for line in out.splitlines()
        if line.strip()
    )


def test_job_outcomes_restart_and_ground_truth(
    slurm_cluster_factory: SlurmClusterFactory, tmp_path: Path, start_exporter: Starter
) -> None:
    cluster = slurm_cluster_factory(extra_conf=EXTRA_CONF)
    work = tmp_path / "exporters"
    with_log = start_exporter(
        cluster, work, "with-log", f"--slurm.jobcomp-file={cluster.jobcomp_path}"
    )
    without_log = start_exporter(cluster, work, "without-log", "--slurm.wait-thresholds=5s,1h")

    ok = cluster.sbatch("true")
    failed = cluster.sbatch("exit 3")
    running_cancel = cluster.sbatch("sleep 300", "-p", "ovs")
    pending_cancel = cluster.sbatch("sleep 1", "-p", "ovs", "--hold")
    timeout = cluster.sbatch("sleep 300", "-p", "ovs", "--time=1")
    cluster.sbatch("true", "--array=0-999", "--hold")
    licensed = cluster.sbatch("sleep 300", "-p", "ovs", "-L", "matlab:3")
    license_wait = cluster.sbatch("sleep 300", "-p", "ovs", "-L", "matlab:2")
    node_fail = [cluster.sbatch("sleep 300", "-p", "ovs", "--no-requeue") for _ in range(2)]

    cluster.wait_job_state(ok, "COMPLETED")
    cluster.wait_job_state(failed, "FAILED")
    for job in (running_cancel, timeout, licensed, *node_fail):
        cluster.wait_job_state(job, "RUNNING")
    cluster.run("scancel", str(running_cancel))
    cluster.run("scancel", str(pending_cancel))
    cluster.run("scontrol", "update", f"jobid={timeout}", "EndTime=now")

    # Gauges against slurmctld while the queue holds every kind of job.
    def gauges_match() -> bool:
        samples, _ = scrape(with_log)
        jobs = {
            k: v for k, v in select(samples, "hpcobs_slurm_jobs", "partition", "state").items() if v
        }
        truth = squeue_truth(cluster)
        assert jobs == dict(truth), (jobs, truth)
        pending = select(samples, "hpcobs_slurm_jobs_pending", "partition", "reason")
        assert pending[("debug", "JobHeldUser")] == 1000
        assert pending[("ovs", "Licenses")] == 1
        assert select(samples, "hpcobs_slurm_license_count", "license") == {("matlab",): 4}
        assert select(samples, "hpcobs_slurm_license_used", "license") == {("matlab",): 3}
        assert select(samples, "hpcobs_slurm_license_pending_jobs", "license") == {("matlab",): 1}
        running = sum(v for (p, s), v in truth.items() if s == "running" and p == "ovs")
        cpus = select(samples, "hpcobs_slurm_jobs_allocated_cpus", "partition")
        assert cpus[("ovs",)] == running  # one CPU each
        return True

    wait_for(gauges_match, 20, "gauges equal to squeue --states=all -r")
    samples, _ = scrape(with_log)
    sinfo = cluster.run("sinfo", "-h", "-N", "-o", "%R|%C").stdout.split()
    nodes = select(samples, "hpcobs_slurm_nodes", "partition", "state")
    assert (
        {p for p, _ in nodes}
        == {line.split("|")[0] for line in sinfo}
        == {"debug", "batch", "short", "ovs"}
    )
    part_cpus = select(samples, "hpcobs_slurm_partition_cpus", "partition")
    assert part_cpus == {(line.split("|")[0],): float(line.split("/")[-1]) for line in sinfo}
    assert samples[("hpcobs_slurm_cycle_calls", ())] <= 3
    assert samples[("hpcobs_slurm_up", ())] == 1

    # Mid-stream restart: both exporters go down; meanwhile jobs time out, are killed by a
    # node failure and complete; both come back on their state files.
    wait_for(
        lambda: (
            select(scrape(with_log)[0], "hpcobs_slurm_jobs_finished_total", "state").get(
                ("cancelled",)
            )
            == 2
        ),
        10,
        "both cancellations counted before the restart",
    )
    with_log.stop()
    without_log.stop()
    cluster.wait_job_state(timeout, "TIMEOUT", timeout=45)
    cluster.run("scancel", str(licensed))
    cluster.run("scancel", str(license_wait))
    cluster.wait_job_state(licensed, "CANCELLED")
    cluster.run("scontrol", "update", "nodename=node1", "state=down", "reason=hpcobs test")
    for job in node_fail:
        cluster.wait_job_state(job, "NODE_FAIL")
    cluster.run("scontrol", "update", "nodename=node1", "state=resume", check=False)
    wait_for(lambda: cluster.node_state() in ("idle", "mixed"), 30, "node1 back in service")
    late = cluster.sbatch("true")
    cluster.wait_job_state(late, "COMPLETED")
    with_log = start_exporter(
        cluster, work, "with-log", f"--slurm.jobcomp-file={cluster.jobcomp_path}"
    )
    without_log = start_exporter(cluster, work, "without-log", "--slurm.wait-thresholds=5s,1h")

    finished, cpu_seconds, started = jobcomp_truth(cluster)
    assert sum(finished.values()) == 10 and finished[("ovs", "node_fail", "system")] == 2
    assert finished[("ovs", "timeout", "user")] == 1 and finished[("debug", "failed", "user")] == 1

    def counters_match(exporter: ExporterProcess) -> bool:
        samples, _ = scrape(exporter)
        got = select(samples, "hpcobs_slurm_jobs_finished_total", "partition", "state", "cause")
        assert got == dict(finished), (got, finished)
        cpu = select(samples, "hpcobs_slurm_job_resource_seconds_total", "state", "resource")
        assert {s: v for (s, r), v in cpu.items() if r == "cpu"} == {
            s: v for s, v in cpu_seconds.items() if v
        }
        waits = select(samples, "hpcobs_slurm_job_queue_wait_seconds_count", "partition")
        assert waits == {(p,): float(n) for p, n in started.items() if n}
        return True

    for exporter in (with_log, without_log):
        wait_for(functools.partial(counters_match, exporter), 20, f"{exporter.address}: counters")
    # Still exact a few cycles later (nothing counted twice).
    time.sleep(2.5)
    for exporter in (with_log, without_log):
        assert counters_match(exporter)

    # Waits past 5 s (exporter without the log): every job whose eligible wait, until it
    # started or (never started) ended, reached 5 s; the held array has no eligible time.
    waited: Counter[str] = Counter()
    for r in cluster.jobcomp_records():
        if r["EligibleTime"] in ("unknown", "Unknown"):
            continue
        ran = r["NodeList"] not in ("(null)", "")
        until = epoch(r["StartTime"]) if ran else epoch(r["EndTime"])
        if until - epoch(r["EligibleTime"]) >= 5:
            waited[r["Partition"]] += 1
    samples, _ = scrape(without_log)
    exceeded = select(samples, "hpcobs_slurm_jobs_wait_exceeded_total", "partition", "threshold")
    assert waited["ovs"] >= 1  # at least the job that waited for licenses
    assert {p: v for (p, t), v in exceeded.items() if t == "5"} == dict(waited)
    assert not any(t == "3600" for _, t in exceeded)


def watch(exporter: ExporterProcess, seconds: float, until: Callable[[Samples], bool]) -> float:
    """Scrape every 0.2 s until `until(samples)` (failing after `seconds`); the slowest scrape."""
    deadline = time.monotonic() + seconds
    slowest = 0.0
    while True:
        samples, took = scrape(exporter, timeout=5)
        slowest = max(slowest, took)
        if until(samples):
            return slowest
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {seconds:g} s")
        time.sleep(0.2)


def up(samples: Samples) -> float:
    return samples[("hpcobs_slurm_up", ())]


def test_slurmctld_slow_or_down_scrapes_stay_fast(
    slurm_cluster_factory: SlurmClusterFactory, tmp_path: Path, start_exporter: Starter
) -> None:
    cluster = slurm_cluster_factory()
    cluster.sbatch("true")
    exporter = start_exporter(cluster, tmp_path / "exporters", "down", "--slurm.timeout=2s")
    watch(
        exporter,
        20,
        lambda s: bool(select(s, "hpcobs_slurm_jobs_finished_total", "state")) and up(s) == 1,
    )

    # Slow: slurmctld frozen (SIGSTOP); calls time out after --slurm.timeout.
    pid = cluster.slurmctld_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        slowest = watch(exporter, 15, lambda s: up(s) == 0)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert slowest < 0.5, f"a scrape took {slowest:.2f} s while slurmctld was frozen"
    watch(exporter, 20, lambda s: up(s) == 1)

    # Down: stopped. up 0, gauges dropped after --slurm.stale-after, counters kept.
    cluster.stop_slurmctld()

    def gauges_gone(samples: Samples) -> bool:
        return up(samples) == 0 and not select(samples, "hpcobs_slurm_jobs", "partition", "state")

    slowest = watch(exporter, 15, gauges_gone)
    assert slowest < 0.5, f"a scrape took {slowest:.2f} s while slurmctld was down"
    samples, _ = scrape(exporter)
    assert select(samples, "hpcobs_slurm_jobs_finished_total", "state") == {("completed",): 1}
    assert samples[("hpcobs_slurm_cycles_total", (("result", "failure"),))] >= 1
    cluster.start_slurmctld()
    watch(exporter, 20, lambda s: up(s) == 1)
