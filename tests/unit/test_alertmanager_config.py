"""alerts/alertmanager.yml: `amtool check-config` and `amtool config routes test`.

`amtool` reads the file locally (no Alertmanager running), so these are `unit` tests. Grouping,
inhibitions and delivery are checked against a real Alertmanager in
tests/real/test_alertmanager_inhibition.py.
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
CONFIG = REPO / "alerts" / "alertmanager.yml"
ROUTES = yaml.safe_load((REPO / "alerts" / "alertmanager-tests" / "routes.yml").read_text())
CASES = ROUTES["cases"]
ALSO = list(ROUTES.get("also", []))  # reached by every alert (continue: true), listed first
RULE_FILES = sorted(
    p for p in (REPO / "alerts").glob("*.yml") if "groups" in (yaml.safe_load(p.read_text()) or {})
)
RECEIVER_OF_SEVERITY = {"page": "oncall", "ticket": "ticket"}


def routes_test(labels: dict[str, str], config: Path = CONFIG) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            find_binary("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_amtool_check_config() -> None:
    proc = subprocess.run(
        [find_binary("amtool"), "check-config", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    assert "3 inhibit rules" in proc.stdout and "3 receivers" in proc.stdout


def test_check_config_catches_a_broken_file(tmp_path: Path) -> None:
    doc = yaml.safe_load(CONFIG.read_text())
    doc["route"]["receiver"] = "nobody"
    bad = tmp_path / "alertmanager.yml"
    bad.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [find_binary("amtool"), "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_route_cases(case: dict[str, Any]) -> None:
    proc = routes_test({k: str(v) for k, v in case["labels"].items()})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ",".join([*ALSO, case["receiver"]]), proc.stdout


def test_verify_receivers_fails_on_the_wrong_receiver() -> None:
    """`--verify.receivers` makes amtool exit non-zero: the route check can fail."""
    proc = subprocess.run(
        [
            find_binary("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={CONFIG}",
            "--verify.receivers=oncall",
            "severity=ticket",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0


def test_every_alert_rule_reaches_the_receiver_of_its_severity() -> None:
    rules = [
        r
        for path in RULE_FILES
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    ]
    assert rules
    wrong = []
    for rule in rules:
        labels = {"alertname": rule["alert"], "cluster": "c1", **rule["labels"]}
        got = routes_test(labels).stdout.strip()
        want = ",".join([*ALSO, RECEIVER_OF_SEVERITY[rule["labels"]["severity"]]])
        if got != want:
            wrong.append(f"{rule['alert']}: {got!r} (want {want!r})")
    assert not wrong, wrong


def test_job_alerts_use_a_route_grouped_by_job_id() -> None:
    tree = subprocess.run(
        [
            find_binary("amtool"),
            "config",
            "routes",
            "test",
            "--tree",
            f"--config.file={CONFIG}",
            "alertname=HpcobsJobGPUsIdle",
            "severity=ticket",
            "job_id=1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert 'job_id=~".+"' in tree, tree
    doc = yaml.safe_load(CONFIG.read_text())
    job_routes = [r for r in doc["route"]["routes"] if 'job_id=~".+"' in r.get("matchers", [])]
    assert len(job_routes) == 1
    assert job_routes[0]["group_by"] == ["cluster", "alertname", "job_id"]
    assert doc["route"]["group_by"] == ["cluster", "alertname", "partition"]


def test_every_alert_also_reaches_the_incidents_receiver() -> None:
    """The SLO daemon's webhook gets every alert, resolved ones too, from the first route,
    which continues: the routes below still page and ticket (the cases above)."""
    doc = yaml.safe_load(CONFIG.read_text())
    first = doc["route"]["routes"][0]
    assert first == {"receiver": "incidents", "continue": True}
    (incidents,) = [r for r in doc["receivers"] if r["name"] == "incidents"]
    (hook,) = incidents["webhook_configs"]
    assert hook["url"].endswith("/alertmanager/webhook") and hook["send_resolved"] is True
    assert ALSO == ["incidents"]


COMPONENTS = {"node", "gpu", "rdma", "lustre", "slurm", "queue", "probe", "exporter", "job"}
MUTED_COMPONENTS = {"node", "gpu", "rdma", "lustre", "probe", "exporter"}


def alert_rules() -> list[dict[str, Any]]:
    return [
        r
        for path in RULE_FILES
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    ]


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for sub in route.get("routes", []):
        out.append(sub)
        out.extend(_routes(sub))
    return out


def test_planned_maintenance_windows_mute_the_node_level_alerts() -> None:
    """`time_intervals` defines the planned windows; the route every node, hardware, probe and
    exporter alert takes (and each of its receivers' routes) is muted in them, no other route
    is. (Routing itself is in the cases above; a real Alertmanager mutes in
    tests/real/test_alertmanager_inhibition.py.)"""
    doc = yaml.safe_load(CONFIG.read_text())
    intervals = {t["name"]: t["time_intervals"] for t in doc["time_intervals"]}
    assert intervals["planned-maintenance"], intervals
    muted = [r for r in _routes(doc["route"]) if r.get("mute_time_intervals")]
    assert muted and all(r["mute_time_intervals"] == ["planned-maintenance"] for r in muted)
    (parent,) = [r for r in doc["route"]["routes"] if r.get("mute_time_intervals")]
    (matcher,) = parent["matchers"]
    assert matcher.startswith('component=~"')
    pattern = re.compile(matcher.removeprefix('component=~"').removesuffix('"'))
    covered = {c for c in COMPONENTS if pattern.fullmatch(c)}
    assert covered == MUTED_COMPONENTS, covered
    assert all(sub.get("mute_time_intervals") for sub in parent["routes"])
    assert {sub["receiver"] for sub in parent["routes"]} == {"oncall", "ticket"}
    for rule in alert_rules():
        tree = subprocess.run(
            [
                find_binary("amtool"),
                "config",
                "routes",
                "test",
                "--tree",
                f"--config.file={CONFIG}",
                f"alertname={rule['alert']}",
                *(f"{k}={v}" for k, v in rule["labels"].items()),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        through_muted = matcher in tree
        assert through_muted == (rule["labels"]["component"] in MUTED_COMPONENTS), (
            rule["alert"],
            tree,
        )
