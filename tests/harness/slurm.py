"""A private single-node Slurm cluster for `real` tests (a pytest plugin).

Loaded by ``tests/conftest.py`` as ``harness.slurm``. :class:`SlurmCluster` starts, entirely
under a temporary directory and as the current user (root in CI):

* a private ``munged`` (own 128-byte key, socket, pid, log and seed files), so neither the
  machine's munge key nor its ``/run/munge`` socket is used;
* ``slurmctld -D`` and ``slurmd -D -N node1`` reading a generated ``slurm.conf`` whose
  ``AuthInfo``/``CredType`` point at the private munge socket, whose ports are free TCP ports
  and whose controller and node are ``localhost``/``127.0.0.1`` whatever the machine's hostname;
* one node ``node1`` with the CPU topology ``slurmd -C`` reports and a ``RealMemory`` a margin
  below the real one (a value above it drains the node), in partitions ``debug`` (default),
  ``batch`` and ``short`` (``MaxTime=1``);
* optionally (``preemption=True``) preemption by partition priority:
  ``PreemptType=preempt/partition_prio`` and ``PreemptMode=REQUEUE``, with partitions ``low``
  (``PriorityTier=1``) and ``high`` (``PriorityTier=10``) on the same node: a ``high`` job
  requeues the ``low`` jobs in its way, or cancels them (state ``PREEMPTED``) when they were
  submitted with ``--no-requeue``; and licenses (``licenses={"matlab": 2}``: ``Licenses=``).

Every process is started in its own process group and stopped by PID (SIGTERM, then SIGKILL
after a grace period); job processes left behind (``slurmstepd`` and the job's tasks, which
outlive ``slurmd``) are found and killed too (see :meth:`SlurmCluster.job_processes`). A
cluster that cannot start raises :class:`SlurmStartError` with the tail of every log; the
fixtures turn that into a test failure, never a skip.

Slurm versions: the binaries are the first ``slurmctld``, ``slurmd``, ``munged``, ``sbatch``, …
on ``PATH`` (else /usr/sbin, /usr/bin): Debian 12's 22.05 on the host, or the wrappers of
``scripts/compat/slurm-root.sh`` that run trixie's 24.11 or sid's 26.05 in a chroot.
:func:`slurm_version` (``slurmd -V``) tells which, and the harness adapts:

* from 24.11 on, ``slurmd`` loads a cgroup plugin even with
  ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` (without a cgroup.conf
  it autodetects one and logs ``No cgroup.conf file … using defaults``), and refuses to start
  where that plugin cannot initialise; a ``cgroup.conf`` with ``CgroupPlugin=disabled`` next
  to slurm.conf stops it. 22.05 does not know that value and exits with it, so it gets no
  cgroup.conf;
* from 24.11 on, ``slurmstepd`` runs with an empty environment (no ``SLURM_CONF``), so job
  processes are found by what is unique to this cluster: the Unix socket every
  ``slurmstepd`` listens on under this cluster's ``SlurmdSpoolDir``, the session the step runs
  in, and their descendants.

Timing (Debian 12, Slurm 22.05.8, 2 CPUs; 24.11 and 26.05 in their chroots start alike):

* ``node1`` is ``idle`` about 0.05 s after start when ``slurmd`` is started once
  ``slurmctld`` accepts connections (started together, ``slurmd``'s first registration fails and
  is retried a second later).
* ``slurmctld`` runs its first scheduling pass 3 s after it starts, whatever the configuration
  (it reads ``batch_sched_delay`` only in that pass; the built-in value is 3 s), so a job
  submitted before then stays ``PENDING`` (reason ``None``) until then. By default
  :meth:`SlurmCluster.start` waits for that pass (``sdiag``'s "Total cycles" ≥ 1), which makes
  the whole start about 3 s; pass ``wait_for_scheduler=False`` to return at ``idle``.
* With ``SchedulerParameters=batch_sched_delay=0`` (set here) a later job starts within about a
  second of its submission (the controller's background loop ticks once a second).
* With the controller down, client commands retry the connection for about ``MessageTimeout``
  seconds (set to 3 s here; Slurm's default is 10 s) before failing.

This module has no ``assert`` statements, and test modules may import it before pytest
registers it as a plugin, so it opts out of assertion rewriting: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import pytest

__all__ = [
    "CLUSTER_NAME",
    "FINISHED_STATES",
    "NODE_NAME",
    "NodeHardware",
    "SlurmCluster",
    "SlurmClusterFactory",
    "SlurmCommandError",
    "SlurmHarnessError",
    "SlurmStartError",
    "SlurmVersion",
    "SlurmWaitTimeout",
    "detect_hardware",
    "free_tcp_ports",
    "slurm_cluster",
    "slurm_cluster_factory",
    "slurm_version",
]

CLUSTER_NAME = "hpcobs-test"
NODE_NAME = "node1"

FINISHED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
"""Job states after which a (non-requeued) job never runs again."""

PREEMPTION_PARTITIONS_TIERS = (("low", 1), ("high", 10))
"""With ``preemption=True``: partitions on node1 and their ``PriorityTier`` (a ``high`` job
preempts ``low`` jobs; the other partitions have tier 1 too)."""
PREEMPTION_PARTITIONS = tuple(name for name, _ in PREEMPTION_PARTITIONS_TIERS)

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_COMMAND_TIMEOUT = 30.0
MEMORY_MARGIN_MB = 512
"""``RealMemory`` is this much (at most 10 %) below what ``slurmd -C`` reports."""

# A Unix socket path (munge's, slurmstepd's under SlurmdSpoolDir) must fit in sun_path
# (108 bytes); pytest's tmp_path can be longer than that, so sockets go to a short directory
# under /tmp when the given one is too long.
_MAX_SOCKET_DIR_LEN = 60

# Environment variables that steer Slurm clients; a test run inside a Slurm job (CI on a
# cluster) must not leak them into the private cluster.
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SACCT_")

_PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------------------------
# errors


class SlurmHarnessError(Exception):
    """Base class of this harness's errors."""


