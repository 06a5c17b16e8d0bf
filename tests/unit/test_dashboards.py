"""The Grafana dashboards: committed JSON up to date, structure, valid PromQL, the cost query.

PromQL validity and the cost query's arithmetic are checked with `promtool` (a local binary:
`check rules` parses every query; `test rules` evaluates the cost query on series written here).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.servers import find_binary

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
sys.path.insert(0, str(DASHBOARDS))

import generate  # noqa: E402
from panels import to_json  # noqa: E402
from prices import (  # noqa: E402
    PriceError,
    account_cost_expr,
    cost_per_success_expr,
    parse_prices,
    total_cost_expr,
)

UIDS = {
    "hpcobs-executive.json": "hpcobs-executive",
    "hpcobs-oncall.json": "hpcobs-oncall",
    "hpcobs-debug.json": "hpcobs-debug",
}
# The panels the users asked for (issue 9), by dashboard: each must exist by this title.
REQUIRED_PANELS = {
    "hpcobs-executive.json": [
        "Job success rate",
        "SLO error budget remaining",
        "GPU-hours used",
        "GPU-hours lost",
        "Queue wait p50 / p95 per partition",
        "Cost per successful job",
        "Cost per successful job by partition",
        # issue 17
        "Total spend",
        "Spend by account (top 10)",
        "Time to result p50 / p95 per partition",
        "Make-span p50 / p95 per partition",
    ],
    "hpcobs-oncall.json": [
        "Firing SLO alerts",
        "Failed jobs by cause",
        "Down and drained nodes",
        "GPUs lost",
        "XID errors in the period",
        "RDMA ports not ACTIVE",
        "Link flaps in the period",
        "Lustre targets not FULL",
        "Latest probe verdict",
        # issue 17
        "Pending jobs by reason",
        "Recent failed jobs",
        "Preemptions and requeues",
        "Nodes in maintenance",
    ],
    "hpcobs-debug.json": [
        "GPU utilization per node",
        "RDMA error counters",
        "Lustre throughput per OST",
        "Lustre latency per OST (p99)",
        "Per-job GPU and I/O attribution",
        "Collective latency by size (p50)",
        "Scheduler cycle times",
        # issue 17
        "Scheduler events (per minute)",
        "Pending seconds by reason",
    ],
}
# What Grafana substitutes for the variables when every option is selected, and a range.
SUBSTITUTIONS = {
    "${datasource}": "prometheus",
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$cluster": ".*",
    "$partition": ".*",
    "$node": ".*",
    "$op": ".*",
}


def committed() -> dict[str, dict[str, Any]]:
    return {name: json.loads((DASHBOARDS / name).read_text()) for name in UIDS}


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    stack = list(doc["panels"])
    while stack:
        panel = stack.pop(0)
        out.append(panel)
        stack.extend(panel.get("panels") or [])
    return out


def substitute(expr: str) -> str:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


# ---------------------------------------------------------------------------- generation


def test_committed_json_is_up_to_date() -> None:
    generated = generate.dashboards()
    assert set(generated) == set(UIDS)
    stale = [
        name for name, doc in generated.items() if (DASHBOARDS / name).read_text() != to_json(doc)
    ]
    assert not stale, f"stale dashboards {stale}: run `python dashboards/generate.py` and commit"


def test_generator_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    for name in UIDS:
        shutil.copy(DASHBOARDS / name, tmp_path / name)
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "hpcobs-debug.json").write_text("{}\n")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    assert generate.main(["--out", str(tmp_path)]) == 0  # regenerates
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0


def test_generator_runs_as_a_script(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(DASHBOARDS / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(UIDS)


# ---------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", sorted(UIDS))
def test_dashboard_structure(name: str) -> None:
    doc = committed()[name]
    assert doc["uid"] == UIDS[name]
    assert 36 <= doc["schemaVersion"] <= 38, "import must work into Grafana 10.0 and later"
    assert doc["title"].startswith("hpcobs / ")
    assert isinstance(doc["annotations"]["list"], list)  # Grafana iterates it on load
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"datasource", "cluster", "partition", "node"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in ("cluster", "partition", "node"):
        assert variables[var]["type"] == "query"
        assert variables[var]["datasource"]["uid"] == "${datasource}"
        assert variables[var]["query"].startswith("label_values(")
        assert variables[var]["includeAll"] and variables[var]["multi"]

    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in panels(doc):
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel.get("targets"), f"{name}: panel {title!r} has no targets"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)) and all(ref_ids), title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", title
            assert target["expr"].strip(), title
        assert panel.get("description"), f"{name}: panel {title!r} has no description"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panels_do_not_overlap(name: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in committed()[name]["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_required_panels_exist(name: str) -> None:
    titles = {p["title"] for p in panels(committed()[name])}
    missing = [t for t in REQUIRED_PANELS[name] if t not in titles]
    assert not missing, f"{name}: missing panels {missing}"


def test_uids_are_unique_across_dashboards() -> None:
    uids = [doc["uid"] for doc in committed().values()]
    assert len(uids) == len(set(uids))


# ---------------------------------------------------------------------------- PromQL


def all_queries() -> list[tuple[str, str, str]]:
    out = []
    for name, doc in committed().items():
        for var in doc["templating"]["list"]:
            if var["type"] == "query":
                match = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"])
                assert match, var["query"]
                out.append((name, f"variable {var['name']}", match.group(1)))
        for panel in panels(doc):
            for target in panel.get("targets") or []:
                out.append((name, f"{panel['title']} / {target['refId']}", target["expr"]))
    return out


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query (variables substituted as Grafana would) parses in promtool check rules."""
    queries = all_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": substitute(expr)}
                    for i, (_, _, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    proc = subprocess.run(
        [find_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        bad = re.findall(r"group \"dashboard-queries\", rule (\d+)", proc.stdout + proc.stderr)
        where = [f"{queries[int(i) - 1][0]}: {queries[int(i) - 1][1]}" for i in bad]
        pytest.fail(f"invalid PromQL ({where}):\n{proc.stdout}\n{proc.stderr}")
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout


def test_promql_check_catches_a_bad_query(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r", "expr": "sum(("}]}]})
    )
    proc = subprocess.run(
        [find_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0


# ---------------------------------------------------------------------------- cost


PRICES = """
currency: USD
default: {cpu: 0.02, gpu: 1.8}
partitions:
  gpu: {cpu: 0.0, gpu: 2.4}
  cpu: {cpu: 0.015}
  gpu-big.v2: {gpu: 9.0}
"""


def test_cost_per_successful_job_evaluates_to_the_hand_computed_value(tmp_path: Path) -> None:
    """Over the last hour: resource-hours × price per partition / COMPLETED jobs.

    gpu:   10 GPU-hours × 2.40 + 100 core-hours × 0      = 24.00 over 4 completed  = 6.00
    cpu:  200 core-hours × 0.015                         =  3.00 over 6 completed  = 0.50
    other (default): 2 GPU-h × 1.80 + 50 core-h × 0.02   =  4.60 over 2 completed  = 2.30
    all:  (24 + 3 + 4.6) / 12                             = 2.6333…
    Failed jobs (state failed) add cost, not successes.
    """
    prices = parse_prices(PRICES)
    sel = 'cluster=~".*", partition=~".*"'
    by_partition = cost_per_success_expr(prices, sel, "1h", True)
    overall = cost_per_success_expr(prices, sel, "1h", False)

    def seconds_per_min(hours: float) -> str:  # a counter growing linearly over the hour
        return f"0+{hours * 3600 / 60:g}x60"

    resource = "hpcobs_slurm_job_resource_seconds_total"
    finished = "hpcobs_slurm_jobs_finished_total"
    series = [
        (f'{resource}{{cluster="c",partition="gpu",state="completed",resource="gpu"}}', 8),
        (f'{resource}{{cluster="c",partition="gpu",state="failed",resource="gpu"}}', 2),
        (f'{resource}{{cluster="c",partition="gpu",state="completed",resource="cpu"}}', 100),
        (f'{resource}{{cluster="c",partition="cpu",state="completed",resource="cpu"}}', 200),
        (f'{resource}{{cluster="c",partition="other",state="completed",resource="gpu"}}', 2),
        (f'{resource}{{cluster="c",partition="other",state="completed",resource="cpu"}}', 50),
    ]
    jobs = [
        (f'{finished}{{cluster="c",partition="gpu",state="completed",cause="none"}}', 4),
        (f'{finished}{{cluster="c",partition="gpu",state="failed",cause="user"}}', 3),
        (f'{finished}{{cluster="c",partition="cpu",state="completed",cause="none"}}', 6),
        (f'{finished}{{cluster="c",partition="other",state="completed",cause="none"}}', 2),
    ]
    input_series = [{"series": s, "values": seconds_per_min(h)} for s, h in series]
    input_series += [{"series": s, "values": f"0+{n / 60!r}x60"} for s, n in jobs]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "promql_expr_test": [
                    {
                        "expr": f"round({by_partition}, 0.0001)",
                        "eval_time": "60m",
                        "exp_samples": [
                            {"labels": '{partition="gpu"}', "value": 6.0},
                            {"labels": '{partition="cpu"}', "value": 0.5},
                            {"labels": '{partition="other"}', "value": 2.3},
                        ],
                    },
                    {
                        "expr": f"round({overall}, 0.0001)",
                        "eval_time": "60m",
                        "exp_samples": [{"labels": "{}", "value": 2.6333}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "cost-test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    proc = subprocess.run(
        [find_binary("promtool"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_spend_total_and_by_account_evaluate_to_the_hand_computed_values(tmp_path: Path) -> None:
    """Over the last hour, with the price table above:

    by partition: gpu 10 GPU-h x 2.40 = 24 (its 100 core-h cost 0); cpu 200 core-h x 0.015
    = 3; other 2 GPU-h x 1.80 + 50 core-h x 0.02 = 4.6: total 31.6.
    Per resource over all partitions: GPU 27.6 for 12 GPU-h = 2.30 per GPU-hour, CPU 4.0 for
    350 core-h. Accounts (no partition) are priced at those averages:
      chem: 6 GPU-h x 2.30 +  50 core-h x 4/350 = 13.8 + 0.5714 = 14.3714
      phys: 6 GPU-h x 2.30 + 300 core-h x 4/350 = 13.8 + 3.4286 = 17.2286
    which add up to the total (31.6). Top 1: phys.
    """
    prices = parse_prices(PRICES)
    sel = 'cluster=~".*", partition=~".*"'
    total = total_cost_expr(prices, sel, "1h")
    by_account = account_cost_expr(prices, 'cluster=~".*"', "1h")
    top1 = account_cost_expr(prices, 'cluster=~".*"', "1h", top=1)

    def seconds_per_min(hours: float) -> str:  # a counter growing linearly over the hour
        return f"0+{hours * 3600 / 60:g}x60"

    resource = "hpcobs_slurm_job_resource_seconds_total"
    account = "hpcobs_slurm_account_resource_seconds_total"
    series = [
        (f'{resource}{{cluster="c",partition="gpu",state="completed",resource="gpu"}}', 8),
        (f'{resource}{{cluster="c",partition="gpu",state="failed",resource="gpu"}}', 2),
        (f'{resource}{{cluster="c",partition="gpu",state="completed",resource="cpu"}}', 100),
        (f'{resource}{{cluster="c",partition="cpu",state="completed",resource="cpu"}}', 200),
        (f'{resource}{{cluster="c",partition="other",state="completed",resource="gpu"}}', 2),
        (f'{resource}{{cluster="c",partition="other",state="completed",resource="cpu"}}', 50),
        (f'{account}{{cluster="c",account="chem",state="completed",resource="gpu"}}', 4),
        (f'{account}{{cluster="c",account="chem",state="failed",resource="gpu"}}', 2),
        (f'{account}{{cluster="c",account="chem",state="completed",resource="cpu"}}', 50),
        (f'{account}{{cluster="c",account="phys",state="completed",resource="gpu"}}', 6),
        (f'{account}{{cluster="c",account="phys",state="completed",resource="cpu"}}', 300),
    ]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": seconds_per_min(h)} for s, h in series],
                "promql_expr_test": [
                    {
                        "expr": f"round({total}, 0.0001)",
                        "eval_time": "60m",
                        "exp_samples": [{"labels": "{}", "value": 31.6}],
                    },
                    {
                        "expr": f"round({by_account}, 0.0001)",
                        "eval_time": "60m",
                        "exp_samples": [
                            {"labels": '{account="chem"}', "value": 14.3714},
                            {"labels": '{account="phys"}', "value": 17.2286},
                        ],
                    },
                    {
                        "expr": f"round({top1}, 0.0001)",
                        "eval_time": "60m",
                        "exp_samples": [{"labels": '{account="phys"}', "value": 17.2286}],
                    },
                    {
                        "expr": f"round(sum({by_account}), 0.0001)",
                        "eval_time": "60m",
                        "exp_samples": [{"labels": "{}", "value": 31.6}],
                    },
                    # no job finished: the total is 0, not empty
                    {
                        "expr": total,
                        "eval_time": "200m",
                        "exp_samples": [{"labels": "{}", "value": 0}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "spend-test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    proc = subprocess.run(
        [find_binary("promtool"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_failed_jobs_link_to_their_log() -> None:
    """The job id cell links to the exporter's filled-in --slurm.job-log-url (`log_url`),
    which stays in the frame (hidden, not removed) so the link can use it."""
    (panel,) = [
        p for p in panels(committed()["hpcobs-oncall.json"]) if p["title"] == "Recent failed jobs"
    ]
    assert "hpcobs_slurm_job_failed_info" in panel["targets"][0]["expr"]
    overrides = {
        o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]
    }
    (links,) = [p["value"] for p in overrides["job_id"] if p["id"] == "links"]
    assert [link["url"] for link in links] == ["${__data.fields.log_url}"]
    assert {"id": "custom.hidden", "value": True} in overrides["log_url"]
    excluded = [
        t["options"]["excludeByName"] for t in panel["transformations"] if t["id"] == "organize"
    ]
    assert all("log_url" not in e for e in excluded)


def test_committed_price_table_parses_and_is_used() -> None:
    prices = parse_prices((DASHBOARDS / "prices.yaml").read_text())
    executive = json.dumps(committed()["hpcobs-executive.json"])
    assert f'"currency{prices.currency}"' in executive
    for name in prices.partitions:
        assert f'partition=\\"{name}\\"' in executive, name


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("currency: euro\n", "currency"),
        ("currency: EUR\ndefault: {gpu: -1}\n", "default.gpu"),
        ("currency: EUR\ndefault: {tpu: 1}\n", "default.tpu"),
        ("currency: EUR\npartitions: {gpu: {gpu: yes}}\n", "partitions.gpu.gpu"),
        ("currency: EUR\npartitions: {'bad name': {gpu: 1}}\n", "partition name"),
        ("currency: EUR\nextra: 1\n", "unknown keys"),
        ("- 1\n", "mapping"),
    ],
)
def test_bad_price_tables_are_refused_by_key(text: str, fragment: str) -> None:
    with pytest.raises(PriceError, match=re.escape(fragment)):
        parse_prices(text)
