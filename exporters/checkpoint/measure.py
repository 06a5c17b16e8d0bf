"""What an attempt measures beside time: bytes written (the I/O counters of /proc/<pid>/io, or
the size of a path) and the job's start (Slurm's variable, else the step's first process).

The parsers are pure; the readers return None where /proc has nothing to say."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def parse_io_write_bytes(text: str) -> int | None:
    """`write_bytes` of a /proc/<pid>/io text; None when absent or malformed."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "write_bytes":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


@dataclass(frozen=True)
class ProcStat:
    comm: str
    ppid: int
    start_ticks: int  # field 22: start time after boot, in clock ticks


def parse_proc_stat(text: str) -> ProcStat | None:
    """The fields of /proc/<pid>/stat that the step-start lookup needs; None if malformed.

    `comm` is in parentheses and may itself hold spaces and parentheses, so the fields after
    it are found from the last ')'.
    """
    head, sep, tail = text.rpartition(")")
    opening = head.find("(")
    if not sep or opening < 0:
        return None
    fields = tail.split()
    # tail starts at field 3 (state): ppid is field 4, starttime field 22
    if len(fields) < 20 or not fields[1].isdigit() or not fields[19].isdigit():
        return None
    return ProcStat(head[opening + 1 :], int(fields[1]), int(fields[19]))


def parse_boot_time(text: str) -> float | None:
    """`btime` (Unix time of boot) from /proc/stat; None if absent or malformed."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "btime" and parts[1].isdigit():
            return float(parts[1])
    return None


def read_write_bytes(pid: int | str, proc: Path = Path("/proc")) -> int | None:
    try:
        return parse_io_write_bytes((proc / str(pid) / "io").read_text())
    except OSError:
        return None


def step_start_time(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Unix start time of the Slurm step's first process above `pid` (a child of slurmstepd)."""
    try:
        boot = parse_boot_time((proc / "stat").read_text())
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    if boot is None or ticks <= 0:
        return None
    for _ in range(64):  # a deeper process tree than this is no job
        try:
            stat = parse_proc_stat((proc / str(pid) / "stat").read_text())
            parent = parse_proc_stat((proc / str(stat.ppid) / "stat").read_text()) if stat else None
        except OSError:
            return None
        if stat is None or parent is None:
            return None
        if parent.comm == "slurmstepd":
            return boot + stat.start_ticks / ticks
        if stat.ppid <= 1:
            return None
        pid = stat.ppid
    return None


def job_start_time(
    environ: Mapping[str, str], pid: int, proc: Path = Path("/proc")
) -> float | None:
    text = environ.get("SLURM_JOB_START_TIME", "")
    if text.isdigit():
        return float(text)
    if environ.get("SLURM_JOB_ID"):
        return step_start_time(pid, proc)
    return None


def path_bytes(path: Path) -> int:
    """Size of a file, or of every regular file under a directory (symlinks not followed)."""
    try:
        if not path.is_dir():
            return path.stat().st_size
    except OSError:
        return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                if not os.path.islink(os.path.join(root, name)):
                    total += st.st_size
    return total
