"""Where a run's results go: Pushgateway, node_exporter textfile, OTLP over HTTP (rank 0 only).

All optional and combinable. A push (Pushgateway or OTLP) that fails is retried
(`--push.retries`, with 0.5 s, 1 s, 2 s … between attempts); when it still fails, the metrics
are written as a textfile to the fallback directory and the failure is logged with that
path, and the run exits 2. If even that write fails, the whole exposition is printed on
stderr (journal / Slurm output file): the measurement is never lost silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest, push_to_gateway
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from hpcobs.exporters.probe.metrics import unit_of
from hpcobs.exporters.version import VERSION

log = logging.getLogger("hpcobs.probe")

TEXTFILE_NAME = "hpcobs_mpi_probe.prom"
# hpcobs-node-exporter's textfile directory (exporters/collectors/textfile.py)
DEFAULT_TEXTFILE_DIR = "/var/lib/hpcobs/textfile"


@dataclass(frozen=True)
class Delivery:
    """The outcome of one output."""

    target: str  # "textfile", "pushgateway", "otlp", "fallback-textfile", "stderr"
    ok: bool
    detail: str  # path or URL, and the error when not ok
    attempts: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "detail": self.detail,
            "attempts": self.attempts,
        }


def write_textfile(directory: str | Path, text: bytes, name: str = TEXTFILE_NAME) -> Path:
    """Write `directory/name` atomically: a temp file in the same directory, fsync, rename.

    node_exporter's textfile collector only reads `*.prom`, so it never sees the temp file,
    and a reader sees either the old file or the new one, never a half-written one.
    """
    target = Path(directory) / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=str(directory))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable too
        dir_fd = os.open(str(directory), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


def retry(
    action: Callable[[], None],
    retries: int,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    first_delay: float = 0.5,
) -> tuple[int, str]:
    """Run `action` up to 1 + `retries` times; return (attempts, last error or "")."""
    error = ""
    for attempt in range(1, retries + 2):
        try:
            action()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning(f"{what} failed", extra={"attempt": attempt, "err": error})
            if attempt <= retries:
                sleep(first_delay * 2 ** (attempt - 1))
            continue
        return attempt, ""
    return retries + 1, error


def otlp_url(endpoint: str) -> str:
    """A base URL gets the OTLP/HTTP metrics path; a URL with a path is used as given."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path="/v1/metrics"))
    return endpoint


def export_otlp(
    families: Iterable[Metric],
    endpoint: str,
    timeout: float,
    resource: Mapping[str, str],
) -> None:
    """Send the families as OTLP gauges over HTTP/protobuf; raise on anything but success."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create(dict(resource)))
    try:
        meter = provider.get_meter("hpcobs.exporters.probe", VERSION)
        for family in families:
            if not family.samples:
                continue
            gauge = meter.create_gauge(
                family.name, unit=unit_of(family.name), description=family.documentation
            )
            for sample in family.samples:
                gauge.set(sample.value, attributes=dict(sample.labels))
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    if data is None:
        raise RuntimeError("no metrics to export")
    exporter = OTLPMetricExporter(endpoint=otlp_url(endpoint), timeout=timeout)
    try:
        result = exporter.export(data, timeout_millis=timeout * 1000)
    finally:
        exporter.shutdown()
    if result is not MetricExportResult.SUCCESS:
        raise ConnectionError(f"OTLP export to {otlp_url(endpoint)} failed ({result.name})")


def fallback_dir(explicit: str | None, textfile_dir: str | None) -> Path:
    for candidate in (explicit, textfile_dir):
        if candidate:
            return Path(candidate)
    default = Path(DEFAULT_TEXTFILE_DIR)
    if default.is_dir() and os.access(default, os.W_OK):
        return default
    return Path.cwd()


@dataclass(frozen=True)
class Targets:
    textfile_dir: str | None = None
    pushgateway: str | None = None
    push_job: str = "hpcobs_mpi_probe"
    grouping_key: Mapping[str, str] | None = None
    otlp_endpoint: str | None = None
    retries: int = 2
    timeout: float = 5.0
    fallback_dir: str | None = None


def deliver(
    registry: CollectorRegistry,
    targets: Targets,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Send one run's metrics everywhere asked; fall back to a textfile when a push fails."""
    text = generate_latest(registry)
    deliveries: list[Delivery] = []
    written: Path | None = None
    if targets.textfile_dir:
        try:
            written = write_textfile(targets.textfile_dir, text)
            deliveries.append(Delivery("textfile", True, str(written)))
        except OSError as exc:
            log.error("writing the textfile failed", extra={"err": str(exc)})
            deliveries.append(Delivery("textfile", False, f"{targets.textfile_dir}: {exc}"))

    if targets.pushgateway:
        url = targets.pushgateway
        grouping = dict(targets.grouping_key or {})
        attempts, error = retry(
            lambda: push_to_gateway(
                url,
                job=targets.push_job,
                registry=registry,
                grouping_key=grouping,
                timeout=targets.timeout,
            ),
            targets.retries,
            "push to the Pushgateway",
            sleep,
        )
        detail = f"{url} job={targets.push_job} " + " ".join(
            f"{k}={v}" for k, v in sorted(grouping.items())
        )
        deliveries.append(
            Delivery("pushgateway", not error, detail + (f": {error}" if error else ""), attempts)
        )

    if targets.otlp_endpoint:
        endpoint = targets.otlp_endpoint
        resource = {
            "service.name": "hpcobs-mpi-probe",
            "service.version": VERSION,
            "host.name": platform.node(),
            **{f"hpcobs.{k}": v for k, v in sorted((targets.grouping_key or {}).items())},
        }
        attempts, error = retry(
            lambda: export_otlp(registry.collect(), endpoint, targets.timeout, resource),
            targets.retries,
            "OTLP export",
            sleep,
        )
        deliveries.append(
            Delivery(
                "otlp", not error, otlp_url(endpoint) + (f": {error}" if error else ""), attempts
            )
        )

    pushes_failed = [d for d in deliveries if d.target in ("pushgateway", "otlp") and not d.ok]
    if pushes_failed or any(d.target == "textfile" and not d.ok for d in deliveries):
        deliveries.extend(_fall_back(text, written, targets))
    return deliveries


def _fall_back(text: bytes, written: Path | None, targets: Targets) -> list[Delivery]:
    if written is not None:
        log.error("a push failed; the measurement is in the textfile", extra={"path": str(written)})
        return []
    directory = fallback_dir(targets.fallback_dir, None)
    try:
        path = write_textfile(directory, text)
    except OSError as exc:
        log.error(
            "a push failed and the fallback textfile could not be written; "
            "printing the metrics on stderr",
            extra={"dir": str(directory), "err": str(exc)},
        )
        sys.stderr.write("# hpcobs-mpi-probe: undelivered metrics follow\n")
        sys.stderr.write(text.decode())
        sys.stderr.flush()
        return [Delivery("stderr", True, f"fallback textfile failed: {directory}: {exc}")]
    log.error(
        "a push failed; the measurement was written to the fallback textfile",
        extra={"path": str(path)},
    )
    return [Delivery("fallback-textfile", True, str(path))]
