"""Name, label-value and exemplar escaping of the text expositions, in our own code.

What prometheus_client (0.23 and later) writes with its default `underscores` escaping, the
one a scraper gets unless it asks for another: a metric or label name outside the legacy
character set has each offending character replaced by `_` (never quoted); label values and
help texts are backslash-escaped. prometheus_client keeps these helpers private
(`openmetrics._escape`, `_is_legacy_labelname_rune`, `_compose_exemplar_string`, the
validation module's `_is_valid_legacy_*`), so they are written out here; the hypothesis test
tests/unit/test_runtime_exposition.py checks the result against prometheus_client's public
`generate_latest` encoders.
"""

from __future__ import annotations

import re
from typing import Any

from prometheus_client.utils import floatToGoString

# The `escaping` parameter of an Accept header / prometheus_client's `escaping=` argument
# that these encoders implement (prometheus_client's default).
UNDERSCORES = "underscores"

# prometheus_client's own patterns, `re.match` with `$` included: a name ending in "\n"
# counts as legacy and is written as it is, as upstream does.
_LEGACY_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABEL_NAME = re.compile(r"^__.*$")


def _is_label_rune(char: str, index: int) -> bool:
    return (
        "a" <= char <= "z"
        or "A" <= char <= "Z"
        or char == "_"
        or ("0" <= char <= "9" and index > 0)
    )


def _is_metric_rune(char: str, index: int) -> bool:
    return char == ":" or _is_label_rune(char, index)


def underscore_label_runes(name: str) -> str:
    """Every character outside `[a-zA-Z_]` (digits past the first) replaced by `_`.

    prometheus_client applies this to OpenMetrics *sample* names (so `:` becomes `_` there,
    though not in the family's HELP/TYPE lines).
    """
    return "".join(c if _is_label_rune(c, i) else "_" for i, c in enumerate(name))


def escape_metric_name(name: str) -> str:
    """A metric name as written with `underscores` escaping."""
    if not name or _LEGACY_METRIC_NAME.match(name):
        return name
    return "".join(c if _is_metric_rune(c, i) else "_" for i, c in enumerate(name))


def escape_label_name(name: str) -> str:
    """A label name as written with `underscores` escaping."""
    if not name:
        return name
    if _LEGACY_LABEL_NAME.match(name) and not _RESERVED_LABEL_NAME.match(name):
        return name
    return underscore_label_runes(name)


def escape_label_value(value: str) -> str:
    """A label value (or OpenMetrics help text) with `\\`, newline and `"` escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(text: str) -> str:
    """A help text in format 0.0.4: `\\` and newline escaped (quotes are not)."""
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _exemplar_allowed(metric_type: str, metric_name: str, sample_name: str) -> bool:
    if metric_type == "counter":
        return sample_name.endswith("_total")
    if metric_type == "gaugehistogram":
        return sample_name.endswith("_bucket")
    if metric_type == "histogram":
        return sample_name.endswith("_bucket") or sample_name == metric_name
    return False


def exemplar_suffix(metric_type: str, metric_name: str, sample_name: str, exemplar: Any) -> str:
    """` # {labels} value [timestamp]` for a sample's exemplar (OpenMetrics).

    Raises ValueError where OpenMetrics allows no exemplar (only counters' `_total`,
    histogram buckets and a native histogram's own sample carry them). Exemplar label names
    are written as they are, as prometheus_client does.
    """
    if not _exemplar_allowed(metric_type, metric_name, sample_name):
        raise ValueError(
            f"Metric {metric_name} has exemplars, but is not a histogram bucket or counter"
        )
    labels = ",".join(
        f'{key}="{escape_label_value(value)}"' for key, value in sorted(exemplar.labels.items())
    )
    value: str = floatToGoString(exemplar.value)  # type: ignore[no-untyped-call]
    if exemplar.timestamp is not None:
        return f" # {{{labels}}} {value} {exemplar.timestamp}"
    return f" # {{{labels}}} {value}"
