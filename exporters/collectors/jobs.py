"""Collector `jobs`: which Slurm job each process belongs to, and each job's CPU and memory.

Attribution (`JobAttributor`, also used by the `gpu` collector for the PIDs on a GPU), first
match wins:

1. `cgroup`: `/proc/<pid>/cgroup` names `.../job_<id>/...` (Slurm's cgroup/v1 or cgroup/v2
   layouts: proctrack/cgroup, task/cgroup);
2. `slurmstepd`: the process is a `slurmstepd: [<id>.<step>]` or descends from one (what
   proctrack/linuxproc itself tracks: no per-job cgroups needed);
3. `environ`: `SLURM_JOB_ID` in `/proc/<pid>/environ` (`--collector.jobs.environ-fallback`,
   on by default; only that one variable is kept).

Process data comes from psutil (user + system CPU time, RSS). A job's CPU counter is kept
monotonic across its processes' exits: the last CPU time seen of a process that has exited
stays in its job's total until the job has no process left on this node. Jobs beyond
`--collector.jobs.max-jobs` are left out, lowest job ids first kept (ids grow, so a running
job's series does not flip in and out as new jobs arrive).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import psutil
from prometheus_client.metrics_core import Metric

from hpcobs.exporters.parse.cgroup import (
    ProcStat,
    job_from_environ,
    job_from_stepd_cmdline,
    parse_proc_stat,
    slurm_job_from_cgroup,
)
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.runtime.once import OnceLog

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
SOURCES = ("cgroup", "slurmstepd", "environ")

log = logging.getLogger("hpcobs.jobs")

_MAX_ANCESTRY = 64  # parent links followed looking for a slurmstepd
_CACHE_LIMIT = 65536


@dataclass(frozen=True)
class Attribution:
    """A process and the Slurm job it belongs to."""

    pid: int
    start_ticks: int
    job_id: str
    source: str  # "cgroup", "slurmstepd" or "environ"


class Procfs:
    """Reads the few /proc/<pid> files attribution needs; None when a process is gone."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root.rstrip("/") or "/"

    def pids(self) -> list[int]:
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return [int(n) for n in names if n.isascii() and n.isdigit()]

    def _read(self, pid: int, name: str) -> bytes | None:
        try:
            with open(f"{self.root}/{pid}/{name}", "rb") as f:
                return f.read()
        except OSError:  # gone, or not ours to read
            return None

    def stat(self, pid: int) -> ProcStat | None:
        raw = self._read(pid, "stat")
        return None if raw is None else parse_proc_stat(raw.decode("utf-8", "replace"))

    def cgroup(self, pid: int) -> str | None:
        raw = self._read(pid, "cgroup")
        return None if raw is None else raw.decode("utf-8", "replace")

    def cmdline(self, pid: int) -> bytes | None:
        return self._read(pid, "cmdline")

    def environ(self, pid: int) -> bytes | None:
        return self._read(pid, "environ")


