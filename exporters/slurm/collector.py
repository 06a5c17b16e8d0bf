"""Metric families from the poller's last published result (no slurmctld call at scrape time).

Gauges describe slurmctld's current state and are dropped once the last successful cycle is
older than `--slurm.stale-after`; counters (finished jobs, resource-seconds, queue waits,
wait thresholds, run times, requeues, pending time) and the list of recent failures come
from the ledger and are always served. What depends on the time (a failure's age, whether a
maintenance reservation is active) is decided at scrape time.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.collector import Collector
from hpcobs.exporters.runtime.families import Families
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.slurm.backend import Call, startup_backend
from hpcobs.exporters.slurm.jobcomp import JobcompTail, Position
from hpcobs.exporters.slurm.ledger import RESOURCES, FailedJob, Hist, Ledger
from hpcobs.exporters.slurm.options import SlurmOptions
from hpcobs.exporters.slurm.poller import Poller, Published
from hpcobs.exporters.slurm.state import restore_state

log = logging.getLogger("hpcobs.slurm")

# -- health of the exporter's view of slurmctld -------------------------------------------------
UP = MetricDef(
    "hpcobs_slurm_up",
    "gauge",
    "1 when slurmctld answered every call of the last collection cycle (and that was within "
    "--slurm.stale-after), else 0.",
)
LAST_SUCCESS = MetricDef(
    "hpcobs_slurm_last_success_timestamp_seconds",
    "gauge",
    "Unix time of the last collection cycle in which slurmctld answered every call.",
)
BACKEND_INFO = MetricDef(
    "hpcobs_slurm_backend_info", "gauge", "1, labelled by the data source in use.", ("backend",)
)
CYCLE_SECONDS = MetricDef(
    "hpcobs_slurm_cycle_duration_seconds", "gauge", "Duration of the last collection cycle."
)
CYCLE_CALLS = MetricDef(
    "hpcobs_slurm_cycle_calls", "gauge", "slurmctld calls made by the last collection cycle (≤ 3)."
)
CYCLES = MetricDef(
    "hpcobs_slurm_cycles_total",
    "counter",
    "Collection cycles by result (success, failure).",
    ("result",),
)
CALLS = MetricDef(
    "hpcobs_slurm_calls_total",
    "counter",
    "slurmctld calls made, by call (jobs, nodes, scheduler, licenses).",
    ("call",),
)
CALL_ERRORS = MetricDef(
    "hpcobs_slurm_call_errors_total",
    "counter",
    "slurmctld calls that failed or timed out, by call.",
    ("call",),
)
CALL_SECONDS = MetricDef(
    "hpcobs_slurm_call_duration_seconds",
    "gauge",
    "Duration of the last slurmctld call of each kind.",
    ("call",),
)
PARSE_ERRORS = MetricDef(
    "hpcobs_slurm_parse_errors_total",
    "counter",
    "Records of a slurmctld answer that could not be read (and were skipped), by call.",
    ("call",),
)
TRACKED = MetricDef(
    "hpcobs_slurm_ledger_tracked_jobs",
    "gauge",
    "Jobs whose counted events the ledger remembers (finished jobs slurmctld still shows).",
)
STATE_SAVES = MetricDef(
    "hpcobs_slurm_state_saves_total", "counter", "Successful atomic writes of the state file."
)
STATE_SAVE_ERRORS = MetricDef(
    "hpcobs_slurm_state_save_errors_total",
    "counter",
    "Failed writes of the state file (counters are published only once saved).",
)
JOBCOMP_UP = MetricDef(
    "hpcobs_slurm_jobcomp_up", "gauge", "1 when the jobcomp log could be read in the last cycle."
)
JOBCOMP_OFFSET = MetricDef(
    "hpcobs_slurm_jobcomp_offset_bytes",
    "gauge",
    "How far into the jobcomp log the exporter has read.",
)
JOBCOMP_BAD = MetricDef(
    "hpcobs_slurm_jobcomp_bad_lines_total",
    "counter",
    "jobcomp log lines that were not a job record (skipped).",
)

# -- queue -------------------------------------------------------------------------------------
JOBS = MetricDef(
    "hpcobs_slurm_jobs",
    "gauge",
    "Jobs slurmctld holds by partition and state; a pending array counts its pending tasks.",
    ("partition", "state"),
)
PENDING = MetricDef(
    "hpcobs_slurm_jobs_pending",
    "gauge",
    "Pending jobs (array tasks) by partition and reason (Slurm's reason name; other for free "
    "text).",
    ("partition", "reason"),
)
RUNNING_CPUS = MetricDef(
    "hpcobs_slurm_jobs_allocated_cpus",
    "gauge",
    "CPUs allocated to running jobs, by partition.",
    ("partition",),
)
RUNNING_GPUS = MetricDef(
    "hpcobs_slurm_jobs_allocated_gpus",
    "gauge",
    "GPUs allocated to running jobs, by partition.",
    ("partition",),
)
RUNNING_MEMORY = MetricDef(
    "hpcobs_slurm_jobs_allocated_memory_bytes",
    "gauge",
    "Memory allocated to running jobs, by partition.",
    ("partition",),
)

# -- nodes and partitions -------------------------------------------------------------------------
NODES = MetricDef(
    "hpcobs_slurm_nodes",
    "gauge",
    "Nodes by partition and state (idle, allocated, mixed, down, drain, draining, fail, …).",
    ("partition", "state"),
)
NODE_REASON = MetricDef(
    "hpcobs_slurm_node_reason_info",
    "gauge",
    "1 for each node down, drained, draining, failing, in maintenance or rebooting, with its "
    "reason (at most --slurm.node-reasons.max series; reasons cut at 100 characters).",
    ("node", "state", "reason"),
)
NODE_REASON_DROPPED = MetricDef(
    "hpcobs_slurm_node_reasons_dropped",
    "gauge",
    "Nodes with a reason not exported because of --slurm.node-reasons.max.",
)
PART_CPUS = MetricDef(
    "hpcobs_slurm_partition_cpus", "gauge", "CPUs of the partition's nodes.", ("partition",)
)
PART_CPUS_ALLOC = MetricDef(
    "hpcobs_slurm_partition_cpus_allocated",
    "gauge",
    "Allocated CPUs of the partition's nodes.",
    ("partition",),
)
PART_GPUS = MetricDef(
    "hpcobs_slurm_partition_gpus", "gauge", "GPUs of the partition's nodes.", ("partition",)
)
PART_GPUS_ALLOC = MetricDef(
    "hpcobs_slurm_partition_gpus_allocated",
    "gauge",
    "Allocated GPUs of the partition's nodes.",
    ("partition",),
)

# -- licenses ------------------------------------------------------------------------------------
LICENSE_COUNT = MetricDef(
    "hpcobs_slurm_license_count", "gauge", "Licenses configured, by license.", ("license",)
)
LICENSE_USED = MetricDef(
    "hpcobs_slurm_license_used", "gauge", "Licenses in use, by license.", ("license",)
)
LICENSE_FREE = MetricDef(
    "hpcobs_slurm_license_free", "gauge", "Licenses free, by license.", ("license",)
)
LICENSE_PENDING = MetricDef(
    "hpcobs_slurm_license_pending_jobs",
    "gauge",
    "Pending jobs waiting for licenses (reason Licenses), by license they request.",
    ("license",),
)

# -- scheduler statistics (sdiag) ----------------------------------------------------------------
SCHED_THREADS = MetricDef(
    "hpcobs_slurm_scheduler_threads", "gauge", "slurmctld server threads (sdiag)."
)
SCHED_AGENT_QUEUE = MetricDef(
    "hpcobs_slurm_scheduler_agent_queue_size",
    "gauge",
    "Outgoing RPCs queued by slurmctld's agents (sdiag).",
)
SCHED_DBD_QUEUE = MetricDef(
    "hpcobs_slurm_scheduler_dbd_agent_queue_size",
    "gauge",
    "Messages queued for slurmdbd (sdiag; grows while slurmdbd is down).",
)
SCHED_CYCLE = MetricDef(
    "hpcobs_slurm_scheduler_cycle_seconds",
    "gauge",
    "Scheduler cycle times (sdiag) by scheduler (main, backfill) and stat (last, max, mean).",
    ("scheduler", "stat"),
)
SCHED_CYCLES = MetricDef(
    "hpcobs_slurm_scheduler_cycles_total",
    "counter",
    "Scheduler cycles since slurmctld's statistics were reset (sdiag), by scheduler.",
    ("scheduler",),
)
SCHED_QUEUE = MetricDef(
    "hpcobs_slurm_scheduler_queue_length",
    "gauge",
    "Jobs the last cycle of each scheduler looked at (sdiag 'Last queue length').",
    ("scheduler",),
)
SCHED_DEPTH = MetricDef(
    "hpcobs_slurm_scheduler_depth",
    "gauge",
    "Jobs processed per cycle (main: mean depth, backfill: last depth; sdiag).",
    ("scheduler",),
)
SCHED_BACKFILLED = MetricDef(
    "hpcobs_slurm_scheduler_backfilled_jobs_total",
    "counter",
    "Jobs started by the backfill scheduler since slurmctld started (sdiag).",
)
SCHED_JOBS = MetricDef(
    "hpcobs_slurm_scheduler_jobs_total",
    "counter",
    "Job events since slurmctld's statistics were reset (sdiag; resets daily), by event "
    "(submitted, started, completed, canceled, failed).",
    ("event",),
)
RPC_CALLS = MetricDef(
    "hpcobs_slurm_rpc_calls_total",
    "counter",
    "RPCs slurmctld served, by message type (sdiag).",
    ("type",),
)
RPC_SECONDS = MetricDef(
    "hpcobs_slurm_rpc_duration_seconds_total",
    "counter",
    "Time slurmctld spent serving RPCs, by message type (sdiag).",
    ("type",),
)

# -- the ledger: each job counted once ---------------------------------------------------------------
FINISHED = MetricDef(
    "hpcobs_slurm_jobs_finished_total",
    "counter",
    "Finished jobs (array tasks), each counted once, by partition, final state and cause "
    "(none, user, system; see --slurm.cause-map).",
    ("partition", "state", "cause"),
)
RESOURCE_SECONDS = MetricDef(
    "hpcobs_slurm_job_resource_seconds_total",
    "counter",
    "Allocated resource-time of finished jobs (allocated count × run time), by partition, "
    "final state and resource (cpu, gpu).",
    ("partition", "state", "resource"),
)
QUEUE_WAIT = MetricDef(
    "hpcobs_slurm_job_queue_wait_seconds",
    "histogram",
    "Queue wait of jobs (start − eligible time), observed once per job when it starts.",
    ("partition",),
)
WAIT_EXCEEDED = MetricDef(
    "hpcobs_slurm_jobs_wait_exceeded_total",
    "counter",
    "Jobs (array tasks) whose eligible wait crossed each threshold (seconds) while pending, "
    "counted once per job and threshold (--slurm.wait-thresholds).",
    ("partition", "threshold"),
)

RUN_SECONDS = MetricDef(
    "hpcobs_slurm_job_run_seconds",
    "histogram",
    "Make-span of finished jobs (array tasks) that ran: end − start, observed once per run, by "
    "partition and final state (--slurm.run-time-buckets).",
    ("partition", "state"),
)
TIME_TO_RESULT = MetricDef(
    "hpcobs_slurm_job_time_to_result_seconds",
    "histogram",
    "Submit to end of jobs (array tasks) that COMPLETED, observed once per job "
    "(--slurm.time-to-result-buckets; Slurm resets the submit time when it requeues a job).",
    ("partition",),
)
REQUEUES = MetricDef(
    "hpcobs_slurm_job_requeues_total",
    "counter",
    "Requeues of jobs (preemption with REQUEUE, node failure, scontrol requeue), each counted "
    "once.",
    ("partition",),
)
PENDING_SECONDS = MetricDef(
    "hpcobs_slurm_pending_seconds_total",
    "counter",
    "Job-seconds spent pending (array tasks each counted), by partition and Slurm's pending "
    "reason at each poll (licence wait: reason Licenses).",
    ("partition", "reason"),
)
ACCOUNT_SECONDS = MetricDef(
    "hpcobs_slurm_account_resource_seconds_total",
    "counter",
    "Allocated resource-time of finished jobs (allocated count × run time) by account "
    "(the --slurm.max-accounts most used by name, the rest as other; none without an account), "
    "resource (cpu, gpu) and final state.",
    ("account", "resource", "state"),
)
FAILED_INFO = MetricDef(
    "hpcobs_slurm_job_failed_info",
    "gauge",
    "1 for each of the latest jobs (at most --slurm.failed-jobs.max) that ended FAILED, "
    "NODE_FAIL, TIMEOUT, OUT_OF_MEMORY or BOOT_FAIL within --slurm.failed-jobs.max-age; "
    "exit_code is Slurm's exit:signal, nodes its host list (cut at 128 characters), log_url "
    "the --slurm.job-log-url template filled in (absent without it).",
    ("job_id", "user", "account", "partition", "state", "exit_code", "nodes", "log_url"),
)

# -- reservations ----------------------------------------------------------------------------------
RESERVATION_INFO = MetricDef(
    "hpcobs_slurm_reservation_info",
    "gauge",
    "1 for each current or future reservation, with its flags (sorted, comma-separated) and "
    "partition (empty for none).",
    ("reservation", "flags", "partition"),
)
RESERVATION_START = MetricDef(
    "hpcobs_slurm_reservation_start_timestamp_seconds",
    "gauge",
    "Unix time a current or future reservation starts.",
    ("reservation",),
)
RESERVATION_END = MetricDef(
    "hpcobs_slurm_reservation_end_timestamp_seconds",
    "gauge",
    "Unix time a current or future reservation ends.",
    ("reservation",),
)
NODE_MAINTENANCE = MetricDef(
    "hpcobs_slurm_node_maintenance",
    "gauge",
    "1 while the node is in an active reservation with the MAINT flag (only such nodes appear).",
    ("node",),
)

# -- sections: the families each part of a scrape shows, in exposition order -----------------
# A section that applies shows every one of its families, with or without samples (HELP and
# TYPE alone say the exporter knows the metric); one that does not apply shows none. So the
# scrape takes its families from `Families.family()` section by section, rather than by
# iterating `Families` (which leaves out families without samples).

HEALTH = (UP, LAST_SUCCESS, BACKEND_INFO)
CYCLE = (CYCLE_SECONDS, CYCLE_CALLS)  # once a cycle has run
SELF = (
    CYCLES,
    CALLS,
    CALL_ERRORS,
    CALL_SECONDS,
    PARSE_ERRORS,
    TRACKED,
    STATE_SAVES,
    STATE_SAVE_ERRORS,
)
JOBCOMP = (JOBCOMP_UP, JOBCOMP_OFFSET, JOBCOMP_BAD)  # with --slurm.jobcomp-file
LEDGER = (  # always: counters and the recent failures
    FINISHED,
    RESOURCE_SECONDS,
    QUEUE_WAIT,
    WAIT_EXCEEDED,
    RUN_SECONDS,
    TIME_TO_RESULT,
    REQUEUES,
    PENDING_SECONDS,
    ACCOUNT_SECONDS,
    FAILED_INFO,
)
# Gauges of slurmctld's state, while fresh (--slurm.stale-after) and once read:
QUEUE = (JOBS, PENDING, RUNNING_CPUS, RUNNING_GPUS, RUNNING_MEMORY, LICENSE_PENDING)
NODES_SECTION = (
    NODES,
    NODE_REASON,
    NODE_REASON_DROPPED,
    PART_CPUS,
    PART_CPUS_ALLOC,
    PART_GPUS,
    PART_GPUS_ALLOC,
)
LICENSES = (LICENSE_COUNT, LICENSE_USED, LICENSE_FREE)
RESERVATIONS = (RESERVATION_INFO, RESERVATION_START, RESERVATION_END, NODE_MAINTENANCE)
SCHEDULER = (
    SCHED_THREADS,
    SCHED_AGENT_QUEUE,
    SCHED_DBD_QUEUE,
    SCHED_CYCLE,
    SCHED_CYCLES,
    SCHED_QUEUE,
    SCHED_DEPTH,
    SCHED_BACKFILLED,
    SCHED_JOBS,
    RPC_CALLS,
    RPC_SECONDS,
)

METRICS = (
    *HEALTH,
    *CYCLE,
    *SELF,
    *JOBCOMP,
    *LEDGER,
    *QUEUE,
    *NODES_SECTION,
    *LICENSES,
    *RESERVATIONS,
    *SCHEDULER,
)

_ALWAYS_JOB_STATES = ("pending", "running")
_CALLS = ("jobs", "nodes", "scheduler", "licenses", "reservations")


def families(p: Published, now: float, stale_after: float, log_url: str = "") -> list[Metric]:
    """Every family for the published result `p` at time `now`, section by section
    (`log_url`: the --slurm.job-log-url template)."""
    fresh = p.last_success > 0 and now - p.last_success <= stale_after
    partitions: frozenset[str] = frozenset()
    if p.jobs is not None:
        partitions |= p.jobs.partitions
    if p.nodes is not None:
        partitions |= p.nodes.partitions
    out = Families()
    shown: list[tuple[MetricDef, ...]] = [HEALTH]
    _health(out, p, fresh)
    if p.cycles_done:
        shown.append(CYCLE)
        _cycle(out, p)
    shown.append(SELF)
    _self(out, p)
    if p.jobcomp_readable is not None:
        shown.append(JOBCOMP)
        _jobcomp(out, p)
    shown.append(LEDGER)
    _ledger(out, p, partitions)
    _failed(out, p.ledger.recent_failures(now), log_url)
    if fresh:
        if p.jobs is not None:
            shown.append(QUEUE)
            _queue(out, p, partitions)
        if p.nodes is not None:
            shown.append(NODES_SECTION)
            _nodes(out, p)
        if p.licenses is not None:
            shown.append(LICENSES)
            _licenses(out, p)
        if p.reservations is not None:
            shown.append(RESERVATIONS)
            _reservations(out, p, now)
        if p.scheduler is not None:
            shown.append(SCHEDULER)
            _scheduler(out, p)
    return [out.family(d) for section in shown for d in section]


def _health(out: Families, p: Published, fresh: bool) -> None:
    out.add_values(UP, (), 1.0 if fresh and p.last_cycle_ok else 0.0)
    if p.last_success > 0:
        out.add_values(LAST_SUCCESS, (), p.last_success)
    out.add_values(BACKEND_INFO, (p.backend,), 1.0)


def _cycle(out: Families, p: Published) -> None:
    out.add_values(CYCLE_SECONDS, (), p.last_cycle_seconds)
    out.add_values(CYCLE_CALLS, (), p.last_cycle_calls)


def _self(out: Families, p: Published) -> None:
    for result in ("success", "failure"):
        out.add_values(CYCLES, (result,), p.cycles.get(result, 0))
    for metric, values in ((CALLS, p.calls), (CALL_ERRORS, p.call_errors)):
        for call in _CALLS:
            if call in p.calls:
                out.add_values(metric, (call,), values.get(call, 0))
    for call, seconds in sorted(p.call_seconds.items()):
        out.add_values(CALL_SECONDS, (call,), seconds)
    for call in ("jobs", "nodes", "reservations"):
        if call in p.calls:
            out.add_values(PARSE_ERRORS, (call,), p.parse_errors.get(call, 0))
    out.add_values(TRACKED, (), p.tracked_jobs)
    out.add_values(STATE_SAVES, (), p.state_saves)
    out.add_values(STATE_SAVE_ERRORS, (), p.state_save_errors)


def _jobcomp(out: Families, p: Published) -> None:
    out.add_values(JOBCOMP_UP, (), 1.0 if p.jobcomp_readable else 0.0)
    out.add_values(JOBCOMP_OFFSET, (), p.jobcomp_offset)
    out.add_values(JOBCOMP_BAD, (), p.jobcomp_bad_lines)


def _ledger(out: Families, p: Published, partitions: frozenset[str]) -> None:
    """The exactly-once counters. Every known partition gets every series at 0 before its
    first event, as Prometheus' practice for counters asks: `increase()` cannot see a series
    that is born with the value 2, so the first NODE_FAIL of a partition would be missed by
    the SLO rules and alerts. (Run-time histograms by state, pending time by reason and
    resource-time by account start with their first event: their label sets are wider.)"""
    view = p.ledger
    finished = dict(view.finished)
    resource_seconds = dict(view.resource_seconds)
    waits: dict[tuple[str], Hist] = {(k,): v for k, v in view.waits.items()}
    exceeded = dict(view.exceeded)
    results: dict[tuple[str], Hist] = {(k,): v for k, v in view.time_to_result.items()}
    requeues = dict(view.requeues)
    empty_wait = (tuple(0 for _ in range(len(view.bounds) + 1)), 0.0)
    empty_result = (tuple(0 for _ in range(len(view.result_bounds) + 1)), 0.0)
    for partition in partitions:
        for state, cause in view.causes.items():
            finished.setdefault((partition, state, cause), 0.0)
            for resource in RESOURCES:
                resource_seconds.setdefault((partition, state, resource), 0.0)
        waits.setdefault((partition,), empty_wait)
        for threshold in view.thresholds:
            exceeded.setdefault((partition, threshold), 0.0)
        results.setdefault((partition,), empty_result)
        requeues.setdefault(partition, 0.0)
    for labels, value in sorted(finished.items()):
        out.add_values(FINISHED, labels, value)
    for labels, value in sorted(resource_seconds.items()):
        out.add_values(RESOURCE_SECONDS, labels, value)
    _histograms(out, QUEUE_WAIT, waits, view.bounds)
    for pair, value in sorted(exceeded.items()):
        out.add_values(WAIT_EXCEEDED, pair, value)
    _histograms(out, RUN_SECONDS, view.run, view.run_bounds)
    _histograms(out, TIME_TO_RESULT, results, view.result_bounds)
    for partition, value in sorted(requeues.items()):
        out.add_values(REQUEUES, (partition,), value)
    for key, value in sorted(view.pending_seconds.items()):
        out.add_values(PENDING_SECONDS, key, value)
    for series, value in sorted(view.account_seconds.items()):
        out.add_values(ACCOUNT_SECONDS, series, value)


def _histograms(
    out: Families,
    metric: MetricDef,
    hists: Mapping[Any, Hist],
    bounds: Sequence[float],
) -> None:
    les = [repr(float(b)) for b in bounds] + ["+Inf"]
    for labels, (cumulative, total) in sorted(hists.items()):
        buckets = [(le, float(n)) for le, n in zip(les, cumulative, strict=True)]
        out.histogram(metric, labels, buckets, total)


def log_link(template: str, job: FailedJob) -> str:
    """`template` (--slurm.job-log-url) with the job's values, each URL-quoted."""
    values = {
        "job_id": job.job_id,
        "user": job.user,
        "account": job.account,
        "partition": job.partition,
        "start": job.start_time,
        "end": job.end_time,
    }
    return template.format_map({k: urllib.parse.quote(str(v), safe="") for k, v in values.items()})


