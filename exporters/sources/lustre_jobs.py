"""Top-N folding of Lustre job_stats: which job ids keep their own series, and `other`.

`JobFolder.fold()` takes the job_stats tables of one scan (`sources.lustre.TargetJobs`) and
returns `JobSeries`: per target, the columns of the jobs that keep their own series and the
totals of job_id="other". At most `max_jobs` job ids (across all targets of the node) keep
their own series, chosen by bytes moved, then operations, then id; the others are added into
"other" per target. "other" is kept monotonic: it grows by what folded jobs did since the
previous scan (`JobLedger`), so `rate()` over it stays meaningful while jobs move in and out
of the top set. The folder outlives scans; call it from one thread at a time.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress

from hpcobs.exporters.parse import lustre as parse
from hpcobs.exporters.sources.lustre import TargetJobs

IO_KEYS = ("read_bytes", "write_bytes")


@dataclass
class JobLedger:
    """What outlives a scan for one target: the last values of every job (to fold only
    what a job did since the previous scan) and the monotonic totals of job_id="other"."""

    last_io: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    last_ops: dict[str, dict[str, parse.Stat]] = field(default_factory=dict)
    other: dict[str, float] = field(default_factory=dict)  # "read_bytes", "op:open", ...


@dataclass(frozen=True)
class TargetJobSeries:
    """One target's job series of this scan: columns of the kept jobs (one entry per job,
    None where a job has no such counter), MDT counters of the kept jobs, and "other"."""

    fs: str
    target: str
    job_ids: Sequence[str]
    read_bytes: Sequence[int | None]
    write_bytes: Sequence[int | None]
    read_calls: Sequence[int | None]
    write_calls: Sequence[int | None]
    ops: dict[str, dict[str, parse.Stat]] | None  # MDTs: kept job → its counters
    # "read_bytes", "write_bytes", "op:<name>" of the folded jobs; empty while this target
    # never folded a job (no "other" series then)
    other: dict[str, float]


@dataclass(frozen=True)
class JobSeries:
    seen: int  # distinct job ids over all targets
    folded: int  # of them, added into "other"
    targets: list[TargetJobSeries]


def delta(now: int | None, before: int | None) -> int:
    """Growth of a counter since the previous scan (a counter that went down restarted)."""
    if now is None:
        return 0
    if before is None or now < before:
        return now
    return now - before


class JobFolder:
    """Folds the job_stats of every scan, keeping one `JobLedger` per target."""

    def __init__(self, max_jobs: int = 1000) -> None:
        if max_jobs < 0:
            raise ValueError("--collector.lustre.max-jobs must be 0 or more")
        self.max_jobs = max_jobs
        self._ledgers: dict[tuple[str, str], JobLedger] = {}

    def fold(self, tables: list[TargetJobs], present: set[tuple[str, str]]) -> JobSeries | None:
        """The series of this scan; None when no target has job_stats. `present`: the
        (fs, target) pairs of the scan (a ledger of a target that went away is dropped)."""
        for key in [k for k in self._ledgers if k not in present]:
            del self._ledgers[key]  # the target went away (unmounted, failed over)
        if not tables:
            return None
        distinct: set[str] = set()
        for t in tables:
            distinct.update(t.io.job_ids)
        keep_all = len(distinct) <= self.max_jobs
        keep = distinct if keep_all else self._top_jobs(tables)
        targets = []
        for t in tables:
            ledger = self._ledgers.setdefault((t.fs, t.target), JobLedger())
            io = t.io
            job_ids: Sequence[str] = io.job_ids
            columns: tuple[Sequence[int | None], ...] = (
                io.read_bytes,
                io.write_bytes,
                io.read_samples,
                io.write_samples,
            )
            ops = t.ops
            if not keep_all:
                kept = [job_id in keep for job_id in job_ids]
                job_ids = list(compress(job_ids, kept))
                columns = tuple(list(compress(column, kept)) for column in columns)
                if ops is not None:
                    ops = {job_id: c for job_id, c in ops.items() if job_id in keep}
                self._fold(ledger, t, keep)
            other: dict[str, float] = {}
            if ledger.other:  # folding is (or was) on here: keep the last values for deltas
                self._remember(ledger, t)
                other = dict(ledger.other)
            read_bytes, write_bytes, read_calls, write_calls = columns
            targets.append(
                TargetJobSeries(
                    t.fs,
                    t.target,
                    job_ids,
                    read_bytes,
                    write_bytes,
                    read_calls,
                    write_calls,
                    ops,
                    other,
                )
            )
        return JobSeries(len(distinct), len(distinct) - len(keep), targets)

    def _top_jobs(self, tables: list[TargetJobs]) -> set[str]:
        """The max-jobs most active job ids: by bytes moved, then by operations, then id."""
        volume: dict[str, int] = {}
        calls: dict[str, int] = {}
        for t in tables:
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
                    n = sum(s.samples for k, s in counters.items() if k not in IO_KEYS)
                    calls[job_id] = calls.get(job_id, 0) + n
        top = heapq.nlargest(self.max_jobs, volume, key=lambda j: (volume[j], calls[j], j))
        return set(top)

    @staticmethod
    def _fold(ledger: JobLedger, t: TargetJobs, keep: set[str]) -> None:
        """Add to "other" what each folded job did since the previous scan."""
        other = ledger.other
        other.setdefault("read_bytes", 0.0)
        other.setdefault("write_bytes", 0.0)
        io = t.io
        for job_id, rb, wb in zip(io.job_ids, io.read_bytes, io.write_bytes, strict=True):
            if job_id in keep:
                continue
            before = ledger.last_io.get(job_id, (None, None))
            other["read_bytes"] += delta(rb, before[0])
            other["write_bytes"] += delta(wb, before[1])
        if t.ops is not None:
            for job_id, counters in t.ops.items():
                if job_id in keep:
                    continue
                previous = ledger.last_ops.get(job_id, {})
                for op, stat in counters.items():
                    if op in IO_KEYS:
                        continue
                    old = previous.get(op)
                    grown = delta(stat.samples, None if old is None else old.samples)
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
