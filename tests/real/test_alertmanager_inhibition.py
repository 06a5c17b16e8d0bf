"""alerts/alertmanager.yml in a real Alertmanager: inhibitions, grouping and delivery.

The example config is loaded as shipped; only the webhook URLs (pointed at a local recorder,
one path per receiver) and the group timers (so the test takes seconds) are changed. Alerts
are posted through the API, as Prometheus would. Every alert that is not inhibited also
reaches the `incidents` receiver (the SLO daemon's webhook), besides its own.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.servers import Alertmanager, AlertmanagerFactory, WebhookReceiver, http_request

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "alerts" / "alertmanager.yml"
CASES = yaml.safe_load((REPO / "alerts" / "alertmanager-tests" / "routes.yml").read_text())["cases"]

SOURCES = [
    {"alertname": "HpcobsNodeDown", "severity": "ticket", "component": "node", "cluster": "c1",
     "node": "n1", "reason": "Not responding"},
    {"alertname": "HpcobsSlurmctldUnreachable", "severity": "page", "component": "slurm",
     "cluster": "c1"},
    {"alertname": "SLOBurnRatePage", "severity": "page", "slo": "job-success", "cluster": "c1"},
]  # fmt: skip
INHIBITED = [
    {"alertname": "HpcobsGPULost", "severity": "ticket", "component": "gpu", "cluster": "c1",
     "node": "n1", "gpu": "0"},
    {"alertname": "HpcobsRDMAPortDown", "severity": "ticket", "component": "rdma",
     "cluster": "c1", "node": "n1", "device": "mlx5_0", "port": "1"},
    {"alertname": "HpcobsLustreTargetDisconnected", "severity": "ticket", "component": "lustre",
     "cluster": "c1", "node": "n1", "fs": "scratch", "target": "scratch-OST0001"},
    {"alertname": "HpcobsExporterDown", "severity": "ticket", "component": "exporter",
     "cluster": "c1", "node": "n1", "job": "hpcobs-node", "instance": "n1:9946"},
    {"alertname": "HpcobsSlurmQueueStalled", "severity": "ticket", "component": "queue",
     "cluster": "c1", "partition": "batch"},
    {"alertname": "SLOBurnRateTicket", "severity": "ticket", "slo": "job-success",
     "cluster": "c1"},
]  # fmt: skip
NOT_INHIBITED = [
    # another node, another cluster, another SLO, and a node alert that is not a symptom
    {"alertname": "HpcobsGPULost", "severity": "ticket", "component": "gpu", "cluster": "c1",
     "node": "n2", "gpu": "3"},
    {"alertname": "HpcobsGPULost", "severity": "ticket", "component": "gpu", "cluster": "c2",
     "node": "n1", "gpu": "0"},
    {"alertname": "HpcobsSlurmQueueStalled", "severity": "ticket", "component": "queue",
     "cluster": "c2", "partition": "batch"},
    {"alertname": "SLOBurnRateTicket", "severity": "ticket", "slo": "queue-wait",
     "cluster": "c1"},
    {"alertname": "HpcobsNodeDrained", "severity": "ticket", "component": "node",
     "cluster": "c1", "node": "n1", "reason": "x"},
    {"alertname": "HpcobsJobGPUsIdle", "severity": "ticket", "component": "job",
     "cluster": "c1", "job_id": "4242"},
]  # fmt: skip


def am_config(receiver: WebhookReceiver) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    base = f"http://127.0.0.1:{receiver.port}"
    for rcv in doc["receivers"]:
        for hook in rcv["webhook_configs"]:
            hook["url"] = f"{base}/{rcv['name']}"
    doc["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    # the example's planned-maintenance windows (a time of the month) must not mute a test run
    planned_windows(doc, [{"years": ["2000"]}])
    return doc


def planned_windows(doc: dict[str, Any], windows: list[dict[str, Any]]) -> None:
    (planned,) = [t for t in doc["time_intervals"] if t["name"] == "planned-maintenance"]
    planned["time_intervals"] = windows


def post(am: Alertmanager, label_sets: list[dict[str, str]]) -> None:
    now = dt.datetime.now(dt.UTC)
    body = [
        {
            "labels": labels,
            "annotations": {"summary": labels["alertname"]},
            "startsAt": now.isoformat(),
            "endsAt": (now + dt.timedelta(hours=1)).isoformat(),
        }
        for labels in label_sets
    ]
    status, text = http_request(
        "POST",
        am.url + "/api/v2/alerts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200, text


def key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def wait_for_alerts(am: Alertmanager, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        alerts = am.alerts()
        if len(alerts) >= count or time.monotonic() > deadline:
            return alerts
        time.sleep(0.1)


def receiver_groups(am: Alertmanager, receiver: str | None = None) -> list[dict[str, Any]]:
    """Alertmanager's alert groups of `receiver`, or of every receiver but `incidents` (which
    groups every alert a second time)."""
    groups: list[dict[str, Any]] = json.loads(am.get("/api/v2/alerts/groups"))
    if receiver is None:
        return [g for g in groups if g["receiver"]["name"] != "incidents"]
    return [g for g in groups if g["receiver"]["name"] == receiver]


def test_inhibitions_grouping_and_delivery(
    alertmanager_factory: AlertmanagerFactory, webhook_receiver: WebhookReceiver
) -> None:
    am = alertmanager_factory(am_config(webhook_receiver))
    # Sources first, so the inhibitor knows them before any target's group is flushed.
    post(am, SOURCES)
    assert len(wait_for_alerts(am, len(SOURCES))) == len(SOURCES)
    post(am, INHIBITED + NOT_INHIBITED)
    total = len(SOURCES) + len(INHIBITED) + len(NOT_INHIBITED)

    # Alertmanager marks inhibited alerts when it evaluates them; poll until it has.
    deadline = time.monotonic() + 20
    while True:
        alerts = {key(a["labels"]): a for a in wait_for_alerts(am, total)}
        suppressed = {k for k, a in alerts.items() if a["status"]["inhibitedBy"]}
        if suppressed >= {key(x) for x in INHIBITED} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(alerts) == total
    for labels in INHIBITED:
        status = alerts[key(labels)]["status"]
        assert status["state"] == "suppressed" and status["inhibitedBy"], (labels, status)
    for labels in SOURCES + NOT_INHIBITED:
        status = alerts[key(labels)]["status"]
        assert status["state"] == "active" and not status["inhibitedBy"], (labels, status)

    # Every alert that is not inhibited reaches the receiver of its severity, and incidents.
    expected = {key(x): x["severity"] for x in SOURCES + NOT_INHIBITED}
    deadline = time.monotonic() + 20
    delivered: dict[tuple[tuple[str, str], ...], str] = {}
    to_incidents: set[tuple[tuple[str, str], ...]] = set()
    while (
        set(delivered) < set(expected) or to_incidents < set(expected)
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
        paths, payloads = list(webhook_receiver.paths), list(webhook_receiver.payloads)
        for path, payload in zip(paths, payloads, strict=False):
            for alert in payload.get("alerts", []):
                if path.strip("/") == "incidents":
                    to_incidents.add(key(alert["labels"]))
                else:
                    delivered[key(alert["labels"])] = path.strip("/")
    assert set(delivered) >= set(expected), f"not delivered: {set(expected) - set(delivered)}"
    assert to_incidents == set(expected), to_incidents ^ set(expected)
    for k, severity in expected.items():
        assert delivered[k] == {"page": "oncall", "ticket": "ticket"}[severity], (k, delivered[k])
    leaked = [dict(k) for k in delivered if k in {key(x) for x in INHIBITED}]
    assert not leaked, f"inhibited alerts were delivered: {leaked}"

    # Grouping: per cluster/alertname/partition, and per job for job alerts.
    groups = receiver_groups(am)
    by_alertname: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        by_alertname.setdefault(group["labels"].get("alertname", ""), []).append(group)
    (job_group,) = by_alertname["HpcobsJobGPUsIdle"]
    assert job_group["labels"] == {
        "alertname": "HpcobsJobGPUsIdle",
        "cluster": "c1",
        "job_id": "4242",
    }
    stalled = {g["labels"]["cluster"]: g for g in by_alertname["HpcobsSlurmQueueStalled"]}
    assert stalled["c2"]["labels"] == {
        "alertname": "HpcobsSlurmQueueStalled",
        "cluster": "c2",
        "partition": "batch",
    }
    assert stalled["c2"]["receiver"]["name"] == "ticket"
    (page_group,) = by_alertname["HpcobsSlurmctldUnreachable"]
    assert page_group["receiver"]["name"] == "oncall"
    lost = by_alertname["HpcobsGPULost"]  # n1/c1 (inhibited) and n2/c1 together, c2 apart
    assert sorted(g["labels"]["cluster"] for g in lost) == ["c1", "c2"]


def test_route_cases_in_a_real_alertmanager(
    alertmanager_factory: AlertmanagerFactory, webhook_receiver: WebhookReceiver
) -> None:
    """The routing cases of alerts/alertmanager-tests/routes.yml, as the running server groups them."""
    am = alertmanager_factory(am_config(webhook_receiver))
    post(am, [{k: str(v) for k, v in case["labels"].items()} for case in CASES])
    deadline = time.monotonic() + 20
    while True:
        groups = receiver_groups(am)
        found = {key(a["labels"]): g for g in groups for a in g["alerts"]}
        incidents = receiver_groups(am, "incidents")
        to_incidents = {key(a["labels"]) for g in incidents for a in g["alerts"]}
        if len(found) >= len(CASES) and len(to_incidents) >= len(CASES):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert to_incidents == {key({k: str(v) for k, v in c["labels"].items()}) for c in CASES}
    for case in CASES:
        labels = {k: str(v) for k, v in case["labels"].items()}
        group = found.get(key(labels))
        assert group is not None, f"{case['name']}: alert not in any group"
        assert group["receiver"]["name"] == case["receiver"], case["name"]
        want = {k: labels[k] for k in case["group_by"] if k in labels}
        assert group["labels"] == want, (case["name"], group["labels"])


MUTED_IN_WINDOWS = [
    {"alertname": "HpcobsGPULost", "severity": "ticket", "component": "gpu", "cluster": "c1",
     "node": "n7", "gpu": "0"},
    {"alertname": "HpcobsPartitionNodesUnavailable", "severity": "page", "component": "node",
     "cluster": "c1", "partition": "gpu"},
]  # fmt: skip
NOT_MUTED_IN_WINDOWS = [
    {"alertname": "HpcobsSlurmctldUnreachable", "severity": "page", "component": "slurm",
     "cluster": "c1"},
    # another cluster: slurmctld unreachable inhibits its own cluster's queue alerts
    {"alertname": "HpcobsSlurmLicenseStarved", "severity": "ticket", "component": "queue",
     "cluster": "c2", "license": "matlab"},
]  # fmt: skip


def deliveries(receiver: WebhookReceiver) -> dict[tuple[tuple[str, str], ...], set[str]]:
    """Alert label set → the receivers (webhook paths) it was delivered to."""
    out: dict[tuple[tuple[str, str], ...], set[str]] = {}
    paths, payloads = list(receiver.paths), list(receiver.payloads)
    for path, payload in zip(paths, payloads, strict=False):
        for alert in payload.get("alerts", []):
            out.setdefault(key(alert["labels"]), set()).add(path.strip("/"))
    return out


def wait_delivered(
    receiver: WebhookReceiver, label_sets: list[dict[str, str]], timeout: float = 20.0
) -> dict[tuple[tuple[str, str], ...], set[str]]:
    want = {key(x) for x in label_sets}
    deadline = time.monotonic() + timeout
    while True:
        got = deliveries(receiver)
        done = {k for k, paths in got.items() if paths - {"incidents"}}
        if want <= done or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_planned_maintenance_window_mutes_node_level_alerts(
    alertmanager_factory: AlertmanagerFactory, webhook_receiver: WebhookReceiver
) -> None:
    """Inside a `planned-maintenance` window (here: today and tomorrow, UTC) node and hardware
    alerts are routed as usual but not sent to on-call or ticket; Slurm and queue alerts are."""
    doc = am_config(webhook_receiver)
    today = dt.datetime.now(dt.UTC)
    days = [(today + dt.timedelta(days=d)).strftime("%A").lower() for d in (0, 1)]
    planned_windows(doc, [{"weekdays": days, "location": "UTC"}])
    am = alertmanager_factory(doc)
    post(am, MUTED_IN_WINDOWS + NOT_MUTED_IN_WINDOWS)
    got = wait_delivered(webhook_receiver, NOT_MUTED_IN_WINDOWS)
    for labels in NOT_MUTED_IN_WINDOWS:
        want = {"page": "oncall", "ticket": "ticket"}[labels["severity"]]
        assert want in got.get(key(labels), set()), (labels, got)
    # A later alert's delivery shows that the muted alerts' groups (same group_wait, posted
    # earlier) have been flushed by now.
    later = {**NOT_MUTED_IN_WINDOWS[1], "license": "ansys"}
    post(am, [later])
    got = wait_delivered(webhook_receiver, [later])
    assert "ticket" in got.get(key(later), set()), got
    for labels in MUTED_IN_WINDOWS:
        assert got.get(key(labels), set()) <= {"incidents"}, (labels, got)
    # They are routed as usual, to their own receivers: muted, not dropped.
    routed = {
        key(a["labels"]): g["receiver"]["name"] for g in receiver_groups(am) for a in g["alerts"]
    }
    for labels in MUTED_IN_WINDOWS:
        want = {"page": "oncall", "ticket": "ticket"}[labels["severity"]]
        assert routed.get(key(labels)) == want, (labels, routed)