def _failed(out: Families, failed: Sequence[FailedJob], log_url: str) -> None:
    for job in failed:
        labels = {
            "job_id": str(job.job_id),
            "user": job.user,
            "account": job.account,
            "partition": job.partition,
            "state": job.state,
            "exit_code": job.exit_code,
            "nodes": job.nodes,
        }
        if log_url:
            labels["log_url"] = log_link(log_url, job)
        out.add(FAILED_INFO, labels, 1.0)


def _reservations(out: Families, p: Published, now: float) -> None:
    assert p.reservations is not None
    for r in p.reservations.reservations:
        if r.end_time <= now:
            continue  # ended since it was read (slurmctld drops it)
        out.add_values(RESERVATION_INFO, (r.name, ",".join(r.flags), r.partition), 1.0)
        out.add_values(RESERVATION_START, (r.name,), r.start_time)
        out.add_values(RESERVATION_END, (r.name,), r.end_time)
    nodes: set[str] = set()
    for start, end, names in p.reservations.maintenance:
        if start <= now < end:
            nodes |= names
    for node in sorted(nodes):
        out.add_values(NODE_MAINTENANCE, (node,), 1.0)


def _queue(out: Families, p: Published, partitions: frozenset[str]) -> None:
    assert p.jobs is not None
    jobs = p.jobs
    by_state = dict(jobs.by_state)
    for partition in partitions:
        for state in _ALWAYS_JOB_STATES:
            by_state.setdefault((partition, state), 0)
    for labels, n in sorted(by_state.items()):
        out.add_values(JOBS, labels, n)
    for labels, n in sorted(jobs.pending_by_reason.items()):
        out.add_values(PENDING, labels, n)
    for metric, values in (
        (RUNNING_CPUS, jobs.running_cpus),
        (RUNNING_GPUS, jobs.running_gpus),
        (RUNNING_MEMORY, jobs.running_memory_bytes),
    ):
        for partition in sorted(partitions):
            out.add_values(metric, (partition,), values.get(partition, 0))
    licenses = set(jobs.license_pending)
    if p.licenses is not None:
        licenses |= {lic.name for lic in p.licenses.licenses}
    for name in sorted(licenses):
        out.add_values(LICENSE_PENDING, (name,), jobs.license_pending.get(name, 0))


