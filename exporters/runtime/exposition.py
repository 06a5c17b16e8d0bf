"""Text exposition (format 0.0.4 and OpenMetrics 1.0), byte for byte as prometheus_client's.

prometheus_client's encoders spend about 6 µs per sample (label-name validation by regular
expression, a character-by-character escape of every OpenMetrics sample name, sorting and
formatting every label set); for a node with a few hundred series that is most of a scrape.
These encoders produce the same bytes (tests/unit/test_runtime_exposition.py checks them
against prometheus_client on generated families) with, per encoding call,

- each distinct metric and sample name escaped once per call;
- each label set sorted, escaped and formatted once per call (a dict object shared by many
  samples is looked up once), and across calls a cached layout (below) serves the series that
  the last scrape had: a node's series hardly change from one scrape to the next;

and hand anything unusual (native histograms, non-default escaping or versions) to
prometheus_client itself. `choose_encoder()` is prometheus_client's, with these swapped in
where they apply. The escaping is our own (exporters/runtime/escape.py): no private
prometheus_client name is used (their signatures change between releases). The bytes are
those of prometheus_client 0.26, the floor in pyproject.toml (older ones write exponents as
"e+010" and differ in name escaping and exemplar rules).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.utils import floatToGoString

from hpcobs.exporters.runtime.escape import (
    UNDERSCORES,
    escape_help,
    escape_label_name,
    escape_label_value,
    escape_metric_name,
    exemplar_suffix,
    underscore_label_runes,
)


class _Collectable(Protocol):
    def collect(self) -> Any: ...


Encoder = Callable[[Any], bytes]


class _Names:
    """Per-call caches of escaped names and formatted label sets."""

    __slots__ = ("ints", "labelsets", "metric_names", "sample_names")

    def __init__(self) -> None:
        self.metric_names: dict[str, str] = {}
        self.sample_names: dict[str, str] = {}
        self.ints: dict[int, str] = {}  # floatToGoString of int values (zeros abound)
        # id(labels) → (labels, text); the dict is kept referenced so its id stays unique
        self.labelsets: dict[int, tuple[dict[str, str], str]] = {}

    def value(self, value: Any) -> str:
        if type(value) is not int:
            formatted: str = floatToGoString(value)  # type: ignore[no-untyped-call]
            return formatted
        text = self.ints.get(value)
        if text is None:
            text = self.ints[value] = _int_to_go(value)
        return text

    def metric(self, name: str) -> str:
        escaped = self.metric_names.get(name)
        if escaped is None:
            escaped = self.metric_names[name] = escape_metric_name(name)
        return escaped

    def om_sample(self, name: str) -> str:
        escaped = self.sample_names.get(name)
        if escaped is None:
            escaped = self.sample_names[name] = underscore_label_runes(name)
        return escaped

    def labels(self, labels: dict[str, str]) -> str:
        """`k="v",…` (sorted by name, values escaped), without braces."""
        entry = self.labelsets.get(id(labels))
        if entry is not None and entry[0] is labels:
            return entry[1]
        text = _render(tuple(labels.items()))
        self.labelsets[id(labels)] = (labels, text)
        return text


def _render(items: tuple[tuple[str, str], ...]) -> str:
    parts = []
    for key, value in sorted(items):
        parts.append(f'{escape_label_name(key)}="{escape_label_value(value)}"')
    return ",".join(parts)


_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_NATIVE_TYPES = ("histogram", "gaugehistogram")  # the only families with native histograms

# The cached layout: per format and family, the last encoding's samples in order, each as
# (sample name, a copy of its labels, its line up to the value, the value, the value's text).
# A node's series are the same from one scrape to the next and most of its counters (errors,
# drops) do not move between scrapes, so a sample whose name and labels equal the entry at its
# position reuses the entry's line start, and its value text when the value is equal too.
# Entries are checked against the sample itself (never trusted by identity), replaced, never
# mutated: concurrent encodings can only miss, not mix. A family that changed shape (a job came
# or went) finds its other samples by (name, labels) in its last layout (`_index`).
# Measured (2-core CI VM, best of 3 runs; issue 16), per encoding: on the 4 HCA × 2 port tree
# (444 samples) OpenMetrics 0.97 → 0.20 ms and text 0.77 → 0.24 ms with the tree's values
# unchanged, OpenMetrics 0.98 → 0.44 ms with every counter changed; on a node of 8 GPUs, 4 HCAs
# and 1,000 Lustre jobs (3,687 samples) 2.0 ms. It replaced a memo of rendered label sets by
# content: the same speed on a miss, 0.9 MiB less RSS on that node. Bounded: past
# _LAYOUT_MAX_SAMPLES entries the cache starts over.
_Entry = tuple[str, dict[str, str], str, Any, str]
_LAYOUTS: dict[tuple[bool, str], list[_Entry]] = {}
_LAYOUT_MAX_SAMPLES = 50_000
_layout_samples = 0


def _store_layout(key: tuple[bool, str], entries: list[_Entry]) -> None:
    global _layout_samples
    old = _LAYOUTS.get(key)
    grown = len(entries) - (len(old) if old is not None else 0)
    if _layout_samples + grown > _LAYOUT_MAX_SAMPLES:
        _LAYOUTS.clear()
        _layout_samples = 0
        grown = len(entries)
    _LAYOUTS[key] = entries
    _layout_samples += grown


def _same_value(value: Any, cached: Any) -> bool:
    """`value` formats as `cached` did: same type and equal (NaN never is), and for a zero the
    same zero (0.0 and -0.0 are equal but written differently). The encoders inline the first
    part: a function call per sample is a tenth of the encoding time."""
    return type(value) is type(cached) and value == cached and (value or _same_zero(value, cached))


def _same_zero(value: Any, cached: Any) -> bool:
    """`value` == `cached`, both zero (or None): written the same?"""
    kind = type(value)
    if kind is float:
        return math.copysign(1.0, value) == math.copysign(1.0, cached)
    return kind is int or kind is bool or value is None


def _index(entries: list[_Entry]) -> dict[tuple[str, tuple[tuple[str, str], ...]], _Entry]:
    """A family's last layout by (sample name, labels), for a scrape whose family changed shape
    (a job came or went): its other samples are still found, wherever they moved."""
    index = {}
    for entry in entries:
        if entry[0]:
            try:  # noqa: SIM105 - contextlib.suppress costs more in this loop
                index[(entry[0], tuple(entry[1].items()))] = entry
            except TypeError:  # an unhashable label value
                pass
    return index


def _find(
    index: dict[tuple[str, tuple[tuple[str, str], ...]], _Entry], name: str, labels: dict[str, str]
) -> _Entry | None:
    try:
        return index.get((name, tuple(labels.items())))
    except TypeError:
        return None


def generate_text(registry: _Collectable) -> bytes:
    """`prometheus_client.exposition.generate_latest(registry)` (format 0.0.4), faster."""
    names = _Names()
    metric_names, labelsets, ints = names.metric_names, names.labelsets, names.ints
    output: list[str] = []
    append = output.append
    for metric in registry.collect():
        om_samples: dict[str, list[str]] = {}
        try:
            mname = metric.name
            mtype = metric.type
            if mtype == "counter":
                mname = mname + "_total"
            elif mtype == "info":
                mname = mname + "_info"
                mtype = "gauge"
            elif mtype == "stateset":
                mtype = "gauge"
            elif mtype == "gaugehistogram":
                mtype = "histogram"
            elif mtype == "unknown":
                mtype = "untyped"
            escaped = names.metric(mname)
            append(f"# HELP {escaped} {escape_help(metric.documentation)}\n")
            append(f"# TYPE {escaped} {mtype}\n")
            special = {metric.name + suffix: suffix for suffix in _OM_SUFFIXES}
            samples = metric.samples
            key = (False, metric.name)
            previous = _LAYOUTS.get(key)
            old = previous if previous is not None and len(previous) == len(samples) else None
            index = None
            new: list[_Entry] | None = None
            # The per-sample work, inlined: this loop is most of a scrape's encoding time.
            for i, s in enumerate(samples):
                name = s.name
                labels = s.labels
                value = s.value
                entry = old[i] if old is not None else None
                if entry is not None and entry[0] == name and entry[1] == labels:
                    start = entry[2]
                    last = entry[3]
                    if (
                        type(value) is type(last)
                        and value == last
                        and (value or _same_zero(value, last))
                    ):
                        text = entry[4]
                    else:
                        text = _text_value(value, ints)
                        if new is None:
                            new = list(old) if old is not None else [_NO_ENTRY] * len(samples)
                        new[i] = (name, entry[1], start, value, text)
                else:
                    if previous is not None and index is None:
                        index = _index(previous)
                    found = _find(index, name, labels) if index else None
                    if found is not None:
                        start = found[2]
                    else:
                        sample_name = metric_names.get(name)
                        if sample_name is None:
                            sample_name = names.metric(name)
                        if labels:
                            cached = labelsets.get(id(labels))
                            if cached is not None and cached[0] is labels:
                                start = f"{sample_name}{{{cached[1]}}} "
                            else:
                                start = f"{sample_name}{{{names.labels(labels)}}} "
                        else:
                            start = f"{sample_name} "
                    if found is not None and _same_value(value, found[3]):
                        text = found[4]
                    else:
                        text = _text_value(value, ints)
                    if new is None:
                        new = list(old) if old is not None else [_NO_ENTRY] * len(samples)
                    new[i] = (name, dict(labels), start, value, text)
                timestamp = s.timestamp
                if timestamp is None:
                    line = f"{start}{text}\n"
                else:
                    line = f"{start}{text} {int(float(timestamp) * 1000):d}\n"
                suffix = special.get(name)
                if suffix is None:
                    append(line)
                else:  # OpenMetrics-only sample: a gauge of its own at the end
                    om_samples.setdefault(suffix, []).append(line)
            if new is not None:
                _store_layout(key, new)
        except Exception as exception:
            exception.args = (exception.args or ("",)) + (metric,)
            raise
        for suffix, lines in sorted(om_samples.items()):
            escaped = names.metric(metric.name + suffix)
            append(f"# HELP {escaped} {escape_help(metric.documentation)}\n")
            append(f"# TYPE {escaped} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")


_NO_ENTRY: _Entry = ("", {}, "", None, "")


def _text_value(value: Any, ints: dict[int, str]) -> str:
    if type(value) is int:
        text = ints.get(value)
        if text is None:
            text = ints[value] = _int_to_go(value)
        return text
    formatted: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return formatted


_EXACT = 1 << 53  # ints below this are exact doubles: their decimal digits are repr's digits


def _int_to_go(value: int) -> str:
    """`floatToGoString(value)` for an int (its float is finite or float() raises the same).
    From the int's own digits where its double is exact: 45 % less time than through
    float → repr → find (the counters of a scrape are mostly large ints; issue 16)."""
    if 0 <= value < 1000000:
        return f"{value}.0"
    if 0 < value < _EXACT:  # d.ddd…e+NN, as floatToGoString writes from 1e6
        digits = str(value)
        kept = digits.rstrip("0")
        if len(kept) > 1:
            return f"{digits[0]}.{kept[1:]}e+{len(digits) - 1:02d}"
        return f"{digits[0]}e+{len(digits) - 1:02d}"
    d = float(value)
    text = repr(d)
    dot = text.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def generate_openmetrics(registry: _Collectable) -> bytes:
    """`prometheus_client.openmetrics.exposition.generate_latest(registry)` (1.0.0), faster."""
    names = _Names()
    labelsets, ints = names.labelsets, names.ints
    output: list[str] = []
    append = output.append
    for metric in registry.collect():
        samples = metric.samples
        if metric.type in _NATIVE_TYPES and any(s.native_histogram for s in samples):
            # Rare and intricate: let prometheus_client write this family (without its EOF).
            text = openmetrics.generate_latest(_One(metric)).decode("utf-8")  # type: ignore[no-untyped-call]
            append(text[: -len("# EOF\n")])
            continue
        try:
            escaped = names.metric(metric.name)
            append(f"# HELP {escaped} {escape_label_value(metric.documentation)}\n")
            append(f"# TYPE {escaped} {metric.type}\n")
            if metric.unit:
                append(f"# UNIT {escaped} {metric.unit}\n")
            key = (True, metric.name)
            previous = _LAYOUTS.get(key)
            old = previous if previous is not None and len(previous) == len(samples) else None
            index = None
            new: list[_Entry] | None = None
            for i, s in enumerate(samples):
                name = s.name
                labels = s.labels
                value = s.value
                entry = old[i] if old is not None else None
                if entry is not None and entry[0] == name and entry[1] == labels:
                    start = entry[2]
                    last = entry[3]
                    if (
                        type(value) is type(last)
                        and value == last
                        and (value or _same_zero(value, last))
                    ):
                        text = entry[4]
                    else:
                        text = _om_value(value, ints)
                        if new is None:
                            new = list(old) if old is not None else [_NO_ENTRY] * len(samples)
                        new[i] = (name, entry[1], start, value, text)
                else:
                    if previous is not None and index is None:
                        index = _index(previous)
                    found = _find(index, name, labels) if index else None
                    if found is not None:
                        start = found[2]
                    else:
                        sample_name = names.om_sample(name)
                        if labels:
                            cached = labelsets.get(id(labels))
                            if cached is not None and cached[0] is labels:
                                start = f"{sample_name}{{{cached[1]}}} "
                            else:
                                start = f"{sample_name}{{{names.labels(labels)}}} "
                        else:
                            start = f"{sample_name} "
                    if found is not None and _same_value(value, found[3]):
                        text = found[4]
                    else:
                        text = _om_value(value, ints)
                    if new is None:
                        new = list(old) if old is not None else [_NO_ENTRY] * len(samples)
                    new[i] = (name, dict(labels), start, value, text)
                timestamp = s.timestamp
                exemplar = s.exemplar
                if timestamp is None and not exemplar:
                    append(f"{start}{text}\n")
                    continue
                stamp = "" if timestamp is None else f" {timestamp}"
                suffix = (
                    exemplar_suffix(metric.type, metric.name, name, exemplar) if exemplar else ""
                )
                append(f"{start}{text}{stamp}{suffix}\n")
            if new is not None:
                _store_layout(key, new)
        except Exception as exception:
            exception.args = (exception.args or ("",)) + (metric,)
            raise
    append("# EOF\n")
    return "".join(output).encode("utf-8")


def _om_value(value: Any, ints: dict[int, str]) -> str:
    return "" if value is None else _text_value(value, ints)


class _One:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> list[Metric]:
        return [self.metric]


def choose_encoder(accept_header: str) -> tuple[Encoder, str]:
    """prometheus_client's content negotiation, with the fast encoders where they apply."""
    encoder, content_type = text_format.choose_encoder(accept_header)
    if encoder is text_format.generate_latest:
        return generate_text, content_type
    if isinstance(encoder, functools.partial) and not encoder.args:
        options = encoder.keywords
        if encoder.func is text_format.generate_latest and options == {"escaping": UNDERSCORES}:
            return generate_text, content_type
        if encoder.func is openmetrics.generate_latest and options == {
            "escaping": UNDERSCORES,
            "version": "1.0.0",
        }:
            return generate_openmetrics, content_type
    return encoder, content_type
