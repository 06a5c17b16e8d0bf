"""Lustre: client mounts, OST/MDT targets and per-job statistics, read from procfs/sysfs/debugfs.

Each file is looked up under `--path.procfs`/fs/lustre, then `--path.sysfs`/fs/lustre, then
`--path.sysfs`/kernel/debug/lustre (debugfs), so the 2.10-era layout (all in /proc) and the
2.12+ layouts (single values in /sys, statistics in debugfs or /proc) read alike; see
docs/lustre.md. Only a value that a known device should have and that is in none of the three
falls back to `lctl get_param -n`, with a time limit (`--collector.lustre.lctl-timeout`).

Nothing mounted or served (no `fs/lustre` directory anywhere) is normal: no series, up = 1.
A file that vanishes mid-scrape (a filesystem unmounted) is skipped; a garbled or truncated
file gives what parses and is logged once. The collector never raises.

Job stats: `--collector.lustre.max-jobs` job ids (across all targets of the node) keep their
own series, chosen by bytes moved; the others are added into `job_id="other"` per target.
"other" is kept monotonic: it grows by what folded jobs did since the previous scrape, so
`rate()` over it stays meaningful while jobs move in and out of the top set.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import heapq
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from hpcobs.exporters.parse import lustre as parse
from hpcobs.exporters.runtime.cli import parse_duration
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, Services
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.runtime.once import OnceLog

log = logging.getLogger("hpcobs.lustre")

FS = ("fs",)
FS_TARGET = ("fs", "target")  # target: the target's name, "lustrefs-OST0000" (as lctl shows it)

# -- node --------------------------------------------------------------------------------------
HEALTH_OK = MetricDef(
    "hpcobs_lustre_health_ok",
    "gauge",
    "1 when Lustre's health_check reads exactly `healthy`, else 0.",
)
VERSION_INFO = MetricDef(
    "hpcobs_lustre_version_info", "gauge", "The loaded Lustre release (1).", ("version",)
)

# -- client, per mounted filesystem --------------------------------------------------------------
CLIENT_READ_BYTES = MetricDef(
    "hpcobs_lustre_client_read_bytes_total", "counter", "Bytes read through this client mount.", FS
)
CLIENT_WRITE_BYTES = MetricDef(
    "hpcobs_lustre_client_write_bytes_total",
    "counter",
    "Bytes written through this client mount.",
    FS,
)
CLIENT_OPERATIONS = MetricDef(
    "hpcobs_lustre_client_operations_total",
    "counter",
    "Client (llite) operations by the name of their stats line (read_bytes/write_bytes count "
    "read/write calls).",
    ("fs", "operation"),
)
CLIENT_OPERATION_SECONDS = MetricDef(
    "hpcobs_lustre_client_operation_duration_seconds_total",
    "counter",
    "Time spent in client operations, where the release records it (stats lines in usecs).",
    ("fs", "operation"),
)
CLIENT_CAPACITY = MetricDef(
    "hpcobs_lustre_client_capacity_bytes", "gauge", "Size of the filesystem (kbytestotal).", FS
)
CLIENT_FREE = MetricDef(
    "hpcobs_lustre_client_free_bytes", "gauge", "Free space of the filesystem (kbytesfree).", FS
)
CLIENT_AVAILABLE = MetricDef(
    "hpcobs_lustre_client_available_bytes",
    "gauge",
    "Space available to non-root users (kbytesavail).",
    FS,
)
CLIENT_INODES = MetricDef(
    "hpcobs_lustre_client_inodes", "gauge", "Inodes of the filesystem (filestotal).", FS
)
CLIENT_INODES_FREE = MetricDef(
    "hpcobs_lustre_client_inodes_free", "gauge", "Free inodes (filesfree).", FS
)
CLIENT_CACHE_MAX = MetricDef(
    "hpcobs_lustre_client_cache_max_bytes",
    "gauge",
    "Limit of the client page cache for this mount (max_cached_mb).",
    FS,
)
CLIENT_CACHE_USED = MetricDef(
    "hpcobs_lustre_client_cache_used_bytes",
    "gauge",
    "Client page cache in use for this mount (max_cached_mb used_mb).",
    FS,
)
IMPORT_UP = MetricDef(
    "hpcobs_lustre_client_import_up",
    "gauge",
    "1 when the client's connection (OSC/MDC import) to the target is FULL (or IDLE: "
    "disconnected on purpose, reconnects on use), 0 when DISCONN, CONNECTING, EVICTED, ...",
    FS_TARGET,
)
IMPORT_STATE = MetricDef(
    "hpcobs_lustre_client_import_state",
    "gauge",
    "The import's state (lower case), 1 for the current one.",
    ("fs", "target", "state"),
)
RPCS_IN_FLIGHT = MetricDef(
    "hpcobs_lustre_client_rpcs_in_flight",
    "gauge",
    "RPCs in flight from this client to the target (import rpcs.inflight).",
    FS_TARGET,
)
MAX_RPCS_IN_FLIGHT = MetricDef(
    "hpcobs_lustre_client_max_rpcs_in_flight",
    "gauge",
    "The client's limit of RPCs in flight to the target (max_rpcs_in_flight).",
    FS_TARGET,
)

# -- server, per OST / MDT -----------------------------------------------------------------------
TARGET_READ_BYTES = MetricDef(
    "hpcobs_lustre_target_read_bytes_total",
    "counter",
    "Bytes read from the target (OST, or MDT with Data-on-MDT).",
    FS_TARGET,
)
TARGET_WRITE_BYTES = MetricDef(
    "hpcobs_lustre_target_write_bytes_total",
    "counter",
    "Bytes written to the target (OST, or MDT with Data-on-MDT).",
    FS_TARGET,
)
TARGET_OPERATIONS = MetricDef(
    "hpcobs_lustre_target_operations_total",
    "counter",
    "Requests served by the target (obdfilter/mdt stats) by stats line name.",
    ("fs", "target", "operation"),
)
TARGET_OPERATION_SECONDS = MetricDef(
    "hpcobs_lustre_target_operation_duration_seconds_total",
    "counter",
    "Time spent serving requests, where the release records it (stats lines in usecs).",
    ("fs", "target", "operation"),
)
TARGET_MD_OPERATIONS = MetricDef(
    "hpcobs_lustre_target_metadata_operations_total",
    "counter",
    "Metadata operations served by the MDT (md_stats).",
    ("fs", "target", "operation"),
)
TARGET_CAPACITY = MetricDef(
    "hpcobs_lustre_target_capacity_bytes", "gauge", "Size of the target (kbytestotal).", FS_TARGET
)
TARGET_FREE = MetricDef(
    "hpcobs_lustre_target_free_bytes", "gauge", "Free space on the target (kbytesfree).", FS_TARGET
)
TARGET_AVAILABLE = MetricDef(
    "hpcobs_lustre_target_available_bytes",
    "gauge",
    "Space on the target available to non-root users (kbytesavail).",
    FS_TARGET,
)
TARGET_INODES = MetricDef(
    "hpcobs_lustre_target_inodes", "gauge", "Inodes (objects) of the target.", FS_TARGET
)
TARGET_INODES_FREE = MetricDef(
    "hpcobs_lustre_target_inodes_free", "gauge", "Free inodes of the target.", FS_TARGET
)
TARGET_EXPORTS = MetricDef(
    "hpcobs_lustre_target_exports",
    "gauge",
    "Clients (and servers) connected to the target (num_exports).",
    FS_TARGET,
)
TARGET_RECOVERY = MetricDef(
    "hpcobs_lustre_target_recovery_status",
    "gauge",
    "The target's recovery status (lower case: complete, recovering, inactive, waiting, ...), "
    "1 for the current one.",
    ("fs", "target", "status"),
)
BRW_LABELS = ("fs", "target", "operation")
BRW_PAGES = MetricDef(
    "hpcobs_lustre_target_bulk_rpc_pages",
    "histogram",
    "Pages per bulk read/write RPC (brw_stats; counts only, no _sum).",
    BRW_LABELS,
)
BRW_DISK_IO_SIZE = MetricDef(
    "hpcobs_lustre_target_disk_io_size_bytes",
    "histogram",
    "Size of the disk I/Os the target issued (brw_stats; counts only, no _sum).",
    BRW_LABELS,
)
BRW_DISK_IO_TIME = MetricDef(
    "hpcobs_lustre_target_disk_io_duration_seconds",
    "histogram",
    "Time disk I/Os of the target took (brw_stats; counts only, no _sum).",
    BRW_LABELS,
)
BRW_IOS_IN_FLIGHT = MetricDef(
    "hpcobs_lustre_target_disk_ios_in_flight",
    "histogram",
    "Disk I/Os in flight when an I/O was issued (brw_stats; counts only, no _sum).",
    BRW_LABELS,
)

# -- jobs -------------------------------------------------------------------------------------
JOB_LABELS = ("fs", "target", "job_id")
JOB_READ_BYTES = MetricDef(
    "hpcobs_lustre_job_read_bytes_total",
    "counter",
    'Bytes the job read from the target (job_stats); job_id="other" holds folded jobs.',
    JOB_LABELS,
)
JOB_WRITE_BYTES = MetricDef(
    "hpcobs_lustre_job_write_bytes_total",
    "counter",
    'Bytes the job wrote to the target (job_stats); job_id="other" holds folded jobs.',
    JOB_LABELS,
)
JOB_OPERATIONS = MetricDef(
    "hpcobs_lustre_job_operations_total",
    "counter",
    "Operations of the job on the target (job_stats): metadata operations on MDTs; "
    "read_bytes/write_bytes RPCs on OSTs with --collector.lustre.job-io-operations.",
    ("fs", "target", "job_id", "operation"),
)
JOBS_FOLDED = MetricDef(
    "hpcobs_lustre_job_stats_folded",
    "gauge",
    'Job ids beyond --collector.lustre.max-jobs, folded into job_id="other" in this scrape.',
)
JOBS_SEEN = MetricDef(
    "hpcobs_lustre_job_stats_jobs",
    "gauge",
    "Distinct job ids in the job_stats of this node's targets.",
)

METRICS = (
    HEALTH_OK,
    VERSION_INFO,
    CLIENT_READ_BYTES,
    CLIENT_WRITE_BYTES,
    CLIENT_OPERATIONS,
    CLIENT_OPERATION_SECONDS,
    CLIENT_CAPACITY,
    CLIENT_FREE,
    CLIENT_AVAILABLE,
    CLIENT_INODES,
    CLIENT_INODES_FREE,
    CLIENT_CACHE_MAX,
    CLIENT_CACHE_USED,
    IMPORT_UP,
    IMPORT_STATE,
    RPCS_IN_FLIGHT,
    MAX_RPCS_IN_FLIGHT,
    TARGET_READ_BYTES,
    TARGET_WRITE_BYTES,
    TARGET_OPERATIONS,
    TARGET_OPERATION_SECONDS,
    TARGET_MD_OPERATIONS,
    TARGET_CAPACITY,
    TARGET_FREE,
    TARGET_AVAILABLE,
    TARGET_INODES,
    TARGET_INODES_FREE,
    TARGET_EXPORTS,
    TARGET_RECOVERY,
    BRW_PAGES,
    BRW_DISK_IO_SIZE,
    BRW_DISK_IO_TIME,
    BRW_IOS_IN_FLIGHT,
    JOB_READ_BYTES,
    JOB_WRITE_BYTES,
    JOB_OPERATIONS,
    JOBS_FOLDED,
    JOBS_SEEN,
)

# brw_stats section title → (histogram, factor from the row label to the base unit)
BRW_HISTOGRAMS: dict[str, tuple[MetricDef, float]] = {
    "pages per bulk r/w": (BRW_PAGES, 1.0),
    "disk I/O size": (BRW_DISK_IO_SIZE, 1.0),
    "I/O time (1/1000s)": (BRW_DISK_IO_TIME, 0.001),
    "disk I/Os in flight": (BRW_IOS_IN_FLIGHT, 1.0),
}
IMPORT_HEALTHY = frozenset({"FULL", "IDLE"})
USEC_UNITS = frozenset({"usec", "usecs"})
OSD_KINDS = ("osd-ldiskfs", "osd-zfs")
OTHER = "other"
KIB = 1024.0
MIB = 1024.0 * 1024.0
# prometheus_client's Sample is a NamedTuple; tuple.__new__ builds one without the Python-level
# constructor (a third of the cost of a job sample)
_new = tuple.__new__


# -- reading the trees ---------------------------------------------------------------------------


class Lctl:
    """`lctl get_param -n PARAM` with a time limit, for values in no tree.

    A parameter lctl failed on (or timed out on) is not asked again for `retry_after` seconds,
    and a missing lctl binary is looked for again only as often, so a node without lctl (or
    with a wedged one) costs one attempt per parameter per interval, not one per scrape.
    """

    def __init__(self, path: str, timeout: float, retry_after: float = 300.0) -> None:
        self.path = path
        self.timeout = timeout
        self.retry_after = retry_after
        self._binary: str | None = None
        self._binary_checked = float("-inf")
        self._failed: dict[str, float] = {}
        self._once = OnceLog(log)

    def _resolve(self, now: float) -> str | None:
        if self._binary is None and now - self._binary_checked >= self.retry_after:
            self._binary_checked = now
            self._binary = shutil.which(self.path) if self.path else None
            if self._binary is None and self.path:
                self._once.debug(("lctl", "missing"), "lctl not found", lctl=self.path)
        return self._binary

    def get(self, param: str, deadline: float) -> bytes | None:
        now = time.monotonic()
        if not self.path or now < self._failed.get(param, float("-inf")):
            return None
        binary = self._resolve(now)
        budget = min(self.timeout, deadline - now)
        if binary is None or budget <= 0:
            return None
        try:
            done = subprocess.run(
                [binary, "get_param", "-n", param],
                capture_output=True,
                timeout=budget,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._failed[param] = now + self.retry_after
            self._once.warning(("lctl", param), "lctl timed out", param=param, timeout=budget)
            return None
        except OSError as exc:
            self._binary = None
            self._binary_checked = now
            self._once.warning(("lctl", "exec"), "cannot run lctl", lctl=binary, err=str(exc))
            return None
        if done.returncode != 0:
            self._failed[param] = now + self.retry_after
            self._once.debug(
                ("lctl", param),
                "lctl get_param failed",
                param=param,
                rc=done.returncode,
                err=done.stderr.decode(errors="replace").strip()[:200],
            )
            return None
        self._once.clear(("lctl", param))
        return done.stdout


@dataclass
class TreeScan:
    """One scrape's view of the three roots; directory listings are read once per scrape."""

    roots: tuple[Path, ...]
    lctl: Lctl | None
    bad: OnceLog
    deadline: float
    # (root, kind, device) → the directory and its names (one Path join per directory, not per
    # file: 64 OSTs read ~640 files)
    _listings: dict[tuple[Path, str, str], tuple[Path, frozenset[str]]] = field(
        default_factory=dict
    )

    def present(self) -> bool:
        return any(root.is_dir() for root in self.roots)

    def top(self, name: str) -> str | None:
        """A file directly under fs/lustre (`health_check`, `version`)."""
        for root in self.roots:
            data = self._read(root / name)
            if data is not None:
                return data.decode("utf-8", errors="replace")
        return None

    def devices(self, kind: str) -> list[str]:
        """Names of the device directories of a kind (`llite`, `osc`, `obdfilter`, ...)."""
        names: set[str] = set()
        for root in self.roots:
            try:
                with os.scandir(root / kind) as it:
                    names.update(e.name for e in it if e.is_dir())
            except OSError:  # absent, or vanished mid-scrape
                continue
        return sorted(names)

    def _listing(self, root: Path, kind: str, device: str) -> tuple[Path, frozenset[str]]:
        key = (root, kind, device)
        listing = self._listings.get(key)
        if listing is None:
            directory = root / kind / device
            try:
                names = frozenset(os.listdir(directory))
            except OSError:
                names = frozenset()
            listing = self._listings[key] = (directory, names)
        return listing

    def read(
        self, candidates: Sequence[tuple[str, str]], name: str, *, fallback: bool = False
    ) -> tuple[str, str] | None:
        """The text of `name` for the first (kind, device) that has it, and where it came from.

        With `fallback`, a value found under no root is asked of `lctl get_param -n
        <kind>.<device>.<name>` (first candidate).
        """
        found = self.read_raw(candidates, name, fallback=fallback)
        return None if found is None else (found[0].decode("utf-8", errors="replace"), found[1])

    def read_raw(
        self, candidates: Sequence[tuple[str, str]], name: str, *, fallback: bool = False
    ) -> tuple[bytes, str] | None:
        """As `read`, undecoded (job_stats is parsed as bytes)."""
        for kind, device in candidates:
            for root in self.roots:
                directory, names = self._listing(root, kind, device)
                if name in names:
                    path = directory / name
                    data = self._read(path)
                    if data is not None:
                        return data, str(path)
        if fallback and self.lctl is not None and candidates:
            kind, device = candidates[0]
            param = f"{kind}.{device}.{name}"
            data = self.lctl.get(param, self.deadline)
            if data is not None:
                return data, f"lctl get_param -n {param}"
        return None

    def _read(self, path: Path) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None  # not there, or gone with an unmount
        except OSError as exc:  # EACCES on debugfs, ENODEV/EIO from a dying mount, ...
            self.bad.warning(str(path), "cannot read Lustre file", path=str(path), err=str(exc))
            return None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a scrape builds its samples.

    A server's job_stats make ~130k Sample tuples in one go (64 OSTs x 1000 jobs); each
    700 allocations start a collection that walks them again, which costs a third of the
    scrape. They hold no reference cycles (reference counting frees them), so the collector is
    switched off for the few hundred milliseconds of a scrape and switched back on only if it
    was on (a process that turned it off keeps it off).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# -- the families of one scrape ------------------------------------------------------------------


