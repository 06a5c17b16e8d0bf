"""The exporter's HTTP connections: HTTP/1.0 keep-alive, HTTP/0.9, idle and read-header
timeouts, the connection cap, the `Server` header and the dual-stack `:port` listener.

Each test talks to an in-process ExporterServer over a raw socket, so it sees exactly what a
client such as `ab -k` or a slowloris sees on the wire."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from hpcobs.exporters.runtime.cli import exporter_parser, parse_args
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
from hpcobs.exporters.runtime.server import ExporterServer

from harness.collectors import StaticCollector, wait_until

pytestmark = pytest.mark.unit


@contextmanager
def serving(host: str = "127.0.0.1", **options: Any) -> Iterator[ExporterServer]:
    """An ExporterServer on `host`, an ephemeral port, with `options`, in a thread."""
    coord = ScrapeCoordinator([StaticCollector()], timeout=1.0)
    server = ExporterServer(
        (host, 0), program="test-exporter", version="1.2.3", coordinator=coord, **options
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        coord.close()
        thread.join()


def connect(server: ExporterServer, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, int(server.server_address[1])), timeout=5)


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One response: status line, headers (lower-case names), body by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("iso-8859-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, headers, body[:length]


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes (EOF or reset) within `within` seconds; data is discarded."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


# -- HTTP/1.0 keep-alive and HTTP/0.9 ----------------------------------------------------------
def test_http10_keep_alive_is_announced_and_kept() -> None:
    """`ab -k`: an HTTP/1.0 client keeps the connection only when the reply says keep-alive."""
    with serving() as server, connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /metrics HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(sock)
            assert status.split()[1] == "200"
            assert headers.get("connection", "").lower() == "keep-alive", headers
            assert b"hpcobs_test_value" in body


def test_http10_without_keep_alive_is_closed() -> None:
    with serving() as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status.split()[1] == "200" and body == b"ok\n"
        assert headers.get("connection", "").lower() != "keep-alive"
        assert closed_by_server(sock, within=5)


def test_http09_request_gets_400_and_is_closed() -> None:
    with serving() as server, connect(server) as sock:
        sock.sendall(b"GET /metrics\r\n")  # HTTP/0.9: no version, no headers
        status, headers, _ = read_response(sock)
        assert status.startswith("HTTP/1.1 400")
        assert headers["connection"] == "close"
        assert closed_by_server(sock, within=5)


# -- timeouts and the connection cap -----------------------------------------------------------
def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    with serving(idle_timeout=0.3) as server:
        with connect(server) as silent:  # connects, never sends
            assert closed_by_server(silent, within=5)
        with connect(server) as kept:  # one request, then idle on a keep-alive connection
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(kept)[0].split()[1] == "200"
            assert closed_by_server(kept, within=5)
        wait_until(lambda: server.connections == 0)
        assert server.connections == 0


def test_slowloris_headers_are_cut_off_by_the_read_header_timeout() -> None:
    """Headers trickling in a byte at a time do not hold the connection past the deadline."""
    with serving(idle_timeout=30.0, read_header_timeout=0.5) as server, connect(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        closed = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(sock, within=0.1):
                closed = True
                break
        assert closed, "the server still waits for headers after 10 s"


def handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_connections_over_the_cap_are_refused_without_a_thread() -> None:
    with serving(max_connections=2, idle_timeout=30.0) as server:
        held = [connect(server), connect(server)]
        try:
            assert wait_until(lambda: server.connections == 2)
            threads = handler_threads()
            with connect(server) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    reply = extra.recv(4096)
                except ConnectionResetError:
                    reply = b""
                assert reply == b"" or reply.startswith(b"HTTP/1.1 503"), reply
                assert reply == b"" or closed_by_server(extra, within=5)
            assert server.connections == 2
            assert handler_threads() == threads
        finally:
            for sock in held:
                sock.close()
        assert wait_until(lambda: server.connections == 0)
        with connect(server) as sock:  # the slots are free again
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0].split()[1] == "200"


def test_a_slot_is_free_once_its_client_has_seen_the_close() -> None:
    # With one slot, a client that read a reply up to the close must find the slot free:
    # the server gives it back before closing, not after (else the next connection races
    # the closing thread and gets 503).
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with serving(max_connections=1) as server:
        for _ in range(200):
            with connect(server) as sock:
                sock.sendall(get)
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply


def test_bad_connection_options_are_rejected() -> None:
    coord = ScrapeCoordinator([StaticCollector()], timeout=1.0)
    try:
        for options in ({"max_connections": 0}, {"idle_timeout": 0}, {"read_header_timeout": -1}):
            with pytest.raises(ValueError):
                ExporterServer(
                    ("127.0.0.1", 0),
                    program="p",
                    version="v",
                    coordinator=coord,
                    **options,
                )
    finally:
        coord.close()


# -- Server header, listen addresses ---------------------------------------------------------
def test_server_header_does_not_reveal_the_python_version() -> None:
    with serving() as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        _, headers, _ = read_response(sock)
        assert headers["server"] == "hpcobs"
        sock.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        _, headers, _ = read_response(sock)
        assert "python" not in headers["server"].lower()


def healthz(server: ExporterServer, host: str) -> int:
    with connect(server, host) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(read_response(sock)[0].split()[1])


@pytest.mark.parametrize("host", ["", "::"])
def test_all_interfaces_listen_on_ipv4_and_ipv6(host: str) -> None:
    """`:port` and `[::]:port` take both 127.0.0.1 and ::1, as node_exporter does."""
    with serving(host) as server:
        assert healthz(server, "127.0.0.1") == 200
        assert healthz(server, "::1") == 200


def test_explicit_ipv4_any_stays_ipv4_only() -> None:
    with serving("0.0.0.0") as server:
        assert healthz(server, "127.0.0.1") == 200
        with pytest.raises(OSError):
            healthz(server, "::1")


def test_connection_flags() -> None:
    parser = exporter_parser("prog", "test", ":9946")
    args = parse_args(parser, [])
    assert (args.web_max_connections, args.web_idle_timeout, args.web_read_header_timeout) == (
        64,
        90.0,
        10.0,
    )
    args = parse_args(
        parser,
        ["--web.max-connections=8", "--web.idle-timeout=1m30s", "--web.read-header-timeout=500ms"],
    )
    assert (args.web_max_connections, args.web_idle_timeout, args.web_read_header_timeout) == (
        8,
        90.0,
        0.5,
    )
    for bad in ("--web.max-connections=0", "--web.idle-timeout=0s", "--web.read-header-timeout=x"):
        with pytest.raises(SystemExit):
            parse_args(exporter_parser("prog", "test", ":9946"), [bad])