def _nodes(out: Families, p: Published) -> None:
    assert p.nodes is not None
    nodes = p.nodes
    for labels, n in sorted(nodes.by_state.items()):
        out.add_values(NODES, labels, n)
    for node, state, reason in nodes.reasons:
        out.add_values(NODE_REASON, (node, state, reason), 1.0)
    out.add_values(NODE_REASON_DROPPED, (), nodes.reasons_dropped)
    for metric, values in (
        (PART_CPUS, nodes.cpus),
        (PART_CPUS_ALLOC, nodes.cpus_allocated),
        (PART_GPUS, nodes.gpus),
        (PART_GPUS_ALLOC, nodes.gpus_allocated),
    ):
        for partition, value in sorted(values.items()):
            out.add_values(metric, (partition,), value)


def _licenses(out: Families, p: Published) -> None:
    assert p.licenses is not None
    for lic in p.licenses.licenses:
        out.add_values(LICENSE_COUNT, (lic.name,), lic.total)
        out.add_values(LICENSE_USED, (lic.name,), lic.used)
        out.add_values(LICENSE_FREE, (lic.name,), lic.free)


def _scheduler(out: Families, p: Published) -> None:
    assert p.scheduler is not None
    s = p.scheduler.stats
    out.add_values(SCHED_THREADS, (), s.server_thread_count)
    out.add_values(SCHED_AGENT_QUEUE, (), s.agent_queue_size)
    out.add_values(SCHED_DBD_QUEUE, (), s.dbd_agent_queue_size)
    for scheduler, stat, us in (
        ("main", "last", s.main_last_cycle_us),
        ("main", "max", s.main_max_cycle_us),
        ("main", "mean", s.main_mean_cycle_us),
        ("backfill", "last", s.backfill_last_cycle_us),
        ("backfill", "max", s.backfill_max_cycle_us),
        ("backfill", "mean", s.backfill_mean_cycle_us),
    ):
        out.add_values(SCHED_CYCLE, (scheduler, stat), us / 1e6)
    out.add_values(SCHED_CYCLES, ("main",), s.main_total_cycles)
    out.add_values(SCHED_CYCLES, ("backfill",), s.backfill_total_cycles)
    out.add_values(SCHED_QUEUE, ("main",), s.main_last_queue_length)
    out.add_values(SCHED_QUEUE, ("backfill",), s.backfill_last_queue_length)
    out.add_values(SCHED_DEPTH, ("main",), s.main_mean_depth)
    out.add_values(SCHED_DEPTH, ("backfill",), s.backfill_last_depth)
    out.add_values(SCHED_BACKFILLED, (), s.backfill_total_jobs)
    for event, value in (
        ("submitted", s.jobs_submitted),
        ("started", s.jobs_started),
        ("completed", s.jobs_completed),
        ("canceled", s.jobs_canceled),
        ("failed", s.jobs_failed),
    ):
        out.add_values(SCHED_JOBS, (event,), value)
    for name, n in sorted(s.rpc_count.items()):
        out.add_values(RPC_CALLS, (name,), n)
    for name, us in sorted(s.rpc_time_us.items()):
        out.add_values(RPC_SECONDS, (name,), us / 1e6)


