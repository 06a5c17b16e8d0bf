"""Slurm command output and jobcomp/filetxt lines → dataclasses (pure functions, no I/O).

The portable backend asks the Slurm commands for explicit, minimal formats (never a site's
`SQUEUE_FORMAT`), with `SLURM_TIME_FORMAT=%s` so times arrive as Unix seconds:

    squeue --all --noheader --states=all -O <SQUEUE_FORMAT>      → parse_squeue()
    sinfo  --all --noheader --Node -O <SINFO_FORMAT>             → parse_sinfo()
    sdiag                                                        → parse_sdiag()
    scontrol show licenses --oneliner                            → parse_licenses()
    one line of a jobcomp/filetxt log                            → parse_jobcomp_line()

The pyslurm backend builds the same dataclasses from pyslurm objects with the normalisers
below (`job_state`, `node_state`, `pending_reason`, `gpu_count`, …), so the two backends can
never disagree on what a state or a reason means.

Free-text fields (a pending reason, a node's reason) come last in each format, so a `|` inside
them cannot shift the other columns. Every parser returns what it could parse and the number
of lines it could not; arbitrary input never raises.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import NamedTuple

SEP = "|"

SQUEUE_FIELDS = (
    "JobID",
    "ArrayJobID",
    "ArrayTaskID",
    "Partition",
    "State",
    "EligibleTime",
    "StartTime",
    "EndTime",
    "NumCPUs",
    "tres-alloc",
    "Licenses",
    "NodeList",
    "Reason",
)
SINFO_FIELDS = (
    "NodeList",
    "PartitionName",
    "StateComplete",
    "CPUsState",
    "Memory",
    "AllocMem",
    "Gres",
    "GresUsed",
    "Reason",
)


def output_format(fields: Iterable[str]) -> str:
    """The `-O` argument: each field unpadded and followed by `|` (`JobID:|,State:|`)."""
    return ",".join(f"{name}:{SEP}" for name in fields)


SQUEUE_FORMAT = output_format(SQUEUE_FIELDS)
SINFO_FORMAT = output_format(SINFO_FIELDS)

MIB = 1024 * 1024

# -- states -------------------------------------------------------------------------------

FINISHED_STATES = frozenset(
    {
        "boot_fail",
        "cancelled",
        "completed",
        "deadline",
        "failed",
        "node_fail",
        "out_of_memory",
        "preempted",
        "timeout",
    }
)
"""Terminal job states: the job's outcome (a requeued job shows `requeued`/`pending`)."""

STARTED_STATES = frozenset(
    {
        "running",
        "suspended",
        "completing",
        "configuring",
        "signaling",
        "stage_out",
        "stopped",
        "resizing",
    }
)
"""Non-terminal states of a job that has been allocated resources (it has started)."""

JOB_STATES = frozenset(
    FINISHED_STATES
    | STARTED_STATES
    | {
        "pending",
        "requeued",
        "requeue_fed",
        "requeue_hold",
        "resv_del_hold",
        "revoked",
        "special_exit",
        "update_db",
        "power_up_node",
    }
)

NODE_STATES = (
    "allocated",
    "completing",
    "down",
    "drain",
    "draining",
    "fail",
    "future",
    "idle",
    "maint",
    "mixed",
    "planned",
    "powered_down",
    "powering_down",
    "powering_up",
    "reboot",
    "reserved",
    "unknown",
)
"""Every value `node_state()` returns (a bounded label set)."""

_NODE_BASES = frozenset({"allocated", "completing", "down", "future", "idle", "mixed", "unknown"})
_NODE_SUFFIXES = "*~#!%$@^-"
_BUSY = frozenset({"allocated", "mixed", "completing"})
_NODE_ALIASES = {"alloc": "allocated", "mix": "mixed", "comp": "completing", "futr": "future"}


def job_state(raw: str) -> str:
    """`COMPLETED`, `CANCELLED by 0`, `NODE_FAIL` → `completed`, `cancelled`, `node_fail`;
    anything else Slurm does not define → `unknown` (labels stay bounded)."""
    state = raw.strip().split(" ", 1)[0].lower()
    return state if state in JOB_STATES else "unknown"


