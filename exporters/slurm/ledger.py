"""Exactly-once accounting: finished jobs, their resource-time, queue waits, wait thresholds.

slurmctld shows a finished job only for `MinJobAge`, and a pending array's tasks only as one
record, so every cycle sees some jobs again and some for the first time. The ledger counts
each event once, however often (and from however many sources) it is seen:

- a finished job once per run, keyed by (job id, end time): the same job seen finished again
  by `squeue`, or read from the jobcomp log after `squeue` showed it, is not counted again,
  while a job requeued and finished once more (a new end time) is;
- a queue wait once per start, keyed by (job id, start time), when the job is first seen
  started (or finished, if it started and ended between two cycles);
- a wait threshold once per (job or array task, threshold), when a pending job's eligible
  wait crosses it, or when it starts or ends having waited longer than it without being seen
  pending past it.

The keys of a job are kept while slurmctld still shows it and dropped once it has been absent
from two successful snapshots (it never comes back), so the state stays as small as
slurmctld's own job table. Counters and keys are saved together (see `state.py`), so a
restart neither counts a job twice nor misses one that finished while it was down.

Two sources that disagree on a timestamp by exactly one hour (the jobcomp log writes local
time, ambiguous in the hour a daylight-saving change repeats) still name the same event.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcobs.exporters.slurm.model import (
    FINISHED_STATES,
    STARTED_STATES,
    Job,
    array_task_ids,
    compress_ids,
)

log = logging.getLogger("hpcobs.slurm")

DEFAULT_CAUSES: Mapping[str, str] = {
    "completed": "none",
    "cancelled": "user",
    "deadline": "user",
    "failed": "user",
    "out_of_memory": "user",
    "timeout": "user",
    "boot_fail": "system",
    "node_fail": "system",
    "preempted": "system",
}
CAUSES = ("none", "user", "system")
RESOURCES = ("cpu", "gpu")
ABSENT_CYCLES_BEFORE_PRUNE = 2
STATE_FORMAT = 1


def threshold_label(seconds: float) -> str:
    """`3600.0` → `3600` (the `threshold` label: seconds, as the bucket bound)."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _encode_tasks(tasks: set[int]) -> str:
    """{-1} (a job outside an array) → `job`; array task ids → `0-99,105`."""
    ranges = compress_ids(t for t in tasks if t >= 0)
    if -1 in tasks:
        return f"job,{ranges}" if ranges else "job"
    return ranges


def _decode_tasks(text: str) -> set[int]:
    out: set[int] = set()
    if text.startswith("job"):
        out.add(-1)
        text = text[3:].lstrip(",")
    if text:
        out.update(array_task_ids(text))
    return out


def _same_time(a: int, b: int) -> bool:
    return a == b or abs(a - b) == 3600


@dataclass
class Histogram:
    """Non-cumulative bucket counts (the last one is +Inf), sum and count."""

    counts: list[int]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> Histogram:
        return cls([0] * (len(bounds) + 1))

    def observe(self, bounds: Sequence[float], value: float) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out


@dataclass(frozen=True)
class LedgerView:
    """An immutable copy of the counters, for scrapes."""

    finished: dict[tuple[str, str, str], float]
    resource_seconds: dict[tuple[str, str, str], float]
    exceeded: dict[tuple[str, str], float]
    waits: dict[str, tuple[tuple[int, ...], float]]
    bounds: tuple[float, ...]
    causes: dict[str, str] = field(default_factory=dict)  # finished state → cause
    thresholds: tuple[str, ...] = ()  # threshold labels


@dataclass
class _Keys:
    finished: dict[int, list[int]] = field(default_factory=dict)  # job id → end times
    started: dict[int, list[int]] = field(default_factory=dict)  # job id → start times
    # base id (array job id or job id) → threshold → task ids (-1: not an array task)
    exceeded: dict[int, dict[float, set[int]]] = field(default_factory=dict)
    absent_jobs: dict[int, int] = field(default_factory=dict)
    absent_bases: dict[int, int] = field(default_factory=dict)
    # (base id, threshold) → remainder spec whose tasks are all marked. The fast path of
    # `_pending`: a remainder seen again unchanged is not expanded task by task. 100 pending
    # arrays of 1,000 tasks past 3 thresholds: 0.2–0.5 ms CPU a cycle with it, 120–145 ms
    # without (bench/bench_slurm.py --offline, 2-core VM).
    complete_spec: dict[tuple[int, float], str] = field(default_factory=dict)


