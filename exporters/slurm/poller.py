"""The background collection cycle: read slurmctld, count finished jobs, publish the result.

One cycle per `--slurm.poll-interval`, in one thread, never two at once:

1. read the jobcomp log to its end (if configured; no slurmctld call) and count its jobs;
2. `jobs()` — call 1 — and account for the snapshot in the ledger;
3. save the ledger and the jobcomp position atomically, then publish the counters (a job is
   never shown counted before its counting is on disk);
4. `nodes()` — call 2;
5. `scheduler()`, `reservations()` or `licenses()`, taking turns — call 3.

A failed call ends the cycle (no further calls to a slurmctld that is down or slow). Scrapes
never wait for a cycle: they read the last `Published` result, whose gauges the collector
drops once they are older than `--slurm.stale-after`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from hpcobs.exporters.slurm.backend import Backend, Call, SlurmCallError
from hpcobs.exporters.slurm.jobcomp import JobcompTail
from hpcobs.exporters.slurm.ledger import Ledger, LedgerView
from hpcobs.exporters.slurm.model import (
    Job,
    License,
    Node,
    Reservation,
    SchedulerStats,
    expand_hostlist,
    label_value,
    pending_reason,
)
from hpcobs.exporters.slurm.state import save_state

log = logging.getLogger("hpcobs.slurm")
T = TypeVar("T")

REASON_STATES = frozenset({"down", "drain", "draining", "fail", "maint", "reboot"})
MAX_REASON_CHARS = 100


# -- per-cycle aggregates (computed once per cycle, not per scrape) ---------------------------


@dataclass(frozen=True)
class JobsView:
    at: float
    by_state: dict[tuple[str, str], int]
    pending_by_reason: dict[tuple[str, str], int]
    running_cpus: dict[str, int]
    running_gpus: dict[str, int]
    running_memory_bytes: dict[str, int]
    license_pending: dict[str, int]
    partitions: frozenset[str]


@dataclass(frozen=True)
class NodesView:
    at: float
    by_state: dict[tuple[str, str], int]
    cpus: dict[str, int]
    cpus_allocated: dict[str, int]
    gpus: dict[str, int]
    gpus_allocated: dict[str, int]
    reasons: tuple[tuple[str, str, str], ...]
    reasons_dropped: int
    partitions: frozenset[str]


@dataclass(frozen=True)
class SchedulerView:
    at: float
    stats: SchedulerStats


@dataclass(frozen=True)
class LicensesView:
    at: float
    licenses: tuple[License, ...]


@dataclass(frozen=True)
class ReservationsView:
    """Reservations by name (label values, each once), and for each with the MAINT flag its
    window and node names (so a scrape can tell which nodes are in maintenance at its time)."""

    at: float
    reservations: tuple[Reservation, ...]
    maintenance: tuple[tuple[int, int, frozenset[str]], ...]
    unreadable_nodes: int = 0


def summarize_reservations(reservations: Sequence[Reservation], at: float) -> ReservationsView:
    by_name: dict[str, Reservation] = {}
    for r in sorted(reservations, key=lambda r: (r.name, r.start_time, r.end_time)):
        by_name.setdefault(r.name, r)  # names cut to the same label value: the first
    maintenance = []
    unreadable = 0
    for r in reservations:
        if not r.maintenance or not r.nodes:
            continue
        try:
            nodes = frozenset(label_value(n) for n in expand_hostlist(r.nodes))
        except ValueError:
            unreadable += 1
            continue
        maintenance.append((r.start_time, r.end_time, nodes))
    return ReservationsView(
        at=at,
        reservations=tuple(by_name.values()),
        maintenance=tuple(sorted(maintenance, key=lambda m: (m[0], m[1], sorted(m[2])))),
        unreadable_nodes=unreadable,
    )


def summarize_jobs(jobs: Sequence[Job], at: float) -> JobsView:
    by_state: Counter[tuple[str, str]] = Counter()
    pending: Counter[tuple[str, str]] = Counter()
    cpus: Counter[str] = Counter()
    gpus: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    license_pending: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    for job in jobs:
        p = job.partition
        by_state[(p, job.state)] += job.task_count
        if job.state == "pending":
            reason = reasons.get(job.reason)
            if reason is None:
                reason = reasons[job.reason] = pending_reason(job.reason)
            pending[(p, reason)] += job.task_count
            if reason == "Licenses":
                for name, _ in job.licenses:
                    license_pending[name] += job.task_count
        elif job.state == "running":
            cpus[p] += job.cpus
            gpus[p] += job.gpus
            memory[p] += job.memory_bytes
    return JobsView(
        at=at,
        by_state=dict(by_state),
        pending_by_reason=dict(pending),
        running_cpus=dict(cpus),
        running_gpus=dict(gpus),
        running_memory_bytes=dict(memory),
        license_pending=dict(license_pending),
        partitions=frozenset(p for p, _ in by_state),
    )


def summarize_nodes(nodes: Sequence[Node], at: float, max_reasons: int) -> NodesView:
    by_state: Counter[tuple[str, str]] = Counter()
    cpus: Counter[str] = Counter()
    cpus_alloc: Counter[str] = Counter()
    gpus: Counter[str] = Counter()
    gpus_alloc: Counter[str] = Counter()
    reasons = []
    for node in nodes:
        for p in node.partitions:
            by_state[(p, node.state)] += 1
            cpus[p] += node.cpus
            cpus_alloc[p] += node.cpus_allocated
            gpus[p] += node.gpus
            gpus_alloc[p] += node.gpus_allocated
        if node.state in REASON_STATES:
            reasons.append((node.name, node.state, node.reason[:MAX_REASON_CHARS]))
    reasons.sort()
    return NodesView(
        at=at,
        by_state=dict(by_state),
        cpus=dict(cpus),
        cpus_allocated=dict(cpus_alloc),
        gpus=dict(gpus),
        gpus_allocated=dict(gpus_alloc),
        reasons=tuple(reasons[:max_reasons]),
        reasons_dropped=max(0, len(reasons) - max_reasons),
        partitions=frozenset(p for p, _ in by_state),
    )


@dataclass(frozen=True)
class Published:
    """Everything a scrape serves, replaced as a whole at the end of each cycle step."""

    backend: str
    ledger: LedgerView
    jobs: JobsView | None = None
    nodes: NodesView | None = None
    scheduler: SchedulerView | None = None
    licenses: LicensesView | None = None
    reservations: ReservationsView | None = None
    cycles_done: int = 0
    last_cycle_ok: bool = False
    last_success: float = 0.0
    last_cycle_seconds: float = 0.0
    last_cycle_calls: int = 0
    cycles: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    call_errors: dict[str, int] = field(default_factory=dict)
    call_seconds: dict[str, float] = field(default_factory=dict)
    parse_errors: dict[str, int] = field(default_factory=dict)
    tracked_jobs: int = 0
    jobcomp_readable: bool | None = None
    jobcomp_bad_lines: int = 0
    jobcomp_offset: int = 0
    state_saves: int = 0
    state_save_errors: int = 0


class Poller:
    """Runs collection cycles in a background thread (or one at a time via `run_cycle`)."""

    def __init__(
        self,
        backend: Backend,
        ledger: Ledger,
        *,
        poll_interval: float = 30.0,
        extras: Sequence[Call] = ("scheduler", "reservations", "licenses"),
        jobcomp: JobcompTail | None = None,
        state_file: Path | None = None,
        node_reasons_max: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.poll_interval = poll_interval
        self.extras = tuple(extras)
        self.jobcomp = jobcomp
        self.state_file = state_file
        self.node_reasons_max = node_reasons_max
        self.clock = clock
        self._cycle_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._turn = 0
        self._saved: tuple[int, int | None] | None = None
        self._failed_saves = 0  # failed saves in a row
        self._calls: Counter[str] = Counter()
        self._call_errors: Counter[str] = Counter()
        self._call_seconds: dict[str, float] = {}
        self._cycles: Counter[str] = Counter()
        self._failing: str | None = None
        self._published = Published(
            backend=backend.name,
            ledger=ledger.view(),
            tracked_jobs=ledger.tracked_jobs(),
        )

    # -- reading -----------------------------------------------------------------------

    @property
    def published(self) -> Published:
        with self._publish_lock:
            return self._published

    def _publish(self, **changes: Any) -> None:
        with self._publish_lock:
            self._published = replace(self._published, **changes)

    # -- the background thread ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="slurm-poller", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_cycle()
            except Exception:  # a bug must not stop the cycles for good
                log.exception("slurm collection cycle crashed")
            elapsed = time.monotonic() - started
            self._stop.wait(max(0.0, self.poll_interval - elapsed))

    def close(self, timeout: float = 2.0) -> None:
        """Stop the cycles. A cycle stuck in a call is not waited for long: the thread is a
        daemon, and whatever it had not saved is redone from the state file next time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.backend.close()

    # -- one cycle ---------------------------------------------------------------------

    def run_cycle(self) -> bool:
        """One collection cycle; False when one is already running or a call failed."""
        if not self._cycle_lock.acquire(blocking=False):
            return False
        try:
            return self._cycle()
        finally:
            self._cycle_lock.release()

    def _cycle(self) -> bool:
        t0 = time.monotonic()
        now = self.clock()
        calls = 0
        error: SlurmCallError | None = None
        changes: dict[str, Any] = {}

        if self.jobcomp is not None:
            for chunk in self.jobcomp.read():
                self.ledger.apply_finished(chunk)

        unreadable = self.backend.parse_errors["jobs"]
        try:
            calls += 1
            jobs = self._call("jobs", self.backend.jobs)
        except SlurmCallError as exc:
            error, jobs = exc, None
        if jobs is not None:
            # A job whose record could not be read must not look gone from slurmctld.
            complete = self.backend.parse_errors["jobs"] == unreadable
            self.ledger.apply_snapshot(jobs, now, complete=complete)
            changes["jobs"] = summarize_jobs(jobs, now)
        changes.update(self._persist())

        if error is None:
            try:
                calls += 1
                nodes = self._call("nodes", self.backend.nodes)
                changes["nodes"] = summarize_nodes(nodes, now, self.node_reasons_max)
                if self.extras:
                    extra = self.extras[self._turn % len(self.extras)]
                    self._turn += 1
                    calls += 1
                    if extra == "scheduler":
                        stats = self._call("scheduler", self.backend.scheduler)
                        changes["scheduler"] = SchedulerView(now, stats)
                    elif extra == "reservations":
                        reservations = self._call("reservations", self.backend.reservations)
                        changes["reservations"] = summarize_reservations(reservations, now)
                    else:
                        licenses = self._call("licenses", self.backend.licenses)
                        ordered = tuple(sorted(licenses, key=lambda x: x.name))
                        changes["licenses"] = LicensesView(now, ordered)
            except SlurmCallError as exc:
                error = exc

        ok = error is None
        self._cycles["success" if ok else "failure"] += 1
        self._report(error)
        previous = self.published
        self._publish(
            **changes,
            backend=self.backend.name,  # a deferred choice (`auto`) is made by the first call
            cycles_done=previous.cycles_done + 1,
            last_cycle_ok=ok,
            last_success=now if ok else previous.last_success,
            last_cycle_seconds=time.monotonic() - t0,
            last_cycle_calls=calls,
            cycles=dict(self._cycles),
            calls=dict(self._calls),
            call_errors=dict(self._call_errors),
            call_seconds=dict(self._call_seconds),
            parse_errors=dict(self.backend.parse_errors),
            tracked_jobs=self.ledger.tracked_jobs(),
            jobcomp_readable=None if self.jobcomp is None else self.jobcomp.readable,
            jobcomp_bad_lines=0 if self.jobcomp is None else self.jobcomp.bad_lines,
            jobcomp_offset=self._jobcomp_offset() or 0,
        )
        return ok

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        self._calls[name] += 1
        started = time.monotonic()
        try:
            return fn()
        except SlurmCallError:
            self._call_errors[name] += 1
            raise
        finally:
            self._call_seconds[name] = time.monotonic() - started

    def _report(self, error: SlurmCallError | None) -> None:
        if error is None:
            if self._failing is not None:
                log.info("slurmctld answers again", extra={"backend": self.backend.name})
            self._failing = None
            return
        message = str(error)
        if self._failing != message:
            log.warning(
                "slurm collection cycle failed",
                extra={"backend": self.backend.name, "call": error.call, "err": message},
            )
        self._failing = message

    def _jobcomp_offset(self) -> int | None:
        if self.jobcomp is None or self.jobcomp.position is None:
            return None
        return self.jobcomp.position.offset

    def _persist(self) -> dict[str, Any]:
        """Save the ledger (and jobcomp position) if it changed; publish counters once saved."""
        marker = (self.ledger.generation, self._jobcomp_offset())
        if marker == self._saved:
            return {}
        if self.state_file is None:
            self._saved = marker
            return {"ledger": self.ledger.view()}
        doc: dict[str, Any] = {"saved_at": self.clock(), "ledger": self.ledger.to_state()}
        if self.jobcomp is not None and self.jobcomp.position is not None:
            doc["jobcomp"] = {"path": str(self.jobcomp.path), **self.jobcomp.position.to_state()}
        saves = self.published.state_saves
        errors = self.published.state_save_errors
        try:
            save_state(self.state_file, doc)
        except OSError as exc:
            # Said once per outage, not every cycle (hpcobs_slurm_state_save_errors_total counts).
            if self._failed_saves == 0:
                log.warning(
                    "cannot save the state file: jobs are still counted in memory, but the new "
                    "counts are published only once they are saved (said once; a line follows "
                    "when saving works again)",
                    extra={
                        "path": str(self.state_file),
                        "err": exc.strerror or str(exc),
                        "hint": "make the state file's directory writable by the exporter "
                        "(it writes a temporary file there and renames it) and free space",
                    },
                )
            self._failed_saves += 1
            return {"state_save_errors": errors + 1}
        if self._failed_saves:
            log.info(
                "state file saved again: counters published",
                extra={"path": str(self.state_file), "failed_saves": self._failed_saves},
            )
            self._failed_saves = 0
        self._saved = marker
        return {"ledger": self.ledger.view(), "state_saves": saves + 1}
