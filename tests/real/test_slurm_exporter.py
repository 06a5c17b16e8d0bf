"""hpcobs-slurm-exporter against a real Slurm (the harness's private single-node cluster).

The Slurm is the one on PATH: Debian 12's 22.05, or trixie's 24.11 or sid's 26.05 through
scripts/compat/slurm.sh (which runs this file); where versions print different truths, the
tests branch on `cluster.version` and say why.

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

A second test drains node1 while a job runs on one of its CPUs and compares the node,
partition and scheduler (sdiag) metrics with what `sinfo` and `sdiag` say. A third stops
slurmctld: scrapes stay fast, `hpcobs_slurm_up` drops to 0, gauges go after
`--slurm.stale-after`, counters stay.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.runtime import ExporterProcess
from harness.slurm import SlurmCluster, SlurmClusterFactory
from harness.slurm_exporter import Starter, epoch, wait_for

pytestmark = pytest.mark.real

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
    # 64 CPUs on one small node: 22.05 and 26.05 queue the job (pending, PartitionConfig;
    # cancelled below), 24.11 refuses it yet records a FAILED job (reason BadConstraints),
    # which the exporter counts as Slurm's own accounting does: failed, cause user, no
    # resource-time, no queue wait.
    refuses_too_big = cluster.version[:2] == (24, 11)
    too_big = cluster.run("sbatch", "--parsable", "-c", "64", "--wrap=true", check=False)
    if refuses_too_big:
        assert too_big.returncode != 0, too_big.stdout
        assert "Requested node configuration is not available" in too_big.stderr
        out = cluster.run("squeue", "-h", "--states=all", "-o", "%i|%P|%T|%r").stdout
        assert [line.split("|", 1)[1] for line in out.split() if "BadConstraints" in line] == [
            "debug|FAILED|BadConstraints"
        ], out
    else:
        assert too_big.returncode == 0, too_big.stderr
        assert cluster.run(
            "squeue", "-h", "-j", too_big.stdout.strip(), "-o", "%T|%r"
        ).stdout.split() == ["PENDING|PartitionConfig"]
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
        assert pending.get(("debug", "PartitionConfig"), 0) == (0 if refuses_too_big else 1)
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
    if not refuses_too_big:
        cluster.run("scancel", too_big.stdout.strip())
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
    assert sum(finished.values()) == 11 and finished[("ovs", "node_fail", "system")] == 2
    assert finished[("ovs", "timeout", "user")] == 1
    if refuses_too_big:  # exit 3, and the refused -c 64
        assert finished[("debug", "failed", "user")] == 2
    else:  # exit 3; the -c 64 job was cancelled while pending
        assert finished[("debug", "failed", "user")] == 1
        assert finished[("debug", "cancelled", "user")] == 1

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


def sdiag(cluster: SlurmCluster) -> dict[str, int]:
    """The sdiag values this test compares: main cycles, jobs submitted and started, and
    REQUEST_SUBMIT_BATCH_JOB calls."""
    text = cluster.run("sdiag").stdout
    main = text.split("Main schedule statistics", 1)[1]
    values = {
        "cycles": re.search(r"Total cycles:\s*(\d+)", main),
        "submitted": re.search(r"Jobs submitted:\s*(\d+)", text),
        "started": re.search(r"Jobs started:\s*(\d+)", text),
        "submit_rpcs": re.search(r"REQUEST_SUBMIT_BATCH_JOB\s+\(\s*\d+\)\s+count:(\d+)", text),
    }
    assert all(values.values()), text
    return {k: int(m.group(1)) for k, m in values.items() if m}


def test_node_and_scheduler_metrics_match_sinfo_and_sdiag(
    slurm_cluster_factory: SlurmClusterFactory, tmp_path: Path, start_exporter: Starter
) -> None:
    cluster = slurm_cluster_factory(extra_conf=EXTRA_CONF)
    job = cluster.sbatch("sleep 300", "-p", "ovs")
    cluster.wait_job_state(job, "RUNNING")

    def one_cpu_allocated() -> bool:
        # sinfo can show the node's CPUs as before the job (0 allocated, state allocated)
        # until slurmctld refreshes its node data, which `scontrol show node` makes it do.
        cluster.run("scontrol", "show", "node", "node1")
        out = cluster.run("sinfo", "-h", "-N", "-n", "node1", "-O", "CPUsState").stdout
        return out.split()[0].startswith("1/")

    wait_for(one_cpu_allocated, 20, "sinfo showing one CPU of node1 allocated")
    reason = "disk replacement | ticket 42"
    cluster.run("scontrol", "update", "nodename=node1", "state=drain", f"reason={reason}")
    raw = cluster.run("sinfo", "-h", "-N", "-n", "node1", "-O", "StateComplete").stdout.split()
    # One CPU of node1 allocated, the others drained: 22.05 says allocated+drain (no CPU
    # idle), 24.11 and later mixed+drain (not all allocated); the exporter calls both draining.
    partly = cluster.cpus > 1 and cluster.version >= (24, 11)
    assert set(raw) == {"mixed+drain" if partly else "allocated+drain"}, raw
    before = sdiag(cluster)
    exporter = start_exporter(cluster, tmp_path / "exporters", "nodes")
    partitions = ("debug", "batch", "short", "ovs")

    def nodes_match() -> bool:
        samples, _ = scrape(exporter)
        nodes = select(samples, "hpcobs_slurm_nodes", "partition", "state")
        assert nodes == {(p, "draining"): 1 for p in partitions}, nodes
        reasons = select(samples, "hpcobs_slurm_node_reason_info", "node", "state", "reason")
        assert reasons == {("node1", "draining", reason): 1}, reasons
        cpus = select(samples, "hpcobs_slurm_partition_cpus", "partition")
        assert cpus == {(p,): cluster.cpus for p in partitions}, cpus
        allocated = select(samples, "hpcobs_slurm_partition_cpus_allocated", "partition")
        assert allocated == {(p,): 1 for p in partitions}, allocated
        assert select(samples, "hpcobs_slurm_parse_errors_total", "call") == {}
        return True

    wait_for(nodes_match, 20, "node metrics equal to sinfo")
    samples, _ = scrape(exporter)
    after = sdiag(cluster)
    assert before["submitted"] == after["submitted"] == 1
    assert before["started"] == after["started"] == 1
    events = select(samples, "hpcobs_slurm_scheduler_jobs_total", "event")
    assert events[("submitted",)] == 1 and events[("started",)] == 1, events
    rpcs = select(samples, "hpcobs_slurm_rpc_calls_total", "type")
    assert rpcs[("REQUEST_SUBMIT_BATCH_JOB",)] == after["submit_rpcs"] == 1, rpcs
    cycles = select(samples, "hpcobs_slurm_scheduler_cycles_total", "scheduler")
    assert before["cycles"] <= cycles[("main",)] <= after["cycles"], (before, cycles, after)
    assert samples[("hpcobs_slurm_up", ())] == 1


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