class SlurmStartError(SlurmHarnessError):
    """munged, slurmctld or slurmd did not start (message holds the log tails)."""


class SlurmCommandError(SlurmHarnessError):
    """A Slurm client command exited non-zero (with ``check=True``)."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.argv = list(argv)
        self.result = result
        super().__init__(
            f"{' '.join(self.argv)} exited with {result.returncode}\n"
            f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
        )


class SlurmWaitTimeout(AssertionError):
    """A wait on the cluster did not finish in time (reported as a test failure)."""


# --------------------------------------------------------------------------------------------
# helpers


@dataclass(frozen=True)
class NodeHardware:
    """What ``slurmd -C`` reports about this machine."""

    cpus: int
    boards: int
    sockets_per_board: int
    cores_per_socket: int
    threads_per_core: int
    real_memory_mb: int

    @property
    def usable_memory_mb(self) -> int:
        """``RealMemory`` for slurm.conf: a margin below the real one (never above it)."""
        margin = min(MEMORY_MARGIN_MB, self.real_memory_mb // 10)
        return max(1, self.real_memory_mb - margin)


@cache
def detect_hardware() -> NodeHardware:
    """Parse ``slurmd -C`` (cached); raise :class:`SlurmStartError` if it cannot run."""
    slurmd = _binary("slurmd")
    try:
        proc = subprocess.run(
            [slurmd, "-C"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmStartError(f"slurmd -C failed: {exc}") from exc
    fields = dict(re.findall(r"(\w+)=(\S+)", proc.stdout))
    try:
        cpus = int(fields["CPUs"])
        return NodeHardware(
            cpus=cpus,
            boards=int(fields.get("Boards", "1")),
            sockets_per_board=int(fields.get("SocketsPerBoard", "1")),
            cores_per_socket=int(fields.get("CoresPerSocket", str(cpus))),
            threads_per_core=int(fields.get("ThreadsPerCore", "1")),
            real_memory_mb=int(fields["RealMemory"]),
        )
    except (KeyError, ValueError) as exc:
        raise SlurmStartError(
            f"cannot parse `slurmd -C` (rc {proc.returncode}): {proc.stdout!r} {proc.stderr!r}"
        ) from exc


class SlurmVersion(NamedTuple):
    """The Slurm on PATH; compares as a tuple (``slurm_version() >= (24, 11)``)."""

    major: int
    minor: int
    micro: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor:02d}.{self.micro}"


CGROUP_DISABLED_SINCE = (24, 11)
"""First version whose harness cluster gets ``cgroup.conf`` with ``CgroupPlugin=disabled``
(measured: 22.05 rejects the value, 24.11 and 26.05 need it where cgroups cannot work)."""


@cache
def slurm_version() -> SlurmVersion:
    """The version ``slurmd -V`` reports (cached); :class:`SlurmStartError` if it cannot run.

    ``slurmd -V`` reads no slurm.conf; from 24.11 on a client's ``--version`` (``sinfo``)
    fails without one.
    """
    slurmd = _binary("slurmd")
    try:
        proc = subprocess.run(
            [slurmd, "-V"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmStartError(f"slurmd -V failed: {exc}") from exc
    m = re.search(r"slurm(?:-wlm)?\s+(\d+)\.(\d+)(?:\.(\d+))?", proc.stdout + proc.stderr)
    if m is None:
        raise SlurmStartError(
            f"cannot read the version from `slurmd -V` (rc {proc.returncode}): "
            f"{proc.stdout!r} {proc.stderr!r}"
        )
    return SlurmVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def free_tcp_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free a moment ago on both 127.0.0.1 and the wildcard.

    Slurm's daemons listen on the wildcard address, so a port is only taken when both binds
    succeed.
    """
    ports: list[int] = []
    for _ in range(count * 50):
        if len(ports) == count:
            break
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port in ports:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("0.0.0.0", port))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        ports.append(port)
    if len(ports) != count:
        raise SlurmStartError(f"could not find {count} free TCP ports on 127.0.0.1")
    return ports


