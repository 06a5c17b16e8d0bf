"""OpenSLO `v1` documents → model (ratio SLIs over Prometheus counters).

Read: `kind: SLO` (inline `indicator` or `indicatorRef`), `kind: SLI` (`ratioMetric` with
`counter: true`, `good` or `bad`, and `total`, each a Prometheus `metricSource` whose
`spec.query` is a counter selector), `kind: Service` (accepted; its name is the SLO's
service). One rolling window (`30d`, `4w`, ...) or the calendar month (`1M`,
`isRolling: false`), `budgetingMethod: Occurrences`, one objective (`target` or
`targetPercent`).

Everything else is rejected by name, with what to do instead: threshold and raw metrics,
time-slice budgeting, alert policies and conditions, data sources, composite objectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from hpcobs.slo.fields import SLO_ID, Reader
from hpcobs.slo.model import SLO, Period, RatioSLI
from hpcobs.slo.selector import SelectorError, parse_selector
from hpcobs.slo.yamlpos import PosDict

API_VERSION = "openslo/v1"
_UNSUPPORTED_KINDS = {
    "AlertPolicy": "hpcobs generates the SRE workbook's multiwindow burn-rate alerts itself "
    "(SLOBurnRatePage, SLOBurnRateTicket); remove the document",
    "AlertCondition": "hpcobs generates its burn-rate alerts itself; remove the document",
    "AlertNotificationTarget": "route alerts with Alertmanager instead; remove the document",
    "DataSource": "give the Prometheus URL to `hpcobs-slo serve --prometheus.url`; remove the document",
}
_SLO_UNSUPPORTED = {
    "alertPolicies": "hpcobs generates SLOBurnRatePage and SLOBurnRateTicket itself; remove it",
}
_OBJECTIVE_UNSUPPORTED = {
    "op": "threshold objectives are not supported; use a ratio SLI with target",
    "value": "threshold objectives are not supported; use a ratio SLI with target",
    "timeSliceTarget": "time-slice budgeting is not supported; use budgetingMethod: Occurrences",
    "timeSliceWindow": "time-slice budgeting is not supported; use budgetingMethod: Occurrences",
    "indicator": "composite SLOs are not supported; write one SLO per indicator",
    "indicatorRef": "composite SLOs are not supported; write one SLO per indicator",
    "compositeWeight": "composite SLOs are not supported; write one SLO per indicator",
}
_RATIO_UNSUPPORTED = {
    "raw": "raw (precomputed ratio) metrics are not supported; give good or bad, and total counters",
    "rawType": "raw (precomputed ratio) metrics are not supported; give good or bad, and total counters",
}
_SLI_UNSUPPORTED = {
    "thresholdMetric": "threshold metrics are not supported; use ratioMetric over counters "
    "(or hpcobs' own latency SLI for histograms)",
}


@dataclass
class OpenSLODoc:
    doc: PosDict
    reader: Reader


def is_openslo(doc: Any) -> bool:
    return isinstance(doc, PosDict) and "apiVersion" in doc


def parse_openslo(docs: list[OpenSLODoc]) -> list[SLO]:
    """All OpenSLO documents of all files at once (an `indicatorRef` may point anywhere)."""
    slis: dict[str, tuple[PosDict, Reader]] = {}
    slos: list[tuple[PosDict, Reader]] = []
    for item in docs:
        doc, r = item.doc, item.reader
        version = doc.get("apiVersion")
        if version != API_VERSION:
            r.error(
                doc.line_of("apiVersion"),
                f"unsupported apiVersion {version!r}",
                f"hpcobs reads OpenSLO {API_VERSION}; convert the document to it",
            )
            continue
        kind = doc.get("kind")
        if not isinstance(kind, str):
            r.error(
                doc.line_of("kind"), f"kind: expected a name, found {kind!r}", "write kind: SLO"
            )
            continue
        if kind in _UNSUPPORTED_KINDS:
            r.error(
                doc.line_of("kind"),
                f"OpenSLO kind {kind} is not supported",
                _UNSUPPORTED_KINDS[kind],
            )
            continue
        if kind not in ("SLO", "SLI", "Service"):
            r.error(
                doc.line_of("kind"),
                f"unknown OpenSLO kind {kind!r}",
                "hpcobs reads kinds SLO, SLI and Service",
            )
            continue
        r.keys(doc, kind, {"apiVersion", "kind", "metadata", "spec"}, required=("metadata", "spec"))
        meta = r.mapping(doc.get("metadata"), f"{kind}.metadata", doc.line_of("metadata"))
        if meta is None:
            continue
        name = r.string(meta, "name", f"{kind}.metadata")
        if name is None:
            r.error(meta.line, f"{kind}.metadata: missing name", "add name: my-slo")
            continue
        if kind == "SLI":
            if name in slis:
                r.error(meta.line_of("name"), f"SLI {name!r} defined twice", "rename one of them")
            slis[name] = (doc, r)
        elif kind == "SLO":
            slos.append((doc, r))
    # Every SLI document is checked once, whether or not an SLO refers to it.
    parsed: dict[str, RatioSLI | None] = {
        name: _sli_spec(doc.get("spec"), f"SLI {name!r}.spec", doc.line_of("spec"), r)
        for name, (doc, r) in slis.items()
    }
    out = []
    for doc, r in slos:
        slo = _slo(doc, r, parsed)
        if slo is not None:
            out.append(slo)
    return out


def _slo(doc: PosDict, r: Reader, slis: dict[str, RatioSLI | None]) -> SLO | None:
    meta = doc["metadata"]
    name = str(meta["name"])
    where = f"SLO {name!r}"
    ok = True
    if not SLO_ID.match(name):
        r.error(
            meta.line_of("name"),
            f"{where}: name is not usable as an SLO id",
            "use lower-case letters, digits, - and _ (no dots), at most 63",
        )
        ok = False
    r.keys(meta, f"{where}.metadata", {"name", "displayName", "labels", "annotations"})
    labels = _labels(meta, where, r)
    spec = r.mapping(doc.get("spec"), f"{where}.spec", doc.line_of("spec"))
    if spec is None:
        return None
    ok &= r.keys(
        spec,
        f"{where}.spec",
        {
            "description",
            "service",
            "indicator",
            "indicatorRef",
            "timeWindow",
            "budgetingMethod",
            "objectives",
        },
        required=("service", "timeWindow", "budgetingMethod", "objectives"),
        unsupported=_SLO_UNSUPPORTED,
    )
    service = r.string(spec, "service", f"{where}.spec")
    description = r.string(spec, "description", f"{where}.spec") or str(
        meta.get("displayName") or ""
    )
    method = spec.get("budgetingMethod")
    if method is not None and method != "Occurrences":
        r.error(
            spec.line_of("budgetingMethod"),
            f"{where}: budgetingMethod {method} is not supported",
            "use budgetingMethod: Occurrences (hpcobs counts events, every event weighs the same)",
        )
        ok = False
    period = _time_window(spec, where, r)
    objective = _objective(spec, where, r)
    sli = _indicator(spec, where, r, slis)
    if not ok or None in (service, period, objective, sli, labels):
        return None
    assert service and period and objective and sli and labels is not None
    return SLO(
        id=name,
        service=service,
        objective=objective,
        sli=sli,
        period=period,
        description=description,
        labels=labels,
        file=r.file,
        line=doc.line,
    )


def _labels(meta: PosDict, where: str, r: Reader) -> tuple[tuple[str, str], ...] | None:
    raw = meta.get("labels")
    if raw is None:
        return ()
    m = r.mapping(raw, f"{where}.metadata.labels", meta.line_of("labels"))
    if m is None:
        return None
    flat = {}
    for key, value in m.items():
        if isinstance(value, list):
            if len(value) != 1:
                r.error(
                    m.line_of(key),
                    f"{where}.metadata.labels.{key}: {len(value)} values",
                    "Prometheus labels hold one value: keep one",
                )
                return None
            value = value[0]
        flat[key] = value
    pos = PosDict(flat)
    pos.line, pos.key_lines, pos.duplicates = m.line, m.key_lines, []
    return r.labels(pos, f"{where}.metadata.labels", m.line)


def _time_window(spec: PosDict, where: str, r: Reader) -> Period | None:
    raw = spec.get("timeWindow")
    if raw is None:
        return None
    seq = r.sequence(raw, f"{where}.timeWindow", spec.line_of("timeWindow"))
    if seq is None:
        return None
    if len(seq) != 1:
        r.error(seq.line, f"{where}.timeWindow: expected one window, found {len(seq)}", "keep one")
        return None
    tw = r.mapping(seq[0], f"{where}.timeWindow[0]", seq.line_of(0))
    if tw is None:
        return None
    r.keys(
        tw, f"{where}.timeWindow[0]", {"duration", "isRolling", "calendar"}, required=("duration",)
    )
    duration = str(tw.get("duration", ""))
    rolling = tw.get("isRolling", True) if "calendar" not in tw else tw.get("isRolling", False)
    if rolling is not True:
        cal = tw.get("calendar")
        if duration != "1M":
            r.error(
                tw.line_of("duration"),
                f"{where}.timeWindow: calendar window {duration!r} is not supported",
                "use duration: 1M (calendar month, UTC) or a rolling window (isRolling: true)",
            )
            return None
        if isinstance(cal, PosDict) and str(cal.get("timeZone", "UTC")) not in ("UTC", "Etc/UTC"):
            r.error(
                cal.line_of("timeZone"),
                f"{where}.timeWindow.calendar.timeZone {cal.get('timeZone')!r} is not supported",
                "calendar months are UTC in hpcobs: use timeZone: UTC",
            )
            return None
        return Period("calendar_month")
    return r.period(duration, f"{where}.timeWindow[0].duration", tw.line_of("duration"))


def _objective(spec: PosDict, where: str, r: Reader) -> Decimal | None:
    raw = spec.get("objectives")
    if raw is None:
        return None
    seq = r.sequence(raw, f"{where}.objectives", spec.line_of("objectives"))
    if seq is None:
        return None
    if len(seq) != 1:
        r.error(
            seq.line,
            f"{where}.objectives: {len(seq)} objectives",
            "hpcobs supports one objective per SLO: write one SLO per objective",
        )
        return None
    o = r.mapping(seq[0], f"{where}.objectives[0]", seq.line_of(0))
    if o is None:
        return None
    r.keys(
        o,
        f"{where}.objectives[0]",
        {"displayName", "target", "targetPercent"},
        unsupported=_OBJECTIVE_UNSUPPORTED,
    )
    if ("target" in o) == ("targetPercent" in o):
        r.error(
            o.line,
            f"{where}.objectives[0]: give one of target and targetPercent",
            "e.g. target: 0.99",
        )
        return None
    if "targetPercent" in o:
        return r.objective_percent(
            o["targetPercent"], f"{where}.objectives[0].targetPercent", o.line_of("targetPercent")
        )
    value = o["target"]
    try:
        target = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        target = Decimal("NaN")
    if isinstance(value, bool) or not target.is_finite() or not Decimal(0) < target < Decimal(1):
        r.error(
            o.line_of("target"),
            f"{where}.objectives[0].target: {value!r} is not in (0, 1)",
            "target is a ratio, e.g. 0.99 (or use targetPercent: 99)",
        )
        return None
    return target


def _indicator(
    spec: PosDict, where: str, r: Reader, slis: dict[str, RatioSLI | None]
) -> RatioSLI | None:
    if ("indicator" in spec) == ("indicatorRef" in spec):
        r.error(
            spec.line,
            f"{where}: give one of indicator and indicatorRef",
            "inline the SLI under indicator:",
        )
        return None
    if "indicatorRef" in spec:
        ref = str(spec["indicatorRef"])
        if ref not in slis:
            r.error(
                spec.line_of("indicatorRef"),
                f"{where}: indicatorRef {ref!r} names no SLI document",
                "add a kind: SLI document with that metadata.name to the spec files given",
            )
            return None
        return slis[ref]  # its problems, if any, are reported with the SLI document
    ind = r.mapping(spec["indicator"], f"{where}.indicator", spec.line_of("indicator"))
    if ind is None:
        return None
    r.keys(ind, f"{where}.indicator", {"metadata", "spec"}, required=("spec",))
    return _sli_spec(ind.get("spec"), f"{where}.indicator.spec", ind.line_of("spec"), r)


def _sli_spec(raw: Any, where: str, line: int, r: Reader) -> RatioSLI | None:
    spec = r.mapping(raw, where, line)
    if spec is None:
        return None
    r.keys(spec, where, {"description", "ratioMetric"}, unsupported=_SLI_UNSUPPORTED)
    if "ratioMetric" not in spec:
        if "thresholdMetric" not in spec:
            r.error(
                spec.line,
                f"{where}: missing ratioMetric",
                "add ratioMetric: with good/bad and total",
            )
        return None
    rm = r.mapping(spec["ratioMetric"], f"{where}.ratioMetric", spec.line_of("ratioMetric"))
    if rm is None:
        return None
    w = f"{where}.ratioMetric"
    ok = r.keys(
        rm,
        w,
        {"counter", "good", "bad", "total"},
        required=("total",),
        unsupported=_RATIO_UNSUPPORTED,
    )
    if rm.get("counter", True) is not True:
        r.error(
            rm.line_of("counter"),
            f"{w}.counter: false is not supported",
            "hpcobs counts events with increase(): point good/bad/total at counters and set counter: true",
        )
        return None
    if ("good" in rm) == ("bad" in rm):
        r.error(
            rm.line,
            f"{w}: give exactly one of good and bad",
            "bad: failed events; total: all events",
        )
        return None
    sels = {}
    for key in ("good", "bad", "total"):
        if key in rm:
            sels[key] = _metric_source(rm[key], f"{w}.{key}", rm.line_of(key), r)
    if not ok or None in sels.values():
        return None
    total = sels["total"]
    assert total is not None
    return RatioSLI(total=total, good=sels.get("good"), bad=sels.get("bad"))


def _metric_source(raw: Any, where: str, line: int, r: Reader) -> Any:
    m = r.mapping(raw, where, line)
    if m is None:
        return None
    r.keys(m, where, {"metricSource"}, required=("metricSource",))
    src = r.mapping(m.get("metricSource"), f"{where}.metricSource", m.line_of("metricSource"))
    if src is None:
        return None
    r.keys(
        src,
        f"{where}.metricSource",
        {"type", "spec"},
        required=("type", "spec"),
        unsupported={
            "metricSourceRef": "DataSource documents are not supported; give type: Prometheus and spec.query"
        },
    )
    if src.get("type") != "Prometheus":
        if "type" in src:
            r.error(
                src.line_of("type"),
                f"{where}.metricSource.type {src.get('type')!r} is not supported",
                "hpcobs reads Prometheus (and Prometheus-API-compatible) sources: type: Prometheus",
            )
        return None
    s = r.mapping(src.get("spec"), f"{where}.metricSource.spec", src.line_of("spec"))
    if s is None:
        return None
    r.keys(s, f"{where}.metricSource.spec", {"query"}, required=("query",))
    query = r.string(s, "query", f"{where}.metricSource.spec")
    if query is None:
        return None
    try:
        return parse_selector(query)
    except SelectorError as exc:
        r.error(s.line_of("query"), f"{where}.metricSource.spec.query: {exc}", exc.hint)
        return None
