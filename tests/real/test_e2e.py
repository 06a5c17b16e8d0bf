"""The whole suite end to end: Slurm, the exporters, Prometheus with the generated SLO rules and
the shipped alerts, Alertmanager paging a webhook, the SLO daemon, a probe run. Then a node
fails under running jobs (NODE_FAIL): the SLO page must reach the on-call webhook with the
right labels, the same SLO's ticket (inhibited by the page) must not be delivered, and every
query of every dashboard panel returns data in this stack."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.slurm import SlurmCluster
from harness.stack import CLUSTER, REPO, Suite

pytestmark = pytest.mark.real

DASHBOARDS = REPO / "dashboards"
SUBSTITUTIONS = {
    "${datasource}": "prometheus",
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$cluster": CLUSTER,
    "$partition": ".*",
    "$node": ".*",
    "$op": ".*",
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


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with variables substituted) for every panel target."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        stack = list(doc.get("panels", []))
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                for var, value in SUBSTITUTIONS.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"{path.name}/{panel.get('title')}: unsubstituted {expr!r}"
                if expr:
                    out.append((path.name, str(panel.get("title")), expr))
    assert out, "no dashboard queries found"
    return out


# Queries that cannot have data in a stack minutes old on this machine, each covered elsewhere:
WITHOUT_DATA_HERE = {
    # link flaps are counted on RoCE/IPoIB netdevs; the fixture HCAs have none
    # (tests/real/test_rdma_netns.py counts them on a real veth pair)
    "hpcobs_rdma_netdev_link_flaps_total": "needs a netdev",
    # a MAINT reservation and a job held pending: tests/real/test_e2e_maintenance.py makes both
    # and checks these panels there
    "hpcobs_slurm_reservation_": "needs a MAINT reservation",
    "hpcobs_slurm_jobs_pending": "needs a pending job",
}


def queries_with_data(suite: Suite) -> set[tuple[str, str, str]]:
    return {q for q in dashboard_queries() if suite.prometheus.query(q[2])}


def promtool_check_metrics(url: str) -> str:
    """`promtool check metrics` on one scrape: its complaints (empty when clean)."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    return (result.stdout + result.stderr).decode().strip()


def alertnames(payloads: list[dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    return [
        (a["labels"].get("alertname", ""), a["labels"])
        for p in payloads
        for a in p.get("alerts", [])
    ]


def test_node_failure_pages_through_the_whole_suite(suite: Suite) -> None:
    prom = suite.prometheus
    prom.wait_for("count(up == 1) == 5", timeout=60)

    baseline = suite.workdir / "probe-baseline.json"
    probe = suite.run_probe(2, 1.0, f"--write-baseline={baseline}")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    probe = suite.run_probe(2, 1.0, f"--baseline={baseline}", "--tolerance=100")
    assert probe.returncode == 0, probe.stdout + probe.stderr

    _, running = suite.submit_workload(completing=4, long_running=2)
    suite.gpus_run_jobs()
    prom.wait_for("hpcobs_gpu_job_memory_used_bytes", timeout=30)
    prom.wait_for("hpcobs_job_memory_bytes", timeout=30)
    with_data = queries_with_data(suite)  # while jobs run: the attribution panels

    suite.inject_hardware_faults()
    suite.fail_node(running)

    page = suite.webhook.wait_for(
        lambda p: any(
            a["labels"].get("alertname") == "SLOBurnRatePage"
            and a["labels"].get("slo") == "job-success"
            for a in p.get("alerts", [])
        ),
        timeout=120,
    )
    alert = next(a for a in page["alerts"] if a["labels"].get("alertname") == "SLOBurnRatePage")
    assert alert["labels"]["severity"] == "page"
    assert alert["labels"]["service"] == "slurm"
    assert alert["annotations"]["runbook_url"].endswith("SLOBurnRatePage.md")
    assert alert["status"] == "firing"
    assert suite.webhook.paths[suite.webhook.payloads.index(page)].endswith("/page")

    # node1 is down: its GPU alerts are inhibited. An XID storm now fires in Prometheus but
    # must never reach a receiver.
    suite.webhook.wait_for(
        lambda p: any(
            a["labels"].get("alertname") == "HpcobsNodeDown" for a in p.get("alerts", [])
        ),
        timeout=60,
    )
    suite.xid_burst()
    prom.wait_for(
        'ALERTS{alertname="HpcobsGPUXidStorm",alertstate="firing",node="node1"}', timeout=60
    )
    storm: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not storm:
        storm = [
            a
            for a in suite.alertmanager.alerts()
            if a["labels"].get("alertname") == "HpcobsGPUXidStorm"
        ]
        time.sleep(0.5)
    assert storm and storm[0]["status"]["state"] == "suppressed", storm
    assert storm[0]["status"]["inhibitedBy"], storm
    time.sleep(6)  # several group intervals: the inhibited alert must never be delivered
    delivered = [name for name, _ in alertnames(suite.webhook.payloads)]
    assert "HpcobsGPUXidStorm" not in delivered, delivered

    # the SLO daemon computes the same story from the Prometheus API
    prom.wait_for('hpcobs_slo_burn_rate{slo="job-success",window="5m"} > 14.4', timeout=60)
    prom.wait_for('hpcobs_slo_sli_ratio{slo="job-success",window="1h"} < 0.99', timeout=60)
    # the period counts events up to now, so a stack minutes old has spent budget already
    prom.wait_for('hpcobs_slo_error_budget_remaining_ratio{slo="job-success"} < 1', timeout=60)

    suite.bump_rdma_errors()  # a second rise inside the rate window
    prom.wait_for('hpcobs_gpu_up{gpu="7"} == 0', timeout=30)
    prom.wait_for("hpcobs_rdma_port_state != 4", timeout=30)
    time.sleep(2)
    with_data |= queries_with_data(suite)

    # every daemon's exposition, with the failures in it, passes Prometheus' own linter
    for daemon in (suite.node, suite.node_gpu, suite.slurm_exporter, suite.slo):
        assert promtool_check_metrics(f"{daemon.url}/metrics") == "", daemon.name
    empty = [
        f"{dashboard} / {title}: {expr}"
        for dashboard, title, expr in dashboard_queries()
        if (dashboard, title, expr) not in with_data
        and not any(k in expr for k in WITHOUT_DATA_HERE)
    ]
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
