"""PromQL series selectors: parse, render, and match label sets client-side.

An SLI names its events with counter selectors such as
`hpcobs_slurm_jobs_finished_total{cause="system"}`. The rule generator renders them into
PromQL; the daemon batches every SLO's selectors on one metric into a single
`sum by (...)` query and assigns the returned groups to SLOs with `Selector.matches`, so
both read the same parsed selector.

Only selectors are accepted (a metric name and label matchers): hpcobs applies `increase`
and `sum` itself, which is what lets it record event counts and batch queries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Literal

MatchOp = Literal["=", "!=", "=~", "!~"]
OPS: tuple[MatchOp, ...] = ("=~", "!~", "!=", "=")  # longest first for the tokenizer

_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_REGEX_SPECIAL = set("\\.+*?()|[]{}^$")


class SelectorError(ValueError):
    """A selector that does not parse; `hint` says how to write it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint or 'write a counter selector such as metric_total{label="value"}'


@dataclass(frozen=True)
class Matcher:
    label: str
    op: MatchOp
    value: str

    @cached_property
    def _regex(self) -> re.Pattern[str] | None:
        return re.compile(self.value) if self.op in ("=~", "!~") else None

    def matches(self, value: str) -> bool:
        """Whether a label value (`""` for an absent label) satisfies the matcher."""
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self._regex is not None
        found = self._regex.fullmatch(value) is not None
        return found if self.op == "=~" else not found

    def promql(self) -> str:
        return f"{self.label}{self.op}{quote(self.value)}"


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...] = field(default=())

    def promql(self) -> str:
        if not self.matchers:
            return self.metric
        return self.metric + "{" + ",".join(m.promql() for m in self.matchers) + "}"

    def __str__(self) -> str:
        return self.promql()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels.get(m.label, "")) for m in self.matchers)

    def labels(self) -> set[str]:
        return {m.label for m in self.matchers}

    def with_matchers(self, extra: Iterable[Matcher]) -> Selector:
        """This selector with more matchers (an existing matcher on the same label stays)."""
        return Selector(self.metric, (*self.matchers, *extra))


def quote(value: str) -> str:
    """A PromQL double-quoted string (Go escaping; JSON's is a subset Go accepts)."""
    return json.dumps(value, ensure_ascii=False)


def regex_escape(value: str) -> str:
    """Escape RE2 metacharacters (only those: RE2 rejects some of Python's escapes)."""
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in value)


def parse_matchers(text: str) -> tuple[Matcher, ...]:
    """`{a="b", c=~"d"}` or `a="b", c=~"d"` → matchers."""
    text = text.strip()
    if text.startswith("{"):
        if not text.endswith("}"):
            raise SelectorError(f"unbalanced braces in {text!r}", 'close it: {label="value"}')
        text = text[1:-1]
    matchers, pos = _parse_matcher_list(text, 0, end=None)
    if pos != len(text):
        raise SelectorError(f"unexpected {text[pos:]!r} in label matchers {text!r}")
    return matchers