def _binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/bin") if os.access(p := f"{d}/{name}", os.X_OK)),
        None,
    )
    if path is None:
        raise SlurmStartError(
            f"{name!r} not found; install the Debian packages slurmctld slurmd slurm-client munge"
        )
    return path


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
    env.update(extra or {})
    return env


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Let the daemon die with the test process even if teardown never runs."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc, or ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _alive(pid: int) -> bool:
    # Zombies count as dead: their parent may be a PID 1 that never reaps.
    return _proc_state(pid) not in (None, "Z", "X")


def _proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _processes_with_env(name: str, value: str) -> dict[int, list[bytes]]:
    """PIDs whose environment has ``name=value`` (only those this user may read), each with
    its whole environment (``NAME=value`` entries)."""
    needle = f"{name}={value}".encode()
    found: dict[int, list[bytes]] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            found[int(entry.name)] = environ
    return found


class _Proc(NamedTuple):
    """What /proc/PID/stat says about a process."""

    comm: str
    state: str
    ppid: int
    sid: int


def _process_table() -> dict[int, _Proc]:
    """Every process visible in /proc (those gone while reading are left out)."""
    table: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rpartition(")")[2].split()
            table[int(entry.name)] = _Proc(comm, fields[0], int(fields[1]), int(fields[3]))
        except (OSError, ValueError, IndexError):
            continue
    return table


def _unix_socket_inodes(directory: Path) -> set[str]:
    """Inodes of the Unix sockets bound to a path in ``directory`` (from /proc/net/unix; the
    path is the one given to bind(), the same inside the compat chroots, whose /tmp is the
    host's)."""
    prefix = str(directory).rstrip("/") + "/"
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return set()
    inodes = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith(prefix):
            inodes.add(fields[6])
    return inodes