def node_state(raw: str) -> str:
    """One bounded label for a node from Slurm's complete state (`IDLE+DRAIN`, `down*`,
    `MIXED+DRAIN`, `idle+powered_down`). Precedence: down, fail, drain (idle → `drain`,
    busy → `draining`), maint, reboot, power states, reserved, completing, then the base."""
    tokens = [t.strip().strip(_NODE_SUFFIXES) for t in raw.lower().split("+")]
    base = tokens[0] if tokens else ""
    flags = set(tokens[1:])
    if base in ("drained", "draining", "drng"):
        flags.add("drain")
        base = "allocated" if base != "drained" else "idle"
    if base == "down":
        return "down"
    if base in ("fail", "failing") or "fail" in flags:
        return "fail"
    if "drain" in flags:
        return "draining" if base in _BUSY or "completing" in flags else "drain"
    if "maint" in flags or base == "maint":
        return "maint"
    if flags & {"reboot_requested", "reboot_issued", "reboot"}:
        return "reboot"
    for power in ("powering_up", "powering_down", "powered_down"):
        if power in flags or base == power:
            return power
    if "power_down" in flags or base == "power_down":
        return "powered_down"
    if "reserved" in flags or base in ("reserved", "resv"):
        return "reserved"
    if "completing" in flags:
        return "completing"
    if "planned" in flags or base == "planned":
        return "planned"
    base = _NODE_ALIASES.get(base, base)
    return base if base in _NODE_BASES else "unknown"


# Reasons Slurm reports as a sentence (a job's state_desc) rather than as its enum name.
_REASON_DESCRIPTIONS = (
    ("Nodes required for job are DOWN", "ReqNodeNotAvail"),
    ("ReqNodeNotAvail", "ReqNodeNotAvail"),
    ("Job's QOS not permitted", "InvalidQOS"),
    ("Job's account not permitted", "InvalidAccount"),
    ("Partition time limit", "PartitionTimeLimit"),
)
_REASON_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


def pending_reason(raw: str) -> str:
    """A bounded reason label: Slurm's enum name (`Priority`, `Resources`, `JobHeldUser`,
    `ReqNodeNotAvail` from `ReqNodeNotAvail, UnavailableNodes:node[1-3]`), `none`, or `other`
    for free text."""
    text = raw.strip()
    if not text or text in ("(null)", "None", "none"):
        return "none"
    head = re.split(r"[,:(]", text, maxsplit=1)[0].strip()
    if _REASON_WORD.match(head):
        return head
    for prefix, name in _REASON_DESCRIPTIONS:
        if text.startswith(prefix):
            return name
    return "other"


# -- small value parsers ------------------------------------------------------------------

_NO_TIME = frozenset({"", "N/A", "NONE", "None", "Unknown", "unknown", "(null)", "0"})


def parse_time(text: str, tz: tzinfo | None = None) -> int:
    """Unix seconds from `1795597537` (SLURM_TIME_FORMAT=%s) or `2026-11-25T09:05:37`
    (local time, or `tz`); 0 for `N/A`, `Unknown`, `NONE` or anything unparseable."""
    text = text.strip()
    if text in _NO_TIME:
        return 0
    if text.isdigit():
        value = int(text)
        return value if value < 1 << 40 else 0
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return 0
    try:
        if tz is not None:
            return int(moment.replace(tzinfo=tz).timestamp())
        return int(time.mktime(moment.timetuple()))
    except (OverflowError, ValueError, OSError):
        return 0


def parse_int(text: str, default: int = 0) -> int:
    text = text.strip()
    return int(text) if text.isdigit() and len(text) < 20 else default


_MEM_UNITS = {"": MIB, "K": 1024, "M": MIB, "G": MIB * 1024, "T": MIB * MIB, "P": MIB * MIB * 1024}
_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)B?$")


def parse_memory(text: str) -> int:
    """Slurm memory (`100M`, `1.50G`, `2048` = MiB) → bytes; 0 when unparseable."""
    m = _MEM.match(text.strip().upper())
    if m is None:
        return 0
    try:
        return int(float(m.group(1)) * _MEM_UNITS[m.group(2)])
    except (OverflowError, ValueError):
        return 0


