"""The data-source interface: five reads of slurmctld, each one call.

A collection cycle calls `jobs()` and `nodes()` and one of `scheduler()` / `licenses()` /
`reservations()` (taking turns), so it never makes more than three slurmctld calls. Two
backends implement it:

- `portable` (`portable.py`): the Slurm commands with explicit formats, no bindings needed;
- `pyslurm` (`pyslurm_backend.py`): pyslurm 25.11's API in a worker process.

`select_backend()` resolves `--slurm.backend=auto|pyslurm|portable`; `startup_backend()` does so
without blocking start-up (checking pyslurm against the installed Slurm starts a worker process
and runs `sinfo --version`: that is left to the first call, in the poller's thread).
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

from hpcobs.exporters.slurm.model import Job, License, Node, Reservation, SchedulerStats

log = logging.getLogger("hpcobs.slurm")

Call = Literal["jobs", "nodes", "scheduler", "licenses", "reservations"]
CALLS: tuple[Call, ...] = ("jobs", "nodes", "scheduler", "licenses", "reservations")
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

    @abc.abstractmethod
    def reservations(self) -> list[Reservation]:
        """Current and future reservations."""

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


def startup_backend(
    kind: str,
    *,
    timeout: float,
    slurm_conf: str = "",
    bin_dir: str = "",
) -> Backend:
    """The backend `--slurm.backend` names, built without blocking: no command, no worker
    process. `portable`, or `auto` without pyslurm installed, is chosen at once; otherwise the
    choice (which runs pyslurm and `sinfo --version`) is made at the first call
    (`DeferredBackend`). Raises ValueError for a kind that cannot work at all."""
    if kind not in BACKENDS:
        raise ValueError(f"--slurm.backend must be one of {', '.join(BACKENDS)}, not {kind!r}")
    installed = importlib.util.find_spec("pyslurm") is not None
    if kind == "portable" or (kind == "auto" and not installed):
        return select_backend(kind, timeout=timeout, slurm_conf=slurm_conf, bin_dir=bin_dir)
    if not installed:
        raise ValueError("--slurm.backend=pyslurm: pyslurm is not installed")
    return DeferredBackend(kind, timeout=timeout, slurm_conf=slurm_conf, bin_dir=bin_dir)


Selector = Callable[..., Backend]


class DeferredBackend(Backend):
    """`select_backend(kind)` made at the first call, from the poller's thread. Until then its
    name is the kind (`auto`, `pyslurm`); a choice that fails (`--slurm.backend=pyslurm` with a
    pyslurm that does not match the installed Slurm) fails that call, and is tried again at
    the next one."""

    def __init__(
        self,
        kind: str,
        *,
        timeout: float,
        slurm_conf: str = "",
        bin_dir: str = "",
        select: Selector | None = None,
    ) -> None:
        super().__init__()
        self.name = kind
        self.kind = kind
        self.timeout = timeout
        self.slurm_conf = slurm_conf
        self.bin_dir = bin_dir
        self._select: Selector = select_backend if select is None else select
        self._lock = threading.Lock()
        self._backend: Backend | None = None
        self._closed = False

    def _resolve(self, call: str) -> Backend:
        backend = self._backend
        if backend is not None:
            return backend
        try:
            backend = self._select(
                self.kind, timeout=self.timeout, slurm_conf=self.slurm_conf, bin_dir=self.bin_dir
            )
        except ValueError as exc:
            raise SlurmCallError(call, str(exc)) from exc
        with self._lock:
            closed = self._closed
            if not closed:
                backend.parse_errors = self.parse_errors  # one count, whoever reads
                self._backend = backend
                self.name = backend.name
        if closed:
            backend.close()
            raise SlurmCallError(call, "the exporter is stopping")
        return backend

    def jobs(self) -> list[Job]:
        return self._resolve("jobs").jobs()

    def nodes(self) -> list[Node]:
        return self._resolve("nodes").nodes()

    def scheduler(self) -> SchedulerStats:
        return self._resolve("scheduler").scheduler()

    def licenses(self) -> list[License]:
        return self._resolve("licenses").licenses()

    def reservations(self) -> list[Reservation]:
        return self._resolve("reservations").reservations()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            backend = self._backend
        if backend is not None:
            backend.close()
