"""The catalogue of every metric hpcobs exports, gathered from the modules' `METRICS` tuples.

`docs/metrics.md` is rendered from it (`make docs`), and a test checks the committed file
against the code, so the reference cannot drift.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from hpcobs.exporters.runtime.metricdef import MetricDef

PACKAGES = ("hpcobs.exporters", "hpcobs.slo")


@dataclass(frozen=True)
class Entry:
    module: str
    metric: MetricDef


def modules() -> list[str]:
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                names.append(info.name)
    return sorted(names)


def catalog() -> list[Entry]:
    """Every declared metric once, attributed to the module that defines it."""
    seen: dict[str, Entry] = {}
    for name in modules():
        module = importlib.import_module(name)
        for metric in getattr(module, "METRICS", ()):
            if not isinstance(metric, MetricDef):
                raise TypeError(f"{name}.METRICS holds {metric!r}, not a MetricDef")
            known = seen.get(metric.name)
            if known is None:
                seen[metric.name] = Entry(name, metric)
            elif known.metric != metric:
                raise ValueError(
                    f"{metric.name} is declared differently in {known.module} and {name}"
                )
    return sorted(seen.values(), key=lambda e: (e.module, e.metric.name))


def render_markdown() -> str:
    lines = [
        "# Metrics reference",
        "",
        "Generated from the code (`make docs`; every module's `METRICS`). Do not edit by hand:",
        "a test compares this file with the code.",
        "",
    ]
    current = None
    for entry in catalog():
        if entry.module != current:
            current = entry.module
            lines += [
                "",
                f"## `{current}`",
                "",
                "| metric | type | labels | description |",
                "|---|---|---|---|",
            ]
        m = entry.metric
        labels = ", ".join(f"`{label}`" for label in m.labels) or "–"
        description = m.help.replace("|", "\\|")
        lines.append(f"| `{m.name}` | {m.kind} | {labels} | {description} |")
    return "\n".join(lines) + "\n"