def gpu_count(counts: Mapping[str, int]) -> int:
    """GPUs from GRES names → counts (`gpu`, `gpu:a100`). The untyped `gpu` entry is the
    total when present (TRES strings list `gres/gpu=2,gres/gpu:a100=2` for 2 GPUs);
    otherwise the typed entries add up."""
    if "gpu" in counts:
        return max(0, counts["gpu"])
    return sum(max(0, n) for name, n in counts.items() if name.startswith("gpu:"))


@dataclass(frozen=True, slots=True)
class Tres:
    cpus: int = 0
    memory_bytes: int = 0
    gpus: int = 0


_TRES_CACHE: dict[str, Tres] = {}


def parse_tres(text: str) -> Tres:
    """`cpu=4,mem=16G,node=1,billing=4,gres/gpu=2,gres/gpu:a100=2` → Tres(4, 16 GiB, 2)."""
    cached = _TRES_CACHE.get(text)
    if cached is not None:
        return cached
    cpus = memory = 0
    gres: dict[str, int] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            continue
        if key == "cpu":
            cpus = parse_int(value)
        elif key == "mem":
            memory = parse_memory(value)
        elif key.startswith("gres/"):
            gres[key[5:]] = parse_int(value)
    result = Tres(cpus, memory, gpu_count(gres))
    if len(_TRES_CACHE) < 4096:
        _TRES_CACHE[text] = result
    return result


def parse_gres(text: str) -> dict[str, int]:
    """A node's GRES (`gpu:a100:4(S:0-1)`, `gpu:2,gpu:v100:1(IDX:0)`, `(null)`) → counts by
    `name[:type]`. An entry without a count counts 1."""
    out: dict[str, int] = {}
    text = text.strip()
    if not text or text == "(null)":
        return out
    for item in re.split(r",(?![^(]*\))", text):
        item = item.split("(", 1)[0].strip()
        if item.startswith("gres:"):
            item = item[5:]
        if not item:
            continue
        parts = item.split(":")
        count = 1
        if len(parts) > 1 and parts[-1].isdigit():
            count = parse_int(parts.pop())
        name = ":".join(parts)
        out[name] = out.get(name, 0) + count
    return out


def parse_licenses_requested(items: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """A job's licenses (`matlab:2`, `ansys`, `fluent@db:4`) → ((name, count), …)."""
    out = []
    for item in items:
        item = item.strip()
        if not item or item == "(null)":
            continue
        name, sep, count = item.rpartition(":")
        if not sep or not count.isdigit():
            name, count = item, "1"
        out.append((name, parse_int(count, 1)))
    return tuple(out)


# -- array task specifications ------------------------------------------------------------

MAX_ARRAY_TASKS = 4_000_001
"""Sanity bound on the tasks one record may stand for (Slurm's MaxArraySize is ≤ 4000001)."""


def array_task_ids(spec: str) -> list[int]:
    """Task ids of a pending array's remainder: `0-999`, `1,3,5-9`, `0-20:2`, `0-999%10`
    (a throttle, ignored), `0x1F` (a hex bit mask). A truncated list (`…,512...`) yields the
    tasks it names. Raises ValueError on anything else."""
    spec = spec.strip().strip("[]")
    spec = spec.split("%", 1)[0]
    if spec.endswith("..."):
        spec = spec[:-3].rstrip(",")
    if not spec:
        raise ValueError("empty array task specification")
    if spec[:2].lower() == "0x":
        mask = int(spec[2:], 16)
        if mask.bit_length() > MAX_ARRAY_TASKS:
            raise ValueError("array task mask too large")
        return [i for i in range(mask.bit_length()) if mask >> i & 1]
    tasks: list[int] = []
    for part in spec.split(","):
        rng, _, step_text = part.partition(":")
        first, dash, last = rng.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"bad array task range {part!r}")
        step = int(step_text) if step_text else 1
        if step < 1 or (step_text and not step_text.isdigit()):
            raise ValueError(f"bad array step {part!r}")
        lo = int(first)
        hi = int(last) if dash else lo
        if hi < lo or (hi - lo) // step + 1 + len(tasks) > MAX_ARRAY_TASKS:
            raise ValueError(f"bad array task range {part!r}")
        tasks.extend(range(lo, hi + 1, step))
    return tasks


