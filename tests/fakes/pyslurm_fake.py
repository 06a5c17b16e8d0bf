"""A fake `pyslurm` 25.11 module over a described cluster, for tests and benchmarks.

`module(cluster)` returns a module object with exactly the attributes hpcobs uses
(`tests/data/slurm/pyslurm_attributes.txt`, which a test checks against pyslurm 25.11.2's
source): `pyslurm.Jobs.load()`, `pyslurm.Nodes.load()`, `pyslurm.slurmctld.diag()`,
`pyslurm.licenses().get()`, `pyslurm.Reservations.load()`, `pyslurm.slurm_api_version()`,
`pyslurm.__version__`. Its
objects have `__slots__` holding only those attributes, so code reaching for anything else
fails with AttributeError, as it would with an attribute pyslurm lacks.

Values follow pyslurm's conventions, not the commands' (see pyslurm's `u32_parse`,
`_raw_time`, `cstr.to_gres_dict`, `TrackableResources`):

- unset numbers and times are `None` (pyslurm maps 0 and NO_VAL to None), so array task 0
  has `array_task_id is None`, and a job outside an array has `array_id is None`;
- states are Slurm's upper-case strings (`PENDING`, `MIXED+DRAIN`);
- a pending array's rest has `array_tasks_waiting` (`"2-999"`, its throttle removed);
- `allocated_tres`/`requested_tres` are TRES objects (`mem.count` in MiB, `gres` by name:
  `{"gpu": GPU(2), "gpu:a100": GPU(2)}`), `None` when Slurm has no such string;
- `configured_gres` is `{"gpu:a100": 4}`; `allocated_gres` comes from the allocated TRES
  string (`{"gpu": 1, "gpu:a100": 1}`, counts as int);
- `allocated_nodes` is `None` for a job that never ran;
- `exit_code`/`exit_code_signal` split the wait status, an exit status of 128 or more less 128
  (pyslurm's `_get_exit_code`);
- a reservation's `flags` is a `ReservationFlags` flag set with pyslurm's member names
  (`MAINTENANCE`, not scontrol's `MAINT`), its recurrence apart in `reoccurrence`.

Used as the imported module itself (the pyslurm backend's worker imports a module by name),
`fakes.pyslurm_fake` serves the cluster in the JSON file `$HPCOBS_FAKE_PYSLURM`, sleeping
`$HPCOBS_FAKE_PYSLURM_DELAY` seconds in each load (a slow slurmctld).
"""

from __future__ import annotations

import enum
import json
import os
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hpcobs.exporters.slurm.portable import CommandFailed

VERSION = "25.11.2"


# -- the cluster description (shared with the portable renderer in the tests) -----------------


@dataclass
class JobSpec:
    job_id: int
    state: str  # Slurm's upper-case state
    partition: str = "debug"
    array_job_id: int = 0  # 0: not an array
    task: int | None = None  # the task id of a split-off task
    remainder: str = ""  # a pending array's rest, e.g. "2-999%10"
    reason: str = "None"
    submit: int = 0
    eligible: int = 0
    start: int = 0
    end: int = 0
    cpus: int = 1
    mem_mib: int = 100
    gpus: int = 0
    gpu_type: str = ""
    licenses: list[str] = field(default_factory=list)
    nodes: str = ""
    user: str = "root"
    account: str = ""
    exit_status: int = 0  # the wait status, as squeue's exit_code prints it (768: exit 3)
    restarts: int = 0


@dataclass
class NodeSpec:
    name: str
    partitions: list[str]
    state: str  # complete upper-case state, e.g. "IDLE", "MIXED+DRAIN", "DOWN+NOT_RESPONDING"
    cpus: int = 2
    cpus_allocated: int = 0
    mem_mib: int = 2000
    mem_allocated_mib: int = 0
    gpus: int = 0
    gpus_allocated: int = 0
    gpu_type: str = ""
    reason: str = ""


