#!/usr/bin/env python3
"""Capture the Slurm outputs behind the scheduler-SLI goldens (issue 17; see README.md here).

    .venv/bin/python tests/data/slurm/capture_slis.py
    PATH=$(scripts/compat/slurm-root.sh trixie):$PATH .venv/bin/python tests/data/slurm/capture_slis.py

Starts the harness's private cluster (with preemption by partition priority and one `matlab`
licence) with the Slurm on PATH, runs the scenario below and writes, for the version V that
`slurmd -V` reports, next to this file:

- `squeue-slis-V.txt`: `squeue --all --noheader --states=all --Format <SQUEUE_FORMAT>`
  (SLURM_TIME_FORMAT=%s), the format with its `\\x1f`-separated tail (submit time, restart
  count, exit code, account, user);
- `reservations-V.txt`: `scontrol show reservation --oneliner` (SLURM_TIME_FORMAT=%s);
- `jobcomp-slis-V.log`: the jobcomp/filetxt log.

and prints the job ids by role as JSON (tests/unit/test_slurm_slis_parse.py names them).

Scenario (about 20 s): a job failing with exit 3 and one killed by SIGKILL; a job of an
account named with quotes, `ü` and 300 characters; a `low` job requeued by a `high` one
(preemption with REQUEUE), then a `--no-requeue` `low` job preempted and so cancelled
(PREEMPTED); a job requeued by `scontrol requeue` and then cancelled while pending; a job
holding the one licence and one waiting for it; reservations: an active one with the MAINT
flag on node1, a future one named with quotes, `ü`, spaces and 300 characters, and a future
daily one in partition debug.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for the harness

from hpcobs.exporters.parse.slurm import SQUEUE_FORMAT  # noqa: E402

from harness.slurm import SlurmCluster, slurm_version  # noqa: E402

ODD = ("q\"uo'te ü " * 40)[:300]
ODD_ACCOUNT = ODD.replace(" ", "_")  # sbatch takes it whole; Slurm keeps it as given


def main() -> int:
    version = slurm_version()
    tag = f"{version.major}.{version.minor:02d}"
    base = Path(tempfile.mkdtemp(prefix="hpcobs-capture-slis-", dir="/tmp"))
    cluster = SlurmCluster(base, min_job_age=3600, preemption=True, licenses={"matlab": 1})
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
    cpus = str(c.cpus)
    ids["failed_exit_3"] = c.sbatch("exit 3")
    ids["killed"] = c.sbatch("kill -9 $$")
    ids["odd_account"] = c.sbatch("true", "-A", ODD_ACCOUNT)
    for role, state in (("failed_exit_3", "FAILED"), ("killed", "FAILED")):
        c.wait_job_state(ids[role], state)
    c.wait_job_state(ids["odd_account"], "COMPLETED")

    ids["preempted_requeued"] = c.sbatch("sleep 300", "-p", "low", "-c", cpus)
    c.wait_job_state(ids["preempted_requeued"], "RUNNING")
    ids["preemptor_1"] = c.sbatch("sleep 1", "-p", "high", "-c", cpus)
    c.wait_job_state(ids["preemptor_1"], "COMPLETED")
    wait(lambda: restarts(c, ids["preempted_requeued"]) == 1, "the low job requeued")
    ids["preempted_cancelled"] = c.sbatch("sleep 300", "-p", "low", "-c", cpus, "--no-requeue")
    c.wait_job_state(ids["preempted_cancelled"], "RUNNING")
    ids["preemptor_2"] = c.sbatch("sleep 1", "-p", "high", "-c", cpus)
    c.wait_job_state(ids["preempted_cancelled"], "PREEMPTED")
    c.wait_job_state(ids["preemptor_2"], "COMPLETED")

    ids["requeued_cancelled"] = c.sbatch("sleep 300")
    c.wait_job_state(ids["requeued_cancelled"], "RUNNING")
    c.run("scontrol", "requeue", str(ids["requeued_cancelled"]))
    wait(lambda: restarts(c, ids["requeued_cancelled"]) == 1, "scontrol requeue")
    c.run("scancel", str(ids["requeued_cancelled"]))
    c.run("scancel", str(ids["preempted_requeued"]))

    ids["licence_holder"] = c.sbatch("sleep 300", "-L", "matlab:1")
    c.wait_job_state(ids["licence_holder"], "RUNNING")
    ids["licence_waiter"] = c.sbatch("sleep 300", "-L", "matlab:1")
    wait(lambda: reason(c, ids["licence_waiter"]) == "Licenses", "the waiter's reason")

    c.run(
        "scontrol", "create", "reservation", "reservationname=maint-now", "starttime=now",
        "duration=60", f"nodes={c.node_name}", "flags=maint,ignore_jobs", "users=root",
    )  # fmt: skip
    c.run(
        "scontrol", "create", "reservation", f"reservationname={ODD}", "starttime=now+2hours",
        "duration=30", f"nodes={c.node_name}", "flags=ignore_jobs", "users=root",
    )  # fmt: skip
    c.run(
        "scontrol", "create", "reservation", "reservationname=daily-debug",
        "starttime=now+4hours", "duration=10", "partitionname=debug", "nodecnt=1",
        "flags=daily,ignore_jobs", "users=root",
    )  # fmt: skip
    return ids


def restarts(c: SlurmCluster, job: int) -> int:
    out = c.run("squeue", "-h", "--states=all", "-j", str(job), "-O", "RestartCnt").stdout
    return int(out.split()[0]) if out.split() else -1


def reason(c: SlurmCluster, job: int) -> str:
    return c.run("squeue", "-h", "-j", str(job), "-o", "%r").stdout.strip()


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

    outputs = {
        f"squeue-slis-{tag}.txt": run(
            "squeue", "--all", "--noheader", "--states=all", "--Format", SQUEUE_FORMAT
        ),
        f"reservations-{tag}.txt": run("scontrol", "show", "reservation", "--oneliner"),
        f"jobcomp-slis-{tag}.log": c.jobcomp_path.read_text(),
    }
    for name, text in outputs.items():
        (HERE / name).write_text(text)
        print(f"capture: {name}: {len(text.splitlines())} lines", file=sys.stderr)
    os.sync()


if __name__ == "__main__":
    sys.exit(main())