class JobAttributor:
    """Maps PIDs to Slurm job ids (see the module docstring for the order of sources).

    Positive answers are cached per process (pid and start time), so a process's files are
    read once. For a process without a job the cgroup file and the ancestry are looked at
    again each time (pam_slurm_adopt moves processes into a job's cgroup); its environment
    only after an exec (a new command name).
    """

    def __init__(self, procfs: str = "/proc", environ_fallback: bool = True) -> None:
        self.proc = Procfs(procfs)
        self.environ_fallback = environ_fallback
        self._cache: dict[tuple[int, int], Attribution] = {}
        self._stepd: dict[tuple[int, int], str | None] = {}
        # (pid, start, comm) whose environment names no job: an environment only changes
        # with exec, which changes comm, so it is not read again
        self._no_env_job: set[tuple[int, int, str]] = set()

    def attribute(self, pids: Iterable[int] | None = None) -> dict[int, Attribution]:
        """Attributions of `pids` (default: every process) that belong to a Slurm job."""
        wanted = self.proc.pids() if pids is None else list(pids)
        stats: dict[int, ProcStat | None] = {}  # each stat file read once per call

        def stat(pid: int) -> ProcStat | None:
            if pid not in stats:
                stats[pid] = self.proc.stat(pid)
            return stats[pid]

        found: dict[int, Attribution] = {}
        seen_keys: set[tuple[int, int]] = set()
        for pid in wanted:
            st = stat(pid)
            if st is None:
                continue
            key = (pid, st.start_ticks)
            seen_keys.add(key)
            cached = self._cache.get(key)
            if cached is not None:
                found[pid] = cached
                continue
            attribution = self._attribute_one(st, stat)
            if attribution is not None:
                found[pid] = attribution
                self._cache[key] = attribution
        self._prune(seen_keys)
        return found

    def _attribute_one(self, st: ProcStat, stat: _StatLookup) -> Attribution | None:
        text = self.proc.cgroup(st.pid)
        if text is not None:
            cg = slurm_job_from_cgroup(text)
            if cg is not None:
                return Attribution(st.pid, st.start_ticks, cg.job_id, "cgroup")
        job = self._stepd_ancestor_job(st, stat)
        if job is not None:
            return Attribution(st.pid, st.start_ticks, job, "slurmstepd")
        env_key = (st.pid, st.start_ticks, st.comm)
        if self.environ_fallback and not _kernel_thread(st) and env_key not in self._no_env_job:
            env = self.proc.environ(st.pid)
            job = job_from_environ(env) if env is not None else None
            if job is not None:
                return Attribution(st.pid, st.start_ticks, job, "environ")
            self._no_env_job.add(env_key)
        return None

    def _stepd_ancestor_job(self, st: ProcStat, stat: _StatLookup) -> str | None:
        current: ProcStat | None = st
        for _ in range(_MAX_ANCESTRY):
            if current is None or current.pid <= 1:
                return None
            if current.comm == "slurmstepd":
                key = (current.pid, current.start_ticks)
                if key not in self._stepd:
                    cmdline = self.proc.cmdline(current.pid)
                    self._stepd[key] = job_from_stepd_cmdline(cmdline) if cmdline else None
                job = self._stepd[key]
                if job is not None:
                    return job
            if current.ppid == current.pid:
                return None
            current = stat(current.ppid)
        return None

    def _prune(self, seen: set[tuple[int, int]]) -> None:
        """Forget processes not looked at this time (exited, or no longer asked about)."""
        self._cache = {k: v for k, v in self._cache.items() if k in seen}
        self._no_env_job = {k for k in self._no_env_job if (k[0], k[1]) in seen}
        if len(self._stepd) > _CACHE_LIMIT:
            self._stepd.clear()
        elif len(self._stepd) > 1024:
            live = {pid for pid, _ in seen}
            self._stepd = {k: v for k, v in self._stepd.items() if k[0] in live}


class _StatLookup(Protocol):
    def __call__(self, pid: int) -> ProcStat | None: ...


def _kernel_thread(st: ProcStat) -> bool:
    return st.pid == 2 or st.ppid == 2


# -- process data --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    cpu_seconds: float
    rss_bytes: int


class ProcessSampler(Protocol):
    def sample(self, pid: int) -> ProcSample | None:
        """CPU time and RSS of a live process, None when it is gone."""


class PsutilSampler:
    """Process data from psutil. A non-default procfs sets `psutil.PROCFS_PATH` (psutil reads
    one procfs per interpreter)."""

    def __init__(self, procfs: str = "/proc") -> None:
        if procfs.rstrip("/") != "/proc":
            psutil.PROCFS_PATH = procfs.rstrip("/")

    def sample(self, pid: int) -> ProcSample | None:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                memory = proc.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
            return None
        return ProcSample(times.user + times.system, int(memory.rss))


