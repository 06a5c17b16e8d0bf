"""A sysfs read that blocks must cost one collector, never the daemon (issue 14, item 3).

`hpcobs-node-exporter --collector.rdma` over a tree where one port's `state` is a FIFO (a read
of it blocks, like an attribute of a wedged driver): the daemon listens at once, and every
GET /metrics answers within `--scrape.timeout` (plus a margin for a loaded machine) with
`hpcobs_collector_up{collector="rdma"} 0`. The hung collection is shared by later scrapes
(single flight): scrapes do not add threads. SIGTERM still stops the daemon.
"""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.collectors import wait_until
from harness.rdma import tree_builder
from harness.runtime import ExporterProcess

pytestmark = pytest.mark.real

SCRAPE_TIMEOUT = 2.0
MARGIN = 8.0  # process start-up and a loaded 2-core machine, not the deadline itself


def collector_up(text: str) -> dict[str, float]:
    return {
        s.labels["collector"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hpcobs_collector_up"
    }


def tasks(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_blocking_sysfs_file_at_start_up_does_not_stop_listening(tmp_path: Path) -> None:
    tree = tree_builder().build_tree(tmp_path / "sys", hcas=2, ports=1)
    fifo = tree.ib("mlx5_0", "ports", "1", "state")
    fifo.unlink()
    os.mkfifo(fifo)
    exporter = ExporterProcess(
        "hpcobs-node-exporter",
        [
            "--collector.disable-defaults",
            "--collector.rdma",
            f"--path.sysfs={tree.sysfs}",
            f"--scrape.timeout={SCRAPE_TIMEOUT:g}s",
        ],
        tmp_path / "exporter",
    )
    try:
        started = time.monotonic()
        exporter.start(timeout=30)  # before the fix: never listens (ComponentStartError)
        listening_after = time.monotonic() - started
        assert listening_after < 30
        assert exporter.process is not None and exporter.process.popen is not None
        pid = exporter.process.popen.pid

        took = []
        baseline = 0
        for i in range(5):
            begin = time.monotonic()
            with urllib.request.urlopen(exporter.url + "/metrics", timeout=30) as resp:
                assert resp.status == 200
                text = resp.read().decode()
            took.append(time.monotonic() - begin)
            assert collector_up(text) == {"rdma": 0.0}, text
            if i == 1:
                baseline = tasks(pid)
        assert max(took) < SCRAPE_TIMEOUT + MARGIN, took
        # Single flight: scrapes 3 to 5 waited on the collection still stuck since the first
        # one; no thread was added per scrape (request threads end with their request).
        assert wait_until(lambda: tasks(pid) <= baseline, timeout=5), (tasks(pid), baseline)
        print(
            f"listening after {listening_after:.2f}s; scrapes took "
            + ", ".join(f"{t:.2f}s" for t in took)
            + f"; {tasks(pid)} threads"
        )
    finally:
        code = exporter.stop()
    assert code == 0, exporter.process.log_tail(20) if exporter.process else code