def array_task_count(spec: str) -> int:
    """How many tasks `spec` stands for (1 when it cannot be parsed)."""
    spec = spec.strip().strip("[]").split("%", 1)[0]
    if spec.isdigit():
        return 1
    try:
        return max(1, len(array_task_ids(spec)))
    except ValueError:
        return 1


def compress_ids(ids: Iterable[int]) -> str:
    """Sorted ids → `0-99,105,107-110` (for the state file)."""
    out: list[str] = []
    run_start = prev = None
    for i in sorted(set(ids)):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if run_start is not None:
            out.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
        run_start = prev = i
    if run_start is not None:
        out.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
    return ",".join(out)


# -- jobs ---------------------------------------------------------------------------------


class Job(NamedTuple):
    """One job record as slurmctld holds it (a pending array's remainder is one record).

    Times are Unix seconds, 0 when unknown. `array_tasks` is "" for a job that is not part of
    an array, the task id for an array task with its own record (`7`) and the remainder's
    specification for the pending rest of an array (`8-999%10`); `task_count` is how many
    tasks the record stands for.
    """

    job_id: int
    array_job_id: int
    array_tasks: str
    partition: str
    state: str
    reason: str
    eligible_time: int
    start_time: int
    end_time: int
    cpus: int
    memory_bytes: int
    gpus: int
    licenses: tuple[tuple[str, int], ...]
    nodes: str
    task_count: int = 1

    @property
    def is_array(self) -> bool:
        return self.array_tasks != ""

    @property
    def is_remainder(self) -> bool:
        """The pending rest of an array (several tasks, or one not yet split off)."""
        return self.is_array and not self.array_tasks.isdigit()

    @property
    def ran(self) -> bool:
        """Whether the job was allocated resources (a job cancelled while pending was not)."""
        return self.start_time > 0 and self.nodes not in ("", "(null)", "None assigned")

    @property
    def base_id(self) -> int:
        """The id a whole array shares (the job id for other jobs)."""
        return self.array_job_id if self.is_array else self.job_id

    def task_ids(self) -> list[int]:
        """Task ids this record stands for: [-1] for a job outside an array."""
        if not self.is_array:
            return [-1]
        if self.array_tasks.isdigit():
            return [int(self.array_tasks)]
        try:
            return array_task_ids(self.array_tasks)
        except ValueError:
            return []


def make_job(
    *,
    job_id: int,
    array_job_id: int,
    array_tasks: str,
    partition: str,
    state: str,
    reason: str,
    eligible_time: int,
    start_time: int,
    end_time: int,
    cpus: int,
    memory_bytes: int,
    gpus: int,
    licenses: tuple[tuple[str, int], ...],
    nodes: str,
) -> Job:
    """A Job with normalised fields (shared by every source, so they agree)."""
    if nodes in ("(null)", "None assigned"):
        nodes = ""
    tasks = array_tasks.strip().split("%", 1)[0]  # a throttle (`%10`) is not a task
    if tasks in ("N/A", "(null)", "None"):
        tasks = ""
    count = array_task_count(tasks) if tasks and not tasks.isdigit() else 1
    if not tasks:
        array_job_id = job_id
    return Job(
        job_id=job_id,
        array_job_id=array_job_id,
        array_tasks=tasks,
        partition=partition.split(",", 1)[0].strip(),
        state=state,
        reason=reason,
        eligible_time=eligible_time,
        start_time=start_time,
        end_time=end_time,
        cpus=cpus,
        memory_bytes=memory_bytes,
        gpus=gpus,
        licenses=licenses,
        nodes=nodes,
        task_count=count,
    )


@dataclass
class ParsedJobs:
    jobs: list[Job] = field(default_factory=list)
    bad_lines: int = 0
    first_bad: str = ""


_N_SQUEUE = len(SQUEUE_FIELDS)


