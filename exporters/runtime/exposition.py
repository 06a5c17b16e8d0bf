"""Text exposition (format 0.0.4 and OpenMetrics 1.0), byte for byte as prometheus_client's.

prometheus_client's encoders spend about 6 µs per sample (label-name validation by regular
expression, a character-by-character escape of every OpenMetrics sample name, sorting and
formatting every label set); for a node with a few hundred series that is most of a scrape.
These encoders produce the same bytes (tests/unit/test_runtime_exposition.py checks them
against prometheus_client on generated families) with, per encoding call,

- each distinct metric and sample name escaped once per call;
- each label set sorted, escaped and formatted once: a memo keyed by the label set's content
  serves the following scrapes (a node's series hardly change), and within a call a dict
  object shared by many samples is looked up once;

and hand anything unusual (native histograms, non-default escaping or versions) to
prometheus_client itself. `choose_encoder()` is prometheus_client's, with these swapped in
where they apply. The escaping is our own (exporters/runtime/escape.py): no private
prometheus_client name is used (their signatures change between releases). The bytes are
those of prometheus_client 0.26, the floor in pyproject.toml (older ones write exponents as
"e+010" and differ in name escaping and exemplar rules).
"""

from __future__ import annotations

import functools
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
        content = tuple(labels.items())
        try:
            text = _RENDERED.get(content)
        except TypeError:  # an unhashable label value: fails in _render as it would upstream
            return _render(content)
        if text is None:
            text = _render(content)
            if len(_RENDERED) >= _RENDERED_MAX:
                _RENDERED.clear()
            _RENDERED[content] = text
        self.labelsets[id(labels)] = (labels, text)
        return text


# Memo of rendered label sets by content, shared by all encodings: a node's series are the
# same from one scrape to the next, so each label set is sorted and escaped about once.
# Keyed by value (not identity), so it can never return another set's text; bounded.
_RENDERED: dict[tuple[tuple[str, str], ...], str] = {}
_RENDERED_MAX = 100_000


def _render(items: tuple[tuple[str, str], ...]) -> str:
    parts = []
    for key, value in sorted(items):
        parts.append(f'{escape_label_name(key)}="{escape_label_value(value)}"')
    return ",".join(parts)


_OM_SUFFIXES = ("_created", "_gsum", "_gcount")


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
            # The per-sample work, inlined: this loop is most of a scrape's encoding time.
            for s in metric.samples:
                name = s.name
                sample_name = metric_names.get(name)
                if sample_name is None:
                    sample_name = names.metric(name)
                labels = s.labels
                if labels:
                    entry = labelsets.get(id(labels))
                    if entry is not None and entry[0] is labels:
                        labelstr = "{" + entry[1] + "}"
                    else:
                        labelstr = "{" + names.labels(labels) + "}"
                else:
                    labelstr = ""
                value = s.value
                text: str | None
                if type(value) is int:
                    text = ints.get(value)
                    if text is None:
                        text = ints[value] = _int_to_go(value)
                else:
                    text = floatToGoString(value)  # type: ignore[no-untyped-call]
                timestamp = s.timestamp
                if timestamp is None:
                    line = f"{sample_name}{labelstr} {text}\n"
                else:
                    line = f"{sample_name}{labelstr} {text} {int(float(timestamp) * 1000):d}\n"
                suffix = special.get(name)
                if suffix is None:
                    append(line)
                else:  # OpenMetrics-only sample: a gauge of its own at the end
                    om_samples.setdefault(suffix, []).append(line)
        except Exception as exception:
            exception.args = (exception.args or ("",)) + (metric,)
            raise
        for suffix, lines in sorted(om_samples.items()):
            escaped = names.metric(metric.name + suffix)
            append(f"# HELP {escaped} {escape_help(metric.documentation)}\n")
            append(f"# TYPE {escaped} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")


def _int_to_go(value: int) -> str:
    """`floatToGoString(value)` for an int (its float is finite or float() raises the same)."""
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
    output: list[str] = []
    append = output.append
    for metric in registry.collect():
        if any(s.native_histogram for s in metric.samples):
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
            for s in metric.samples:
                labels = f"{{{names.labels(s.labels)}}}" if s.labels else ""
                exemplar = (
                    exemplar_suffix(metric.type, metric.name, s.name, s.exemplar)
                    if s.exemplar
                    else ""
                )
                timestamp = "" if s.timestamp is None else f" {s.timestamp}"
                value = names.value(s.value) if s.value is not None else ""
                append(f"{names.om_sample(s.name)}{labels} {value}{timestamp}{exemplar}\n")
        except Exception as exception:
            exception.args = (exception.args or ("",)) + (metric,)
            raise
    append("# EOF\n")
    return "".join(output).encode("utf-8")


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