def _holds_socket(pid: int, links: set[str]) -> bool:
    """Whether ``pid`` has one of the sockets ``links`` (``socket:[INODE]``) open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in links:
                return True
        except OSError:
            continue
    return False


# --------------------------------------------------------------------------------------------
# processes


class _Daemon:
    """One daemon in the foreground, in its own process group, output appended to a file."""

    def __init__(self, name: str, argv: Sequence[str], out_path: Path, log_path: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.out_path = out_path
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, env: Mapping[str, str], cwd: Path) -> None:
        with self.out_path.open("ab") as out:
            out.write(f"# {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
            out.flush()
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_set_pdeathsig,
                )
            except OSError as exc:
                raise SlurmStartError(f"cannot execute {self.argv[0]}: {exc}") from exc

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_note(self) -> str:
        if self.popen is None:
            return "not started"
        rc = self.popen.poll()
        return "running" if rc is None else f"exited with code {rc}"

    def report(self, lines: int) -> str:
        parts = [f"--- {self.name} ({self.exit_note()}): {' '.join(self.argv)}"]
        parts.append(f"[{self.out_path}]\n{_tail(self.out_path, lines)}")
        if self.log_path != self.out_path and self.log_path.exists():
            parts.append(f"[{self.log_path}]\n{_tail(self.log_path, lines)}")
        return "\n".join(parts)

    def signal(self, sig: int) -> None:
        if self.running() and self.popen is not None:
            _kill(self.popen.pid, sig)

    def kill_group(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def reap(self, timeout: float) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)

    def stop(self, grace: float) -> None:
        if self.popen is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.reap(5.0)
        self.kill_group()  # children it left in its group (slurmctld's slurmscriptd)


# --------------------------------------------------------------------------------------------
# the cluster


class SlurmCluster:
    """A private single-node Slurm cluster under ``base_dir``.

    Construct, then :meth:`start` (or use it as a context manager); :meth:`stop` is
    idempotent. All client commands must get :attr:`env` (``SLURM_CONF`` pointing here).
    """

    node_name: str = NODE_NAME
    cluster_name: str = CLUSTER_NAME
    partitions: tuple[str, ...] = ("debug", "batch", "short")
    default_partition: str = "debug"

    def __init__(
        self,
        base_dir: Path | str,
        *,
        min_job_age: int = 300,
        max_job_count: int = 200_000,
        max_array_size: int = 100_001,
        slurmd_timeout: int = 10,
        message_timeout: int = 3,
        return_to_service: int = 1,
        def_mem_per_cpu_mb: int = 100,
        select_type_parameters: str = "CR_Core_Memory",
        extra_conf: Sequence[str] = (),
        preemption: bool = False,
        licenses: Mapping[str, int] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        wait_for_scheduler: bool = True,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.min_job_age = min_job_age
        self.max_job_count = max_job_count
        self.max_array_size = max_array_size
        self.slurmd_timeout = slurmd_timeout
        self.message_timeout = message_timeout
        self.return_to_service = return_to_service
        self.def_mem_per_cpu_mb = def_mem_per_cpu_mb
        self.select_type_parameters = select_type_parameters
        self.extra_conf = tuple(extra_conf)
        self.preemption = preemption
        self.licenses = dict(licenses or {})
        if self.preemption:
            self.partitions = (*self.partitions, *PREEMPTION_PARTITIONS)
        self.start_timeout = start_timeout
        self.wait_for_scheduler = wait_for_scheduler

        self.hardware = detect_hardware()
        self.version = slurm_version()
        """The Slurm version this cluster runs (:func:`slurm_version`)."""
        self.conf_path = self.base_dir / "slurm.conf"
        self.state_dir = self.base_dir / "state"
        self.log_dir = self.base_dir / "log"
        self.jobs_dir = self.base_dir / "jobs"
        """Working directory of :meth:`sbatch` (so ``slurm-<id>.out`` files land here)."""
        self.jobcomp_path = self.base_dir / "jobcomp.log"
        self.slurmctld_log = self.log_dir / "slurmctld.log"
        self.slurmd_log = self.log_dir / "slurmd.log"
        self.munged_log = self.log_dir / "munged.log"

        self._token = uuid.uuid4().hex
        # Sockets (munge's; slurmstepd's under SlurmdSpoolDir) need a short path: when
        # base_dir is long they live in /tmp/hpcobs-slurm-<random>, linked as base_dir/run.
        self._short_dir: Path | None = None
        if len(str(self.base_dir)) <= _MAX_SOCKET_DIR_LEN:
            self.run_dir = self.base_dir / "run"
        else:
            self._short_dir = Path("/tmp") / f"hpcobs-slurm-{self._token[:12]}"
            self.run_dir = self._short_dir
        self.munge_dir = self.run_dir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.munge_key = self.munge_dir / "munge.key"
        self.spool_dir = self.run_dir / "spool"

        self.slurmctld_port = 0
        self.slurmd_port = 0
        self.start_seconds: float | None = None
        """Seconds :meth:`start` took (until ready as configured)."""
        self.timings: dict[str, float] = {}
        """Seconds from the start of :meth:`start` to each milestone."""
        self._munged: _Daemon | None = None
        self._slurmctld: _Daemon | None = None
        self._slurmd: _Daemon | None = None
        self._started = False
        self._stopped = False

    # -- properties ---------------------------------------------------------------------------

    @property
    def cpus(self) -> int:
        return self.hardware.cpus

    @property
    def real_memory_mb(self) -> int:
        return self.hardware.usable_memory_mb

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands (and exporters) talking to this cluster."""
        return _clean_env({"SLURM_CONF": str(self.conf_path)})

    @property
    def slurmctld_pid(self) -> int | None:
        return None if self._slurmctld is None else self._slurmctld.pid

    @property
    def slurmd_pid(self) -> int | None:
        return None if self._slurmd is None else self._slurmd.pid

    @property
    def munged_pid(self) -> int | None:
        return None if self._munged is None else self._munged.pid

    def slurmctld_running(self) -> bool:
        return self._slurmctld is not None and self._slurmctld.running()

    # -- configuration ------------------------------------------------------------------------

    def conf_text(self) -> str:
        """The slurm.conf this cluster runs with."""
        hw = self.hardware
        auth = f"socket={self.munge_socket}"
        lines = [
            "# generated by tests/harness/slurm.py",
            f"ClusterName={self.cluster_name}",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={self.slurmctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "AuthType=auth/munge",
            f"AuthInfo={auth}",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.state_dir}",
            f"SlurmdSpoolDir={self.spool_dir}",
            f"SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.run_dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.slurmctld_log}",
            f"SlurmdLogFile={self.slurmd_log}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"PlugStackConfig={self.base_dir / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0",
            "SelectType=select/cons_tres",
            f"SelectTypeParameters={self.select_type_parameters}",
            f"DefMemPerCPU={self.def_mem_per_cpu_mb}",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp_path}",
            "MailProg=/bin/true",
            f"MinJobAge={self.min_job_age}",
            f"MaxJobCount={self.max_job_count}",
            f"MaxArraySize={self.max_array_size}",
            f"ReturnToService={self.return_to_service}",
            f"SlurmdTimeout={self.slurmd_timeout}",
            f"MessageTimeout={self.message_timeout}",
            *self._preemption_conf(),
            *(
                ["Licenses=" + ",".join(f"{k}:{v}" for k, v in self.licenses.items())]
                if self.licenses
                else []
            ),
            *self.extra_conf,
            (
                f"NodeName={self.node_name} NodeHostname=localhost NodeAddr=127.0.0.1"
                f" CPUs={hw.cpus} Boards={hw.boards} SocketsPerBoard={hw.sockets_per_board}"
                f" CoresPerSocket={hw.cores_per_socket} ThreadsPerCore={hw.threads_per_core}"
                f" RealMemory={hw.usable_memory_mb} State=UNKNOWN"
            ),
            f"PartitionName=debug Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=batch Nodes={self.node_name} MaxTime=INFINITE State=UP",
            f"PartitionName=short Nodes={self.node_name} MaxTime=1 State=UP",
            *(
                f"PartitionName={name} Nodes={self.node_name} PriorityTier={tier}"
                " MaxTime=INFINITE State=UP"
                for name, tier in (PREEMPTION_PARTITIONS_TIERS if self.preemption else ())
            ),
        ]
        return "\n".join(lines) + "\n"

    def _preemption_conf(self) -> list[str]:
        if not self.preemption:
            return []
        return ["PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE"]

    def _prepare(self) -> None:
        for d in (self.base_dir, self.state_dir, self.log_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o755, exist_ok=self._short_dir is None)
        self.spool_dir.mkdir(mode=0o755, exist_ok=True)
        self.munge_dir.mkdir(mode=0o755, exist_ok=True)
        if self._short_dir is not None:
            link = self.base_dir / "run"
            if not link.exists():
                link.symlink_to(self._short_dir)
        # munged insists on a key it alone can read; 128 random bytes is mungekey's default.
        fd = os.open(self.munge_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(128))
        (self.base_dir / "plugstack.conf").write_text("")
        if self.version >= CGROUP_DISABLED_SINCE:
            # Read from slurm.conf's directory (see the module docstring).
            (self.base_dir / "cgroup.conf").write_text("CgroupPlugin=disabled\n")
        self.slurmctld_port, self.slurmd_port = free_tcp_ports(2)
        self.conf_path.write_text(self.conf_text())

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; wait until node1 is idle (and, by default, the
        first scheduling pass). On failure stop everything and raise :class:`SlurmStartError`.
        """
        if self._started:
            raise SlurmHarnessError("cluster already started")
        self._started = True
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        try:
            self._prepare()
            self._munged = _Daemon(
                "munged",
                [
                    _binary("munged"),
                    "--foreground",
                    "--force",
                    f"--socket={self.munge_socket}",
                    f"--key-file={self.munge_key}",
                    f"--pid-file={self.munge_dir / 'munged.pid'}",
                    f"--log-file={self.munged_log}",
                    f"--seed-file={self.munge_dir / 'munged.seed'}",
                    "--num-threads=4",
                ],
                self.munged_log,
                self.munged_log,
            )
            self._munged.start(self.env, self.base_dir)
            self._wait(self._munged_ready, deadline, "munged socket accepting connections")
            self.timings["munged"] = time.monotonic() - t0

            self._start_slurmctld_process(clean=True)
            self._wait(self._slurmctld_listening, deadline, "slurmctld accepting connections")
            self.timings["slurmctld"] = time.monotonic() - t0

            self._slurmd = _Daemon(
                "slurmd",
                [_binary("slurmd"), "-D", "-N", self.node_name, "-f", str(self.conf_path)],
                self.log_dir / "slurmd.out",
                self.slurmd_log,
            )
            self._slurmd.start(self.env, self.base_dir)
            self._wait(self._node_idle, deadline, f"{self.node_name} idle in sinfo")
            self.timings["node_idle"] = time.monotonic() - t0

            if self.wait_for_scheduler:
                self._wait(self._scheduler_ran, deadline, "slurmctld's first scheduling pass")
                self.timings["scheduler"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop slurmctld, slurmd, munged and job processes left behind; idempotent.

        SIGTERM first, SIGKILL after ``grace`` s. ``slurmstepd`` blocks SIGTERM, so it and the
        job tasks under it get SIGKILL at once.
        """
        if self._stopped:
            return
        self._stopped = True
        leftovers = self.job_processes()
        for pid in leftovers:
            _kill(pid, signal.SIGKILL)
        slurm = [d for d in (self._slurmctld, self._slurmd) if d is not None]
        for d in slurm:
            d.signal(signal.SIGTERM)
        end = time.monotonic() + grace
        for d in slurm:
            d.reap(max(0.0, end - time.monotonic()))
        for d in slurm:
            if d.running():
                d.kill_group()
                d.reap(5.0)
            d.kill_group()
        # Anything spawned meanwhile (a step launched as slurmd went down).
        for pid in self.job_processes():
            _kill(pid, signal.SIGKILL)
        if self._munged is not None:
            self._munged.stop(grace)
        self._wait_gone(leftovers, 5.0)
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)

    def stop_slurmctld(self, grace: float = 10.0) -> None:
        """Stop only the controller (SIGTERM; it saves its state), e.g. to test "Slurm down"."""
        if self._slurmctld is None:
            raise SlurmHarnessError("cluster not started")
        self._slurmctld.stop(grace)

    def start_slurmctld(self, timeout: float | None = None) -> float:
        """Start the controller again, recovering the saved state; return seconds until ready.

        Ready: client commands answer and ``slurmd`` has registered with the new controller
        (``sdiag`` counts a ``MESSAGE_NODE_REGISTRATION_STATUS``). That takes about 4 s: the
        controller asks nodes to register with its first ping, 3 s after it starts, and until
        then it treats node1 as unavailable although ``sinfo`` shows it as before (a job
        submitted earlier is left pending with reason "Nodes required for job are DOWN,
        DRAINED or reserved …" until the next scheduling event, up to a minute later).
        """
        if self._slurmctld is None:
            raise SlurmHarnessError("cluster not started")
        if self._slurmctld.running():
            raise SlurmHarnessError("slurmctld is already running")
        t0 = time.monotonic()
        deadline = t0 + (self.start_timeout if timeout is None else timeout)
        self._start_slurmctld_process(clean=False)
        self._wait(self._slurmctld_listening, deadline, "slurmctld accepting connections")
        self._wait(self._node_registered, deadline, f"{self.node_name} registering again")
        return time.monotonic() - t0

    def _start_slurmctld_process(self, *, clean: bool) -> None:
        argv = [_binary("slurmctld"), "-D", "-i", "-f", str(self.conf_path)]
        if clean:
            argv.insert(2, "-c")
        self._slurmctld = _Daemon(
            "slurmctld", argv, self.log_dir / "slurmctld.out", self.slurmctld_log
        )
        self._slurmctld.start(self.env, self.base_dir)

    # -- readiness ----------------------------------------------------------------------------

    def _daemons(self) -> list[_Daemon]:
        return [d for d in (self._munged, self._slurmctld, self._slurmd) if d is not None]

    def failure_report(self, why: str, lines: int = 30) -> str:
        """``why`` plus every daemon's state and log tail (what a failed start raises)."""
        parts = [f"private Slurm cluster in {self.base_dir}: {why}"]
        parts.extend(d.report(lines) for d in self._daemons())
        if self.conf_path.exists():
            parts.append(f"--- {self.conf_path}\n{self.conf_path.read_text()}")
        return "\n".join(parts)

    def _wait(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        last = "not checked yet"
        while True:
            for d in self._daemons():
                if d.popen is not None and d.popen.poll() is not None:
                    raise SlurmStartError(
                        self.failure_report(f"{d.name} {d.exit_note()} while waiting for {what}")
                    )
            try:
                if check():
                    return
                last = "not yet"
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise SlurmStartError(
                    self.failure_report(
                        f"timed out after {self.start_timeout:g} s waiting for {what} "
                        f"(last check: {last})"
                    )
                )
            time.sleep(0.02)

    def _munged_ready(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(self.munge_socket))
        return True

    def _slurmctld_listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.slurmctld_port), timeout=1.0):
            return True

    def _node_state(self) -> str:
        proc = self.run("sinfo", "-h", "-n", self.node_name, "-o", "%T", check=False, timeout=10)
        if proc.returncode != 0:
            raise SlurmHarnessError(proc.stderr.strip() or f"sinfo rc {proc.returncode}")
        return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""

    def _node_idle(self) -> bool:
        state = self._node_state()
        if state != "idle":
            raise SlurmHarnessError(f"{self.node_name} is {state!r}")
        return True

    def _node_registered(self) -> bool:
        proc = self.run("sdiag", check=False, timeout=10)
        m = re.search(r"MESSAGE_NODE_REGISTRATION_STATUS\s.*?count:\s*(\d+)", proc.stdout)
        return m is not None and int(m.group(1)) > 0

    def _scheduler_ran(self) -> bool:
        proc = self.run("sdiag", check=False, timeout=10)
        m = re.search(r"Main schedule statistics.*?Total cycles:\s*(\d+)", proc.stdout, re.S)
        return m is not None and int(m.group(1)) > 0

    # -- leftovers ----------------------------------------------------------------------------

    def job_processes(self) -> set[int]:
        """slurmstepd and job tasks of this cluster: not its daemons, not this process's
        ancestors (a test may run clients with :attr:`env`), and not processes started with
        :attr:`env` that are no job (an exporter under test).

        Found by what is unique to this cluster, whatever the Slurm version:

        * every ``slurmstepd`` listens on a Unix socket in this cluster's ``SlurmdSpoolDir``
          (``node1_<job>.<step>``), found in /proc/net/unix;
        * ``slurmd`` starts each ``slurmstepd`` in a session of its own, where the step's tasks
          stay (unless they call setsid themselves): everything in those sessions;
        * up to 22.05 ``slurmstepd`` and the tasks also carry ``SLURM_CONF=<this slurm.conf>``
          in their environment (from 24.11 on ``slurmstepd``'s is empty, the tasks' still has
          it, from the submitting environment): ``slurmstepd`` with it, and any process with
          it and ``SLURM_JOB_ID`` (a task that left the session);
        * and the descendants of all these.
        """
        ours = {d.pid for d in self._daemons() if d.pid is not None}
        ancestors: set[int] = set()
        pid = os.getpid()
        while pid > 1 and pid not in ancestors:
            ancestors.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                break
        table = _process_table()
        links = {f"socket:[{inode}]" for inode in _unix_socket_inodes(self.spool_dir)}
        found: set[int] = set()
        if links:
            found = {
                p
                for p, info in table.items()
                if info.comm == "slurmstepd" and _holds_socket(p, links)
            }
        excluded = ours | ancestors
        # A session of a daemon or of this process is never a step's (slurmd calls setsid).
        sessions = {table[p].sid for p in found} - {table[p].sid for p in excluded if p in table}
        found |= {p for p, info in table.items() if info.sid in sessions}
        for p, environ in _processes_with_env("SLURM_CONF", str(self.conf_path)).items():
            if _proc_comm(p) == "slurmstepd" or any(
                e.startswith(b"SLURM_JOB_ID=") for e in environ
            ):
                found.add(p)
        found -= excluded
        children: dict[int, list[int]] = {}
        for p, info in table.items():
            children.setdefault(info.ppid, []).append(p)
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found and child not in excluded:
                    found.add(child)
                    todo.append(child)
        return {p for p in found if _alive(p)}

    @staticmethod
    def _wait_gone(pids: Iterable[int], timeout: float) -> None:
        end = time.monotonic() + timeout
        pending = set(pids)
        while pending and time.monotonic() < end:
            pending = {p for p in pending if _alive(p)}
            if pending:
                time.sleep(0.02)

    # -- commands -----------------------------------------------------------------------------

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        input: str | None = None,
        cwd: Path | str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``run("squeue", "-h")``) without a shell.

        Raises :class:`SlurmCommandError` on a non-zero exit when ``check``, and
        :class:`subprocess.TimeoutExpired` after ``timeout`` s.
        """
        if not args:
            raise ValueError("run() needs a command")
        argv = [str(a) for a in args]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            cwd=cwd if cwd is not None else self.jobs_dir,
            check=False,
        )
        if check and proc.returncode != 0:
            raise SlurmCommandError(argv, proc)
        return proc

    def sbatch(
        self,
        script: str,
        *opts: str,
        wrap: bool | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> int:
        """Submit a batch job; return its id (an array's ``ArrayJobId``).

        ``script`` is a whole batch script when it starts with ``#!`` (given on stdin) and a
        command for ``--wrap`` otherwise; ``wrap`` forces either. ``opts`` are further sbatch
        options (``"--no-requeue"``, ``"-p", "batch"``, ``"--array=1-3"``). Output files go to
        :attr:`jobs_dir` unless ``opts`` say otherwise.
        """
        use_wrap = not script.startswith("#!") if wrap is None else wrap
        argv = ["sbatch", "--parsable", *opts]
        if use_wrap:
            proc = self.run(*argv, f"--wrap={script}", timeout=timeout)
        else:
            text = script if script.startswith("#!") else "#!/bin/sh\n" + script
            proc = self.run(*argv, input=text, timeout=timeout)
        out = proc.stdout.strip()
        try:
            return int(out.splitlines()[-1].split(";")[0])
        except (IndexError, ValueError) as exc:
            raise SlurmHarnessError(f"unexpected sbatch output {out!r}") from exc

    def job_states(self, job_id: int | str) -> list[str]:
        """The states of a job (one per array task or job record) as ``squeue`` shows them,
        falling back to the jobcomp log once the controller has purged it (``MinJobAge``);
        ``[]`` when unknown."""
        proc = self.run(
            "squeue", "-h", "-r", "--states=all", "-j", str(job_id), "-o", "%T", check=False
        )
        states = proc.stdout.split() if proc.returncode == 0 else []
        if states:
            return states
        base = str(job_id)
        return [r["JobState"] for r in self.jobcomp_records() if r.get("JobId") == base]

    def wait_job_state(
        self,
        job_id: int | str,
        states: str | Iterable[str],
        timeout: float = 30.0,
        interval: float = 0.1,
    ) -> str:
        """Wait until every record of the job is in one of ``states`` (``"COMPLETED"`` or
        ``{"COMPLETED", "FAILED"}``); return the (first) state. Raise :class:`SlurmWaitTimeout`
        with the states last seen."""
        wanted = {states.upper()} if isinstance(states, str) else {s.upper() for s in states}
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            seen = self.job_states(job_id)
            if seen and all(s.rstrip("+") in wanted for s in seen):
                return seen[0].rstrip("+")
            if time.monotonic() >= deadline:
                raise SlurmWaitTimeout(
                    f"job {job_id} not in {sorted(wanted)} within {timeout:g} s; "
                    f"last seen: {seen or 'no such job'}"
                )
            time.sleep(interval)

    def node_state(self) -> str:
        """``sinfo``'s state of node1 (``idle``, ``allocated``, ``down``, ``idle*``, …)."""
        return self._node_state()

    def jobcomp_records(self) -> list[dict[str, str]]:
        """The jobcomp/filetxt log as one dict per finished job (``JobId``, ``JobState``, …)."""
        try:
            text = self.jobcomp_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            if line.strip():
                records.append(
                    {k: v.strip() for k, v in re.findall(r"(\w+)=(.*?)(?= \w+=|\s*$)", line)}
                )
        return records


# --------------------------------------------------------------------------------------------
# fixtures


class SlurmClusterFactory(Protocol):
    def __call__(
        self,
        *,
        min_job_age: int = ...,
        max_job_count: int = ...,
        max_array_size: int = ...,
        slurmd_timeout: int = ...,
        message_timeout: int = ...,
        return_to_service: int = ...,
        def_mem_per_cpu_mb: int = ...,
        select_type_parameters: str = ...,
        extra_conf: Sequence[str] = ...,
        preemption: bool = ...,
        licenses: Mapping[str, int] = ...,
        start_timeout: float = ...,
        wait_for_scheduler: bool = ...,
    ) -> SlurmCluster: ...


@contextlib.contextmanager
def _failing_start() -> Iterator[None]:
    try:
        yield
    except SlurmStartError as exc:
        pytest.fail(f"Slurm test cluster did not start:\n{exc}", pytrace=False)


@pytest.fixture
def slurm_cluster_factory(tmp_path: Path) -> Iterator[SlurmClusterFactory]:
    """Start private clusters with options (``slurm_cluster_factory(min_job_age=2)``); each
    one is stopped at teardown. A cluster that cannot start fails the test."""
    clusters: list[SlurmCluster] = []

    def factory(**options: Any) -> SlurmCluster:
        base = tmp_path / f"slurm{len(clusters)}"
        with _failing_start():
            cluster = SlurmCluster(base, **options)
        clusters.append(cluster)
        with _failing_start():
            cluster.start()
        return cluster

    try:
        yield factory
    finally:
        for cluster in reversed(clusters):
            cluster.stop()


@pytest.fixture
def slurm_cluster(slurm_cluster_factory: SlurmClusterFactory) -> SlurmCluster:
    """A started private cluster with default options, stopped at teardown."""
    return slurm_cluster_factory()
