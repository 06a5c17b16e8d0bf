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
import hashlib
import hmac
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

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
                bcrypt.checkpw(b"", hashed.encode())
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


class BasicAuth:
    """Checks `Authorization: Basic ...` headers against bcrypt hashes.

    bcrypt is slow on purpose (tens of ms); like exporter-toolkit, results are cached, keyed
    by a hash of the credentials, so a scraper pays it once, not on every scrape. Unknown
    users are checked against a dummy hash so timing does not reveal which users exist.
    """

    _CACHE_SIZE = 256

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()
        self._dummy = bcrypt.hashpw(b"hpcobs-dummy", bcrypt.gensalt(rounds=4)) if users else b""

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        creds = parse_basic_authorization(header)
        if creds is None:
            return False
        user, password = creds
        hashed = self.users.get(user, self._dummy)
        key = hashlib.sha256(user.encode() + b"\0" + password + b"\0" + hashed).digest()
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            cached = bcrypt.checkpw(password, hashed) and user in self.users
            with self._lock:
                self._cache[key] = cached
                while len(self._cache) > self._CACHE_SIZE:
                    self._cache.popitem(last=False)
        return cached and hmac.compare_digest(self.users.get(user, b""), hashed)


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
