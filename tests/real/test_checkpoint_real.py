"""hpcobs-checkpoint against real components: a Pushgateway (pushes, an outage in the middle),
node_exporter's textfile collector reading the directory while it is written, and a private
Slurm 22.05 (the job id, and the run time counted from the job's start)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.exporters.checkpoint import checkpoint

from harness.servers import NodeExporterFactory, Pushgateway, find_binary
from harness.slurm import SlurmCluster

pytestmark = pytest.mark.real

BIN = Path(sys.executable).parent / "hpcobs-checkpoint"


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCOBS_"))}
    return {**out, **extra}


def run(*args: str, job: str = "4242", **extra: str) -> subprocess.CompletedProcess[str]:
    assert BIN.exists(), f"{BIN} missing: pip install -e . (the console script)"
    return subprocess.run(
        [str(BIN), "run", *args],
        env=env(SLURM_JOB_ID=job, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def series(text: str, metric: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples of `metric` whose labels include `labels`."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and labels.items() <= s.labels.items():
                out.append((dict(s.labels), float(s.value)))
    return out


def one(text: str, metric: str, **labels: str) -> float:
    found = series(text, metric, **labels)
    assert len(found) == 1, (metric, labels, found)
    return found[0][1]


# -- Pushgateway -------------------------------------------------------------------------------
def test_pushes_group_by_job_and_accumulate(pushgateway: Pushgateway, tmp_path: Path) -> None:
    state = tmp_path / "state"
    common = ["--name", "model", "--pushgateway.url", pushgateway.url, "--state.directory"]
    node = {"SLURMD_NODENAME": "gpu042", "SLURM_CLUSTER_NAME": "alpha"}
    assert run(*common, str(state), "--", "sh", "-c", "sleep 0.2", **node).returncode == 0
    failed = run(*common, str(state), "--", "sh", "-c", "exit 4", **node)
    assert failed.returncode == 4 and failed.stderr == ""

    text = pushgateway.metrics_text()
    group = {"job": "hpcobs_checkpoint", "job_id": "4242", "name": "model", "node": "gpu042"}
    group["cluster"] = "alpha"
    assert one(text, "hpcobs_checkpoints_total", **group, result="success") == 1
    assert one(text, "hpcobs_checkpoints_total", **group, result="failure") == 1
    assert (
        0.2
        <= one(text, "hpcobs_checkpoint_seconds_total", **group)
        <= one(text, "hpcobs_checkpoint_run_seconds_total", **group)
    )
    last = one(text, "hpcobs_checkpoint_last_success_timestamp_seconds", **group)
    assert time.time() - 60 < last <= time.time()
    # the Pushgateway took every push (a rejected one sets push_failure_time_seconds)
    assert one(text, "push_failure_time_seconds", **group) == 0
    assert one(text, "push_time_seconds", **group) > 0

    # the context manager pushes to the same group
    with checkpoint(
        "model", pushgateway_url=pushgateway.url, state_directory=state, job_id="4242"
    ) as c:
        pass
    assert c.recorded
    # (its node label is this host's: another group; the totals are the node's own)
    own = {**group, "node": os.uname().nodename.split(".")[0]}
    del own["cluster"]
    assert one(pushgateway.metrics_text(), "hpcobs_checkpoints_total", **own, result="success") == 2


def test_pushgateway_outage_loses_no_count(
    pushgateway: Pushgateway, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Down for one checkpoint: a warning, the exit code kept; the next push has all three."""
    state = tmp_path / "state"
    args = ["--pushgateway.url", pushgateway.url, "--state.directory", str(state), "--"]
    assert run(*args, "true").returncode == 0
    pushgateway.stop()
    down = run(*args, "sh", "-c", "exit 9")
    assert down.returncode == 9
    assert "not recorded" in down.stderr and "Connection refused" in down.stderr
    pushgateway.start()  # persistence is off: it comes back empty, at the same address
    assert run(*args, "true").returncode == 0
    text = pushgateway.metrics_text()
    assert one(text, "hpcobs_checkpoints_total", job_id="4242", result="success") == 2
    assert one(text, "hpcobs_checkpoints_total", job_id="4242", result="failure") == 1


# -- node_exporter's textfile collector ----------------------------------------------------------
def test_node_exporter_textfile_collector_reads_every_write_whole(
    node_exporter_factory: NodeExporterFactory, tmp_path: Path
) -> None:
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    exporter = node_exporter_factory(
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textfiles}",
    )
    args = ["--textfile.directory", str(textfiles), "--"]
    # four ranks of one job checkpoint the same stream, twice, while the exporter is scraped
    scrapes: list[str] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            scrapes.append(exporter.scrape())

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(2):
            procs = [
                subprocess.Popen(
                    [str(BIN), "run", *args, "sleep", "0.1"],
                    env=env(SLURM_JOB_ID="4242"),
                    stdin=subprocess.DEVNULL,
                )
                for _ in range(4)
            ]
            assert [p.wait(timeout=60) for p in procs] == [0] * 4
        assert run("--name", "optimizer", *args, "false").returncode == 1
    finally:
        stop.set()
        scraper.join()
    scrapes.append(exporter.scrape())
    assert len(scrapes) > 2
    for text in scrapes:  # never a torn or rejected file
        assert one(text, "node_textfile_scrape_error") == 0, text

    text = scrapes[-1]
    model = {"job_id": "4242", "name": "checkpoint"}
    assert one(text, "hpcobs_checkpoints_total", **model, result="success") == 8
    assert one(text, "hpcobs_checkpoints_total", **model, result="failure") == 0
    opt = {"job_id": "4242", "name": "optimizer"}
    assert one(text, "hpcobs_checkpoints_total", **opt, result="failure") == 1
    assert not series(text, "hpcobs_checkpoint_last_success_timestamp_seconds", **opt)
    # node_exporter names the file by its path (1.5) or its name (later releases)
    files = {Path(labels["file"]).name for labels, _ in series(text, "node_textfile_mtime_seconds")}
    assert files == {"checkpoint-4242-checkpoint.prom", "checkpoint-4242-optimizer.prom"}
    assert {p.name for p in textfiles.iterdir()} == files  # no temporary file left behind
    for path in textfiles.glob("*.prom"):
        check = subprocess.run(
            [find_binary("promtool"), "check", "metrics"],
            input=path.read_bytes(),
            capture_output=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr


# -- Slurm -------------------------------------------------------------------------------------
def test_inside_a_slurm_job_the_run_counts_from_the_job_start(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """A batch job computes 3 s, then checkpoints for 1 s: the first cycle's run time is the
    job's (from the batch step's start), and the job id comes from Slurm."""
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    script = (
        f"#!/bin/sh\nsleep 3\n{BIN} run --name model --textfile.directory {textfiles} -- sleep 1\n"
    )
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/job-%j.out")
    state = slurm_cluster.wait_job_state(job, {"COMPLETED", "FAILED"}, timeout=60)
    output = (tmp_path / f"job-{job}.out").read_text()
    assert state == "COMPLETED", output
    path = textfiles / f"checkpoint-{job}-model.prom"
    assert path.exists(), (output, list(textfiles.iterdir()))
    text = path.read_text()
    labels = {"job_id": str(job), "name": "model"}
    seconds = one(text, "hpcobs_checkpoint_seconds_total", **labels)
    run_seconds = one(text, "hpcobs_checkpoint_run_seconds_total", **labels)
    assert 1.0 <= seconds < 3.0
    assert seconds + 3.0 <= run_seconds < seconds + 30.0, (seconds, run_seconds)
