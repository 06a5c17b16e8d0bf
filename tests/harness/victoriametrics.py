"""VictoriaMetrics single-node and vmalert for `real` tests, next to ``harness.servers``.

Debian's ``victoria-metrics`` package (1.79 in bookworm, 1.112 in trixie, 1.145 in sid) holds
both binaries; they are looked up on PATH, so ``scripts/compat/run.py`` switches versions with a
directory first on PATH (``scripts/compat/vm-debs.sh``). Debian's builds report no version
(``-version`` prints an empty line): where a behaviour differs between versions the harness
asks the binary which flags it has (:func:`has_flag`).

Servers bind ``127.0.0.1`` on a free port, write under the test's temporary directory, log to a
file there and are stopped by PID (:class:`harness.servers._Server`). What a test must know:

* VictoriaMetrics shifts an instant query whose time is within ``-search.latencyOffset``
  (default 30 s) of now back to now - 30 s, and vmalert from 1.9x on moves its own query time
  back by ``-rule.evalDelay`` (default 30 s) to match, and stamps the results with it. The
  harness sets both to 0, so a query at time T is evaluated at T.
* Live, vmalert stamps recording-rule results with the evaluation time aligned to the group's
  interval, but ``ALERTS`` with the second it evaluated; it writes a staleness marker when a
  series goes away. ``-replay`` writes none.
* Imported samples become searchable about a second later; :meth:`VictoriaMetrics.flush` forces
  it (``/internal/force_flush``). A query for a series that does not exist yet may be answered
  from a cache of empty lookups for up to about 10 s after the series appears.
* ``vmalert -replay`` (:class:`Replay`) evaluates a group rule by rule, each over the whole range,
  and pauses ``-replay.rulesDelay`` after each so that the results, written by remote write
  every ``-remoteWrite.flushInterval``, are searchable before the next rule reads them.
  vmalert 1.79 replays at ``-datasource.queryStep`` steps (default 5m), later ones at the
  group's interval: :class:`Replay` sets the step to the interval.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import subprocess
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.servers import (
    ComponentStartError,
    HarnessError,
    ManagedProcess,
    _Server,
    find_binary,
    http_request,
)

__all__ = [
    "Replay",
    "ReplayResult",
    "VMAlert",
    "VictoriaMetrics",
    "has_flag",
]

JSON = dict[str, Any]


@functools.cache
def _flags(path: str) -> frozenset[str]:
    try:
        proc = subprocess.run([path, "-help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ComponentStartError(f"{path} -help could not run: {exc}") from exc
    names = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        stripped = line.strip()
        if stripped.startswith("-") and not line.startswith("\t"):
            names.add(stripped[1:].split()[0])
    if not names:
        raise ComponentStartError(f"{path} -help listed no flags:\n{proc.stdout[-2000:]}")
    return frozenset(names)


def has_flag(binary: str, flag: str) -> bool:
    """Whether the ``binary`` on PATH (``victoria-metrics``, ``vmalert``) has ``-flag``."""
    return flag in _flags(find_binary(binary))


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class VictoriaMetrics(_Server):
    """A private single-node VictoriaMetrics: 100 years of retention (tests import old data),
    queries evaluated at the time asked (``-search.latencyOffset=0s``).

    It serves the Prometheus query API both at the root and under ``/prometheus``
    (:attr:`prometheus_url`), and takes remote write at ``/api/v1/write``.
    """

    ready_path = "/health"

    def __init__(self, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        super().__init__(workdir, "victoria-metrics")
        self.binary = find_binary("victoria-metrics")
        self.extra_args = list(extra_args)

    @property
    def prometheus_url(self) -> str:
        """The query API under the ``/prometheus`` prefix, as vmselect serves it per tenant."""
        return self.url + "/prometheus"

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr={self.listen_address}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            *self.extra_args,
        ]

    def import_prometheus(self, text: str) -> None:
        """Import Prometheus text exposition lines with millisecond timestamps, then make
        them searchable (:meth:`flush`)."""
        status, body = http_request(
            "POST", self.url + "/api/v1/import/prometheus", data=text.encode(), timeout=60.0
        )
        if not 200 <= status < 300:
            raise HarnessError(f"import: HTTP {status}: {body[:500]!r}\n{self.log_tail(20)}")
        self.flush()

    def flush(self) -> None:
        """Make every sample received so far searchable (``/internal/force_flush``)."""
        self.get("/internal/force_flush", timeout=30.0)

    def reset_cache(self) -> None:
        """Drop the query cache (``/internal/resetRollupResultCache``), as VictoriaMetrics'
        docs ask after backfilling: cached results of past time ranges do not know of
        samples written into them later (by ``vmalert -replay``)."""
        self.get("/internal/resetRollupResultCache", timeout=30.0)

    def export(self, match: str, start: float, end: float) -> list[JSON]:
        """The raw samples of the series matching ``match`` in [start, end]: one
        ``{"metric": {...}, "values": [...], "timestamps": [ms, ...]}`` per series."""
        params = urllib.parse.urlencode(
            {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        )
        body = self.get(f"/api/v1/export?{params}", timeout=60.0)
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def query(self, expr: str, at: float) -> list[JSON]:
        """Instant query at ``at``; the result list (``metric``, ``value``)."""
        data = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}", "nocache": "1"})
        status, body = http_request(
            "POST",
            self.url + "/api/v1/query",
            data=data.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=30.0,
        )
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise HarnessError(f"query {expr!r}: HTTP {status}: {body[:500]!r}")
        result: list[JSON] = doc["data"]["result"]
        return result


class VMAlert(_Server):
    """vmalert evaluating ``rule_files`` live against ``datasource`` (a VictoriaMetrics URL),
    writing recording-rule results and ``ALERTS`` back by remote write, sending alerts to
    ``notifier_url``. Query times are aligned to the group interval and not shifted
    (``-rule.evalDelay=0s`` where the flag exists)."""

    ready_path = "/health"

    def __init__(
        self,
        workdir: Path,
        rule_files: Sequence[Path],
        datasource: str,
        notifier_url: str,
        *,
        interval: str = "1m",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir, "vmalert")
        self.binary = find_binary("vmalert")
        self.rule_files = list(rule_files)
        self.datasource = datasource
        self.notifier_url = notifier_url
        self.interval = interval
        self.extra_args = list(extra_args)

    def argv(self) -> list[str]:
        args = [
            self.binary,
            *(f"-rule={p}" for p in self.rule_files),
            f"-datasource.url={self.datasource}",
            f"-remoteWrite.url={self.datasource}",
            f"-notifier.url={self.notifier_url}",
            f"-httpListenAddr={self.listen_address}",
            f"-evaluationInterval={self.interval}",
            "-remoteWrite.flushInterval=1s",
        ]
        if has_flag("vmalert", "rule.evalDelay"):
            args.append("-rule.evalDelay=0s")
        return args + self.extra_args

    def groups(self) -> list[JSON]:
        """``/api/v1/rules``: the groups with their rules' last evaluation."""
        doc = json.loads(self.get("/api/v1/rules"))
        groups: list[JSON] = doc["data"]["groups"]
        return groups


