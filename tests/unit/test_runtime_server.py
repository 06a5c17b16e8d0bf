from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcobs.exporters.runtime import webconfig
from hpcobs.exporters.runtime.server import scrape_timeout_from_header
from hpcobs.exporters.runtime.webconfig import (
    BasicAuth,
    FailureLimiter,
    WebConfig,
    load_web_config,
)

from harness.collectors import RaisingCollector, SleepingCollector, StaticCollector
from harness.runtime import Running, basic_header
from harness.tls import TLSMaterial, bcrypt_hash, make_tls_material

pytestmark = pytest.mark.unit


@pytest.fixture
def server() -> Iterator[Running]:
    running = Running([StaticCollector(), RaisingCollector()])
    yield running
    running.stop()


def test_metrics_text_format(server: Running) -> None:
    status, headers, body = server.get("/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'hpcobs_test_value{source="good"} 42.0' in text
    assert 'hpcobs_collector_up{collector="good"} 1.0' in text
    assert 'hpcobs_collector_up{collector="broken"} 0.0' in text
    assert "hpcobs_build_info{python_version=" in text
    assert "hpcobs_test_events_total 1.0" in text


def test_openmetrics_negotiation(server: Running) -> None:
    status, headers, body = server.get(
        "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    )
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_gzip(server: Running) -> None:
    status, headers, body = server.get("/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"hpcobs_collector_up" in gzip.decompress(body)


def test_other_paths(server: Running) -> None:
    assert server.get("/healthz")[0] == 200
    status, _, body = server.get("/")
    assert status == 200
    page = body.decode()
    assert "test-exporter" in page and "broken" in page and 'href="/metrics"' in page
    assert server.get("/nope")[0] == 404
    status, headers, body = server.get("/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_landing_page_shows_state_and_error(server: Running) -> None:
    server.get("/metrics")
    page = server.get("/")[2].decode()
    assert 'class="up">up' in page and 'class="down">down' in page
    assert "simulated: device vanished" in page


def test_collect_filter(server: Running) -> None:
    status, _, body = server.get("/metrics?collect[]=good")
    assert status == 200
    assert b'collector="broken"' not in body and b'collector="good"' in body
    status, _, body = server.get("/metrics?collect[]=nosuch")
    assert status == 400 and b"nosuch" in body


def test_prometheus_scrape_timeout_header_shortens_deadline() -> None:
    running = Running([SleepingCollector(), StaticCollector()], timeout=30.0)
    try:
        started = time.monotonic()
        status, _, body = running.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "1.0"})
        assert time.monotonic() - started < 2.0
        assert status == 200 and b'hpcobs_collector_up{collector="hung"} 0.0' in body
        assert b'hpcobs_test_value{source="good"} 42.0' in body
    finally:
        running.stop()


def test_basic_auth_required_everywhere() -> None:
    web = WebConfig(users={"prom": bcrypt_hash("pw").encode()})
    running = Running([StaticCollector()], web=web)
    try:
        for path in ("/metrics", "/", "/healthz"):
            status, headers, _ = running.get(path)
            assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert running.get("/metrics", basic_header("prom", "bad"))[0] == 401
        assert running.get("/metrics", basic_header("prom", "pw"))[0] == 200
    finally:
        running.stop()


def test_wrong_credentials_never_hold_a_request_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    running = Running(
        [StaticCollector()], web=WebConfig(users={"prom": bcrypt_hash("pw").encode()})
    )
    running.server.slots = threading.BoundedSemaphore(1)  # --web.max-requests=1
    try:
        assert running.get("/metrics", basic_header("prom", "pw"))[0] == 200  # verified, cached
        entered, release = threading.Event(), threading.Event()

        def slow_checkpw(password: bytes, hashed: bytes) -> bool:  # a bcrypt that takes its time
            entered.set()
            release.wait(10)
            return False

        monkeypatch.setattr(webconfig.bcrypt, "checkpw", slow_checkpw)
        statuses: list[int] = []
        attacker = threading.Thread(
            target=lambda: statuses.append(
                running.get("/metrics", basic_header("prom", "guess"))[0]
            )
        )
        attacker.start()
        try:
            assert entered.wait(10)
            # The only slot is free while the wrong password is being checked.
            assert running.get("/metrics", basic_header("prom", "pw"))[0] == 200
        finally:
            release.set()
            attacker.join()
        assert statuses == [401]
    finally:
        running.stop()


def test_throttled_client_gets_429_with_retry_after() -> None:
    users = {"prom": bcrypt_hash("pw").encode()}
    running = Running([StaticCollector()], web=WebConfig(users=users))
    running.server.auth = BasicAuth(users, limiter=FailureLimiter(burst=2, per_second=0.05))
    try:
        assert running.get("/metrics", basic_header("prom", "pw"))[0] == 200
        assert [running.get("/metrics", basic_header("prom", f"bad{i}"))[0] for i in (1, 2)] == [
            401,
            401,
        ]
        status, headers, body = running.get("/metrics", basic_header("prom", "bad3"))
        assert status == 429 and b"failed authentication" in body
        assert 1 <= int(headers["retry-after"]) <= 20
        assert running.get("/metrics")[0] == 401  # no credentials: plain 401, as before
        assert running.get("/metrics", basic_header("prom", "pw"))[0] == 200  # verified: served
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


def tls_web(tmp_path: Path, tls: TLSMaterial, extra: str = "") -> WebConfig:
    cfg = tmp_path / "web.yml"
    cfg.write_text(
        f"tls_server_config:\n  cert_file: {tls.server_cert}\n  key_file: {tls.server_key}\n{extra}"
    )
    return load_web_config(cfg)


def client_context(tls: TLSMaterial, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    if with_cert:
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return ctx


def test_tls_and_plain_http_gets_400(tmp_path: Path, tls: TLSMaterial) -> None:
    running = Running([StaticCollector()], web=tls_web(tmp_path, tls))
    try:
        status, _, body = running.get("/metrics", context=client_context(tls))
        assert status == 200 and b"hpcobs_test_value" in body
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.0 400 Bad Request")
        assert b"HTTP request to an HTTPS server" in reply
        # a client that connects and says nothing does not block others
        idle = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        try:
            assert running.get("/healthz", context=client_context(tls))[0] == 200
        finally:
            idle.close()
    finally:
        running.stop()


def test_client_certificate_required(tmp_path: Path, tls: TLSMaterial) -> None:
    web = tls_web(
        tmp_path,
        tls,
        f"  client_ca_file: {tls.ca_cert}\n  client_auth_type: RequireAndVerifyClientCert\n",
    )
    running = Running([StaticCollector()], web=web)
    try:
        assert running.get("/metrics", context=client_context(tls, with_cert=True))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            running.get("/metrics", context=client_context(tls, with_cert=False))
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("10", 9.5),  # the margin to encode and send: 10 %, at most 0.5 s
        ("1.0", 0.9),
        ("0.5", 0.45),
        ("0.001", 0.0009),
        (None, None),
        ("", None),
        ("abc", None),
        ("0", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
    ],
)
def test_scrape_timeout_header_parsing(header: str | None, expected: float | None) -> None:
    got = scrape_timeout_from_header(header)
    assert got == pytest.approx(expected) if expected is not None else got is None


def up_line(body: bytes, collector: str) -> str:
    prefix = f'hpcobs_collector_up{{collector="{collector}"}} '
    return next(line for line in body.decode().splitlines() if line.startswith(prefix))


def test_real_500ms_scrape_timeout_keeps_a_100ms_collector_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`scrape_timeout: 500ms` sends 0.5: a 0.1 s collector must be up, every time. Invalid or
    tiny header values from any client neither mark it down nor fill the log."""
    running = Running([SleepingCollector("lustre", seconds=0.1)], timeout=10.0)
    header = "X-Prometheus-Scrape-Timeout-Seconds"
    try:
        with caplog.at_level(logging.DEBUG, logger="hpcobs.scrape"):
            for _ in range(5):
                status, _, body = running.get("/metrics", {header: "0.5"})
                assert status == 200 and up_line(body, "lustre").endswith(" 1.0")
            for value in ["nan", "-1", "0", "0.001", "inf", "junk"] * 4:
                status, _, body = running.get("/metrics", {header: value})
                assert status == 200 and up_line(body, "lustre").endswith(" 1.0"), value
                assert running.get("/metrics", {header: "0.5"})[0] == 200
        assert 'class="up">up' in running.get("/")[2].decode()
    finally:
        running.stop()
    flips = [
        r for r in caplog.records if r.getMessage() in ("collector failed", "collector recovered")
    ]
    assert flips == []
