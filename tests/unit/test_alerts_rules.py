"""The alert rules in alerts/: promtool check + unit tests, labels, annotations, runbooks.

`promtool` is a local binary (no server), so these are `unit` tests.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.servers import find_binary

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RUNBOOKS = REPO / "docs" / "runbooks"
RULE_FILES = sorted(
    p for p in ALERTS.glob("*.yml") if "groups" in (yaml.safe_load(p.read_text()) or {})
)
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
COMPONENTS = {"node", "gpu", "rdma", "lustre", "slurm", "queue", "probe", "exporter", "job"}
# The failure modes issue 9 names, each with the alert(s) that cover it.
REQUIRED = {
    "node down": "HpcobsNodeDown",
    "node drained": "HpcobsNodeDrained",
    "GPU lost": "HpcobsGPULost",
    "XID storm": "HpcobsGPUXidStorm",
    "ECC uncorrected": "HpcobsGPUECCUncorrected",
    "thermal throttle": "HpcobsGPUThermalThrottle",
    "RDMA port down": "HpcobsRDMAPortDown",
    "RDMA flapping": "HpcobsRDMALinkFlapping",
    "symbol errors rising": "HpcobsRDMASymbolErrorsRising",
    "Lustre target disconnected": "HpcobsLustreTargetDisconnected",
    "Lustre health not ok": "HpcobsLustreHealthNotOk",
    "slurmctld unreachable": "HpcobsSlurmctldUnreachable",
    "backfill cycle too long": "HpcobsSlurmBackfillCycleTooLong",
    "probe regression": "HpcobsProbeRegression",
    "probe stale": "HpcobsProbeStale",
    "exporter down": "HpcobsExporterDown",
    # issue 17
    "licence starved": "HpcobsSlurmLicenseStarved",
    "preemption on a non-preemptible partition": "HpcobsSlurmPreemptionRateHigh",
}
RUNBOOK_SECTIONS = ("## What it means", "## What to check", "## What to do")


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(r for r in group["rules"] if "alert" in r)
    return rules


ALERT_NAMES = [r["alert"] for r in alert_rules()]


def test_rule_and_test_files_exist() -> None:
    assert RULE_FILES, "no rule files in alerts/"
    assert TEST_FILES, "no promtool tests in alerts/tests/"
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES)), "duplicate alert names"


def test_promtool_check_rules() -> None:
    proc = subprocess.run(
        [find_binary("promtool"), "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules() -> None:
    proc = subprocess.run(
        [find_binary("promtool"), "test", "rules", *(p.name for p in TEST_FILES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ALERTS / "tests",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(TEST_FILES), proc.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    missing_firing = sorted(set(ALERT_NAMES) - firing)
    missing_silent = sorted(set(ALERT_NAMES) - silent)
    assert not missing_firing, f"alerts without a firing test case: {missing_firing}"
    assert not missing_silent, f"alerts without a not-firing test case: {missing_silent}"
    unknown = sorted((firing | silent) - set(ALERT_NAMES))
    assert not unknown, f"test cases for alerts that do not exist: {unknown}"


def test_a_wrong_expectation_fails_promtool(tmp_path: Path) -> None:
    """The promtool tests can fail: the same test with a wrong expected label does."""
    source = ALERTS / "tests" / "services-test.yml"
    doc = yaml.safe_load(source.read_text())
    doc["rule_files"] = [str(p) for p in RULE_FILES]
    doc["tests"] = doc["tests"][:1]
    doc["tests"][0]["alert_rule_test"][-1]["exp_alerts"][0]["exp_labels"]["severity"] = "ticket"
    path = tmp_path / "broken-test.yml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [find_binary("promtool"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr


def test_issue_failure_modes_are_covered() -> None:
    missing = {mode: name for mode, name in REQUIRED.items() if name not in ALERT_NAMES}
    assert not missing, f"failure modes without their alert: {missing}"


def test_slo_burn_alerts_are_left_to_hpcobs_slo() -> None:
    assert not [n for n in ALERT_NAMES if n.startswith("SLOBurnRate")]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Hpcobs[A-Z][A-Za-z0-9]+", name), name
    labels = rule.get("labels", {})
    assert labels.get("severity") in ("page", "ticket"), f"{name}: severity must be page|ticket"
    assert labels.get("component") in COMPONENTS, f"{name}: component {labels.get('component')!r}"
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{name}: annotation {key} missing"
    assert annotations["runbook_url"].endswith(f"docs/runbooks/{name}.md"), annotations[
        "runbook_url"
    ]


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_runbook_exists_and_says_what_to_check_and_do(name: str) -> None:
    path = RUNBOOKS / f"{name}.md"
    assert path.is_file(), f"missing runbook {path.relative_to(REPO)}"
    text = path.read_text()
    assert text.startswith(f"# {name}\n"), f"{path.name}: first line must be '# {name}'"
    for section in RUNBOOK_SECTIONS:
        assert f"\n{section}\n" in text, f"{path.name}: missing section {section!r}"
    assert "```" in text, f"{path.name}: give the concrete commands in a code block"


def test_inhibition_labels_are_on_the_alerts() -> None:
    """alertmanager.yml's inhibitions match on `node` and `component`: the alerts carry them."""
    rules = {r["alert"]: r for r in alert_rules()}
    assert rules["HpcobsNodeDown"]["labels"]["component"] == "node"
    assert "node" in rules["HpcobsNodeDown"]["expr"]  # kept by `max by (cluster, node, …)`
    assert rules["HpcobsSlurmQueueStalled"]["labels"]["component"] == "queue"
    for name, rule in rules.items():
        if rule["labels"]["component"] in ("gpu", "rdma", "lustre"):
            expr = rule["expr"]
            aggregated = re.findall(r"\bby \(([^)]*)\)", expr)
            for group in aggregated:
                assert "node" in group, f"{name}: aggregation drops the node label"


