"""Incident durations end to end: a node goes down in Slurm, then is resumed.

    single-node Slurm 22.05 → hpcobs-slurm-exporter → Prometheus (the shipped HpcobsNodeDown
    and HpcobsPartitionNodesUnavailable rules, `for: 0s`) → Alertmanager (alerts/
    alertmanager.yml: its incidents receiver → hpcobs-slo serve, the others → a recorder)
    → hpcobs-slo serve (the webhook, and the example SLO slo/examples/incidents.yaml)

The rest of the e2e stack (GPUs, RDMA, Lustre, the probe) plays no part in incidents and is
left out, so the test takes well under a minute and a half. The incidents route repeats
every few seconds, so the daemon gets Alertmanager's repeat notifications while the node is
down; it is restarted in the middle (SIGTERM, then started again on its state file).

Checked: `hpcobs_incident_duration_seconds_count` grows by exactly 1 for HpcobsNodeDown, and
`_sum` is within one evaluation interval of the real duration: the span of the alert's
firing samples in Prometheus (`ALERTS`), which starts at the evaluation that fired it and
ends one evaluation before the one that resolved it; and, more loosely (also the exporter's
poll and the scrape), the time between the two `scontrol` commands. Repeats, the restart and
a replay of every notification the other receivers got change nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.slo.incidents import WEBHOOK_PATH

from harness.runtime import BIN, ExporterProcess
from harness.servers import Alertmanager, Prometheus, WebhookReceiver, http_request
from harness.slurm import SlurmCluster
from harness.stack import CLUSTER, REPO, alertmanager_config

pytestmark = pytest.mark.real

EVAL = 2.0  # Prometheus' evaluation interval (seconds)
SCRAPE = 1.0  # its scrape interval, and the Slurm exporter's poll interval
ALERTS_FILE = REPO / "alerts" / "hpcobs-alerts.yml"
SPEC = REPO / "slo" / "examples" / "incidents.yaml"
NODE_DOWN = {"alertname": "HpcobsNodeDown", "severity": "ticket"}
Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def node_rules() -> dict[str, Any]:
    """The shipped node alerts, firing without a hold (the test's time scale)."""
    doc = yaml.safe_load(ALERTS_FILE.read_text())
    wanted = {"HpcobsNodeDown", "HpcobsPartitionNodesUnavailable"}
    rules = [
        {**rule, "for": "0s"}
        for group in doc["groups"]
        for rule in group["rules"]
        if rule.get("alert") in wanted
    ]
    assert {r["alert"] for r in rules} == wanted
    return {"groups": [{"name": "hpcobs-node", "rules": rules}]}


def without_mutes(node: Any) -> Any:
    """The config without `mute_time_intervals`: the test must not depend on the date."""
    if isinstance(node, dict):
        return {k: without_mutes(v) for k, v in node.items() if k != "mute_time_intervals"}
    if isinstance(node, list):
        return [without_mutes(v) for v in node]
    return node


class Stack:
    def __init__(self, workdir: Path, slurm: SlurmCluster) -> None:
        self.workdir = workdir
        self.slurm = slurm
        self.started: list[Any] = []
        daemons = workdir / "daemons"
        self.state_file = workdir / "incidents.json"
        self.exporter = ExporterProcess(
            "hpcobs-slurm-exporter",
            [
                f"--slurm.conf={slurm.conf_path}",
                f"--slurm.poll-interval={SCRAPE:g}s",
                f"--slurm.state-file={workdir / 'slurm-state.json'}",
                f"--slurm.jobcomp-file={slurm.jobcomp_path}",
            ],
            daemons,
            env=slurm.env,
        )
        self.slo = ExporterProcess(
            "hpcobs-slo",
            ["--eval-interval=2s", f"--incidents.state-file={self.state_file}", SPEC],
            daemons,
            command=[BIN / "hpcobs-slo", "serve"],
        )
        self.webhook = WebhookReceiver()
        self.started.append(self.webhook)
        config = alertmanager_config(self.webhook, self.slo.url + WEBHOOK_PATH)
        config = without_mutes(config)
        incidents = config["route"]["routes"][0]
        assert incidents["receiver"] == "incidents" and incidents["continue"] is True
        incidents.update(group_wait="1s", group_interval="1s", repeat_interval="2s")
        self.alertmanager = Alertmanager(workdir / "alertmanager", config)
        self.prometheus = Prometheus(
            workdir / "prometheus",
            scrape_configs=[
                self._job("hpcobs-slurm", self.exporter.address),
                self._job("hpcobs-slo", self.slo.address),
            ],
            rules=node_rules(),
            alertmanager_url=self.alertmanager.url,
            scrape_interval=f"{SCRAPE:g}s",
            evaluation_interval=f"{EVAL:g}s",
        )

    @staticmethod
    def _job(name: str, target: str) -> dict[str, Any]:
        return {"job_name": name, "static_configs": [{"targets": [target], "labels": {"cluster": CLUSTER}}]}  # fmt: skip

    def start(self) -> Stack:
        self.alertmanager.start(wait=False)
        self.started.append(self.alertmanager)
        self.exporter.launch()
        self.started.append(self.exporter)
        self.prometheus.start(wait=False)
        self.started.append(self.prometheus)
        self.slo.args.append(f"--prometheus.url={self.prometheus.url}")
        self.slo.launch()
        self.started.append(self.slo)
        self.alertmanager.wait_ready()
        self.prometheus.wait_ready()
        self.exporter.wait_ready()
        self.slo.wait_ready()
        return self

    def stop(self) -> None:
        for item in reversed(self.started):
            item.stop()

    def figures(self) -> Figures:
        """The SLO daemon's incident samples."""
        out: Figures = {}
        for family in text_string_to_metric_families(self.slo.scrape()):
            for s in family.samples:
                if s.name.startswith(("hpcobs_incident", "hpcobs_incidents")):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def wait(self, what: str, check: Callable[[Figures], bool], timeout: float = 30) -> Figures:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.figures()
                if check(got):
                    return got
            except OSError:  # restarting
                got = {}
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {timeout:g} s; last figures: {got}\n"
                    f"daemon log:\n{self.slo.process.log_tail(20) if self.slo.process else ''}"
                )
            time.sleep(0.2)


