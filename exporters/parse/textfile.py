"""The Prometheus text exposition format 0.0.4, as node_exporter's textfile collector reads it.

Pure: `parse(text)` turns the contents of one `*.prom` file into metric families, or raises
`ParseError` naming the line and the reason. Nothing else escapes: the input comes from files
that any user with write access to the textfile directory can leave there.

What is accepted follows Go's `expfmt.TextParser` (what node_exporter uses), so a file that
node_exporter takes is taken here, and one that it rejects is rejected here:

- lines end with `\\n`, and so does the text: a last line without one is an incomplete file
  (one caught half-written, where the writer did not rename a complete file into place);
- `# HELP name text` (escapes `\\\\` and `\\n`), `# TYPE name counter|gauge|histogram|summary|
  untyped` (case-insensitive), at most one of each per family, the TYPE before the family's
  first sample; other `#` lines are comments;
- `name{label="value",…} value [timestamp]`, blanks and tabs between tokens, a trailing comma
  in the label set allowed; label values escape `\\\\`, `\\"` and `\\n` only; a label name at
  most once per sample, never `__name__`;
- a sample belongs to the family of its name; else, for `_sum`/`_count` (and `_bucket`), to a
  summary (histogram) declared under the base name; else it starts an untyped family;
- values are decimal floats, `NaN`, `+Inf`, `-Inf` (as Go's ParseFloat; hexadecimal ones are
  not taken); timestamps are integers (milliseconds).

Stricter than expfmt, where expfmt would silently drop or mangle data: a histogram's samples
must be `_bucket` (with `le`), `_sum` or `_count`; a summary's quantile samples need
`quantile`; the same series (name and labels) twice in one text is an error; a metric name must
be followed by a blank or `{`.

Linear in the input: each line is scanned once, by regular expressions without nested
quantifiers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

TYPES = ("counter", "gauge", "histogram", "summary", "untyped")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_BLANKS = re.compile(r"[ \t]*")
# A label value between quotes: runs of plain characters or one escaped character.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_TOKEN = re.compile(r"[^ \t]+")
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)",
    re.IGNORECASE,
)
_INT = re.compile(r"[+-]?[0-9]+")
# The common shape of a sample line, in one match (see _Parser.fast_sample); every alternative
# starts with a different character, so matching is linear.
_VALUE = r'"(?:[^"\\]|\\[\\"n])*"'
_LABEL = rf"[a-zA-Z_][a-zA-Z0-9_]*={_VALUE}"
_FAST = re.compile(
    rf"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{({_LABEL}(?:,{_LABEL})*,?)?\}})? ([^ \t]+)(?: ([^ \t]+))?"
)
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_KNOWN_ESCAPE = re.compile(r"\\([\\\"n])")
_INT64 = 1 << 63


class ParseError(ValueError):
    """The text is not valid exposition text; `line` is 1-based."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    timestamp_ms: int | None = None


@dataclass
class Family:
    """One metric family as the text declares it (a counter keeps its `_total` name)."""

    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[Sample] = field(default_factory=list)
    typed: bool = False  # a TYPE line was seen


def parse_float(token: str) -> float | None:
    """`token` as Go's strconv.ParseFloat reads a decimal float; None when it does not (or
    when it overflows, which ParseFloat reports as an error)."""
    if not _FLOAT.fullmatch(token):
        return None
    value = float(token)
    if math.isinf(value) and "inf" not in token.lower():
        return None
    return value


def parse_int64(token: str) -> int | None:
    """`token` as Go's strconv.ParseInt(token, 10, 64); None when it is not one."""
    if not _INT.fullmatch(token):
        return None
    digits = token.lstrip("+-").lstrip("0")
    if len(digits) > 19:  # beyond int64 (and int()'s digit limit stays far away)
        return None
    value = int(token)
    return value if -_INT64 <= value < _INT64 else None


def _unescape(text: str, line: int, allowed: str) -> str:
    """Undo `\\\\`, `\\n` (and `\\"` where `allowed` has it); any other escape is an error."""
    if "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        if char not in allowed:
            raise ParseError(line, f"invalid escape sequence \\{char}")
        return "\n" if char == "n" else char

    return _ESCAPE.sub(replace, text)