class SlurmCollector(Collector):
    """Serves the poller's last result; owns the poller (and through it, the backend)."""

    def __init__(
        self,
        poller: Poller,
        stale_after: float,
        clock: Callable[[], float] = time.time,
        log_url: str = "",
    ) -> None:
        self.poller = poller
        self.stale_after = stale_after
        self.clock = clock
        self.log_url = log_url

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.poller.published, self.clock(), self.stale_after, self.log_url))

    def close(self) -> None:
        self.poller.close()


def make_ledger(options: SlurmOptions) -> Ledger:
    """An empty ledger configured by the options."""
    return Ledger(
        causes=options.causes,
        buckets=options.buckets,
        thresholds=options.thresholds,
        run_buckets=options.run_buckets,
        result_buckets=options.result_buckets,
        failed_max=options.failed_jobs_max,
        failed_max_age=options.failed_jobs_max_age,
        max_accounts=options.max_accounts,
    )


def build_collector(options: SlurmOptions, *, start: bool = True) -> SlurmCollector:
    """Backend, ledger (restored from the state file), jobcomp tail, poller, collector.

    Nothing here can block: the state file is read non-blocking (a corrupt one is moved aside,
    see `state.py`), and a backend whose choice needs a command or a worker process is chosen
    at the poller's first call. Raises ValueError only for options that cannot work."""
    ledger = make_ledger(options)
    position: Position | None = None
    state_file = options.state_file
    jobcomp_start = "end" if options.jobcomp_start == "end" else "beginning"
    if state_file is not None:

        def apply(doc: Mapping[str, Any]) -> None:
            nonlocal position
            saved = doc.get("jobcomp")
            restored: Position | None = None
            if saved is not None:
                restored = Position.from_state(saved)
                if restored is None:
                    raise ValueError("its jobcomp read position is malformed")
            if "ledger" not in doc:
                raise ValueError("it has no job ledger (the key 'ledger' is missing)")
            ledger.load_state(doc["ledger"])  # ValueError, changing nothing, when malformed
            if (
                restored is not None
                and options.jobcomp_file is not None
                and isinstance(saved, dict)
                and saved.get("path") == str(options.jobcomp_file)
            ):
                position = restored

        afresh = (
            "the job ledger starts afresh: finished jobs slurmctld still shows are counted again"
        )
        if options.jobcomp_file is not None:
            afresh += ", and the jobcomp log is read from its end (new lines only)"
        outcome = restore_state(state_file, apply, afresh=afresh)
        if outcome == "restored":
            log.info(
                "restored the job ledger",
                extra={"path": str(state_file), "tracked_jobs": ledger.tracked_jobs()},
            )
        elif outcome == "afresh":
            jobcomp_start = "end"  # re-reading the whole log would count its history again
        elif outcome == "unusable":
            state_file = None  # never saved over: it may hold what the operator wants back
    else:
        log.warning(
            "no --slurm.state-file: after a restart, finished jobs slurmctld still shows are "
            "counted again and jobs that finished meanwhile may be missed"
        )
    jobcomp = None
    if options.jobcomp_file is not None:
        jobcomp = JobcompTail(
            options.jobcomp_file,
            start="end" if jobcomp_start == "end" else "beginning",
            tz=options.jobcomp_tz,
            position=position,
        )
    extras: list[Call] = []
    if options.scheduler_stats:
        extras.append("scheduler")
    if options.reservations:
        extras.append("reservations")  # before licenses: maintenance suppresses alerts
    if options.licenses:
        extras.append("licenses")
    backend = startup_backend(
        options.backend,
        timeout=options.timeout,
        slurm_conf=options.slurm_conf,
        bin_dir=options.bin_dir,
    )
    poller = Poller(
        backend,
        ledger,
        poll_interval=options.poll_interval,
        extras=extras,
        jobcomp=jobcomp,
        state_file=state_file,
        node_reasons_max=options.node_reasons_max,
    )
    if start:
        poller.start()
    return SlurmCollector(poller, options.stale_after, log_url=options.job_log_url)