class Families:
    """The metric families of one scrape, created on first use, yielded if not empty."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def get(self, definition: MetricDef) -> Metric:
        family = self._families.get(definition.name)
        if family is None:
            family = self._families[definition.name] = definition.family()
        return family

    def add(self, definition: MetricDef, labels: Sequence[str], value: float) -> None:
        family = self.get(definition)
        assert isinstance(family, GaugeMetricFamily | CounterMetricFamily), definition.name
        family.add_metric(list(labels), value)

    def histogram(self, definition: MetricDef) -> HistogramMetricFamily:
        family = self.get(definition)
        assert isinstance(family, HistogramMetricFamily), definition.name
        return family

    def __iter__(self) -> Iterator[Metric]:
        return (f for f in self._families.values() if f.samples)


def _le(bound: float) -> str:
    return repr(float(bound))


# -- job stats ------------------------------------------------------------------------------------


@dataclass
class TargetJobs:
    """One target's job_stats of this scrape."""

    fs: str
    target: str
    io: parse.JobIOTable
    ops: dict[str, dict[str, parse.Stat]] | None  # MDTs: job → its counters


@dataclass
class JobLedger:
    """What outlives a scrape for one target: the last values of every job (to fold only
    what a job did since the previous scrape) and the monotonic totals of job_id="other"."""

    last_io: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    last_ops: dict[str, dict[str, parse.Stat]] = field(default_factory=dict)
    other: dict[str, float] = field(default_factory=dict)  # "read_bytes", "op:open", ...


