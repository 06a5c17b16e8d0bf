"""The HTTP(S) endpoint of an exporter: telemetry path, `/healthz`, landing page.

- `/metrics` (the `--web.telemetry-path`): text format 0.0.4 or OpenMetrics by the `Accept`
  header, gzip when accepted, as prometheus_client does. `collect[]=<name>` restricts the
  scrape to some collectors (as node_exporter does); Prometheus' scrape-timeout header
  shortens the collectors' deadline so the answer arrives before Prometheus gives up.
- TLS is negotiated per connection in the handler thread, so a slow or plain-HTTP client
  never blocks `accept()`. A plain HTTP request to an HTTPS listener gets `400`.
- Basic auth applies to every path and is checked before a request slot is taken: without
  valid credentials `401`; `429` with `Retry-After` when the client address has failed too
  often lately or all bcrypt verifiers are busy (verified credentials are cached and pass).
- Connections: at most `max_connections` at once (more are refused with `503` by the accepting
  thread, no thread is started for them); a request's line and headers must arrive within
  `read_header_timeout`, the next request on a keep-alive connection within `idle_timeout`.
  HTTP/1.0 keep-alive is answered `Connection: keep-alive`; HTTP/0.9 gets `400` and is closed.
- `:port` and `[::]:port` listen on IPv6 and IPv4 (one dual-stack socket), as node_exporter.
- POST routes (`PostRoute`, e.g. a webhook receiver), under the same TLS and basic auth: the
  body needs a `Content-Length` (else `411`), one over the route's `max_body_bytes` gets `400`
  unread (and the connection is closed), and it must arrive within `body_timeout`. The handler
  answers one line of text; it runs in the connection's thread, so it never holds up a scrape.
  A GET to a POST route, or a POST elsewhere, gets `405`.
- Between requests the accepting thread sleeps in `poll()` without a timeout: a connection or
  `shutdown()` (through a wake-up socket, also the process' signal wake-up fd) wakes it, no
  timer does (socketserver's loop wakes every `poll_interval` to look for a shutdown).
"""

from __future__ import annotations

import contextlib
import gzip
import html
import io
import logging
import math
import queue
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.exposition import choose_encoder
from hpcobs.exporters.runtime.once import OnceLog
from hpcobs.exporters.runtime.scrape import CollectorState, ScrapeCoordinator
from hpcobs.exporters.runtime.webconfig import AuthOutcome, BasicAuth, WebConfig

log = logging.getLogger("hpcobs.http")

TLS_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 90.0
DEFAULT_READ_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64
# A connection's thread waits this long for the next connection before it ends: a client that
# connects anew for every scrape then costs no thread start per scrape (~85 µs of CPU, a third
# of the overhead of a new connection; issue 16), and an idle daemon keeps no spare thread.
CONNECTION_THREAD_IDLE = 60.0
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
ENCODE_MARGIN = 0.5  # seconds kept back from Prometheus' timeout to encode and send, at most
_OVER_CAPACITY_BODY = b"too many open connections\n"
_OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(_OVER_CAPACITY_BODY), _OVER_CAPACITY_BODY)
)
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


