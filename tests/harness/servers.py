"""Real Prometheus-ecosystem servers for `real` tests (a pytest plugin).

Loaded by ``tests/conftest.py`` as ``harness.servers``. Every server here is the Debian binary
(``prometheus``, ``prometheus-alertmanager``, ``prometheus-pushgateway``,
``prometheus-node-exporter``; ``promtool`` for backfill), started in its own process group,
bound to ``127.0.0.1`` on a free port, writing only under the test's temporary directory, with
its stdout/stderr in a log file there, and stopped by PID at teardown (SIGTERM, then SIGKILL
after a grace period).

A component that cannot start makes the test fail with :class:`ComponentStartError`, whose
message holds the command line and the tail of the component's log. Nothing is skipped.

The binaries are looked up on PATH (:func:`find_binary`), so a directory of other versions
first on PATH switches them (``scripts/compat/run.py`` does, with Debian's trixie and sid
packages); :func:`binary_version` says which version runs. The harness works unchanged with
Prometheus 2.42, 2.53 and 3.5 and Alertmanager 0.25, 0.28 and 0.33. What a test must know:
from Prometheus 3 on, range selectors are left-open, ``(t - w, t]``: a sample exactly on a
window's start drops out, where 2.x includes it (:attr:`Prometheus.left_open_ranges`). Real
scrapes are offset from the evaluation times, so test data should be too.

Timing notes (Prometheus 2.42, Alertmanager 0.25, Debian 12; the same with the later ones):

* Prometheus is ready (``/-/ready``) a fraction of a second after it is started, but its
  service-discovery manager only hands new target groups to the scrape manager on a fixed 5 s
  tick, so the first sample of a target (and thus any query over it) appears about 5.5 s after
  start or after a :meth:`Prometheus.reload` that adds the target. The same 5 s tick applies to
  the Alertmanagers Prometheus sends alerts to. Use :meth:`Prometheus.wait_for` rather than
  sleeps.
* Prometheus is started with ``--rules.alert.resend-delay=1s``; with the default (1m) the first
  firing alert, evaluated before the Alertmanager is discovered, is dropped and only resent a
  minute later.
* Alertmanager is started with an empty ``--cluster.listen-address`` (no gossip clustering).
* Backfilled blocks (:func:`backfill`) are kept only if the Prometheus reading them has a long
  enough retention: :class:`Prometheus` defaults to ``--storage.tsdb.retention.time=90d``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

__all__ = [
    "Alertmanager",
    "AlertmanagerFactory",
    "BackfillError",
    "ComponentStartError",
    "HarnessError",
    "ManagedProcess",
    "NodeExporter",
    "NodeExporterFactory",
    "Prometheus",
    "PrometheusAPIError",
    "PrometheusFactory",
    "Pushgateway",
    "WaitTimeoutError",
    "WebhookReceiver",
    "backfill",
    "binary_version",
    "find_binary",
    "free_port",
    "http_request",
    "prometheus_version",
]

JSON = dict[str, Any]
TimeLike = float | int | dt.datetime | str

DISCOVERY_DELAY_S = 5.5
"""About how long Prometheus takes before a new target's (or Alertmanager's) data flows."""

_ADDRESS_IN_USE = ("address already in use", "bind: address already in use")


# --------------------------------------------------------------------------------------------
# errors


class HarnessError(Exception):
    """Base class of the harness's errors."""


class ComponentStartError(HarnessError):
    """A component exited early, was not ready in time, or its binary is missing."""


class PrometheusAPIError(HarnessError):
    """The Prometheus HTTP API answered with an error (bad PromQL, bad time, …)."""


class BackfillError(HarnessError):
    """``promtool tsdb create-blocks-from openmetrics`` failed."""


class WaitTimeoutError(AssertionError):
    """A ``wait_for`` condition did not hold in time (reported as a test failure)."""


# --------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def find_binary(name: str) -> str:
    """Absolute path of ``name`` on PATH, or :class:`ComponentStartError` saying how to get it."""
    path = shutil.which(name)
    if path is None:
        raise ComponentStartError(
            f"{name!r} not found on PATH; install with scripts/bootstrap.sh "
            f"(Debian package providing {name})"
        )
    return path


_VERSION = re.compile(r"\bversion (\d+)\.(\d+)\.(\d+)")


