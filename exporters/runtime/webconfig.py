"""The exporter-toolkit web configuration file (`--web.config.file`): TLS and basic auth.

Same format as Prometheus' exporters, so one file serves node_exporter and hpcobs:

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: ca.crt                         # optional
      min_version: TLS12                             # optional
    http_server_config:
      headers: {X-Frame-Options: deny}               # optional
    basic_auth_users:
      prometheus: $2y$10$...                         # bcrypt hash

Relative paths are relative to the file's folder. Every problem raises `WebConfigError`
with one line naming the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# bcrypt and yaml are imported when a web config file is read (and bcrypt when it has users):
# a daemon without a web config does not load them (0.7 MiB of RSS, issue 16: the node daemon
# takes from the jobs next to it). `webconfig.bcrypt` still names the module (tests patch it).


def _bcrypt() -> ModuleType:
    import bcrypt

    return bcrypt


def __getattr__(name: str) -> Any:
    if name == "bcrypt":
        return _bcrypt()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_FIELDS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
    "client_allowed_sans",
    "cert",
    "key",
    "client_ca",
}
_HTTP_FIELDS = {"http2", "headers"}
_TOP_FIELDS = {"tls_server_config", "http_server_config", "basic_auth_users"}
log = logging.getLogger("hpcobs.http")

# Headers exporter-toolkit refuses to let a config override.
_FORBIDDEN_HEADERS = {"authorization", "content-type", "content-encoding", "server"}


class WebConfigError(ValueError):
    """A bad web config file; the message is one line: `<file>: <field>: <problem>`."""


@dataclass(frozen=True)
class WebConfig:
    path: Path | None = None
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None


def load_web_config(path: str | Path | None) -> WebConfig:
    """Read and validate a web config file; `None` or "" means plain HTTP without auth."""
    if not path:
        return WebConfig()
    path = Path(path)

    def fail(where: str, problem: str) -> WebConfigError:
        return WebConfigError(f"{path}: {where}: {problem}")

    try:
        text = path.read_text()
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read web config: {exc.strerror or exc}") from exc
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise fail(where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if doc is None:
        return WebConfig(path=path)
    if not isinstance(doc, dict):
        raise fail("(top level)", "must be a mapping")
    _reject_unknown(doc, _TOP_FIELDS, "", fail)

    base = path.parent
    context = None
    tls = doc.get("tls_server_config")
    if tls is not None:
        context = _ssl_context(tls, base, fail)

    headers: dict[str, str] = {}
    http = doc.get("http_server_config")
    if http is not None:
        if not isinstance(http, dict):
            raise fail("http_server_config", "must be a mapping")
        _reject_unknown(http, _HTTP_FIELDS, "http_server_config.", fail)
        raw_headers = http.get("headers") or {}
        if not isinstance(raw_headers, dict):
            raise fail("http_server_config.headers", "must be a mapping of header: value")
        for name, value in raw_headers.items():
            if str(name).lower() in _FORBIDDEN_HEADERS:
                raise fail(f"http_server_config.headers.{name}", "this header cannot be overridden")
            headers[str(name)] = str(value)

    users: dict[str, bytes] = {}
    raw_users = doc.get("basic_auth_users")
    if raw_users is not None:
        if not isinstance(raw_users, dict):
            raise fail("basic_auth_users", "must be a mapping of user: bcrypt hash")
        for user, hashed in raw_users.items():
            where = f"basic_auth_users.{user}"
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise fail(
                    where,
                    "must be a bcrypt hash ($2y$...), e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`",
                )
            try:
                _bcrypt().checkpw(b"", hashed.encode())
            except ValueError as exc:
                raise fail(where, f"invalid bcrypt hash: {exc}") from exc
            users[str(user)] = hashed.encode()
    return WebConfig(path=path, ssl_context=context, users=users, headers=headers)


def _reject_unknown(doc: dict[str, Any], known: set[str], prefix: str, fail: Any) -> None:
    for key in doc:
        if key not in known:
            raise fail(f"{prefix}{key}", f"unknown field (known: {', '.join(sorted(known))})")


def _ssl_context(tls: Any, base: Path, fail: Any) -> ssl.SSLContext:
    if not isinstance(tls, dict):
        raise fail("tls_server_config", "must be a mapping")
    _reject_unknown(tls, _TLS_FIELDS, "tls_server_config.", fail)
    for inline in ("cert", "key", "client_ca"):
        if inline in tls:
            raise fail(
                f"tls_server_config.{inline}", f"inline PEM is not supported; use {inline}_file"
            )
    for unsupported in ("cipher_suites", "curve_preferences", "client_allowed_sans"):
        if tls.get(unsupported):
            raise fail(
                f"tls_server_config.{unsupported}",
                "not supported by hpcobs (Python's TLS stack); remove it or use min_version",
            )

    def file_field(name: str, required: bool) -> Path | None:
        value = tls.get(name)
        if value in (None, ""):
            if required:
                raise fail(f"tls_server_config.{name}", "required when tls_server_config is set")
            return None
        p = Path(str(value))
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise fail(f"tls_server_config.{name}", f"file not found: {p}")
        return p

    cert = file_field("cert_file", True)
    key = file_field("key_file", True)
    ca = file_field("client_ca_file", False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for bound in ("min_version", "max_version"):
        value = tls.get(bound)
        if value is not None:
            if value not in TLS_VERSIONS:
                raise fail(
                    f"tls_server_config.{bound}", f"must be one of {', '.join(TLS_VERSIONS)}"
                )
            setattr(context, bound.replace("_version", "imum_version"), TLS_VERSIONS[value])
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise fail(
            "tls_server_config.cert_file", f"cannot load certificate/key pair: {exc}"
        ) from exc

    auth_type = tls.get(
        "client_auth_type", "NoClientCert" if ca is None else "RequireAndVerifyClientCert"
    )
    if auth_type not in CLIENT_AUTH_TYPES:
        raise fail(
            "tls_server_config.client_auth_type", f"must be one of {', '.join(CLIENT_AUTH_TYPES)}"
        )
    if auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and ca is None:
        raise fail("tls_server_config.client_ca_file", f"required for client_auth_type {auth_type}")
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise fail("tls_server_config.client_ca_file", f"cannot load CA: {exc}") from exc
    context.verify_mode = CLIENT_AUTH_TYPES[auth_type]
    return context


class AuthOutcome(enum.Enum):
    OK = "ok"  # serve the request
    DENIED = "denied"  # 401: no, malformed or wrong credentials
    THROTTLED = "throttled"  # 429: this client address failed too often lately
    BUSY = "busy"  # 429: every bcrypt verifier is busy with other unknown credentials


@dataclass(frozen=True)
class AuthResult:
    outcome: AuthOutcome
    retry_after: float = 0.0  # seconds; set for THROTTLED and BUSY

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


def client_key(address: str) -> str:
    """The address a failure budget belongs to: IPv4 as is, IPv6 by its /64 (one host's share
    of an IPv6 network), IPv4-mapped IPv6 as the IPv4 address; anything else verbatim."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    """A token bucket of failed logins per client address, in a bounded table (LRU).

    Every attempt that needs bcrypt takes a token first; a success gives it back. A client
    with no token left gets THROTTLED until one has refilled, without any bcrypt work."""

    def __init__(
        self,
        burst: int = 10,
        per_second: float = 0.1,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = float(burst)
        self.per_second = per_second
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.per_second)

    def acquire(self, client: str) -> float:
        """Take a token: 0.0 when taken, else the seconds until the next one."""
        key = client_key(client)
        now = self.clock()
        with self._lock:
            tokens = self._tokens(key, now)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                self._buckets.move_to_end(key)
                return (1.0 - tokens) / self.per_second
            self._buckets[key] = (tokens - 1.0, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return 0.0

    def refund(self, client: str) -> None:
        """Give a token back (the attempt succeeded or never ran)."""
        key = client_key(client)
        now = self.clock()
        with self._lock:
            if key in self._buckets:
                self._buckets[key] = (min(self.burst, self._tokens(key, now) + 1.0), now)

    def __len__(self) -> int:
        return len(self._buckets)


class _FailureLog:
    """At most one warning per `interval` about failed logins, with counts since the last one.
    Never the password; the user name as sent, cut to 64 characters."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.clock = clock
        self._counts: Counter[str] = Counter()
        self._last: float | None = None
        self._lock = threading.Lock()

    def note(self, outcome: AuthOutcome, client: str, user: str) -> None:
        now = self.clock()
        with self._lock:
            self._counts[outcome.value] += 1
            if self._last is not None and now - self._last < self.interval:
                return
            since = 0.0 if self._last is None else now - self._last
            self._last = now
            counts = dict(self._counts)
            self._counts.clear()
        log.warning(
            "basic auth failures",
            extra={
                "client": client,
                "user": user[:64],
                "denied": counts.get("denied", 0),
                "throttled": counts.get("throttled", 0),
                "busy": counts.get("busy", 0),
                "since_seconds": round(since, 1),  # counts since the previous line
            },
        )


