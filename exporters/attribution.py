"""Job attribution: which Slurm job a process belongs to. A shared service of the node daemon.

One `JobAttributor` per daemon, made from its flags by `from_args` and handed to every
collector that needs it through the daemon's `Services` (`services.get(from_args)`): the
`jobs` collector asks about every process, the `gpu` collector about the PIDs on its GPUs.
No collector imports another for it.

First match wins:

1. `cgroup`: `/proc/<pid>/cgroup` names `.../job_<id>/...` (Slurm's cgroup/v1 or cgroup/v2
   layouts: proctrack/cgroup, task/cgroup);
2. `slurmstepd`: the process is a `slurmstepd: [<id>.<step>]` or descends from one (what
   proctrack/linuxproc itself tracks: no per-job cgroups needed);
3. `environ`: `SLURM_JOB_ID` in `/proc/<pid>/environ` (`--attribution.environ-fallback`, also
   spelled `--collector.jobs.environ-fallback`; on by default; only that one variable is kept).

`JobMappingDir` reads the other way jobs are named: dcgm-exporter's job mapping directory,
one file per GPU written by a Slurm prolog.

The files are read through `sources/procfs.py`, and parsed by `parse/cgroup.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from hpcobs.exporters.parse.cgroup import (
    ProcStat,
    job_from_environ,
    job_from_stepd_cmdline,
    parse_job_mapping_file,
    slurm_job_from_cgroup,
)
from hpcobs.exporters.runtime.once import OnceLog
from hpcobs.exporters.sources.procfs import Procfs

_MAX_ANCESTRY = 64  # parent links followed looking for a slurmstepd
_CACHE_LIMIT = 65536
# Cached answers kept before a look at only some PIDs (the gpu collector's) checks which of
# them still run; a look at every PID (the jobs collector's) keeps exactly the live ones.
_PARTIAL_LIMIT = 4096
# The daemon's collectors collect concurrently within one scrape: a look at every process
# this recent is the answer for the next one too (the jobs and textfile collectors each ask).
DAEMON_REUSE_SECONDS = 1.0


@dataclass(frozen=True)
class Attribution:
    """A process and the Slurm job it belongs to."""

    pid: int
    start_ticks: int
    job_id: str
    source: str  # "cgroup", "slurmstepd" or "environ"


class JobAttributor:
    """Maps PIDs to Slurm job ids (see the module docstring for the order of sources).

    Positive answers are cached per process (pid and start time), so a process's files are
    read once. For a process without a job the cgroup file and the ancestry are looked at
    again each time (pam_slurm_adopt moves processes into a job's cgroup); its environment
    only after an exec (a new command name).

    Shared by the collectors of one daemon, which collect concurrently: one look at a time.
    With `reuse_seconds`, a look at every process that finished less than that long ago
    answers the next one (the daemon's collectors of one scrape walk /proc once); a look
    at some PIDs is always fresh.
    """

    def __init__(
        self,
        procfs: str = "/proc",
        environ_fallback: bool = True,
        reuse_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc = Procfs(procfs)
        self.environ_fallback = environ_fallback
        self.reuse_seconds = reuse_seconds
        self._clock = clock
        self._last_every: tuple[float, dict[int, Attribution]] | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int], Attribution] = {}
        self._stepd: dict[tuple[int, int], str | None] = {}
        # (pid, start, comm) whose environment names no job: an environment only changes
        # with exec, which changes comm, so it is not read again
        self._no_env_job: set[tuple[int, int, str]] = set()

    def attribute(self, pids: Iterable[int] | None = None) -> dict[int, Attribution]:
        """Attributions of `pids` (default: every process) that belong to a Slurm job."""
        with self._lock:
            if pids is not None:
                return self._attribute(list(pids))
            last = self._last_every
            if last is not None and 0 <= self._clock() - last[0] < self.reuse_seconds:
                return dict(last[1])
            found = self._attribute(None)
            self._last_every = (self._clock(), found)
            return dict(found)

    def _attribute(self, pids: list[int] | None) -> dict[int, Attribution]:
        wanted = self.proc.pids() if pids is None else pids
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
        self._prune(seen_keys, every_pid=pids is None)
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

    def _prune(self, seen: set[tuple[int, int]], every_pid: bool) -> None:
        """Forget processes that exited. A look at every process keeps exactly those it saw;
        a look at some PIDs forgets nothing (another collector may still ask about the
        rest) until the caches pass `_PARTIAL_LIMIT`, then keeps the live PIDs' entries."""
        live: set[int] | None = None
        if every_pid:
            self._cache = {k: v for k, v in self._cache.items() if k in seen}
            self._no_env_job = {k for k in self._no_env_job if (k[0], k[1]) in seen}
            live = {pid for pid, _ in seen}
        elif len(self._cache) + len(self._no_env_job) > _PARTIAL_LIMIT:
            live = set(self.proc.pids())
            self._cache = {k: v for k, v in self._cache.items() if k[0] in live}
            self._no_env_job = {k for k in self._no_env_job if k[0] in live}
        if len(self._stepd) > _CACHE_LIMIT:
            self._stepd.clear()
        elif live is not None and len(self._stepd) > 1024:
            self._stepd = {k: v for k, v in self._stepd.items() if k[0] in live}


class _StatLookup(Protocol):
    def __call__(self, pid: int) -> ProcStat | None: ...


def _kernel_thread(st: ProcStat) -> bool:
    return st.pid == 2 or st.ppid == 2


class JobMappingDir:
    """dcgm-exporter's `--hpc-job-mapping-dir` convention: a Slurm prolog writes one file per
    GPU (named by its index, UUID or a MIG device's UUID) holding the ids of the jobs that hold
    it, one per line; the epilog removes it. An unreadable directory or file is logged once."""

    def __init__(self, path: str, log: logging.Logger) -> None:
        self.path = path
        self._once = OnceLog(log)

    def read(self, names: Collection[str]) -> dict[str, list[str]]:
        """Job ids per file, for the files whose name is in `names`, in file name order."""
        out: dict[str, list[str]] = {}
        try:
            files = sorted(os.listdir(self.path))
        except OSError as exc:
            self._once.warning(
                "mapping-dir",
                "cannot read the GPU job mapping directory",
                path=self.path,
                err=str(exc),
            )
            return out
        self._once.clear("mapping-dir")
        for name in files:
            if name not in names:
                continue
            path = os.path.join(self.path, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read(65536)
            except OSError as exc:
                self._once.warning(path, "cannot read GPU job mapping file", err=str(exc))
                continue
            self._once.clear(path)
            out[name] = parse_job_mapping_file(text)
        return out


# -- the service's flags ---------------------------------------------------------------------

ENVIRON_FALLBACK = "--attribution.environ-fallback"
ENVIRON_FALLBACK_ALIAS = "--collector.jobs.environ-fallback"  # its name before the service


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The attribution service's flags. Each collector spec that uses the service calls this
    from its own `add_arguments`, so a daemon with either collector has them; the first call
    registers them and later calls on the same parser find them there."""
    with contextlib.suppress(argparse.ArgumentError):  # registered by another collector
        group.add_argument(
            ENVIRON_FALLBACK,
            ENVIRON_FALLBACK_ALIAS,
            dest="attribution_environ_fallback",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="job attribution (shared by the gpu, jobs and textfile collectors): when "
            "neither a job cgroup nor a slurmstepd ancestor names a process's job, read "
            "SLURM_JOB_ID from /proc/<pid>/environ (default: on)",
        )


def from_args(args: argparse.Namespace) -> JobAttributor:
    """The daemon's attributor, made once by `Services.get(from_args)`."""
    return JobAttributor(
        args.path_procfs, args.attribution_environ_fallback, reuse_seconds=DAEMON_REUSE_SECONDS
    )
