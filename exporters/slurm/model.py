"""The Slurm domain model: what both backends report, and the normalisers they share.

A job (`Job`, made by `make_job`), a node (`Node`), a license (`License`) and slurmctld's
statistics (`SchedulerStats`) are plain values. The portable backend gets them from the text
parsers in `hpcobs.exporters.parse.slurm`, the pyslurm backend from pyslurm's objects; both
name states and reasons with the normalisers here (`job_state`, `node_state`,
`pending_reason`, `gpu_count`, `requested_licenses`), so the two can never disagree on what
a state or a reason means, and every label value stays in a bounded set.

A job record may stand for many tasks of an array: `array_task_ids` reads Slurm's task
specification (`0-999%10`, `1,3,5-9`, `0x1F`), `compress_ids` writes one (for the state file).

Text that ends up in a label value (user, account, reservation and node names) goes through
`label_value`: one printable line, at most `MAX_LABEL_CHARS` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

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


FAILED_INFO_STATES = frozenset({"failed", "node_fail", "timeout", "out_of_memory", "boot_fail"})
"""Final states of the jobs `hpcobs_slurm_job_failed_info` lists (a failure, not a choice)."""


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
    if flags & {"maint", "maintenance"} or base in ("maint", "maintenance"):
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


# -- label values -------------------------------------------------------------------------

MAX_LABEL_CHARS = 128
"""Longest label value made from Slurm's free text (user, account, reservation, node list);
longer text is cut to this length, its last three characters replaced by `...`."""
CUT_MARK = "..."
_NULLS = frozenset({"", "(null)", "None", "N/A"})


def label_value(raw: str, limit: int = MAX_LABEL_CHARS, empty: str = "") -> str:
    """`raw` as a safe label value: surrounding blanks removed, every character that is not
    printable (control characters, line and paragraph separators, lone surrogates, which
    could not be written as UTF-8) replaced by `?`, cut to `limit` characters (ending in
    `...`); `empty` for nothing or Slurm's `(null)`. Quotes, backslashes and other printable
    Unicode stay: the exposition escapes them."""
    text = raw.strip()
    if text in _NULLS:
        return empty
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > limit:
        text = text[: max(0, limit - len(CUT_MARK))] + CUT_MARK
    return text


def exit_code_text(status: int) -> str:
    """A wait status as Slurm writes an exit code, `exit:signal` (`768` → `3:0`, `9` → `0:9`)."""
    if status < 0 or status > 0xFFFF:
        return ""
    signal = status & 0x7F
    return f"0:{signal}" if signal else f"{status >> 8}:0"


# -- resources ----------------------------------------------------------------------------


def gpu_count(counts: Mapping[str, int]) -> int:
    """GPUs from GRES names → counts (`gpu`, `gpu:a100`). The untyped `gpu` entry is the
    total when present (TRES strings list `gres/gpu=2,gres/gpu:a100=2` for 2 GPUs);
    otherwise the typed entries add up."""
    if "gpu" in counts:
        return max(0, counts["gpu"])
    return sum(max(0, n) for name, n in counts.items() if name.startswith("gpu:"))


def requested_licenses(items: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """A job's licenses (`matlab:2`, `ansys`, `fluent@db:4`) → ((name, count), …)."""
    out = []
    for item in items:
        item = item.strip()
        if not item or item == "(null)":
            continue
        name, sep, count = item.rpartition(":")
        if not sep or not count.isdigit():
            name, count = item, "1"
        out.append((name, int(count) if count.isdigit() and len(count) < 20 else 1))
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
    tasks the record stands for. `submit_time` is reset by Slurm when the job is requeued;
    `restarts` counts the requeues; `exit_code` is `exit:signal` (`3:0`), "" when unknown;
    `user` and `account` are label values (`label_value`), "" when unknown.
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
    submit_time: int = 0
    user: str = ""
    account: str = ""
    exit_code: str = ""
    restarts: int = 0

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
    submit_time: int = 0,
    user: str = "",
    account: str = "",
    exit_code: str = "",
    restarts: int = 0,
) -> Job:
    """A Job with normalised fields (shared by every source, so they agree; the squeue
    parser's hot loop inlines the same rules, and a test holds the two together)."""
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
        submit_time=submit_time,
        user=label_value(user),
        account=label_value(account),
        exit_code=exit_code,
        restarts=max(0, restarts),
    )