class Ledger:
    """Counters that must count each job event exactly once (not thread-safe: one cycle at a
    time mutates it; scrapes read `view()` copies)."""

    def __init__(
        self,
        *,
        causes: Mapping[str, str] | None = None,
        buckets: Iterable[float] = (),
        thresholds: Iterable[float] = (),
    ) -> None:
        self.causes = dict(DEFAULT_CAUSES if causes is None else causes)
        self.thresholds = tuple(sorted({float(t) for t in thresholds if t > 0}))
        self.bounds = tuple(sorted({float(b) for b in buckets if b > 0} | set(self.thresholds)))
        if any(math.isinf(b) or math.isnan(b) for b in self.bounds):
            raise ValueError("histogram bounds must be finite")
        self.finished: dict[tuple[str, str, str], float] = {}
        self.resource_seconds: dict[tuple[str, str, str], float] = {}
        self.exceeded: dict[tuple[str, str], float] = {}
        self.waits: dict[str, Histogram] = {}
        self.hwm = 0
        self.generation = 0
        self._keys = _Keys()

    # -- public ------------------------------------------------------------------------

    def cause(self, state: str) -> str:
        return self.causes.get(state, "unknown")

    def apply_finished(self, jobs: Iterable[Job]) -> int:
        """Count finished jobs from a log (jobcomp); returns how many were new."""
        new = 0
        for job in jobs:
            if job.state in FINISHED_STATES and self._count_finished(job, from_log=True):
                new += 1
        return new

    def apply_snapshot(self, jobs: Sequence[Job], now: float, *, complete: bool = True) -> int:
        """Account for one job list from slurmctld; returns how many events were new. Jobs
        missing from two complete lists in a row are forgotten; pass `complete=False` when
        some records could not be read (nothing is forgotten then)."""
        events = 0
        for job in jobs:
            state = job.state
            if state in FINISHED_STATES:
                events += self._count_finished(job, from_log=False)
            elif state in STARTED_STATES:
                if job.start_time > 0 and not self._seen_start(job, from_log=False):
                    self._observe_wait(job)
                    events += 1
            elif state == "pending" and self.thresholds:
                events += self._pending(job, now)
            if job.job_id > self.hwm:
                self.hwm = job.job_id
        if complete:
            self._prune(jobs)
        return events

    def view(self) -> LedgerView:
        return LedgerView(
            finished=dict(self.finished),
            resource_seconds=dict(self.resource_seconds),
            exceeded=dict(self.exceeded),
            waits={p: (tuple(h.cumulative()), h.total) for p, h in self.waits.items()},
            bounds=self.bounds,
            causes=dict(self.causes),
            thresholds=tuple(threshold_label(t) for t in self.thresholds),
        )

    def tracked_jobs(self) -> int:
        return len(self._keys.finished) + len(self._keys.started) + len(self._keys.exceeded)

    # -- counting ----------------------------------------------------------------------

    def _count_finished(self, job: Job, *, from_log: bool) -> bool:
        keys = self._keys
        ends = keys.finished.get(job.job_id)
        if ends is not None and any(_same_time(e, job.end_time) for e in ends):
            return False
        keys.finished.setdefault(job.job_id, []).append(job.end_time)
        keys.absent_jobs.pop(job.job_id, None)
        partition, state = job.partition, job.state
        cause = self.cause(state)
        key = (partition, state, cause)
        # A finished record counts once, as in Slurm's own accounting (and its jobcomp log): a
        # pending array cancelled as a whole is one record, whatever its number of tasks.
        self.finished[key] = self.finished.get(key, 0.0) + 1
        duration = max(0, job.end_time - job.start_time) if job.ran and job.end_time else 0
        for resource, amount in (("cpu", job.cpus), ("gpu", job.gpus)):
            rkey = (partition, state, resource)
            self.resource_seconds[rkey] = self.resource_seconds.get(rkey, 0.0) + float(
                amount * duration
            )
        if job.ran:
            if not self._seen_start(job, from_log=from_log):
                self._observe_wait(job)
        elif job.eligible_time > 0 and job.end_time > job.eligible_time:
            self._exceed(job, job.end_time - job.eligible_time)
        if job.job_id > self.hwm:
            self.hwm = job.job_id
        self.generation += 1
        return True

    def _seen_start(self, job: Job, *, from_log: bool) -> bool:
        starts = self._keys.started.get(job.job_id)
        if not starts:
            return False
        # The log's StartTime is a resize time for a resized job: any start of the job counts.
        return from_log or any(_same_time(s, job.start_time) for s in starts)

    def _observe_wait(self, job: Job) -> None:
        self._keys.started.setdefault(job.job_id, []).append(job.start_time)
        self._keys.absent_jobs.pop(job.job_id, None)
        # A job that started always became eligible; without the time the wait counts as 0.
        since = job.eligible_time or job.start_time
        wait = float(max(0, job.start_time - since))
        hist = self.waits.get(job.partition)
        if hist is None:
            hist = self.waits[job.partition] = Histogram.empty(self.bounds)
        hist.observe(self.bounds, wait)
        self._exceed(job, wait)
        self.generation += 1

    def _exceed(self, job: Job, waited: float) -> None:
        for threshold in self.thresholds:
            if waited < threshold:
                break
            for task in job.task_ids():
                self._mark(job.base_id, task, threshold, job.partition)

    def _mark(self, base: int, task: int, threshold: float, partition: str) -> int:
        by_threshold = self._keys.exceeded.setdefault(base, {})
        tasks = by_threshold.setdefault(threshold, set())
        if task in tasks:
            return 0
        tasks.add(task)
        self._keys.absent_bases.pop(base, None)
        key = (partition, threshold_label(threshold))
        self.exceeded[key] = self.exceeded.get(key, 0.0) + 1
        self.generation += 1
        return 1

    def _pending(self, job: Job, now: float) -> int:
        if job.eligible_time <= 0 or job.eligible_time > now:
            return 0
        waited = now - job.eligible_time
        if waited < self.thresholds[0]:
            return 0
        new = 0
        spec = job.array_tasks
        for threshold in self.thresholds:
            if waited < threshold:
                break
            fast = (job.base_id, threshold)
            if job.is_remainder and self._keys.complete_spec.get(fast) == spec:
                continue
            for task in job.task_ids():
                new += self._mark(job.base_id, task, threshold, job.partition)
            if job.is_remainder:
                self._keys.complete_spec[fast] = spec
        return new

    def _prune(self, jobs: Sequence[Job]) -> None:
        keys = self._keys
        ids = {job.job_id for job in jobs}
        bases = {job.base_id for job in jobs}
        dropped = False
        for job_id in set(keys.finished) | set(keys.started):
            if job_id in ids:
                keys.absent_jobs.pop(job_id, None)
                continue
            misses = keys.absent_jobs.get(job_id, 0) + 1
            if misses >= ABSENT_CYCLES_BEFORE_PRUNE:
                keys.finished.pop(job_id, None)
                keys.started.pop(job_id, None)
                keys.absent_jobs.pop(job_id, None)
                dropped = True
            else:
                keys.absent_jobs[job_id] = misses
        for base in list(keys.exceeded):
            if base in bases:
                keys.absent_bases.pop(base, None)
                continue
            misses = keys.absent_bases.get(base, 0) + 1
            if misses >= ABSENT_CYCLES_BEFORE_PRUNE:
                del keys.exceeded[base]
                keys.absent_bases.pop(base, None)
                for threshold in self.thresholds:
                    keys.complete_spec.pop((base, threshold), None)
                dropped = True
            else:
                keys.absent_bases[base] = misses
        for key in [k for k in keys.complete_spec if k[0] not in keys.exceeded]:
            del keys.complete_spec[key]
        if dropped:
            self.generation += 1

    # -- persistence -------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        keys = self._keys
        return {
            "format": STATE_FORMAT,
            "hwm": self.hwm,
            "bounds": list(self.bounds),
            "finished": [[*k, v] for k, v in sorted(self.finished.items())],
            "resource_seconds": [[*k, v] for k, v in sorted(self.resource_seconds.items())],
            "exceeded": [[*k, v] for k, v in sorted(self.exceeded.items())],
            "waits": [[p, h.counts, h.total] for p, h in sorted(self.waits.items())],
            "keys": {
                "finished": {str(k): v for k, v in keys.finished.items()},
                "started": {str(k): v for k, v in keys.started.items()},
                "exceeded": {
                    str(base): {repr(t): _encode_tasks(tasks) for t, tasks in by_t.items()}
                    for base, by_t in keys.exceeded.items()
                },
                "absent_jobs": {str(k): v for k, v in keys.absent_jobs.items()},
                "absent_bases": {str(k): v for k, v in keys.absent_bases.items()},
            },
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore counters and keys saved by `to_state()`. Raises ValueError, in plain words
        and without changing anything, when `state` is malformed."""
        if not isinstance(state, Mapping):
            raise ValueError("its job ledger is not a JSON object")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"its job ledger has an unknown format {state.get('format')!r} "
                f"(this exporter writes {STATE_FORMAT})"
            )
        try:
            loaded = self._parse(state)
        except KeyError as exc:
            raise ValueError(f"its job ledger lacks the key {exc}") from None
        except (TypeError, AttributeError, ValueError, OverflowError) as exc:
            raise ValueError(f"its job ledger holds a malformed value ({exc})") from None
        (
            self.hwm,
            self.finished,
            self.resource_seconds,
            self.exceeded,
            self.waits,
            self._keys,
            saved_bounds,
        ) = loaded
        if saved_bounds != self.bounds and state["waits"]:
            log.warning(
                "queue-wait buckets changed since the state was saved: the histogram restarts",
                extra={"saved": list(saved_bounds), "configured": list(self.bounds)},
            )

    def _parse(
        self, state: Mapping[str, Any]
    ) -> tuple[
        int,
        dict[tuple[str, str, str], float],
        dict[tuple[str, str, str], float],
        dict[tuple[str, str], float],
        dict[str, Histogram],
        _Keys,
        tuple[float, ...],
    ]:
        hwm = int(state.get("hwm", 0))
        finished = {(str(p), str(s), str(c)): float(v) for p, s, c, v in state["finished"]}
        resource_seconds = {
            (str(p), str(s), str(r)): float(v) for p, s, r, v in state["resource_seconds"]
        }
        exceeded = {(str(p), str(t)): float(v) for p, t, v in state["exceeded"]}
        saved_bounds = tuple(float(b) for b in state["bounds"])
        waits = {}
        saved_waits = list(state["waits"])
        if saved_bounds == self.bounds:
            for p, counts, total in saved_waits:
                if len(counts) == len(self.bounds) + 1:
                    waits[str(p)] = Histogram([int(c) for c in counts], float(total))
        keys = state["keys"]
        restored = _Keys(
            finished={int(k): [int(x) for x in v] for k, v in keys["finished"].items()},
            started={int(k): [int(x) for x in v] for k, v in keys["started"].items()},
            exceeded={
                int(base): {float(t): _decode_tasks(str(r)) for t, r in by_t.items()}
                for base, by_t in keys["exceeded"].items()
            },
            absent_jobs={int(k): int(v) for k, v in keys.get("absent_jobs", {}).items()},
            absent_bases={int(k): int(v) for k, v in keys.get("absent_bases", {}).items()},
        )
        return hwm, finished, resource_seconds, exceeded, waits, restored, saved_bounds
