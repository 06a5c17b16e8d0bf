"""The runtime's HTTP behaviour against real clients: a real Prometheus with
`scrape_timeout: 500ms`, and the real `hpcobs-node-exporter` binary with the connection flags
(`--web.max-connections`, `--web.idle-timeout`) on a dual-stack `:PORT` listener."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.collectors import SleepingCollector, StaticCollector, wait_until
from harness.runtime import ExporterProcess, Running
from harness.servers import PrometheusFactory

pytestmark = pytest.mark.real


def test_prometheus_500ms_scrape_timeout_keeps_a_100ms_collector_up(
    prometheus_factory: PrometheusFactory,
) -> None:
    """Prometheus sends `X-Prometheus-Scrape-Timeout-Seconds: 0.5`; a 0.1 s collector used to
    get 0.001 s and stay down for good."""
    running = Running([SleepingCollector("lustre", seconds=0.1), StaticCollector()], timeout=10.0)
    try:
        prom = prometheus_factory(
            scrape_configs=[
                {
                    "job_name": "runtime",
                    "scrape_interval": "1s",
                    "scrape_timeout": "500ms",
                    "static_configs": [{"targets": [f"127.0.0.1:{running.port}"]}],
                }
            ]
        )
        prom.wait_for('count_over_time(up{job="runtime"}[1m]) >= 5', timeout=40)
        assert prom.query_value('min_over_time(up{job="runtime"}[1m])') == 1.0
        lustre = 'hpcobs_collector_up{job="runtime",collector="lustre"}'
        assert prom.query_value(f"min_over_time({lustre}[1m])") == 1.0
        assert prom.query_value(f"count_over_time({lustre}[1m])") >= 5
    finally:
        running.stop()


def request(host: str, port: int, raw: bytes) -> bytes:
    """Send `raw`, return everything until the server closes (at most 10 s)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_node_exporter_binary_dual_stack_and_connection_limits(
    exporter_factory: Callable[..., ExporterProcess], tmp_path: Path
) -> None:
    exporter = exporter_factory(
        "hpcobs-node-exporter",
        "--collector.disable-defaults",
        "--web.max-connections=2",
        "--web.idle-timeout=3s",
        "--web.read-header-timeout=1s",
        start=False,
    )
    exporter.args.append(f"--web.listen-address=:{exporter.port}")  # the last one wins
    exporter.start()
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for host in ("127.0.0.1", "::1"):
        reply = request(host, exporter.port, get)
        assert reply.startswith(b"HTTP/1.1 200"), (host, reply)
        assert b"\r\nServer: hpcobs\r\n" in reply and b"Python" not in reply
    # HTTP/0.9: a 400 and the connection closed, not held
    assert request("127.0.0.1", exporter.port, b"GET /metrics\r\n").startswith(b"HTTP/1.1 400")

    held = [socket.create_connection(("127.0.0.1", exporter.port), timeout=10) for _ in range(2)]
    try:
        # connections are accepted in order: the two held ones take the slots, this one is
        # refused (the held ones are idle for 3 s before the server closes them)
        try:
            reply = request("127.0.0.1", exporter.port, get)
        except ConnectionResetError:
            reply = b""
        assert reply == b"" or reply.startswith(b"HTTP/1.1 503"), reply
        # the idle ones are closed by the server after --web.idle-timeout
        assert all(closed_within(sock, 10) for sock in held)
    finally:
        for sock in held:
            sock.close()

    def healthy() -> bool:
        try:
            return request("127.0.0.1", exporter.port, get).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    assert wait_until(healthy, timeout=10), "the slots of closed connections were not given back"