@dataclass
class LicenseSpec:
    name: str
    total: int
    used: int


@dataclass
class ReservationSpec:
    name: str
    start: int
    end: int
    nodes: str = ""
    partition: str = ""
    flags: list[str] = field(default_factory=list)  # scontrol's names: MAINT, SPEC_NODES, …


@dataclass
class ClusterSpec:
    jobs: list[JobSpec] = field(default_factory=list)
    nodes: list[NodeSpec] = field(default_factory=list)
    licenses: list[LicenseSpec] = field(default_factory=list)
    reservations: list[ReservationSpec] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    rpcs: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (count, µs)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        doc = json.loads(text)
        return cls(
            jobs=[JobSpec(**j) for j in doc["jobs"]],
            nodes=[NodeSpec(**n) for n in doc["nodes"]],
            licenses=[LicenseSpec(**lic) for lic in doc["licenses"]],
            reservations=[ReservationSpec(**r) for r in doc.get("reservations", [])],
            stats=dict(doc["stats"]),
            rpcs={k: (int(v[0]), int(v[1])) for k, v in doc["rpcs"].items()},
        )


def tres_string(job: JobSpec) -> str:
    """The TRES string Slurm would hold for the job (`cpu=2,mem=200M,node=1,gres/gpu=1`)."""
    parts = [f"cpu={job.cpus}", f"mem={job.mem_mib}M", "node=1", f"billing={job.cpus}"]
    if job.gpus:
        parts.append(f"gres/gpu={job.gpus}")
        if job.gpu_type:
            parts.append(f"gres/gpu:{job.gpu_type}={job.gpus}")
    return ",".join(parts)


# -- the same cluster as the Slurm 22.05 commands print it (the portable backend's view) -----------------------------------------


def _t(value: int, none: str = "N/A") -> str:
    return str(value) if value else none


def squeue_text(cluster: ClusterSpec) -> str:
    lines = []
    for j in cluster.jobs:
        if j.remainder:
            tasks = j.remainder
        elif j.array_job_id:
            tasks = str(j.task)
        else:
            tasks = "N/A"
        end = _t(j.end, "NONE" if j.state == "RUNNING" else "N/A")
        fields = [
            j.job_id,
            j.array_job_id or j.job_id,
            tasks,
            j.partition,
            j.state,
            _t(j.eligible),
            _t(j.start),
            end,
            j.cpus,
            tres_string(j),
            ",".join(j.licenses) or "(null)",
            j.nodes,
            j.reason,
        ]
        tail = [_t(j.submit), j.restarts, j.exit_status, j.account or "(null)", j.user]
        lines.append("|".join(map(str, fields)) + "|" + "".join(f"{t}\x1f" for t in tail))
    return "\n".join(lines) + "\n"


def sinfo_text(cluster: ClusterSpec) -> str:
    lines = []
    for n in cluster.nodes:
        gtype = f"{n.gpu_type}:" if n.gpu_type else ""
        gres = f"gpu:{gtype}{n.gpus}(S:0-1)" if n.gpus else "(null)"
        used = f"gpu:{gtype}{n.gpus_allocated}(IDX:0-{max(0, n.gpus_allocated - 1)})"
        idle = n.cpus - n.cpus_allocated if n.state.startswith(("IDLE", "MIXED")) else 0
        other = n.cpus - n.cpus_allocated - idle
        for partition in n.partitions:
            fields = [
                n.name,
                partition,
                n.state.lower(),
                f"{n.cpus_allocated}/{idle}/{other}/{n.cpus}",
                n.mem_mib,
                n.mem_allocated_mib,
                gres,
                used if n.gpus else "(null)",
                n.reason or "none",
            ]
            lines.append("|".join(map(str, fields)) + "|")
    return "\n".join(lines) + "\n"


