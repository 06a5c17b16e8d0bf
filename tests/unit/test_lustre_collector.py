"""The lustre collector on the real 2.10 fixture tree, on 2.12+ trees built here from the
documented layouts, and under faults (unmount mid-scrape, truncated and garbled files,
unexpected job_stats), job folding (`--collector.lustre.max-jobs`) and the lctl fallback."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from hpcobs.exporters.collectors import lustre as mod
from hpcobs.exporters.collectors.lustre import LustreCollector
from hpcobs.exporters.runtime.app import build_parser
from hpcobs.exporters.runtime.cli import parse_args
from hpcobs.exporters.runtime.collector import Services
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
from hpcobs.exporters.sources import lustre as source

from harness.lustre_trees import (
    SB,
    build_client_212,
    build_server_212,
    job_stats_text,
    write,
)
from harness.trees import copy_tree

pytestmark = pytest.mark.unit

KIB = 1024
MIB = 1024 * 1024
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(families: Iterable[Metric]) -> Samples:
    out: Samples = {}
    for family in families:
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def collect(collector: LustreCollector) -> Samples:
    return samples_of(collector.collect())


class _Registry:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


@pytest.fixture(scope="module")
def fixture_root(fixture_trees: Path) -> Path:
    return fixture_trees / "lustre-2.10-hpe"


@pytest.fixture
def fixture_copy(fixture_root: Path, tmp_path: Path) -> Path:
    return copy_tree(fixture_root, tmp_path / "lustre")


def on(root: Path, **options: object) -> LustreCollector:
    options.setdefault("lctl_path", "")
    return LustreCollector(root / "proc", root / "sys", **options)  # type: ignore[arg-type,unused-ignore]


# -- the real 2.10 tree ------------------------------------------------------------------------


def test_fixture_client_side(fixture_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "hpcobs.lustre")
    s = collect(on(fixture_root))
    fs = {"fs": "lustrefs"}
    # llite/lustrefs-ffff88105db50000/stats
    assert value(s, "hpcobs_lustre_client_read_bytes_total", **fs) == 4194304
    assert value(s, "hpcobs_lustre_client_write_bytes_total", **fs) == 93813797294080
    assert value(s, "hpcobs_lustre_client_operations_total", operation="open", **fs) == 136
    assert (
        value(s, "hpcobs_lustre_client_operations_total", operation="write_bytes", **fs) == 89467810
    )
    assert value(s, "hpcobs_lustre_client_capacity_bytes", **fs) == 283010362368 * KIB
    assert value(s, "hpcobs_lustre_client_free_bytes", **fs) == 283007085568 * KIB
    assert value(s, "hpcobs_lustre_client_available_bytes", **fs) == 283000299520 * KIB
    assert value(s, "hpcobs_lustre_client_inodes", **fs) == 430405497
    assert value(s, "hpcobs_lustre_client_inodes_free", **fs) == 430405267
    assert value(s, "hpcobs_lustre_client_cache_max_bytes", **fs) == 32064 * MIB
    assert value(s, "hpcobs_lustre_client_cache_used_bytes", **fs) == 5116 * MIB
    # osc/lustrefs-OST0000-osc-ffff88105db50000/import: FULL, 8 RPCs in flight
    ost0 = {"fs": "lustrefs", "target": "lustrefs-OST0000"}
    assert value(s, "hpcobs_lustre_client_import_up", **ost0) == 1
    assert value(s, "hpcobs_lustre_client_import_state", state="full", **ost0) == 1
    assert value(s, "hpcobs_lustre_client_rpcs_in_flight", **ost0) == 8
    assert value(s, "hpcobs_lustre_client_max_rpcs_in_flight", **ost0) == 8
    targets = {dict(k[1])["target"] for k in s if k[0] == "hpcobs_lustre_client_import_up"}
    # seven OSCs and the MDC of the client; the MDS's OSPs (…-osc-MDT0000) are not imports
    assert targets == {f"lustrefs-OST000{i}" for i in range(7)} | {"lustrefs-MDT0000"}
    assert value(s, "hpcobs_lustre_health_ok") == 1
    assert value(s, "hpcobs_lustre_version_info", version="2.10.1") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_fixture_server_side(fixture_root: Path) -> None:
    s = collect(on(fixture_root))
    ost0 = {"fs": "lustrefs", "target": "lustrefs-OST0000"}
    mdt0 = {"fs": "lustrefs", "target": "lustrefs-MDT0000"}
    # obdfilter/lustrefs-OST0000/stats: writes only; statfs is printed twice (35359 + 124430)
    assert value(s, "hpcobs_lustre_target_write_bytes_total", **ost0) == 16552048697344
    assert value(s, "hpcobs_lustre_target_read_bytes_total", **ost0) == 0
    assert value(s, "hpcobs_lustre_target_operations_total", operation="statfs", **ost0) == 159789
    assert value(s, "hpcobs_lustre_target_operations_total", operation="punch", **ost0) == 57
    assert value(s, "hpcobs_lustre_target_capacity_bytes", **ost0) == 47168367616 * KIB
    assert value(s, "hpcobs_lustre_target_inodes_free", **ost0) == 45927188
    assert value(s, "hpcobs_lustre_target_exports", **ost0) == 3
    assert value(s, "hpcobs_lustre_target_recovery_status", status="complete", **ost0) == 1
    # the MDT: md_stats, capacity from osd-zfs, recovery INACTIVE
    assert (
        value(s, "hpcobs_lustre_target_metadata_operations_total", operation="open", **mdt0) == 10
    )
    assert (
        value(s, "hpcobs_lustre_target_metadata_operations_total", operation="setattr", **mdt0)
        == 57
    )
    assert value(s, "hpcobs_lustre_target_capacity_bytes", **mdt0) == 2241506560 * KIB
    assert value(s, "hpcobs_lustre_target_recovery_status", status="inactive", **mdt0) == 1
    assert value(s, "hpcobs_lustre_target_exports", **mdt0) == 10
    # osd-zfs/lustrefs-OST0000/brw_stats, cumulated: writes of 1 page 153, of 2 pages 157
    w = {"operation": "write", **ost0}
    assert value(s, "hpcobs_lustre_target_bulk_rpc_pages_bucket", le="1.0", **w) == 153
    assert value(s, "hpcobs_lustre_target_bulk_rpc_pages_bucket", le="2.0", **w) == 310
    assert value(s, "hpcobs_lustre_target_bulk_rpc_pages_bucket", le="+Inf", **w) == 4298712
    assert value(s, "hpcobs_lustre_target_bulk_rpc_pages_count", **w) == 4298712
    assert value(s, "hpcobs_lustre_target_disk_io_size_bytes_bucket", le="4096.0", **w) == 153
    r = {"operation": "read", **ost0}
    assert value(s, "hpcobs_lustre_target_disk_io_size_bytes_bucket", le="8.0", **r) == 4
    assert value(s, "hpcobs_lustre_target_disk_io_duration_seconds_bucket", le="0.001", **r) == 1
    assert (
        value(s, "hpcobs_lustre_target_disk_ios_in_flight_bucket", le="2.0", **w)
        == 4096740 + 174382
    )
    # no _sum: brw_stats has counts only
    assert not [k for k in s if k[0].endswith("_sum")]


BRW_COUNT = "hpcobs_lustre_target_bulk_rpc_pages_count"
OSTS = ("lustrefs-OST0000", "lustrefs-OST0002", "lustrefs-OST0004", "lustrefs-OST0006")


def brw_counts(s: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(k[1])["target"], dict(k[1])["operation"]): v
        for k, v in s.items()
        if k[0] == BRW_COUNT
    }


def test_the_real_symlinked_layout_reads_cleanly(
    fixture_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # upstream's tree: brw_stats reached through obdfilter/<ost>/brw_stats -> osd-zfs, and three
    # dangling symlinks per OST; none of them is an error, none is logged
    assert (fixture_root / "proc/fs/lustre/obdfilter/lustrefs-OST0000/brw_stats").is_symlink()
    caplog.set_level(logging.DEBUG, "hpcobs.lustre")
    collector = on(fixture_root)
    collector.name = "lustre"
    s = samples_of(ScrapeCoordinator([collector], timeout=10).scrape())
    assert value(s, "hpcobs_collector_up", collector="lustre") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    counts = brw_counts(s)  # samples_of fails on a duplicate series: each target once
    assert sorted({t for t, _ in counts}) == sorted([*OSTS, "lustrefs-MDT0000"])
    assert counts[("lustrefs-OST0000", "write")] == 4298712


def _brw_as_file(root: Path, ost: str, *, keep_osd: bool) -> None:
    lustre = root / "proc/fs/lustre"
    link = lustre / "obdfilter" / ost / "brw_stats"
    osd = lustre / "osd-zfs" / ost / "brw_stats"
    text = link.read_bytes()
    link.unlink()
    link.write_bytes(text)
    if not keep_osd:
        osd.unlink()


@pytest.mark.parametrize("keep_osd", [True, False], ids=["file-and-osd", "file-only"])
def test_brw_stats_counted_once_whether_symlink_or_file(
    fixture_root: Path, fixture_copy: Path, keep_osd: bool
) -> None:
    before = brw_counts(collect(on(fixture_root)))
    for ost in OSTS:
        _brw_as_file(fixture_copy, ost, keep_osd=keep_osd)
    assert brw_counts(collect(on(fixture_copy))) == before


def test_a_dangling_symlink_is_a_missing_file(
    fixture_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lustre = fixture_copy / "proc/fs/lustre"
    ost = lustre / "obdfilter/lustrefs-OST0000"
    (lustre / "osd-zfs/lustrefs-OST0000/kbytesfree").unlink()  # free space now dangles
    (ost / "kbytesfree").unlink()
    (ost / "kbytesfree").symlink_to("../../osd-zfs/lustrefs-OST0000/kbytesfree")
    (lustre / "osd-zfs/lustrefs-OST0000/brw_stats").unlink()  # the brw_stats link dangles
    caplog.set_level(logging.DEBUG, "hpcobs.lustre")
    collector = on(fixture_copy)
    collector.name = "lustre"
    s = samples_of(ScrapeCoordinator([collector], timeout=10).scrape())
    assert value(s, "hpcobs_collector_up", collector="lustre") == 1
    ost0 = {"fs": "lustrefs", "target": "lustrefs-OST0000"}
    assert ("hpcobs_lustre_target_free_bytes", tuple(sorted(ost0.items()))) not in s
    assert value(s, "hpcobs_lustre_target_capacity_bytes", **ost0) == 47168367616 * KIB
    assert "lustrefs-OST0000" not in {t for t, _ in brw_counts(s)}
    assert "lustrefs-OST0002" in {t for t, _ in brw_counts(s)}
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_fixture_job_stats(fixture_root: Path) -> None:
    s = collect(on(fixture_root))
    job = {"fs": "lustrefs", "target": "lustrefs-OST0000"}
    # obdfilter/lustrefs-OST0000/job_stats, job 24: 64575 writes, 215147593728 bytes
    assert value(s, "hpcobs_lustre_job_write_bytes_total", job_id="24", **job) == 215147593728
    assert value(s, "hpcobs_lustre_job_read_bytes_total", job_id="24", **job) == 0
    assert value(s, "hpcobs_lustre_job_write_bytes_total", job_id="26", **job) == 185838792704
    assert (
        value(s, "hpcobs_lustre_job_write_bytes_total", job_id="49", **job)
        == (_yaml_job(fixture_root, "obdfilter/lustrefs-OST0000", 49)["write_bytes"]["sum"])
    )
    mdt = {"fs": "lustrefs", "target": "lustrefs-MDT0000"}
    assert (
        value(s, "hpcobs_lustre_job_operations_total", job_id="43", operation="setattr", **mdt) == 1
    )
    # MDT jobs move no data in 2.10: no byte series for them; zero operations are left out
    assert (
        "hpcobs_lustre_job_write_bytes_total",
        tuple(sorted({**mdt, "job_id": "43"}.items())),
    ) not in s
    assert not [
        k
        for k in s
        if k[0] == "hpcobs_lustre_job_operations_total" and dict(k[1])["operation"] == "open"
    ]
    ids = set()
    for target in ("obdfilter/lustrefs-OST0000", "mdt/lustrefs-MDT0000"):
        doc = yaml.safe_load((fixture_root / "proc/fs/lustre" / target / "job_stats").read_text())
        ids |= {str(j["job_id"]) for j in doc["job_stats"]}
    assert value(s, "hpcobs_lustre_job_stats_jobs") == len(ids)
    assert value(s, "hpcobs_lustre_job_stats_folded") == 0
    # the other OSTs have empty job_stats: no job series for them
    assert not [
        k
        for k in s
        if k[0].startswith("hpcobs_lustre_job_") and dict(k[1]).get("target") == "lustrefs-OST0002"
    ]


def _yaml_job(root: Path, target: str, job_id: int) -> dict[str, dict[str, int]]:
    doc = yaml.safe_load((root / "proc/fs/lustre" / target / "job_stats").read_text())
    (job,) = [j for j in doc["job_stats"] if j["job_id"] == job_id]
    return job  # type: ignore[no-any-return]


def test_every_family_renders_in_both_text_formats(fixture_root: Path) -> None:
    families = list(on(fixture_root).collect())
    text = generate_latest(_Registry(families)).decode()  # type: ignore[arg-type,unused-ignore]
    assert (
        'hpcobs_lustre_job_write_bytes_total{fs="lustrefs",job_id="24",target="lustrefs-OST0000"}'
        in text
    )
    om = generate_openmetrics(_Registry(families)).decode()  # type: ignore[no-untyped-call]
    assert om.endswith("# EOF\n") and "# TYPE hpcobs_lustre_target_bulk_rpc_pages histogram" in om
    declared = {m.name for m in mod.METRICS}
    assert {f.name if f.type != "counter" else f.name + "_total" for f in families} <= declared


# -- 2.12+ layouts ----------------------------------------------------------------------------


def test_client_212_layout(tmp_path: Path) -> None:
    build_client_212(tmp_path)
    s = collect(on(tmp_path))
    fs = {"fs": "scratch"}
    assert value(s, "hpcobs_lustre_client_read_bytes_total", **fs) == 5242880
    assert value(s, "hpcobs_lustre_client_write_bytes_total", **fs) == 12288
    assert value(s, "hpcobs_lustre_client_operations_total", operation="open", **fs) == 7
    assert (
        value(s, "hpcobs_lustre_client_operation_duration_seconds_total", operation="read", **fs)
        == 2.5
    )
    assert (
        value(s, "hpcobs_lustre_client_operation_duration_seconds_total", operation="open", **fs)
        == 0.0007
    )
    assert value(s, "hpcobs_lustre_client_capacity_bytes", **fs) == 1000 * KIB
    assert value(s, "hpcobs_lustre_client_inodes_free", **fs) == 3000
    assert value(s, "hpcobs_lustre_client_cache_max_bytes", **fs) == 64000 * MIB
    assert value(s, "hpcobs_lustre_client_cache_used_bytes", **fs) == 1500 * MIB
    up = {t: value(s, "hpcobs_lustre_client_import_up", fs="scratch", target=f"scratch-{t}") for t in
          ("OST0000", "OST0001", "OST0002", "OST0003", "MDT0000")}  # fmt: skip
    assert up == {"OST0000": 1, "OST0001": 0, "OST0002": 0, "OST0003": 1, "MDT0000": 1}
    assert (
        value(
            s,
            "hpcobs_lustre_client_import_state",
            fs="scratch",
            target="scratch-OST0001",
            state="disconn",
        )
        == 1
    )
    assert (
        value(
            s,
            "hpcobs_lustre_client_import_state",
            fs="scratch",
            target="scratch-OST0002",
            state="connecting",
        )
        == 1
    )
    assert (
        value(s, "hpcobs_lustre_client_rpcs_in_flight", fs="scratch", target="scratch-OST0000") == 3
    )
    assert (
        value(s, "hpcobs_lustre_client_max_rpcs_in_flight", fs="scratch", target="scratch-OST0002")
        == 16
    )
    assert value(s, "hpcobs_lustre_version_info", version="2.15.4") == 1
    assert not [
        n for n in names(s) if n.startswith(("hpcobs_lustre_target_", "hpcobs_lustre_job_"))
    ]


def test_server_212_layout(tmp_path: Path) -> None:
    build_server_212(
        tmp_path,
        {
            "scratch-OST0000": {"1001": (4096, 8192), "1002": (0, 40960)},
            "scratch-OST0001": {"1001": (0, 4096)},
        },
    )
    s = collect(on(tmp_path))
    ost0 = {"fs": "scratch", "target": "scratch-OST0000"}
    ost1 = {"fs": "scratch", "target": "scratch-OST0001"}
    mdt = {"fs": "scratch", "target": "scratch-MDT0000"}
    assert value(s, "hpcobs_lustre_target_read_bytes_total", **ost0) == 12288  # debugfs
    assert value(s, "hpcobs_lustre_target_write_bytes_total", **ost1) == 20480  # procfs
    assert (
        value(s, "hpcobs_lustre_target_operation_duration_seconds_total", operation="write", **ost0)
        == 0.001
    )
    assert value(s, "hpcobs_lustre_target_capacity_bytes", **ost1) == 8000 * KIB  # sysfs
    assert value(s, "hpcobs_lustre_target_exports", **mdt) == 12
    assert value(s, "hpcobs_lustre_target_recovery_status", status="complete", **ost0) == 1
    assert value(s, "hpcobs_lustre_target_metadata_operations_total", operation="open", **mdt) == 40
    w = {"operation": "write", **ost0}
    assert value(s, "hpcobs_lustre_target_bulk_rpc_pages_bucket", le="32.0", **w) == 1
    assert value(s, "hpcobs_lustre_target_bulk_rpc_pages_bucket", le="1024.0", **w) == 9
    assert value(s, "hpcobs_lustre_target_disk_io_duration_seconds_bucket", le="0.256", **w) == 7
    assert value(s, "hpcobs_lustre_job_read_bytes_total", job_id="1001", **ost0) == 4096
    assert value(s, "hpcobs_lustre_job_write_bytes_total", job_id="1001", **ost0) == 8192
    assert value(s, "hpcobs_lustre_job_write_bytes_total", job_id="1002", **ost0) == 40960
    assert value(s, "hpcobs_lustre_job_write_bytes_total", job_id="1001", **ost1) == 4096
    # the MDT's jobs: Data-on-MDT bytes and the operations that happened
    assert value(s, "hpcobs_lustre_job_read_bytes_total", job_id="touch.0", **mdt) == 100
    assert (
        value(s, "hpcobs_lustre_job_operations_total", job_id="touch.0", operation="open", **mdt)
        == 4
    )
    assert ("hpcobs_lustre_job_operations_total",
            tuple(sorted({**mdt, "job_id": "touch.0", "operation": "mkdir"}.items()))) not in s  # fmt: skip
    assert value(s, "hpcobs_lustre_job_stats_jobs") == 3
    # per-job RPC counts of OSTs only with --collector.lustre.job-io-operations
    assert not [
        k
        for k in s
        if k[0] == "hpcobs_lustre_job_operations_total"
        and dict(k[1])["target"] != "scratch-MDT0000"
    ]
    s2 = collect(on(tmp_path, job_io_operations=True))
    assert (
        value(
            s2, "hpcobs_lustre_job_operations_total", job_id="1002", operation="write_bytes", **ost0
        )
        == 10
    )


def test_quoted_job_ids(tmp_path: Path) -> None:
    build_server_212(tmp_path, {"scratch-OST0000": {}})
    write(
        tmp_path / "proc/fs/lustre/obdfilter/scratch-OST0000/job_stats",
        job_stats_text({"backup rsync.5678": (0, 655360), "dd.0": (4096, 0)}, quoted=True),
    )
    s = collect(on(tmp_path))
    ost0 = {"fs": "scratch", "target": "scratch-OST0000"}
    assert (
        value(s, "hpcobs_lustre_job_write_bytes_total", job_id="backup rsync.5678", **ost0)
        == 655360
    )
    assert value(s, "hpcobs_lustre_job_read_bytes_total", job_id="dd.0", **ost0) == 4096


# -- no Lustre --------------------------------------------------------------------------------


def test_no_lustre_is_up_with_no_series(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys/fs").mkdir(parents=True)
    collector = on(tmp_path, lctl_path="lctl")  # lctl is never asked without Lustre
    collector.name = "lustre"
    coordinator = ScrapeCoordinator([collector], timeout=5)
    s = samples_of(coordinator.scrape())
    assert value(s, "hpcobs_collector_up", collector="lustre") == 1
    assert not [n for n in names(s) if n.startswith("hpcobs_lustre")]


# -- faults -----------------------------------------------------------------------------------


def warnings_about(caplog: pytest.LogCaptureFixture, fragment: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.levelno >= logging.WARNING and fragment in str(getattr(r, "path", "")) + str(getattr(r, "key", ""))
    ]  # fmt: skip


def test_truncated_and_garbled_files_give_what_parses_and_are_logged_once(
    fixture_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lustre = fixture_copy / "proc/fs/lustre"
    llite = lustre / "llite/lustrefs-ffff88105db50000/stats"
    text = llite.read_text()
    llite.write_text(text[: text.index("open") + 12])  # cut inside the `open` line
    (lustre / "obdfilter/lustrefs-OST0002/stats").write_bytes(os.urandom(4096))
    osc = lustre / "osc/lustrefs-OST0001-osc-ffff88105db50000/import"
    osc.write_text("import:\n    name: x\n    sta")
    kbytes = lustre / "obdfilter/lustrefs-OST0004/kbytestotal"
    kbytes.write_text("a lot\n")
    caplog.set_level(logging.WARNING, "hpcobs.lustre")
    collector = on(fixture_copy)
    first = collect(collector)
    second = collect(collector)
    assert first == second
    fs = {"fs": "lustrefs"}
    assert value(first, "hpcobs_lustre_client_write_bytes_total", **fs) == 93813797294080
    assert value(first, "hpcobs_lustre_client_read_bytes_total", **fs) == 4194304
    # the lines before the cut are exported, the cut one and those after it are not
    ops = {
        dict(k[1])["operation"] for k in first if k[0] == "hpcobs_lustre_client_operations_total"
    }
    assert ops == {"read_bytes", "write_bytes"}
    # a broken import file: the state comes from the `state` file, in-flight RPCs are unknown
    ost1 = {"fs": "lustrefs", "target": "lustrefs-OST0001"}
    assert value(first, "hpcobs_lustre_client_import_up", **ost1) == 1
    assert ("hpcobs_lustre_client_rpcs_in_flight", tuple(sorted(ost1.items()))) not in first
    assert (
        value(first, "hpcobs_lustre_client_import_up", fs="lustrefs", target="lustrefs-OST0002")
        == 1
    )
    ost2 = (("fs", "lustrefs"), ("target", "lustrefs-OST0002"))
    assert ("hpcobs_lustre_target_write_bytes_total", ost2) not in first
    assert (
        "hpcobs_lustre_target_capacity_bytes",
        (("fs", "lustrefs"), ("target", "lustrefs-OST0004")),
    ) not in first
    assert (
        value(first, "hpcobs_lustre_target_free_bytes", fs="lustrefs", target="lustrefs-OST0004")
        == 31445595136 * KIB
    )
    for fragment in (
        "llite/lustrefs-ffff88105db50000/stats",
        "OST0002/stats",
        "OST0001-osc",
        "OST0004/kbytestotal",
    ):
        assert len(warnings_about(caplog, fragment)) == 1, fragment
    # a file that is good again is reported again when it breaks again
    llite.write_text(text)
    collect(collector)
    llite.write_text("garbage\n")
    collect(collector)
    assert len(warnings_about(caplog, "llite/lustrefs-ffff88105db50000/stats")) == 2


def test_a_stats_file_missing_read_bytes_means_zero_only_when_it_parsed(tmp_path: Path) -> None:
    build_server_212(tmp_path, {"scratch-OST0000": {}})
    path = tmp_path / "sys/kernel/debug/lustre/obdfilter/scratch-OST0000/stats"
    path.write_text("write_bytes 5 samples [bytes] 4096 4096 20480\n")
    s = collect(on(tmp_path))
    ost0 = {"fs": "scratch", "target": "scratch-OST0000"}
    assert value(s, "hpcobs_lustre_target_read_bytes_total", **ost0) == 0
    path.write_text("write_bytes 5 samples [bytes] 4096 4096 20480\nread_by")
    s = collect(on(tmp_path))
    assert ("hpcobs_lustre_target_read_bytes_total", tuple(sorted(ost0.items()))) not in s
    assert value(s, "hpcobs_lustre_target_write_bytes_total", **ost0) == 20480


def test_unmounted_mid_scrape(fixture_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llite = fixture_copy / "proc/fs/lustre/llite/lustrefs-ffff88105db50000"
    oscs = fixture_copy / "proc/fs/lustre/osc"
    mdcs = fixture_copy / "proc/fs/lustre/mdc"
    real_read = source.TreeScan._read

    def read_and_unmount(self: source.TreeScan, path: Path) -> bytes | None:
        data: bytes | None = real_read(self, path)
        if path.name == "stats" and llite.exists():  # the first read of the mount: unmount
            shutil.rmtree(llite)
            for device in (*oscs.glob("*-osc-ffff*"), *mdcs.glob("*-mdc-ffff*")):
                shutil.rmtree(device)
        return data

    monkeypatch.setattr(source.TreeScan, "_read", read_and_unmount)
    collector = on(fixture_copy)
    s = collect(collector)  # listed, then gone: what was read is exported, nothing raises
    assert value(s, "hpcobs_lustre_client_write_bytes_total", fs="lustrefs") == 93813797294080
    assert ("hpcobs_lustre_client_capacity_bytes", (("fs", "lustrefs"),)) not in s
    assert (
        value(s, "hpcobs_lustre_target_write_bytes_total", fs="lustrefs", target="lustrefs-OST0000")
        > 0
    )
    s = collect(collector)
    assert not [n for n in names(s) if n.startswith("hpcobs_lustre_client_")]
    assert (
        value(
            s,
            "hpcobs_lustre_job_write_bytes_total",
            fs="lustrefs",
            target="lustrefs-OST0000",
            job_id="24",
        )
        > 0
    )


def test_unreadable_entries_do_not_fail_the_scrape(
    fixture_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lustre = fixture_copy / "proc/fs/lustre"
    stats = lustre / "llite/lustrefs-ffff88105db50000/stats"
    stats.unlink()
    stats.mkdir()  # reading it: IsADirectoryError
    kbytes = lustre / "llite/lustrefs-ffff88105db50000/kbytesfree"
    kbytes.unlink()
    kbytes.symlink_to(fixture_copy / "nowhere")  # listed, but gone
    (fixture_copy / "sys/fs/lustre/health_check").write_text("NOT HEALTHY\n")
    caplog.set_level(logging.WARNING, "hpcobs.lustre")
    collector = on(fixture_copy)
    collector.name = "lustre"
    s = samples_of(ScrapeCoordinator([collector], timeout=10).scrape())
    assert value(s, "hpcobs_collector_up", collector="lustre") == 1
    assert value(s, "hpcobs_lustre_health_ok") == 0
    assert ("hpcobs_lustre_client_read_bytes_total", (("fs", "lustrefs"),)) not in s
    assert ("hpcobs_lustre_client_free_bytes", (("fs", "lustrefs"),)) not in s
    assert value(s, "hpcobs_lustre_client_capacity_bytes", fs="lustrefs") == 283010362368 * KIB
    assert len(warnings_about(caplog, "lustrefs-ffff88105db50000/stats")) == 1


def test_job_stats_with_unexpected_keys_and_units(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build_server_212(tmp_path, {"scratch-OST0000": {}})
    write(
        tmp_path / "proc/fs/lustre/obdfilter/scratch-OST0000/job_stats",
        "job_stats:\n"
        "- job_id:          7001\n"
        "  snapshot_time:   1700000000\n"
        "  future_key:      something new\n"
        "  read_bytes:      { samples: 2, unit: KiB, min: 1, max: 1, sum: 2 }\n"
        "  write_bytes:     { samples: 1, unit: bytes, min: 9, max: 9, sum: 4096, hist: { 4K: 1 } }\n"
        "  fallocate:       { samples: 3, unit: usecs, min: 1, max: 1, sum: 3 }\n"
        "what is this\n"
        "- job_id:          7002\n"
        "  write_bytes:     { samples: 1, unit: bytes, min: 9, max: 9, sum: 8192 }\n",
    )
    caplog.set_level(logging.WARNING, "hpcobs.lustre")
    collector = on(tmp_path)
    s = collect(collector)
    collect(collector)
    ost0 = {"fs": "scratch", "target": "scratch-OST0000"}
    assert value(s, "hpcobs_lustre_job_write_bytes_total", job_id="7001", **ost0) == 4096
    assert value(s, "hpcobs_lustre_job_write_bytes_total", job_id="7002", **ost0) == 8192
    # KiB is not bytes: left out, not exported as a wrong number
    assert (
        "hpcobs_lustre_job_read_bytes_total",
        tuple(sorted({**ost0, "job_id": "7001"}.items())),
    ) not in s
    assert len(warnings_about(caplog, "scratch-OST0000/job_stats")) == 1


# -- job folding ------------------------------------------------------------------------------


def jobs_of(s: Samples, metric: str, target: str) -> dict[str, float]:
    return {
        dict(k[1])["job_id"]: v
        for k, v in s.items()
        if k[0] == metric and dict(k[1])["target"].endswith("-" + target)
    }


def test_max_jobs_keeps_the_busiest_and_folds_the_rest(tmp_path: Path) -> None:
    jobs = {
        "scratch-OST0000": {"a": (0, 1000), "b": (0, 500), "c": (30, 0), "d": (0, 20)},
        "scratch-OST0001": {"a": (0, 1), "c": (900, 0), "e": (5, 5)},
    }
    build_server_212(tmp_path, jobs)
    job_stats = tmp_path / "proc/fs/lustre/obdfilter"
    collector = on(tmp_path, max_jobs=2)
    s = collect(collector)
    # bytes on the node: a 1001, c 930, b 500, touch.0 100 (the MDT's), d 20, e 10 → a and c
    writes0 = jobs_of(s, "hpcobs_lustre_job_write_bytes_total", "OST0000")
    assert writes0 == {"a": 1000, "c": 0, "other": 500 + 20}
    assert jobs_of(s, "hpcobs_lustre_job_read_bytes_total", "OST0001") == {
        "a": 0,
        "c": 900,
        "other": 5,
    }
    assert value(s, "hpcobs_lustre_job_stats_folded") == 4
    assert value(s, "hpcobs_lustre_job_stats_jobs") == 6

    # b and c grow past a, which is folded now; d vanished (job_stats cleanup), f is new
    (job_stats / "scratch-OST0000/job_stats").write_text(
        job_stats_text({"a": (0, 1200), "b": (0, 5000), "c": (30, 0), "f": (0, 7)})
    )
    (job_stats / "scratch-OST0001/job_stats").write_text(
        job_stats_text({"a": (0, 1), "c": (1900, 0), "e": (5, 15)})
    )
    s = collect(collector)
    writes0 = jobs_of(s, "hpcobs_lustre_job_write_bytes_total", "OST0000")
    # other grows by what folded jobs did since the last scrape: a +200, f +7 (new); what b
    # did while it was folded stays in other
    assert writes0 == {"b": 5000, "c": 0, "other": 520 + 200 + 7}
    # on OST0001, a did nothing since it was last exported (1 byte), e wrote 10 more
    assert jobs_of(s, "hpcobs_lustre_job_write_bytes_total", "OST0001") == {"c": 0, "other": 5 + 10}
    assert jobs_of(s, "hpcobs_lustre_job_read_bytes_total", "OST0001") == {"c": 1900, "other": 5}
    assert value(s, "hpcobs_lustre_job_stats_folded") == 4  # a, e, f, touch.0

    # a counter that goes down restarted (the job's entry was dropped and came back)
    (job_stats / "scratch-OST0000/job_stats").write_text(
        job_stats_text({"a": (0, 50), "b": (0, 5000), "c": (30, 0)})
    )
    s = collect(collector)
    assert jobs_of(s, "hpcobs_lustre_job_write_bytes_total", "OST0000")["other"] == 727 + 50


def test_max_jobs_zero_folds_everything(tmp_path: Path) -> None:
    build_server_212(tmp_path, {"scratch-OST0000": {"a": (1, 2), "b": (3, 4)}})
    s = collect(on(tmp_path, max_jobs=0))
    assert jobs_of(s, "hpcobs_lustre_job_read_bytes_total", "OST0000") == {"other": 4}
    assert jobs_of(s, "hpcobs_lustre_job_write_bytes_total", "OST0000") == {"other": 6}
    ops = {
        (dict(k[1])["job_id"], dict(k[1])["operation"]): v
        for k, v in s.items()
        if k[0] == "hpcobs_lustre_job_operations_total"
    }
    assert ops == {("other", "open"): 4, ("other", "close"): 4}  # mkdir had no samples


def test_vanished_jobs_stop_being_exported(tmp_path: Path) -> None:
    build_server_212(tmp_path, {"scratch-OST0000": {"a": (1, 2), "b": (3, 4)}})
    collector = on(tmp_path)
    assert set(jobs_of(collect(collector), "hpcobs_lustre_job_write_bytes_total", "OST0000")) == {
        "a",
        "b",
    }
    write(
        tmp_path / "proc/fs/lustre/obdfilter/scratch-OST0000/job_stats",
        job_stats_text({"b": (3, 9)}),
    )
    assert jobs_of(collect(collector), "hpcobs_lustre_job_write_bytes_total", "OST0000") == {"b": 9}
    write(tmp_path / "proc/fs/lustre/obdfilter/scratch-OST0000/job_stats", "job_stats:\n")
    assert jobs_of(collect(collector), "hpcobs_lustre_job_write_bytes_total", "OST0000") == {}


# -- lctl fallback ----------------------------------------------------------------------------


def fake_lctl(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "bin/lctl"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "lctl.calls"}\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "lctl.calls"
    return path.read_text().splitlines() if path.exists() else []


def test_lctl_fallback_for_a_value_in_no_tree(tmp_path: Path) -> None:
    build_client_212(tmp_path)
    shutil.rmtree(tmp_path / "sys/kernel/debug")  # debugfs not mounted
    lctl = fake_lctl(
        tmp_path,
        'case "$3" in\n'
        f'  llite.scratch-{SB}.stats) printf "read_bytes 4 samples [bytes] 1 1 777\\n" ;;\n'
        "  *) echo \"error: get_param: param_path '$3': No such file or directory\" >&2; exit 2 ;;\n"
        "esac",
    )
    collector = on(tmp_path, lctl_path=str(lctl))
    s = collect(collector)
    assert value(s, "hpcobs_lustre_client_read_bytes_total", fs="scratch") == 777
    assert value(s, "hpcobs_lustre_client_capacity_bytes", fs="scratch") == 1000 * KIB  # from sysfs
    asked = calls(tmp_path)
    assert f"get_param -n llite.scratch-{SB}.stats" in asked
    assert f"get_param -n llite.scratch-{SB}.max_cached_mb" in asked
    assert not [c for c in asked if "kbytes" in c or "import" in c]  # those were in sysfs
    # a parameter lctl failed on is not asked again at every scrape
    collect(collector)
    again = calls(tmp_path)
    assert again.count(f"get_param -n llite.scratch-{SB}.max_cached_mb") == 1
    assert again.count(f"get_param -n llite.scratch-{SB}.stats") == 2


def test_lctl_is_time_limited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_client_212(tmp_path)
    shutil.rmtree(tmp_path / "sys/kernel/debug")
    lctl = fake_lctl(tmp_path, "exec sleep 30")
    caplog.set_level(logging.WARNING, "hpcobs.lustre")
    collector = on(tmp_path, lctl_path=str(lctl), lctl_timeout=0.3)
    started = time.monotonic()
    s = collect(collector)
    took = time.monotonic() - started
    assert took < 3.0, took  # two parameters missing, 0.3 s each
    assert value(s, "hpcobs_lustre_client_capacity_bytes", fs="scratch") == 1000 * KIB
    assert ("hpcobs_lustre_client_read_bytes_total", (("fs", "scratch"),)) not in s
    assert [r for r in caplog.records if "timed out" in r.getMessage()]
    started = time.monotonic()
    collect(collector)
    assert time.monotonic() - started < 1.0  # not asked again for a while


def test_missing_lctl_is_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_client_212(tmp_path)
    shutil.rmtree(tmp_path / "sys/kernel/debug")
    caplog.set_level(logging.WARNING, "hpcobs.lustre")
    s = collect(on(tmp_path, lctl_path=str(tmp_path / "no-such-lctl")))
    assert value(s, "hpcobs_lustre_client_capacity_bytes", fs="scratch") == 1000 * KIB
    assert not caplog.records


# -- flags ------------------------------------------------------------------------------------


def test_flags_build_the_collector(tmp_path: Path) -> None:
    parser = build_parser("hpcobs-node-exporter", "test", ":9946", [mod.SPEC], paths=True)
    args = parse_args(
        parser,
        [f"--path.procfs={tmp_path}/p", f"--path.sysfs={tmp_path}/s", "--collector.lustre.max-jobs=5",
         "--collector.lustre.lctl-timeout=500ms", "--collector.lustre.lctl-path=", "--collector.lustre.job-io-operations"],
    )  # fmt: skip
    collector = mod.SPEC.factory(args, Services(args))
    assert isinstance(collector, LustreCollector)
    assert (
        collector.jobs.max_jobs == 5
        and collector.job_io_operations
        and collector.source.lctl is None
    )
    assert collector.source.roots[0] == tmp_path / "p/fs/lustre"
    assert collector.source.roots[2] == tmp_path / "s/kernel/debug/lustre"
    args = parse_args(parser, ["--collector.lustre.lctl-timeout=2s"])
    collector = mod.SPEC.factory(args, Services(args))
    assert isinstance(collector, LustreCollector) and collector.source.lctl is not None
    assert collector.source.lctl.timeout == 2.0 and collector.jobs.max_jobs == 1000
    with pytest.raises(SystemExit):
        parse_args(parser, ["--collector.lustre.max-jobs=-1"])


def test_job_samples_are_the_same_with_and_without_missing_values() -> None:
    labels = [{"fs": "fs", "target": "fs-OST0000", "job_id": str(i)} for i in range(4)]
    full = mod._job_samples("m", labels, [5, 0, 7, 2**70])  # every job has one: built in C
    assert full == [
        mod.Sample("m", lab, v) for lab, v in zip(labels, [5, 0, 7, 2**70], strict=True)
    ]
    assert all(type(s) is mod.Sample for s in full)
    partial = mod._job_samples("m", labels, [5, None, 7, None])
    assert partial == [mod.Sample("m", labels[0], 5), mod.Sample("m", labels[2], 7)]
    assert mod._job_samples("m", [], []) == []
    with pytest.raises(ValueError):
        mod._job_samples("m", labels, [1, 2, 3])  # as zip(strict=True) would


def test_a_bug_in_one_mapping_step_keeps_the_rest(
    fixture_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(LustreCollector, "_brw", staticmethod(broken))
    caplog.set_level(logging.WARNING, "hpcobs.lustre")
    collector = on(fixture_root)
    s = collect(collector)
    collect(collector)
    ost0 = {"fs": "lustrefs", "target": "lustrefs-OST0000"}
    assert not [n for n in names(s) if n.startswith("hpcobs_lustre_target_bulk_rpc_pages")]
    assert value(s, "hpcobs_lustre_target_recovery_status", status="complete", **ost0) == 1
    assert value(s, "hpcobs_lustre_client_write_bytes_total", fs="lustrefs") == 93813797294080
    assert [n for n in names(s) if n.startswith("hpcobs_lustre_job_")]
    failed = [r for r in caplog.records if "step failed" in r.getMessage()]
    assert failed and len(failed) == len({getattr(r, "step", "") for r in failed})  # once each
