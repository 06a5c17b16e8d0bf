"""The Slurm batch template scripts/slurm/hpcobs-mpi-probe.sbatch on a private Slurm 22.05."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.servers import Pushgateway
from harness.slurm import SlurmCluster

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "scripts" / "slurm" / "hpcobs-mpi-probe.sbatch"


def test_batch_template_probes_pushes_baselines_and_queues_its_successor(
    slurm_cluster: SlurmCluster, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    baselines = tmp_path / "baselines"
    env = {
        **slurm_cluster.env,
        "HPCOBS_BIN": str(Path(sys.executable).parent),
        "HPCOBS_PUSHGATEWAY": pushgateway.url,
        "HPCOBS_BASELINE_DIR": str(baselines),
        "HPCOBS_PROBE_INTERVAL": "1hour",
        # later flags win: keep the run short
        "HPCOBS_PROBE_ARGS": "--budget-seconds 0.5 --timeout 40 --ops allreduce --sizes 8,64KiB",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    out = tmp_path / "probe-%j.out"
    submit = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2",
         f"--output={out}", str(TEMPLATE)],
        env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert submit.returncode == 0, submit
    job = int(submit.stdout.strip())
    state = slurm_cluster.wait_job_state(job, {"COMPLETED", "FAILED"}, timeout=90)
    log = Path(str(out).replace("%j", str(job))).read_text()
    assert state == "COMPLETED", log
    assert "verdict: healthy (exit 0)" in log and "output pushgateway: ok" in log, log
    assert "exit status 0" in log
    assert (baselines / "baseline-1n-2r.json").exists()  # first run of this shape

    text = pushgateway.metrics_text()
    ranks = [ln for ln in text.splitlines() if ln.startswith("hpcobs_mpi_probe_ranks{")]
    assert len(ranks) == 1 and ranks[0].endswith(" 2"), ranks
    assert 'cluster="hpcobs-test"' in ranks[0] and 'partition="debug"' in ranks[0]

    # the --begin chain: the next run is queued and waits for its begin time an hour away (its
    # reason reads Dependency, the singleton, until the controller sees this run gone)
    deadline = time.monotonic() + 15
    while True:
        pending = slurm_cluster.run(
            "squeue", "-h", "-n", "hpcobs-mpi-probe", "-t", "PENDING", "-o", "%i %r"
        ).stdout.split()
        if pending[1:] == ["BeginTime"] or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert len(pending) == 2 and pending[1] == "BeginTime", pending
    slurm_cluster.run("scancel", pending[0])