@dataclass(frozen=True)
class ReplayResult:
    returncode: int
    seconds: float
    output: str


class Replay:
    """``vmalert -replay`` of ``rule_files`` over [start, end] (unix seconds), started at once
    in its own process group (several can run together); :meth:`wait` for its result,
    :meth:`stop` (idempotent) at teardown. Results are written back by remote write to
    ``datasource``; group intervals default to ``interval``, and the replay's query step is
    set to it too (vmalert 1.79 would otherwise step by ``-datasource.queryStep``, 5m)."""

    def __init__(
        self,
        rule_files: Sequence[Path],
        datasource: str,
        start: float,
        end: float,
        log_path: Path,
        *,
        interval: str = "1m",
        rules_delay: str = "1s",
        flush_interval: str = "1s",
        extra_args: Sequence[str] = (),
    ) -> None:
        argv = [
            find_binary("vmalert"),
            *(f"-rule={p}" for p in rule_files),
            f"-datasource.url={datasource}",
            f"-remoteWrite.url={datasource}",
            f"-replay.timeFrom={_rfc3339(start)}",
            f"-replay.timeTo={_rfc3339(end)}",
            f"-evaluationInterval={interval}",
            f"-datasource.queryStep={interval}",
            f"-replay.rulesDelay={rules_delay}",
            f"-remoteWrite.flushInterval={flush_interval}",
            "-replay.disableProgressBar",
            *extra_args,
        ]
        self.process = ManagedProcess("vmalert-replay", argv, log_path).start()

    def wait(self, timeout: float = 300.0) -> ReplayResult:
        """Wait for the replay to end (stopped after ``timeout`` s): exit status, seconds
        since start, output."""
        popen = self.process.popen
        assert popen is not None and self.process.started_at is not None
        try:
            rc = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.stop()
            rc = -9
        seconds = time.monotonic() - self.process.started_at
        return ReplayResult(rc, seconds, self.process.log_tail(400))

    def stop(self) -> None:
        self.process.stop()
