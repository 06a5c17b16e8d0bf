#!/usr/bin/env python3
"""Capture the Slurm outputs the parsers' unit goldens read (see README.md in this directory).

    PATH=$(scripts/compat/slurm-root.sh trixie):$PATH .venv/bin/python tests/data/slurm/capture.py

Starts the harness's private cluster with the Slurm on PATH, runs the scenario below and
writes squeue-V.txt, squeue-r-V.txt, sinfo-V.txt, sdiag-V.txt, licenses-V.txt and
jobcomp-V.log next to this file, V being the major.minor version `slurmd -V` reports, with
the commands and formats the portable backend uses. Prints the job ids by role (the unit
tests name them) as JSON.

Scenario (about 70 s, most of it waiting for slurmctld's 30-second time-limit check):
completed, failed (exit 3), cancelled while running and while pending (held), a throttled
array (`-a 0-9%2`) cancelled with two tasks running, a held array (`-a 0-999 -H`), a job
holding all 5 `matlab` licenses, one timed out, one asking for 64 CPUs on a 2-CPU node, one
requeued and one ended by a node failure (`scontrol update state=down`); then, node1 back and
drained with a reason containing `|` while a job runs on one of its CPUs: a pending throttled
array (`-a 0-5%2`), jobs waiting for licenses and one not eligible for an hour.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for the harness

from hpcobs.exporters.parse.slurm import SINFO_FORMAT, SQUEUE_FORMAT  # noqa: E402

from harness.slurm import SlurmCluster, slurm_version  # noqa: E402

EXTRA_CONF = [
    "Licenses=matlab:5,ansys:2",
    "PartitionName=ovs Nodes=node1 OverSubscribe=FORCE:8 MaxTime=INFINITE State=UP",
]


def main() -> int:
    version = slurm_version()
    tag = f"{version.major}.{version.minor:02d}"
    base = Path(tempfile.mkdtemp(prefix="hpcobs-capture-", dir="/tmp"))
    cluster = SlurmCluster(base, min_job_age=3600, extra_conf=EXTRA_CONF)
    cluster.start()
    try:
        ids = scenario(cluster)
        write(cluster, tag)
    finally:
        cluster.stop()
    print(json.dumps({"version": str(version), **ids}, indent=1))
    return 0


def scenario(c: SlurmCluster) -> dict[str, int]:
    ids: dict[str, int] = {}
    # A running job of debug (not oversubscribed) would keep ovs jobs from sharing node1.
    ids["failed"] = c.sbatch("exit 3")
    ids["completed"] = c.sbatch("true")
    c.wait_job_state(ids["failed"], "FAILED")
    c.wait_job_state(ids["completed"], "COMPLETED")
    ids["requeued"] = c.sbatch("sleep 300", "-p", "ovs", "--job-name=name with | pipe")
    ids["running_cancelled"] = c.sbatch("sleep 300", "-p", "ovs")
    ids["array_cancelled"] = c.sbatch("sleep 300", "-p", "ovs", "--array=0-9%2")
    ids["held_array"] = c.sbatch("true", "--array=0-999", "--hold")
    ids["licensed_cancelled"] = c.sbatch("sleep 300", "-p", "ovs", "-L", "matlab:5")
    ids["pending_cancelled"] = c.sbatch("sleep 1", "-p", "ovs", "--hold")
    ids["timeout"] = c.sbatch("sleep 300", "-p", "ovs", "--time=1")
    ids["node_fail"] = c.sbatch("sleep 300", "-p", "ovs", "--no-requeue")
    # 22.05 and 26.05 accept it (pending, PartitionConfig); 24.11 refuses it and records a
    # FAILED job (BadConstraints) whose id sbatch does not print.
    too_big = c.run("sbatch", "--parsable", "-c", "64", "--wrap=true", check=False)
    ids["too_big_sbatch_rc"] = too_big.returncode
    if too_big.returncode == 0:
        ids["too_big"] = int(too_big.stdout.split(";")[0])
    else:
        out = c.run("squeue", "-h", "--states=all", "-o", "%i|%T|%r").stdout
        (ids["too_big"],) = (
            int(line.split("|")[0]) for line in out.split() if line.endswith("|BadConstraints")
        )

    for role in ("requeued", "running_cancelled", "licensed_cancelled", "timeout", "node_fail"):
        c.wait_job_state(ids[role], "RUNNING")
    wait(lambda: running_tasks(c, ids["array_cancelled"]) == 2, "two array tasks running")
    c.run("scancel", str(ids["pending_cancelled"]))
    c.run("scontrol", "update", f"jobid={ids['timeout']}", "EndTime=now")
    for role in ("running_cancelled", "array_cancelled", "licensed_cancelled"):
        c.run("scancel", str(ids[role]))
    c.wait_job_state(ids["timeout"], "TIMEOUT", timeout=60)

    c.run("scontrol", "update", "nodename=node1", "state=down", "reason=capture")
    c.wait_job_state(ids["node_fail"], "NODE_FAIL")
    wait(lambda: "PENDING" in c.job_states(ids["requeued"]), "requeued job pending")
    c.run("scontrol", "update", "nodename=node1", "state=resume")
    wait(lambda: c.node_state() in ("idle", "mixed"), "node1 back")

    ids["running"] = c.sbatch("sleep 300", "-p", "ovs")
    c.wait_job_state(ids["running"], "RUNNING")
    c.run(
        "scontrol", "update", "nodename=node1", "state=drain", "reason=disk replacement | ticket 42"
    )
    ids["throttled_pending"] = c.sbatch("sleep 300", "-p", "ovs", "--array=0-5%2")
    ids["license_wait_5"] = c.sbatch("sleep 300", "-p", "ovs", "-L", "matlab:5")
    ids["license_wait_1"] = c.sbatch("sleep 300", "-p", "ovs", "-L", "matlab:1")
    ids["begin_later"] = c.sbatch("true", "-p", "debug,short", "--begin=now+1hour")
    # A scheduling pass and a backfill cycle (every 30 s) set the pending reasons and sdiag's
    # backfill statistics.
    wait(lambda: backfill_cycles(c) >= 1, "a backfill cycle")
    time.sleep(2)
    return ids


def backfill_cycles(c: SlurmCluster) -> int:
    m = re.search(r"Backfilling stats.*?Total cycles:\s*(\d+)", c.run("sdiag").stdout, re.S)
    return int(m.group(1)) if m else 0


def running_tasks(c: SlurmCluster, job: int) -> int:
    return c.job_states(job).count("RUNNING")


def wait(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"capture: {what} not reached in {timeout:g} s")
        time.sleep(0.2)


def write(c: SlurmCluster, tag: str) -> None:
    env = {**c.env, "SLURM_TIME_FORMAT": "%s", "TZ": "UTC", "LC_ALL": "C"}

    def run(*argv: str) -> str:
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, check=True, cwd=c.jobs_dir
        ).stdout

    squeue = ("squeue", "--all", "--noheader", "--states=all", "--Format", SQUEUE_FORMAT)
    outputs = {
        f"squeue-{tag}.txt": run(*squeue),
        f"squeue-r-{tag}.txt": run(*squeue, "-r"),
        f"sinfo-{tag}.txt": run("sinfo", "--all", "--noheader", "--Node", "--Format", SINFO_FORMAT),
        f"sdiag-{tag}.txt": run("sdiag"),
        f"licenses-{tag}.txt": run("scontrol", "show", "licenses", "--oneliner"),
        f"jobcomp-{tag}.log": c.jobcomp_path.read_text(),
    }
    for name, text in outputs.items():
        (HERE / name).write_text(text)
        print(f"capture: {name}: {len(text.splitlines())} lines", file=sys.stderr)
    os.sync()


if __name__ == "__main__":
    sys.exit(main())
