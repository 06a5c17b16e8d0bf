"""The Debug dashboard's fabric latency heatmaps against the probe's own metric.

The committed JSON (dashboards/hpcobs-debug.json, generated) must draw
`hpcobs_mpi_node_latency_seconds` as node × time heatmaps, and its queries, evaluated by
`promtool test rules` on the series one probe run exports, must give one row per node with
that node's figure. (tests/real/test_e2e.py runs every dashboard query against a real
Prometheus fed by a real probe run.)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.exporters.probe import metrics
from hpcobs.exporters.probe.model import PairResult, ProbeResult
from hpcobs.exporters.probe.stats import NODE_STATS, PairSummary, Summary, node_latencies
from hpcobs.exporters.probe.verdict import no_baseline

from harness.servers import find_binary

pytestmark = pytest.mark.unit

DEBUG = Path(__file__).resolve().parents[2] / "dashboards" / "hpcobs-debug.json"
HEATMAPS = {
    "Fabric latency per node (p50)": "p50",
    "Fabric latency per node, worst link (max)": "max",
}
SUBSTITUTIONS = {"${datasource}": "prometheus", "$cluster": ".*", "$partition": ".*"}


def heatmaps() -> dict[str, dict[str, Any]]:
    doc = json.loads(DEBUG.read_text())
    return {p["title"]: p for p in doc["panels"] if p["title"] in HEATMAPS}


def test_the_debug_board_draws_node_latency_as_node_by_time_heatmaps() -> None:
    panels = heatmaps()
    assert set(panels) == set(HEATMAPS)
    for title, panel in panels.items():
        assert panel["type"] == "heatmap", title
        options = panel["options"]
        # each series is a row (Grafana's heatmap on time series, no bucketing)
        assert options["calculate"] is False and options["rowsFrame"]["layout"] == "auto"
        assert options["color"]["mode"] == "scheme" and options["color"]["reverse"] is True
        assert options["cellValues"]["unit"] == "s" == panel["fieldConfig"]["defaults"]["unit"]
        [target] = panel["targets"]
        assert target["legendFormat"] == "{{node}}" and target["range"] is True
        assert "hpcobs_mpi_node_latency_seconds{" in target["expr"]
        assert f'stat="{HEATMAPS[title]}"' in target["expr"]
        assert HEATMAPS[title] in NODE_STATS


def probe_run(nodes: int) -> ProbeResult:
    """Every pair of `nodes` nodes measured; node003 slow."""
    names = [f"node{i:03d}" for i in range(nodes)]
    pairs = []
    for i in range(nodes):
        for j in range(i + 1, nodes):
            lat = (1e-6 + 1e-8 * (i + j)) * (50 if 3 in (i, j) else 1)
            summary = Summary(lat, lat, 2 * lat, 3 * lat)
            pairs.append(PairResult(names[i], names[j], i, j, summary, 1e9, 1 << 20, 9, summary, 0))
    return ProbeResult(
        ranks=nodes,
        identity_mode="host",
        rank_nodes=names,
        nodes=names,
        started_unix=0.0,
        finished_unix=1.0,
        budget_seconds=1.0,
        overhead_seconds={},
        overhead_per_rank={},
        pairs=pairs,
        node_latency=node_latencies(PairSummary(p.node_a, p.node_b, p.latency) for p in pairs),
    )


def test_the_heatmap_queries_give_one_row_per_node_with_its_figure(tmp_path: Path) -> None:
    """The series of one run, as the Pushgateway serves them (grouping key labels added),
    through each panel's query: one sample per node, the node's statistic."""
    result = probe_run(6)
    text = generate_latest(metrics.registry(result, no_baseline(), 5)).decode()
    grouping = {"job": "hpcobs_mpi_probe", "cluster": "c1", "partition": "debug"}
    input_series = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "hpcobs_mpi_node_latency_seconds":
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in {**sample.labels, **grouping}.items())
            input_series.append(
                {"series": f"{sample.name}{{{labels}}}", "values": f"{sample.value!r}x10"}
            )
    assert len(input_series) == 6 * len(NODE_STATS)
    tests = []
    for title, panel in heatmaps().items():
        expr = panel["targets"][0]["expr"]
        for var, value in SUBSTITUTIONS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        stat = HEATMAPS[title]
        tests.append(
            {
                "expr": expr,
                "eval_time": "5m",
                "exp_samples": [
                    {"labels": f'{{node="{node}"}}', "value": figures.stat(stat)}
                    for node, figures in result.node_latency.items()
                ],
            }
        )
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "promql_expr_test": tests}],
    }
    path = tmp_path / "heatmap-test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = subprocess.run(
        [find_binary("promtool"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the slow node is the hottest row of the p50 heatmap
    hottest = max(result.node_latency, key=lambda n: result.node_latency[n].p50)
    assert hottest == "node003"
