"""The data-source interface: four reads of slurmctld, each one call.

A collection cycle calls `jobs()` and `nodes()` and one of `scheduler()` / `licenses()`
(taking turns), so it never makes more than three slurmctld calls. Two backends implement it:

- `portable` (`portable.py`): the Slurm commands with explicit formats, no bindings needed;
- `pyslurm` (`pyslurm_backend.py`): pyslurm 25.11's API in a worker process.

`select_backend()` resolves `--slurm.backend=auto|pyslurm|portable`.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from hpcobs.exporters.parse.slurm import Job, License, Node, SchedulerStats

log = logging.getLogger("hpcobs.slurm")

Call = Literal["jobs", "nodes", "scheduler", "licenses"]
CALLS: tuple[Call, ...] = ("jobs", "nodes", "scheduler", "licenses")
BACKENDS = ("auto", "pyslurm", "portable")


class SlurmCallError(Exception):
    """A call to slurmctld failed, timed out or answered something unreadable."""

    def __init__(self, call: str, message: str) -> None:
        self.call = call
        super().__init__(f"{call}: {message}")


class Backend(abc.ABC):
    """One slurmctld call per method. Implementations raise SlurmCallError on failure."""

    name: str = ""

    def __init__(self) -> None:
        self.parse_errors: Counter[str] = Counter()
        """Records of each call that could not be read (the rest are used)."""

    @abc.abstractmethod
    def jobs(self) -> list[Job]:
        """Every job slurmctld holds, in every state (a pending array's rest is one Job)."""

    @abc.abstractmethod
    def nodes(self) -> list[Node]:
        """Every node, with its partitions."""

    @abc.abstractmethod
    def scheduler(self) -> SchedulerStats:
        """slurmctld's scheduler and RPC statistics (what `sdiag` shows)."""

    @abc.abstractmethod
    def licenses(self) -> list[License]:
        """Configured licenses and their use."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (a worker process)."""


_SLURM_VERSION = re.compile(r"slurm(?:-wlm)?\s+(\d+)\.(\d+)")


def installed_slurm_version(sinfo: str = "sinfo", timeout: float = 10.0) -> tuple[int, int] | None:
    """The local Slurm's (major, minor) from `sinfo --version` (no slurmctld call)."""
    path = shutil.which(sinfo)
    if path is None:
        return None
    try:
        proc = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = _SLURM_VERSION.search(proc.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def versions_match(
    pyslurm_version: str, api_version: Sequence[int], installed: tuple[int, int] | None
) -> str:
    """ "" when pyslurm can talk to this Slurm, else why not. pyslurm X.Y.* is built for
    Slurm X.Y; its compiled-in API version and the installed Slurm must both be X.Y."""
    m = re.match(r"(\d+)\.(\d+)", pyslurm_version)
    if m is None:
        return f"cannot read the pyslurm version {pyslurm_version!r}"
    wanted = (int(m.group(1)), int(m.group(2)))
    built = tuple(api_version[:2])
    if built != wanted:
        return f"pyslurm {pyslurm_version} was built against Slurm {built[0]}.{built[1]:02d}"
    if installed is not None and installed != wanted:
        return (
            f"pyslurm {pyslurm_version} needs Slurm {wanted[0]}.{wanted[1]:02d}, "
            f"this machine has Slurm {installed[0]}.{installed[1]:02d}"
        )
    return ""


def select_backend(
    kind: str,
    *,
    timeout: float,
    slurm_conf: str = "",
    bin_dir: str = "",
) -> Backend:
    """Build the backend `--slurm.backend` names; `auto` takes pyslurm when it is installed
    and matches the installed Slurm, else the portable one, and logs which and why."""
    from hpcobs.exporters.slurm.portable import PortableBackend
    from hpcobs.exporters.slurm.pyslurm_backend import PyslurmBackend

    if kind not in BACKENDS:
        raise ValueError(f"--slurm.backend must be one of {', '.join(BACKENDS)}, not {kind!r}")
    if kind == "portable":
        return PortableBackend(timeout=timeout, slurm_conf=slurm_conf, bin_dir=bin_dir)
    if kind == "auto" and importlib.util.find_spec("pyslurm") is None:
        log.info(
            "slurm backend: portable (pyslurm is not installed)", extra={"backend": "portable"}
        )
        return PortableBackend(timeout=timeout, slurm_conf=slurm_conf, bin_dir=bin_dir)
    backend = PyslurmBackend(timeout=timeout, slurm_conf=slurm_conf)
    try:
        version, api = backend.version()
        why = versions_match(version, api, installed_slurm_version(_sinfo(bin_dir)))
    except SlurmCallError as exc:
        why = str(exc)
    if not why:
        log.info(
            "slurm backend: pyslurm",
            extra={"backend": "pyslurm", "pyslurm_version": version},
        )
        return backend
    backend.close()
    if kind == "pyslurm":
        raise ValueError(f"--slurm.backend=pyslurm: {why}")
    log.info(
        "slurm backend: portable (pyslurm not usable)",
        extra={"backend": "portable", "reason": why},
    )
    return PortableBackend(timeout=timeout, slurm_conf=slurm_conf, bin_dir=bin_dir)


def _sinfo(bin_dir: str) -> str:
    return f"{bin_dir.rstrip('/')}/sinfo" if bin_dir else "sinfo"
