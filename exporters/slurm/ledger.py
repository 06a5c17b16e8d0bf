"""Exactly-once accounting: finished jobs, their resource-time, run time, time to result,
queue waits, wait thresholds, requeues, pending time by reason, the recent failed jobs.

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

- with a finished job, once: its run time (end − start, if it ran) by partition and state, its
  time to result (end − submit, if it completed) by partition, and its allocated
  resource-time by account (`Accounts`: the top accounts by name, the rest as `other`); a
  job that ended FAILED, NODE_FAIL, TIMEOUT, OUT_OF_MEMORY or BOOT_FAIL joins the list of
  recent failures (the newest `failed_max`, dropped `failed_max_age` after their end);
- requeues once each: a job's requeue count is the most any source proves — slurmctld's
  restart count, or the jobcomp log's runs of the job (a record in a state that is not final,
  such as PENDING after `scontrol requeue`, or a second record) — and only its growth counts;
- pending time per snapshot: each pending job (array task) adds the time since the previous
  snapshot (or since its submission, if later) to its partition and current reason, and a
  job seen pending last time and started since adds the time until its start. The time of
  the last snapshot is saved with the counters, so a restart neither counts a stretch twice
  nor loses the downtime of jobs still pending; the first snapshot ever counts nothing.

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
    FAILED_INFO_STATES,
    FINISHED_STATES,
    STARTED_STATES,
    Job,
    array_task_ids,
    compress_ids,
    label_value,
    pending_reason,
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
STATE_FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1 (before issue 17) loads with the newer counters at 0
OTHER_ACCOUNTS = "other"
NO_ACCOUNT = "none"
SWAP_MARGIN = 1.25
"""An account outside the named top K takes the place of the named one with the least usage
only when its usage is this many times larger (so two close accounts do not swap back and
forth, each swap starting a series)."""
MIN_TRACKED_ACCOUNTS = 1000


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


def _bounds(buckets: Iterable[float], extra: Iterable[float] = ()) -> tuple[float, ...]:
    bounds = tuple(sorted({float(b) for b in buckets if b > 0} | {float(b) for b in extra}))
    if any(math.isinf(b) or math.isnan(b) for b in bounds):
        raise ValueError("histogram bounds must be finite")
    return bounds


def _observe(hists: dict[Any, Histogram], key: Any, bounds: Sequence[float], v: float) -> None:
    hist = hists.get(key)
    if hist is None:
        hist = hists[key] = Histogram.empty(bounds)
    hist.observe(bounds, v)


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


@dataclass(frozen=True, slots=True)
class FailedJob:
    """One job of the recent-failures list (label values, times in Unix seconds)."""

    job_id: int
    user: str
    account: str
    partition: str
    state: str
    exit_code: str
    nodes: str
    start_time: int
    end_time: int

    def to_state(self) -> list[Any]:
        return [
            self.job_id,
            self.user,
            self.account,
            self.partition,
            self.state,
            self.exit_code,
            self.nodes,
            self.start_time,
            self.end_time,
        ]

    @classmethod
    def from_state(cls, row: Sequence[Any]) -> FailedJob:
        job_id, user, account, partition, state, exit_code, nodes, start, end = row
        return cls(
            int(job_id),
            str(user),
            str(account),
            str(partition),
            str(state),
            str(exit_code),
            str(nodes),
            int(start),
            int(end),
        )


def failed_job(job: Job) -> FailedJob:
    return FailedJob(
        job_id=job.job_id,
        user=job.user,
        account=job.account or NO_ACCOUNT,
        partition=label_value(job.partition),
        state=job.state,
        exit_code=job.exit_code,
        nodes=label_value(job.nodes),
        start_time=job.start_time,
        end_time=job.end_time,
    )


Hist = tuple[tuple[int, ...], float]  # cumulative bucket counts (the last: +Inf), sum


@dataclass(frozen=True)
class LedgerView:
    """An immutable copy of the counters, for scrapes."""

    finished: dict[tuple[str, str, str], float]
    resource_seconds: dict[tuple[str, str, str], float]
    exceeded: dict[tuple[str, str], float]
    waits: dict[str, Hist]
    bounds: tuple[float, ...]
    causes: dict[str, str] = field(default_factory=dict)  # finished state → cause
    thresholds: tuple[str, ...] = ()  # threshold labels
    run: dict[tuple[str, str], Hist] = field(default_factory=dict)  # (partition, state)
    run_bounds: tuple[float, ...] = ()
    time_to_result: dict[str, Hist] = field(default_factory=dict)  # partition
    result_bounds: tuple[float, ...] = ()
    requeues: dict[str, float] = field(default_factory=dict)  # partition
    pending_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    account_seconds: dict[tuple[str, str, str], float] = field(default_factory=dict)
    failed: tuple[FailedJob, ...] = ()  # newest first
    failed_max: int = 0
    failed_max_age: float = 0.0

    def recent_failures(self, now: float) -> list[FailedJob]:
        """The failed jobs to list at `now`: ended within failed_max_age, at most failed_max."""
        oldest = now - self.failed_max_age
        return [f for f in self.failed if f.end_time >= oldest][: self.failed_max]


class Accounts:
    """Allocated resource-time by account, the top `limit` accounts by name, the rest as
    `other`; each exported series only grows.

    Every account's usage (CPU-seconds + GPU-seconds of its finished jobs) is tracked (up to
    max(1000, 10 × limit) accounts; past that the least used tenth of the unnamed ones is
    forgotten at once). An account is named once it has resource-time and a place is free,
    or when its usage exceeds SWAP_MARGIN × that of the least used named account, which then
    loses its name: its series stops (kept, not shown, and continued should it come back),
    and its later resource-time goes to `other`. A named account's series holds only what
    came while it was named; `other` everything else.

    The least used named account is remembered until its usage or the named set changes, so
    an unnamed account's event costs O(1), not O(limit): reading a jobcomp log's whole
    history is one event per line."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.cap = max(MIN_TRACKED_ACCOUNTS, 10 * self.limit)
        self.named: set[str] = set()
        self.usage: dict[str, float] = {}
        self.counters: dict[str, dict[tuple[str, str], float]] = {}
        self._least: str | None = None

    def add(self, account: str, state: str, amounts: Sequence[tuple[str, float]]) -> None:
        used = sum(v for _, v in amounts)
        if account != OTHER_ACCOUNTS:
            self.usage[account] = self.usage.get(account, 0.0) + used
            if account in self.named:
                if account == self._least:
                    self._least = None
            elif not self._admit(account):
                account = OTHER_ACCOUNTS
            if len(self.usage) > self.cap:
                self._forget()
        series = self.counters.setdefault(account, {})
        for resource, value in amounts:
            series[(resource, state)] = series.get((resource, state), 0.0) + value

    def _admit(self, account: str) -> bool:
        if len(self.named) < self.limit:
            self.named.add(account)
            self._least = None
            return True
        if not self.named:
            return False
        if self._least is None:
            self._least = min(self.named, key=lambda a: (self.usage.get(a, 0.0), a))
        if self.usage[account] > SWAP_MARGIN * self.usage.get(self._least, 0.0):
            self.named.discard(self._least)
            self.named.add(account)
            self._least = None
            return True
        return False

    def _forget(self) -> None:
        unnamed = sorted((u, a) for a, u in self.usage.items() if a not in self.named)
        for _, account in unnamed[: max(1, len(self.usage) - self.cap * 9 // 10)]:
            del self.usage[account]
            self.counters.pop(account, None)

    def view(self) -> dict[tuple[str, str, str], float]:
        out = {}
        for account in (*sorted(self.named), OTHER_ACCOUNTS):
            for (resource, state), value in self.counters.get(account, {}).items():
                out[(account, resource, state)] = value
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "named": sorted(self.named),
            "usage": dict(sorted(self.usage.items())),
            "counters": [
                [a, r, s, v]
                for a, series in sorted(self.counters.items())
                for (r, s), v in sorted(series.items())
            ],
        }

    def load(self, doc: Mapping[str, Any]) -> None:
        """Restore `to_state()` (raises TypeError/ValueError/KeyError when malformed, leaving
        this object unchanged)."""
        usage = {str(a): float(u) for a, u in doc["usage"].items()}
        counters: dict[str, dict[tuple[str, str], float]] = {}
        for a, r, st, v in doc["counters"]:
            counters.setdefault(str(a), {})[(str(r), str(st))] = float(v)
        named = {str(a) for a in doc["named"]}
        # A smaller limit than when saved: keep the most used.
        ranked = sorted(named, key=lambda a: (-usage.get(a, 0.0), a))
        self.named, self.usage, self.counters = set(ranked[: self.limit]), usage, counters
        self._least = None


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
    requeues: dict[int, int] = field(default_factory=dict)  # job id → requeues counted
    # job id → end times of its jobcomp records in a state that is not final (a requeued run)
    requeued_runs: dict[int, list[int]] = field(default_factory=dict)


class Ledger:
    """Counters that must count each job event exactly once (not thread-safe: one cycle at a
    time mutates it; scrapes read `view()` copies)."""

    def __init__(
        self,
        *,
        causes: Mapping[str, str] | None = None,
        buckets: Iterable[float] = (),
        thresholds: Iterable[float] = (),
        run_buckets: Iterable[float] = (),
        result_buckets: Iterable[float] = (),
        failed_max: int = 50,
        failed_max_age: float = 3600.0,
        max_accounts: int = 100,
    ) -> None:
        self.causes = dict(DEFAULT_CAUSES if causes is None else causes)
        self.thresholds = tuple(sorted({float(t) for t in thresholds if t > 0}))
        self.bounds = _bounds(buckets, self.thresholds)
        self.run_bounds = _bounds(run_buckets)
        self.result_bounds = _bounds(result_buckets)
        self.failed_max = max(0, failed_max)
        self.failed_max_age = failed_max_age
        self.finished: dict[tuple[str, str, str], float] = {}
        self.resource_seconds: dict[tuple[str, str, str], float] = {}
        self.exceeded: dict[tuple[str, str], float] = {}
        self.waits: dict[str, Histogram] = {}
        self.run: dict[tuple[str, str], Histogram] = {}
        self.time_to_result: dict[str, Histogram] = {}
        self.requeues: dict[str, float] = {}
        self.pending_seconds: dict[tuple[str, str], float] = {}
        self.pending_at = 0.0  # time of the last snapshot whose pending time is counted
        self.accounts = Accounts(max_accounts)
        self.failed: list[FailedJob] = []  # newest first, at most failed_max
        self.hwm = 0
        self.generation = 0
        self._keys = _Keys()
        # Jobs pending in the last snapshot (not saved): job id → (partition, reason).
        self._was_pending: dict[int, tuple[str, str]] = {}
        self._reasons: dict[str, str] = {}

    # -- public ------------------------------------------------------------------------

    def cause(self, state: str) -> str:
        return self.causes.get(state, "unknown")

    def apply_finished(self, jobs: Iterable[Job]) -> int:
        """Count finished jobs from a log (jobcomp); returns how many were new. A record in a
        state that is not final (PENDING after `scontrol requeue`) is a requeued run."""
        new = 0
        for job in jobs:
            if job.state in FINISHED_STATES:
                new += self._count_finished(job, from_log=True)
            elif job.state != "unknown" and job.end_time > 0:
                new += self._requeued_run(job)
        return new

    def apply_snapshot(self, jobs: Sequence[Job], now: float, *, complete: bool = True) -> int:
        """Account for one job list from slurmctld; returns how many events were new. Jobs
        missing from two complete lists in a row are forgotten; pass `complete=False` when
        some records could not be read (nothing is forgotten then)."""
        events = 0
        since = self.pending_at
        accrue = 0.0 < since < now
        was_pending = self._was_pending
        pending_now: dict[int, tuple[str, str]] = {}
        whole: dict[tuple[str, str], int] = {}  # key → tasks pending the whole interval
        pending = self.pending_seconds
        reasons = self._reasons
        failed_ids = {f.job_id for f in self.failed}
        for job in jobs:
            state = job.state
            if state == "pending":
                reason = reasons.get(job.reason)
                if reason is None:
                    reason = pending_reason(job.reason)
                    if len(reasons) < 4096:
                        reasons[job.reason] = reason
                key = (job.partition, reason)
                pending_now[job.job_id] = key
                if accrue:
                    if job.submit_time <= since:
                        whole[key] = whole.get(key, 0) + job.task_count
                    elif job.submit_time < now:
                        seconds = (now - job.submit_time) * job.task_count
                        pending[key] = pending.get(key, 0.0) + seconds
                if self.thresholds:
                    events += self._pending(job, now)
            else:
                if state in FINISHED_STATES:
                    events += self._count_finished(job, from_log=False)
                    if job.job_id in failed_ids and state in FAILED_INFO_STATES:
                        self._update_failed(job)
                elif (
                    state in STARTED_STATES
                    and job.start_time > 0
                    and not self._seen_start(job, from_log=False)
                ):
                    self._observe_wait(job)
                    events += 1
                if accrue and job.job_id in was_pending and since < job.start_time <= now:
                    key = was_pending[job.job_id]
                    pending[key] = pending.get(key, 0.0) + (job.start_time - since)
            if job.restarts:
                events += self._requeued(job, job.restarts)
            if job.job_id > self.hwm:
                self.hwm = job.job_id
        if accrue:
            for key, tasks in whole.items():
                pending[key] = pending.get(key, 0.0) + tasks * (now - since)
            if pending_now or was_pending:
                self.generation += 1
        if now > since:
            self.pending_at = now
        self._was_pending = pending_now
        self._expire_failed(now)
        if complete:
            self._prune(jobs)
        return events

    def view(self) -> LedgerView:
        def hists(h: Mapping[Any, Histogram]) -> dict[Any, Hist]:
            return {k: (tuple(v.cumulative()), v.total) for k, v in h.items()}

        return LedgerView(
            finished=dict(self.finished),
            resource_seconds=dict(self.resource_seconds),
            exceeded=dict(self.exceeded),
            waits=hists(self.waits),
            bounds=self.bounds,
            causes=dict(self.causes),
            thresholds=tuple(threshold_label(t) for t in self.thresholds),
            run=hists(self.run),
            run_bounds=self.run_bounds,
            time_to_result=hists(self.time_to_result),
            result_bounds=self.result_bounds,
            requeues=dict(self.requeues),
            pending_seconds=dict(self.pending_seconds),
            account_seconds=self.accounts.view(),
            failed=tuple(self.failed),
            failed_max=self.failed_max,
            failed_max_age=self.failed_max_age,
        )

    def tracked_jobs(self) -> int:
        return len(self._keys.finished) + len(self._keys.started) + len(self._keys.exceeded)

    # -- counting ----------------------------------------------------------------------

    def _count_finished(self, job: Job, *, from_log: bool) -> bool:
        keys = self._keys
        ends = keys.finished.get(job.job_id)
        if ends is not None and any(_same_time(e, job.end_time) for e in ends):
            return False
        ends = keys.finished.setdefault(job.job_id, [])
        ends.append(job.end_time)
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
            if job.end_time:
                _observe(self.run, (partition, state), self.run_bounds, float(duration))
                self.accounts.add(
                    job.account or NO_ACCOUNT,
                    state,
                    (("cpu", float(job.cpus * duration)), ("gpu", float(job.gpus * duration))),
                )
        elif job.eligible_time > 0 and job.end_time > job.eligible_time:
            self._exceed(job, job.end_time - job.eligible_time)
        if state == "completed" and 0 < job.submit_time <= job.end_time:
            _observe(
                self.time_to_result,
                partition,
                self.result_bounds,
                float(job.end_time - job.submit_time),
            )
        if state in FAILED_INFO_STATES and self.failed_max:
            self._add_failed(job)
        runs = len(ends) + len(keys.requeued_runs.get(job.job_id, ()))
        if runs > 1:
            self._requeued(job, max(runs - 1, len(keys.requeued_runs.get(job.job_id, ()))))
        if job.job_id > self.hwm:
            self.hwm = job.job_id
        self.generation += 1
        return True

    def _requeued_run(self, job: Job) -> int:
        """A jobcomp record of a run after which the job was requeued."""
        keys = self._keys
        runs = keys.requeued_runs.get(job.job_id)
        if runs is not None and any(_same_time(e, job.end_time) for e in runs):
            return 0
        runs = keys.requeued_runs.setdefault(job.job_id, [])
        runs.append(job.end_time)
        keys.absent_jobs.pop(job.job_id, None)
        self.generation += 1
        finished = len(keys.finished.get(job.job_id, ()))
        return self._requeued(job, max(len(runs), len(runs) + finished - 1))

    def _requeued(self, job: Job, proven: int) -> int:
        """The job has been requeued at least `proven` times: count what was not yet."""
        keys = self._keys
        counted = keys.requeues.get(job.job_id, 0)
        if proven <= counted:
            return 0
        keys.requeues[job.job_id] = proven
        keys.absent_jobs.pop(job.job_id, None)
        self.requeues[job.partition] = self.requeues.get(job.partition, 0.0) + (proven - counted)
        self.generation += 1
        return proven - counted

    def _add_failed(self, job: Job) -> None:
        entry = failed_job(job)
        self.failed.append(entry)
        self.failed.sort(key=lambda f: (-f.end_time, -f.job_id))
        del self.failed[self.failed_max :]

    def _update_failed(self, job: Job) -> None:
        """slurmctld's record of a listed job (the jobcomp log's may lack an exit code)."""
        entry = failed_job(job)
        for i, f in enumerate(self.failed):
            if f.job_id == job.job_id and _same_time(f.end_time, job.end_time) and f != entry:
                self.failed[i] = entry
                self.generation += 1

    def _expire_failed(self, now: float) -> None:
        oldest = now - self.failed_max_age
        kept = [f for f in self.failed if f.end_time >= oldest]
        if len(kept) != len(self.failed):
            self.failed = kept
            self.generation += 1

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
        dropped = False
        tracked = set(keys.finished) | set(keys.started)
        tracked |= set(keys.requeues) | set(keys.requeued_runs)
        ids = {job.job_id for job in jobs} if tracked else set()
        # Collected only when a threshold was crossed, `base_id` inlined: 100,000 records
        # in 12 ms CPU instead of 27 ms (2-core VM), which is most of what pending time by
        # reason adds to a cycle.
        bases = (
            {job.array_job_id if job.array_tasks else job.job_id for job in jobs}
            if keys.exceeded
            else set()
        )
        for job_id in tracked:
            if job_id in ids:
                keys.absent_jobs.pop(job_id, None)
                continue
            misses = keys.absent_jobs.get(job_id, 0) + 1
            if misses >= ABSENT_CYCLES_BEFORE_PRUNE:
                keys.finished.pop(job_id, None)
                keys.started.pop(job_id, None)
                keys.requeues.pop(job_id, None)
                keys.requeued_runs.pop(job_id, None)
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
            "run_bounds": list(self.run_bounds),
            "run": [[p, st, h.counts, h.total] for (p, st), h in sorted(self.run.items())],
            "result_bounds": list(self.result_bounds),
            "time_to_result": [
                [p, h.counts, h.total] for p, h in sorted(self.time_to_result.items())
            ],
            "requeues": [[p, v] for p, v in sorted(self.requeues.items())],
            "pending_seconds": [[*k, v] for k, v in sorted(self.pending_seconds.items())],
            "pending_at": self.pending_at,
            "accounts": self.accounts.to_state(),
            "failed": [f.to_state() for f in self.failed],
            "keys": {
                "finished": {str(k): v for k, v in keys.finished.items()},
                "started": {str(k): v for k, v in keys.started.items()},
                "exceeded": {
                    str(base): {repr(t): _encode_tasks(tasks) for t, tasks in by_t.items()}
                    for base, by_t in keys.exceeded.items()
                },
                "absent_jobs": {str(k): v for k, v in keys.absent_jobs.items()},
                "absent_bases": {str(k): v for k, v in keys.absent_bases.items()},
                "requeues": {str(k): v for k, v in keys.requeues.items()},
                "requeued_runs": {str(k): v for k, v in keys.requeued_runs.items()},
            },
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore counters and keys saved by `to_state()` (this format or the one before,
        whose newer counters start at 0). Raises ValueError, in plain words and without
        changing anything, when `state` is malformed."""
        if not isinstance(state, Mapping):
            raise ValueError("its job ledger is not a JSON object")
        if state.get("format") not in READABLE_FORMATS:
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
            self.run,
            self.time_to_result,
            self.requeues,
            self.pending_seconds,
            self.pending_at,
            self.accounts,
            self.failed,
        ) = loaded
        for what, saved, configured, restored in (
            ("queue-wait", state["bounds"], self.bounds, state["waits"]),
            ("run-time", state.get("run_bounds", []), self.run_bounds, state.get("run")),
            (
                "time-to-result",
                state.get("result_bounds", []),
                self.result_bounds,
                state.get("time_to_result"),
            ),
        ):
            if tuple(float(b) for b in saved) != configured and restored:
                log.warning(
                    f"{what} buckets changed since the state was saved: the histogram restarts",
                    extra={"saved": list(saved), "configured": list(configured)},
                )

    def _hists(
        self, rows: Any, saved_bounds: Any, bounds: tuple[float, ...]
    ) -> dict[Any, Histogram]:
        """Saved histograms `[*key, counts, total]`, if saved with the configured bounds."""
        out: dict[Any, Histogram] = {}
        if tuple(float(b) for b in saved_bounds) != bounds:
            return out
        for row in rows:
            *key, counts, total = row
            if not isinstance(counts, list):
                raise TypeError(f"histogram bucket counts {counts!r} are not a list")
            if len(counts) == len(bounds) + 1:
                k = tuple(str(x) for x in key)
                out[k if len(k) > 1 else k[0]] = Histogram([int(c) for c in counts], float(total))
        return out

    def _parse(self, state: Mapping[str, Any]) -> tuple[Any, ...]:
        hwm = int(state.get("hwm", 0))
        finished = {(str(p), str(s), str(c)): float(v) for p, s, c, v in state["finished"]}
        resource_seconds = {
            (str(p), str(s), str(r)): float(v) for p, s, r, v in state["resource_seconds"]
        }
        exceeded = {(str(p), str(t)): float(v) for p, t, v in state["exceeded"]}
        waits = self._hists(state["waits"], state["bounds"], self.bounds)
        run = self._hists(state.get("run", []), state.get("run_bounds", []), self.run_bounds)
        time_to_result = self._hists(
            state.get("time_to_result", []), state.get("result_bounds", []), self.result_bounds
        )
        requeues = {str(p): float(v) for p, v in state.get("requeues", [])}
        pending_seconds = {
            (str(p), str(r)): float(v) for p, r, v in state.get("pending_seconds", [])
        }
        pending_at = float(state.get("pending_at", 0.0))
        accounts = Accounts(self.accounts.limit)
        if "accounts" in state:
            accounts.load(state["accounts"])
        failed = [FailedJob.from_state(row) for row in state.get("failed", [])]
        failed.sort(key=lambda f: (-f.end_time, -f.job_id))
        del failed[self.failed_max :]
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
            requeues={int(k): int(v) for k, v in keys.get("requeues", {}).items()},
            requeued_runs={
                int(k): [int(x) for x in v] for k, v in keys.get("requeued_runs", {}).items()
            },
        )
        return (
            hwm,
            finished,
            resource_seconds,
            exceeded,
            waits,
            restored,
            run,
            time_to_result,
            requeues,
            pending_seconds,
            pending_at,
            accounts,
            failed,
        )
