"""Shared building blocks of the hpcobs dashboards (grafana-foundation-sdk builders).

Every dashboard has the same variables — `datasource` (Prometheus), `cluster`, `partition`,
`node` — and every query goes through `${datasource}`. The label filters below are the only
place that knows which labels each source carries:

- Slurm exporter and SLO metrics: `cluster`, `partition` (scraped from the exporters);
- node exporter metrics: `cluster`, `node` (target labels set in the scrape config);
- probe metrics (Pushgateway): `cluster`, `partition` (the probe's grouping key).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models.dashboard import DataSourceRef

SCHEMA_VERSION = 38  # Grafana 10.0 – 10.3; later releases migrate it on import
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label filters, by source of the metric.
SLURM = 'cluster=~"$cluster", partition=~"$partition"'
NODE = 'cluster=~"$cluster", node=~"$node"'
CLUSTER = 'cluster=~"$cluster"'
PROBE = 'cluster=~"$cluster", partition=~"$partition"'

# The `node` variable: the nodes with an hpcobs node exporter in the selected clusters (no
# metric maps nodes to partitions, so the partition selection does not narrow it).
NODE_QUERY = 'label_values(hpcobs_collector_up{cluster=~"$cluster"}, node)'

# Slurm node states that take a node out of service (hpcobs_slurm_nodes / node state label).
UNAVAILABLE_STATES = "down|drain|draining|fail"

Target = prom.Dataquery

BUILTIN_ANNOTATION: dict[str, Any] = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def query(
    expr: str, legend: str = "", *, instant: bool = False, table_format: bool = False
) -> Target:
    """One PromQL target on the dashboard's data source."""
    target = prom.Dataquery().expr(expr).datasource(DS)
    if legend:
        target = target.legend_format(legend)
    target = target.instant() if instant else target.range()
    if table_format:
        target = target.format(pm.PromQueryFormat.TABLE)
    return target


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


GREEN = thresholds((None, "green"))
ZERO_IS_GOOD = thresholds((None, "green"), (1, "red"))


def _last() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


Panel = TypeVar("Panel", stat.Panel, bargauge.Panel, timeseries.Panel, table.Panel)


def _panel(
    panel: Panel,
    title: str,
    description: str,
    targets: Sequence[Target],
    unit: str,
    width: int,
    height: int,
) -> Panel:
    """What every panel kind sets: title, description, data source, unit, size, targets."""
    panel = panel.title(title).description(description).datasource(DS).unit(unit)
    panel = panel.span(width).height(height)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def stat_panel(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str = "short",
    steps: db.ThresholdsConfig = GREEN,
    width: int = 6,
    height: int = 5,
    decimals: float | None = None,
    mappings: list[dm.ValueMapping] | None = None,
) -> stat.Panel:
    panel = (
        _panel(stat.Panel(), title, description, targets, unit, width, height)
        .thresholds(steps)
        .reduce_options(_last())
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.VALUE)
        .text_mode(cm.BigValueTextMode.AUTO)
        .orientation(cm.VizOrientation.AUTO)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    if mappings:
        panel = panel.mappings(mappings)
    return panel


def bar_panel(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str = "short",
    steps: db.ThresholdsConfig = GREEN,
    width: int = 12,
    height: int = 8,
    minimum: float | None = None,
    maximum: float | None = None,
) -> bargauge.Panel:
    panel = (
        _panel(bargauge.Panel(), title, description, targets, unit, width, height)
        .thresholds(steps)
        .reduce_options(_last())
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def ts_panel(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    bars: bool = False,
    stacked: bool = False,
    minimum: float | None = None,
) -> timeseries.Panel:
    panel = (
        _panel(timeseries.Panel(), title, description, targets, unit, width, height)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.RIGHT)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
        .fill_opacity(60 if bars else 10)
        .draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE)
    )
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if minimum is not None:
        panel = panel.min(minimum)
    return panel


def table_panel(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    hide: Sequence[str] = ("Time", "__name__", "job", "instance"),
    rename: dict[str, str] | None = None,
) -> table.Panel:
    """A table of instant queries, merged on their common labels (one row per label set)."""
    organize: dict[str, Any] = {
        "excludeByName": dict.fromkeys(hide, True),
        "renameByName": rename or {},
    }
    return (
        _panel(table.Panel(), title, description, targets, unit, width, height)
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(dm.DataTransformerConfig(id_val="organize", options=organize))
    )


def value_text(mapping: dict[str, tuple[str, str]]) -> dm.ValueMapping:
    """Exact values → (text, color)."""
    return dm.ValueMap(
        options={
            value: dm.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(mapping.items())
        }
    )


def range_text(low: float, high: float, text: str, color: str) -> dm.ValueMapping:
    return dm.RangeMap(
        options=dm.DashboardRangeMapOptions(
            from_val=low, to=high, result=dm.ValueMappingResult(text=text, color=color)
        )
    )


def variables(node_query: str) -> list[db.QueryVariable | db.DatasourceVariable]:
    """`datasource`, `cluster`, `partition`, `node`: the same on every hpcobs dashboard."""

    def label_var(
        name: str, label: str, definition: str, all_value: str | None
    ) -> db.QueryVariable:
        var = (
            db.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query(definition)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
            .multi(True)
            .include_all(True)
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
        if all_value is not None:
            var = var.all_value(all_value)
        return var

    return [
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text="default", value="default")),
        # `.*` as "All" also matches series without the label (e.g. ALERTS of SLO rules).
        label_var("cluster", "Cluster", "label_values(up, cluster)", ".*"),
        label_var(
            "partition",
            "Partition",
            'label_values(hpcobs_slurm_nodes{cluster=~"$cluster"}, partition)',
            ".*",
        ),
        label_var("node", "Node", node_query, ".*"),
    ]


def dashboard(
    uid: str,
    title: str,
    description: str,
    *,
    time_from: str,
    refresh: str,
    node_query: str,
    extra_variables: Sequence[db.QueryVariable] = (),
) -> db.Dashboard:
    board = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["hpcobs"])
        .editable()
        .timezone("browser")
        .time(time_from, "now")
        .refresh(refresh)
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            db.DashboardLink("hpcobs dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["hpcobs"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for var in [*variables(node_query), *extra_variables]:
        board = board.with_variable(var)
    return board


def render(board: db.Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana JSON: panel ids and query refIds assigned in order."""
    doc: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    doc["schemaVersion"] = SCHEMA_VERSION
    # Grafana iterates annotations.list on load: always give it one, with its built-in query.
    doc["annotations"] = {"list": [BUILTIN_ANNOTATION]}
    doc["id"] = None
    doc["version"] = 1
    for var in doc["templating"]["list"]:
        var.pop("id", None)  # the SDK writes a placeholder UUID; Grafana keys variables by name
        if var.get("type") == "query":
            var["definition"] = var["query"]
    next_id = 1
    for panel in _walk(doc["panels"]):
        panel["id"] = next_id
        next_id += 1
        for i, target in enumerate(panel.get("targets") or []):
            target["refId"] = chr(ord("A") + i)
        if panel.get("options") is None:
            panel.pop("options", None)
    return doc


def _walk(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_walk(panel.get("panels") or []))
    return out


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
