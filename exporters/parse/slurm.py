"""Slurm command output and jobcomp/filetxt lines → the Slurm model (pure functions, no I/O).

The portable backend asks the Slurm commands for explicit, minimal formats (never a site's
`SQUEUE_FORMAT`), with `SLURM_TIME_FORMAT=%s` so times arrive as Unix seconds:

    squeue --all --noheader --states=all -O <SQUEUE_FORMAT>      → parse_squeue()
    sinfo  --all --noheader --Node -O <SINFO_FORMAT>             → parse_sinfo()
    sdiag                                                        → parse_sdiag()
    scontrol show licenses --oneliner                            → parse_licenses()
    scontrol show reservation --oneliner                         → parse_reservations()
    one line of a jobcomp/filetxt log                            → parse_jobcomp_line()

They return the values of `hpcobs.exporters.slurm.model` (`Job`, `Node`, `License`,
`SchedulerStats`), naming states and reasons with its normalisers, as the pyslurm backend
does from pyslurm's objects: the two backends cannot disagree on what a state means.

Free-text fields (a pending reason, a node's reason) come last in each format, so a `|` inside
them cannot shift the other columns. The squeue format ends with a tail of per-job columns
separated by the unit separator `\x1f` instead (`SQUEUE_TAIL_FIELDS`, among them the account
and the user name, which may hold a `|` too): a line is read from both ends. Every parser
returns what it could parse and the number of lines it could not; arbitrary input never
raises.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from hpcobs.exporters.slurm.model import (
    MIB,
    Job,
    License,
    Node,
    Reservation,
    SchedulerStats,
    array_task_count,
    exit_code_text,
    gpu_count,
    job_state,
    label_value,
    make_job,
    make_reservation,
    node_state,
    requested_licenses,
)

SEP = "|"
TAIL_SEP = "\x1f"

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
SQUEUE_TAIL_FIELDS = ("SubmitTime", "RestartCnt", "exit_code", "Account", "UserName")
"""After Reason, each followed by TAIL_SEP: the line's tail, read from its end."""
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


SQUEUE_FORMAT = (
    output_format(SQUEUE_FIELDS) + "," + ",".join(f"{n}:{TAIL_SEP}" for n in SQUEUE_TAIL_FIELDS)
)
SINFO_FORMAT = output_format(SINFO_FIELDS)

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


@dataclass(frozen=True, slots=True)
class Tres:
    """The resources a TRES string names (what a job record keeps of it)."""

    cpus: int = 0
    memory_bytes: int = 0
    gpus: int = 0


# Memo of parsed TRES strings: a cluster's jobs share a handful of distinct ones. Without it,
# parsing 100,000 squeue lines takes 1.85× the CPU time (+3.5 µs a line; bench/bench_slurm.py
# --offline, 2-core VM). Bounded, keyed by the text: it never serves another string's value.
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


@dataclass
class ParsedJobs:
    jobs: list[Job] = field(default_factory=list)
    bad_lines: int = 0
    first_bad: str = ""


_N_SQUEUE = len(SQUEUE_FIELDS)

# Memo of job_state() by the raw State column (a few dozen distinct values). Without it,
# 100,000 lines take 1.1× the CPU time (+0.5 µs a line; bench/bench_slurm.py --offline).
_STATES: dict[str, str] = {}
_NO_NODES = frozenset({"", "(null)", "None assigned"})


def _other_time(text: str) -> int:
    """A time that is not Unix seconds: mostly N/A, NONE, Unknown."""
    return 0 if text in _NO_TIME else parse_time(text)


_N_TAIL = len(SQUEUE_TAIL_FIELDS)
# Memos of label values (users, accounts) and exit codes by their raw text: a cluster has far
# fewer distinct ones than jobs. Without the label memo, 100,000 lines take 1.15× the CPU time
# (+0.6 µs a line; bench/bench_slurm.py --offline). Bounded, keyed by the text.
_LABELS: dict[str, str] = {}
_EXIT_CODES: dict[str, str] = {}


def _label(text: str) -> str:
    value = _LABELS.get(text)
    if value is None:
        value = label_value(text)
        if len(_LABELS) < 4096:
            _LABELS[text] = value
    return value


def _exit_code(text: str) -> str:
    """squeue's exit_code: the wait status up to 22.05 (`768`), `exit:signal` from 24.11 on."""
    value = _EXIT_CODES.get(text)
    if value is None:
        if text.isdigit() and len(text) < 12:
            value = exit_code_text(int(text))
        else:
            value = text if _EXIT.match(text) else ""
        if len(_EXIT_CODES) < 4096:
            _EXIT_CODES[text] = value
    return value