class CpuAccumulator:
    """Keeps a job's CPU counter monotonic while its processes come and go.

    `update()` takes the CPU seconds of each live process of each job (keyed by pid and
    start time) and returns each job's total: live processes plus the last value seen of
    those that have exited. A job without live processes is forgotten.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[int, int], tuple[str, float]] = {}
        self._exited: dict[str, float] = defaultdict(float)
        self._exported: dict[str, float] = {}

    def update(self, live: dict[tuple[int, int], tuple[str, float]]) -> dict[str, float]:
        for key, (job, cpu) in self._last.items():
            if key not in live:
                self._exited[job] += cpu
        totals: dict[str, float] = defaultdict(float)
        for job, cpu in live.values():
            totals[job] += cpu
        out = {}
        for job, total in totals.items():
            value = max(total + self._exited.get(job, 0.0), self._exported.get(job, 0.0))
            out[job] = value
        self._last = dict(live)
        self._exited = defaultdict(float, {j: v for j, v in self._exited.items() if j in out})
        self._exported = out
        return dict(out)


# -- the collector -------------------------------------------------------------------------


class JobsCollector(Collector):
    name = "jobs"

    def __init__(
        self,
        procfs: str = "/proc",
        max_jobs: int = 512,
        environ_fallback: bool = True,
        sampler: ProcessSampler | None = None,
    ) -> None:
        if max_jobs < 1:
            raise ValueError("--collector.jobs.max-jobs must be at least 1")
        self.attributor = JobAttributor(procfs, environ_fallback)
        self.sampler = sampler if sampler is not None else PsutilSampler(procfs)
        self.max_jobs = max_jobs
        self._cpu = CpuAccumulator()
        self._over_limit = OnceLog(log)

    def collect(self) -> Iterator[Metric]:
        attributions = self.attributor.attribute()
        by_job: dict[str, list[Attribution]] = defaultdict(list)
        sources = dict.fromkeys(SOURCES, 0)
        for attribution in attributions.values():
            by_job[attribution.job_id].append(attribution)
            sources[attribution.source] = sources.get(attribution.source, 0) + 1
        jobs = sorted(by_job, key=int)
        kept = jobs[: self.max_jobs]
        dropped = len(jobs) - len(kept)
        if dropped:
            self._over_limit.warning(
                "max-jobs",
                "more jobs than --collector.jobs.max-jobs; the newest are left out",
                jobs=len(jobs),
                max_jobs=self.max_jobs,
            )
        else:
            self._over_limit.clear("max-jobs")

        live: dict[tuple[int, int], tuple[str, float]] = {}
        memory: dict[str, int] = {}
        processes: dict[str, int] = {}
        for job in kept:
            memory[job] = 0
            processes[job] = 0
            for attribution in by_job[job]:
                sample = self.sampler.sample(attribution.pid)
                if sample is None:
                    continue
                live[(attribution.pid, attribution.start_ticks)] = (job, sample.cpu_seconds)
                memory[job] += sample.rss_bytes
                processes[job] += 1
        cpu = self._cpu.update(live)

        cpu_family = JOB_CPU.counter()
        memory_family = JOB_MEMORY.gauge()
        processes_family = JOB_PROCESSES.gauge()
        for job in kept:
            if processes[job] == 0:
                continue  # every process exited between listing and sampling
            cpu_family.add_metric([job], cpu.get(job, 0.0))
            memory_family.add_metric([job], float(memory[job]))
            processes_family.add_metric([job], float(processes[job]))
        yield cpu_family
        yield memory_family
        yield processes_family
        active = JOBS_ACTIVE.gauge()
        active.add_metric([], float(len(jobs)))
        yield active
        over = JOBS_OVER_LIMIT.gauge()
        over.add_metric([], float(dropped))
        yield over
        attributed = ATTRIBUTED.gauge()
        for source, count in sources.items():
            attributed.add_metric([source], float(count))
        yield attributed


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--collector.jobs.max-jobs",
        dest="jobs_max_jobs",
        type=positive_int,
        default=512,
        metavar="N",
        help="export at most N jobs' series (lowest job ids kept; default 512)",
    )
    group.add_argument(
        "--collector.jobs.environ-fallback",
        dest="jobs_environ_fallback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when neither a job cgroup nor a slurmstepd ancestor names a process's job, "
        "read SLURM_JOB_ID from /proc/<pid>/environ (default: on)",
    )


SPEC = CollectorSpec(
    name="jobs",
    help="process → Slurm job attribution: per-job CPU and memory",
    default_enabled=True,
    add_arguments=_options,
    factory=lambda args, services: JobsCollector(
        procfs=args.path_procfs,
        max_jobs=args.jobs_max_jobs,
        environ_fallback=args.jobs_environ_fallback,
    ),
)
