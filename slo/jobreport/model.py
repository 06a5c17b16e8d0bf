"""What a job report holds: plain frozen values, filled by `gather` and read by `findings` and
`render`. Nothing here talks to Prometheus.

Every Slurm fact carries where it came from (`Fact.source`), because Prometheus holds no
per-job scheduler record for most jobs: a fact is read from a per-job series, inferred from
the per-partition counters when exactly one job event falls next to the job's own samples, or
unknown, and the report says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Fact(Generic[T]):
    """A value, or None when unknown, and where it came from (or why it is unknown)."""

    value: T | None
    source: str

    @property
    def known(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class Query:
    """One request sent to the Prometheus API, as sent."""

    kind: Literal["query", "query_range"]
    expr: str
    time: float | None = None  # instant queries
    start: float | None = None  # range queries
    end: float | None = None
    step: float | None = None


@dataclass(frozen=True)
class Window:
    """The job's run as Prometheus saw it: the first and the last sample of its processes
    (hpcobs_job_processes) or GPUs (hpcobs_gpu_job_info) on any node. The job started at most
    one scrape interval before `first` and ended at most one after `last`."""

    first: float
    last: float
    live: bool  # series still present at the report's time: the job is running

    @property
    def seconds(self) -> float:
        return max(0.0, self.last - self.first)


@dataclass(frozen=True)
class Slurm:
    partition: Fact[str]
    state: Fact[str]
    cause: Fact[str]
    exit_code: Fact[str]
    queue_wait_seconds: Fact[float]
    allocated: Mapping[str, float] = field(default_factory=dict)  # resource → resource-seconds
    allocated_source: str = ""
    # user, account, nodes (Slurm's host list) and log_url of the failed-job record
    record: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeUsage:
    node: str
    cpu_seconds: float | None  # hpcobs_job_cpu_seconds_total, highest value in the window
    memory_peak_bytes: float | None  # hpcobs_job_memory_bytes, highest value in the window


@dataclass(frozen=True)
class GpuUsage:
    node: str
    gpu: str
    uuid: str
    utilization_mean: float | None  # mean of hpcobs_gpu_utilization_ratio samples in the window
    utilization_max: float | None
    memory_peak_bytes: float | None  # hpcobs_gpu_job_memory_used_bytes (the job's processes)
    memory_total_bytes: float | None


@dataclass(frozen=True)
class LustreUsage:
    fs: str
    read_bytes: float | None  # summed over targets of each target's highest value
    write_bytes: float | None
    operations: Mapping[str, float]  # operation → count, summed over targets
    resets: int  # counter resets seen in the window: figures are then lower bounds


@dataclass(frozen=True)
class CheckpointStream:
    node: str
    name: str
    attempts: Mapping[str, float]  # result → attempts
    seconds_total: float | None  # hpcobs_checkpoint_seconds_total
    longest_seconds: float | None  # highest hpcobs_checkpoint_duration_seconds sampled
    last_seconds: float | None  # the latest attempt's duration

    @property
    def attempts_total(self) -> float:
        return sum(self.attempts.values())

    @property
    def failed(self) -> float:
        return sum(v for k, v in self.attempts.items() if k != "success")


@dataclass(frozen=True)
class Alert:
    alertname: str
    severity: str
    labels: Mapping[str, str]  # the alert's labels except alertname, alertstate, severity
    active_since: float | None  # ALERTS_FOR_STATE: when it became pending (or firing)
    last_firing: float | None  # the last firing sample of ALERTS in the run window


@dataclass(frozen=True)
class Finding:
    key: str  # stable identifier, e.g. "gpu_idle"
    level: Literal["info", "warn"]
    text: str
    value: float | None = None  # the figure the sentence is about (a ratio, seconds, ...)


@dataclass(frozen=True)
class JobReport:
    job_id: str
    cluster: str | None
    as_of: float
    prometheus: str  # base URL, no credentials
    window: Window | None  # None: no process or GPU of the job was ever sampled
    nodes: tuple[str, ...]
    slurm: Slurm
    node_usage: tuple[NodeUsage, ...]
    gpus: tuple[GpuUsage, ...]
    lustre: tuple[LustreUsage, ...]
    checkpoints: tuple[CheckpointStream, ...]
    alerts: tuple[Alert, ...]
    queries: tuple[Query, ...]
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()  # what the report could not establish, in words


class JobNotFound(Exception):
    """No series of the job in the searched range: unknown to Prometheus, or older than its
    retention."""