def _squeue_line(line: str) -> Job | None:
    """One line of SQUEUE_FORMAT (the hot loop: 100,000 lines per cycle on a large cluster).

    The fast path: `make_job`'s normalisation and the value parsers inlined for the shapes
    squeue prints (digits, `N/A`), the Job built positionally. The generic way (`make_job`
    and `parse_time`/`parse_int`) takes 1.6× the CPU time (+2.5 µs a line on 100,000 lines;
    bench/bench_slurm.py --offline); tests/unit/test_slurm_parse.py holds the two together.

    The tail (SQUEUE_TAIL_FIELDS) is split off from the end first (about 1 µs a line); a line
    without one (the format before it was added, as in the older captures) leaves those
    fields unknown."""
    submit = restarts = 0
    exit_code = account = user = ""
    if TAIL_SEP in line:
        parts = line.rsplit(TAIL_SEP, _N_TAIL)
        if len(parts) != _N_TAIL + 1 or parts[-1].strip():
            return None
        head, restarts_text, exit_text, account_text, user_text, _ = parts
        line, sep, submit_text = head.rpartition(SEP)
        if not sep:
            return None
        submit = int(submit_text) if submit_text.isdigit() and len(submit_text) < 13 else 0
        restarts = int(restarts_text) if restarts_text.isdigit() and len(restarts_text) < 6 else 0
        exit_code = _exit_code(exit_text)
        account = _label(account_text)
        user = _label(user_text)
    elif line.endswith(SEP):
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
        () if licenses == "(null)" else requested_licenses(licenses.split(",")),
        "" if nodes in _NO_NODES else nodes.strip(),
        count,
        submit,
        user,
        account,
        exit_code,
        restarts,
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
_JOBCOMP_HEAD = re.compile(r"JobId=(\d+) UserId=(.*?)\(\d+\) GroupId=\S*?\(\d+\) Name=")
_JOBCOMP_MIDDLE = re.compile(
    r" JobState=([A-Z_]+)(?: by \d+)? Partition=(\S*) TimeLimit=\S+ StartTime=(\S+) "
    r"EndTime=(\S+) NodeList=(\S*) NodeCnt=\d+ ProcCnt=(\d+) WorkDir="
)
_JOBCOMP_TAIL = re.compile(
    r" ReservationName=.*? Tres=(\S*) Account=(.*?) QOS=\S* WcKey=\S* Cluster=\S* "
    r"SubmitTime=(\S+) EligibleTime=(\S+)"
    r"(?: ArrayJobId=(\d+) ArrayTaskId=(\d+))?"
    r"(?: HetJobId=\d+ HetJobOffset=\d+)?"
    r" DerivedExitCode=\S+ ExitCode=(\d+:\d+|\S+)\s*"
)
_EXIT = re.compile(r"^\d{1,3}:\d{1,3}$")
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
    tres, account, submit, eligible, array_job_id, array_task_id, exit_code = tail.groups()
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
            submit_time=parse_time(submit, tz),
            user=head.group(2),
            account=account,
            exit_code=exit_code if _EXIT.match(exit_code) else "",
        )
    except (ValueError, OverflowError):
        return None


# -- nodes --------------------------------------------------------------------------------


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


# -- reservations -------------------------------------------------------------------------


@dataclass
class ParsedReservations:
    reservations: list[Reservation] = field(default_factory=list)
    bad_lines: int = 0
    first_bad: str = ""


# A reservation's name is free text (spaces, `=`, quotes): it is what lies between
# `ReservationName=` and the last rigid `StartTime=… EndTime=… Duration=… Nodes=… NodeCnt=`
# block of the line; the rest are single words.
_RESERVATION = re.compile(
    r"^ReservationName=(.*) StartTime=(\S+) EndTime=(\S+) Duration=\S+ Nodes=(\S*) NodeCnt="
)
_RESERVATION_WORDS = re.compile(r" (PartitionName|Flags)=(\S*)")
NO_RESERVATIONS = "No reservations in the system"


def parse_reservations(text: str, tz: tzinfo | None = None) -> ParsedReservations:
    """`scontrol show reservation --oneliner` (SLURM_TIME_FORMAT=%s, or local times / `tz`)
    → reservations. "No reservations in the system" is none."""
    out = ParsedReservations()
    for line in text.splitlines():
        if not line.strip() or line.strip() == NO_RESERVATIONS:
            continue
        m = _RESERVATION.match(line)
        start = end = 0
        if m is not None:
            start, end = parse_time(m.group(2), tz), parse_time(m.group(3), tz)
        if m is None or not start or not end:
            if not out.bad_lines:
                out.first_bad = line[:200]
            out.bad_lines += 1
            continue
        words = dict(_RESERVATION_WORDS.findall(line, m.end()))
        flags = words.get("Flags", "")
        out.reservations.append(
            make_reservation(
                name=m.group(1),
                start_time=start,
                end_time=end,
                nodes=m.group(4),
                partition=words.get("PartitionName", ""),
                flags=() if flags in ("", "(null)") else flags.split(","),
            )
        )
    return out


# -- sdiag --------------------------------------------------------------------------------


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