SDIAG_KEYS = {
    "server_thread_count": "Server thread count",
    "agent_queue_size": "Agent queue size",
    "dbd_agent_queue_size": "DBD Agent queue size",
    "jobs_submitted": "Jobs submitted",
    "jobs_started": "Jobs started",
    "jobs_completed": "Jobs completed",
    "jobs_canceled": "Jobs canceled",
    "jobs_failed": "Jobs failed",
}


def sdiag_text(cluster: ClusterSpec) -> str:
    s = cluster.stats
    out = ["*" * 55, "sdiag output at Thu Jan 15 08:00:00 2027 (1800000000)", "*" * 55]
    out += [f"{label}: {s.get(key, 0)}" for key, label in SDIAG_KEYS.items()]
    out += [
        "",
        "Main schedule statistics (microseconds):",
        f"\tLast cycle:   {s.get('schedule_cycle_last', 0)}",
        f"\tMax cycle:    {s.get('schedule_cycle_max', 0)}",
        f"\tTotal cycles: {s.get('schedule_cycle_counter', 0)}",
        f"\tMean cycle:   {s.get('schedule_cycle_mean', 0)}",
        f"\tMean depth cycle:  {s.get('schedule_cycle_mean_depth', 0)}",
        f"\tLast queue length: {s.get('schedule_queue_length', 0)}",
        "",
        "Backfilling stats",
        f"\tTotal backfilled jobs (since last slurm start): {s.get('backfilled_jobs', 0)}",
        "\tTotal backfilled jobs (since last stats cycle start): 0",
        f"\tTotal cycles: {s.get('backfill_cycle_counter', 0)}",
        f"\tLast cycle: {s.get('backfill_cycle_last', 0)}",
        f"\tMax cycle:  {s.get('backfill_cycle_max', 0)}",
        f"\tMean cycle: {s.get('backfill_cycle_mean', 0)}",
        f"\tLast depth cycle: {s.get('backfill_last_depth', 0)}",
        "\tLast depth cycle (try sched): 0",
        f"\tLast queue length: {s.get('backfill_queue_length', 0)}",
        "",
        "Remote Procedure Call statistics by message type",
    ]
    for name, (count, total) in cluster.rpcs.items():
        out.append(
            f"\t{name:<40}( 2003) count:{count:<6} ave_time:{total // max(count, 1):<6} "
            f"total_time:{total}"
        )
    out += ["", "Remote Procedure Call statistics by user", "\troot  (  0) count:9 ave_time:1"]
    return "\n".join(out) + "\n"


def licenses_text(cluster: ClusterSpec) -> str:
    return "".join(
        f"LicenseName={x.name} Total={x.total} Used={x.used} Free={x.total - x.used} "
        "Reserved=0 Remote=no\n"
        for x in cluster.licenses
    )


def reservations_text(cluster: ClusterSpec) -> str:
    if not cluster.reservations:
        return "No reservations in the system\n"
    return "".join(
        f"ReservationName={r.name} StartTime={r.start} EndTime={r.end} Duration=00:10:00 "
        f"Nodes={r.nodes or '(null)'} NodeCnt=1 CoreCnt=2 Features=(null) "
        f"PartitionName={r.partition or '(null)'} Flags={','.join(r.flags)} TRES=cpu=2 "
        "Users=root Groups=(null) Accounts=(null) Licenses=(null) State=INACTIVE "
        "BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)\n"
        for r in cluster.reservations
    )


