"""How the report prints numbers. One function per kind, used by the text and HTML renderers
and the findings, so a figure reads the same everywhere (the JSON output keeps raw values)."""

from __future__ import annotations

import datetime as dt
import math

_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def fmt_bytes(value: float | None) -> str:
    """`512 B`, `1.50 KiB`, `12.3 GiB`: three significant digits from KiB up."""
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) < 1024:
        return f"{value:.0f} B"
    exp = min(int(math.log(abs(value), 1024)), len(_IEC) - 1)
    scaled = value / 1024**exp
    if abs(scaled) >= 1024 and exp < len(_IEC) - 1:  # log rounding at a power of 1024
        exp, scaled = exp + 1, scaled / 1024
    return f"{_sig3(scaled)} {_IEC[exp]}"


def _sig3(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_duration(seconds: float | None) -> str:
    """`0.25 s`, `12.3 s`, `4 m 05 s`, `2 h 03 m`, `3 d 04 h`."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{_sig3(seconds)} s" if seconds >= 1 else f"{seconds:.2f} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} m {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} m"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def fmt_pct(ratio: float | None) -> str:
    """A ratio as a percentage: whole percent from 10%, one decimal below."""
    if ratio is None or not math.isfinite(ratio):
        return "-"
    pct = ratio * 100
    return f"{pct:.0f}%" if abs(pct) >= 9.95 else f"{pct:.1f}%"


def fmt_count(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def fmt_time(t: float | None) -> str:
    """UTC, to the second: `2024-05-01T12:00:03Z`."""
    if t is None or not math.isfinite(t):
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
