"""Slurm job attribution from procfs text: which job does a process belong to?

Pure functions on the contents of files; the collectors do the reading.

- `/proc/<pid>/cgroup` (primary source). One line per hierarchy, `ID:CONTROLLERS:PATH`;
  cgroup v2 has the single line `0::PATH`. Slurm puts a job's processes under a directory
  `job_<id>`:
    - v1 (`cgroup/v1`, proctrack/cgroup, task/cgroup), one line per controller:
      `4:memory:/slurm/uid_1000/job_1234/step_batch/task_0`
      (`/slurm_<node>/...` with multiple-slurmd; `step_extern`, `step_0`, ...)
    - v2 (`cgroup/v2`, Slurm 22.05+):
      `0::/system.slice/slurmstepd.scope/job_1234/step_0/user/task_0`
- `/proc/<pid>/stat`: pid, command name, parent pid and start time (ticks since boot); with
  proctrack/linuxproc there are no per-job cgroups, and a job's processes are the
  descendants of its `slurmstepd: [<job>.<step>]` process (`/proc/<pid>/cmdline`).
- `/proc/<pid>/environ`: `SLURM_JOB_ID` (a fallback; a process can change its environment).
- dcgm-exporter's `--hpc-job-mapping-dir` files: one file per GPU, one job id per line.

Arbitrary input never raises: malformed lines are skipped and the result is partial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Slurm job ids are decimal integers (array and het-job members have their own raw ids).
_JOB = re.compile(r"(?:^|/)job_(\d{1,20})(?=/|$)", re.ASCII)
_STEP = re.compile(r"(?:^|/)step_([A-Za-z0-9_]{1,64})(?=/|$)", re.ASCII)
_UID = re.compile(r"(?:^|/)uid_(\d{1,20})(?=/|$)", re.ASCII)
_JOB_ID = re.compile(r"\d{1,20}", re.ASCII)
_INT = re.compile(r"-?\d{1,20}", re.ASCII)
# `slurmstepd: [1234.batch]`, `[1234.extern]`, `[1234.0]`, `[1234.interactive]`
_STEPD_TITLE = re.compile(r"^slurmstepd: \[(\d{1,20})(?:\.([A-Za-z0-9_]{1,64}))?\]", re.ASCII)

# Controllers consulted in this order on cgroup v1 when lines disagree (freezer is what
# proctrack/cgroup uses to track a job's processes).
_V1_PREFERENCE = ("freezer", "cpuacct", "memory", "cpuset", "devices", "cpu", "pids")


def _canonical_job_id(digits: str) -> str:
    """A job id as Slurm prints it: `0001234` → `1234` (and `000` → `0`)."""
    return digits.lstrip("0") or "0"


@dataclass(frozen=True)
class CgroupEntry:
    """One line of /proc/<pid>/cgroup."""

    hierarchy_id: int
    controllers: tuple[str, ...]
    path: str

    @property
    def unified(self) -> bool:
        """The cgroup v2 (unified) hierarchy: `0::<path>`."""
        return self.hierarchy_id == 0 and not self.controllers


@dataclass(frozen=True)
class SlurmCgroup:
    """The Slurm job a cgroup path places a process in."""

    job_id: str
    step: str | None  # "batch", "extern", "0", ... when the path names a step
    uid: str | None  # v1 paths carry `uid_<uid>`
    version: int  # 1 or 2
    path: str


def parse_proc_cgroup(text: str) -> list[CgroupEntry]:
    """Lines of /proc/<pid>/cgroup; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        parts = line.split(":", 2)  # the path itself may contain ':'
        if len(parts) != 3:
            continue
        ident, controllers, path = parts
        if not _JOB_ID.fullmatch(ident) or not path.startswith("/"):
            continue
        names = tuple(c for c in controllers.split(",") if c)
        entries.append(CgroupEntry(int(ident), names, path))
    return entries


def job_from_cgroup_path(path: str, version: int = 2) -> SlurmCgroup | None:
    """The Slurm job named by a cgroup path (`.../job_<id>/...`), or None."""
    job = _JOB.search(path)
    if job is None:
        return None
    rest = path[job.end() :]
    step = _STEP.search(rest)
    uid = _UID.search(path[: job.start() + 1])
    return SlurmCgroup(
        job_id=_canonical_job_id(job.group(1)),
        step=step.group(1) if step else None,
        uid=uid.group(1) if uid else None,
        version=version,
        path=path,
    )


def slurm_job_from_cgroup(text: str) -> SlurmCgroup | None:
    """The Slurm job of a process from its /proc/<pid>/cgroup contents, or None.

    The unified (v2) line wins when it names a job; otherwise the v1 controllers are
    consulted in a fixed order (freezer, cpuacct, memory, cpuset, ...), then any other line.
    """
    entries = parse_proc_cgroup(text)
    for entry in entries:
        if entry.unified:
            found = job_from_cgroup_path(entry.path, version=2)
            if found is not None:
                return found

    def rank(entry: CgroupEntry) -> int:
        for i, name in enumerate(_V1_PREFERENCE):
            if name in entry.controllers:
                return i
        return len(_V1_PREFERENCE)

    for entry in sorted((e for e in entries if not e.unified), key=rank):
        found = job_from_cgroup_path(entry.path, version=1)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that attribution needs."""

    pid: int
    comm: str
    state: str
    ppid: int
    start_ticks: int  # field 22: start time in clock ticks after boot (identifies the process)


def parse_proc_stat(text: str) -> ProcStat | None:
    """/proc/<pid>/stat → ProcStat, or None when malformed.

    The command name is in parentheses and may itself contain spaces and parentheses, so
    the fields after it are found from the last ')'.
    """
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren <= 0 or close_paren < open_paren:
        return None
    head = text[:open_paren].strip()
    fields = text[close_paren + 1 :].split()
    # fields[0] is field 3 (state); field 4 is ppid; field 22 is starttime.
    if not _JOB_ID.fullmatch(head) or len(fields) < 20:
        return None
    state, ppid, start = fields[0], fields[1], fields[19]
    if not (_INT.fullmatch(ppid) and _JOB_ID.fullmatch(start)):
        return None
    return ProcStat(
        pid=int(head),
        comm=text[open_paren + 1 : close_paren],
        state=state,
        ppid=int(ppid),
        start_ticks=int(start),
    )


def job_from_stepd_cmdline(cmdline: bytes) -> str | None:
    """The job id from a slurmstepd's /proc/<pid>/cmdline (`slurmstepd: [1234.batch]`)."""
    title = cmdline.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    match = _STEPD_TITLE.match(title)
    if match is None:
        return None
    return _canonical_job_id(match.group(1))


def job_from_environ(environ: bytes) -> str | None:
    """`SLURM_JOB_ID` from /proc/<pid>/environ (NUL-separated), or None."""
    for item in environ.split(b"\0"):
        if item.startswith(b"SLURM_JOB_ID="):
            value = item[len(b"SLURM_JOB_ID=") :].decode("ascii", "replace").strip()
            if _JOB_ID.fullmatch(value):
                return _canonical_job_id(value)
            return None
    return None


def parse_job_mapping_file(text: str) -> list[str]:
    """Job ids in one file of a dcgm-exporter-style job mapping directory.

    One job id per line (a Slurm prolog writes them; Princeton's jobstats variant writes
    `<job id> <uid>` on one line: the first word counts). Other lines are ignored.
    Duplicates are removed, order kept.
    """
    jobs: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or not _JOB_ID.fullmatch(words[0]):
            continue
        job = _canonical_job_id(words[0])
        if job not in jobs:
            jobs.append(job)
    return jobs
