"""The runtime against a real Prometheus: HTTPS + basic auth, 401/400, isolation of failures,
`promtool check metrics`, and start-up errors of the real `hpcobs-node-exporter` binary."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcobs.exporters.runtime.webconfig import load_web_config

from harness.collectors import RaisingCollector, SleepingCollector, StaticCollector
from harness.runtime import ExporterProcess, Running, basic_header
from harness.servers import PrometheusFactory
from harness.tls import TLSMaterial, bcrypt_hash, make_tls_material

pytestmark = pytest.mark.real

PASSWORD = "correct horse"


@pytest.fixture
def tls(tmp_path: Path) -> TLSMaterial:
    return make_tls_material(tmp_path / "tls")


@pytest.fixture
def web_config(tmp_path: Path, tls: TLSMaterial) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {tls.server_cert}\n  key_file: {tls.server_key}\n"
        f"basic_auth_users:\n  prometheus: {bcrypt_hash(PASSWORD)}\n"
    )
    return path


@pytest.fixture
def in_process(web_config: Path) -> Iterator[Running]:
    running = Running(
        [StaticCollector(), RaisingCollector(), SleepingCollector()],
        web=load_web_config(web_config),
        timeout=0.5,
    )
    yield running
    running.stop()


def https_job(
    name: str, port: int, tls: TLSMaterial, password: str | None, scheme: str = "https"
) -> dict:
    job: dict = {
        "job_name": name,
        "scheme": scheme,
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
    }
    if scheme == "https":
        job["tls_config"] = {"ca_file": str(tls.ca_cert)}
    if password is not None:
        job["basic_auth"] = {"username": "prometheus", "password": password}
    return job


def test_prometheus_scrapes_over_https_with_basic_auth(
    prometheus_factory: PrometheusFactory,
    exporter_factory: Callable[..., ExporterProcess],
    in_process: Running,
    tls: TLSMaterial,
    web_config: Path,
    tmp_path: Path,
) -> None:
    config = tmp_path / "node.yml"
    config.write_text(
        f"web.config.file: {web_config}\ncollector.disable-defaults: true\nlog.format: json\n"
    )
    binary = exporter_factory("hpcobs-node-exporter", f"--config.file={config}")
    prom = prometheus_factory(
        scrape_configs=[
            https_job("runtime", in_process.port, tls, PASSWORD),
            https_job("binary", binary.port, tls, PASSWORD),
            https_job("wrong-password", in_process.port, tls, "nope"),
            https_job("no-auth", in_process.port, tls, None),
            https_job("plain-http", in_process.port, tls, PASSWORD, scheme="http"),
        ]
    )
    prom.wait_for("count(up) == 5", timeout=30)
    assert prom.query_value('up{job="runtime"}') == 1.0
    assert prom.query_value('up{job="binary"}') == 1.0
    assert prom.query_value('hpcobs_build_info{job="binary"}') == 1.0
    for job in ("wrong-password", "no-auth", "plain-http"):
        assert prom.query_value(f'up{{job="{job}"}}') == 0.0, job
    errors = {t["labels"]["job"]: t["lastError"] for t in prom.targets()}
    assert "401" in errors["wrong-password"] and "401" in errors["no-auth"]
    assert "400" in errors["plain-http"]

    # a raising and a hung collector: the scrape stays fast, the good collector's data is intact
    up = {
        r["metric"]["collector"]: float(r["value"][1])
        for r in prom.query('hpcobs_collector_up{job="runtime"}')
    }
    assert up == {"good": 1.0, "broken": 0.0, "hung": 0.0}
    assert prom.query_value('hpcobs_test_value{job="runtime",source="good"}') == 42.0
    assert prom.query_value('max_over_time(scrape_duration_seconds{job="runtime"}[1m])') < 1.0


def test_promtool_check_metrics_is_clean(in_process: Running, tls: TLSMaterial) -> None:
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    _, _, body = in_process.get("/metrics", basic_header("prometheus", PASSWORD), context=context)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


@pytest.mark.parametrize(
    ("web_text", "field"),
    [
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            "tls_server_config.cert_file",
        ),
        ("basic_auth_users:\n  admin: hunter2\n", "basic_auth_users.admin"),
        ("tls_server_config:\n  cert_file: a\n  keyfile: b\n", "tls_server_config.keyfile"),
    ],
)
def test_bad_web_config_stops_startup_with_one_line(
    tmp_path: Path, web_text: str, field: str
) -> None:
    bad = tmp_path / "bad-web.yml"
    bad.write_text(web_text)
    started = time.monotonic()
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "hpcobs-node-exporter"),
            "--web.listen-address=127.0.0.1:0",
            f"--web.config.file={bad}",
            "--collector.disable-defaults",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hpcobs-node-exporter: error: ")
    assert str(bad) in lines[0] and field in lines[0]
