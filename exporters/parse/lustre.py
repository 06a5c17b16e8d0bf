"""Lustre's procfs / sysfs / debugfs text formats → dataclasses (pure, no I/O).

Formats (the same text in every release; only the directory a file lives in moves, see
docs/lustre.md):

- stats files (`llite/<fs>-<sb>/stats`, `obdfilter/<ost>/stats`, `mdt/<mdt>/md_stats`,
  `osc/<dev>/stats`, ...): one counter per line,
  `name  <count> samples [<unit>] [<min> <max> <sum> [<sumsq>]]`, plus `snapshot_time`,
  `start_time`, `elapsed_time` lines (`<secs>.<nsecs> secs.nsecs`). Counters with no samples
  are left out by the kernel; a name can repeat (obdfilter prints `statfs` twice): repeated
  counters are added up.
- single values (`kbytestotal`, `filesfree`, `max_rpcs_in_flight`, `num_exports`, ...).
- `key: value` files (`max_cached_mb`, `recovery_status`, `state`).
- `import`: a YAML block mapping (`import:` → `state: FULL`, `rpcs:` → `inflight: 8`, ...).
- `health_check`: `healthy`, or anything else (`NOT HEALTHY`, `LBUG`, device lines).
- `brw_stats`: tables of log2 histograms, one section per quantity, read and write columns:
  ```
                             read      |     write
  pages per bulk r/w     rpcs  % cum % |  rpcs        % cum %
  1:                        13  56  56   |  153   0   0
  ```
- `job_stats`: YAML, one list item per job:
  ```
  job_stats:
  - job_id:          24
    snapshot_time:   1510782606
    read_bytes:      { samples: 0, unit: bytes, min: 0, max: 0, sum: 0 }
    write_bytes:     { samples: 64575, unit: bytes, min: 4096, max: 4194304, sum: 215147593728 }
    punch:           { samples: 1, unit:  reqs }
  ```
  parsed by a hand-written line parser (a YAML library is ~50x slower on a server with
  64 OSTs x 1000 jobs); `parse_job_io` adds a regex fast path for the read/write lines only.

Arbitrary input never raises: what parses is returned, and `problems` counts the lines that
did not, so the collector can report a bad file once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

# -- names ---------------------------------------------------------------------------------

_TARGET = re.compile(r"^(?P<fs>[A-Za-z0-9_.-]{1,64})-(?P<target>(?:OST|MDT)[0-9a-fA-F]{4,8})$")
_CLIENT_IMPORT = re.compile(
    r"^(?P<fs>[A-Za-z0-9_.-]{1,64})-(?P<target>(?:OST|MDT)[0-9a-fA-F]{4,8})"
    r"-(?P<kind>osc|mdc)-(?P<instance>[0-9a-fA-F]{1,32})$"
)
_EMBEDDED_TARGET = re.compile(r"-(?:OST|MDT)[0-9a-fA-F]{4}")
_LLITE = re.compile(r"^(?P<fs>[A-Za-z0-9_.-]{1,64})-(?P<instance>[0-9a-fA-F]{1,32})$")


class TargetName(NamedTuple):
    fs: str
    target: str  # the target's name, as `lctl dl` and `lfs df` show it: "lustrefs-OST0000"
    short: str  # "OST0000", "MDT0001"


class ClientImportName(NamedTuple):
    fs: str
    target: str  # the OST/MDT this OSC/MDC talks to: "lustrefs-OST0000"
    kind: str  # "osc" or "mdc"
    instance: str  # the client mount (superblock) it belongs to


class MountName(NamedTuple):
    fs: str
    instance: str


def parse_target_name(name: str) -> TargetName | None:
    """`lustrefs-OST0000` → (`lustrefs`, `lustrefs-OST0000`, `OST0000`); None for MGS, OSPs
    and anything else."""
    m = _TARGET.match(name)
    if m is None or _EMBEDDED_TARGET.search(m["fs"]):  # `fs-OST0000-osc-MDT0000`: an OSP
        return None
    return TargetName(m["fs"], name, m["target"])


def parse_client_import_name(name: str) -> ClientImportName | None:
    """`lustrefs-OST0000-osc-ffff88105db50000` → fs, target, kind, client instance.

    Server-side connections (`lustrefs-OST0000-osc-MDT0000`, an OSP on an MDS) are not client
    imports and give None.
    """
    m = _CLIENT_IMPORT.match(name)
    if m is None:
        return None
    return ClientImportName(m["fs"], f"{m['fs']}-{m['target']}", m["kind"], m["instance"].lower())


def parse_mount_name(name: str) -> MountName | None:
    """An llite directory, `lustrefs-ffff88105db50000` → (`lustrefs`, instance)."""
    m = _LLITE.match(name)
    return MountName(m["fs"], m["instance"].lower()) if m else None


# -- stats files ---------------------------------------------------------------------------


class Stat(NamedTuple):
    """One counter: how many samples, in which unit, and min/max/sum(/sumsq) when kept."""

    samples: int
    unit: str = ""
    min: int | None = None
    max: int | None = None
    sum: int | None = None
    sumsq: int | None = None

    def merged(self, other: Stat) -> Stat:
        """Two counters of the same name in one file (obdfilter's `statfs`): added up."""

        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        lo = [v for v in (self.min, other.min) if v is not None]
        hi = [v for v in (self.max, other.max) if v is not None]
        return Stat(
            self.samples + other.samples,
            self.unit or other.unit,
            min(lo) if lo else None,
            max(hi) if hi else None,
            add(self.sum, other.sum),
            add(self.sumsq, other.sumsq),
        )


@dataclass(frozen=True)
class StatsFile:
    stats: dict[str, Stat]
    snapshot_time: float | None = None
    problems: int = 0


_STAT_LINE = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,63})[ \t]+(?P<samples>\d{1,20})[ \t]+samples"
    r"[ \t]+\[(?P<unit>[^\]\s]{0,16})\]"
    r"(?:[ \t]+(?P<min>\d{1,20})[ \t]+(?P<max>\d{1,20})[ \t]+(?P<sum>\d{1,20})"
    r"(?:[ \t]+(?P<sumsq>\d{1,40}))?)?[ \t]*$",
    re.ASCII,
)
_TIME_LINE = re.compile(
    r"^(?P<name>[a-z_]{1,32}_time):?[ \t]+(?P<value>\d{1,20}(?:\.\d{1,12})?)"
    r"(?:[ \t]+(?:secs\.[nu]secs|\(secs\.[nu]secs\)))?[ \t]*$",
    re.ASCII,
)


