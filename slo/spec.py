"""hpcobs' own SLO spec format (`version: hpcobs.slo/v1`) → model.

    version: hpcobs.slo/v1
    service: slurm
    labels: {cluster: alpha}              # optional, on every SLO of the file
    slos:
      - id: job-success
        description: Jobs that do not fail because of the system
        objective: 99.5                   # percent
        period: 30d                       # rolling days (default 30d) or calendar-month
        labels: {tier: "1"}
        sli:
          ratio:                          # or latency: / weighted:
            bad: hpcobs_slurm_jobs_finished_total{cause="system"}
            total: hpcobs_slurm_jobs_finished_total
        alerting:
          page: true                      # SLOBurnRatePage (default true)
          ticket: true                    # SLOBurnRateTicket (default true)
          min_events: 10                  # or {1h: 10, 6h: 30}
          runbook_url: https://...        # overrides the generated one
        expand: {partition: [cpu, gpu]}   # optional: one SLO per value

`docs/slo.md` describes every field.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Literal

from hpcobs.slo.fields import LABEL_NAME, RESERVED_LABELS, SLO_ID, Reader
from hpcobs.slo.model import (
    ALERTS,
    SLI,
    SLO,
    WINDOWS_BY_NAME,
    Alerting,
    LatencySLI,
    RatioSLI,
    WeightedSLI,
)
from hpcobs.slo.selector import Matcher, Selector
from hpcobs.slo.yamlpos import PosDict, PosList

VERSION = "hpcobs.slo/v1"
DEFAULT_RESOURCE_METRIC = "hpcobs_slurm_job_resource_seconds_total"
DEFAULT_EXCEEDED_METRIC = "hpcobs_slurm_jobs_wait_exceeded_total"
DEFAULT_BAD_STATES = ("boot_fail", "node_fail")
SLURM_STATES = frozenset(
    {
        "completed",
        "failed",
        "timeout",
        "cancelled",
        "node_fail",
        "boot_fail",
        "out_of_memory",
        "preempted",
        "deadline",
    }
)
# hpcobs-slurm-exporter's defaults (--slurm.wait-thresholds, --slurm.wait-buckets; the
# thresholds are bucket bounds too), to check latency thresholds offline. A unit test keeps
# them in step with exporters/slurm/options.py.
SLURM_WAIT_THRESHOLDS = (3600.0, 14400.0, 86400.0)
SLURM_WAIT_BUCKETS = (
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    43200.0,
    86400.0,
    172800.0,
)
DEFAULT_BOUNDS: dict[str, tuple[float, ...]] = {
    "hpcobs_slurm_job_queue_wait_seconds": tuple(
        sorted(set(SLURM_WAIT_BUCKETS) | set(SLURM_WAIT_THRESHOLDS))
    ),
}
ALERT_LONG_WINDOWS = tuple(dict.fromkeys(c.long.name for a in ALERTS for c in a.conditions))

_TOP = {"version", "service", "description", "labels", "slos"}
_SLO = {"id", "description", "objective", "period", "labels", "sli", "alerting", "expand"}
_ALERTING = {"page", "ticket", "min_events", "runbook_url", "labels", "annotations"}


def parse_native(doc: PosDict, r: Reader) -> list[SLO]:
    """One hpcobs spec document → SLOs (problems go to the reader)."""
    version = doc.get("version")
    if version != VERSION:
        r.error(
            doc.line_of("version"),
            f"unsupported version {version!r}",
            f"write version: {VERSION}"
            + (
                " (Sloth specs are not read; see docs/slo.md)" if version == "prometheus/v1" else ""
            ),
        )
        return []
    r.keys(doc, "spec", _TOP, required=("version", "service", "slos"))
    service = r.string(doc, "service", "spec")
    if service is not None and not service.strip():
        r.error(doc.line_of("service"), "spec.service: empty", "name the service, e.g. slurm")
        service = None
    common_labels: tuple[tuple[str, str], ...] = ()
    if doc.get("labels") is not None:
        common_labels = r.labels(doc["labels"], "spec.labels", doc.line_of("labels")) or ()
    slos_raw = doc.get("slos")
    if slos_raw is None:
        return []
    items = r.sequence(slos_raw, "spec.slos", doc.line_of("slos"))
    if items is None:
        return []
    if not items:
        r.error(items.line, "spec.slos: empty list", "add at least one SLO")
    out: list[SLO] = []
    for i, raw in enumerate(items):
        out.extend(_parse_slo(raw, i, items, service, common_labels, r))
        if r.max_slos is not None and len(out) > r.max_slos:
            break  # the loader reports the limit
    return out


def _parse_slo(
    raw: Any,
    index: int,
    items: PosList,
    service: str | None,
    common_labels: tuple[tuple[str, str], ...],
    r: Reader,
) -> list[SLO]:
    where = f"slos[{index}]"
    m = r.mapping(raw, where, items.line_of(index))
    if m is None:
        return []
    complete = r.keys(m, where, _SLO, required=("id", "objective", "sli"))
    slo_id = r.string(m, "id", where)
    if slo_id is not None:
        where = f"slo {slo_id!r}"
        if not SLO_ID.match(slo_id):
            r.error(
                m.line_of("id"),
                f"{where}: invalid id",
                "use lower-case letters, digits, - and _ (at most 63, e.g. job-success)",
            )
            slo_id = None
    objective = (
        r.objective_percent(m["objective"], f"{where}.objective", m.line_of("objective"))
        if m.get("objective") is not None
        else None
    )
    period = r.period(m.get("period"), f"{where}.period", m.line_of("period"))
    description = r.string(m, "description", where) or ""
    labels = common_labels
    if m.get("labels") is not None:
        own = r.labels(m["labels"], f"{where}.labels", m.line_of("labels"))
        labels = tuple({**dict(common_labels), **dict(own or ())}.items())
    sli = _parse_sli(m.get("sli"), f"{where}.sli", m.line_of("sli"), r) if "sli" in m else None
    alerting = _parse_alerting(m.get("alerting"), f"{where}.alerting", m.line_of("alerting"), r)
    expansions = _parse_expand(m, where, r)
    if not complete or None in (slo_id, objective, period, sli, alerting, service, expansions):
        return []
    assert slo_id and objective and period and sli and alerting and service and expansions
    base = SLO(
        id=slo_id,
        service=service,
        objective=objective,
        sli=sli,
        period=period,
        description=description,
        labels=labels,
        alerting=alerting,
        file=r.file,
        line=m.line,
    )
    if expansions == [("", "")]:
        return [base]
    label = expansions[0][0]
    if label in dict(labels):
        r.error(
            m.line_of("expand"),
            f"{where}.expand: label {label!r} is also set in labels",
            "drop one",
        )
        return []
    out: list[SLO] = []
    for _, value in expansions:
        if r.max_slos is not None and len(out) > r.max_slos:
            break  # the loader reports the limit
        suffix = re.sub(r"[^a-z0-9_-]+", "-", value.lower()).strip("-")
        new_id = f"{slo_id}-{suffix}"
        if not SLO_ID.match(new_id):
            r.error(
                m.line_of("expand"),
                f"{where}.expand: value {value!r} gives the invalid id {new_id!r}",
                "shorten the id or the value",
            )
            continue
        out.append(
            replace(
                base,
                id=new_id,
                sli=_restrict(base.sli, Matcher(label, "=", value)),
                labels=(*labels, (label, value)),
                description=(
                    f"{base.description} ({label} {value})"
                    if base.description
                    else f"{label} {value}"
                ),
            )
        )
    return out


def _parse_expand(m: PosDict, where: str, r: Reader) -> list[tuple[str, str]] | None:
    raw = m.get("expand")
    if raw is None:
        return [("", "")]
    e = r.mapping(raw, f"{where}.expand", m.line_of("expand"))
    if e is None:
        return None
    if len(e) != 1:
        r.error(
            e.line,
            f"{where}.expand: expected exactly one label",
            "write expand: {partition: [cpu, gpu]}",
        )
        return None
    ((label, values),) = e.items()
    seq = r.sequence(values, f"{where}.expand.{label}", e.line_of(label))
    if seq is None:
        return None
    if not seq:
        r.error(e.line_of(label), f"{where}.expand.{label}: empty list", "list at least one value")
        return None
    if not LABEL_NAME.match(label) or label.startswith("__") or label in RESERVED_LABELS:
        r.error(
            e.line_of(label),
            f"{where}.expand: {label!r} cannot be used as a label",
            "expand on a label of the SLI's series, e.g. partition",
        )
        return None
    out = []
    for i, v in enumerate(seq):
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            r.error(seq.line_of(i), f"{where}.expand.{label}[{i}]: expected a string", "quote it")
            return None
        out.append((label, str(v)))
    if len(set(out)) != len(out):
        r.error(seq.line, f"{where}.expand.{label}: duplicate values", "list each value once")
        return None
    return out


def _restrict(sli: SLI, matcher: Matcher) -> SLI:
    """The SLI limited to series with `matcher` (for `expand`)."""
    if isinstance(sli, RatioSLI):

        def add(s: Selector | None) -> Selector | None:
            return s.with_matchers([matcher]) if s else None

        total = add(sli.total)
        assert total is not None
        return replace(sli, total=total, bad=add(sli.bad), good=add(sli.good))
    return replace(sli, matchers=(*sli.matchers, matcher))


def _parse_sli(raw: Any, where: str, line: int, r: Reader) -> SLI | None:
    m = r.mapping(raw, where, line)
    if m is None:
        return None
    kinds = [k for k in ("ratio", "latency", "weighted") if k in m]
    r.keys(m, where, {"ratio", "latency", "weighted"})
    if len(kinds) != 1:
        r.error(
            m.line,
            f"{where}: expected exactly one SLI kind, found {len(kinds)}",
            "write one of ratio:, latency: or weighted: under sli:",
        )
        return None
    kind = kinds[0]
    body = r.mapping(m[kind], f"{where}.{kind}", m.line_of(kind))
    if body is None:
        return None
    w = f"{where}.{kind}"
    if kind == "ratio":
        return parse_ratio(body, w, r)
    if kind == "latency":
        return _parse_latency(body, w, r)
    return _parse_weighted(body, w, r)


def parse_ratio(body: PosDict, where: str, r: Reader) -> RatioSLI | None:
    ok = r.keys(body, where, {"bad", "good", "total"}, required=("total",))
    if ("bad" in body) == ("good" in body):
        r.error(
            body.line,
            f"{where}: give exactly one of bad and good",
            "bad: counts failed events, good: counts successful ones; total: counts all",
        )
        return None
    total = r.selector(body, "total", where)
    bad = r.selector(body, "bad", where) if "bad" in body else None
    good = r.selector(body, "good", where) if "good" in body else None
    if not ok or total is None or (bad is None and good is None):
        return None
    for key, sel in (("bad", bad), ("good", good), ("total", total)):
        if sel is not None and not sel.metric.endswith("_total"):
            r.warning(
                body.line_of(key),
                f"{where}.{key}: {sel.metric} does not end in _total; is it a counter?",
                "SLIs count events with increase(); use a counter",
            )
    return RatioSLI(total=total, bad=bad, good=good)


def _parse_latency(body: PosDict, where: str, r: Reader) -> LatencySLI | None:
    ok = r.keys(
        body,
        where,
        {"histogram", "gauge", "threshold", "selector", "exceeded", "buckets"},
        required=("threshold",),
    )
    if ("histogram" in body) == ("gauge" in body):
        r.error(
            body.line,
            f"{where}: give exactly one of histogram and gauge",
            "histogram: a histogram's base name; gauge: a latency gauge sampled every minute",
        )
        return None
    source: Literal["histogram", "gauge"] = "histogram" if "histogram" in body else "gauge"
    metric = r.metric_name(body, source, where)
    if metric is not None and source == "histogram":
        for suffix in ("_bucket", "_count", "_sum"):
            if metric.endswith(suffix):
                r.error(
                    body.line_of("histogram"),
                    f"{where}.histogram: give the histogram's base name, not {metric!r}",
                    f"write {metric.removesuffix(suffix)}",
                )
                metric = None
                break
    threshold = r.number(body, "threshold", where) if "threshold" in body else None
    if threshold is not None and threshold <= 0:
        r.error(body.line_of("threshold"), f"{where}.threshold: must be positive", "e.g. 3600")
        threshold = None
    matchers = r.matchers(body, "selector", where)
    for key in ("exceeded", "buckets"):
        if source == "gauge" and key in body:
            r.error(body.line_of(key), f"{where}.{key}: only for histograms", f"remove {key}")
            return None
    exceeded = r.metric_name(body, "exceeded", where) if "exceeded" in body else None
    if "exceeded" in body and exceeded is None:
        return None
    buckets: tuple[float, ...] = ()
    if "buckets" in body:
        seq = r.sequence(body["buckets"], f"{where}.buckets", body.line_of("buckets"))
        if seq is None:
            return None
        for i, b in enumerate(seq):
            if isinstance(b, bool) or not isinstance(b, int | float):
                r.error(seq.line_of(i), f"{where}.buckets[{i}]: expected a number", "e.g. 3600")
                return None
        buckets = tuple(float(b) for b in seq)
    if buckets and threshold is not None and threshold not in buckets:
        nearest = min(buckets, key=lambda b: abs(b - threshold))
        r.error(
            body.line_of("threshold"),
            f"{where}.threshold: {threshold:g} is not a bucket bound of {metric or 'the histogram'}",
            f"use a bucket bound such as {nearest:g} (buckets: {', '.join(f'{b:g}' for b in buckets)})",
        )
        return None
    defaults = DEFAULT_BOUNDS.get(metric or "", ()) if source == "histogram" else ()
    if not buckets and defaults and threshold is not None and threshold not in defaults:
        r.warning(
            body.line_of("threshold"),
            f"{where}.threshold: {threshold:g} is not a default bucket bound of {metric}: "
            "unless the exporter was configured with it, no event will count as good",
            "add it to hpcobs-slurm-exporter's --slurm.wait-buckets and list your buckets under "
            "buckets:, or check with validate --prometheus.url",
        )
    if (
        exceeded == DEFAULT_EXCEEDED_METRIC
        and threshold is not None
        and threshold not in SLURM_WAIT_THRESHOLDS
    ):
        r.warning(
            body.line_of("threshold"),
            f"{where}.threshold: hpcobs-slurm-exporter counts {exceeded} only for its "
            f"--slurm.wait-thresholds (default {', '.join(f'{t:g}' for t in SLURM_WAIT_THRESHOLDS)})",
            f"add {threshold:g}s to --slurm.wait-thresholds, or no late job will count as bad",
        )
    if not ok or metric is None or threshold is None or matchers is None:
        return None
    return LatencySLI(
        metric=metric,
        threshold=threshold,
        matchers=tuple(matchers),
        exceeded=exceeded,
        buckets=buckets,
        source=source,
    )


def _parse_weighted(body: PosDict, where: str, r: Reader) -> WeightedSLI | None:
    ok = r.keys(body, where, {"metric", "resource", "bad_states", "selector"})
    metric = r.metric_name(body, "metric", where) if "metric" in body else DEFAULT_RESOURCE_METRIC
    resource = r.string(body, "resource", where)
    if resource is None and metric == DEFAULT_RESOURCE_METRIC:
        r.error(
            body.line,
            f"{where}: missing resource",
            "add resource: gpu (or cpu): GPU- and core-seconds must not be summed together",
        )
        ok = False
    states: tuple[str, ...] = DEFAULT_BAD_STATES
    if "bad_states" in body:
        seq = r.sequence(body["bad_states"], f"{where}.bad_states", body.line_of("bad_states"))
        if seq is None or not seq:
            if seq is not None:
                r.error(seq.line, f"{where}.bad_states: empty", "e.g. [node_fail, boot_fail]")
            return None
        parsed = []
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                r.error(
                    seq.line_of(i), f"{where}.bad_states[{i}]: expected a state name", "quote it"
                )
                return None
            if metric == DEFAULT_RESOURCE_METRIC and s not in SLURM_STATES:
                r.error(
                    seq.line_of(i),
                    f"{where}.bad_states[{i}]: unknown job state {s!r}",
                    f"states: {', '.join(sorted(SLURM_STATES))}",
                )
                return None
            parsed.append(s)
        states = tuple(parsed)
    matchers = r.matchers(body, "selector", where)
    if not ok or metric is None or matchers is None:
        return None
    return WeightedSLI(
        metric=metric, resource=resource, bad_states=states, matchers=tuple(matchers)
    )


def _parse_alerting(raw: Any, where: str, line: int, r: Reader) -> Alerting | None:
    if raw is None:
        return Alerting()
    m = r.mapping(raw, where, line)
    if m is None:
        return None
    ok = r.keys(m, where, _ALERTING)
    page = r.boolean(m, "page", where, True)
    ticket = r.boolean(m, "ticket", where, True)
    min_events = parse_min_events(
        m.get("min_events"), f"{where}.min_events", m.line_of("min_events"), r
    )
    runbook = r.string(m, "runbook_url", where)
    labels = r.labels(m["labels"], f"{where}.labels", m.line_of("labels")) if "labels" in m else ()
    annotations: tuple[tuple[str, str], ...] | None = ()
    if "annotations" in m:
        annotations = r.labels(
            m["annotations"], f"{where}.annotations", m.line_of("annotations"), allow_reserved=True
        )
        for key in dict(annotations or ()):
            if key in ("summary", "description", "runbook_url"):
                r.error(
                    m["annotations"].line_of(key),
                    f"{where}.annotations.{key}: generated by hpcobs",
                    "use alerting.runbook_url for the runbook; summary and description are fixed",
                )
                annotations = None
                break
    if not ok or min_events is None or labels is None or annotations is None:
        return None
    return Alerting(
        page=page,
        ticket=ticket,
        min_events=min_events,
        runbook_url=runbook,
        labels=labels,
        annotations=annotations,
    )


def parse_min_events(
    raw: Any, where: str, line: int, r: Reader
) -> tuple[tuple[str, int], ...] | None:
    """`min_events: 10` (each alert's long window) or `{1h: 10, 5m: 2}` (per window)."""
    if raw is None:
        return ()
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 0:
            r.error(line, f"{where}: must not be negative", "e.g. min_events: 10")
            return None
        return tuple((w, raw) for w in ALERT_LONG_WINDOWS) if raw else ()
    if isinstance(raw, PosDict):
        out = []
        for key, value in raw.items():
            if key not in WINDOWS_BY_NAME:
                r.error(
                    raw.line_of(key),
                    f"{where}: {key!r} is not an alert window",
                    f"windows: {', '.join(WINDOWS_BY_NAME)}",
                )
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                r.error(raw.line_of(key), f"{where}.{key}: expected a count", "e.g. 10")
                return None
            out.append((key, value))
        return tuple(out)
    r.error(line, f"{where}: expected a count or a mapping window: count", "e.g. min_events: 10")
    return None