def scrape_timeout_from_header(value: str | None) -> float | None:
    """Prometheus' `X-Prometheus-Scrape-Timeout-Seconds` → the collectors' deadline: the
    timeout less a margin to encode and send (10 %, at most 0.5 s). None (no client deadline)
    when absent or not a finite positive number."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds - min(ENCODE_MARGIN, 0.1 * seconds)


@dataclass(frozen=True)
class PostRoute:
    """A POST endpoint beside the telemetry path: `handle(body)` gets the whole request body
    (at most `max_body_bytes`, read within `body_timeout` seconds) and returns the HTTP status
    and one line of text for the reply. An exception in it answers `500` (logged)."""

    path: str
    handle: Callable[[bytes], tuple[int, str]]
    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


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
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        read_header_timeout: float = DEFAULT_READ_HEADER_TIMEOUT,
        routes: Sequence[PostRoute] = (),
    ) -> None:
        host, port = address
        # `:port` and `[::]:port`: one IPv6 socket that takes IPv4 too (IPV6_V6ONLY=0); where
        # the kernel has no IPv6, `:port` falls back to IPv4. `0.0.0.0:port` stays IPv4 only.
        self.dual_stack = host in ("", "::") and _ipv6_available()
        if self.dual_stack:
            address = ("::", port)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        if not idle_timeout > 0 or not read_header_timeout > 0:
            raise ValueError("idle and read-header timeouts must be positive")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
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
        self.routes: dict[str, PostRoute] = {}
        for route in routes:
            if not route.path.startswith("/") or route.path in (telemetry_path, "/", "/healthz"):
                raise ValueError(f"a POST route needs a path of its own: {route.path!r}")
            if route.path in self.routes or route.max_body_bytes < 0:
                raise ValueError(f"POST route {route.path!r}: listed twice or negative limit")
            self.routes[route.path] = route
        self.slots = threading.BoundedSemaphore(max_requests) if max_requests > 0 else None
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.read_header_timeout = read_header_timeout
        self.connections = 0  # open connections, each with its handler thread
        self._connections_lock = threading.Lock()
        # threads between connections (see CONNECTION_THREAD_IDLE) and what is handed to them
        self._idle_threads = 0
        self._handoff: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._threads_started = 0
        self._refusals = OnceLog(log)
        self.started = time.time()
        # serve_forever()'s wake-up: shutdown() (or a signal, see wakeup_fd) writes a byte
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stop_requested = False
        self._stopped = threading.Event()
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._close_wake_sockets()
            raise

    # -- the accepting loop -----------------------------------------------------------------
    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Accept connections until `shutdown()`. Sleeps in `poll()` until a connection or a
        wake-up arrives; `poll_interval` (seconds) only bounds that sleep if given (the
        stdlib's loop wakes every 0.5 s by default, 0.2 s as this daemon used it: 5 wake-ups
        a second of an idle daemon, next to the MPI ranks of the job on the node; issue 16)."""
        self._stopped.clear()
        try:
            with selectors.PollSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_reader, selectors.EVENT_READ)
                while not self._stop_requested:
                    ready = selector.select(poll_interval)
                    if self._stop_requested:
                        break
                    for key, _ in ready:
                        if key.fileobj is self:
                            self._accept_one()
                        else:
                            self._drain_wake_ups()
                    self.service_actions()
        finally:
            self._stop_requested = False
            self._stopped.set()

    def _accept_one(self) -> None:
        """socketserver's `_handle_request_noblock`, from its public parts."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def shutdown(self) -> None:
        """Stop `serve_forever()` (running in another thread) and wait until it has returned."""
        self._stop_requested = True
        self.wake()
        self._stopped.wait()

    def wake(self) -> None:
        """Wake the accepting loop (it then looks whether it should stop)."""
        with contextlib.suppress(OSError):  # full: a wake-up is already pending; closed
            self._wake_writer.send(b"\0")

    @property
    def wakeup_fd(self) -> int:
        """For `signal.set_wakeup_fd`: a signal delivered to any thread wakes the accepting
        (main) thread, which then runs the Python signal handler."""
        return self._wake_writer.fileno()

    def _drain_wake_ups(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_reader.recv(4096):
                pass

    def _close_wake_sockets(self) -> None:
        self._wake_reader.close()
        self._wake_writer.close()

    def server_close(self) -> None:
        super().server_close()
        self._close_wake_sockets()
        with self._connections_lock:  # threads waiting for a connection: end them
            idle, self._idle_threads = self._idle_threads, 0
            for _ in range(idle):
                self._handoff.put(None)

    def server_bind(self) -> None:
        if self.dual_stack:
            with contextlib.suppress(OSError, AttributeError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.web.tls else "http"
        return f"{scheme}://{shown}:{port}"

    # -- connections ------------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accepting thread: over `max_connections`, answer 503 and close, no thread.
        Otherwise the connection goes to a thread waiting between connections, or a new one."""
        with self._connections_lock:
            admitted = self.connections < self.max_connections
            handed = False
            if admitted:
                self.connections += 1
                if self._idle_threads:
                    self._idle_threads -= 1
                    self._handoff.put((request, client_address))  # under the lock: see below
                    handed = True
                else:
                    self._threads_started += 1
                    number = self._threads_started
        if not admitted:
            self._refuse(request, client_address)
            return
        if handed:
            return
        try:
            threading.Thread(
                target=self._connection_thread,
                args=(request, client_address),
                name=f"http-{number} (process_request_thread)",
                daemon=True,
            ).start()
        except BaseException:  # no thread started: nothing will release the slot
            self._release_connection()
            raise

    def _connection_thread(self, request: Any, client_address: Any) -> None:
        work: tuple[Any, Any] | None = (request, client_address)
        del request, client_address
        while work is not None:
            self.process_request_thread(*work)
            work = None
            with self._connections_lock:
                self._idle_threads += 1
            while True:
                try:
                    work = self._handoff.get(timeout=CONNECTION_THREAD_IDLE)
                    break
                except queue.Empty:
                    with self._connections_lock:
                        # A connection is handed over under this lock, after the count was
                        # taken down: one queued now is this thread's (or another idle one's).
                        if self._handoff.empty():
                            self._idle_threads -= 1
                            return

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # The slot is given back before the socket is closed, so a plain-HTTP client that has
        # seen the close can count on the slot being free (socketserver closes first). A TLS
        # socket is closed by finish_request, a moment before.
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._release_connection()
            self.shutdown_request(request)

    def _release_connection(self) -> None:
        with self._connections_lock:
            self.connections -= 1

    def _refuse(self, request: Any, client_address: Any) -> None:
        if self.web.ssl_context is None:  # a TLS client would need a handshake first
            with contextlib.suppress(OSError):
                request.send(_OVER_CAPACITY, socket.MSG_DONTWAIT)
        self.shutdown_request(request)
        self._refusals.warning(
            "max-connections",
            "connection limit reached, refusing new connections (logged once)",
            max_connections=self.max_connections,
            client=str(client_address[0]),
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or times out is not worth a traceback on stderr."""
        exc = sys.exc_info()[1]
        client = str(client_address[0]) if client_address else ""
        if isinstance(exc, OSError):
            log.debug("connection error", extra={"client": client, "err": str(exc)})
        else:
            log.error("request failed", exc_info=True, extra={"client": client})

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


class _DeadlineReader(socket.SocketIO):
    """The connection's raw reader; while `deadline` (monotonic) is set, reads fail with
    TimeoutError once it has passed, however slowly the bytes trickle in (slowloris)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, "rb")
        self.conn = sock
        self.deadline: float | None = None

    def readinto(self, b: Any) -> int | None:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            self.conn.settimeout(remaining)
        return super().readinto(b)


