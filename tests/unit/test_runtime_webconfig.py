from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.exporters.runtime.webconfig import (
    BasicAuth,
    WebConfigError,
    load_web_config,
    parse_basic_authorization,
)

from harness.tls import TLSMaterial, bcrypt_hash, make_tls_material

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def test_no_file_means_plain_http() -> None:
    cfg = load_web_config(None)
    assert not cfg.tls and not cfg.users


def test_full_config_relative_paths(tmp_path: Path, tls: TLSMaterial) -> None:
    for p in (tls.server_cert, tls.server_key, tls.ca_cert):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    path = write(
        tmp_path,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
        "  min_version: TLS13\n"
        f"basic_auth_users:\n  prom: {bcrypt_hash('secret')}\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    )
    cfg = load_web_config(path)
    assert cfg.tls and cfg.ssl_context is not None
    assert cfg.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert cfg.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert set(cfg.users) == {"prom"}
    assert cfg.headers == {"X-Frame-Options": "deny"}


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("tls_server_config:\n  cert_file: server.crt\n", "tls_server_config.key_file", "required"),
        (
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
            "tls_server_config.cert_file",
            "file not found",
        ),
        ("tls_server_confg: {}\n", "tls_server_confg", "unknown field"),
        ("tls_server_config:\n  certfile: a\n", "tls_server_config.certfile", "unknown field"),
        ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom", "bcrypt hash"),
        (
            "basic_auth_users:\n  prom: $2y$10$tooshort\n",
            "basic_auth_users.prom",
            "invalid bcrypt hash",
        ),
        ("basic_auth_users: [a]\n", "basic_auth_users", "mapping"),
        (
            "http_server_config:\n  headers:\n    Content-Type: x\n",
            "http_server_config.headers.Content-Type",
            "cannot be overridden",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS9\n",
            "tls_server_config.min_version",
            "must be one of",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Sometimes\n",
            "tls_server_config.client_auth_type",
            "must be one of",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file",
            "required",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
            "tls_server_config.cert_file",
            "cannot load",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "tls_server_config.cipher_suites",
            "not supported",
        ),
        ("a: [\n", "line 2", "invalid YAML"),
        ("- 1\n", "(top level)", "mapping"),
    ],
)
def test_errors_are_one_line_naming_file_and_field(
    tmp_path: Path, tls: TLSMaterial, text: str, field: str, problem: str
) -> None:
    for p in (tls.server_cert, tls.server_key):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    path = write(tmp_path, text)
    with pytest.raises(WebConfigError) as exc:
        load_web_config(path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: ")
    assert problem in message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read web config"):
        load_web_config(tmp_path / "missing.yml")


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth() -> None:
    auth = BasicAuth({"prom": bcrypt_hash("s3cret").encode()})
    assert auth.check(header("prom", "s3cret"))
    assert auth.check(header("prom", "s3cret"))  # cached
    assert not auth.check(header("prom", "wrong"))
    assert not auth.check(header("other", "s3cret"))
    assert not auth.check(None)
    assert not auth.check("Bearer abc")
    assert not auth.check("Basic !!!")
    assert BasicAuth({}).check(None)  # auth off


def test_password_may_contain_colon() -> None:
    assert parse_basic_authorization(header("u", "a:b")) == ("u", b"a:b")


@given(st.text(max_size=80))
def test_parse_authorization_never_raises(text: str) -> None:
    parse_basic_authorization(text)


@given(st.text(min_size=0, max_size=20).filter(lambda u: ":" not in u), st.binary(max_size=20))
def test_parse_authorization_round_trip(user: str, password: bytes) -> None:
    value = "Basic " + base64.b64encode(user.encode() + b":" + password).decode()
    assert parse_basic_authorization(value) == (user, password)
