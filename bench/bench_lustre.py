"""Lustre collector: one collection of an OSS with 64 OSTs x 1,000 jobs in job_stats.

The tree is generated in the 2.12+ layout (single values in /sys/fs/lustre, stats and
job_stats in /proc/fs/lustre, brw_stats in /proc/fs/lustre/osd-ldiskfs) with the job_stats
format of 2.14+ (snapshot/start/elapsed times, sumsq, read/write latencies: ~1.5 KiB per job,
the largest format) and the same 1,000 job ids on every OST, so all 64,000 (target, job)
pairs are exported (the worst case: nothing is folded). Before every collection the
counters of all jobs are rewritten, as on a busy server.

Prints, for the 2.10/2.12 format (~0.9 KiB per job) and the 2.14+ one, the collection time (p50/p99 over the runs, target <= 250 ms), the time to render the
result in the text format (for information: the HTTP server does that per scrape), the number
of samples, and the process RSS. `--no-gc-pause` runs the same without the source's pause of
the cyclic garbage collector (`hpcobs.exporters.sources.lustre.gc_paused`), to measure it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from hpcobs.exporters.collectors.lustre import LustreCollector
from hpcobs.exporters.sources import lustre as lustre_source

OSTS = 64
JOBS = 1000
RUNS = 15
TARGET_S = 0.250
FS = "scratch"
OST_OPS = ("getattr", "setattr", "punch", "sync", "destroy", "create", "statfs", "get_info",
           "set_info", "quotactl", "prealloc")  # fmt: skip


def _stat(name: str, samples: int, unit: str, lo: int, hi: int, total: int) -> str:
    """A 2.14+ counter: min/max/sum/sumsq for every counter."""
    return (
        f"  {name + ':':<16} {{ samples: {samples:>11}, unit: {unit}, min: {lo:>8}, "
        f"max: {hi:>8}, sum: {total:>16}, sumsq: {total * hi:>18} }}\n"
    )


def _stat_old(name: str, samples: int, unit: str, lo: int, hi: int, total: int) -> str:
    """A 2.10-2.12 counter, as in the shared fixture: min/max/sum for bytes only."""
    if unit != "bytes":
        return f"  {name + ':':<16} {{ samples: {samples:>11}, unit:  reqs }}\n"
    return (
        f"  {name + ':':<16} {{ samples: {samples:>11}, unit: {unit}, min: {lo:>7}, "
        f"max: {hi:>7}, sum: {total:>15} }}\n"
    )


def job_stats(rng: random.Random, jobs: list[str], now: int, new_format: bool) -> str:
    stat = _stat if new_format else _stat_old
    out = ["job_stats:\n"]
    for job in jobs:
        reads, writes = rng.randrange(0, 50_000), rng.randrange(0, 50_000)
        out.append(f"- job_id:          {job}\n")
        if new_format:
            out.append(f"  snapshot_time:   {now}.{rng.randrange(10**9):09d} secs.nsecs\n")
            out.append(f"  start_time:      {now - 3600}.000000000 secs.nsecs\n")
            out.append(f"  elapsed_time:    3600.{rng.randrange(10**9):09d} secs.nsecs\n")
        else:
            out.append(f"  snapshot_time:   {now}\n")
        out.append(stat("read_bytes", reads, "bytes", 4096, 4194304, reads * 1048576))
        out.append(stat("write_bytes", writes, "bytes", 4096, 4194304, writes * 2097152))
        if new_format:
            out.append(stat("read", reads, "usecs", 10, 90000, reads * 700))
            out.append(stat("write", writes, "usecs", 12, 40081, writes * 900))
        for op in OST_OPS if new_format else OST_OPS[:-1]:
            n = rng.choice((0, 0, 0, 1, 7))
            out.append(stat(op, n, "usecs", 1 if n else 0, 50 if n else 0, n * 20))
    return "".join(out)


BRW = """snapshot_time:         1700000000.000000000 (secs.nsecs)

                           read      |     write
pages per bulk r/w     rpcs  % cum % |  rpcs        % cum %
1:\t\t        13  56  56   |  153   0   0
2:\t\t        10  43 100   |  157   0   0
4:\t\t         0   0 100   |  358   0   0
256:\t\t         0   0 100   | 58945   1   1
512:\t\t         0   0 100   | 154861   3   5
1K:\t\t         0   0 100   | 4059303  94 100

                           read      |     write
I/O time (1/1000s)     ios   % cum % |  ios         % cum %
1:\t\t         1 100 100   |    0   0   0
2:\t\t         0   0 100   |   12   0   0
4:\t\t         0   0 100   |  120   0   0

                           read      |     write
