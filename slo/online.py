"""Checks of specs against a live server (`hpcobs-slo validate --prometheus.url`).

A latency SLI's threshold must be a bucket bound of its histogram: otherwise no `le`
series matches and every event would count as bad. Offline, `validate` can only check
bounds listed in the spec (`buckets:`); online it reads the `le` values the server has.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from hpcobs.slo.diagnostics import Problem
from hpcobs.slo.model import SLO, LatencySLI
from hpcobs.slo.promapi import PrometheusClient, QueryError
from hpcobs.slo.selector import Selector


def check_buckets(slos: Iterable[SLO], client: PrometheusClient) -> list[Problem]:
    problems = []
    now = time.time()
    for slo in slos:
        sli = slo.sli
        if not isinstance(sli, LatencySLI) or sli.source != "histogram":
            continue
        sel = Selector(f"{sli.metric}_bucket", sli.matchers).promql()
        try:
            samples = client.query(f"count by (le) ({sel})", now)
        except QueryError as exc:
            problems.append(
                Problem(
                    slo.file,
                    slo.line,
                    "error",
                    f"SLO {slo.id!r}: cannot query {sel}: {exc}",
                    "check --prometheus.url and that the server is up",
                )
            )
            continue
        bounds = []
        for s in samples:
            try:
                bounds.append(float(s.labels.get("le", "nan")))
            except ValueError:
                continue
        bounds = sorted(b for b in bounds if not math.isnan(b))
        if not bounds:
            problems.append(
                Problem(
                    slo.file,
                    slo.line,
                    "warning",
                    f"SLO {slo.id!r}: no series {sel} on the server; cannot check the threshold",
                    "check the histogram name and selector, or that the exporter is scraped",
                )
            )
        elif sli.threshold not in bounds:
            finite = [b for b in bounds if math.isfinite(b)] or bounds
            nearest = min(finite, key=lambda b: abs(b - sli.threshold))
            problems.append(
                Problem(
                    slo.file,
                    slo.line,
                    "error",
                    f"SLO {slo.id!r}: threshold {sli.threshold:g} is not a bucket bound of "
                    f"{sli.metric} (bounds: {', '.join(_bound(b) for b in bounds)})",
                    f"use a bucket bound, e.g. threshold: {nearest:g}",
                )
            )
        if sli.exceeded:
            problems.extend(_check_exceeded(slo, sli, client, now))
    return problems


def _check_exceeded(
    slo: SLO, sli: LatencySLI, client: PrometheusClient, now: float
) -> list[Problem]:
    assert sli.exceeded is not None
    sel = Selector(sli.exceeded, sli.matchers).promql()
    try:
        samples = client.query(f"count by (threshold) ({sel})", now)
    except QueryError:
        return []  # reported for the histogram already
    counted = set()
    for s in samples:
        try:
            counted.add(float(s.labels.get("threshold", "nan")))
        except ValueError:
            continue
    # No series at all is normal until the first job is late.
    if counted and sli.threshold not in counted:
        return [
            Problem(
                slo.file,
                slo.line,
                "error",
                f"SLO {slo.id!r}: {sli.exceeded} is counted for thresholds "
                f"{', '.join(f'{t:g}' for t in sorted(counted))}, not {sli.threshold:g}",
                f"add {sli.threshold:g}s to the exporter's --slurm.wait-thresholds",
            )
        ]
    return []


def _bound(value: float) -> str:
    return "+Inf" if value == math.inf else f"{value:g}"
