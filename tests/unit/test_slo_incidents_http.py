"""The webhook over HTTP: the runtime's POST routes, under TLS and basic auth, with bad input.

The server is the daemons' own (`ExporterServer`) with the incident receiver's route and
collector, in this process on a free port.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcobs.exporters.runtime.collector import Collector
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
from hpcobs.exporters.runtime.server import ExporterServer, PostRoute
from hpcobs.exporters.runtime.webconfig import WebConfig, load_web_config
from hpcobs.slo.cli import serve_parser
from hpcobs.slo.daemon import incident_receiver
from hpcobs.slo.incidents import (
    DEFAULT_MAX_BODY_BYTES,
    WEBHOOK_PATH,
    IncidentCollector,
    IncidentReceiver,
    Incidents,
)

from harness.runtime import basic_header
from harness.tls import TLSMaterial, bcrypt_hash, make_tls_material

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data" / "alertmanager"
FIRING = (DATA / "webhook-firing.json").read_bytes()
RESOLVED = (DATA / "webhook-resolved.json").read_bytes()
OPEN_SAMPLE = 'hpcobs_incidents_open{alertname="HpcobsNodeDown",severity="ticket"}'
TEN_MB = 10_000_000


class Served:
    """An ExporterServer on 127.0.0.1 with `routes` and `collectors`, in a thread."""

    def __init__(
        self,
        routes: list[PostRoute],
        collectors: list[Collector],
        web: WebConfig | None = None,
    ) -> None:
        self.coord = ScrapeCoordinator(collectors, timeout=5.0)
        self.server = ExporterServer(
            ("127.0.0.1", 0),
            program="test",
            version="1",
            coordinator=self.coord,
            web=web,
            routes=routes,
        )
        self.port = int(self.server.server_address[1])
        self.context: ssl.SSLContext | None = None
        self.thread = threading.Thread(target=self.server.serve_forever)
        self.thread.start()

    def connection(self) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=self.context)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        status, _, reply = self.request("POST", WEBHOOK_PATH, body, headers)
        return status, reply

    def metrics(self, headers: dict[str, str] | None = None) -> str:
        status, _, reply = self.request("GET", "/metrics", headers=headers)
        assert status == 200, reply
        return reply.decode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.coord.close()
        self.thread.join()


def incidents_server(
    tmp_path: Path | None = None, web: WebConfig | None = None, **route: float
) -> tuple[Served, IncidentReceiver]:
    receiver = IncidentReceiver(Incidents(), tmp_path / "s.json" if tmp_path else None)
    collector = IncidentCollector(receiver)
    collector.name = "incidents"
    limit = int(route.pop("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
    served = Served([PostRoute(WEBHOOK_PATH, receiver.handle, limit, **route)], [collector], web)
    return served, receiver


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, IncidentReceiver]]:
    pair = incidents_server(tmp_path)
    yield pair
    pair[0].stop()


def value(text: str, sample: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_notification_over_http(served: tuple[Served, IncidentReceiver]) -> None:
    server, _ = served
    assert server.post(FIRING) == (200, b"ok opened=1\n")
    assert server.post(FIRING) == (200, b"ok duplicate=1\n")
    assert value(server.metrics(), OPEN_SAMPLE) == 1
    assert server.post(RESOLVED) == (200, b"ok resolved=1\n")
    text = server.metrics()
    assert value(text, OPEN_SAMPLE) == 0
    count = 'hpcobs_incident_duration_seconds_count{alertname="HpcobsNodeDown",severity="ticket"}'
    assert value(text, count) == 1
    assert 'hpcobs_collector_up{collector="incidents"} 1.0' in text


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", b"malformed JSON"),
        (b'{"version": "3", "alerts": []}', b"unknown version '3'"),
        (FIRING.replace(b'"fingerprint"', b'"fingerprint_"'), b"alerts[0]: missing fingerprint"),
    ],
)
def test_bad_input_gets_400_with_one_line_and_changes_nothing(
    served: tuple[Served, IncidentReceiver], raw: bytes, reason: bytes
) -> None:
    server, receiver = served
    server.post(FIRING)
    before = receiver.incidents.to_state()
    status, reply = server.post(raw)
    assert status == 400 and reply.startswith(reason) and reply.count(b"\n") == 1
    assert receiver.incidents.to_state() == before


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):  # the server closes the connection
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_10_mb_body_gets_400_unread_and_the_connection_closes(
    served: tuple[Served, IncidentReceiver],
) -> None:
    server, receiver = served
    before = receiver.incidents.to_state()
    reply = _raw_exchange(
        server.port,
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {TEN_MB}\r\n\r\n".encode()
        + FIRING[:100],
    )
    head, _, text = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert text == f"body of {TEN_MB} bytes is over the limit of {DEFAULT_MAX_BODY_BYTES} bytes\n".encode()  # fmt: skip
    # a client that sends the whole body anyway: refused (or cut off while sending), no change
    padded = FIRING[:-2] + b" " * (TEN_MB - len(FIRING)) + FIRING[-2:]
    try:
        status, _ = server.post(padded)
        assert status == 400
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert receiver.incidents.to_state() == before
    assert receiver.notifications["accepted"] == 0


def test_methods_and_lengths(served: tuple[Served, IncidentReceiver]) -> None:
    server, _ = served
    status, headers, _ = server.request("GET", WEBHOOK_PATH)
    assert status == 405 and headers["allow"] == "POST"
    assert server.request("HEAD", WEBHOOK_PATH)[0] == 405
    status, headers, _ = server.request("POST", "/metrics", b"{}")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert server.request("POST", "/elsewhere", b"{}")[0] == 405
    reply = _raw_exchange(server.port, f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 411 ")
    chunked = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "2\r\n{}\r\n0\r\n\r\n"
    )
    assert _raw_exchange(server.port, chunked.encode()).startswith(b"HTTP/1.1 411 ")
    bad_length = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    assert _raw_exchange(server.port, bad_length.encode()).startswith(b"HTTP/1.1 400 ")


def test_keep_alive_serves_several_notifications(served: tuple[Served, IncidentReceiver]) -> None:
    server, _ = served
    conn = server.connection()
    try:
        for expected in (b"ok opened=1\n", b"ok duplicate=1\n", b"ok resolved=1\n"):
            conn.request("POST", WEBHOOK_PATH, body=RESOLVED if b"resolved" in expected else FIRING)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, expected)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and b"hpcobs_incidents_total" in resp.read()
    finally:
        conn.close()


def test_a_stalled_body_never_blocks_metrics_and_is_cut_off(tmp_path: Path) -> None:
    server, _ = incidents_server(tmp_path, body_timeout=0.5)
    try:
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(FIRING)}\r\n\r\n"
        stalled.sendall(head.encode() + FIRING[:10])
        assert "hpcobs_incident_notifications_total" in server.metrics()  # meanwhile
        assert stalled.recv(100) == b""  # closed once the body's time is up, no reply
        stalled.close()
    finally:
        server.stop()


def test_a_slow_handler_never_blocks_metrics() -> None:
    release, entered = threading.Event(), threading.Event()

    def slow(body: bytes) -> tuple[int, str]:
        entered.set()
        release.wait(30)
        return 200, "done"

    server = Served([PostRoute("/slow", slow)], [])
    try:
        conn = server.connection()
        conn.request("POST", "/slow", body=b"x")
        assert entered.wait(10)
        assert server.request("GET", "/metrics")[0] == 200  # while the handler waits
        release.set()
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"done\n")
        conn.close()
    finally:
        release.set()
        server.stop()


def test_a_failing_handler_answers_500() -> None:
    def broken(body: bytes) -> tuple[int, str]:
        raise RuntimeError("bug")

    server = Served([PostRoute("/broken", broken)], [])
    try:
        status, _, reply = server.request("POST", "/broken", b"{}")
        assert (status, reply) == (500, b"internal error (logged)\n")
        assert server.request("GET", "/healthz")[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/metrics", "/", "/healthz", "metrics"])
def test_a_route_needs_a_path_of_its_own(path: str) -> None:
    with pytest.raises(ValueError, match="path of its own"):
        ExporterServer(
            ("127.0.0.1", 0),
            program="t",
            version="1",
            coordinator=ScrapeCoordinator([], timeout=1.0),
            routes=[PostRoute(path, lambda b: (200, ""))],
        )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


def test_tls_and_basic_auth_guard_the_webhook(tmp_path: Path, tls: TLSMaterial) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text(
        f"tls_server_config:\n  cert_file: {tls.server_cert}\n  key_file: {tls.server_key}\n"
        f"basic_auth_users:\n  alertmanager: {bcrypt_hash('s3cret')}\n"
    )
    server, receiver = incidents_server(tmp_path, load_web_config(cfg))
    try:
        server.context = ssl.create_default_context(cafile=str(tls.ca_cert))
        auth = basic_header("alertmanager", "s3cret")
        assert server.post(FIRING)[0] == 401
        assert server.post(FIRING, basic_header("alertmanager", "wrong"))[0] == 401
        assert not receiver.incidents.open
        assert server.post(FIRING, auth) == (200, b"ok opened=1\n")
        assert value(server.metrics(auth), OPEN_SAMPLE) == 1
        # plain HTTP to the TLS port is refused before any request is read
        plain = _raw_exchange(server.port, f"POST {WEBHOOK_PATH} HTTP/1.1\r\n\r\n".encode())
        assert plain.startswith(b"HTTP/1.0 400 ")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[tuple[Served, IncidentReceiver]]:
    pair = incidents_server(max_body_bytes=4096)
    yield pair
    pair[0].stop()


@given(
    st.binary(max_size=5000)
    | st.sampled_from([FIRING, RESOLVED]).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda n: b[:n] + b[n + 1 :])
    )
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_fuzzed_bodies_never_crash_or_hang_the_server(
    fuzz_server: tuple[Served, IncidentReceiver], raw: bytes
) -> None:
    server, _ = fuzz_server
    status, reply = server.post(raw)
    assert status in (200, 400) and reply.endswith(b"\n") and reply.count(b"\n") == 1
    assert server.request("GET", "/healthz")[0] == 200


# -- flags ---------------------------------------------------------------------------------
def test_serve_flags_build_the_route_and_restore_the_state(tmp_path: Path) -> None:
    state = tmp_path / "incidents.json"
    receiver = IncidentReceiver(Incidents(), state)
    receiver.handle(FIRING)
    args = serve_parser().parse_args(
        [
            "--prometheus.url=http://127.0.0.1:9",
            f"--incidents.state-file={state}",
            "--incidents.max-alertnames=5",
            "--incidents.max-body-bytes=1000",
            "spec.yaml",
        ]
    )
    spec, route = incident_receiver(args)
    assert (route.path, route.max_body_bytes) == (WEBHOOK_PATH, 1000)
    assert spec.name == "incidents"
    assert route.handle(FIRING) == (200, "ok duplicate=1")  # restored: still open
    defaults = serve_parser().parse_args(["--prometheus.url=http://x", "s.yaml"])
    assert defaults.incidents_state_file is None
    assert defaults.incidents_max_body_bytes == DEFAULT_MAX_BODY_BYTES < TEN_MB