def bcrypt_cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a `$2b$10$...` hash."""
    return int(hashed.split(b"$")[2])


def _default_verifiers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus - 1))  # leave a core to serve scrapes


class BasicAuth:
    """Checks `Authorization: Basic ...` headers against bcrypt hashes, cheaply under attack.

    - bcrypt is slow on purpose (~60 ms at cost 10). Verified credentials are cached (keyed by
      an HMAC of user and password with a per-process key; bounded, least recently used out).
      Successes are cached apart from failures, so wrong passwords cannot evict a scraper's
      entry, and a cached scraper is never throttled nor kept waiting for bcrypt. A wrong pair
      seen again (a misconfigured scraper) is answered from the failure cache, free.
    - Credentials not in the cache cost a bcrypt and a token of the client's failure budget
      (`FailureLimiter`); a client out of tokens is THROTTLED before any bcrypt work.
    - At most `verifiers` bcrypt checks run at once; one more is BUSY at once, not queued.
    - Unknown users are checked against a dummy hash of the configured hashes' cost, so the
      answer takes as long as for a real user with a wrong password.
    - Passwords longer than bcrypt's 72 bytes are cut there, as htpasswd and Go's bcrypt do.
    """

    _CACHE_SIZE = 256
    _BAD_CACHE_SIZE = 1024

    def __init__(
        self,
        users: dict[str, bytes],
        *,
        limiter: FailureLimiter | None = None,
        verifiers: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = 60.0,
    ) -> None:
        self.users = users
        self.limiter = limiter if limiter is not None else FailureLimiter(clock=clock)
        self.verifiers = verifiers if verifiers is not None else _default_verifiers()
        self._workers = threading.BoundedSemaphore(self.verifiers)
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()  # verified wrong, oldest out
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(32)
        self._failures = _FailureLog(log_interval, clock)
        self.dummy = self._make_dummy(users)

    @staticmethod
    def _make_dummy(users: dict[str, bytes]) -> bytes:
        if not users:
            return b""
        costs = Counter(bcrypt_cost(h) for h in users.values())
        cost = max(costs, key=lambda c: (costs[c], c))  # the most common; ties: the higher
        bcrypt = _bcrypt()
        dummy: bytes = bcrypt.hashpw(
            secrets.token_bytes(18), bcrypt.gensalt(rounds=cost, prefix=b"2b")
        )
        return dummy

    def check(self, header: str | None, client: str = "") -> bool:
        return self.authenticate(header, client).ok

    def authenticate(self, header: str | None, client: str = "") -> AuthResult:
        if not self.users:
            return AuthResult(AuthOutcome.OK)
        creds = parse_basic_authorization(header)
        if creds is None:  # no or malformed header: nothing to verify, nothing spent
            return AuthResult(AuthOutcome.DENIED)
        user, password = creds
        key = hmac.new(self._secret, user.encode() + b":" + password, hashlib.sha256).digest()
        with self._lock:
            if key in self._good:
                self._good.move_to_end(key)
                return AuthResult(AuthOutcome.OK)
            known_bad = key in self._bad
        if known_bad:  # the same wrong password again (a misconfigured scraper): no bcrypt
            self._failures.note(AuthOutcome.DENIED, client, user)
            return AuthResult(AuthOutcome.DENIED)
        wait = self.limiter.acquire(client)
        if wait > 0:
            self._failures.note(AuthOutcome.THROTTLED, client, user)
            return AuthResult(AuthOutcome.THROTTLED, wait)
        if not self._workers.acquire(blocking=False):
            self.limiter.refund(client)
            self._failures.note(AuthOutcome.BUSY, client, user)
            return AuthResult(AuthOutcome.BUSY, 1.0)
        try:
            hashed = self.users.get(user)
            matched = _bcrypt().checkpw(password[:72], self.dummy if hashed is None else hashed)
        finally:
            self._workers.release()
        if matched and hashed is not None:
            self.limiter.refund(client)
            with self._lock:
                self._good[key] = None
                while len(self._good) > self._CACHE_SIZE:
                    self._good.popitem(last=False)
            return AuthResult(AuthOutcome.OK)
        with self._lock:
            self._bad[key] = None
            while len(self._bad) > self._BAD_CACHE_SIZE:
                self._bad.popitem(last=False)
        self._failures.note(AuthOutcome.DENIED, client, user)
        return AuthResult(AuthOutcome.DENIED)


def parse_basic_authorization(header: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` → (user, password); None when absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
