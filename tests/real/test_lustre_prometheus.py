"""A real Prometheus scrapes `hpcobs-node-exporter --collector.lustre` pointed at a copy of the
2.10 fixture tree whose counters the test keeps increasing: job, client and target rates come
out of PromQL, and the brw_stats histograms (counts, no _sum) work with histogram_quantile."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.runtime import ExporterProcess
from harness.servers import PrometheusFactory
from harness.trees import copy_tree

pytestmark = pytest.mark.real

STEP = 4 * 1024 * 1024  # bytes added per bump


def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def bump_sum(text: str, line_start: str, add: int) -> str:
    """Add to the `sum` of the first job_stats line starting with `line_start`."""
    start = text.index(line_start)
    line_end = text.index("\n", start)
    line = text[start:line_end]
    bumped = re.sub(r"sum:(\s+)(\d+)", lambda m: f"sum:{m[1]}{int(m[2]) + add}", line, count=1)
    return text[:start] + bumped + text[line_end:]


def bump_stats_line(text: str, name: str, add: int) -> str:
    """Add to the sum (6th field) of a stats line `name N samples [unit] min max sum`."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == name and len(fields) >= 7:
            fields[1] = str(int(fields[1]) + 1)
            fields[6] = str(int(fields[6]) + add)
            line = " ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


class Bumper:
    """Grows job 24's writes on OST0000, the client's and OST0000's write counters."""

    def __init__(self, root: Path) -> None:
        lustre = root / "proc/fs/lustre"
        self.job_stats = lustre / "obdfilter/lustrefs-OST0000/job_stats"
        self.client = lustre / "llite/lustrefs-ffff88105db50000/stats"
        self.target = lustre / "obdfilter/lustrefs-OST0000/stats"
        self.stop = threading.Event()
        self.bumps = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def bump(self) -> None:
        text = self.job_stats.read_text()
        job = text.index("- job_id:          24\n")
        text = text[:job] + bump_sum(text[job:], "  write_bytes:", STEP)
        replace_atomically(self.job_stats, text)
        replace_atomically(
            self.client, bump_stats_line(self.client.read_text(), "write_bytes", STEP)
        )
        replace_atomically(
            self.target, bump_stats_line(self.target.read_text(), "write_bytes", STEP)
        )
        self.bumps += 1

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.bump()


@pytest.fixture
def lustre_tree(fixture_trees: Path, tmp_path: Path) -> Path:
    root = tmp_path / "lustre"
    copy_tree(fixture_trees / "lustre-2.10-hpe", root)
    return root


@pytest.fixture
def bumper(lustre_tree: Path) -> Iterator[Bumper]:
    b = Bumper(lustre_tree)
    yield b
    b.stop.set()
    if b.thread.is_alive():
        b.thread.join(timeout=5)


def test_prometheus_computes_lustre_rates(
    prometheus_factory: PrometheusFactory,
    exporter_factory: Callable[..., ExporterProcess],
    lustre_tree: Path,
    bumper: Bumper,
) -> None:
    exporter = exporter_factory(
        "hpcobs-node-exporter",
        f"--path.procfs={lustre_tree / 'proc'}",
        f"--path.sysfs={lustre_tree / 'sys'}",
        "--collector.disable-defaults",
        "--collector.lustre",
        "--collector.lustre.lctl-path=",
    )
    text = exporter.scrape()
    assert (
        'hpcobs_lustre_job_write_bytes_total{fs="lustrefs",job_id="24",target="lustrefs-OST0000"} '
        "2.15147593728e+11"
    ) in text
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

    prom = prometheus_factory(
        scrape_configs=[
            {
                "job_name": "node",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [exporter.address]}],
            }
        ]
    )
    bumper.thread.start()

    def positive(result: list[dict]) -> bool:  # type: ignore[type-arg]
        return bool(result) and all(float(r["value"][1]) > 0 for r in result)

    prom.wait_for(
        "sum(rate(hpcobs_lustre_job_write_bytes_total[1m]))", timeout=45, predicate=positive
    )
    by_job = prom.query(
        'sum by (job_id) (rate(hpcobs_lustre_job_write_bytes_total{target="lustrefs-OST0000"}[1m])) > 0'
    )
    assert [r["metric"]["job_id"] for r in by_job] == ["24"]
    prom.wait_for(
        'rate(hpcobs_lustre_client_write_bytes_total{fs="lustrefs"}[1m])',
        timeout=20,
        predicate=positive,
    )
    prom.wait_for(
        'rate(hpcobs_lustre_target_write_bytes_total{target="lustrefs-OST0000"}[1m])',
        timeout=20,
        predicate=positive,
    )
    assert prom.query_value("hpcobs_lustre_health_ok") == 1
    assert prom.query_value('hpcobs_collector_up{collector="lustre"}') == 1
    assert prom.query_value('min(hpcobs_lustre_client_import_up{fs="lustrefs"})') == 1
    # brw_stats as histograms: the median write of OST0000 is in the (2 MiB, 4 MiB] bucket
    median = prom.query_value(
        'histogram_quantile(0.5, hpcobs_lustre_target_disk_io_size_bytes_bucket{target="lustrefs-OST0000",operation="write"})'
    )
    assert 2 * 1024 * 1024 < median <= 4 * 1024 * 1024
    assert bumper.bumps > 0
