"""Source: processes under procfs, for job attribution and the `jobs` collector.

- `Procfs` reads the few `/proc/<pid>` files job attribution needs (`stat`, `cgroup`,
  `cmdline`, `environ`), as bytes or parsed by `exporters/parse/cgroup.py`; None when the
  process is gone or not ours to read.
- `PsutilSampler` reads a live process's CPU time and RSS through psutil (`ProcSample`).
- `JobProcesses` turns attributed processes into per-job usage (`JobsReading`): CPU time,
  resident memory and process count per job, the CPU counter kept monotonic across process
  exits (`CpuAccumulator`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hpcobs.exporters.parse.cgroup import ProcStat, parse_proc_stat

if TYPE_CHECKING:
    from hpcobs.exporters.attribution import Attribution


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
        # psutil is imported by the jobs collector's sampler only: a daemon without that
        # collector does not load it (0.77 MiB RSS, measured with the rdma collector alone)
        import psutil

        if procfs.rstrip("/") != "/proc":
            psutil.PROCFS_PATH = procfs.rstrip("/")

    def sample(self, pid: int) -> ProcSample | None:
        import psutil  # already loaded by __init__: a dictionary lookup

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


# -- per-job usage -------------------------------------------------------------------------

SOURCES = ("cgroup", "slurmstepd", "environ")


@dataclass(frozen=True)
class JobUsage:
    """One job's processes on this node, as sampled now."""

    job_id: str
    cpu_seconds: float  # monotonic: exited processes' last CPU time included
    memory_bytes: int
    processes: int


@dataclass(frozen=True)
class JobsReading:
    """What one look at the node's processes found."""

    jobs: list[JobUsage]  # the kept jobs (lowest ids) with a live process, ascending id
    active: int  # jobs with at least one attributed process, before `max_jobs`
    left_out: int  # jobs beyond `max_jobs`
    attributed: dict[str, int]  # processes per attribution source (every source present)


class JobProcesses:
    """Per-job CPU and memory of attributed processes (the `jobs` collector's source).

    Jobs beyond `max_jobs` are left out, lowest job ids kept (ids grow, so a running job's
    series does not flip in and out as new jobs arrive)."""

    def __init__(self, sampler: ProcessSampler) -> None:
        self.sampler = sampler
        self._cpu = CpuAccumulator()

    def read(self, attributions: Iterable[Attribution], max_jobs: int) -> JobsReading:
        by_job: dict[str, list[Attribution]] = defaultdict(list)
        sources = dict.fromkeys(SOURCES, 0)
        for attribution in attributions:
            by_job[attribution.job_id].append(attribution)
            sources[attribution.source] = sources.get(attribution.source, 0) + 1
        jobs = sorted(by_job, key=int)
        kept = jobs[:max_jobs]

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
        usage = [
            JobUsage(job, cpu.get(job, 0.0), memory[job], processes[job])
            for job in kept
            if processes[job]  # not when every process exited between listing and sampling
        ]
        return JobsReading(usage, len(jobs), len(jobs) - len(kept), sources)
