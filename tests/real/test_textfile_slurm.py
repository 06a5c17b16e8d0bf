"""hpcobs-checkpoint inside a real Slurm 22.05 job writes into the textfile directory of a
running `hpcobs-node-exporter`: its metrics appear with the job's id while the job runs, and
vanish once the job has ended and `--collector.textfile.job-grace` has passed.

The exporter learns which jobs are on the node from the daemon's shared job attribution (here:
the job's `slurmstepd` and its descendants, the test cluster having no per-job cgroups); the
files' modification times are set an hour back while the job runs, so only that attribution
can keep their series. Then, the same directory against Debian's node_exporter: the files one
of them rejects, the other does too."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.collectors import wait_until
from harness.runtime import ExporterProcess
from harness.servers import NodeExporterFactory, find_binary
from harness.slurm import SlurmCluster, SlurmClusterFactory

pytestmark = pytest.mark.real

BIN = Path(sys.executable).parent
GRACE = 3.0

JOB = """#!/bin/sh
{bin}/hpcobs-checkpoint run --name x --textfile.directory {dir} -- sleep 1
{python} - <<'EOF'
from hpcobs.exporters.checkpoint import checkpoint
with checkpoint("ctx", textfile_directory="{dir}"):
    pass
EOF
touch {dir}/../written
while [ ! -e {release} ]; do sleep 0.1; done
"""


@pytest.fixture
def cluster(slurm_cluster_factory: SlurmClusterFactory) -> SlurmCluster:
    """Job ids from a random large number: the exporter sees every process of this machine,
    other test clusters' jobs (numbered from 1) included."""
    return slurm_cluster_factory(extra_conf=[f"FirstJobId={random.randint(10**6, 6 * 10**7)}"])


def samples(text: str, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith(prefix)
    }


def one(text: str, name: str) -> float:
    found = [v for (n, _), v in samples(text, name).items() if n == name]
    assert len(found) == 1, (name, found)
    return found[0]


def promtool_check(text: str) -> str:
    done = subprocess.run(
        [find_binary("promtool"), "check", "metrics"], input=text.encode(), capture_output=True
    )
    return (done.stdout + done.stderr).decode().strip()


def test_checkpoint_series_of_a_slurm_job_end_with_the_job(
    cluster: SlurmCluster,
    exporter_factory: Callable[..., ExporterProcess],
    tmp_path: Path,
) -> None:
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    exporter = exporter_factory(
        "hpcobs-node-exporter",
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textfiles}",
        f"--collector.textfile.job-grace={GRACE:g}s",
    )
    release = tmp_path / "release"
    script = JOB.format(bin=BIN, python=sys.executable, dir=textfiles, release=release)
    job = cluster.sbatch(script, "--no-requeue", f"--output={tmp_path / 'job.out'}")
    cluster.wait_job_state(job, "RUNNING", timeout=60)
    assert wait_until(lambda: (tmp_path / "written").exists(), timeout=60), (
        tmp_path / "job.out"
    ).read_text()

    files = {p.name for p in textfiles.iterdir()}
    assert files == {f"checkpoint-{job}-x.prom", f"checkpoint-{job}-ctx.prom"}, files
    hour_ago = time.time() - 3600
    for name in files:
        os.utime(textfiles / name, (hour_ago, hour_ago))

    # while the job runs: every series, with the job's id, kept by the job's presence alone
    text = exporter.scrape()
    series = samples(text, "hpcobs_checkpoint")
    for name in ("x", "ctx"):
        labels = (("job_id", str(job)), ("name", name))
        assert ("hpcobs_checkpoint_duration_seconds", labels) in series, sorted(series)
        assert series[("hpcobs_checkpoints_total", (*labels, ("result", "success")))] == 1.0
    assert (
        series[("hpcobs_checkpoint_duration_seconds", (("job_id", str(job)), ("name", "x")))] >= 1
    )
    assert {dict(labels)["job_id"] for _, labels in series} == {str(job)}
    mtimes = samples(text, "hpcobs_textfile_mtime_seconds")
    assert {dict(labels)["file"] for _, labels in mtimes} == files
    assert all(abs(v - hour_ago) < 1 for v in mtimes.values())
    assert one(text, "hpcobs_textfile_scrape_error") == 0
    assert one(text, "hpcobs_textfile_ignored_files") == 0
    assert promtool_check(text) == ""

    # the job ends; after the grace, its series are gone (the files stay on disk)
    release.touch()
    assert cluster.wait_job_state(job, {"COMPLETED", "FAILED"}, timeout=60) == "COMPLETED"
    ended = time.monotonic()
    last: list[str] = []

    def gone() -> bool:
        last[:] = [exporter.scrape()]
        return not samples(last[0], "hpcobs_checkpoint")

    assert wait_until(gone, timeout=60), last
    assert time.monotonic() - ended < 60
    text = last[0]
    assert one(text, "hpcobs_textfile_ignored_files") == 2
    assert one(text, "hpcobs_textfile_scrape_error") == 0
    assert not samples(text, "hpcobs_textfile_mtime_seconds")
    assert {p.name for p in textfiles.iterdir()} == files


# Files both exporters must take, and files both must reject (the parser's stricter rules,
# docs/textfile.md, are left out: there the two differ on purpose).
ACCEPTED = {
    "plain.prom": "plain 1\n",
    "typed.prom": '# HELP t_total T.\n# TYPE t_total counter\nt_total{a="x\\"y"} 2\n',
    "hist.prom": '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 3\n'
    "h_count 2\n",
    "blanks.prom": '\n  # a comment\n  spaced { a = "1" , } \t 3e2\n',
    "empty.prom": "",
}
REJECTED = {
    "nonl.prom": "no_newline 1",
    "badesc.prom": 'e{a="\\x"} 1\n',
    "dup.prom": 'd{a="1",a="2"} 1\n',
    "type2.prom": "# TYPE y gauge\n# TYPE y gauge\ny 1\n",
    "late.prom": "z 1\n# TYPE z gauge\n",
    "value.prom": "v one\n",
    "stamp.prom": "s 1 1700000000000\n",
}


def files_served(text: str, metric: str) -> set[str]:
    """The files with an mtime series (node_exporter 1.5 names them by path, later by name)."""
    return {Path(dict(labels)["file"]).name for _, labels in samples(text, metric)}


def test_node_exporter_and_hpcobs_reject_the_same_files(
    node_exporter_factory: NodeExporterFactory,
    exporter_factory: Callable[..., ExporterProcess],
    tmp_path: Path,
) -> None:
    for name, text in {**ACCEPTED, **REJECTED}.items():
        (tmp_path / name).write_text(text)
    flags = ("--collector.disable-defaults", "--collector.textfile")
    directory = f"--collector.textfile.directory={tmp_path}"
    go = node_exporter_factory(*flags, directory).scrape()
    ours = exporter_factory("hpcobs-node-exporter", *flags, directory).scrape()
    assert files_served(go, "node_textfile_mtime_seconds") == set(ACCEPTED)
    assert files_served(ours, "hpcobs_textfile_mtime_seconds") == set(ACCEPTED)
    assert one(go, "node_textfile_scrape_error") == one(ours, "hpcobs_textfile_scrape_error") == 1
    # and the accepted files' samples are the same
    assert samples(go, "t_total") == samples(ours, "t_total")
    assert samples(go, "spaced") == samples(ours, "spaced")
    assert samples(go, "h_") == samples(ours, "h_")
