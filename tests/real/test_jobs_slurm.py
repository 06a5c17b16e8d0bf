"""Job attribution against a real single-node Slurm 22.05 (tests/harness/slurm.py).

The test cluster runs `ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none`, so this
machine has no per-job cgroups: a job's processes are recognised the way linuxproc itself
tracks them, as descendants of the job's `slurmstepd: [<job>.<step>]` (and, as a fallback,
by `SLURM_JOB_ID` in their environment). The cgroup path is still tested on real processes:
`test_cgroup_v2_hierarchy_built_from_the_running_job` builds a cgroup-v2 hierarchy fixture
tree (Slurm's `cgroup/v2` layout) around the running job's real /proc files and checks the
collector attributes them through their cgroup files. Should the machine have per-job
cgroups, the first test checks that the cgroup source is the one used.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.exporters.attribution import JobAttributor
from hpcobs.exporters.collectors.jobs import JobsCollector
from hpcobs.exporters.parse.cgroup import slurm_job_from_cgroup
from hpcobs.exporters.sources.procfs import PsutilSampler

from harness.runtime import ExporterProcess
from harness.slurm import SlurmCluster, SlurmClusterFactory

pytestmark = pytest.mark.real

# The Slurm fixtures (`slurm_cluster`); registered once even if tests/conftest.py lists them.
pytest_plugins = ["harness.slurm"]

SCRIPT = """#!/bin/bash
sleep 300 &
echo $! >> {pids}
{python} -c 'import time; x = bytearray(24 << 20); time.sleep(300)' &
echo $! >> {pids}
echo $$ >> {pids}
wait
"""


@pytest.fixture
def cluster(slurm_cluster_factory: SlurmClusterFactory) -> SlurmCluster:
    """A private cluster whose job ids start at a random large number: other engineers' test
    clusters on this machine number their jobs from 1, and the collector (rightly) cannot
    tell two clusters' job 1 apart."""
    return slurm_cluster_factory(extra_conf=[f"FirstJobId={random.randint(10**6, 6 * 10**7)}"])


def submit(cluster: SlurmCluster, tmp_path: Path) -> tuple[int, set[int]]:
    """A running batch job and the PIDs its script reported (itself and two children)."""
    pids_file = tmp_path / "job-pids"
    job = cluster.sbatch(
        SCRIPT.format(pids=pids_file, python=sys.executable),
        "--no-requeue",
        f"--output={tmp_path / 'job.out'}",
    )
    cluster.wait_job_state(job, "RUNNING", timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pids_file.exists() and len(pids_file.read_text().split()) == 3:
            break
        time.sleep(0.05)
    pids = {int(p) for p in pids_file.read_text().split()}
    assert len(pids) == 3, pids_file.read_text()
    return job, pids


def stepd_pids(job: int) -> set[int]:
    """The job's slurmstepd processes, found by their process title."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.match(rf"slurmstepd: \[{job}\.", title):
            found.add(int(cmdline.parent.name))
    return found


def listpids(cluster: SlurmCluster, job: int) -> set[int]:
    """`scontrol listpids`: the PIDs Slurm's own proctrack plugin holds for the job."""
    out = cluster.run("scontrol", "listpids", str(job)).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if line.split()}


def stable_listpids(cluster: SlurmCluster, job: int) -> set[int]:
    """`listpids` once two reads 0.2 s apart agree (a job's start-up forks come and go)."""
    before = listpids(cluster, job)
    for _ in range(50):
        time.sleep(0.2)
        now = listpids(cluster, job)
        if now == before:
            return now
        before = now
    raise AssertionError(f"the job's processes keep changing: {sorted(before)}")


