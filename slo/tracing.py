"""OpenTelemetry traces of the daemon's evaluation cycles.

One span `slo.evaluation` per cycle with a child `prometheus.query` per query (statement,
window, attempts, HTTP status, series returned; failures recorded as errors). Spans go to
an OTLP/HTTP collector when `--otlp.endpoint` is set (`http://collector:4318` gets the
standard `/v1/traces` path; a URL with a path is used as given); otherwise the provider
records nothing. The provider is passed around explicitly, never installed globally.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Tracer

from hpcobs.exporters.version import VERSION

SERVICE_NAME = "hpcobs-slo"


def otlp_traces_url(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--otlp.endpoint must be an http(s) URL, not {endpoint!r}")
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path="/v1/traces"))
    return endpoint


def tracer_provider(
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """A provider exporting to `endpoint` over OTLP/HTTP (or to `exporter`, for tests)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME, "service.version": VERSION})
    )
    if exporter is None and endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=otlp_traces_url(endpoint), headers=dict(headers or {}), timeout=timeout
        )
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    return provider


def tracer(provider: TracerProvider) -> Tracer:
    return provider.get_tracer("hpcobs.slo", VERSION)
