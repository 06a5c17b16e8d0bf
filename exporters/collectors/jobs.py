"""Collector `jobs`: which Slurm job each process belongs to, and each job's CPU and memory.

Source → model → metrics: the daemon's shared `JobAttributor` (`exporters/attribution.py`,
also used by the `gpu` collector) names each process's job; `JobProcesses`
(`exporters/sources/procfs.py`) samples the attributed processes with psutil (user + system
CPU time, RSS) into per-job usage; this module maps that reading to metric families.

A job's CPU counter is kept monotonic across its processes' exits: the last CPU time seen of
a process that has exited stays in its job's total until the job has no process left on this
node. Jobs beyond `--collector.jobs.max-jobs` are left out, lowest job ids first kept (ids
grow, so a running job's series does not flip in and out as new jobs arrive).
"""

from __future__ import annotations

import argparse
import logging

from prometheus_client.metrics_core import Metric

from hpcobs.exporters import attribution
from hpcobs.exporters.attribution import JobAttributor
from hpcobs.exporters.runtime.cli import int_at_least
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, Services
from hpcobs.exporters.runtime.families import Families
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.runtime.once import OnceLog
from hpcobs.exporters.sources.procfs import JobProcesses, ProcessSampler, PsutilSampler

JOB_CPU = MetricDef(
    "hpcobs_job_cpu_seconds_total",
    "counter",
    "User + system CPU time of the job's processes on this node (exited processes included "
    "as last seen while the job has processes here).",
    ("job_id",),
)
JOB_MEMORY = MetricDef(
    "hpcobs_job_memory_bytes",
    "gauge",
    "Resident memory (sum of RSS) of the job's processes on this node.",
    ("job_id",),
)
JOB_PROCESSES = MetricDef(
    "hpcobs_job_processes", "gauge", "Processes of the job on this node.", ("job_id",)
)
JOBS_ACTIVE = MetricDef(
    "hpcobs_jobs_active", "gauge", "Slurm jobs with at least one process on this node."
)
JOBS_OVER_LIMIT = MetricDef(
    "hpcobs_jobs_over_limit",
    "gauge",
    "Jobs with processes on this node left out by --collector.jobs.max-jobs.",
)
ATTRIBUTED = MetricDef(
    "hpcobs_jobs_attributed_processes",
    "gauge",
    "Processes attributed to a Slurm job, by the source that named the job "
    "(cgroup, slurmstepd, environ).",
    ("source",),
)
METRICS = (JOB_CPU, JOB_MEMORY, JOB_PROCESSES, JOBS_ACTIVE, JOBS_OVER_LIMIT, ATTRIBUTED)

log = logging.getLogger("hpcobs.jobs")


class JobsCollector(Collector):
    name = "jobs"

    def __init__(
        self,
        procfs: str = "/proc",
        max_jobs: int = 512,
        sampler: ProcessSampler | None = None,
        attributor: JobAttributor | None = None,
    ) -> None:
        """`attributor`: the daemon's shared one (default: a private one over `procfs`)."""
        if max_jobs < 1:
            raise ValueError("--collector.jobs.max-jobs must be at least 1")
        self.attributor = attributor if attributor is not None else JobAttributor(procfs)
        self.source = JobProcesses(sampler if sampler is not None else PsutilSampler(procfs))
        self.max_jobs = max_jobs
        self._over_limit = OnceLog(log)

    def collect(self) -> list[Metric]:
        reading = self.source.read(self.attributor.attribute().values(), self.max_jobs)
        if reading.left_out:
            self._over_limit.warning(
                "max-jobs",
                "more jobs than --collector.jobs.max-jobs; the newest are left out",
                jobs=reading.active,
                max_jobs=self.max_jobs,
            )
        else:
            self._over_limit.clear("max-jobs")

        out = Families(METRICS)
        for job in reading.jobs:
            labels = {"job_id": job.job_id}
            out.add(JOB_CPU, labels, job.cpu_seconds)
            out.add(JOB_MEMORY, labels, float(job.memory_bytes))
            out.add(JOB_PROCESSES, labels, float(job.processes))
        out.add(JOBS_ACTIVE, {}, float(reading.active))
        out.add(JOBS_OVER_LIMIT, {}, float(reading.left_out))
        for source, count in reading.attributed.items():
            out.add(ATTRIBUTED, {"source": source}, float(count))
        return list(out)


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--collector.jobs.max-jobs",
        dest="jobs_max_jobs",
        type=int_at_least(1),
        default=512,
        metavar="N",
        help="export at most N jobs' series (lowest job ids kept; default 512)",
    )
    attribution.add_arguments(group)  # the shared attribution service's flags


def _factory(args: argparse.Namespace, services: Services) -> JobsCollector:
    return JobsCollector(
        procfs=args.path_procfs,
        max_jobs=args.jobs_max_jobs,
        attributor=services.get(attribution.from_args),
    )


SPEC = CollectorSpec(
    name="jobs",
    help="process → Slurm job attribution: per-job CPU and memory",
    default_enabled=True,
    add_arguments=_options,
    factory=_factory,
)
