"""Reading typed fields out of positioned YAML, reporting each problem with its line.

Shared by the hpcobs spec reader (`spec.py`) and the OpenSLO reader (`openslo.py`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from hpcobs.slo.diagnostics import Problems, did_you_mean
from hpcobs.slo.model import ROLLING_30D, Period, window
from hpcobs.slo.selector import Selector, SelectorError, parse_matchers, parse_selector
from hpcobs.slo.yamlpos import PosDict, PosList, line_of

SLO_ID = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# Labels hpcobs sets itself on rules and metrics; a spec may not set them.
RESERVED_LABELS = frozenset({"slo", "service", "severity", "window", "kind", "alertname"})
MIN_PERIOD_DAYS = 7
MAX_PERIOD_DAYS = 90


class Reader:
    """Typed access to one file's YAML with problems collected, never raised."""

    def __init__(self, file: str, problems: Problems, max_slos: int | None = None) -> None:
        self.file = file
        self.problems = problems
        # SLOs this file may still define (the loader's limit): parsing stops one beyond
        # it, so that an `expand:` of a million values does not build a million SLOs
        self.max_slos = max_slos

    def error(self, line: int, message: str, hint: str) -> None:
        self.problems.error(self.file, line, message, hint)

    def warning(self, line: int, message: str, hint: str) -> None:
        self.problems.warning(self.file, line, message, hint)

    # -- structure -----------------------------------------------------------------------
    def mapping(self, value: Any, where: str, line: int) -> PosDict | None:
        if isinstance(value, PosDict):
            for key, dup_line in value.duplicates:
                self.error(dup_line, f"{where}: duplicate key {key!r}", "remove one of the two")
            return value
        self.error(
            line_of(value, line),
            f"{where}: expected a mapping, found {_kind(value)}",
            "write `key: value` pairs, indented under the key",
        )
        return None

    def sequence(self, value: Any, where: str, line: int) -> PosList | None:
        if isinstance(value, PosList):
            return value
        self.error(
            line_of(value, line),
            f"{where}: expected a list, found {_kind(value)}",
            "write one `- item` per line",
        )
        return None

    def keys(
        self,
        m: PosDict,
        where: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
        unsupported: dict[str, str] | None = None,
    ) -> bool:
        """Report unknown, unsupported and missing keys; True when all required are there."""
        allowed = set(allowed)
        unsupported = unsupported or {}
        for key in m:
            if key in unsupported:
                self.error(m.line_of(key), f"{where}.{key}: not supported", unsupported[key])
            elif key not in allowed:
                hint = did_you_mean(key, allowed) or f"known keys: {', '.join(sorted(allowed))}"
                self.error(m.line_of(key), f"{where}: unknown key {key!r}", hint)
        ok = True
        for key in required:
            if key not in m or m[key] is None:
                ok = False
                self.error(m.line, f"{where}: missing required key {key!r}", f"add `{key}: ...`")
        return ok

    # -- scalars -------------------------------------------------------------------------
    def string(self, m: PosDict, key: str, where: str) -> str | None:
        value = m.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(
                m.line_of(key),
                f"{where}.{key}: expected a string, found {_kind(value)}",
                "quote it",
            )
            return None
        return str(value)

    def boolean(self, m: PosDict, key: str, where: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            self.error(
                m.line_of(key),
                f"{where}.{key}: expected true or false, found {value!r}",
                "write true or false",
            )
            return default
        return value

    def number(self, m: PosDict, key: str, where: str) -> float | None:
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(
                m.line_of(key),
                f"{where}.{key}: expected a number, found {value!r}",
                "write a plain number such as 3600",
            )
            return None
        if not math.isfinite(value):
            self.error(m.line_of(key), f"{where}.{key}: must be finite", "write a finite number")
            return None
        return float(value)

    def selector(self, m: PosDict, key: str, where: str) -> Selector | None:
        text = self.string(m, key, where)
        if text is None:
            return None
        try:
            return parse_selector(text)
        except SelectorError as exc:
            self.error(m.line_of(key), f"{where}.{key}: {exc}", exc.hint)
            return None

    def metric_name(self, m: PosDict, key: str, where: str) -> str | None:
        text = self.string(m, key, where)
        if text is None:
            return None
        if not METRIC_NAME.match(text):
            self.error(
                m.line_of(key),
                f"{where}.{key}: {text!r} is not a metric name",
                "give only the metric name, e.g. hpcobs_slurm_job_queue_wait_seconds",
            )
            return None
        return text

    def matchers(self, m: PosDict, key: str, where: str) -> tuple[Any, ...] | None:
        """Label matchers: a mapping `label: value` (equality) or `{label=~"re", ...}`."""
        value = m.get(key)
        if value is None:
            return ()
        line = m.line_of(key)
        if isinstance(value, PosDict):
            labels = self.labels(value, f"{where}.{key}", line, allow_reserved=True)
            if labels is None:
                return None
            return parse_matchers(",".join(f'{k}="{_esc(v)}"' for k, v in labels))
        if isinstance(value, str):
            try:
                return parse_matchers(value)
            except SelectorError as exc:
                self.error(line, f"{where}.{key}: {exc}", exc.hint)
                return None
        self.error(
            line,
            f"{where}.{key}: expected label matchers, found {_kind(value)}",
            'write a mapping (partition: gpu) or matchers ({partition=~"gpu.*"})',
        )
        return None

    def labels(
        self, value: Any, where: str, line: int, *, allow_reserved: bool = False
    ) -> tuple[tuple[str, str], ...] | None:
        m = self.mapping(value, where, line)
        if m is None:
            return None
        out: list[tuple[str, str]] = []
        ok = True
        for name, raw in m.items():
            ln = m.line_of(name)
            if not LABEL_NAME.match(name) or name.startswith("__"):
                self.error(
                    ln,
                    f"{where}: {name!r} is not a valid label name",
                    "use letters, digits and underscores, not starting with a digit or __",
                )
                ok = False
                continue
            if not allow_reserved and name in RESERVED_LABELS:
                self.error(
                    ln,
                    f"{where}: label {name!r} is set by hpcobs",
                    f"rename it; reserved: {', '.join(sorted(RESERVED_LABELS))}",
                )
                ok = False
                continue
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                self.error(
                    ln, f"{where}.{name}: expected a string value, found {_kind(raw)}", "quote it"
                )
                ok = False
                continue
            out.append((name, str(raw)))
        return tuple(out) if ok else None

    def objective_percent(self, value: Any, where: str, line: int) -> Decimal | None:
        """An objective given in percent (99.5) → ratio Decimal("0.995")."""
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.error(
                line, f"{where}: expected a percentage such as 99.5", "write objective: 99.5"
            )
            return None
        try:
            percent = Decimal(repr(value) if isinstance(value, float) else str(value))
        except InvalidOperation:
            self.error(line, f"{where}: {value!r} is not a number", "write objective: 99.5")
            return None
        if not percent.is_finite() or not Decimal(0) < percent < Decimal(100):
            self.error(
                line,
                f"{where}: {value} is outside (0, 100)",
                "the objective is a percentage strictly between 0 and 100, e.g. 99.5",
            )
            return None
        if percent < 1:
            self.error(
                line,
                f"{where}: {value} is read as {value} %, which is surely not meant",
                f"the objective is a percentage: write {(percent * 100).normalize():f} for "
                f"{(percent * 100).normalize():f} %",
            )
            return None
        return percent / 100

    def period(self, value: Any, where: str, line: int) -> Period | None:
        if value is None:
            return ROLLING_30D
        text = str(value).strip().lower()
        if text in ("calendar-month", "calendar_month", "month"):
            return Period("calendar_month")
        hint = (
            f"write {MIN_PERIOD_DAYS} to {MAX_PERIOD_DAYS} whole days (e.g. 30d, 28d, 4w) "
            "or calendar-month"
        )
        try:
            w = window(text)
        except ValueError as exc:
            self.error(line, f"{where}: {exc}", hint)
            return None
        if w.seconds % 86400 or not MIN_PERIOD_DAYS <= w.seconds // 86400 <= MAX_PERIOD_DAYS:
            self.error(line, f"{where}: period {value!r} is out of range", hint)
            return None
        return Period("rolling", w.seconds // 86400)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, PosDict | dict):
        return "a mapping"
    if isinstance(value, PosList | list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
