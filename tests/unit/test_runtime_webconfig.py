from __future__ import annotations

import base64
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.exporters.runtime import webconfig
from hpcobs.exporters.runtime.webconfig import (
    AuthOutcome,
    BasicAuth,
    FailureLimiter,
    WebConfigError,
    bcrypt_cost,
    client_key,
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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CheckpwSpy:
    """Stands in for bcrypt.checkpw: records the hashes it was asked about, then verifies."""

    def __init__(self, real: Callable[[bytes, bytes], bool]) -> None:
        self.real = real
        self.hashes: list[bytes] = []

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.hashes.append(hashed)
        return self.real(password, hashed)


@pytest.fixture
def checkpw(monkeypatch: pytest.MonkeyPatch) -> CheckpwSpy:
    spy = CheckpwSpy(webconfig.bcrypt.checkpw)
    monkeypatch.setattr(webconfig.bcrypt, "checkpw", spy)
    return spy


def test_wrong_passwords_cannot_evict_verified_credentials(checkpw: CheckpwSpy) -> None:
    auth = BasicAuth({"prom": bcrypt_hash("s3cret").encode()})
    assert auth.check(header("prom", "s3cret"))
    for i in range(300):  # more distinct wrong passwords than the cache holds
        assert not auth.check(header("prom", f"wrong-{i}"))
    checkpw.hashes.clear()
    assert auth.check(header("prom", "s3cret"))
    assert checkpw.hashes == []  # still cached: no bcrypt


def test_failed_logins_are_throttled_per_client_address(checkpw: CheckpwSpy) -> None:
    clock = FakeClock()
    limiter = FailureLimiter(burst=3, per_second=0.1, clock=clock)
    auth = BasicAuth({"prom": bcrypt_hash("s3cret").encode()}, limiter=limiter, clock=clock)
    assert auth.authenticate(header("prom", "s3cret"), "10.0.0.1").ok
    for i in range(3):
        assert (
            auth.authenticate(header("prom", f"bad{i}"), "10.0.0.1").outcome is AuthOutcome.DENIED
        )
    checkpw.hashes.clear()
    throttled = auth.authenticate(header("prom", "bad3"), "10.0.0.1")
    assert throttled.outcome is AuthOutcome.THROTTLED and throttled.retry_after == pytest.approx(10)
    assert checkpw.hashes == []  # no bcrypt for a throttled client
    # Verified credentials pass from the same address; other addresses have their own budget.
    assert auth.authenticate(header("prom", "s3cret"), "10.0.0.1").ok
    assert auth.authenticate(header("prom", "bad"), "10.0.0.2").outcome is AuthOutcome.DENIED
    # A missing or malformed header costs nothing and is not throttled.
    assert auth.authenticate(None, "10.0.0.1").outcome is AuthOutcome.DENIED
    clock.now += 10  # one token back
    assert auth.authenticate(header("prom", "bad4"), "10.0.0.1").outcome is AuthOutcome.DENIED
    assert auth.authenticate(header("prom", "bad5"), "10.0.0.1").outcome is AuthOutcome.THROTTLED


def test_a_success_gives_its_token_back() -> None:
    limiter = FailureLimiter(burst=1, per_second=0.001, clock=FakeClock())
    auth = BasicAuth(
        {"a": bcrypt_hash("pa").encode(), "b": bcrypt_hash("pb").encode()}, limiter=limiter
    )
    assert auth.authenticate(header("a", "pa"), "10.0.0.1").ok
    assert auth.authenticate(header("b", "pb"), "10.0.0.1").ok  # not throttled by the first


def test_repeated_wrong_password_costs_no_bcrypt_and_no_budget(checkpw: CheckpwSpy) -> None:
    limiter = FailureLimiter(burst=2, per_second=0.001, clock=FakeClock())
    auth = BasicAuth({"prom": bcrypt_hash("s3cret").encode()}, limiter=limiter)
    for _ in range(20):  # a scraper with a stale password: a clear 401 every time
        assert auth.authenticate(header("prom", "old"), "10.0.0.1").outcome is AuthOutcome.DENIED
    assert len(checkpw.hashes) == 1
    assert auth.authenticate(header("prom", "s3cret"), "10.0.0.1").ok  # budget left


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", ""),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_client_key(address: str, key: str) -> None:
    assert client_key(address) == key


def test_client_table_is_bounded() -> None:
    limiter = FailureLimiter(burst=1, max_clients=100, clock=FakeClock())
    for i in range(1000):
        assert limiter.acquire(f"10.0.{i // 256}.{i % 256}") == 0.0
    assert len(limiter) == 100


def test_concurrent_bcrypt_checks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BasicAuth({"prom": bcrypt_hash("s3cret").encode()}, verifiers=1)
    assert auth.check(header("prom", "s3cret"))
    entered, release = threading.Event(), threading.Event()

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        entered.set()
        release.wait(10)
        return False

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", slow_checkpw)
    first = threading.Thread(target=auth.authenticate, args=(header("prom", "x"), "10.0.0.1"))
    first.start()
    try:
        assert entered.wait(10)
        busy = auth.authenticate(header("prom", "y"), "10.0.0.2")
        assert busy.outcome is AuthOutcome.BUSY and busy.retry_after >= 1
        assert auth.check(header("prom", "s3cret"), "10.0.0.3")  # cached: never waits
    finally:
        release.set()
        first.join()
    # The busy attempt did not spend 10.0.0.2's budget.
    assert auth.limiter.acquire("10.0.0.2") == 0.0


def test_unknown_user_is_checked_at_the_real_cost(checkpw: CheckpwSpy) -> None:
    auth = BasicAuth({"prom": bcrypt_hash("s3cret", rounds=6).encode()})
    assert not auth.check(header("nobody", "s3cret"))
    assert not auth.check(header("prom", "wrong"))
    unknown, known = checkpw.hashes
    assert bcrypt_cost(unknown) == bcrypt_cost(known) == 6
    assert unknown != known


def test_dummy_cost_is_the_most_common_cost() -> None:
    users = {u: bcrypt_hash("x", rounds=r).encode() for u, r in (("a", 4), ("b", 5), ("c", 5))}
    assert bcrypt_cost(BasicAuth(users).dummy) == 5


def test_long_password_is_cut_at_72_bytes_like_htpasswd() -> None:
    auth = BasicAuth({"prom": bcrypt_hash("p" * 72).encode()})
    assert auth.check(header("prom", "p" * 100))  # bcrypt < 5 and Go's bcrypt ignore the rest
    assert not auth.check(header("prom", "q" * 100))


def test_failures_are_logged_rate_limited_without_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    limiter = FailureLimiter(burst=1000, clock=clock)
    auth = BasicAuth(
        {"prom": bcrypt_hash("s3cret").encode()}, limiter=limiter, clock=clock, log_interval=60
    )
    with caplog.at_level(logging.WARNING, logger="hpcobs.http"):
        for i in range(20):
            auth.check(header("prom", f"hunter{i}"), "10.0.0.1")
        clock.now += 61
        auth.check(header("mallory", "hunter-last"), "10.0.0.9")
    records = [r for r in caplog.records if r.getMessage() == "basic auth failures"]
    assert len(records) == 2
    assert vars(records[1])["denied"] == 20  # the 19 not logged since, and this one
    assert vars(records[1])["client"] == "10.0.0.9" and vars(records[1])["user"] == "mallory"
    assert all("hunter" not in str(vars(r)) for r in records)