# -- nodes, licenses, scheduler statistics --------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class License:
    name: str
    total: int
    used: int
    free: int


# -- reservations ---------------------------------------------------------------------------

# pyslurm's names of reservation flags → the names scontrol prints (and Slurm reads).
_FLAG_ALIASES = {
    "MAINTENANCE": "MAINT",
    "IGNORE_RUNNING_JOBS": "IGNORE_JOBS",
    "STATIC_NODES": "STATIC",
    "PARTITION_NODES_ONLY": "PART_NODES",
    "USER_DELETION": "USER_DELETE",
    "PURGE": "PURGE_COMP",
    "SPECIFIC_NODES": "SPEC_NODES",
    "NO_JOB_HOLD_AFTER_END": "NO_HOLD_JOBS_AFTER_END",
}
_FLAG = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")


def reservation_flags(names: Iterable[str]) -> tuple[str, ...]:
    """Reservation flags as scontrol names them, sorted, each once (`maint`, `MAINTENANCE`
    (pyslurm) → `MAINT`; `PURGE_COMP=00:05:00` → `PURGE_COMP`); anything that is not a flag
    word is left out, so the `flags` label stays within Slurm's vocabulary."""
    out = set()
    for name in names:
        word = name.strip().split("=", 1)[0].upper()
        word = _FLAG_ALIASES.get(word, word)
        if _FLAG.match(word):
            out.add(word)
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class Reservation:
    """A current or future reservation. `name` is a label value (`label_value`), `nodes`
    Slurm's compressed host list (`node[01-04],gpu7`; "" for none), `partition` "" for none,
    `flags` as `reservation_flags` gives them; times are Unix seconds."""

    name: str
    start_time: int
    end_time: int
    nodes: str
    partition: str
    flags: tuple[str, ...]

    @property
    def maintenance(self) -> bool:
        return "MAINT" in self.flags

    def active(self, now: float) -> bool:
        return self.start_time <= now < self.end_time


def make_reservation(
    *, name: str, start_time: int, end_time: int, nodes: str, partition: str, flags: Iterable[str]
) -> Reservation:
    """A Reservation with normalised fields (both backends build them here)."""
    nodes = nodes.strip()
    return Reservation(
        name=label_value(name),
        start_time=max(0, start_time),
        end_time=max(0, end_time),
        nodes="" if nodes in _NULLS else nodes,
        partition=label_value(partition),
        flags=reservation_flags(flags),
    )


MAX_HOSTS = 1_000_000
"""Sanity bound on the host names one host list may expand to."""


def _split_top(text: str) -> list[str]:
    """`a[1-2],b,c[3,5]` → [`a[1-2]`, `b`, `c[3,5]`] (commas inside brackets stay)."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [item for item in (o.strip() for o in out) if item]


def _ranges(spec: str) -> list[str]:
    """`01-03,7` → [`01`, `02`, `03`, `7`] (a lower bound's zero padding is kept)."""
    out: list[str] = []
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"bad host range {part!r}")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first or last - first + 1 + len(out) > MAX_HOSTS:
            raise ValueError(f"bad host range {part!r}")
        width = len(lo) if lo.startswith("0") else 0
        out.extend(str(n).zfill(width) for n in range(first, last + 1))
    return out


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list → host names: `node[01-03,7],gpu1` → node01, node02,
    node03, node7, gpu1; several bracket groups multiply (`r[1-2]n[1-2]`). Raises ValueError
    on anything else, or beyond MAX_HOSTS names."""
    hosts: list[str] = []
    for item in _split_top(text.strip()):
        names = [""]
        rest = item
        while rest:
            open_at = rest.find("[")
            if open_at < 0:
                if "]" in rest:
                    raise ValueError(f"unbalanced brackets in {item!r}")
                names = [n + rest for n in names]
                break
            close_at = rest.find("]", open_at)
            if close_at < 0 or "]" in rest[:open_at]:
                raise ValueError(f"unbalanced brackets in {item!r}")
            prefix, spec, rest = rest[:open_at], rest[open_at + 1 : close_at], rest[close_at + 1 :]
            values = _ranges(spec)
            if len(names) * len(values) + len(hosts) > MAX_HOSTS:
                raise ValueError("host list too long")
            names = [n + prefix + v for n in names for v in values]
        hosts.extend(names)
        if len(hosts) > MAX_HOSTS:
            raise ValueError("host list too long")
    return hosts


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
