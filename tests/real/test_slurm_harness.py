"""The private Slurm cluster of ``harness.slurm`` starts, runs jobs and stops cleanly."""

from __future__ import annotations

import time

import pytest

from harness.slurm import (
    NODE_NAME,
    SlurmCluster,
    SlurmClusterFactory,
    SlurmCommandError,
    detect_hardware,
    slurm_version,
)

pytestmark = pytest.mark.real

# tests/conftest.py loads the harness plugins; naming this one here too keeps this file working
# whether or not it is listed there (a plugin is registered once).
pytest_plugins = ["harness.slurm"]


def _squeue_states(cluster: SlurmCluster) -> dict[int, str]:
    out = cluster.run("squeue", "-h", "--states=all", "-o", "%i %T").stdout
    return {int(job): state for job, state in (line.split() for line in out.splitlines())}


def _jobcomp_states(cluster: SlurmCluster) -> dict[int, str]:
    return {int(r["JobId"]): r["JobState"] for r in cluster.jobcomp_records()}


def test_cluster_starts_with_the_configured_node(slurm_cluster: SlurmCluster) -> None:
    # How fast it starts is a figure of `make bench BENCH=slurm`, not an assertion here.
    c = slurm_cluster
    assert c.start_seconds is not None
    phases = [c.timings[phase] for phase in ("munged", "slurmctld", "node_idle")]
    assert phases == sorted(phases) and phases[-1] <= c.start_seconds, c.timings
    assert c.node_name == NODE_NAME
    assert c.cpus == detect_hardware().cpus
    assert c.real_memory_mb <= detect_hardware().real_memory_mb

    out = c.run("sinfo", "-h", "-o", "%P %a %l %T %N").stdout.split("\n")
    assert "debug* up infinite idle node1" in out
    assert "batch up infinite idle node1" in out
    assert "short up 1:00 idle node1" in out

    node = c.run("scontrol", "show", "node", NODE_NAME).stdout
    assert f"CPUTot={c.cpus}" in node
    assert f"RealMemory={c.real_memory_mb}" in node
    assert "NodeAddr=127.0.0.1 NodeHostName=localhost" in node

    config = c.run("scontrol", "show", "config").stdout
    assert "ClusterName             = hpcobs-test" in config
    assert f"AuthInfo                = socket={c.munge_socket}" in config
    assert "JobCompType             = jobcomp/filetxt" in config
    assert str(c.conf_path).startswith(str(c.base_dir))
    assert c.state_dir.is_dir()

    env = c.env
    assert env["SLURM_CONF"] == str(c.conf_path)
    assert not any(k.startswith("SLURM_") and k != "SLURM_CONF" for k in env)


def test_version_and_cgroup_conf_per_version(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    config = c.run("scontrol", "show", "config").stdout
    assert f"SLURM_VERSION           = {slurm_version()}" in config
    assert c.version == slurm_version()
    cgroup_conf = c.base_dir / "cgroup.conf"
    slurmd_log = c.slurmd_log.read_text()
    if c.version >= (24, 11):
        # slurmd would autodetect a cgroup plugin (and fail where it cannot initialise).
        assert cgroup_conf.read_text() == "CgroupPlugin=disabled\n"
        assert "No cgroup.conf file" not in slurmd_log
    else:
        # 22.05 does not know CgroupPlugin=disabled (slurmd exits with it) nor needs it.
        assert not cgroup_conf.exists()


def test_completed_and_failed_jobs(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    ok = c.sbatch("true")
    bad = c.sbatch("exit 3", "-p", "batch")
    assert c.wait_job_state(ok, "COMPLETED", timeout=15) == "COMPLETED"
    assert c.wait_job_state(bad, "FAILED", timeout=15) == "FAILED"

    states = _squeue_states(c)
    assert states[ok] == "COMPLETED"
    assert states[bad] == "FAILED"

    records = {int(r["JobId"]): r for r in c.jobcomp_records()}
    assert records[ok]["JobState"] == "COMPLETED"
    assert records[ok]["Partition"] == "debug"
    assert records[bad]["JobState"] == "FAILED"
    assert records[bad]["Partition"] == "batch"
    assert records[bad]["ExitCode"] == "3:0"


def test_node_down_turns_running_job_into_node_fail(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    job = c.sbatch("sleep 300", "--no-requeue")
    c.wait_job_state(job, "RUNNING", timeout=15)

    c.run("scontrol", "update", f"nodename={NODE_NAME}", "state=down", "reason=x")
    assert c.wait_job_state(job, "NODE_FAIL", timeout=15) == "NODE_FAIL"
    assert _squeue_states(c)[job] == "NODE_FAIL"
    assert _jobcomp_states(c)[job] == "NODE_FAIL"
    assert c.run("sinfo", "-h", "-N", "-n", NODE_NAME, "-o", "%T %E").stdout.split("\n")[0] == (
        "down x"
    )

    c.run("scontrol", "update", f"nodename={NODE_NAME}", "state=resume")
    deadline = time.monotonic() + 15
    while c.node_state() != "idle":
        assert time.monotonic() < deadline, f"node still {c.node_state()!r}"
        time.sleep(0.1)
    # The node runs jobs again.
    after = c.sbatch("true")
    assert c.wait_job_state(after, "COMPLETED", timeout=15) == "COMPLETED"


def test_controller_down_and_back(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    running = c.sbatch("sleep 300")
    c.wait_job_state(running, "RUNNING", timeout=15)

    c.stop_slurmctld()
    assert not c.slurmctld_running()
    t0 = time.monotonic()
    down = c.run("squeue", "-h", check=False, timeout=30)
    took = time.monotonic() - t0
    assert down.returncode != 0
    assert "Unable to contact slurm controller" in down.stderr
    assert took < c.message_timeout + 3, took
    with pytest.raises(SlurmCommandError):
        c.run("sinfo")

    assert c.start_slurmctld() < 10.0
    assert c.slurmctld_running()
    # State was recovered: the job still runs, and new jobs run.
    assert _squeue_states(c)[running] == "RUNNING"
    job = c.sbatch("true")
    assert c.wait_job_state(job, "COMPLETED", timeout=20) == "COMPLETED"


def test_factory_options_and_stop_kills_everything(
    slurm_cluster_factory: SlurmClusterFactory,
) -> None:
    c = slurm_cluster_factory(min_job_age=5, max_array_size=11, wait_for_scheduler=False)
    config = c.run("scontrol", "show", "config").stdout
    assert "MinJobAge               = 5 sec" in config
    assert "MaxArraySize            = 11" in config

    # A task that leaves the step's session (setsid) is found too.
    job = c.sbatch(
        "#!/bin/sh\n#SBATCH --job-name=left-behind\nsleep 300 &\nsetsid sleep 302 &\nsleep 301\n"
    )
    c.wait_job_state(job, "RUNNING", timeout=15)
    deadline = time.monotonic() + 10
    while len(c.job_processes()) < 5:  # slurmstepd, the script, three sleeps
        assert time.monotonic() < deadline, c.job_processes()
        time.sleep(0.05)
    job_pids = c.job_processes()
    assert {_comm(p) for p in job_pids} == {"slurmstepd", "slurm_script", "sleep"}, job_pids
    daemon_pids = [c.slurmctld_pid, c.slurmd_pid, c.munged_pid]

    c.stop()
    c.stop()  # idempotent
    for pid in [*job_pids, *daemon_pids]:
        assert pid is not None
        assert not _running(pid), pid
    assert c.job_processes() == set()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