_Parsed = tuple[str, dict[str, str], float, int | None]  # name, labels, value, timestamp


def _unescape_known(text: str) -> str:
    """Undo `\\\\`, `\\"` and `\\n` in text whose escapes are known to be only those."""
    return _KNOWN_ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


class _Parser:
    def __init__(self, fast: bool = True) -> None:
        self.fast = fast
        self.families: dict[str, Family] = {}
        self.series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def family(self, name: str) -> Family:
        found = self.families.get(name)
        if found is None:
            found = self.families[name] = Family(name)
        return found

    def family_of_sample(self, name: str) -> Family:
        """The family a sample named `name` belongs to (expfmt's lookup order)."""
        found = self.families.get(name)
        if found is not None:
            return found
        for suffix in ("_sum", "_count", "_bucket"):
            if name.endswith(suffix):
                base = self.families.get(name[: -len(suffix)])
                if base is None:
                    continue
                if base.type == "histogram" or (base.type == "summary" and suffix != "_bucket"):
                    return base
        return self.family(name)

    def comment(self, line: str, pos: int, number: int) -> None:
        pos = _BLANKS.match(line, pos + 1).end()  # type: ignore[union-attr]
        keyword = _TOKEN.match(line, pos)
        if keyword is None or keyword.group() not in ("HELP", "TYPE"):
            return  # a plain comment
        pos = _BLANKS.match(line, keyword.end()).end()  # type: ignore[union-attr]
        name = _NAME.match(line, pos)
        if name is None or (name.end() < len(line) and line[name.end()] not in " \t"):
            raise ParseError(number, f"invalid metric name in {keyword.group()} line")
        family = self.family(name.group())
        rest = line[_BLANKS.match(line, name.end()).end() :]  # type: ignore[union-attr]
        if keyword.group() == "HELP":
            if family.help is not None:
                raise ParseError(number, f"second HELP line for metric name {family.name!r}")
            family.help = _unescape(rest, number, "\\n")
            return
        if family.typed or family.samples:
            raise ParseError(
                number,
                f"second TYPE line for metric name {family.name!r}, or TYPE after its samples",
            )
        kind = rest.rstrip(" \t").lower()
        if kind not in TYPES:
            raise ParseError(number, f"unknown metric type {rest!r}")
        family.type = kind
        family.typed = True

    def labels(self, line: str, pos: int, number: int) -> tuple[dict[str, str], int]:
        """The label set starting after `{` at `pos`; returns it and the position after `}`."""
        labels: dict[str, str] = {}
        while True:
            pos = _BLANKS.match(line, pos).end()  # type: ignore[union-attr]
            if line.startswith("}", pos):
                return labels, pos + 1
            name = _LABEL_NAME.match(line, pos)
            if name is None:
                raise ParseError(number, "invalid label name, or unterminated label set")
            key = name.group()
            if key == "__name__":
                raise ParseError(number, "label name '__name__' is reserved")
            if key in labels:
                raise ParseError(number, f"duplicate label name {key!r}")
            pos = _BLANKS.match(line, name.end()).end()  # type: ignore[union-attr]
            if not line.startswith("=", pos):
                raise ParseError(number, f"expected '=' after label name {key!r}")
            pos = _BLANKS.match(line, pos + 1).end()  # type: ignore[union-attr]
            quoted = _QUOTED.match(line, pos)
            if quoted is None:
                raise ParseError(number, f"expected a quoted value for label {key!r}")
            labels[key] = _unescape(quoted.group(1), number, '\\"n')
            pos = _BLANKS.match(line, quoted.end()).end()  # type: ignore[union-attr]
            if line.startswith(",", pos):
                pos += 1
            elif not line.startswith("}", pos):
                raise ParseError(number, "expected ',' or '}' after a label value")

    def sample(self, line: str, pos: int, number: int) -> None:
        fast = self.fast_sample(line, pos) if self.fast else None
        if fast is None:
            fast = self.slow_sample(line, pos, number)
        name, labels, value, timestamp = fast
        family = self.family_of_sample(name)
        self.check_shape(family, name, labels, number)
        key = (name, tuple(sorted(labels.items())))
        if key in self.series:
            raise ParseError(number, f"duplicate series {name}{dict(key[1])}")
        self.series.add(key)
        family.samples.append(Sample(name, labels, value, timestamp))

    @staticmethod
    def fast_sample(line: str, pos: int) -> _Parsed | None:
        """A sample line as writers format it (`name{a="b",c="d"} value [timestamp]`, one space
        between the parts), in one match; None for anything else, left to `slow_sample`, which
        accepts the rest of the grammar and names the errors."""
        match = _FAST.fullmatch(line, pos)
        if match is None:
            return None
        name, label_text, value_text, stamp_text = match.groups()
        value = parse_float(value_text)
        if value is None:
            return None
        labels: dict[str, str] = {}
        if label_text:
            pairs = _PAIR.findall(label_text)
            for key, raw in pairs:
                labels[key] = _unescape_known(raw) if "\\" in raw else raw
            if len(labels) != len(pairs) or "__name__" in labels:
                return None
        timestamp = None
        if stamp_text is not None:
            timestamp = parse_int64(stamp_text)
            if timestamp is None:
                return None
        return name, labels, value, timestamp

    def slow_sample(self, line: str, pos: int, number: int) -> _Parsed:
        name_match = _NAME.match(line, pos)
        if name_match is None:
            raise ParseError(number, "invalid metric name")
        name = name_match.group()
        pos = _BLANKS.match(line, name_match.end()).end()  # type: ignore[union-attr]
        labels: dict[str, str] = {}
        if line.startswith("{", pos):
            labels, pos = self.labels(line, pos + 1, number)
            pos = _BLANKS.match(line, pos).end()  # type: ignore[union-attr]
        elif pos == name_match.end() and pos < len(line):
            raise ParseError(number, "invalid metric name")
        token = _TOKEN.match(line, pos)
        if token is None:
            raise ParseError(number, f"no value for {name!r}")
        value = parse_float(token.group())
        if value is None:
            raise ParseError(number, f"expected a float as value, got {token.group()!r}")
        pos = _BLANKS.match(line, token.end()).end()  # type: ignore[union-attr]
        timestamp: int | None = None
        stamp = _TOKEN.match(line, pos)
        if stamp is not None:
            timestamp = parse_int64(stamp.group())
            if timestamp is None:
                raise ParseError(number, f"expected an integer timestamp, got {stamp.group()!r}")
            pos = _BLANKS.match(line, stamp.end()).end()  # type: ignore[union-attr]
            if pos < len(line):
                raise ParseError(number, "spurious text after the timestamp")
        return name, labels, value, timestamp

    @staticmethod
    def check_shape(family: Family, name: str, labels: dict[str, str], number: int) -> None:
        """A histogram's and a summary's samples are the ones their type allows."""
        if family.type == "histogram":
            if name == family.name + "_bucket":
                _float_label(labels, "le", name, number)
            elif name not in (family.name + "_sum", family.name + "_count"):
                raise ParseError(number, f"{name!r} is not a sample of histogram {family.name!r}")
        elif family.type == "summary" and name == family.name:
            _float_label(labels, "quantile", name, number)


def _float_label(labels: dict[str, str], key: str, name: str, number: int) -> None:
    if key not in labels:
        raise ParseError(number, f"{name!r} needs a {key!r} label")
    if parse_float(labels[key]) is None:
        raise ParseError(number, f"expected a float as {key!r} label value of {name!r}")


def parse(text: str, *, fast: bool = True) -> list[Family]:
    """The metric families of exposition `text`, in order of first mention; families that
    were only declared (HELP or TYPE, no sample) are left out. Raises ParseError.
    (`fast=False` parses every sample line the general way: the tests compare the two.)"""
    if text and not text.endswith("\n"):
        raise ParseError(
            text.count("\n") + 1, "no newline at the end of the text (an incomplete file?)"
        )
    parser = _Parser(fast)
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        pos = _BLANKS.match(line).end()  # type: ignore[union-attr]
        if pos == len(line):
            continue
        if line[pos] == "#":
            parser.comment(line, pos, number)
        else:
            parser.sample(line, pos, number)
    return [f for f in parser.families.values() if f.samples]