_STATES: dict[str, str] = {}
_NO_NODES = frozenset({"", "(null)", "None assigned"})


def _other_time(text: str) -> int:
    """A time that is not Unix seconds: mostly N/A, NONE, Unknown."""
    return 0 if text in _NO_TIME else parse_time(text)


def _squeue_line(line: str) -> Job | None:
    """One line of SQUEUE_FORMAT (the hot loop: 100,000 lines per cycle on a large cluster)."""
    if line.endswith(SEP):
        line = line[:-1]
    f = line.split(SEP, _N_SQUEUE - 1)
    if len(f) != _N_SQUEUE:
        return None
    (
        job_id,
        array_job_id,
        tasks,
        partition,
        raw_state,
        eligible,
        start,
        end,
        cpus,
        tres,
        licenses,
        nodes,
        reason,
    ) = f
    if not job_id.isdigit() or len(job_id) > 12:
        return None
    jid = int(job_id)
    count = 1
    if tasks == "N/A" or not tasks:
        tasks = ""
        ajid = jid
    else:
        tasks = tasks.split("%", 1)[0]
        if not tasks.isdigit():
            count = array_task_count(tasks)
        ajid = int(array_job_id) if array_job_id.isdigit() and len(array_job_id) < 13 else jid
    state = _STATES.get(raw_state)
    if state is None:
        state = job_state(raw_state)
        if len(_STATES) < 256:
            _STATES[raw_state] = state
    if "," in partition:
        partition = partition.split(",", 1)[0]
    resources = _TRES_CACHE.get(tres) or parse_tres(tres)
    return Job(
        jid,
        ajid,
        tasks,
        partition.strip(),
        state,
        reason,
        int(eligible) if eligible.isdigit() and len(eligible) < 13 else _other_time(eligible),
        int(start) if start.isdigit() and len(start) < 13 else _other_time(start),
        int(end) if end.isdigit() and len(end) < 13 else _other_time(end),
        int(cpus) if cpus.isdigit() and len(cpus) < 12 else 0,
        resources.memory_bytes,
        resources.gpus,
        () if licenses == "(null)" else parse_licenses_requested(licenses.split(",")),
        "" if nodes in _NO_NODES else nodes.strip(),
        count,
    )


def parse_squeue(text: str) -> ParsedJobs:
    """`squeue --noheader -O SQUEUE_FORMAT` output (SLURM_TIME_FORMAT=%s) → jobs."""
    out = ParsedJobs()
    jobs = out.jobs
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            job = _squeue_line(line)
        except (ValueError, OverflowError):
            job = None
        if job is None:
            if not out.bad_lines:
                out.first_bad = line[:200]
            out.bad_lines += 1
        else:
            jobs.append(job)
    return out


# -- jobcomp/filetxt ----------------------------------------------------------------------

# The line format of Slurm's jobcomp/filetxt plugin (JOB_FORMAT in jobcomp_filetxt.c). Name
# and WorkDir are user text and may hold spaces or `=`; the fields around them are rigid, so
# the line is read as: a prefix, the rigid middle (first match after Name=), WorkDir, and the
# rigid tail (from the last ` ReservationName=`). No pattern can backtrack over user text.
_JOBCOMP_HEAD = re.compile(r"JobId=(\d+) UserId=\S*?\(\d+\) GroupId=\S*?\(\d+\) Name=")
_JOBCOMP_MIDDLE = re.compile(
    r" JobState=([A-Z_]+)(?: by \d+)? Partition=(\S*) TimeLimit=\S+ StartTime=(\S+) "
    r"EndTime=(\S+) NodeList=(\S*) NodeCnt=\d+ ProcCnt=(\d+) WorkDir="
)
_JOBCOMP_TAIL = re.compile(
    r" ReservationName=\S* Tres=(\S*) Account=\S* QOS=\S* WcKey=\S* Cluster=\S* "
    r"SubmitTime=\S+ EligibleTime=(\S+)"
    r"(?: ArrayJobId=(\d+) ArrayTaskId=(\d+))?"
    r"(?: HetJobId=\d+ HetJobOffset=\d+)?"
    r" DerivedExitCode=\S+ ExitCode=\S+\s*"
)
MAX_JOBCOMP_LINE = 64 * 1024


