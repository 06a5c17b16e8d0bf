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
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator

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
def fixture_root(shared_fixtures: Path) -> Path:
    return shared_fixtures / "lustre-2.10-hpe"


@pytest.fixture
def fixture_copy(fixture_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "lustre"
    shutil.copytree(fixture_root, root, symlinks=True)
    return root


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

SB = "ffff9b2a4c1e8000"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def import_text(state: str, inflight: int) -> str:
    return (
        "import:\n"
        f"    name: scratch-OST0000-osc-{SB}\n"
        "    target: scratch-OST0000_UUID\n"
        f"    state: {state}\n"
        "    connect_flags: [ write_grant, server_lock, version ]\n"
        "    import_flags: [ replayable, pingable, connect_tried ]\n"
        "    connection:\n"
        "       failover_nids: [ 10.1.0.5@o2ib, 10.1.0.6@o2ib ]\n"
        "       current_connection: 10.1.0.5@o2ib\n"
        "       connection_attempts: 2\n"
        "    rpcs:\n"
        f"       inflight: {inflight}\n"
        "       unregistering: 0\n"
        "       timeouts: 1\n"
        "       avg_waittime: 1200 usec\n"
    )


def build_client_212(root: Path) -> None:
    """A 2.12+ client: values in /sys/fs/lustre, statistics in debugfs."""
    sysfs = root / "sys/fs/lustre"
    debugfs = root / "sys/kernel/debug/lustre"
    (root / "proc").mkdir(parents=True)  # no /proc/fs/lustre at all
    write(sysfs / "health_check", "healthy\n")
    write(sysfs / "version", "2.15.4\n")
    llite = f"scratch-{SB}"
    for name, number in (("kbytestotal", 1000), ("kbytesfree", 600), ("kbytesavail", 500),
                         ("filestotal", 4000), ("filesfree", 3000)):  # fmt: skip
        write(sysfs / "llite" / llite / name, f"{number}\n")
    write(
        debugfs / "llite" / llite / "stats",
        "snapshot_time             1700000100.123456789 secs.nsecs\n"
        "start_time                1700000000.000000000 secs.nsecs\n"
        "elapsed_time              100.123456789 secs.nsecs\n"
        "read_bytes                10 samples [bytes] 4096 1048576 5242880 2748779069440\n"
        "write_bytes               3 samples [bytes] 4096 4096 12288 50331648\n"
        "read                      10 samples [usecs] 5 900 2500000 9000000\n"
        "open                      7 samples [usecs] 10 200 700 90000\n",
    )
    write(
        debugfs / "llite" / llite / "max_cached_mb",
        "users: 2\nmax_cached_mb: 64000\nused_mb: 1500\nunused_mb: 62500\nreclaim_count: 0\n",
    )
    for index, state, inflight in (
        (0, "FULL", 3),
        (1, "DISCONN", 0),
        (2, "CONNECTING", 0),
        (3, "IDLE", 0),
    ):
        osc = sysfs / "osc" / f"scratch-OST000{index}-osc-{SB}"
        write(osc / "import", import_text(state, inflight))
        write(osc / "max_rpcs_in_flight", "16\n")
    write(sysfs / "mdc" / f"scratch-MDT0000-mdc-{SB}" / "import", import_text("FULL", 1))


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


JOB_LINE = "  {key:<16} {{ samples: {n:>11}, unit: bytes, min: {lo:>8}, max: {hi:>8}, sum: {total:>16}, sumsq: {sq:>18} }}\n"


def job_stats_text(jobs: dict[str, tuple[int, int]], quoted: bool = False) -> str:
    """2.14+ job_stats: job → (read bytes, write bytes)."""
    out = ["job_stats:\n"]
    for job_id, (read, write_) in jobs.items():
        shown = f'"{job_id}"' if quoted else job_id
        out.append(f"- job_id:          {shown}\n")
        out.append("  snapshot_time:   1700000100.000000001 secs.nsecs\n")
        out.append("  start_time:      1700000000.000000001 secs.nsecs\n")
        out.append("  elapsed_time:    100.000000000 secs.nsecs\n")
        for key, total in (("read_bytes:", read), ("write_bytes:", write_)):
            n = total // 4096
            out.append(JOB_LINE.format(key=key, n=n, lo=4096 if n else 0, hi=4096 if n else 0,
                                       total=total, sq=total * 4096))  # fmt: skip
        out.append(
            "  read:            { samples:           0, unit: usecs, min: 0, max: 0, sum: 0, sumsq: 0 }\n"
        )
        out.append(
            "  punch:           { samples:           1, unit: usecs, min: 9, max: 9, sum: 9, sumsq: 81 }\n"
        )
    return "".join(out)


MDT_JOBS = (
    "job_stats:\n"
    "- job_id:          touch.0\n"
    "  snapshot_time:   1614767417\n"
    "  open:            { samples:           4, unit: usecs, min:     315, max:     315, sum:             315, sumsq:              99225 }\n"
    "  close:           { samples:           4, unit: usecs, min:      19, max:      19, sum:              19, sumsq:                361 }\n"
    "  mkdir:           { samples:           0, unit: usecs, min:       0, max:       0, sum:               0, sumsq:                  0 }\n"
    "  read_bytes:      { samples:           1, unit: bytes, min:     100, max:     100, sum:             100, sumsq:              10000 }\n"
    "  write_bytes:     { samples:           0, unit: bytes, min:       0, max:       0, sum:               0, sumsq:                  0 }\n"
)
BRW = (
    "snapshot_time:            1684867636.682465202 secs.nsecs\n"
    "start_time:               1684865295.727058577 secs.nsecs\n"
    "elapsed_time:             2340.955406625 secs.nsecs\n\n"
    "                           read      |     write\n"
    "pages per bulk r/w     rpcs  % cum % |  rpcs        % cum %\n"
    "32:\t\t         0   0   0   |    1  11  11\n"
    "1K:\t\t         2 100 100   |    8  88 100\n\n"
    "                           read      |     write\n"
    "I/O time (1/1000s)     ios   % cum % |  ios         % cum %\n"
    "32:\t\t         0   0   0   |    1  11  11\n"
    "256:\t\t         0   0   0   |    6  66 100\n\n"
    "                           read      |     write\n"
    "block maps msec        maps  % cum % |  maps        % cum %\n"
    "1:           12689 100 100   |    0   0   0\n"
)


def build_server_212(root: Path, jobs: dict[str, dict[str, tuple[int, int]]]) -> None:
    """A 2.12+ OSS/MDS: single values in /sys, stats in debugfs (OST0000) or /proc (OST0001),
    job_stats and recovery_status in /proc, brw_stats in debugfs."""
    sysfs = root / "sys/fs/lustre"
    procfs = root / "proc/fs/lustre"
    debugfs = root / "sys/kernel/debug/lustre"
    write(sysfs / "health_check", "healthy\n")
    for target in (*jobs, "scratch-MDT0000"):
        kind = "mdt" if "MDT" in target else "obdfilter"
        for name, number in (("kbytestotal", 8000), ("kbytesfree", 7000), ("kbytesavail", 6000),
                             ("filestotal", 900), ("filesfree", 800), ("num_exports", 12)):  # fmt: skip
            write(sysfs / kind / target / name, f"{number}\n")
        write(
            procfs / kind / target / "recovery_status",
            "status: COMPLETE\ncompleted_clients: 12/12\n",
        )
        write(debugfs / "osd-ldiskfs" / target / "brw_stats", BRW)
    for target, table in jobs.items():
        write(procfs / "obdfilter" / target / "job_stats", job_stats_text(table))
    stats_dir = {"scratch-OST0000": debugfs, "scratch-OST0001": procfs}
    for target, where in stats_dir.items():
        if target in jobs:
            write(
                where / "obdfilter" / target / "stats",
                "snapshot_time             1700000100.000000001 secs.nsecs\n"
                "read_bytes                2 samples [bytes] 4096 8192 12288 83886080\n"
                "write_bytes               5 samples [bytes] 4096 4096 20480 83886080\n"
                "write                     5 samples [usecs] 100 300 1000 300000\n"
                "punch                     1 samples [usecs] 9 9 9 81\n",
            )
    write(procfs / "mdt/scratch-MDT0000/job_stats", MDT_JOBS)
    write(
        debugfs / "mdt/scratch-MDT0000/md_stats",
        "snapshot_time             1700000100.000000001 secs.nsecs\n"
        "open                      40 samples [usecs] 2 90 900 40000\n"
        "close                     39 samples [usecs] 1 20 200 3000\n",
    )


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
    real_read = mod.TreeScan._read

    def read_and_unmount(self: mod.TreeScan, path: Path) -> bytes | None:
        data: bytes | None = real_read(self, path)
        if path.name == "stats" and llite.exists():  # the first read of the mount: unmount
            shutil.rmtree(llite)
            for device in (*oscs.glob("*-osc-ffff*"), *mdcs.glob("*-mdc-ffff*")):
                shutil.rmtree(device)
        return data

    monkeypatch.setattr(mod.TreeScan, "_read", read_and_unmount)
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
    collector = mod.SPEC.factory(args)
    assert isinstance(collector, LustreCollector)
    assert collector.max_jobs == 5 and collector.job_io_operations and collector.lctl is None
    assert collector.roots[0] == tmp_path / "p/fs/lustre"
    assert collector.roots[2] == tmp_path / "s/kernel/debug/lustre"
    args = parse_args(parser, ["--collector.lustre.lctl-timeout=2s"])
    collector = mod.SPEC.factory(args)
    assert isinstance(collector, LustreCollector) and collector.lctl is not None
    assert collector.lctl.timeout == 2.0 and collector.max_jobs == 1000
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