def _job_samples(name: str, labels: list[dict[str, str]], values: list[int | None]) -> list[Sample]:
    """One sample per job with a value (Samples built as the tuples they are)."""
    if None in values:
        return [
            _new(Sample, (name, lab, v, None, None, None))
            for lab, v in zip(labels, values, strict=True)
            if v is not None
        ]
    # every job has one (the fast path's tables): the tuples are made in C (the repeats are
    # endless, so the zip cannot be strict: the lengths are checked here, as zip(strict) would)
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} label sets for {len(values)} values")
    rows = zip(repeat(name), labels, values, repeat(None), repeat(None), repeat(None), strict=False)
    return list(map(_new, repeat(Sample), rows))


def _delta(now: int | None, before: int | None) -> int:
    """Growth of a counter since the previous scrape (a counter that went down restarted)."""
    if now is None:
        return 0
    if before is None or now < before:
        return now
    return now - before


# -- the collector ----------------------------------------------------------------------------


class LustreCollector(Collector):
    name = "lustre"

    def __init__(
        self,
        procfs: str | os.PathLike[str] = "/proc",
        sysfs: str | os.PathLike[str] = "/sys",
        *,
        max_jobs: int = 1000,
        job_io_operations: bool = False,
        lctl_path: str = "lctl",
        lctl_timeout: float = 2.0,
        lctl_budget: float = 5.0,
    ) -> None:
        if max_jobs < 0:
            raise ValueError("--collector.lustre.max-jobs must be 0 or more")
        if lctl_timeout <= 0:
            raise ValueError("--collector.lustre.lctl-timeout must be positive")
        self.roots = (
            Path(procfs) / "fs" / "lustre",
            Path(sysfs) / "fs" / "lustre",
            Path(sysfs) / "kernel" / "debug" / "lustre",
        )
        self.max_jobs = max_jobs
        self.job_io_operations = job_io_operations
        self.lctl = Lctl(lctl_path, lctl_timeout) if lctl_path else None
        self.lctl_budget = lctl_budget
        self.bad = OnceLog(log)
        self._ledgers: dict[tuple[str, str], JobLedger] = {}
        self._lock = threading.Lock()

    # -- scrape ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            scan = TreeScan(self.roots, self.lctl, self.bad, time.monotonic() + self.lctl_budget)
            if not scan.present():
                return iter(())  # no Lustre on this node: a normal state
            out = Families()
            with gc_paused():
                for step in (self._node, self._clients, self._targets):
                    self._guard(step.__name__, step, scan, out)
            return iter(out)

    def _guard(self, what: str, step: Callable[..., None], *args: object) -> None:
        """Run one part of the scrape; a bug or an unforeseen file must not fail the rest."""
        try:
            step(*args)
        except Exception as exc:
            self.bad.warning(
                ("step", what), "lustre collection step failed", step=what, err=repr(exc)
            )

    def _problems(self, where: str, problems: int, what: str) -> None:
        if problems:
            self.bad.warning(
                where, "unparsable lines in Lustre file", path=where, lines=problems, kind=what
            )
        else:
            self.bad.clear(where)

    # -- node-wide -----------------------------------------------------------------------------

    def _node(self, scan: TreeScan, out: Families) -> None:
        health = scan.top("health_check")
        if health is not None:
            out.add(HEALTH_OK, (), 1.0 if parse.parse_health_check(health) else 0.0)
        version = scan.top("version")
        if version is not None:
            release = parse.parse_key_values(version).get("lustre") or version.strip()
            words = release.split()
            if words and len(words[0]) <= 64:
                out.add(VERSION_INFO, (words[0],), 1.0)

    # -- clients -------------------------------------------------------------------------------

    def _clients(self, scan: TreeScan, out: Families) -> None:
        seen: set[str] = set()
        for device in scan.devices("llite"):
            mount = parse.parse_mount_name(device)
            if mount is None:
                continue
            if mount.fs in seen:  # the same filesystem mounted twice: report the first
                self.bad.info(("llite", device), "filesystem mounted more than once", device=device)
                continue
            seen.add(mount.fs)
            self._guard(device, self._client, scan, out, device, mount.fs)
        pairs: set[tuple[str, str]] = set()
        for kind in ("osc", "mdc"):
            for device in scan.devices(kind):
                name = parse.parse_client_import_name(device)
                if name is None or (name.fs, name.target) in pairs:
                    continue  # an MDS's OSP, or a second mount's import of the same target
                pairs.add((name.fs, name.target))
                self._guard(device, self._import, scan, out, kind, device, name)

    def _client(self, scan: TreeScan, out: Families, device: str, fs: str) -> None:
        where = [("llite", device)]
        found = scan.read(where, "stats", fallback=True)
        if found is not None:
            text, path = found
            stats = parse.parse_stats(text)
            self._problems(path, stats.problems, "stats")
            self._io_counters(
                out,
                stats,
                (fs,),
                CLIENT_READ_BYTES,
                CLIENT_WRITE_BYTES,
                CLIENT_OPERATIONS,
                CLIENT_OPERATION_SECONDS,
            )
        for name, definition, factor in (
            ("kbytestotal", CLIENT_CAPACITY, KIB),
            ("kbytesfree", CLIENT_FREE, KIB),
            ("kbytesavail", CLIENT_AVAILABLE, KIB),
            ("filestotal", CLIENT_INODES, 1.0),
            ("filesfree", CLIENT_INODES_FREE, 1.0),
        ):
            self._single(scan, out, where, name, definition, (fs,), factor)
        found = scan.read(where, "max_cached_mb", fallback=True)
        if found is not None:
            cache = parse.parse_max_cached_mb(found[0])
            if cache.max_mb is not None:
                out.add(CLIENT_CACHE_MAX, (fs,), cache.max_mb * MIB)
            if cache.used_mb is not None:
                out.add(CLIENT_CACHE_USED, (fs,), cache.used_mb * MIB)
            self._problems(found[1], 0 if cache.max_mb is not None else 1, "max_cached_mb")

    def _import(
        self,
        scan: TreeScan,
        out: Families,
        kind: str,
        device: str,
        name: parse.ClientImportName,
    ) -> None:
        where = [(kind, device)]
        labels = (name.fs, name.target)
        info: parse.ImportInfo | None = None
        found = scan.read(where, "import", fallback=True)
        if found is not None:
            info = parse.parse_import(found[0])
            self._problems(found[1], 0 if info is not None else 1, "import")
        state = info.state if info is not None else None
        if state is None:
            found = scan.read(where, "state")
            state = parse.parse_import_state_file(found[0]) if found is not None else None
        if state is not None:
            out.add(IMPORT_UP, labels, 1.0 if state in IMPORT_HEALTHY else 0.0)
            out.add(IMPORT_STATE, (*labels, state.lower()), 1.0)
        if info is not None and info.rpcs_in_flight is not None:
            out.add(RPCS_IN_FLIGHT, labels, float(info.rpcs_in_flight))
        self._single(scan, out, where, "max_rpcs_in_flight", MAX_RPCS_IN_FLIGHT, labels, 1.0)

    # -- targets -------------------------------------------------------------------------------

    def _targets(self, scan: TreeScan, out: Families) -> None:
        jobs: list[TargetJobs] = []
        present: set[tuple[str, str]] = set()
        for kind in ("obdfilter", "mdt"):
            for device in scan.devices(kind):
                name = parse.parse_target_name(device)
                if name is None or (name.fs, name.target) in present:
                    continue
                present.add((name.fs, name.target))
                self._guard(device, self._target, scan, out, kind, device, name, jobs)
        self._guard("job_stats", self._jobs, out, jobs, present)

    def _target(
        self,
        scan: TreeScan,
        out: Families,
        kind: str,
        device: str,
        name: parse.TargetName,
        jobs: list[TargetJobs],
    ) -> None:
        labels = (name.fs, name.target)
        own = [(kind, device)]
        with_osd = own + [(osd, device) for osd in OSD_KINDS]
        found = scan.read(own, "stats", fallback=kind == "obdfilter")
        if found is not None:
            stats = parse.parse_stats(found[0])
            self._problems(found[1], stats.problems, "stats")
            self._io_counters(
                out,
                stats,
                labels,
                TARGET_READ_BYTES,
                TARGET_WRITE_BYTES,
                TARGET_OPERATIONS,
                TARGET_OPERATION_SECONDS,
            )
        if kind == "mdt":
            found = scan.read(own, "md_stats", fallback=True)
            if found is not None:
                md = parse.parse_stats(found[0])
                self._problems(found[1], md.problems, "md_stats")
                for op, stat in md.stats.items():
                    out.add(TARGET_MD_OPERATIONS, (*labels, op), float(stat.samples))
        for file, definition, factor in (
            ("kbytestotal", TARGET_CAPACITY, KIB),
            ("kbytesfree", TARGET_FREE, KIB),
            ("kbytesavail", TARGET_AVAILABLE, KIB),
            ("filestotal", TARGET_INODES, 1.0),
            ("filesfree", TARGET_INODES_FREE, 1.0),
        ):
            self._single(scan, out, with_osd, file, definition, labels, factor)
        self._single(scan, out, own, "num_exports", TARGET_EXPORTS, labels, 1.0)
        found = scan.read(own, "recovery_status", fallback=True)
        if found is not None:
            recovery = parse.parse_recovery_status(found[0])
            self._problems(found[1], 0 if recovery is not None else 1, "recovery_status")
            if recovery is not None:
                out.add(TARGET_RECOVERY, (*labels, recovery.status), 1.0)
        # brw_stats lives in the osd (obdfilter/<ost>/brw_stats is a symlink to it)
        found = scan.read([(osd, device) for osd in OSD_KINDS] + own, "brw_stats", fallback=True)
        if found is not None:
            brw = parse.parse_brw_stats(found[0])
            self._problems(found[1], brw.problems, "brw_stats")
            self._brw(out, brw, labels)
        raw = scan.read_raw(own, "job_stats", fallback=True)
        if raw is not None:
            data, path = raw
            if kind == "mdt":
                parsed = parse.parse_job_stats(data.decode("utf-8", errors="replace"))
                table = parse.job_io_table(parsed)
                ops: dict[str, dict[str, parse.Stat]] | None = {
                    job.job_id: job.stats for job in parsed.jobs
                }
            else:
                table, ops = parse.parse_job_io(data), None
            self._problems(path, table.problems, "job_stats")
            jobs.append(TargetJobs(name.fs, name.target, table, ops))

    # -- helpers -------------------------------------------------------------------------------

    def _single(
        self,
        scan: TreeScan,
        out: Families,
        where: Sequence[tuple[str, str]],
        file: str,
        definition: MetricDef,
        labels: Sequence[str],
        factor: float,
    ) -> None:
        found = scan.read(where, file, fallback=True)
        if found is None:
            return
        value = parse.parse_int(found[0])
        self._problems(found[1], 0 if value is not None else 1, file)
        if value is not None:
            out.add(definition, labels, value * factor)

    def _io_counters(
        self,
        out: Families,
        stats: parse.StatsFile,
        labels: Sequence[str],
        read: MetricDef,
        write: MetricDef,
        operations: MetricDef,
        seconds: MetricDef,
    ) -> None:
        """read_bytes/write_bytes sums, every line's samples, and usec sums of a stats file.

        The kernel leaves out counters without samples, so an absent read_bytes is 0 - but
        only in a file that parsed cleanly (a truncated one may have lost the line).
        """
        for key, definition in (("read_bytes", read), ("write_bytes", write)):
            stat = stats.stats.get(key)
            if stat is not None and stat.sum is not None and stat.unit == "bytes":
                out.add(definition, labels, float(stat.sum))
            elif stat is None and not stats.problems:
                out.add(definition, labels, 0.0)
        for op, stat in stats.stats.items():
            out.add(operations, (*labels, op), float(stat.samples))
            if stat.unit in USEC_UNITS and stat.sum is not None:
                out.add(seconds, (*labels, op), stat.sum / 1e6)

    def _brw(self, out: Families, brw: parse.BrwStats, labels: Sequence[str]) -> None:
        for title, rows in brw.sections.items():
            mapping = BRW_HISTOGRAMS.get(title)
            if mapping is None:
                continue
            definition, factor = mapping
            family = out.histogram(definition)
            for index, op in ((1, "read"), (2, "write")):
                buckets: list[tuple[str, float]] = []
                total = 0
                for row in rows:
                    total += row[index]
                    buckets.append((_le(row.bound * factor), float(total)))
                buckets.append(("+Inf", float(total)))
                family.add_metric([*labels, op], buckets, None)
                # no _sum: brw_stats keeps counts per bucket only; _count is the +Inf bucket
                family.samples.append(
                    Sample(
                        definition.name + "_count",
                        dict(zip(BRW_LABELS, (*labels, op), strict=True)),
                        float(total),
                    )
                )

    # -- jobs ----------------------------------------------------------------------------------

    def _jobs(
        self, out: Families, targets: list[TargetJobs], present: set[tuple[str, str]]
    ) -> None:
        for key in [k for k in self._ledgers if k not in present]:
            del self._ledgers[key]  # the target went away (unmounted, failed over)
        if not targets:
            return
        distinct: set[str] = set()
        for t in targets:
            distinct.update(t.io.job_ids)
        keep = distinct if len(distinct) <= self.max_jobs else self._top_jobs(targets)
        out.add(JOBS_SEEN, (), float(len(distinct)))
        out.add(JOBS_FOLDED, (), float(len(distinct) - len(keep)))

        reads = out.get(JOB_READ_BYTES).samples
        writes = out.get(JOB_WRITE_BYTES).samples
        ops = out.get(JOB_OPERATIONS).samples
        read_name, write_name = JOB_READ_BYTES.name, JOB_WRITE_BYTES.name
        ops_name = JOB_OPERATIONS.name
        keep_all = keep is distinct
        for t in targets:
            ledger = self._ledgers.setdefault((t.fs, t.target), JobLedger())
            io = t.io
            fs, target = t.fs, t.target
            # The hot path (64 OSTs x 1000 jobs: 128k samples): comprehensions over the
            # columns, one labels dict shared by a job's samples, Samples built as the tuples
            # they are.
            columns = (io.job_ids, io.read_bytes, io.write_bytes, io.read_samples, io.write_samples)
            if not keep_all:
                kept = [job_id in keep for job_id in io.job_ids]
                columns = tuple(list(compress(column, kept)) for column in columns)  # type: ignore[assignment]
            job_ids, read_bytes, write_bytes, read_calls, write_calls = columns
            labels = [{"fs": fs, "target": target, "job_id": job_id} for job_id in job_ids]
            reads += _job_samples(read_name, labels, read_bytes)
            writes += _job_samples(write_name, labels, write_bytes)
            if self.job_io_operations and t.ops is None:
                for op, calls in (("read_bytes", read_calls), ("write_bytes", write_calls)):
                    ops += [
                        _new(Sample, (ops_name, {**lab, "operation": op}, v, None, None, None))
                        for lab, v in zip(labels, calls, strict=True)
                        if v is not None
                    ]
            if t.ops is not None:
                for job_id, counters in t.ops.items():
                    if not keep_all and job_id not in keep:
                        continue
                    for op, stat in counters.items():
                        if stat.samples and op not in ("read_bytes", "write_bytes"):
                            ops.append(
                                Sample(
                                    ops_name,
                                    {"fs": fs, "target": target, "job_id": job_id, "operation": op},
                                    float(stat.samples),
                                )
                            )
            if not keep_all:
                self._fold(ledger, t, keep)
            if ledger.other:  # folding is (or was) on here: keep the last values for deltas
                self._remember(ledger, t)
                self._emit_other(out, ledger, fs, target)

    def _top_jobs(self, targets: list[TargetJobs]) -> set[str]:
        """The max-jobs most active job ids: by bytes moved, then by operations, then id."""
        volume: dict[str, int] = {}
        calls: dict[str, int] = {}
        for t in targets:
            io = t.io
            for job_id, rb, wb, rs, ws in zip(
                io.job_ids,
                io.read_bytes,
                io.write_bytes,
                io.read_samples,
                io.write_samples,
                strict=True,
            ):
                volume[job_id] = volume.get(job_id, 0) + (rb or 0) + (wb or 0)
                calls[job_id] = calls.get(job_id, 0) + (rs or 0) + (ws or 0)
            if t.ops is not None:
                for job_id, counters in t.ops.items():
                    n = sum(
                        s.samples
                        for k, s in counters.items()
                        if k not in ("read_bytes", "write_bytes")
                    )
                    calls[job_id] = calls.get(job_id, 0) + n
        top = heapq.nlargest(self.max_jobs, volume, key=lambda j: (volume[j], calls[j], j))
        return set(top)

    def _fold(self, ledger: JobLedger, t: TargetJobs, keep: set[str]) -> None:
        """Add to "other" what each folded job did since the previous scrape."""
        other = ledger.other
        other.setdefault("read_bytes", 0.0)
        other.setdefault("write_bytes", 0.0)
        io = t.io
        for job_id, rb, wb in zip(io.job_ids, io.read_bytes, io.write_bytes, strict=True):
            if job_id in keep:
                continue
            before = ledger.last_io.get(job_id, (None, None))
            other["read_bytes"] += _delta(rb, before[0])
            other["write_bytes"] += _delta(wb, before[1])
        if t.ops is not None:
            for job_id, counters in t.ops.items():
                if job_id in keep:
                    continue
                previous = ledger.last_ops.get(job_id, {})
                for op, stat in counters.items():
                    if op in ("read_bytes", "write_bytes"):
                        continue
                    old = previous.get(op)
                    grown = _delta(stat.samples, None if old is None else old.samples)
                    if grown:
                        key = "op:" + op
                        other[key] = other.get(key, 0.0) + grown

    @staticmethod
    def _remember(ledger: JobLedger, t: TargetJobs) -> None:
        io = t.io
        ledger.last_io = dict(
            zip(io.job_ids, zip(io.read_bytes, io.write_bytes, strict=True), strict=True)
        )
        ledger.last_ops = t.ops or {}

    def _emit_other(self, out: Families, ledger: JobLedger, fs: str, target: str) -> None:
        labels = (fs, target, OTHER)
        out.add(JOB_READ_BYTES, labels, ledger.other.get("read_bytes", 0.0))
        out.add(JOB_WRITE_BYTES, labels, ledger.other.get("write_bytes", 0.0))
        for key, value in ledger.other.items():
            if key.startswith("op:"):
                out.add(JOB_OPERATIONS, (*labels, key[3:]), value)