def sample(figures: Figures, name: str, **labels: str) -> float:
    return figures.get((name, tuple(sorted(labels.items()))), 0.0)


def node_down(figures: Figures) -> dict[str, float]:
    """HpcobsNodeDown's incident figures."""
    return {
        name: sample(figures, f"hpcobs_{name}", **NODE_DOWN)
        for name in (
            "incidents_open",
            "incidents_total",
            "incident_duration_seconds_count",
            "incident_duration_seconds_sum",
        )
    }


def accepted(figures: Figures) -> float:
    return sample(figures, "hpcobs_incident_notifications_total", result="accepted")


@pytest.fixture
def stack(tmp_path: Path, slurm_cluster_factory: Callable[..., SlurmCluster]) -> Iterator[Stack]:
    running = Stack(tmp_path / "stack", slurm_cluster_factory())
    try:
        yield running.start()
    finally:
        running.stop()


def test_an_incident_is_measured_once_through_repeats_and_a_restart(stack: Stack) -> None:
    prom, slurm = stack.prometheus, stack.slurm
    prom.wait_for('hpcobs_slurm_nodes{state="idle"}', timeout=30)
    assert node_down(stack.figures())["incidents_total"] == 0

    before = time.time()
    slurm.run("scontrol", "update", f"nodename={slurm.node_name}", "state=down", "reason=e2e")
    t_down = (before + time.time()) / 2

    # fired: one open incident, then Alertmanager's repeats change nothing
    opened = stack.wait("the incident opens", lambda f: node_down(f)["incidents_open"] == 1)
    assert node_down(opened) == {
        "incidents_open": 1,
        "incidents_total": 1,
        "incident_duration_seconds_count": 0,
        "incident_duration_seconds_sum": 0,
    }
    stack.wait("repeat notifications", lambda f: accepted(f) >= accepted(opened) + 2)
    assert node_down(stack.figures()) == node_down(opened)

    # the daemon restarts in the middle of the incident
    stack.slo.stop()
    stack.slo.launch()
    stack.slo.wait_ready()
    assert node_down(stack.figures()) == node_down(opened)  # restored from the state file
    stack.wait("repeats after the restart", lambda f: accepted(f) >= 2)
    assert node_down(stack.figures()) == node_down(opened)

    before = time.time()
    slurm.run("scontrol", "update", f"nodename={slurm.node_name}", "state=resume")
    t_resume = (before + time.time()) / 2
    resolved = stack.wait(
        "the incident resolves", lambda f: node_down(f)["incident_duration_seconds_count"] >= 1
    )
    got = node_down(resolved)
    assert got["incident_duration_seconds_count"] == 1
    assert got["incidents_open"] == 0 and got["incidents_total"] == 1
    duration = got["incident_duration_seconds_sum"]

    # within one evaluation interval of the alert's firing span, as Prometheus recorded it
    (series,) = prom.query('ALERTS{alertname="HpcobsNodeDown",alertstate="firing"}[10m]')
    times = [float(t) for t, _ in series["values"]]
    span = max(times) - min(times)
    assert span <= duration <= span + EVAL + 0.01, (duration, span)
    # and of the node's real downtime, give or take the exporter's poll and the scrape
    real = t_resume - t_down
    print(f"duration {duration:.3f} s, firing span {span:.3f} s, scontrol to scontrol {real:.3f} s")
    assert abs(duration - real) <= EVAL + 2 * SCRAPE + 0.5, (duration, real)

    # every notification the other receivers got, replayed: all duplicates
    payloads = list(stack.webhook.payloads)
    statuses = {a["status"] for p in payloads for a in p["alerts"]}
    assert statuses == {"firing", "resolved"}, statuses
    for payload in payloads:
        status, reply = http_request(
            "POST", stack.slo.url + WEBHOOK_PATH, data=json.dumps(payload).encode()
        )
        assert status == 200 and reply.startswith(b"ok duplicate="), reply
    final = stack.figures()
    assert node_down(final) == got

    # the page incidents (one per partition of the node) feed the example SLO
    pages = sample(
        final,
        "hpcobs_incident_duration_seconds_count",
        alertname="HpcobsPartitionNodesUnavailable",
        severity="page",
    )
    assert pages == len(slurm.partitions)
    prom.wait_for('hpcobs_slo_sli_ratio{slo="incident-resolution",window="5m"} == 1', timeout=30)
    prom.wait_for(
        'hpcobs_slo_events{slo="incident-resolution",kind="total",window="5m"} > 0', timeout=30
    )