@functools.cache
def _reported_version(path: str) -> tuple[int, int, int]:
    try:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ComponentStartError(f"{path} --version could not run: {exc}") from exc
    # Prometheus' tools print "prometheus, version 3.5.3+ds1 (branch: ...)", some on stderr.
    match = _VERSION.search(proc.stdout + proc.stderr)
    if proc.returncode != 0 or match is None:
        raise ComponentStartError(
            f"{path} --version exited with {proc.returncode} and no version:\n"
            f"{(proc.stdout + proc.stderr)[-2000:]}"
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def binary_version(name: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` that ``name --version`` reports, for the ``name`` on PATH.

    Asked once per binary (cached by its resolved path, so a different directory first on
    PATH gives that binary's version).
    """
    return _reported_version(os.path.realpath(find_binary(name)))


def prometheus_version() -> tuple[int, int, int]:
    """The version of the ``prometheus`` on PATH (see :func:`binary_version`)."""
    return binary_version("prometheus")


def http_request(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """Do one HTTP request; return ``(status, body)`` for any HTTP status (4xx/5xx included).

    Connection errors (refused, timeout) propagate as :class:`OSError`.
    """
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp is not None else b""
        return exc.code, body


def _to_unix(t: TimeLike) -> str:
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return repr(t.timestamp())
    if isinstance(t, str):
        return t
    return repr(float(t))


def _step(step: float | int | str | dt.timedelta) -> str:
    if isinstance(step, dt.timedelta):
        return repr(step.total_seconds())
    if isinstance(step, str):
        return step
    return repr(float(step))


def _yaml_text(config: str | Mapping[str, Any]) -> str:
    if isinstance(config, str):
        return config
    return yaml.safe_dump(_plain(config), sort_keys=False)


def _plain(obj: Any) -> Any:
    """Mappings/sequences/Paths → plain dict/list/str so yaml.safe_dump accepts them."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt_result(result: Any, limit: int = 2000) -> str:
    text = json.dumps(result, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + " …"


# --------------------------------------------------------------------------------------------
# process management


class ManagedProcess:
    """One child process in its own process group, logging to a file.

    ``start()`` does not wait; call :meth:`wait_ready`. If the process exits before it is ready,
    or is not ready in time, :meth:`wait_ready` stops it and raises
    :class:`ComponentStartError` with the command line and the log tail.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.ready_after: float | None = None
        """Seconds from start() to readiness, set by a successful wait_ready()."""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> ManagedProcess:
        if self.popen is not None:
            raise HarnessError(f"{self.name} already started (pid {self.popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"# {self.name}: {self.command_line}\n".encode())
            log.flush()
            env = None
            if self.env is not None:
                env = {**os.environ, **self.env}
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=env,
                    start_new_session=True,  # own session and process group
                )
            except OSError as exc:
                raise ComponentStartError(
                    f"{self.name} could not be executed: {exc}\ncommand: {self.command_line}"
                ) from exc
        self.started_at = time.monotonic()
        return self

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise HarnessError(f"{self.name} not started")
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(
        self,
        check: str | Callable[[], bool],
        timeout: float = 30.0,
        interval: float = 0.05,
    ) -> float:
        """Poll until ``check`` holds; return the seconds since :meth:`start`.

        ``check`` is a URL (ready when a GET answers 2xx) or a callable returning ``True`` when
        ready (exceptions count as "not yet").
        """
        if self.popen is None or self.started_at is None:
            raise HarnessError(f"{self.name} not started")
        if isinstance(check, str):
            url = check

            def probe() -> bool:
                status, _ = http_request("GET", url, timeout=2.0)
                if not 200 <= status < 300:
                    raise HarnessError(f"GET {url} -> HTTP {status}")
                return True

            what = f"GET {url} answering 2xx"
        else:
            probe = check
            what = getattr(check, "__name__", "readiness predicate")
        deadline = time.monotonic() + timeout
        last_error = "never checked"
        while True:
            rc = self.popen.poll()
            if rc is not None:
                self._fail(f"exited with code {rc} before it was ready ({what})")
            try:
                if probe():
                    self.ready_after = time.monotonic() - self.started_at
                    return self.ready_after
                last_error = "predicate returned False"
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                self._fail(f"not ready within {timeout:g} s ({what}; last: {last_error})")
            time.sleep(interval)

    def _fail(self, why: str) -> None:
        self.stop()
        raise ComponentStartError(self.failure_report(why))

    def failure_report(self, why: str, lines: int = 40) -> str:
        return (
            f"{self.name} {why}\n"
            f"command: {self.command_line}\n"
            f"log ({self.log_path}), last {lines} lines:\n{self.log_tail(lines)}"
        )

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process, wait ``grace`` s, then SIGKILL its process group.

        Idempotent; returns the exit code (``None`` if it was never started).
        """
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        # Anything the process left behind in its own group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        return p.returncode

    def log_tail(self, n: int = 40) -> str:
        try:
            with self.log_path.open("rb") as f:
                tail = deque(f, maxlen=n)
        except FileNotFoundError:
            return "(no log file)"
        return b"".join(tail).decode("utf-8", errors="replace").rstrip("\n")

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server:
    """Common start/stop logic of the HTTP servers: port choice, retries on port clashes."""

    binary: str = ""
    ready_path: str = "/-/ready"

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.process: ManagedProcess | None = None
        self.log_path = self.workdir / f"{name}.log"

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def listen_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files etc. just before each start attempt."""

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> float | None:
        """Start the server; with ``wait`` block until ready and return the start-up seconds.

        With ``wait=False``, call :meth:`wait_ready` later (lets several servers start at once).
        """
        if self.process is not None and self.process.is_running():
            raise HarnessError(f"{self.name} already running")
        self._prepare()
        self.process = ManagedProcess(self.name, self.argv(), self.log_path).start()
        return self.wait_ready(timeout) if wait else None

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Block until the server answers its readiness URL; retries a port clash twice."""
        attempts = 3
        while True:
            assert self.process is not None, "start() first"
            try:
                return self.process.wait_ready(self.url + self.ready_path, timeout)
            except ComponentStartError:
                attempts -= 1
                tail = self.process.log_tail(20).lower()
                if attempts == 0 or not any(s in tail for s in _ADDRESS_IN_USE):
                    raise
                # Someone took the port between free_port() and the bind: try another one.
                self.port = free_port()
                self._prepare()
                self.process = ManagedProcess(self.name, self.argv(), self.log_path).start()

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop by PID (SIGTERM, SIGKILL after ``grace``); idempotent."""
        return None if self.process is None else self.process.stop(grace)

    def log_tail(self, n: int = 40) -> str:
        return "(not started)" if self.process is None else self.process.log_tail(n)

    def is_running(self) -> bool:
        return self.process is not None and self.process.is_running()

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        """GET ``url + path``; raise :class:`HarnessError` on a non-2xx answer."""
        status, body = http_request("GET", self.url + path, timeout=timeout)
        if not 200 <= status < 300:
            raise HarnessError(
                f"{self.name}: GET {path} -> HTTP {status}: {body[:500]!r}\n"
                f"log tail:\n{self.log_tail(20)}"
            )
        return body

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} running={self.is_running()}>"


# --------------------------------------------------------------------------------------------
# Prometheus


class Prometheus(_Server):
    """A private Prometheus on ``127.0.0.1:<free port>``.

    The configuration (``prometheus.yml`` in ``workdir``) is generated from the attributes
    ``scrape_configs``, ``rule_files``, ``alertmanager_url``, ``scrape_interval``,
    ``evaluation_interval`` and ``extra_config``; change them and call :meth:`reload`.

    A new target's samples become queryable only about 5.5 s after start (or after the reload
    that adds it): the discovery manager forwards target groups on a fixed 5 s tick. The same
    holds for the Alertmanager alerts are sent to.
    """

    ready_path = "/-/ready"

    def __init__(
        self,
        workdir: Path,
        *,
        scrape_configs: Sequence[Mapping[str, Any]] = (),
        rule_files: Sequence[str | Path] = (),
        rules: str | Mapping[str, Any] | None = None,
        alertmanager_url: str | None = None,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        extra_config: Mapping[str, Any] | None = None,
        tsdb_path: Path | None = None,
        retention: str | None = "90d",
        extra_args: Sequence[str] = (),
        name: str = "prometheus",
    ) -> None:
        """
        ``scrape_configs``: Prometheus ``scrape_configs`` entries (dicts), e.g.
        ``{"job_name": "pg", "honor_labels": True, "static_configs": [{"targets": [addr]}]}``.
        ``rule_files``: existing rule files; ``rules``: the content (YAML text or dict) of one
        more rule file, written to ``workdir/rules.yml``. ``alertmanager_url``: e.g.
        ``am.url``. ``tsdb_path``: an existing TSDB directory (e.g. filled by :func:`backfill`);
        default ``workdir/data``. ``retention``: ``--storage.tsdb.retention.time`` (default 90d
        so backfilled blocks are not deleted; ``None`` for Prometheus' own default of 15d).
        ``extra_args``: appended to the command line.
        """
        super().__init__(workdir, name)
        self.binary = find_binary("prometheus")
        self.version = binary_version("prometheus")
        """``(major, minor, patch)`` of the binary that runs."""
        self.scrape_configs: list[Mapping[str, Any]] = list(scrape_configs)
        self.rule_files: list[str | Path] = list(rule_files)
        if rules is not None:
            rules_path = self.workdir / "rules.yml"
            rules_path.write_text(_yaml_text(rules))
            self.rule_files.append(rules_path)
        self.alertmanager_url = alertmanager_url
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self.tsdb_path = Path(tsdb_path) if tsdb_path is not None else self.workdir / "data"
        self.retention = retention
        self.extra_args = list(extra_args)
        self.config_path = self.workdir / "prometheus.yml"

    @property
    def left_open_ranges(self) -> bool:
        """Whether range selectors leave out a sample on the window's start (Prometheus 3)."""
        return self.version >= (3, 0, 0)

    # -- configuration --------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The configuration as a dict (what :meth:`write_config` writes)."""
        cfg: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
        }
        if self.rule_files:
            cfg["rule_files"] = [str(Path(p).resolve()) for p in self.rule_files]
        if self.alertmanager_url:
            u = urllib.parse.urlsplit(self.alertmanager_url)
            am: dict[str, Any] = {
                "scheme": u.scheme or "http",
                "static_configs": [{"targets": [u.netloc]}],
            }
            if u.path and u.path != "/":
                am["path_prefix"] = u.path
            cfg["alerting"] = {"alertmanagers": [am]}
        cfg["scrape_configs"] = [dict(sc) for sc in self.scrape_configs]
        for key, value in self.extra_config.items():
            if key == "global":
                cfg["global"].update(value)
            else:
                cfg[key] = value
        return cfg

    def write_config(self) -> Path:
        self.config_path.write_text(_yaml_text(self.config()))
        return self.config_path

    def _prepare(self) -> None:
        self.tsdb_path.mkdir(parents=True, exist_ok=True)
        self.write_config()

    def argv(self) -> list[str]:
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--web.listen-address={self.listen_address}",
            f"--storage.tsdb.path={self.tsdb_path}",
            "--rules.alert.resend-delay=1s",
            "--web.enable-lifecycle",
        ]
        if self.retention is not None:
            args.append(f"--storage.tsdb.retention.time={self.retention}")
        return args + self.extra_args

    def reload(self, timeout: float = 10.0) -> None:
        """Rewrite ``prometheus.yml`` from the attributes and POST ``/-/reload``.

        Raises :class:`HarnessError` if Prometheus rejects the new configuration. New targets
        are scraped only after the next 5 s discovery tick.
        """
        self.write_config()
        status, body = http_request("POST", self.url + "/-/reload", data=b"", timeout=timeout)
        if status != 200:
            raise HarnessError(
                f"{self.name}: reload failed, HTTP {status}: {body.decode(errors='replace')}\n"
                f"log tail:\n{self.log_tail(20)}"
            )

    # -- HTTP API -------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None, *, post: bool = False) -> Any:
        """Call ``/api/v1/<path>``; return ``data``; raise :class:`PrometheusAPIError` on error."""
        url = f"{self.url}/api/v1/{path.lstrip('/')}"
        encoded = urllib.parse.urlencode(dict(params or {}))
        try:
            if post:
                status, body = http_request(
                    "POST",
                    url,
                    data=encoded.encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                    timeout=30.0,
                )
            else:
                status, body = http_request(
                    "GET", f"{url}?{encoded}" if encoded else url, timeout=30.0
                )
        except OSError as exc:
            raise PrometheusAPIError(
                f"{self.name}: {path} {dict(params or {})}: {exc} "
                f"(running={self.is_running()})\nlog tail:\n{self.log_tail(20)}"
            ) from exc
        try:
            doc = json.loads(body)
        except ValueError:
            raise PrometheusAPIError(
                f"{self.name}: {path} {dict(params or {})}: HTTP {status}, not JSON: {body[:500]!r}"
            ) from None
        if status != 200 or doc.get("status") != "success":
            raise PrometheusAPIError(
                f"{self.name}: {path} {dict(params or {})}: HTTP {status} "
                f"{doc.get('errorType', '?')}: {doc.get('error', body[:500])}"
            )
        return doc.get("data")

    def query(self, expr: str, time: TimeLike | None = None) -> list[JSON]:
        """Instant query. Returns the result as a list of ``{"metric": {...}, "value": [t, "v"]}``.

        A scalar or string result comes back as one element with an empty ``metric``; a range
        vector (``expr[5m]``) as elements with ``values``.
        """
        params = {"query": expr}
        if time is not None:
            params["time"] = _to_unix(time)
        data = self.api("query", params, post=True)
        return _normalise(data)

    def query_value(self, expr: str, time: TimeLike | None = None) -> float:
        """The value of an instant query that must return exactly one sample."""
        result = self.query(expr, time)
        if len(result) != 1 or "value" not in result[0]:
            raise PrometheusAPIError(f"{expr!r}: expected one sample, got {_fmt_result(result)}")
        return float(result[0]["value"][1])

    def query_range(
        self,
        expr: str,
        start: TimeLike,
        end: TimeLike,
        step: float | int | str | dt.timedelta,
    ) -> list[JSON]:
        """Range query: a list of ``{"metric": {...}, "values": [[t, "v"], ...]}``."""
        params = {
            "query": expr,
            "start": _to_unix(start),
            "end": _to_unix(end),
            "step": _step(step),
        }
        return _normalise(self.api("query_range", params, post=True))

    def wait_for(
        self,
        expr: str,
        timeout: float = 30.0,
        predicate: Callable[[list[JSON]], bool] | None = None,
        interval: float = 0.25,
    ) -> list[JSON]:
        """Poll the instant query ``expr`` until its result is non-empty (or ``predicate`` holds).

        Returns that result. On timeout the test fails (:class:`WaitTimeoutError`) with the last
        result, the scrape targets' health and the Prometheus log tail. PromQL errors fail at
        once. Remember the ~5.5 s before a new target's first sample is queryable.
        """
        check = predicate if predicate is not None else bool
        deadline = time.monotonic() + timeout
        last: list[JSON] = []
        while True:
            if not self.is_running():
                raise WaitTimeoutError(
                    f"{self.name} is not running (exit code "
                    f"{None if self.process is None else self.process.returncode}) while "
                    f"waiting for {expr!r}\nlog tail:\n{self.log_tail(30)}"
                )
            last = self.query(expr)
            if check(last):
                return last
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        try:
            targets = [
                {k: t.get(k) for k in ("scrapeUrl", "health", "lastError")} for t in self.targets()
            ]
        except HarnessError as exc:
            targets = [{"error": str(exc)}]
        raise WaitTimeoutError(
            f"{self.name}: {expr!r} did not "
            f"{'satisfy the predicate' if predicate else 'return data'} within {timeout:g} s\n"
            f"last result: {_fmt_result(last)}\n"
            f"targets: {_fmt_result(targets)}\n"
            f"log tail:\n{self.log_tail(30)}"
        )

    def targets(self, state: str = "active") -> list[JSON]:
        """``/api/v1/targets`` active (or ``"dropped"``) targets."""
        data = self.api("targets", {"state": state})
        key = "droppedTargets" if state == "dropped" else "activeTargets"
        result: list[JSON] = data.get(key, [])
        return result

    def wait_targets_up(self, timeout: float = 30.0, job: str | None = None) -> list[JSON]:
        """Wait until there is at least one active target (of ``job``) and all are ``up``."""
        deadline = time.monotonic() + timeout
        while True:
            ts = [t for t in self.targets() if job is None or t["labels"].get("job") == job]
            if ts and all(t["health"] == "up" for t in ts):
                return ts
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"{self.name}: targets not all up within {timeout:g} s: "
                    f"{_fmt_result([{k: t.get(k) for k in ('scrapeUrl', 'health', 'lastError')} for t in ts])}"
                    f"\nlog tail:\n{self.log_tail(20)}"
                )
            time.sleep(0.25)

    def alerts(self) -> list[JSON]:
        """Prometheus' own view of alerts (``/api/v1/alerts``)."""
        result: list[JSON] = self.api("alerts")["alerts"]
        return result

    def rules(self) -> list[JSON]:
        """Rule groups (``/api/v1/rules``)."""
        result: list[JSON] = self.api("rules")["groups"]
        return result


def _normalise(data: Any) -> list[JSON]:
    rtype = data.get("resultType")
    result = data.get("result")
    if rtype in ("scalar", "string"):
        return [{"metric": {}, "value": result}]
    out: list[JSON] = result or []
    return out


def backfill(
    openmetrics_text: str,
    tsdb_dir: Path,
    *,
    max_block_duration: str = "744h",
    timeout: float = 120.0,
) -> list[str]:
    """Write OpenMetrics samples as TSDB blocks into ``tsdb_dir`` (created if missing).

    Runs ``promtool tsdb create-blocks-from openmetrics --max-block-duration=744h`` (a hidden
    flag of promtool 2.42). ``openmetrics_text`` is OpenMetrics exposition with timestamps in
    seconds, samples of a series in time order; ``# EOF`` is appended if missing. Start a
    :class:`Prometheus` with ``tsdb_path=tsdb_dir`` (and a retention longer than the data, the
    default 90d) to query it. Returns the ULIDs of the blocks created.
    """
    tsdb_dir = Path(tsdb_dir)
    tsdb_dir.mkdir(parents=True, exist_ok=True)
    text = openmetrics_text if openmetrics_text.endswith("\n") else openmetrics_text + "\n"
    if not text.rstrip().endswith("# EOF"):
        text += "# EOF\n"
    before = {p.name for p in tsdb_dir.iterdir()}
    src = tsdb_dir.parent / f".{tsdb_dir.name}-backfill-{time.monotonic_ns()}.om"
    src.write_text(text)
    argv = [
        find_binary("promtool"),
        "tsdb",
        "create-blocks-from",
        "openmetrics",
        f"--max-block-duration={max_block_duration}",
        str(src),
        str(tsdb_dir),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        src.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise BackfillError(
            f"promtool failed with code {proc.returncode}\ncommand: {shlex.join(argv)}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return sorted(p.name for p in tsdb_dir.iterdir() if p.is_dir() and p.name not in before)


# --------------------------------------------------------------------------------------------
# Alertmanager and a webhook receiver


class Alertmanager(_Server):
    """A private Alertmanager (no clustering) on ``127.0.0.1:<free port>``."""

    ready_path = "/-/ready"

    def __init__(
        self,
        workdir: Path,
        config: str | Mapping[str, Any],
        *,
        extra_args: Sequence[str] = (),
        name: str = "alertmanager",
    ) -> None:
        """``config``: alertmanager.yml as YAML text or a dict (see
        :meth:`WebhookReceiver.alertmanager_config`)."""
        super().__init__(workdir, name)
        self.binary = find_binary("prometheus-alertmanager")
        self.config_text = _yaml_text(config)
        self.config_path = self.workdir / "alertmanager.yml"
        self.storage_path = self.workdir / "data"
        self.extra_args = list(extra_args)

    def _prepare(self) -> None:
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--web.listen-address={self.listen_address}",
            "--cluster.listen-address=",
            f"--storage.path={self.storage_path}",
            *self.extra_args,
        ]

    def alerts(self, **filters: str | bool) -> list[JSON]:
        """``GET /api/v2/alerts`` (filters such as ``active=True``, ``filter='alertname="X"'``)."""
        query = urllib.parse.urlencode(
            {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in filters.items()}
        )
        body = self.get("/api/v2/alerts" + (f"?{query}" if query else ""))
        result: list[JSON] = json.loads(body)
        return result

    def reload(self, config: str | Mapping[str, Any] | None = None) -> None:
        """Optionally replace the config, then POST ``/-/reload``."""
        if config is not None:
            self.config_text = _yaml_text(config)
            self.config_path.write_text(self.config_text)
        status, body = http_request("POST", self.url + "/-/reload", data=b"")
        if status != 200:
            raise HarnessError(f"{self.name}: reload failed, HTTP {status}: {body[:500]!r}")


class WebhookReceiver:
    """Records Alertmanager webhook payloads POSTed to it (any path), in a thread.

    ``url`` is the webhook URL to put in an Alertmanager ``webhook_configs`` entry.
    """

    def __init__(self) -> None:
        self.payloads: list[JSON] = []
        """Decoded JSON bodies in arrival order (non-JSON bodies as ``{"_raw": text}``)."""
        self.received_at: list[float] = []
        """``time.time()`` of each payload's arrival."""
        self.paths: list[str] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    doc = json.loads(raw)
                    if not isinstance(doc, dict):
                        doc = {"_raw": doc}
                except ValueError:
                    doc = {"_raw": raw.decode("utf-8", errors="replace")}
                with receiver._cond:
                    receiver.payloads.append(doc)
                    receiver.received_at.append(time.time())
                    receiver.paths.append(self.path)
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"webhook-{self.port}", daemon=True
        )
        self._thread.start()
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    def alerts(self) -> list[JSON]:
        """All alerts of all payloads received so far, flattened."""
        with self._cond:
            return [a for p in self.payloads for a in p.get("alerts", [])]

    def wait_for(
        self, predicate: Callable[[JSON], bool] | None = None, timeout: float = 20.0
    ) -> JSON:
        """Block until a payload (already received or new) satisfies ``predicate``; return it.

        The default predicate accepts any payload. Fails with :class:`WaitTimeoutError` listing
        what was received.
        """
        check = predicate if predicate is not None else (lambda _p: True)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for p in self.payloads[seen:]:
                    if check(p):
                        return p
                seen = len(self.payloads)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeoutError(
                        f"webhook {self.url}: no matching payload within {timeout:g} s; "
                        f"received {len(self.payloads)}: {_fmt_result(self.payloads)}"
                    )
                self._cond.wait(remaining)

    def alertmanager_config(
        self,
        *,
        group_by: Sequence[str] = ("alertname",),
        group_wait: str = "0s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        send_resolved: bool = True,
    ) -> dict[str, Any]:
        """An alertmanager.yml dict routing every alert to this receiver, with short timers."""
        return {
            "route": {
                "receiver": "webhook",
                "group_by": list(group_by),
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [{"url": self.url, "send_resolved": send_resolved}],
                }
            ],
        }

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __repr__(self) -> str:
        return f"<WebhookReceiver {self.url} payloads={len(self.payloads)}>"


# --------------------------------------------------------------------------------------------
# Pushgateway and node_exporter


class Pushgateway(_Server):
    """A private Pushgateway with persistence off on ``127.0.0.1:<free port>``.

    Scrape it with ``honor_labels: true`` to keep the pushed ``job``/``instance`` labels.
    """

    ready_path = "/-/ready"

    def __init__(
        self, workdir: Path, *, extra_args: Sequence[str] = (), name: str = "pushgateway"
    ) -> None:
        super().__init__(workdir, name)
        self.binary = find_binary("prometheus-pushgateway")
        self.extra_args = list(extra_args)

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--web.listen-address={self.listen_address}",
            "--persistence.file=",
            *self.extra_args,
        ]

    def metrics_text(self) -> str:
        """The Pushgateway's ``/metrics`` exposition (pushed groups plus its own metrics)."""
        return self.get("/metrics").decode()

    def _group_url(self, job: str, grouping: Mapping[str, str] | None) -> str:
        parts = ["metrics", "job", urllib.parse.quote(job, safe="")]
        for k, v in (grouping or {}).items():
            parts += [k, urllib.parse.quote(v, safe="")]
        return f"{self.url}/{'/'.join(parts)}"

    def push(
        self,
        job: str,
        text: str,
        grouping: Mapping[str, str] | None = None,
        *,
        method: str = "PUT",
    ) -> None:
        """PUT (replace group) or POST (merge) text exposition; the text must end with ``\\n``."""
        if not text.endswith("\n"):
            text += "\n"
        status, body = http_request(
            method,
            self._group_url(job, grouping),
            data=text.encode(),
            headers={"Content-Type": "text/plain; version=0.0.4"},
        )
        if not 200 <= status < 300:
            raise HarnessError(f"{self.name}: push {method} -> HTTP {status}: {body[:500]!r}")

    def delete(self, job: str, grouping: Mapping[str, str] | None = None) -> None:
        status, body = http_request("DELETE", self._group_url(job, grouping))
        if not 200 <= status < 300:
            raise HarnessError(f"{self.name}: delete -> HTTP {status}: {body[:500]!r}")


class NodeExporter(_Server):
    """A private Debian ``prometheus-node-exporter`` with arbitrary flags.

    E.g. ``("--collector.disable-defaults", "--collector.textfile",
    "--collector.textfile.directory=DIR")`` or
    ``("--path.sysfs=TREE", "--collector.disable-defaults", "--collector.infiniband")``.
    """

    ready_path = "/"

    def __init__(
        self, workdir: Path, args: Sequence[str] = (), *, name: str = "node-exporter"
    ) -> None:
        super().__init__(workdir, name)
        self.binary = find_binary("prometheus-node-exporter")
        self.args = [str(a) for a in args]

    def argv(self) -> list[str]:
        return [self.binary, f"--web.listen-address={self.listen_address}", *self.args]

    def scrape(self, path: str = "/metrics") -> str:
        """One scrape of ``/metrics`` as text."""
        return self.get(path, timeout=30.0).decode()


# --------------------------------------------------------------------------------------------
# pytest fixtures


class PrometheusFactory(Protocol):
    def __call__(
        self,
        *,
        scrape_configs: Sequence[Mapping[str, Any]] = ...,
        rule_files: Sequence[str | Path] = ...,
        rules: str | Mapping[str, Any] | None = ...,
        alertmanager_url: str | None = ...,
        scrape_interval: str = ...,
        evaluation_interval: str = ...,
        extra_config: Mapping[str, Any] | None = ...,
        tsdb_path: Path | None = ...,
        retention: str | None = ...,
        extra_args: Sequence[str] = ...,
        wait: bool = ...,
    ) -> Prometheus: ...


class AlertmanagerFactory(Protocol):
    def __call__(
        self,
        config: str | Mapping[str, Any],
        *,
        extra_args: Sequence[str] = ...,
        wait: bool = ...,
    ) -> Alertmanager: ...


class NodeExporterFactory(Protocol):
    def __call__(self, *args: str | Path, wait: bool = ...) -> NodeExporter: ...


class _Registry:
    """Starts servers under one test's tmp dir and stops them all (reverse order) at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[_Server] = []
        self.counts: dict[str, int] = {}

    def workdir(self, kind: str) -> Path:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        return self.base / f"{kind}-{n}"

    def start(self, server: _Server, wait: bool) -> None:
        self.servers.append(server)  # registered first: stopped even if start fails
        server.start(wait=wait)

    def stop_all(self) -> None:
        errors: list[str] = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                errors.append(f"{server!r}: {exc}")
        if errors:
            raise HarnessError("stopping servers failed: " + "; ".join(errors))


@pytest.fixture
def _servers(tmp_path: Path) -> Iterator[_Registry]:
    registry = _Registry(tmp_path / "servers")
    try:
        yield registry
    finally:
        registry.stop_all()


@pytest.fixture
def prometheus_factory(_servers: _Registry) -> PrometheusFactory:
    """Callable starting a :class:`Prometheus` (keyword arguments as its constructor, plus
    ``wait=True``); all are stopped at teardown. Data is queryable ~5.5 s after start."""

    def make(*, wait: bool = True, **kwargs: Any) -> Prometheus:
        prom = Prometheus(_servers.workdir("prometheus"), **kwargs)
        _servers.start(prom, wait)
        return prom

    return make


@pytest.fixture
def alertmanager_factory(_servers: _Registry) -> AlertmanagerFactory:
    """Callable ``(config, *, extra_args=(), wait=True) -> Alertmanager``; stopped at teardown."""

    def make(
        config: str | Mapping[str, Any], *, extra_args: Sequence[str] = (), wait: bool = True
    ) -> Alertmanager:
        am = Alertmanager(_servers.workdir("alertmanager"), config, extra_args=extra_args)
        _servers.start(am, wait)
        return am

    return make


@pytest.fixture
def pushgateway(_servers: _Registry) -> Pushgateway:
    """A started :class:`Pushgateway` (persistence off), stopped at teardown."""
    pg = Pushgateway(_servers.workdir("pushgateway"))
    _servers.start(pg, True)
    return pg


@pytest.fixture
def node_exporter_factory(_servers: _Registry) -> NodeExporterFactory:
    """Callable ``(*args, wait=True) -> NodeExporter`` with the given node_exporter flags."""

    def make(*args: str | Path, wait: bool = True) -> NodeExporter:
        ne = NodeExporter(_servers.workdir("node-exporter"), [str(a) for a in args])
        _servers.start(ne, wait)
        return ne

    return make


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A :class:`WebhookReceiver` recording Alertmanager webhook payloads; stopped at teardown."""
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()