# -- flags ------------------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return value


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--collector.lustre.max-jobs",
        dest="lustre_max_jobs",
        type=_non_negative_int,
        default=1000,
        metavar="N",
        help="job ids (most bytes first, across all targets) with their own job_stats series; "
        'the rest are added up as job_id="other" (default 1000)',
    )
    group.add_argument(
        "--collector.lustre.job-io-operations",
        dest="lustre_job_io_operations",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also export per-job read/write RPC counts of OSTs "
        "(hpcobs_lustre_job_operations_total; doubles the per-job series)",
    )
    group.add_argument(
        "--collector.lustre.lctl-path",
        dest="lustre_lctl_path",
        default="lctl",
        metavar="PATH",
        help='lctl for values in none of the trees ("" to never run it; default lctl)',
    )
    group.add_argument(
        "--collector.lustre.lctl-timeout",
        dest="lustre_lctl_timeout",
        type=parse_duration,
        default=2.0,
        metavar="DURATION",
        help="time limit of one `lctl get_param` call (default 2s)",
    )


def _factory(args: argparse.Namespace, services: Services) -> LustreCollector:
    return LustreCollector(
        args.path_procfs,
        args.path_sysfs,
        max_jobs=args.lustre_max_jobs,
        job_io_operations=args.lustre_job_io_operations,
        lctl_path=args.lustre_lctl_path,
        lctl_timeout=args.lustre_lctl_timeout,
    )


SPEC = CollectorSpec(
    name="lustre",
    help="Lustre clients, OSTs/MDTs and job_stats from /proc, /sys and debugfs",
    default_enabled=True,
    add_arguments=_options,
    factory=_factory,
)