def parse_jobcomp_line(line: str, tz: tzinfo | None = None) -> Job | None:
    """One jobcomp/filetxt line → a finished Job (times in local time, or `tz`); None when
    the line is not a job record."""
    if len(line) > MAX_JOBCOMP_LINE:
        return None
    head = _JOBCOMP_HEAD.match(line)
    if head is None:
        return None
    middle = _JOBCOMP_MIDDLE.search(line, head.end() - 1)
    tail_at = line.rfind(" ReservationName=")
    if middle is None or tail_at < middle.end():
        return None
    tail = _JOBCOMP_TAIL.fullmatch(line, tail_at)
    if tail is None:
        return None
    state, partition, start, end, nodes, cpus = middle.groups()
    tres, eligible, array_job_id, array_task_id = tail.groups()
    try:
        job_id = int(head.group(1))
        resources = parse_tres(tres)
        return make_job(
            job_id=job_id,
            array_job_id=int(array_job_id) if array_job_id else job_id,
            array_tasks=array_task_id or "",
            partition=partition,
            state=job_state(state),
            reason="",
            eligible_time=parse_time(eligible, tz),
            start_time=parse_time(start, tz),
            end_time=parse_time(end, tz),
            cpus=parse_int(cpus),
            memory_bytes=resources.memory_bytes,
            gpus=resources.gpus,
            licenses=(),
            nodes=nodes,
        )
    except (ValueError, OverflowError):
        return None


# -- nodes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """One node with every partition it belongs to."""

    name: str
    partitions: tuple[str, ...]
    state: str  # node_state() label
    raw_state: str
    cpus: int
    cpus_allocated: int
    memory_bytes: int
    memory_allocated_bytes: int
    gpus: int
    gpus_allocated: int
    reason: str


@dataclass
class ParsedNodes:
    nodes: list[Node] = field(default_factory=list)
    bad_lines: int = 0
    first_bad: str = ""


_N_SINFO = len(SINFO_FIELDS)


def parse_sinfo(text: str) -> ParsedNodes:
    """`sinfo --Node --noheader -O SINFO_FORMAT` (one line per node and partition) → nodes."""
    out = ParsedNodes()
    first: dict[str, list[str]] = {}  # node → the fields of its first line
    parts: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        raw = line[:-1] if line.endswith(SEP) else line
        f = raw.split(SEP, _N_SINFO - 1)
        if len(f) != _N_SINFO or not f[0].strip():
            if not out.bad_lines:
                out.first_bad = line[:200]
            out.bad_lines += 1
            continue
        name, partition = f[0].strip(), f[1].strip()
        if name not in first:
            first[name] = f
            parts[name] = []
        if partition and partition != "(null)" and partition not in parts[name]:
            parts[name].append(partition)
    for name, f in first.items():
        _, _, state, cpus_state, memory, alloc_mem, gres, gres_used, reason = f
        cpu = cpus_state.split("/")
        if len(cpu) != 4:
            cpu = ["0", "0", "0", "0"]
        reason = reason.strip()
        out.nodes.append(
            Node(
                name=name,
                partitions=tuple(parts[name]),
                state=node_state(state),
                raw_state=state.strip(),
                cpus=parse_int(cpu[3]),
                cpus_allocated=parse_int(cpu[0]),
                memory_bytes=parse_int(memory) * MIB,
                memory_allocated_bytes=parse_int(alloc_mem) * MIB,
                gpus=gpu_count(parse_gres(gres)),
                gpus_allocated=gpu_count(parse_gres(gres_used)),
                reason="" if reason in ("none", "(null)") else reason,
            )
        )
    return out


# -- licenses -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class License:
    name: str
    total: int
    used: int
    free: int


_KV = re.compile(r"(\w+)=(\S*)")