class FakeCommands:
    """A `runner` for PortableBackend answering like the Slurm commands for `cluster`; the
    output arrives in `chunk`-byte pieces (lines cut anywhere), as through a pipe."""

    def __init__(self, cluster: ClusterSpec, chunk: int = 61) -> None:
        self.cluster = cluster
        self.chunk = chunk
        self.argvs: list[list[str]] = []
        self.fail: set[str] = set()

    def __call__(
        self, argv: Sequence[str], env: Mapping[str, str], timeout: float
    ) -> Iterator[bytes]:
        self.argvs.append(list(argv))
        name = os.path.basename(argv[0])
        if name == "scontrol" and argv[2:3] == ["reservation"]:
            name = "scontrol-reservation"
        text = {
            "squeue": squeue_text,
            "sinfo": sinfo_text,
            "sdiag": sdiag_text,
            "scontrol": licenses_text,
            "scontrol-reservation": reservations_text,
        }[name](self.cluster).encode()
        if name in self.fail:
            yield text[: len(text) // 2]
            raise CommandFailed(1, b"slurm_load_jobs error: Unable to contact slurm controller")
        for i in range(0, len(text), self.chunk):
            yield text[i : i + self.chunk]


# -- pyslurm's objects (only the attributes hpcobs uses) ---------------------------------------


def _none(value: int) -> int | None:
    return value if value else None


class TrackableResource:
    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class GPU:
    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class TrackableResources:
    __slots__ = ("gres", "mem")

    def __init__(self, mem: TrackableResource | None, gres: dict[str, Any]) -> None:
        self.mem = mem
        self.gres = gres


def _tres(job: JobSpec) -> TrackableResources:
    gres: dict[str, Any] = {}
    if job.gpus:
        gres["gpu"] = GPU(job.gpus)
        if job.gpu_type:
            gres[f"gpu:{job.gpu_type}"] = GPU(job.gpus)
    return TrackableResources(TrackableResource(job.mem_mib), gres)


def _exit_code(status: int) -> tuple[int, int]:
    """pyslurm's `_get_exit_code`: (exit status, signal), an exit status ≥ 128 less 128."""
    if status & 0x7F:
        return 0, status & 0x7F
    code = status >> 8
    return (code - 128 if code >= 128 else code), 0


class Job:
    __slots__ = (
        "account",
        "allocated_nodes",
        "allocated_tres",
        "array_id",
        "array_task_id",
        "array_tasks_waiting",
        "cpus",
        "eligible_time",
        "end_time",
        "exit_code",
        "exit_code_signal",
        "id",
        "licenses",
        "partition",
        "requested_tres",
        "requeue_count",
        "start_time",
        "state",
        "state_reason",
        "submit_time",
        "user_name",
    )

    def __init__(self, spec: JobSpec) -> None:
        self.id = spec.job_id
        self.array_id = _none(spec.array_job_id)
        self.array_task_id = _none(spec.task) if spec.task is not None else None
        waiting = spec.remainder.split("%", 1)[0] if spec.remainder else None
        self.array_tasks_waiting = waiting
        self.partition = spec.partition
        self.state = spec.state
        self.state_reason = spec.reason
        self.eligible_time = _none(spec.eligible)
        self.start_time = _none(spec.start)
        self.end_time = _none(spec.end)
        self.cpus = spec.cpus or 1
        ran = bool(spec.nodes)
        # Slurm keeps the allocated TRES string once the job ran; pyslurm's from_cstr gives
        # None for an empty string.
        self.allocated_tres = _tres(spec) if ran else None
        self.requested_tres = _tres(spec)
        self.licenses = list(spec.licenses)
        self.allocated_nodes = spec.nodes or None
        self.submit_time = _none(spec.submit)
        self.user_name = spec.user or None
        self.account = spec.account or None
        self.exit_code, self.exit_code_signal = _exit_code(spec.exit_status)
        self.requeue_count = spec.restarts


class Node:
    __slots__ = (
        "allocated_cpus",
        "allocated_gres",
        "allocated_memory",
        "configured_gres",
        "name",
        "partitions",
        "real_memory",
        "reason",
        "state",
        "total_cpus",
    )

    def __init__(self, spec: NodeSpec) -> None:
        self.name = spec.name
        self.partitions = list(spec.partitions)
        self.state = spec.state
        self.total_cpus = spec.cpus
        self.allocated_cpus = spec.cpus_allocated
        self.real_memory = _none(spec.mem_mib)
        self.allocated_memory = spec.mem_allocated_mib
        gres_name = f"gpu:{spec.gpu_type}" if spec.gpu_type else "gpu"
        self.configured_gres = {gres_name: spec.gpus} if spec.gpus else {}
        allocated: dict[str, int] = {}
        if spec.gpus_allocated:
            allocated["gpu"] = spec.gpus_allocated
            if spec.gpu_type:
                allocated[gres_name] = spec.gpus_allocated
        self.allocated_gres = allocated
        self.reason = spec.reason or None


class RPCType:
    __slots__ = ("count", "time")

    def __init__(self, count: int, time_us: int) -> None:
        self.count = count
        self.time = time_us


STAT_FIELDS = (
    "server_thread_count",
    "agent_queue_size",
    "dbd_agent_queue_size",
    "jobs_submitted",
    "jobs_started",
    "jobs_completed",
    "jobs_canceled",
    "jobs_failed",
    "schedule_cycle_last",
    "schedule_cycle_max",
    "schedule_cycle_mean",
    "schedule_cycle_counter",
    "schedule_queue_length",
    "schedule_cycle_mean_depth",
    "backfilled_jobs",
    "backfill_cycle_counter",
    "backfill_cycle_last",
    "backfill_cycle_max",
    "backfill_cycle_mean",
    "backfill_last_depth",
    "backfill_queue_length",
)


class Statistics:
    __slots__ = (*STAT_FIELDS, "rpcs_by_type")

    def __init__(self, stats: dict[str, int], rpcs: dict[str, tuple[int, int]]) -> None:
        for name in STAT_FIELDS:
            setattr(self, name, int(stats.get(name, 0)))
        self.rpcs_by_type = {name: RPCType(c, t) for name, (c, t) in rpcs.items()}


class ReservationFlags(enum.Flag):
    """pyslurm's ReservationFlags (the members hpcobs may meet), by pyslurm's names."""

    MAINTENANCE = 1
    MAGNETIC = 2
    FLEX = 4
    IGNORE_RUNNING_JOBS = 8
    ANY_NODES = 16
    STATIC_NODES = 32
    PARTITION_NODES_ONLY = 64
    USER_DELETION = 128
    PURGE = 256
    SPECIFIC_NODES = 512
    NO_JOB_HOLD_AFTER_END = 1024
    OVERLAP = 2048
    ALL_NODES = 4096


class ReservationReoccurrence(enum.Enum):
    NO = "NO"
    DAILY = "DAILY"
    HOURLY = "HOURLY"
    WEEKLY = "WEEKLY"
    WEEKDAY = "WEEKDAY"
    WEEKEND = "WEEKEND"


_PYSLURM_FLAG = {
    "MAINT": "MAINTENANCE",
    "IGNORE_JOBS": "IGNORE_RUNNING_JOBS",
    "STATIC": "STATIC_NODES",
    "PART_NODES": "PARTITION_NODES_ONLY",
    "USER_DELETE": "USER_DELETION",
    "PURGE_COMP": "PURGE",
    "SPEC_NODES": "SPECIFIC_NODES",
    "NO_HOLD_JOBS_AFTER_END": "NO_JOB_HOLD_AFTER_END",
}


class Reservation:
    __slots__ = ("end_time", "flags", "name", "nodes", "partition", "reoccurrence", "start_time")

    def __init__(self, spec: ReservationSpec) -> None:
        self.name = spec.name
        self.start_time = _none(spec.start)
        self.end_time = _none(spec.end)
        self.nodes = spec.nodes or None
        self.partition = spec.partition or None
        flags = ReservationFlags(0)
        self.reoccurrence = ReservationReoccurrence.NO
        for name in spec.flags:
            if name in ReservationReoccurrence.__members__:
                self.reoccurrence = ReservationReoccurrence[name]
            else:
                flags |= ReservationFlags[_PYSLURM_FLAG.get(name, name)]
        self.flags = flags


class _Collection:
    """pyslurm's MultiClusterMap, reduced to `values()`."""

    __slots__ = ("_items",)

    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def values(self) -> list[Any]:
        return list(self._items)


# -- the module --------------------------------------------------------------------------------


class FakePyslurm:
    """Builds the module; `calls` counts the loads (one slurmctld call each)."""

    def __init__(self, cluster: ClusterSpec, delay: float = 0.0) -> None:
        self.cluster = cluster
        self.delay = delay
        self.calls: dict[str, int] = {}
        self.fail: set[str] = set()

    def _load(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1
        if self.delay:
            time.sleep(self.delay)
        if what in self.fail:
            raise RuntimeError(f"Unable to contact slurm controller ({what})")

    def module(self) -> types.ModuleType:
        fake = self
        mod = types.ModuleType("pyslurm")
        mod.__version__ = VERSION  # type: ignore[attr-defined]

        def slurm_api_version() -> tuple[int, int, int]:
            return (25, 11, 2)

        class Jobs:
            __slots__ = ()

            @staticmethod
            def load() -> _Collection:
                fake._load("jobs")
                return _Collection([Job(j) for j in fake.cluster.jobs])

        class Nodes:
            __slots__ = ()

            @staticmethod
            def load() -> _Collection:
                fake._load("nodes")
                return _Collection([Node(n) for n in fake.cluster.nodes])

        class Reservations:
            __slots__ = ()

            @staticmethod
            def load() -> _Collection:
                fake._load("reservations")
                return _Collection([Reservation(r) for r in fake.cluster.reservations])

        class licenses:
            __slots__ = ()

            def get(self) -> dict[str, dict[str, int]]:
                fake._load("licenses")
                return {
                    lic.name: {
                        "total": lic.total,
                        "in_use": lic.used,
                        "available": lic.total - lic.used,
                    }
                    for lic in fake.cluster.licenses
                }

        def diag() -> Statistics:
            fake._load("diag")
            return Statistics(fake.cluster.stats, fake.cluster.rpcs)

        slurmctld = types.ModuleType("pyslurm.slurmctld")
        slurmctld.diag = diag  # type: ignore[attr-defined]
        mod.slurm_api_version = slurm_api_version  # type: ignore[attr-defined]
        mod.Jobs = Jobs  # type: ignore[attr-defined]
        mod.Nodes = Nodes  # type: ignore[attr-defined]
        mod.licenses = licenses  # type: ignore[attr-defined]
        mod.Reservations = Reservations  # type: ignore[attr-defined]
        mod.slurmctld = slurmctld  # type: ignore[attr-defined]
        return mod


def module(cluster: ClusterSpec, delay: float = 0.0) -> types.ModuleType:
    return FakePyslurm(cluster, delay).module()


# Used as the imported module itself (a worker process imports `fakes.pyslurm_fake`): the
# pyslurm names resolve against the cluster in $HPCOBS_FAKE_PYSLURM.
_FROM_ENV: types.ModuleType | None = None
_PYSLURM_NAMES = (
    "__version__",
    "slurm_api_version",
    "Jobs",
    "Nodes",
    "licenses",
    "slurmctld",
    "Reservations",
)


def __getattr__(name: str) -> Any:
    global _FROM_ENV
    if name not in _PYSLURM_NAMES:
        raise AttributeError(name)
    if _FROM_ENV is None:
        path = os.environ.get("HPCOBS_FAKE_PYSLURM")
        if not path:
            raise AttributeError(f"{name}: HPCOBS_FAKE_PYSLURM is not set")
        with open(path) as f:
            cluster = ClusterSpec.from_json(f.read())
        delay = float(os.environ.get("HPCOBS_FAKE_PYSLURM_DELAY", "0") or 0)
        _FROM_ENV = module(cluster, delay)
    return getattr(_FROM_ENV, name)
