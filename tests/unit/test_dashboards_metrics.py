"""The metric names used by the dashboards and the alert rules, against the code's catalogue.

`dashboards/metrics_used.py` lists every `hpcobs_*` metric the dashboards and alerts use; this
test checks that table against the generated JSON and the rule files, and the table against
`hpcobs.exporters.runtime.catalog.catalog()` (every module's `METRICS`), so a renamed or
missing metric shows up here by name instead of as an empty panel or an alert that never fires.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcobs.exporters.runtime.catalog import catalog

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "dashboards"))

from metrics_used import METRICS_USED, PUSHED_LABELS, TARGET_LABELS  # noqa: E402

_NAME = re.compile(r"\bhpcobs_[a-z0-9_]*[a-z0-9]\b")
_SELECTOR = re.compile(r"\b(hpcobs_[a-z0-9_]*[a-z0-9])\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard_exprs() -> dict[str, list[str]]:
    """Dashboard file → every PromQL text in it (panel targets and variable queries)."""
    out: dict[str, list[str]] = {}
    for path in sorted((REPO / "dashboards").glob("hpcobs-*.json")):
        doc = json.loads(path.read_text())
        exprs = [str(v["query"]) for v in doc["templating"]["list"] if v.get("type") == "query"]

        stack = list(doc["panels"])
        while stack:
            panel = stack.pop(0)
            exprs.extend(t["expr"] for t in panel.get("targets") or [] if "expr" in t)
            stack.extend(panel.get("panels") or [])
        out[path.name] = exprs
    return out


def alert_exprs() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted((REPO / "alerts").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict) or "groups" not in doc:
            continue  # alertmanager.yml
        out[path.name] = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    return out


def base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in METRICS_USED:
            return name[: -len(suffix)]
    return name


def used_names() -> dict[str, set[str]]:
    """Metric → the files that use it."""
    where: dict[str, set[str]] = {}
    for source in (dashboard_exprs(), alert_exprs()):
        for file, exprs in source.items():
            for expr in exprs:
                for name in _NAME.findall(expr):
                    where.setdefault(base_name(name), set()).add(file)
    return where


def test_sources_are_found() -> None:
    assert set(dashboard_exprs()) == {
        "hpcobs-executive.json",
        "hpcobs-oncall.json",
        "hpcobs-debug.json",
    }
    assert "hpcobs-alerts.yml" in alert_exprs()


def test_table_lists_exactly_the_metrics_used() -> None:
    used = used_names()
    unlisted = sorted(set(used) - set(METRICS_USED))
    unused = sorted(set(METRICS_USED) - set(used))
    assert not unlisted and not unused, (
        "dashboards/metrics_used.py is out of date:\n"
        + "".join(
            f"  used but not listed: {n} (in {', '.join(sorted(used[n]))})\n" for n in unlisted
        )
        + "".join(f"  listed but not used: {n}\n" for n in unused)
    )


def declared() -> dict[str, Any]:
    return {entry.metric.name: entry for entry in catalog()}


def test_every_metric_used_is_declared_in_the_code() -> None:
    known = declared()
    missing = sorted(name for name in METRICS_USED if name not in known)
    assert not missing, (
        f"{len(missing)} metric(s) used by dashboards/alerts but declared in no module's "
        "METRICS:\n" + "".join(f"  {n}: {METRICS_USED[n]}\n" for n in missing)
    )


def test_matcher_labels_exist_on_declared_metrics() -> None:
    """Labels matched in `metric{label=…}` selectors are the metric's own or target labels."""
    known = declared()
    problems = []
    for source in (dashboard_exprs(), alert_exprs()):
        for file, exprs in source.items():
            for expr in exprs:
                for name, matchers in _SELECTOR.findall(expr):
                    base = base_name(name)
                    entry = known.get(base)
                    if entry is None:
                        continue  # reported by the catalogue test
                    allowed = set(entry.metric.labels) | TARGET_LABELS
                    if base.startswith("hpcobs_mpi_"):
                        allowed |= PUSHED_LABELS
                    if base != name:
                        allowed.add("le")
                    for label in _MATCHER.findall(matchers):
                        if label not in allowed:
                            problems.append(f"{file}: {name}{{{label}…}}: no label {label!r}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_extraction_sees_histogram_and_selector_forms() -> None:
    """The regexes behind these checks find names in the forms the queries use."""
    expr = 'histogram_quantile(0.5, sum by (le) (rate(hpcobs_slurm_job_queue_wait_seconds_bucket{partition=~"$p"}[5m])))'
    assert [base_name(n) for n in _NAME.findall(expr)] == ["hpcobs_slurm_job_queue_wait_seconds"]
    assert _SELECTOR.findall(expr) == [
        ("hpcobs_slurm_job_queue_wait_seconds_bucket", 'partition=~"$p"')
    ]
    assert _MATCHER.findall('a="1", b!~"x|y"') == ["a", "b"]