def parse_licenses(text: str) -> list[License]:
    """`scontrol show licenses --oneliner` → licenses (lines without a name are skipped)."""
    out = []
    for line in text.splitlines():
        fields = dict(_KV.findall(line))
        name = fields.get("LicenseName", "")
        if not name:
            continue
        total = parse_int(fields.get("Total", "0"))
        used = parse_int(fields.get("Used", "0"))
        free = parse_int(fields.get("Free", ""), max(0, total - used))
        out.append(License(name, total, used, free))
    return out


# -- sdiag --------------------------------------------------------------------------------


@dataclass
class SchedulerStats:
    """The slurmctld statistics `sdiag` shows (times in microseconds, as Slurm keeps them)."""

    server_thread_count: int = 0
    agent_queue_size: int = 0
    dbd_agent_queue_size: int = 0
    jobs_submitted: int = 0
    jobs_started: int = 0
    jobs_completed: int = 0
    jobs_canceled: int = 0
    jobs_failed: int = 0
    main_last_cycle_us: int = 0
    main_max_cycle_us: int = 0
    main_mean_cycle_us: int = 0
    main_total_cycles: int = 0
    main_last_queue_length: int = 0
    main_mean_depth: int = 0
    backfill_total_jobs: int = 0
    backfill_total_cycles: int = 0
    backfill_last_cycle_us: int = 0
    backfill_max_cycle_us: int = 0
    backfill_mean_cycle_us: int = 0
    backfill_last_depth: int = 0
    backfill_last_queue_length: int = 0
    rpc_count: dict[str, int] = field(default_factory=dict)
    rpc_time_us: dict[str, int] = field(default_factory=dict)


_SDIAG_TOP = {
    "Server thread count": "server_thread_count",
    "Agent queue size": "agent_queue_size",
    "DBD Agent queue size": "dbd_agent_queue_size",
    "Jobs submitted": "jobs_submitted",
    "Jobs started": "jobs_started",
    "Jobs completed": "jobs_completed",
    "Jobs canceled": "jobs_canceled",
    "Jobs failed": "jobs_failed",
}
_SDIAG_MAIN = {
    "Last cycle": "main_last_cycle_us",
    "Max cycle": "main_max_cycle_us",
    "Mean cycle": "main_mean_cycle_us",
    "Total cycles": "main_total_cycles",
    "Last queue length": "main_last_queue_length",
    "Mean depth cycle": "main_mean_depth",
}
_SDIAG_BACKFILL = {
    "Total backfilled jobs (since last slurm start)": "backfill_total_jobs",
    "Total cycles": "backfill_total_cycles",
    "Last cycle": "backfill_last_cycle_us",
    "Max cycle": "backfill_max_cycle_us",
    "Mean cycle": "backfill_mean_cycle_us",
    "Last depth cycle": "backfill_last_depth",
    "Last queue length": "backfill_last_queue_length",
}
_SDIAG_SECTIONS = {"top": _SDIAG_TOP, "main": _SDIAG_MAIN, "backfill": _SDIAG_BACKFILL}
_RPC = re.compile(
    r"^\s*([A-Z][A-Z0-9_]*)\s+\(\s*\d+\)\s+count:(\d+)\s+ave_time:\d+\s+total_time:(\d+)"
)


def parse_sdiag(text: str) -> SchedulerStats:
    """`sdiag` output → SchedulerStats (missing values stay 0)."""
    stats = SchedulerStats()
    section = "top"
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Main schedule statistics"):
            section = "main"
            continue
        if stripped.startswith("Backfilling stats"):
            section = "backfill"
            continue
        if stripped.startswith("Remote Procedure Call statistics by message type"):
            section = "rpc"
            continue
        if stripped.startswith(("Remote Procedure Call statistics by user", "Pending RPC")):
            section = "other"
            continue
        if section == "rpc":
            m = _RPC.match(line)
            if m:
                stats.rpc_count[m.group(1)] = parse_int(m.group(2))
                stats.rpc_time_us[m.group(1)] = parse_int(m.group(3))
            continue
        key, sep, value = stripped.partition(":")
        if not sep:
            continue
        table = _SDIAG_SECTIONS.get(section)
        if table is None:
            continue
        attr = table.get(key.strip())
        if attr is None:
            continue
        setattr(stats, attr, parse_int(value.split("(", 1)[0]))
    return stats
