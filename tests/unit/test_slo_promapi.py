"""The Prometheus API client against a local fake server: forms, auth, TLS, retries, limits."""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hpcobs.slo.promapi import ClientConfig, PrometheusClient, QueryError, QueryStats

from harness.tls import TLSMaterial, make_tls_material

pytestmark = pytest.mark.unit

Reply = tuple[int, Any]  # status, JSON body (dict) or raw bytes
VECTOR = {
    "status": "success",
    "data": {
        "resultType": "vector",
        "result": [
            {"metric": {"slo": "a"}, "value": [1.0, "2.5"]},
            {"metric": {"slo": "b"}, "value": [1.0, "NaN"]},
        ],
    },
    "warnings": ["partial response"],
}


class FakeAPI:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[Reply | Callable[[], Reply]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                fake.requests.append(
                    {
                        "path": self.path,
                        "form": dict(urllib.parse.parse_qsl(body)),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                reply = fake.replies.pop(0) if fake.replies else (200, VECTOR)
                status, payload = reply() if callable(reply) else reply
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    fake = FakeAPI()
    yield fake
    fake.close()


@pytest.fixture
def tls(tmp_path: Path) -> TLSMaterial:
    return make_tls_material(tmp_path / "tls")


def client(url: str, sleeps: list[float] | None = None, **kw: Any) -> PrometheusClient:
    record = sleeps if sleeps is not None else []
    return PrometheusClient(ClientConfig(url=url, **kw), sleep=record.append)


def test_query_posts_a_form_and_returns_finite_samples(api: FakeAPI) -> None:
    stats = QueryStats()
    samples = client(api.url, timeout=7.5).query(
        'sum by (slo) (x{a="b"})', 1700000000.25, stats=stats
    )
    assert [(s.labels, s.value) for s in samples] == [({"slo": "a"}, 2.5)]
    (req,) = api.requests
    assert req["path"] == "/api/v1/query"
    assert req["form"] == {
        "query": 'sum by (slo) (x{a="b"})',
        "time": "1700000000.250",
        "timeout": "7500ms",
    }
    assert req["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert stats.attempts == 1 and stats.status == 200 and stats.warnings == ["partial response"]


def test_path_prefix_headers_and_range_queries(api: FakeAPI) -> None:
    api.replies.append(
        (
            200,
            {
                "status": "success",
                "data": {
                    "resultType": "matrix",
                    "result": [
                        {
                            "metric": {"p": "cpu"},
                            "values": [[3600, "1"], [7200, "+Inf"], [10800, "3"]],
                        }
                    ],
                },
            },
        )
    )
    c = client(api.url + "/prometheus/", headers=(("X-Scope-OrgID", "hpc"),))
    (series,) = c.query_range("sum(increase(x[1h]))", 3600, 10800, 3600)
    assert series.labels == {"p": "cpu"} and series.points == ((3600.0, 1.0), (10800.0, 3.0))
    (req,) = api.requests
    assert req["path"] == "/prometheus/api/v1/query_range"
    assert req["form"]["start"] == "3600.000" and req["form"]["step"] == "3600"
    assert req["headers"]["x-scope-orgid"] == "hpc"


def test_bearer_token_is_read_from_its_file_at_every_query(api: FakeAPI, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    c = client(api.url, bearer_token_file=str(token))
    c.query("up", 1)
    token.write_text("second")
    c.query("up", 1)
    assert [r["headers"]["authorization"] for r in api.requests] == [
        "Bearer first",
        "Bearer second",
    ]


def test_basic_auth(api: FakeAPI, tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    client(api.url, basic_auth_user="slo", basic_auth_password_file=str(password)).query("up", 1)
    header = api.requests[0]["headers"]["authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")) == b"slo:s3cret"
    with pytest.raises(ValueError, match="either basic auth or a bearer token"):
        client(api.url, basic_auth_user="a", bearer_token_file=str(password))


def test_retries_on_5xx_and_429_with_growing_backoff(api: FakeAPI) -> None:
    api.replies += [(503, {"status": "error", "error": "busy"}), (429, b"slow down"), (200, VECTOR)]
    sleeps: list[float] = []
    stats = QueryStats()
    samples = client(api.url, sleeps, retries=2, backoff=0.5).query("up", 1, stats=stats)
    assert len(samples) == 1 and stats.attempts == 3
    assert len(sleeps) == 2 and 0.4 <= sleeps[0] <= 0.6 and 0.8 <= sleeps[1] <= 1.2


def test_bad_queries_are_not_retried(api: FakeAPI) -> None:
    api.replies.append((400, {"status": "error", "errorType": "bad_data", "error": "parse error"}))
    with pytest.raises(QueryError, match="bad_data: parse error") as info:
        client(api.url, retries=3).query("up{", 1)
    assert not info.value.retryable and info.value.status == 400 and len(api.requests) == 1


def test_a_proxy_error_page_is_retried_then_reported(api: FakeAPI) -> None:
    api.replies += [(502, b"<html>bad gateway</html>")] * 2
    with pytest.raises(QueryError, match="HTTP 502") as info:
        client(api.url, retries=1).query("up", 1)
    assert info.value.retryable and len(api.requests) == 2


def test_time_limits_per_attempt_and_overall(api: FakeAPI) -> None:
    def slow() -> Reply:
        time.sleep(1.0)
        return 200, VECTOR

    api.replies += [slow, slow, slow]
    started = time.monotonic()
    with pytest.raises(QueryError, match="cannot reach"):
        client(api.url, timeout=0.2, retries=1, backoff=0.01).query("up", 1)
    assert time.monotonic() - started < 0.9
    api.replies[:] = [slow, slow, slow]
    started = time.monotonic()
    with pytest.raises(QueryError):
        client(api.url, timeout=5, retries=5).query("up", 1, deadline=time.monotonic() + 0.3)
    assert time.monotonic() - started < 0.9


def test_unreachable_server(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="cannot reach") as info:
        client("http://127.0.0.1:9", retries=0).query("up", 1)
    assert info.value.retryable
    with pytest.raises(ValueError, match="http"):
        client("ftp://x")


def _server_context(tls: TLSMaterial, require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(tls.ca_cert))
    return ctx


def test_tls_verification_server_name_and_skip(tls: TLSMaterial) -> None:
    api = FakeAPI(_server_context(tls))
    try:
        assert client(api.url, ca_file=str(tls.ca_cert)).query("up", 1)
        with pytest.raises(QueryError, match="CERTIFICATE_VERIFY_FAILED") as info:
            client(api.url, retries=2).query("up", 1)  # not our CA
        assert not info.value.retryable
        assert client(api.url, insecure_skip_verify=True).query("up", 1)
        assert client(api.url, ca_file=str(tls.ca_cert), server_name="localhost").query("up", 1)
        with pytest.raises(QueryError):
            client(
                api.url, ca_file=str(tls.ca_cert), server_name="elsewhere.example", retries=0
            ).query("up", 1)
    finally:
        api.close()


def test_mutual_tls(tls: TLSMaterial) -> None:
    api = FakeAPI(_server_context(tls, require_client=True))
    try:
        good = client(
            api.url,
            ca_file=str(tls.ca_cert),
            cert_file=str(tls.client_cert),
            key_file=str(tls.client_key),
        )
        assert good.query("up", 1)
        with pytest.raises(QueryError):
            client(api.url, ca_file=str(tls.ca_cert), retries=0).query("up", 1)
    finally:
        api.close()


# -- credentials in the URL (issue 14.5) ---------------------------------------------------
SECRET = "s3cr3t@pw"  # '@' percent-encoded in the URL


def _with_credentials(url: str, path: str = "") -> str:
    return url.replace("://", "://slo:s3cr3t%40pw@", 1) + path


def test_redact_url() -> None:
    from hpcobs.slo.promapi import redact_url

    assert redact_url("http://user:pw@host:9090/p?q=1") == "http://user:***@host:9090/p?q=1"
    assert redact_url("https://user@host/") == "https://user@host/"
    assert redact_url("http://u:p@ss@host/x@y") == "http://u:***@host/x@y"
    assert redact_url("http://host:9090/a@b") == "http://host:9090/a@b"
    assert redact_url("no url at all: a:b@c") == "no url at all: a:b@c"
    assert redact_url("http://u:pw@[::1") == "http://u:***@[::1"


def test_credentials_in_the_url_are_sent_as_basic_auth(api: FakeAPI) -> None:
    c = client(_with_credentials(api.url, "/prometheus/"))
    assert c.base == api.url + "/prometheus"
    c.query("up", 1)
    (req,) = api.requests
    assert req["path"] == "/prometheus/api/v1/query"
    header = req["headers"]["authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")) == f"slo:{SECRET}".encode()


def test_credentials_in_the_url_never_show_in_errors(api: FakeAPI, tmp_path: Path) -> None:
    api.replies += [(503, b"busy")] * 2
    with pytest.raises(QueryError) as info:
        client(_with_credentials(api.url), retries=1).query("up", 1)
    assert "HTTP 503" in str(info.value) and "127.0.0.1" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(QueryError) as info:
        client("http://slo:s3cr3t@127.0.0.1:9", retries=0).query("up", 1)
    assert "cannot reach" in str(info.value) and "s3cr3t" not in str(info.value)
    password = tmp_path / "pw"
    password.write_text("other")
    for bad, kw in (
        ("ftp://slo:s3cr3t@host/", {}),
        ("http://slo:s3cr3t@host:port/", {}),
        (_with_credentials(api.url), {"basic_auth_user": "a"}),
        (_with_credentials(api.url), {"bearer_token_file": str(password)}),
    ):
        with pytest.raises(ValueError) as err:
            client(bad, **kw)
        assert "s3cr3t" not in str(err.value), str(err.value)


def _no_secret(records: list[logging.LogRecord], *texts: str) -> None:
    for record in records:
        rendered = record.getMessage() + " " + " ".join(map(str, vars(record).values()))
        assert "s3cr3t" not in rendered, rendered
    for text in texts:
        assert "s3cr3t" not in text, text


def test_cli_report_with_credentials_logs_no_password(
    api: FakeAPI, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Every query fails: the failures are logged and printed, the password never."""
    from hpcobs.slo.cli import main

    spec = Path(__file__).resolve().parent.parent / "golden" / "slo" / "burn.spec.yaml"
    api.replies += [(503, {"status": "error", "error": "overloaded"})] * 200
    caplog.set_level(logging.DEBUG)
    url = _with_credentials(api.url)
    rc = main(["report", f"--prometheus.url={url}", "--query.retries=0", str(spec)])
    out, err = capsys.readouterr()
    assert rc == 1 and api.requests
    assert all("authorization" in r["headers"] for r in api.requests)
    assert any("query failed" in r.getMessage() for r in caplog.records)
    _no_secret(caplog.records, out, err)


def test_cli_bad_url_with_credentials_is_reported_redacted(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from hpcobs.slo.cli import main

    spec = Path(__file__).resolve().parent.parent / "golden" / "slo" / "burn.spec.yaml"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # `serve` sets up logging
    try:
        for argv in (
            ["validate", "--prometheus.url=ftp://slo:s3cr3t@host/", str(spec)],
            ["report", "--prometheus.url=http://slo:s3cr3t@host:port/", str(spec)],
            ["serve", "--prometheus.url=gopher://slo:s3cr3t@host/", str(spec)],
        ):
            assert main(argv) == 1, argv
            out, err = capsys.readouterr()
            assert "slo:***@host" in err, err
            _no_secret(caplog.records, out, err)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_vm_cluster_prefix_and_url_query_parameters(api: FakeAPI) -> None:
    """vmselect serves the API under /select/<tenant>/prometheus; query parameters in the URL
    (here VictoriaMetrics' extra_label) go with every request, never into the form or the
    messages."""
    c = client(api.url + "/select/0/prometheus/?extra_label=team%3Dhpc", retries=0)
    assert c.base == api.url + "/select/0/prometheus"
    c.query("up", 1)
    api.replies.append((400, {"status": "error", "errorType": "bad_data", "error": "no"}))
    with pytest.raises(QueryError) as info:
        c.query_range("up", 1, 2, 1)
    first, second = api.requests
    assert first["path"] == "/select/0/prometheus/api/v1/query?extra_label=team%3Dhpc"
    assert second["path"] == "/select/0/prometheus/api/v1/query_range?extra_label=team%3Dhpc"
    assert "extra_label" not in first["form"]
    assert str(info.value).startswith(f"HTTP 400 from {api.url}/select/0/prometheus/api/v1/")
    assert "extra_label" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("http://vm:8428/api/v1", "without /api/v1"),
        ("http://vmselect:8481/select/0/prometheus/api/v1/query", "without /api/v1"),
        ("http://prom:9090/#graph", "#fragment"),
    ],
)
def test_urls_that_cannot_work_are_refused_with_a_hint(url: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        client(url)
