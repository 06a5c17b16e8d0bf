"""The HTTP(S) endpoint of an exporter: telemetry path, `/healthz`, landing page.

- `/metrics` (the `--web.telemetry-path`): text format 0.0.4 or OpenMetrics by the `Accept`
  header, gzip when accepted, as prometheus_client does. `collect[]=<name>` restricts the
  scrape to some collectors (as node_exporter does); Prometheus' scrape-timeout header
  shortens the collectors' deadline so the answer arrives before Prometheus gives up.
- TLS is negotiated per connection in the handler thread, so a slow or plain-HTTP client
  never blocks `accept()`. A plain HTTP request to an HTTPS listener gets `400`.
- Basic auth applies to every path; a request without valid credentials gets `401`.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.exposition import choose_encoder
from hpcobs.exporters.runtime.scrape import CollectorState, ScrapeCoordinator
from hpcobs.exporters.runtime.webconfig import BasicAuth, WebConfig

log = logging.getLogger("hpcobs.http")

TLS_HANDSHAKE_TIMEOUT = 10.0
_PLAIN_TO_TLS = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)


def parse_listen_address(address: str) -> tuple[str, int]:
    """`host:port`, `:port` (all interfaces) or `[v6]:port` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be host:port, :port or [ipv6]:port, not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 listen addresses need brackets, e.g. [::1]:9946, not {address!r}")
    return host, int(port)


class _Registry:
    """What prometheus_client's encoders need: an object with `collect()`."""

    def __init__(self, produce: Callable[[], Iterator[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterator[Metric]:
        return self._produce()


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        *,
        program: str,
        version: str,
        coordinator: ScrapeCoordinator,
        extra: Iterable[Callable[[], Iterable[Metric]]] = (),
        web: WebConfig | None = None,
        telemetry_path: str = "/metrics",
        max_requests: int = 40,
    ) -> None:
        host, _ = address
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if not telemetry_path.startswith("/") or telemetry_path in ("/", "/healthz"):
            raise ValueError(
                f"telemetry path must start with / and not be / or /healthz: {telemetry_path!r}"
            )
        self.program = program
        self.version = version
        self.coordinator = coordinator
        self.extra = list(extra)
        self.web = web or WebConfig()
        self.auth = BasicAuth(self.web.users)
        self.telemetry_path = telemetry_path
        self.slots = threading.BoundedSemaphore(max_requests) if max_requests > 0 else None
        self.started = time.time()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.web.tls else "http"
        return f"{scheme}://{shown}:{port}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: TLS handshake (or a 400 for plain HTTP), then HTTP."""
        # Headers and body leave in one write (buffered wfile) and without Nagle's delay:
        # otherwise a keep-alive scrape can wait ~40 ms for the peer's delayed ACK.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.web.ssl_context
        if context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(TLS_HANDSHAKE_TIMEOUT)
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if not first:
            return
        if first != b"\x16":  # not a TLS handshake record: most likely plain HTTP
            with contextlib.suppress(OSError):
                request.sendall(_PLAIN_TO_TLS)
            return
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", extra={"client": client_address[0], "err": str(exc)})
            return
        try:
            tls.settimeout(None)
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    # -- what the handler serves ------------------------------------------------------
    def metrics(self, only: list[str] | None, timeout: float | None) -> Iterator[Metric]:
        yield from self.coordinator.scrape(only=only, timeout=timeout)
        for produce in self.extra:
            yield from produce()

    def landing_page(self) -> bytes:
        rows = "".join(_state_row(s) for s in self.coordinator.states())
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(self.program)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}
.up{{color:#1a7f37}}.down{{color:#cf222e}}.never{{color:#6e7781}}</style></head>
<body><h1>{html.escape(self.program)}</h1>
<p>version {html.escape(self.version)} &middot; up since
{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))}</p>
<p><a href="{html.escape(self.telemetry_path)}">Metrics</a> &middot; <a href="/healthz">Health</a></p>
<h2>Collectors</h2>
<table><tr><th>collector</th><th>state</th><th>last duration</th><th>last success</th><th>last error</th></tr>
{rows}</table></body></html>
"""
        return page.encode()


def _state_row(state: CollectorState) -> str:
    label = {None: "never", True: "up", False: "down"}[state.up]
    success = (
        time.strftime("%H:%M:%S", time.gmtime(state.last_success_unix))
        if state.last_success_unix
        else "–"
    )
    return (
        f'<tr><td>{html.escape(state.name)}</td><td class="{label}">{label}</td>'
        f"<td>{state.duration_seconds:.4f} s</td><td>{success}</td>"
        f"<td>{html.escape(state.last_error)}</td></tr>\n"
    )


class _Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"
    server_version = "hpcobs"
    timeout = 600  # idle keep-alive connections are closed after this many seconds
    wbufsize = -1  # buffered: http.server flushes once per response

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format % args, extra={"client": self.client_address[0]})

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        slots = self.server.slots
        if slots is not None and not slots.acquire(blocking=False):
            self._reply(503, b"too many concurrent requests\n", "text/plain; charset=utf-8", head)
            return
        try:
            self._route(head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            if slots is not None:
                slots.release()

    def _route(self, head: bool) -> None:
        if not self.server.auth.check(self.headers.get("Authorization")):
            self._reply(
                401,
                b"Unauthorized\n",
                "text/plain; charset=utf-8",
                head,
                {"WWW-Authenticate": 'Basic realm="hpcobs"'},
            )
            return
        url = urlsplit(self.path)
        if url.path == self.server.telemetry_path:
            self._metrics(parse_qs(url.query), head)
        elif url.path == "/healthz":
            self._reply(200, b"ok\n", "text/plain; charset=utf-8", head)
        elif url.path == "/":
            self._reply(200, self.server.landing_page(), "text/html; charset=utf-8", head)
        else:
            self._reply(404, b"404 page not found\n", "text/plain; charset=utf-8", head)

    def _metrics(self, query: dict[str, list[str]], head: bool) -> None:
        only = query.get("collect[]")
        if only:
            unknown = sorted(set(only) - set(self.server.coordinator.collectors))
            if unknown:
                body = f"unknown collector(s) in collect[]: {', '.join(unknown)}\n".encode()
                self._reply(400, body, "text/plain; charset=utf-8", head)
                return
        timeout = None
        header = self.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        if header:
            try:
                timeout = float(header) - 0.5  # leave time to encode and send
            except ValueError:
                timeout = None
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(_Registry(lambda: self.server.metrics(only, timeout)))
        extra = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            extra["Content-Encoding"] = "gzip"
        self._reply(200, body, content_type, head, extra)

    def _reply(
        self,
        code: int,
        body: bytes,
        content_type: str,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self.server.web.headers, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
