"""Lustre trees of the 2.12+ layouts, built from the documented formats: a 2.12+ client (values
in /sys/fs/lustre, statistics in debugfs) and a 2.12+ OSS/MDS with 2.14+ job_stats. Shared by the
collector's unit tests and the whole-output goldens (tests/golden/node/)."""

from __future__ import annotations

from pathlib import Path

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