class _Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"
    server_version = "hpcobs"  # no Python version in the `Server` header
    wbufsize = -1  # buffered: http.server flushes once per response
    _reader: _DeadlineReader
    _buffered: io.BufferedReader[_DeadlineReader]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format % args, extra={"client": self.client_address[0]})

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        # the socket timeout bounds writing a response; reading is bounded by deadlines
        self.connection.settimeout(self.server.idle_timeout)
        self.rfile.close()  # makefile()'s reader: replaced by one that keeps deadlines
        self._reader = _DeadlineReader(self.connection)
        self._buffered = self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The next request must start within the idle timeout, and its line and headers be
        # complete within the read-header timeout; otherwise the connection is closed.
        self._reader.deadline = time.monotonic() + self.server.idle_timeout
        try:
            started = self._buffered.peek(1)
        except OSError:  # TimeoutError, reset
            started = b""
        if not started:
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + self.server.read_header_timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        try:
            raw: bytes = getattr(self, "raw_requestline", b"")
            words = raw.split()
            if len(words) == 2:
                # HTTP/0.9 (no version, no headers follow): 400 now, not a wait for headers
                self.requestline = str(raw, "iso-8859-1").rstrip("\r\n")
                self.command, self.path = str(words[0], "iso-8859-1"), ""
                self.request_version = self.protocol_version  # so the status line is sent
                self.close_connection = True
                self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not supported")
                return False
            return super().parse_request()
        finally:
            self._reader.deadline = None
            self.connection.settimeout(self.server.idle_timeout)

    def end_headers(self) -> None:
        # An HTTP/1.0 client keeps the connection only when told so; otherwise it waits for
        # the close that never comes (`ab -k`).
        if self.request_version == "HTTP/1.0" and not self.close_connection:
            self.send_header("Connection", "keep-alive")
        super().end_headers()

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_POST(self) -> None:
        self._serve(head=False, post=True)

    def _serve(self, head: bool, post: bool = False) -> None:
        keep_open = not self.close_connection
        if post:  # a body left unread would be taken for the next request: close, unless
            self.close_connection = True  # _post() reads it
        # Credentials first: a request that fails them never holds a request slot.
        try:
            if not self._authorized(head):
                return
        except (BrokenPipeError, ConnectionResetError):
            return
        slots = self.server.slots
        if slots is not None and not slots.acquire(blocking=False):
            self._reply(503, b"too many concurrent requests\n", "text/plain; charset=utf-8", head)
            return
        try:
            if post:
                self._post(keep_open)
            else:
                self._route(head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            if slots is not None:
                slots.release()

    def _authorized(self, head: bool) -> bool:
        """Basic auth; answers 401 (bad credentials) or 429 (throttled, busy) itself."""
        result = self.server.auth.authenticate(
            self.headers.get("Authorization"), str(self.client_address[0])
        )
        if result.outcome is AuthOutcome.OK:
            return True
        if result.outcome is AuthOutcome.DENIED:
            self._reply(
                401,
                b"Unauthorized\n",
                "text/plain; charset=utf-8",
                head,
                {"WWW-Authenticate": 'Basic realm="hpcobs"'},
            )
            return False
        body = (
            b"too many failed authentication attempts from this address\n"
            if result.outcome is AuthOutcome.THROTTLED
            else b"too many authentication attempts in progress\n"
        )
        retry = {"Retry-After": str(max(1, math.ceil(result.retry_after)))}
        self._reply(429, body, "text/plain; charset=utf-8", head, retry)
        return False

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        if url.path == self.server.telemetry_path:
            self._metrics(parse_qs(url.query), head)
        elif url.path == "/healthz":
            self._reply(200, b"ok\n", "text/plain; charset=utf-8", head)
        elif url.path == "/":
            self._reply(200, self.server.landing_page(), "text/html; charset=utf-8", head)
        elif url.path in self.server.routes:
            self._text(405, "use POST", head, {"Allow": "POST"})
        else:
            self._reply(404, b"404 page not found\n", "text/plain; charset=utf-8", head)

    def _post(self, keep_open: bool) -> None:
        route = self.server.routes.get(urlsplit(self.path).path)
        if route is None:
            allow = {"Allow": "GET, HEAD"}
            self._text(405, "POST is accepted only on this server's POST routes", False, allow)
            return
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_text is None:
            self._text(411, "send the body with a Content-Length (not chunked)")
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self._text(400, f"bad Content-Length {length_text[:40]!r}")
            return
        if length > route.max_body_bytes:
            limit = route.max_body_bytes
            self._text(400, f"body of {length} bytes is over the limit of {limit} bytes")
            return
        self._reader.deadline = time.monotonic() + route.body_timeout
        try:
            body = self.rfile.read(length)
        except OSError:  # TimeoutError (too slow), reset
            return
        finally:
            self._reader.deadline = None
            self.connection.settimeout(self.server.idle_timeout)
        if len(body) < length:  # the client went away
            return
        self.close_connection = not keep_open
        try:
            code, text = route.handle(body)
        except Exception:
            log.exception("POST handler failed", extra={"path": route.path})
            code, text = 500, "internal error (logged)"
        self._text(code, text)

    def _text(
        self, code: int, text: str, head: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        """A plain-text reply of one line."""
        line = " ".join(text.split()) + "\n"
        self._reply(code, line.encode(), "text/plain; charset=utf-8", head, headers)

    def _metrics(self, query: dict[str, list[str]], head: bool) -> None:
        only = query.get("collect[]")
        if only:
            unknown = sorted(set(only) - set(self.server.coordinator.collectors))
            if unknown:
                body = f"unknown collector(s) in collect[]: {', '.join(unknown)}\n".encode()
                self._reply(400, body, "text/plain; charset=utf-8", head)
                return
        timeout = scrape_timeout_from_header(self.headers.get(SCRAPE_TIMEOUT_HEADER))
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(_Registry(lambda: self.server.metrics(only, timeout)))
        extra = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            # Level 1: the 4 HCA × 2 port tree's 43 KB compress to 6.6 KB in 0.17 ms; level 6
            # (gzip's default) to 5.6 KB in 0.87 ms, on the loopback or a LAN not worth it.
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