disk I/O size          ios   % cum % |  ios         % cum %
4K:\t\t         0   0  47   |  153   0   0
8K:\t\t        12  52 100   |  157   0   0
1M:\t\t         0   0 100   | 58945   1   1
4M:\t\t         0   0 100   | 4059303  94 100
"""


def build_tree(root: Path, rng: random.Random, jobs: list[str], new_format: bool) -> list[Path]:
    """The 2.12+ server layout; returns the job_stats files (rewritten between runs)."""
    sysfs = root / "sys" / "fs" / "lustre"
    procfs = root / "proc" / "fs" / "lustre"
    sysfs.mkdir(parents=True)
    (sysfs / "health_check").write_text("healthy\n")
    (sysfs / "version").write_text("2.15.4\n")
    files = []
    for i in range(OSTS):
        target = f"{FS}-OST{i:04x}"
        single = sysfs / "obdfilter" / target
        single.mkdir(parents=True)
        for name, value in (("kbytestotal", 47168367616), ("kbytesfree", 47029440512),
                            ("kbytesavail", 47025124352), ("filestotal", 45927444),
                            ("filesfree", 45927188), ("num_exports", 1200)):  # fmt: skip
            (single / name).write_text(f"{value}\n")
        proc = procfs / "obdfilter" / target
        proc.mkdir(parents=True)
        (proc / "stats").write_text(
            "snapshot_time             1700000000.000000000 secs.nsecs\n"
            "read_bytes                4298711 samples [bytes] 4096 4194304 16552048697344\n"
            "write_bytes               4298711 samples [bytes] 4096 4194304 16552048697344\n"
            "punch                     57 samples [reqs]\n"
            "statfs                    35359 samples [reqs]\n"
        )
        (proc / "recovery_status").write_text("status: COMPLETE\n")
        osd = procfs / "osd-ldiskfs" / target
        osd.mkdir(parents=True)
        (osd / "brw_stats").write_text(BRW)
        files.append(proc / "job_stats")
    rewrite(files, rng, jobs, new_format)
    return files


def rewrite(files: list[Path], rng: random.Random, jobs: list[str], new_format: bool) -> None:
    now = int(time.time())
    for path in files:
        path.write_text(job_stats(rng, jobs, now, new_format))


def variants(rng: random.Random, jobs: list[str], new_format: bool, count: int) -> list[str]:
    """Job_stats contents with other counters, written in turn between the runs."""
    now = int(time.time())
    return [job_stats(rng, jobs, now + i, new_format) for i in range(count)]


def run(new_format: bool, job_io_operations: bool = False) -> None:
    name = "2.14+ job_stats format" if new_format else "2.10/2.12 job_stats format"
    if job_io_operations:
        name += ", --collector.lustre.job-io-operations"
    rng = random.Random(5)
    jobs = [str(4_000_000 + rng.randrange(1_000_000)) for _ in range(JOBS)]
    # In memory, as procfs is: on a disk-backed /tmp the ~2 GiB the runs write are written
    # back to disk while later runs are timed (2 CPUs: the flusher competes with the scrape).
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="bench-lustre-", dir=shm) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        files = build_tree(root, rng, jobs, new_format)
        size = sum(f.stat().st_size for f in files)
        print(
            f"{name}: {OSTS} OSTs x {JOBS} jobs, job_stats {size / 2**20:.0f} MiB "
            f"(generated in {time.perf_counter() - started:.1f} s)"
        )
        collector = LustreCollector(
            root / "proc", root / "sys", lctl_path="", job_io_operations=job_io_operations
        )
        wall: list[float] = []
        cpu: list[float] = []
        render: list[float] = []
        samples = 0
        families: list[Metric] = []
        contents = variants(rng, jobs, new_format, 4)
        for index in range(RUNS):
            for i, path in enumerate(files):  # new counters everywhere before each run
                path.write_text(contents[(index + i) % len(contents)])
            # the previous run's samples are freed before the clock starts (the exporter frees
            # a scrape's samples after rendering them, not inside the next collect())
            families = []
            t0, c0 = time.perf_counter(), time.process_time()
            families = list(collector.collect())
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            samples = sum(len(f.samples) for f in families)
            if index < 3:
                t1 = time.perf_counter()
                generate_latest(_Families(families))  # type: ignore[arg-type,unused-ignore]
                render.append(time.perf_counter() - t1)
        del families
        rss = psutil.Process().memory_info().rss
        p50, p99 = _percentiles(wall)
        c50, c99 = _percentiles(cpu)
        verdict = "OK" if p50 <= TARGET_S else "OVER"
        print(
            f"  collection wall: p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
            f"min {min(wall) * 1e3:.0f} ms over {RUNS} runs (target <= 250 ms: {verdict})"
        )
        print(f"  collection CPU:  p50 {c50 * 1e3:.0f} ms, p99 {c99 * 1e3:.0f} ms")
        print(f"  samples per collection: {samples}")
        print(f"  text exposition of them: {statistics.median(render) * 1e3:.0f} ms (median of 3)")
        print(f"  RSS after the runs: {rss / 2**20:.0f} MiB")


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def _loop_ns() -> float:
    """The cost of an empty Python loop iteration here, to compare machines."""
    started = time.process_time()
    for _ in range(2_000_000):
        pass
    return (time.process_time() - started) / 2_000_000 * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-gc-pause",
        action="store_true",
        help="collect without pausing the cyclic garbage collector (to measure the pause)",
    )
    if parser.parse_args().no_gc_pause:
        lustre_source.gc_paused = contextlib.nullcontext  # type: ignore[assignment]
        print("without the gc pause")
    print(
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        f"an empty Python loop iteration takes {_loop_ns():.0f} ns here)"
    )
    run(new_format=False)
    run(new_format=True)
    run(new_format=False, job_io_operations=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak RSS of the benchmark process: {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
