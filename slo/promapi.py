"""A small client for the Prometheus HTTP query API (`/api/v1/query`, `/api/v1/query_range`).

Works against anything that speaks that API: Prometheus, Thanos Query, Mimir (give the
`/prometheus` prefix in the URL and the tenant in `X-Scope-OrgID` with `headers`),
VictoriaMetrics (single-node at its root or under `/prometheus`, a cluster's vmselect under
`/select/<tenant>/prometheus`). Queries are POSTed as forms (no URL length limit for big
batched queries).

- The URL: scheme, host, port and any path prefix; `/api/v1/<endpoint>` is appended to the
  prefix. Query parameters in it (`?extra_label=team=hpc`, Thanos' `?dedup=true`) are sent
  with every request, outside the form. An URL that already ends in `/api/v1…` or has a
  `#fragment` is refused with a hint.

- Authentication: bearer token (read from its file at every request, so rotation works),
  or basic auth (password from a file, or user and password in the URL:
  `http://user:password@host:9090/`, percent-encoded; they are taken out of the URL and
  sent as an `Authorization: Basic` header); extra headers. Every URL this module puts in
  a message or an error goes through `redact_url` (`http://user:***@host:9090/`).
- TLS: CA file, client certificate and key, server name, or no verification.
- Time limits: each attempt has `timeout` seconds (also sent as the `timeout` parameter, so
  the server stops evaluating too); a `deadline` bounds all attempts together.
- Retries with exponential backoff on connection errors, timeouts, 429 and 5xx; never on
  4xx answers such as a bad query (those raise `QueryError` with `retryable=False`).
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Labels = dict[str, str]


class QueryError(Exception):
    """A query that failed after its retries; `retryable` tells a bad query from an outage."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class Sample:
    labels: Labels
    value: float


@dataclass(frozen=True)
class Series:
    labels: Labels
    points: tuple[tuple[float, float], ...]


@dataclass
class QueryStats:
    """What one call cost: attempts, the last HTTP status, server warnings."""

    attempts: int = 0
    status: int | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ClientConfig:
    url: str
    timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 10.0
    bearer_token_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()


