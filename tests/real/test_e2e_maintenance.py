"""Planned maintenance end to end: node1 of the private Slurm goes down, with GPU, RDMA and
Lustre faults, inside a Slurm reservation with the MAINT flag. The whole stack (the exporters,
Prometheus with alerts/hpcobs-alerts.yml, Alertmanager with alerts/alertmanager.yml and its
webhook receivers) must stay silent: no node, partition or hardware alert pending or firing in
Prometheus, none in Alertmanager, none delivered. Once the reservation is deleted, with the
node still down and the faults still there, the node ticket and the partition pages reach the
receivers and the hardware alerts fire (Alertmanager then inhibits the hardware ones under the
node-down alert, as alerts/alertmanager.yml says).

Absence is shown against Prometheus' own progress, not a fixed sleep: the rule groups must have
been evaluated several times after every input of the alerts was visible.

Under the maintenance, the dashboard panels about it (and about a job that waits for it) show
it: the e2e stack of tests/real/test_e2e.py has no reservation and no pending job.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.slurm import SlurmCluster
from harness.stack import CLUSTER, REPO, Suite

pytestmark = pytest.mark.real

RESERVATION = "e2e-maint"
# The alerts node1's faults trigger (NodeDown and the partition page from Slurm; the rest from
# the node exporters' fixture trees and fake NVML, with the `node` target label).
NODE_ALERTS = {"HpcobsNodeDown", "HpcobsPartitionNodesUnavailable"}
HARDWARE_ALERTS = {"HpcobsGPULost", "HpcobsRDMALinkFlapping", "HpcobsLustreTargetDisconnected"}
SILENCED = NODE_ALERTS | HARDWARE_ALERTS
ALERTS_OF_INTEREST = 'ALERTS{alertname=~"' + "|".join(sorted(SILENCED)) + '"}'
# Panels that have data only under a maintenance (and with a job pending): dashboard → titles.
MAINTENANCE_PANELS = {
    "hpcobs-oncall.json": {
        "Nodes in maintenance",
        "Maintenance reservations",
        "Pending jobs by reason",
    },
    "hpcobs-debug.json": {"Pending seconds by reason"},
}
SUBSTITUTIONS = {
    "${datasource}": "prometheus",
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$cluster": CLUSTER,
    "$partition": ".*",
    "$node": ".*",
}


@pytest.fixture
def suite(
    tmp_path: Path, slurm_cluster_factory: Callable[..., SlurmCluster], fixture_trees: Path
) -> Iterator[Suite]:
    cluster = slurm_cluster_factory()
    running = Suite(tmp_path / "suite", cluster, fixture_trees)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _timestamp(text: str) -> float:
    """Prometheus' RFC 3339 times (nanoseconds, `Z`) as Unix seconds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(text).timestamp()


def wait_evaluated_after(suite: Suite, since: float, times: int = 3, timeout: float = 60) -> None:
    """Until every rule group holding one of SILENCED has been evaluated `times` evaluation
    intervals after `since` (Unix time): the alerts had every chance to go pending and fire
    (their `for` is 1 s in this stack)."""
    deadline = time.monotonic() + timeout
    while True:
        groups = [
            g
            for g in suite.prometheus.rules()
            if any(r.get("name") in SILENCED for r in g.get("rules", []))
        ]
        names = {r.get("name") for g in groups for r in g["rules"]}
        assert names >= SILENCED, f"rules not loaded: {SILENCED - names}"
        latest = [_timestamp(g["lastEvaluation"]) for g in groups]
        needed = since + times * max(float(g["interval"]) for g in groups)
        if min(latest) > needed:
            return
        assert time.monotonic() < deadline, f"rule groups not evaluated since {since}: {latest}"
        time.sleep(0.25)


def panel_queries(dashboard: str, titles: set[str]) -> dict[str, list[str]]:
    """Panel title → its queries, variables substituted as Grafana would (all selected)."""
    doc = json.loads((REPO / "dashboards" / dashboard).read_text())
    out: dict[str, list[str]] = {}
    stack = list(doc["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels") or [])
        if panel.get("title") in titles:
            exprs = []
            for target in panel.get("targets") or []:
                expr = target["expr"]
                for var, value in SUBSTITUTIONS.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, expr
                exprs.append(expr)
            out[panel["title"]] = exprs
    assert set(out) == titles, f"{dashboard}: panels not found: {titles - set(out)}"
    return out


def delivered(suite: Suite) -> list[tuple[str, str]]:
    """(receiver path, alertname) of every alert the webhook received."""
    return [
        (path.strip("/"), a["labels"].get("alertname", ""))
        for path, payload in zip(suite.webhook.paths, suite.webhook.payloads, strict=False)
        for a in payload.get("alerts", [])
    ]