def _opt_int(text: str | None) -> int | None:
    return None if text is None else int(text)


def parse_stats(text: str) -> StatsFile:
    """A Lustre stats file: `name N samples [unit] min max sum [sumsq]` lines."""
    stats: dict[str, Stat] = {}
    snapshot: float | None = None
    problems = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _STAT_LINE.match(line)
        if m is not None:
            stat = Stat(
                int(m["samples"]),
                m["unit"],
                _opt_int(m["min"]),
                _opt_int(m["max"]),
                _opt_int(m["sum"]),
                _opt_int(m["sumsq"]),
            )
            name = m["name"]
            previous = stats.get(name)
            stats[name] = stat if previous is None else previous.merged(stat)
            continue
        t = _TIME_LINE.match(line)
        if t is not None:
            if t["name"] == "snapshot_time":
                snapshot = float(t["value"])
            continue
        problems += 1
    return StatsFile(stats, snapshot, problems)


# -- single values and key: value files ------------------------------------------------------

_INT = re.compile(r"^-?\d{1,20}$", re.ASCII)


def parse_int(text: str) -> int | None:
    """A file holding one integer (`kbytestotal`, `max_rpcs_in_flight`); None otherwise."""
    value = text.strip()
    return int(value) if _INT.match(value) else None


def parse_key_values(text: str) -> dict[str, str]:
    """`key: value` lines (`max_cached_mb`, `recovery_status`, `state`); others are skipped.

    The first occurrence of a key wins (later lines of `state` hold its history).
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key or key.startswith("-") or " " in key:
            continue
        out.setdefault(key, value.strip())
    return out


@dataclass(frozen=True)
class CacheInfo:
    """`llite.*.max_cached_mb`: the client page cache limit and what it holds (MiB)."""

    max_mb: int | None
    used_mb: int | None
    unused_mb: int | None


def parse_max_cached_mb(text: str) -> CacheInfo:
    """`users: 9 / max_cached_mb: 32064 / used_mb: 5116 / unused_mb: 26948 / reclaim_count: 0`.

    Older releases print only the limit as a single number.
    """
    single = parse_int(text)
    if single is not None:
        return CacheInfo(single, None, None)
    kv = parse_key_values(text)
    return CacheInfo(
        parse_int(kv.get("max_cached_mb", "")),
        parse_int(kv.get("used_mb", "")),
        parse_int(kv.get("unused_mb", "")),
    )


@dataclass(frozen=True)
class RecoveryStatus:
    status: str  # lower case: "complete", "recovering", "inactive", "waiting", ...
    completed_clients: int | None = None
    total_clients: int | None = None


_STATUS_WORD = re.compile(r"^[A-Za-z_]{1,32}$", re.ASCII)


def parse_recovery_status(text: str) -> RecoveryStatus | None:
    """`recovery_status` of an OST/MDT; None when it has no well-formed `status:` line."""
    kv = parse_key_values(text)
    status = kv.get("status", "").split()
    if len(status) != 1 or not _STATUS_WORD.match(status[0]):
        return None
    done: int | None = None
    total: int | None = None
    clients = kv.get("completed_clients", "")
    a, sep, b = clients.partition("/")
    if sep:
        done, total = parse_int(a), parse_int(b)
    return RecoveryStatus(status[0].lower(), done, total)


def parse_health_check(text: str) -> bool:
    """`health_check` → True only for exactly `healthy` (`NOT HEALTHY`, `LBUG`: False)."""
    return text.strip() == "healthy"


# -- import files ----------------------------------------------------------------------------

_BLOCK_KEY = re.compile(
    r"^(?P<indent> *)(?P<key>[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}):(?:[ \t]+(?P<value>.*?))?[ \t]*$",
    re.ASCII,
)


def parse_block_mapping(text: str) -> dict[str, object]:
    """The subset of YAML that `import` files use: nested `key: value` block mappings.

    Scalars are returned as stripped strings (flow sequences `[ a, b ]` verbatim); a key
    without a value is "" unless more indented keys follow, which make it a nested mapping.
    A repeated key keeps the last value (as YAML loaders do). Lines that are not
    `key: value` (list items, garbage) and keys at an indentation that matches no open
    mapping are skipped.
    """
    root: dict[str, object] = {}
    stack: list[tuple[int, dict[str, object]]] = []  # open mappings and their key indentation
    pending: tuple[int, str, dict[str, object]] | None = None  # a key that may open a mapping
    for line in text.splitlines():
        m = _BLOCK_KEY.match(line)
        if m is None:
            continue
        indent, key, value = len(m["indent"]), m["key"], m["value"] or ""
        if pending is not None:
            parent_indent, parent_key, parent = pending
            pending = None
            if indent > parent_indent:
                child: dict[str, object] = {}
                parent[parent_key] = child
                stack.append((indent, child))
        if not stack:
            stack.append((indent, root))
        while len(stack) > 1 and indent < stack[-1][0]:
            stack.pop()
        if indent != stack[-1][0]:
            continue
        mapping = stack[-1][1]
        mapping[key] = value
        if not value:
            pending = (indent, key, mapping)
    return root


@dataclass(frozen=True)
class ImportInfo:
    """A client's connection (import) to one target, from `osc.*.import` / `mdc.*.import`."""

    state: str  # upper case as Lustre prints it: FULL, DISCONN, CONNECTING, IDLE, EVICTED, ...
    target: str | None = None  # "lustrefs-OST0000_UUID"
    rpcs_in_flight: int | None = None
    rpc_timeouts: int | None = None
    avg_wait_usec: int | None = None
    connection_attempts: int | None = None
    current_connection: str | None = None