def parse_selector(text: str) -> Selector:
    """Parse `metric{label="value", ...}`; raise `SelectorError` otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise SelectorError("empty selector")
    text = text.strip()
    m = _METRIC.match(text)
    if m is None:
        if text.startswith("{"):
            raise SelectorError(
                f"selector {text!r} has no metric name",
                'put the metric name first: metric_total{label="value"}',
            )
        raise SelectorError(f"{text!r} does not start with a metric name")
    metric = m.group(0)
    pos = _skip_ws(text, m.end())
    if pos < len(text) and text[pos] == "(":
        raise SelectorError(
            f"{text!r} is an expression, not a selector",
            "give only the counter selector: hpcobs applies increase() and sum() itself",
        )
    matchers: tuple[Matcher, ...] = ()
    if pos < len(text) and text[pos] == "{":
        matchers, pos = _parse_matcher_list(text, pos + 1, end="}")
        pos = _skip_ws(text, pos)
    if pos != len(text):
        rest = text[pos:]
        hint = (
            "give only the counter selector: hpcobs applies increase() and sum() itself"
            if rest.startswith(("[", "(", "+", "-", "*", "/", " or", " and", " by"))
            or rest[:1] in "[+-*/"
            else 'write a counter selector such as metric_total{label="value"}'
        )
        raise SelectorError(f"unexpected {rest!r} after the selector {text[:pos]!r}", hint)
    for matcher in matchers:
        if matcher.label == "__name__":
            raise SelectorError(
                f"{text!r} matches on __name__", "name the metric before the braces instead"
            )
    return Selector(metric, matchers)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _parse_matcher_list(text: str, pos: int, end: str | None) -> tuple[tuple[Matcher, ...], int]:
    matchers: list[Matcher] = []
    while True:
        pos = _skip_ws(text, pos)
        if end is not None and pos < len(text) and text[pos] == end:
            return tuple(matchers), pos + 1
        if pos >= len(text):
            if end is None:
                return tuple(matchers), pos
            raise SelectorError(f"missing {end!r} in {text!r}", 'close the braces: {label="value"}')
        label = _LABEL.match(text, pos)
        if label is None:
            raise SelectorError(f"expected a label name at {text[pos:]!r}")
        pos = _skip_ws(text, label.end())
        op = next((o for o in OPS if text.startswith(o, pos)), None)
        if op is None:
            raise SelectorError(
                f"expected =, !=, =~ or !~ after {label.group(0)!r}", 'write label="value"'
            )
        pos = _skip_ws(text, pos + len(op))
        value, pos = _parse_string(text, pos)
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise SelectorError(
                    f"invalid regular expression {value!r}: {exc}", "fix the regex (RE2 syntax)"
                ) from None
        matchers.append(Matcher(label.group(0), op, value))
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif end is not None and pos < len(text) and text[pos] != end:
            raise SelectorError(f"expected ',' or {end!r} at {text[pos:]!r}")


def _parse_string(text: str, pos: int) -> tuple[str, int]:
    if pos >= len(text) or text[pos] not in "\"'`":
        raise SelectorError(f"expected a quoted value at {text[pos:]!r}", 'quote it: label="value"')
    q = text[pos]
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == q:
            return "".join(out), i + 1
        if c == "\\" and q != "`":
            i += 1
            if i >= len(text):
                break
            e = text[i]
            if e in _HEX_ESCAPES:
                digits = text[i + 1 : i + 1 + _HEX_ESCAPES[e]]
                try:
                    out.append(chr(int(digits, 16)))
                except ValueError:
                    raise SelectorError(f"invalid escape \\{e}{digits} in {text!r}") from None
                i += 1 + _HEX_ESCAPES[e]
                continue
            if e not in _ESCAPES:
                raise SelectorError(f"unknown escape \\{e} in {text!r}")
            out.append(_ESCAPES[e])
        else:
            out.append(c)
        i += 1
    raise SelectorError(f"unterminated string in {text!r}", "close the quotes")


def number_label_values(value: float) -> tuple[str, ...]:
    """How exporters may spell a number in a label such as `le` or `threshold`.

    client_golang writes `3600` (and `1e+06`), client_python and OpenMetrics `3600.0`; a
    matcher on a bucket bound must accept every spelling to find the series.
    """
    if value != value:
        raise ValueError("NaN is not a bucket bound")
    if value == float("inf"):
        return ("+Inf",)
    spellings = [repr(float(value))]
    if float(value).is_integer() and abs(value) < 1e21:
        spellings.append(str(int(value)))
    spellings.append(_go_format(float(value)))
    return tuple(dict.fromkeys(spellings))


def _go_format(value: float) -> str:
    """Go's strconv.FormatFloat(v, 'g', -1, 64) (client_golang's bucket label format)."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits_tuple = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    exponent = int(digits_tuple.exponent) + len(digits) - 1  # scientific exponent
    if exponent < -4 or exponent >= 6:  # Go: shortest formatting decides with precision 6
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"
    if exponent >= len(digits) - 1:
        return sign + digits + "0" * (exponent - len(digits) + 1)
    if exponent >= 0:
        return sign + digits[: exponent + 1] + "." + digits[exponent + 1 :]
    return sign + "0." + "0" * (-exponent - 1) + digits


def number_matcher(label: str, value: float) -> Matcher:
    """A regex matcher accepting every spelling of a number in `label`."""
    spellings = number_label_values(value)
    if len(spellings) == 1:
        return Matcher(label, "=", spellings[0])
    return Matcher(label, "=~", "|".join(regex_escape(s) for s in spellings))