# Components whose alerts are about one node (or, for the probe, the nodes of its last run):
# silent while the node is in a Slurm MAINT reservation (issue 17).
MAINTENANCE_SILENCED = {"node", "gpu", "rdma", "lustre", "probe", "exporter"}
MAINTENANCE = "hpcobs_slurm_node_maintenance == 1"


@pytest.mark.parametrize(
    "rule",
    [r for r in alert_rules() if r["labels"]["component"] in MAINTENANCE_SILENCED],
    ids=lambda r: r["alert"],
)
def test_node_level_alerts_are_silent_in_maintenance(rule: dict[str, Any]) -> None:
    """Every node-level alert joins the maintenance gauge: per node (`unless on (cluster,
    node)`), per partition for the probe (the nodes of its last run), and the partition page
    takes the down nodes under maintenance off its count. alerts/tests/maintenance-test.yml
    shows each of them silent for a node in maintenance and firing for another."""
    expr = " ".join(rule["expr"].split())
    if rule["alert"] == "HpcobsPartitionNodesUnavailable":
        assert f"and on (cluster, node) {MAINTENANCE}" in expr, expr
    elif rule["labels"]["component"] == "probe":
        assert "unless on (cluster, partition)" in expr and MAINTENANCE in expr, expr
    else:
        assert expr.endswith(f"unless on (cluster, node) {MAINTENANCE}"), expr


def test_every_maintenance_silenced_alert_has_a_maintenance_test() -> None:
    doc = yaml.safe_load((ALERTS / "tests" / "maintenance-test.yml").read_text())
    firing = {
        check["alertname"]
        for case in doc["tests"]
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
        and any(
            "hpcobs_slurm_node_maintenance" in s["series"] for s in case.get("input_series", [])
        )
    }
    silenced = {
        r["alert"] for r in alert_rules() if r["labels"]["component"] in MAINTENANCE_SILENCED
    }
    assert silenced <= firing, f"no maintenance test for {sorted(silenced - firing)}"
