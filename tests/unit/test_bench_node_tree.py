"""The node that bench_node.py and bench_noise.py measure is what they say it is: every collector
up on the generated tree (8 fake GPUs, 4 HCAs × 2 ports, a Lustre client, 1,000 Lustre jobs).
A restructured collector that no longer reads that tree shows up here, not as a benchmark
quietly measuring an empty node."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hpcobs.exporters.collectors import discover
from hpcobs.exporters.node import DEFAULT_LISTEN, PROGRAM
from hpcobs.exporters.runtime.app import build_collectors, build_parser
from hpcobs.exporters.runtime.cli import parse_args
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_benchmarked_node_has_every_collector_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    from sidebyside import build_full_node  # type: ignore[import-not-found]

    from fakes.pynvml_fake import FakeNvml, fleet

    flags = build_full_node(tmp_path / "node")
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fleet(8)).module)
    specs = discover()
    args = parse_args(build_parser(PROGRAM, "bench", DEFAULT_LISTEN, specs, paths=True), flags)
    coordinator = ScrapeCoordinator(build_collectors(args, specs), timeout=30.0)
    try:
        families = list(coordinator.scrape())
    finally:
        coordinator.close()
    samples = [s for f in families for s in f.samples]
    up = {s.labels["collector"]: s.value for s in samples if s.name == "hpcobs_collector_up"}
    # (textfile: on by default; its default directory absent here, it has nothing to collect)
    assert up == {"gpu": 1.0, "jobs": 1.0, "lustre": 1.0, "rdma": 1.0, "textfile": 1.0}
    gpus = {s.labels.get("gpu") for s in samples if s.name.startswith("hpcobs_gpu_")}
    assert len(gpus - {None}) == 8
    ports = {
        (s.labels["device"], s.labels["port"])
        for s in samples
        if s.name.startswith("hpcobs_rdma_") and "port" in s.labels
    }
    assert len(ports) == 8
    jobs = {s.labels.get("job_id") for s in samples if s.name.startswith("hpcobs_lustre_job_read")}
    assert len(jobs - {None}) >= 1000
