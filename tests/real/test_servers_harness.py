"""The server harness (tests/harness/servers.py) against the real Debian binaries."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness.servers import (
    AlertmanagerFactory,
    ComponentStartError,
    NodeExporterFactory,
    PrometheusAPIError,
    PrometheusFactory,
    Pushgateway,
    WaitTimeoutError,
    WebhookReceiver,
    backfill,
    free_port,
)

pytestmark = pytest.mark.real


def test_prometheus_scrapes_pushgateway(
    prometheus_factory: PrometheusFactory, pushgateway: Pushgateway
) -> None:
    t0 = time.monotonic()
    prom = prometheus_factory(
        scrape_configs=[
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [pushgateway.listen_address]}],
            }
        ]
    )
    started = time.monotonic() - t0

    # A plain HTTP PUT of text exposition, as any client would do it.
    body = b'# TYPE hpcobs_harness_pushed gauge\nhpcobs_harness_pushed{kind="put"} 42\n'
    req = urllib.request.Request(
        f"{pushgateway.url}/metrics/job/harness/instance/n1", data=body, method="PUT"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    assert 'hpcobs_harness_pushed{instance="n1",job="harness",kind="put"} 42' in (
        pushgateway.metrics_text()
    )

    result = prom.wait_for('hpcobs_harness_pushed{job="harness",instance="n1"}', timeout=20)
    queryable = time.monotonic() - t0
    assert [r["value"][1] for r in result] == ["42"]
    assert result[0]["metric"]["kind"] == "put"
    assert prom.query_value('up{job="pushgateway"}') == 1.0
    assert [t["health"] for t in prom.targets()] == ["up"]
    print(
        f"prometheus ready after {started:.2f} s, pushed sample queryable after {queryable:.2f} s"
    )

    # POST replaces only the metric names it carries; the group keeps the PUT one.
    pushgateway.push("harness", "hpcobs_harness_posted 7", {"instance": "n1"}, method="POST")
    prom.wait_for(
        'hpcobs_harness_posted{job="harness"}',
        timeout=10,
        predicate=lambda r: [x["value"][1] for x in r] == ["7"],
    )
    assert prom.query_value('hpcobs_harness_pushed{job="harness"}') == 42.0

    with pytest.raises(PrometheusAPIError, match="bad_data"):
        prom.query("sum(")
    with pytest.raises(WaitTimeoutError, match="did not return data"):
        prom.wait_for("hpcobs_no_such_metric", timeout=0.5)


def test_alert_reaches_webhook(
    prometheus_factory: PrometheusFactory,
    alertmanager_factory: AlertmanagerFactory,
    webhook_receiver: WebhookReceiver,
) -> None:
    rules = {
        "groups": [
            {
                "name": "harness",
                "rules": [
                    {
                        "alert": "HarnessAlwaysFiring",
                        "expr": "vector(1)",
                        "labels": {"severity": "page"},
                        "annotations": {"summary": "always firing"},
                    }
                ],
            }
        ]
    }
    t0 = time.monotonic()
    # Start both at once, then wait for both.
    am = alertmanager_factory(webhook_receiver.alertmanager_config(), wait=False)
    prom = prometheus_factory(rules=rules, alertmanager_url=am.url, wait=False)
    am.wait_ready()
    prom.wait_ready()
    started = time.monotonic() - t0

    payload = webhook_receiver.wait_for(
        lambda p: (
            p.get("status") == "firing"
            and any(a["labels"].get("alertname") == "HarnessAlwaysFiring" for a in p["alerts"])
        ),
        timeout=20,
    )
    latency = time.monotonic() - t0
    alert = next(a for a in payload["alerts"] if a["labels"]["alertname"] == "HarnessAlwaysFiring")
    assert alert["labels"]["severity"] == "page"
    assert alert["annotations"]["summary"] == "always firing"
    assert payload["receiver"] == "webhook"

    am_alerts = am.alerts(filter='alertname="HarnessAlwaysFiring"')
    assert [a["labels"]["alertname"] for a in am_alerts] == ["HarnessAlwaysFiring"]
    assert [a["labels"]["alertname"] for a in prom.alerts()] == ["HarnessAlwaysFiring"]
    print(f"prometheus+alertmanager ready after {started:.2f} s, webhook after {latency:.2f} s")


def test_node_exporter_textfile(node_exporter_factory: NodeExporterFactory, tmp_path: Path) -> None:
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    (textdir / "harness.prom").write_text(
        "# HELP hpcobs_harness_textfile A test metric.\n"
        "# TYPE hpcobs_harness_textfile gauge\n"
        'hpcobs_harness_textfile{source="harness"} 3.5\n'
    )
    t0 = time.monotonic()
    ne = node_exporter_factory(
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textdir}",
    )
    started = time.monotonic() - t0
    text = ne.scrape()
    assert 'hpcobs_harness_textfile{source="harness"} 3.5' in text.splitlines()
    assert "node_textfile_scrape_error 0" in text.splitlines()
    assert 'node_scrape_collector_success{collector="textfile"} 1' in text.splitlines()
    # Defaults are off: no cpu collector.
    assert "node_cpu_seconds_total" not in text
    print(f"node_exporter ready after {started:.2f} s")


def test_backfill_then_query(prometheus_factory: PrometheusFactory, tmp_path: Path) -> None:
    step = 60
    end = (int(time.time()) // step) * step - 3600  # four hours ending an hour ago
    start = end - 4 * 3600
    lines = [
        "# HELP hpcobs_harness_backfill Backfilled test counter.",
        "# TYPE hpcobs_harness_backfill counter",
    ]
    for t in range(start, end + 1, step):
        value = (t - start) // step * 6  # 6 per minute = 0.1/s
        lines.append(f'hpcobs_harness_backfill_total{{node="n1"}} {value} {t}')
    tsdb = tmp_path / "tsdb"
    t0 = time.monotonic()
    blocks = backfill("\n".join(lines) + "\n", tsdb)
    backfilled = time.monotonic() - t0
    assert blocks, "promtool created no block"

    prom = prometheus_factory(tsdb_path=tsdb)
    total = prom.query_value("hpcobs_harness_backfill_total", time=end)
    assert total == (end - start) // step * 6
    rate = prom.query_value("rate(hpcobs_harness_backfill_total[1h])", time=end)
    assert rate == pytest.approx(0.1)
    series = prom.query_range("hpcobs_harness_backfill_total", start=start, end=end, step=3600)
    assert len(series) == 1
    assert [float(v) for _, v in series[0]["values"]] == [0, 360, 720, 1080, 1440]
    print(f"backfill of 4 h took {backfilled:.2f} s, {len(blocks)} block(s)")


def test_start_failure_reports_command_and_log(prometheus_factory: PrometheusFactory) -> None:
    bad: dict[str, Any] = {"scrape_configs": [{"job_name": "x", "bogus_field": 1}]}
    with pytest.raises(ComponentStartError) as info:
        prometheus_factory(extra_config=bad)
    message = str(info.value)
    assert "exited with code" in message
    assert "--web.listen-address=127.0.0.1:" in message  # the command line
    assert "bogus_field" in message  # from the log tail


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