def redact_url(url: str) -> str:
    """`url` with the password of its userinfo replaced by `***` (`http://user:***@host/`),
    as Go's `URL.Redacted` does; any text, even an invalid URL, is safe to pass."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{rest[end:]}"


@dataclass(frozen=True)
class _Endpoint:
    base: str  # scheme://host[:port][/prefix], without userinfo, query or a trailing slash
    user: str | None  # from the URL's userinfo
    password: str
    query: str = ""  # the URL's query string, sent with every request


def _endpoint(url: str) -> _Endpoint:
    """Split `--prometheus.url` into the URL to request and the credentials in it."""
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(
            f"--prometheus.url: invalid URL {shown!r}: {redact_url(str(exc))}"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--prometheus.url must be an http(s) URL, not {shown!r}")
    if parts.fragment:
        raise ValueError(f"--prometheus.url has a #fragment, which is never sent: {shown!r}")
    path = parts.path.rstrip("/")
    if _API_PATH.search(path):
        raise ValueError(
            f"--prometheus.url {shown!r} ends in the API path: give the base URL, with any "
            "prefix but without /api/v1 (e.g. http://vmselect:8481/select/0/prometheus)"
        )
    userinfo, at, host = parts.netloc.rpartition("@")
    user: str | None = None
    password = ""
    if at:
        raw_user, _, raw_password = userinfo.partition(":")
        user = urllib.parse.unquote(raw_user)
        password = urllib.parse.unquote(raw_password)
    base = urllib.parse.urlunsplit(parts._replace(netloc=host, path=path, query=""))
    return _Endpoint(base, user, password, parts.query)


_API_PATH = re.compile(r"/api/v1(/[A-Za-z_]*)?$")


def _ssl_context(cfg: ClientConfig) -> ssl.SSLContext | None:
    if not cfg.url.startswith("https:"):
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    if cfg.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _ServerNameHTTPSHandler(urllib.request.HTTPSHandler):
    """HTTPS with a fixed TLS server name (SNI and certificate check), like Prometheus'
    `tls_config.server_name`, for servers reached by an address their certificate lacks."""

    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(context=context)
        self._context = context
        self._server_name = server_name

    def https_open(self, req: urllib.request.Request) -> Any:
        import http.client

        context, server_name = self._context, self._server_name

        class Conn(http.client.HTTPSConnection):
            def connect(self) -> None:
                sock = socket.create_connection((self.host, self.port), self.timeout)
                self.sock = context.wrap_socket(sock, server_hostname=server_name)

        return self.do_open(Conn, req)


class PrometheusClient:
    def __init__(
        self,
        config: ClientConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        endpoint = _endpoint(config.url)
        if config.basic_auth_user and config.bearer_token_file:
            raise ValueError("use either basic auth or a bearer token, not both")
        if endpoint.user is not None and (config.basic_auth_user or config.bearer_token_file):
            raise ValueError(
                "--prometheus.url has credentials (user:password@): give them there or with "
                "--prometheus.basic-auth.* / --prometheus.bearer-token-file, not both"
            )
        self.config = config
        self.base = endpoint.base  # no credentials: safe in messages
        self._query = endpoint.query  # not in messages: it may hold a key
        self._url_auth = None if endpoint.user is None else _basic(endpoint.user, endpoint.password)
        self._sleep = sleep
        self._clock = clock
        context = _ssl_context(config)
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler()]
        if context is not None:
            if config.server_name:
                handlers.append(_ServerNameHTTPSHandler(context, config.server_name))
            else:
                handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    # -- public API ------------------------------------------------------------------------
    def query(
        self,
        expr: str,
        at: float,
        *,
        deadline: float | None = None,
        stats: QueryStats | None = None,
    ) -> list[Sample]:
        """Instant query at unix time `at`; a vector result as samples (NaN/Inf dropped)."""
        data = self._call("query", {"query": expr, "time": _ts(at)}, deadline, stats)
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar" and isinstance(result, list):
            return [Sample({}, _value(result[1]))]
        if kind != "vector" or not isinstance(result, list):
            raise QueryError(f"expected a vector result, got {kind!r}", retryable=False)
        out = []
        for item in result:
            v = _value(item["value"][1])
            if math.isfinite(v):
                out.append(Sample(dict(item.get("metric", {})), v))
        return out

    def query_range(
        self,
        expr: str,
        start: float,
        end: float,
        step: float,
        *,
        deadline: float | None = None,
        stats: QueryStats | None = None,
    ) -> list[Series]:
        params = {"query": expr, "start": _ts(start), "end": _ts(end), "step": f"{step:g}"}
        data = self._call("query_range", params, deadline, stats)
        if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise QueryError(
                f"expected a matrix result, got {data.get('resultType')!r}", retryable=False
            )
        out = []
        for item in data["result"]:
            points = tuple(
                (float(t), _value(v)) for t, v in item.get("values", []) if math.isfinite(_value(v))
            )
            out.append(Series(dict(item.get("metric", {})), points))
        return out

    # -- internals -------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        cfg = self.config
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": "hpcobs-slo",
        }
        headers.update(dict(cfg.headers))
        if cfg.bearer_token_file:
            token = Path(cfg.bearer_token_file).read_text().strip()
            headers["Authorization"] = f"Bearer {token}"
        elif cfg.basic_auth_user:
            password = ""
            if cfg.basic_auth_password_file:
                password = Path(cfg.basic_auth_password_file).read_text().strip()
            headers["Authorization"] = _basic(cfg.basic_auth_user, password)
        elif self._url_auth is not None:
            headers["Authorization"] = self._url_auth
        return headers

    def _call(
        self,
        endpoint: str,
        params: Mapping[str, str],
        deadline: float | None,
        stats: QueryStats | None,
    ) -> dict[str, Any]:
        stats = stats if stats is not None else QueryStats()
        cfg = self.config
        url = f"{self.base}/api/v1/{endpoint}"  # as shown in messages
        delay = cfg.backoff
        last: QueryError | None = None
        for attempt in range(cfg.retries + 1):
            timeout = cfg.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - self._clock())
                if timeout <= 0.05:
                    break
            stats.attempts += 1
            try:
                # `timeout` in milliseconds: every Prometheus-API server parses "1500ms".
                limit = f"{max(1, int(timeout * 1000))}ms"
                return self._once(url, {**params, "timeout": limit}, timeout, stats)
            except QueryError as exc:
                last = exc
                if not exc.retryable or attempt == cfg.retries:
                    break
            pause = min(delay, cfg.max_backoff) * (0.8 + 0.4 * random.random())
            if deadline is not None and self._clock() + pause >= deadline:
                break
            self._sleep(pause)
            delay *= 2
        if last is None:
            raise QueryError("deadline passed before the query could be sent", retryable=True)
        raise last

    def _once(
        self, url: str, params: Mapping[str, str], timeout: float, stats: QueryStats
    ) -> dict[str, Any]:
        body = urllib.parse.urlencode(dict(params)).encode()
        try:
            headers = self._headers()
        except OSError as exc:
            raise QueryError(f"cannot read credentials: {exc}", retryable=False) from exc
        target = f"{url}?{self._query}" if self._query else url
        req = urllib.request.Request(target, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                stats.status = resp.status
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            stats.status = exc.code
            raw = exc.read()
            retryable = exc.code == 429 or exc.code >= 500
            raise QueryError(
                f"HTTP {exc.code} from {url}: {_error_text(raw)}",
                retryable=retryable,
                status=exc.code,
            ) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            retryable = not isinstance(reason, ssl.SSLCertVerificationError)
            raise QueryError(f"cannot reach {url}: {reason}", retryable=retryable) from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise QueryError(f"{url} did not answer JSON: {raw[:200]!r}", retryable=True) from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            raise QueryError(f"{url}: {_error_text(raw)}", retryable=False)
        stats.warnings.extend(str(w) for w in doc.get("warnings") or ())
        data = doc.get("data")
        if not isinstance(data, dict):
            raise QueryError(f"{url}: no data in the answer", retryable=False)
        return data


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _ts(t: float) -> str:
    return f"{t:.3f}"


def _value(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _error_text(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
        return f"{doc.get('errorType', 'error')}: {doc.get('error', '')}"
    except ValueError:
        return raw[:200].decode(errors="replace")