def test_sbatch_job_processes_are_attributed(cluster: SlurmCluster, tmp_path: Path) -> None:
    job, script_pids = submit(cluster, tmp_path)
    stepds = stepd_pids(job)
    assert stepds, "no slurmstepd for the job"
    tracked = stable_listpids(cluster, job)
    assert script_pids <= tracked

    per_job_cgroups = any(
        slurm_job_from_cgroup(Path(f"/proc/{pid}/cgroup").read_text()) for pid in script_pids
    )
    for environ_fallback in (True, False):
        found = JobAttributor("/proc", environ_fallback=environ_fallback).attribute()
        mine = {pid: a for pid, a in found.items() if a.job_id == str(job)}
        # exactly the job's processes: those Slurm tracks plus its slurmstepd(s)
        assert set(mine) == tracked | stepds, (sorted(mine), sorted(tracked), sorted(stepds))
        expected_source = "cgroup" if per_job_cgroups else "slurmstepd"
        assert {a.source for a in mine.values()} == {expected_source}

    collector = JobsCollector(procfs="/proc")
    samples = job_samples(collector, job)
    assert samples["hpcobs_job_processes"] == len(tracked | stepds)
    assert samples["hpcobs_job_memory_bytes"] > 24 << 20  # the python child's bytearray
    assert samples["hpcobs_job_cpu_seconds_total"] > 0  # bash and python3 start-up at least

    cluster.run("scancel", str(job))
    cluster.wait_job_state(job, "CANCELLED", timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [p for p in (tracked | stepds) if Path(f"/proc/{p}").exists()]
        if not left:
            break
        time.sleep(0.1)
    assert job_samples(collector, job) == {}


def job_samples(collector: JobsCollector, job: int) -> dict[str, float]:
    """The job's samples from one collection, by sample name."""
    return {
        s.name: s.value
        for family in collector.collect()
        for s in family.samples
        if s.labels == {"job_id": str(job)}
    }


def _copy_proc(pid: int, dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in ("stat", "cmdline", "environ"):
        (dest / name).write_bytes(Path(f"/proc/{pid}/{name}").read_bytes())


def test_cgroup_v2_hierarchy_built_from_the_running_job(
    cluster: SlurmCluster, tmp_path: Path
) -> None:
    """This machine has no per-job cgroups (linuxproc): build Slurm's cgroup/v2 hierarchy for
    the running job as a fixture tree (real stat/cmdline/environ, cgroup files and
    `cgroup.procs` in the layout `cgroup/v2` creates) and attribute through it."""
    job, script_pids = submit(cluster, tmp_path)
    stepds = stepd_pids(job)
    tracked = stable_listpids(cluster, job)
    decoy_job = 999999  # a process of the real job placed in another job's cgroup
    decoy = max(script_pids - {min(script_pids)})

    tree = tmp_path / "tree"
    scope = "/system.slice/slurmstepd.scope"
    placement: dict[int, tuple[str, str]] = {}
    for pid in stepds:
        placement[pid] = (str(job), f"{scope}/job_{job}/step_batch/slurm")
    for pid in tracked:
        placement[pid] = (str(job), f"{scope}/job_{job}/step_batch/user/task_0")
    placement[decoy] = (str(decoy_job), f"{scope}/job_{decoy_job}/step_0/user/task_0")
    for pid, (_, path) in placement.items():
        _copy_proc(pid, tree / "proc" / str(pid))
        (tree / "proc" / str(pid) / "cgroup").write_text(f"0::{path}\n")
        procs = tree / "sys" / "fs" / "cgroup" / path.lstrip("/") / "cgroup.procs"
        procs.parent.mkdir(parents=True, exist_ok=True)
        with procs.open("a") as f:
            f.write(f"{pid}\n")
    # a process outside any job (this test), with its real job-less cgroup file
    outsider = tree / "proc" / str(os.getpid())
    _copy_proc(os.getpid(), outsider)
    shutil.copy(f"/proc/{os.getpid()}/cgroup", outsider / "cgroup")

    # the hierarchy is the answer: pid -> job from the cgroup.procs files
    expected: dict[int, str] = {}
    for procs in (tree / "sys" / "fs" / "cgroup").rglob("cgroup.procs"):
        job_dirs = [p[4:] for p in procs.parent.parts if p.startswith("job_")]
        for line in procs.read_text().split():
            expected[int(line)] = job_dirs[-1]

    found = JobAttributor(str(tree / "proc"), environ_fallback=False).attribute()
    assert {pid: a.job_id for pid, a in found.items()} == expected
    assert {a.source for a in found.values()} == {"cgroup"}

    # per-job data for the real processes (psutil reads the real /proc)
    collector = JobsCollector(procfs=str(tree / "proc"), sampler=PsutilSampler("/proc"))
    families = {f.name: f for f in collector.collect()}
    processes = {s.labels["job_id"]: s.value for s in families["hpcobs_job_processes"].samples}
    assert processes == {
        str(job): float(len(tracked | stepds) - 1),
        str(decoy_job): 1.0,
    }
    by_source = families["hpcobs_jobs_attributed_processes"].samples
    attributed = {s.labels["source"]: s.value for s in by_source}
    assert attributed == {"cgroup": len(expected), "slurmstepd": 0, "environ": 0}


def test_node_exporter_serves_job_series(cluster: SlurmCluster, tmp_path: Path) -> None:
    """The installed `hpcobs-node-exporter` with the jobs and gpu collectors on this machine
    (nvidia-ml-py installed, no NVIDIA driver: the gpu collector is up and exports nothing)."""
    job, script_pids = submit(cluster, tmp_path)
    exporter = ExporterProcess(
        "hpcobs-node-exporter",
        ["--collector.disable-defaults", "--collector.jobs", "--collector.gpu"],
        tmp_path / "exporter",
    )
    try:
        exporter.start()
        text = exporter.scrape()
    finally:
        exporter.stop()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["collector"]: s.value for s in families["hpcobs_collector_up"].samples}
    assert up == {"gpu": 1.0, "jobs": 1.0}
    assert not [name for name in families if name.startswith("hpcobs_gpu_")]
    processes = {s.labels["job_id"]: s.value for s in families["hpcobs_job_processes"].samples}
    assert processes[str(job)] >= len(script_pids)