def test_maintenance_silences_node_and_partition_alerts(suite: Suite) -> None:
    prom = suite.prometheus
    node = suite.slurm.node_name
    prom.wait_for("count(up == 1) == 5", timeout=60)

    # -- under a MAINT reservation: node1 is taken down for the work, its hardware fails
    suite.slurm.run(
        "scontrol",
        "create",
        "reservation",
        f"reservationname={RESERVATION}",
        "starttime=now",
        "duration=120",
        f"nodes={node}",
        "users=root",
        "flags=maint",
    )
    prom.wait_for(f'hpcobs_slurm_node_maintenance{{node="{node}"}} == 1', timeout=60)
    suite.slurm.run("scontrol", "update", f"nodename={node}", "state=down", "reason=maintenance")
    suite.inject_hardware_faults()

    # every input of the alerts is there, so without the maintenance they would fire
    for expr in (
        f'hpcobs_slurm_node_reason_info{{node="{node}", state="down"}} == 1',
        'sum by (partition) (hpcobs_slurm_nodes{state=~"down|drain|draining|fail"})'
        " / sum by (partition) (hpcobs_slurm_nodes) > 0.2",
        f'hpcobs_gpu_up{{node="{node}", gpu="7"}} == 0',
        f'hpcobs_lustre_client_import_state{{node="{node}", state!~"full|idle"}} == 1',
        f'increase(hpcobs_rdma_port_link_downed_total{{node="{node}"}}[1h]) > 2',
        f'hpcobs_slurm_node_maintenance{{node="{node}"}} == 1',
    ):
        prom.wait_for(expr, timeout=60)
    partitions = {
        r["metric"]["partition"] for r in prom.query('hpcobs_slurm_nodes{state="down"} > 0')
    }
    assert partitions == set(suite.slurm.partitions), partitions
    wait_evaluated_after(suite, time.time())
    assert prom.query(f'hpcobs_slurm_node_maintenance{{node="{node}"}} == 1'), "window ended"

    active = [
        (r["metric"]["alertname"], r["metric"]["alertstate"])
        for r in prom.query(ALERTS_OF_INTEREST)
    ]
    assert not active, f"alerts pending or firing under maintenance: {active}"
    in_am = [a["labels"]["alertname"] for a in suite.alertmanager.alerts()]
    assert not SILENCED & set(in_am), in_am
    assert not [d for d in delivered(suite) if d[1] in SILENCED], delivered(suite)

    # -- the dashboards show the maintenance, and a job that waits for it
    job = suite.slurm.sbatch("true", "--partition=debug")
    suite.slurm.wait_job_state(job, {"PENDING"}, timeout=60)
    for dashboard, titles in sorted(MAINTENANCE_PANELS.items()):
        for exprs in panel_queries(dashboard, titles).values():
            for expr in exprs:
                prom.wait_for(expr, timeout=60)
    (maintenance,) = panel_queries("hpcobs-oncall.json", {"Nodes in maintenance"}).values()
    assert prom.query_value(maintenance[0]) == 1
    (reservation, start, end) = panel_queries("hpcobs-oncall.json", {"Maintenance reservations"})[
        "Maintenance reservations"
    ]
    (info,) = prom.query(reservation)
    assert info["metric"]["reservation"] == RESERVATION, info
    window = prom.query_value(end) - prom.query_value(start)
    assert window == 120 * 60 * 1000, window  # duration=120 (minutes), in ms for Grafana

    # -- the reservation ends; node1 is still down and its faults are still there
    suite.slurm.run("scontrol", "delete", f"reservation={RESERVATION}")
    prom.wait_for(f'absent(hpcobs_slurm_node_maintenance{{node="{node}"}})', timeout=60)

    page = suite.webhook.wait_for(
        lambda p: any(
            a["labels"].get("alertname") == "HpcobsPartitionNodesUnavailable"
            for a in p.get("alerts", [])
        ),
        timeout=60,
    )
    assert suite.webhook.paths[suite.webhook.payloads.index(page)].strip("/") == "page"
    paged: set[str] = {
        a["labels"]["partition"]
        for p in suite.webhook.payloads
        for a in p.get("alerts", [])
        if a["labels"].get("alertname") == "HpcobsPartitionNodesUnavailable"
    }
    deadline = time.monotonic() + 60
    while paged != set(suite.slurm.partitions) and time.monotonic() < deadline:
        time.sleep(0.25)
        paged = {
            a["labels"]["partition"]
            for p in suite.webhook.payloads
            for a in p.get("alerts", [])
            if a["labels"].get("alertname") == "HpcobsPartitionNodesUnavailable"
        }
    assert paged == set(suite.slurm.partitions), paged

    ticket = suite.webhook.wait_for(
        lambda p: any(
            a["labels"].get("alertname") == "HpcobsNodeDown" and a["labels"].get("node") == node
            for a in p.get("alerts", [])
        ),
        timeout=60,
    )
    assert suite.webhook.paths[suite.webhook.payloads.index(ticket)].strip("/") == "ticket"
    alert: dict[str, Any] = next(
        a for a in ticket["alerts"] if a["labels"].get("alertname") == "HpcobsNodeDown"
    )
    assert alert["labels"]["reason"] == "maintenance" and alert["status"] == "firing"

    for name in sorted(HARDWARE_ALERTS):
        prom.wait_for(
            f'ALERTS{{alertname="{name}", alertstate="firing", node="{node}"}}', timeout=60
        )