_STATE_WORD = re.compile(r"^[A-Z][A-Z_]{0,31}$", re.ASCII)


def _leading_int(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    first = text.split(maxsplit=1)
    return parse_int(first[0]) if first else None


def _sub(mapping: dict[str, object], key: str) -> dict[str, object]:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def parse_import(text: str) -> ImportInfo | None:
    """An `import` file; None when it holds no recognisable `state:`."""
    doc = parse_block_mapping(text)
    imp = _sub(doc, "import") or doc
    state = imp.get("state")
    if not isinstance(state, str) or not _STATE_WORD.match(state.strip()):
        return None
    rpcs = _sub(imp, "rpcs")
    conn = _sub(imp, "connection")
    target = imp.get("target")
    current = conn.get("current_connection")
    return ImportInfo(
        state=state.strip(),
        target=target if isinstance(target, str) else None,
        rpcs_in_flight=_leading_int(rpcs.get("inflight")),
        rpc_timeouts=_leading_int(rpcs.get("timeouts")),
        avg_wait_usec=_leading_int(rpcs.get("avg_waittime")),
        connection_attempts=_leading_int(conn.get("connection_attempts")),
        current_connection=current if isinstance(current, str) else None,
    )


def parse_import_state_file(text: str) -> str | None:
    """The `state` file (`current_state: FULL` + history), a fallback for `import`."""
    state = parse_key_values(text).get("current_state", "").strip()
    return state if _STATE_WORD.match(state) else None


# -- brw_stats -------------------------------------------------------------------------------


class BrwRow(NamedTuple):
    bound: int  # the row label as a number: values up to this bound (log2 rows) or equal to it
    read: int
    write: int


@dataclass(frozen=True)
class BrwStats:
    """`brw_stats`: section title (`disk I/O size`, `I/O time (1/1000s)`, ...) → rows."""

    sections: dict[str, list[BrwRow]]
    snapshot_time: float | None = None
    problems: int = 0


_BRW_HEADER = re.compile(
    r"^(?P<title>\S.*?)[ \t]{2,}(?P<unit>[a-z]{1,16})[ \t]+%[ \t]+cum[ \t]+%[ \t]*\|"
    r"[ \t]*[a-z]{1,16}[ \t]+%[ \t]+cum[ \t]+%[ \t]*$",
    re.ASCII,
)
_BRW_ROW = re.compile(
    r"^(?P<bound>\d{1,20})(?P<scale>[KMG]?):[ \t]+(?P<read>\d{1,20})[ \t]+\d{1,3}[ \t]+\d{1,3}"
    r"[ \t]*\|[ \t]*(?P<write>\d{1,20})[ \t]+\d{1,3}[ \t]+\d{1,3}[ \t]*$",
    re.ASCII,
)
_BRW_COLUMNS = re.compile(r"^read[ \t]*\|[ \t]*write$", re.ASCII)
_SCALE = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_brw_stats(text: str) -> BrwStats:
    """`brw_stats` tables. Rows keep the order of the file (ascending bounds)."""
    sections: dict[str, list[BrwRow]] = {}
    current: list[BrwRow] | None = None
    snapshot: float | None = None
    problems = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            current = None
            continue
        row = _BRW_ROW.match(line)
        if row is not None:
            if current is None:
                problems += 1
                continue
            bound = int(row["bound"]) * _SCALE[row["scale"]]
            if current and current[-1].bound >= bound:
                problems += 1  # rows must ascend
                continue
            current.append(BrwRow(bound, int(row["read"]), int(row["write"])))
            continue
        header = _BRW_HEADER.match(line)
        if header is not None:
            current = sections.setdefault(header["title"], [])
            if current:  # a repeated title: keep the first table
                current = None
            continue
        if _BRW_COLUMNS.match(line):
            continue
        t = _TIME_LINE.match(line)
        if t is not None:
            if t["name"] == "snapshot_time":
                snapshot = float(t["value"])
            continue
        problems += 1
    return BrwStats({k: v for k, v in sections.items() if v}, snapshot, problems)


# -- job_stats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    job_id: str
    snapshot_time: float | None = None
    stats: dict[str, Stat] = field(default_factory=dict)


@dataclass(frozen=True)
class JobStatsFile:
    jobs: list[Job]
    problems: int = 0


_BLANK = " \t"  # YAML's white space (str.strip() would also take NBSP and friends)
_ITEM_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$", re.ASCII)
_YAML_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _double_quoted(body: str) -> str | None:
    """The content of a YAML double-quoted scalar (without the quotes); None if malformed."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == '"':
            return None  # an unescaped quote inside
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            return None
        e = body[i + 1]
        if e in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[e])
            i += 2
            continue
        width = _HEX_ESCAPES.get(e)
        digits = body[i + 2 : i + 2 + width] if width else ""
        if (
            not width
            or len(digits) != width
            or not all(d in "0123456789abcdefABCDEF" for d in digits)
        ):
            return None
        code = int(digits, 16)
        if code > 0x10FFFF:
            return None
        out.append(chr(code))
        i += 2 + width
    return "".join(out)


def parse_scalar(text: str) -> str | None:
    """A YAML scalar on one line: plain, 'single' or "double" quoted → its string value.

    Plain scalars lose a trailing ` #comment`. None for what YAML would not read as a
    single-line scalar (unterminated quotes, flow collections).
    """
    value = text.strip(_BLANK)
    if not value:
        return ""
    first = value[0]
    if first == '"':
        if len(value) < 2 or value[-1] != '"':
            return None
        return _double_quoted(value[1:-1])
    if first == "'":
        if len(value) < 2 or value[-1] != "'":
            return None
        body = value[1:-1]
        if "'" in body.replace("''", ""):
            return None
        return body.replace("''", "'")
    if first in "[{&*!|>%@`":
        return None
    cut = value.find(" #")
    if cut >= 0:
        value = value[:cut].rstrip(_BLANK)
    return value


def _flow_stat(text: str) -> Stat | None:
    """`{ samples: 64575, unit: bytes, min: 4096, max: 4194304, sum: 215147593728 }`."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    fields: dict[str, str] = {}
    for part in text[1:-1].split(","):
        key, sep, value = part.partition(":")
        if sep:  # parts of unexpected nested values (`[1, 2]`) are ignored
            fields.setdefault(key.strip(), value.strip())
    samples = parse_int(fields.get("samples", ""))
    if samples is None or samples < 0:
        return None
    numbers: list[int | None] = []
    for key in ("min", "max", "sum", "sumsq"):
        raw = fields.get(key)
        if raw is None:
            numbers.append(None)
            continue
        number = parse_int(raw)
        if number is None:
            return None
        numbers.append(number)
    return Stat(samples, fields.get("unit", ""), *numbers)


def _time_value(text: str) -> float | None:
    first = text.split(maxsplit=1)
    if not first:
        return None
    try:
        value = float(first[0])
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


_JOB_STAT_LINE = re.compile(
    r"[ \t]+([A-Za-z_][A-Za-z0-9_.\-]{0,63}):[ \t]+\{[ \t]*samples:[ \t]*(\d{1,20}),"
    r"[ \t]*unit:[ \t]*([A-Za-z]{1,16})(?:,[ \t]*min:[ \t]*(\d{1,20}),[ \t]*max:[ \t]*(\d{1,20}),"
    r"[ \t]*sum:[ \t]*(\d{1,20})(?:,[ \t]*sumsq:[ \t]*(\d{1,40}))?)?[ \t]*\}[ \t]*$",
    re.ASCII,
)


def parse_job_stats(text: str) -> JobStatsFile:
    """`obdfilter.*.job_stats` / `mdt.*.job_stats` → one `Job` per list item.

    Unknown keys are kept as stats when they look like counters (`{ samples: ... }`) and
    ignored otherwise (`start_time`, `elapsed_time`); lines that fit nothing count as
    problems. A truncated file gives the jobs (and counters) before the cut.
    """
    jobs: list[Job] = []
    problems = 0
    job_id: str | None = None
    snapshot: float | None = None
    stats: dict[str, Stat] = {}
    in_item = False

    def finish() -> None:
        nonlocal problems
        if not in_item:
            return
        if job_id is None:
            problems += 1
        else:
            jobs.append(Job(job_id, snapshot, stats))

    stat_line = _JOB_STAT_LINE.match
    for raw in text.splitlines():
        if in_item:
            m = stat_line(raw)
            if m is not None:  # the common line, in one regex
                key, samples, unit, lo, hi, total, sumsq = m.groups()
                stat = Stat(
                    int(samples),
                    unit,
                    None if lo is None else int(lo),
                    None if hi is None else int(hi),
                    None if total is None else int(total),
                    None if sumsq is None else int(sumsq),
                )
                previous = stats.get(key)
                stats[key] = stat if previous is None else previous.merged(stat)
                continue
        line = raw.rstrip(_BLANK + "\r")
        stripped = line.lstrip(_BLANK)
        if not stripped or stripped.startswith("#"):
            continue
        if line == "job_stats:" or line == "job_stats: []":
            continue
        if stripped.startswith("- ") or stripped == "-":
            finish()
            in_item, job_id, snapshot, stats = True, None, None, {}
            stripped = stripped[2:].lstrip(_BLANK)
            if not stripped:
                continue
        elif not in_item or line[:1] not in (" ", "\t"):
            problems += 1
            continue
        key, sep, value = stripped.partition(":")
        if not sep or not _ITEM_KEY.match(key) or (value and value[0] not in " \t"):
            problems += 1
            continue
        value = value.strip(_BLANK)
        if key == "job_id":
            parsed = parse_scalar(value)
            if not parsed or job_id is not None:  # no id, an empty one, or a second one
                problems += 1
            else:
                job_id = parsed
        elif key == "snapshot_time":
            snapshot = _time_value(value)
        elif value.startswith("{"):
            flow = _flow_stat(value)
            if flow is None:
                problems += 1
            elif key in stats:
                stats[key] = stats[key].merged(flow)
            else:
                stats[key] = flow
        # other scalar keys (start_time, elapsed_time, future additions) are not counters
    finish()
    return JobStatsFile(jobs, problems)


@dataclass(frozen=True)
class JobIOTable:
    """The read/write traffic of every job on one target, as columns (one entry per job).

    None where a job has no such line (an MDT without Data-on-MDT) or a unit other than
    bytes. Columns rather than one object per job: the fast path builds them in C.
    """

    job_ids: list[str]
    read_samples: list[int | None]
    read_bytes: list[int | None]
    write_samples: list[int | None]
    write_bytes: list[int | None]
    problems: int = 0

    def __len__(self) -> int:
        return len(self.job_ids)


# Possessive quantifiers (`*+`, `{1,20}+`): no backtracking state is kept, a third faster on
# 64,000 items, and the same matches (what follows each one cannot start with what it takes).
_N = (
    rb" *+\{ *+samples: *+(\d{1,20}+), *+unit: *+bytes, *+min: *+\d{1,20}+, *+max: *+\d{1,20}+,"
    rb" *+sum: *+(\d{1,20}+)"
)
_JOB_IO_FAST = re.compile(
    rb"\n- job_id:(?:"
    # the id: "double quoted" without escapes (newer releases quote ids) or plain (no YAML
    # indicator first)
    rb" ++(?:\"([^\"\\\n]*+)\"[ \t]*+|([^\s\"'\[\]{}&*!|>%@`#-][^\n]*+))"
    # snapshot_time, start_time, elapsed_time
    rb"(?:\n  [a-z_]{1,32}_time: [^\n]*+)*+"
    # read_bytes and write_bytes right after it, in bytes
    rb"\n  read_bytes:" + _N + rb"[^\n]*+\n  write_bytes:" + _N + rb""
    # or nothing: a job of another shape shows up as an empty match
    rb"|)",
    re.ASCII,
)


def _job_io_fast(data: bytes) -> JobIOTable | None:
    """The regex fast path of `parse_job_io`; None when a job is not in the common shape."""
    if not data.startswith(b"job_stats:\n") or b"#" in data:
        return None
    found = _JOB_IO_FAST.findall(data)
    if not found:
        return None
    quoted, plain, rs, rb, ws, wb = zip(*found, strict=True)
    if not all(rs):  # a `- job_id:` item the strict pattern did not match
        return None
    try:
        if any(quoted):
            job_ids = [(q or p.strip()).decode() for q, p in zip(quoted, plain, strict=True)]
        else:  # the usual case, in C
            job_ids = list(map(bytes.decode, map(bytes.strip, plain)))
    except UnicodeDecodeError:
        return None
    if not all(job_ids):
        return None
    return JobIOTable(
        job_ids, list(map(int, rs)), list(map(int, rb)), list(map(int, ws)), list(map(int, wb))
    )


def parse_job_io(data: bytes | str) -> JobIOTable:
    """Per-job read/write samples and bytes of a job_stats file (as read, or decoded).

    The fast path (one regex over the raw bytes, ~20x faster than the line parser) applies
    when every item is in the kernel's shape: `- job_id:` at the start of a line, an id that
    is plain or double-quoted without escapes, then `*_time` lines, `read_bytes` and
    `write_bytes` in bytes. It does not look at the other lines. Any other file (an MDT's
    job_stats without data lines, unexpected keys or units, truncation) goes through
    `parse_job_stats`, which gives the same jobs and numbers for files in the kernel's shape.
    """
    raw = data if isinstance(data, bytes) else data.encode("utf-8", errors="surrogatepass")
    fast = _job_io_fast(raw)
    if fast is not None:
        return fast
    text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
    return job_io_table(parse_job_stats(text))


def job_io_table(parsed: JobStatsFile) -> JobIOTable:
    """The read/write columns of a parsed job_stats file (a unit other than bytes is a
    problem, and the counter is left out)."""
    problems = parsed.problems
    columns: list[list[int | None]] = [[], [], [], []]
    for job in parsed.jobs:
        io: list[int | None] = []
        for key in ("read_bytes", "write_bytes"):
            stat = job.stats.get(key)
            if stat is not None and stat.unit != "bytes":
                problems += 1
                stat = None
            io += [None, None] if stat is None else [stat.samples, stat.sum]
        for column, value in zip(columns, io, strict=True):
            column.append(value)
    read_samples, read_bytes, write_samples, write_bytes = columns
    job_ids = [job.job_id for job in parsed.jobs]
    return JobIOTable(job_ids, read_samples, read_bytes, write_samples, write_bytes, problems)
