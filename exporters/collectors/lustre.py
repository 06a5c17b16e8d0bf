"""Lustre: client mounts, OST/MDT targets and per-job statistics, as metric families.

The metric definitions and the mapping from one scan's model to families. Reading the files
(procfs, sysfs, debugfs, the `lctl` fallback) is `hpcobs.exporters.sources.lustre`
(`LustreSource.scan()` → `LustreScan`); folding job_stats to the top `--collector.lustre.
max-jobs` job ids plus a monotonic `job_id="other"` is `hpcobs.exporters.sources.lustre_jobs`
(`JobFolder.fold()` → `JobSeries`). See docs/lustre.md.

Nothing mounted or served (no `fs/lustre` directory anywhere) is normal: no series, up = 1.
The collector never raises: a file that cannot be read or parsed is logged once by the source,
and what was read is exported.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Iterator, Sequence
from itertools import repeat

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from hpcobs.exporters.parse import lustre as parse
from hpcobs.exporters.runtime.cli import int_at_least, parse_duration
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, Services
from hpcobs.exporters.runtime.families import Families
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.sources import lustre as source
from hpcobs.exporters.sources.lustre import (
    Client,
    ClientImport,
    LustreScan,
    LustreSource,
    Space,
    Target,
)
from hpcobs.exporters.sources.lustre_jobs import IO_KEYS, JobFolder, TargetJobSeries

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
KIB = 1024.0
MIB = 1024.0 * 1024.0
# a Space's fields → (family, factor to the base unit)
CLIENT_SPACE = (
    ("kbytes_total", CLIENT_CAPACITY, KIB),
    ("kbytes_free", CLIENT_FREE, KIB),
    ("kbytes_avail", CLIENT_AVAILABLE, KIB),
    ("files_total", CLIENT_INODES, 1.0),
    ("files_free", CLIENT_INODES_FREE, 1.0),
)
TARGET_SPACE = (
    ("kbytes_total", TARGET_CAPACITY, KIB),
    ("kbytes_free", TARGET_FREE, KIB),
    ("kbytes_avail", TARGET_AVAILABLE, KIB),
    ("files_total", TARGET_INODES, 1.0),
    ("files_free", TARGET_INODES_FREE, 1.0),
)
IMPORT_HEALTHY = frozenset({"FULL", "IDLE"})
USEC_UNITS = frozenset({"usec", "usecs"})
OTHER = "other"
# prometheus_client's Sample is a NamedTuple; tuple.__new__ builds one without the Python-level
# constructor (a third of the cost of a job sample)
_new = tuple.__new__


def _le(bound: float) -> str:
    return repr(float(bound))


def _job_samples(
    name: str, labels: list[dict[str, str]], values: Sequence[int | None]
) -> list[Sample]:
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


# -- the collector ----------------------------------------------------------------------------


class LustreCollector(Collector):
    """Scans with a `LustreSource`, folds job_stats with a `JobFolder`, maps both to families."""

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
        self.jobs = JobFolder(max_jobs)
        self.source = LustreSource(
            procfs,
            sysfs,
            lctl_path=lctl_path,
            lctl_timeout=lctl_timeout,
            lctl_budget=lctl_budget,
        )
        self.job_io_operations = job_io_operations
        self._lock = threading.Lock()  # one scrape at a time: the folder's ledgers

    def collect(self) -> Iterator[Metric]:
        with self._lock, source.gc_paused():
            scan = self.source.scan()
            if scan is None:
                return iter(())  # no Lustre on this node: a normal state
            out = Families()  # families in first-use order, as the scan found them
            # a bug in one part of the mapping must not fail the rest (logged once, by step)
            guard = self.source.guard
            guard("families of the node", self._node, out, scan)
            for client in scan.clients:
                guard(f"families of {client.device}", self._client, out, client)
            for i in scan.imports:
                guard(f"families of {i.fs}-{i.target} import", self._import, out, i)
            for target in scan.targets:
                guard(f"families of {target.fs}-{target.target}", self._target, out, target)
            guard("job_stats", self._jobs, out, scan)
            return iter(out)

    # -- node, clients, targets ----------------------------------------------------------------

    @staticmethod
    def _node(out: Families, scan: LustreScan) -> None:
        if scan.health_ok is not None:
            out.add(HEALTH_OK, {}, 1.0 if scan.health_ok else 0.0)
        if scan.version is not None:
            out.add_values(VERSION_INFO, (scan.version,), 1.0)

    def _client(self, out: Families, client: Client) -> None:
        labels = (client.fs,)
        if client.stats is not None:
            self._io_counters(
                out,
                client.stats,
                labels,
                CLIENT_READ_BYTES,
                CLIENT_WRITE_BYTES,
                CLIENT_OPERATIONS,
                CLIENT_OPERATION_SECONDS,
            )
        self._space(out, client.space, labels, CLIENT_SPACE)
        cache = client.cache
        if cache is not None:
            if cache.max_mb is not None:
                out.add_values(CLIENT_CACHE_MAX, labels, cache.max_mb * MIB)
            if cache.used_mb is not None:
                out.add_values(CLIENT_CACHE_USED, labels, cache.used_mb * MIB)

    @staticmethod
    def _import(out: Families, imported: ClientImport) -> None:
        labels = (imported.fs, imported.target)
        state = imported.state
        if state is not None:
            out.add_values(IMPORT_UP, labels, 1.0 if state in IMPORT_HEALTHY else 0.0)
            out.add_values(IMPORT_STATE, (*labels, state.lower()), 1.0)
        if imported.rpcs_in_flight is not None:
            out.add_values(RPCS_IN_FLIGHT, labels, float(imported.rpcs_in_flight))
        if imported.max_rpcs_in_flight is not None:
            out.add_values(MAX_RPCS_IN_FLIGHT, labels, imported.max_rpcs_in_flight * 1.0)

    def _target(self, out: Families, target: Target) -> None:
        labels = (target.fs, target.target)
        if target.stats is not None:
            self._io_counters(
                out,
                target.stats,
                labels,
                TARGET_READ_BYTES,
                TARGET_WRITE_BYTES,
                TARGET_OPERATIONS,
                TARGET_OPERATION_SECONDS,
            )
        if target.md_stats is not None:
            for op, stat in target.md_stats.stats.items():
                out.add_values(TARGET_MD_OPERATIONS, (*labels, op), float(stat.samples))
        self._space(out, target.space, labels, TARGET_SPACE)
        if target.num_exports is not None:
            out.add_values(TARGET_EXPORTS, labels, target.num_exports * 1.0)
        if target.recovery is not None:
            out.add_values(TARGET_RECOVERY, (*labels, target.recovery), 1.0)
        if target.brw is not None:
            self._brw(out, target.brw, labels)

    @staticmethod
    def _space(
        out: Families,
        space: Space,
        labels: Sequence[str],
        table: Sequence[tuple[str, MetricDef, float]],
    ) -> None:
        for attribute, definition, factor in table:
            value: int | None = getattr(space, attribute)
            if value is not None:
                out.add_values(definition, labels, value * factor)

    @staticmethod
    def _io_counters(
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
                out.add_values(definition, labels, float(stat.sum))
            elif stat is None and not stats.problems:
                out.add_values(definition, labels, 0.0)
        for op, stat in stats.stats.items():
            out.add_values(operations, (*labels, op), float(stat.samples))
            if stat.unit in USEC_UNITS and stat.sum is not None:
                out.add_values(seconds, (*labels, op), stat.sum / 1e6)

    @staticmethod
    def _brw(out: Families, brw: parse.BrwStats, labels: Sequence[str]) -> None:
        for title, rows in brw.sections.items():
            mapping = BRW_HISTOGRAMS.get(title)
            if mapping is None:
                continue
            definition, factor = mapping
            for index, op in ((1, "read"), (2, "write")):
                buckets: list[tuple[str, float]] = []
                total = 0
                for row in rows:
                    total += row[index]
                    buckets.append((_le(row.bound * factor), float(total)))
                buckets.append(("+Inf", float(total)))
                values = (*labels, op)
                out.histogram(definition, values, buckets, None)
                # no _sum: brw_stats keeps counts per bucket only; _count is the +Inf bucket
                out.family(definition).samples.append(
                    Sample(
                        definition.name + "_count",
                        dict(zip(BRW_LABELS, values, strict=True)),
                        float(total),
                    )
                )

    # -- jobs ----------------------------------------------------------------------------------

    def _jobs(self, out: Families, scan: LustreScan) -> None:
        series = self.jobs.fold(
            [t.jobs for t in scan.targets if t.jobs is not None],
            {(t.fs, t.target) for t in scan.targets},
        )
        if series is None:
            return
        out.add(JOBS_SEEN, {}, float(series.seen))
        out.add(JOBS_FOLDED, {}, float(series.folded))
        reads = out.family(JOB_READ_BYTES).samples
        writes = out.family(JOB_WRITE_BYTES).samples
        ops = out.family(JOB_OPERATIONS).samples
        read_name, write_name = JOB_READ_BYTES.name, JOB_WRITE_BYTES.name
        ops_name = JOB_OPERATIONS.name
        for t in series.targets:
            fs, target = t.fs, t.target
            # The hot path (64 OSTs x 1000 jobs: 128k samples): comprehensions over the
            # columns, one labels dict shared by a job's samples, Samples built as the tuples
            # they are.
            labels = [{"fs": fs, "target": target, "job_id": job_id} for job_id in t.job_ids]
            reads += _job_samples(read_name, labels, t.read_bytes)
            writes += _job_samples(write_name, labels, t.write_bytes)
            if t.ops is None:
                if self.job_io_operations:
                    for op, calls in (("read_bytes", t.read_calls), ("write_bytes", t.write_calls)):
                        ops += [
                            _new(Sample, (ops_name, {**lab, "operation": op}, v, None, None, None))
                            for lab, v in zip(labels, calls, strict=True)
                            if v is not None
                        ]
            else:
                for job_id, counters in t.ops.items():
                    for op, stat in counters.items():
                        if stat.samples and op not in IO_KEYS:
                            ops.append(
                                Sample(
                                    ops_name,
                                    {"fs": fs, "target": target, "job_id": job_id, "operation": op},
                                    float(stat.samples),
                                )
                            )
            if t.other:
                self._other(out, t)

    @staticmethod
    def _other(out: Families, t: TargetJobSeries) -> None:
        labels = (t.fs, t.target, OTHER)
        out.add_values(JOB_READ_BYTES, labels, t.other.get("read_bytes", 0.0))
        out.add_values(JOB_WRITE_BYTES, labels, t.other.get("write_bytes", 0.0))
        for key, value in t.other.items():
            if key.startswith("op:"):
                out.add_values(JOB_OPERATIONS, (*labels, key[3:]), value)


# -- flags ------------------------------------------------------------------------------------


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--collector.lustre.max-jobs",
        dest="lustre_max_jobs",
        type=int_at_least(0),
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
