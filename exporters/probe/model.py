"""What one probe run measured: plain data, shared by the metrics, the JSON and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpcobs.exporters.probe.stats import NodeLatency, Summary

OPS = ("allreduce", "bcast", "allgather", "alltoall", "reduce_scatter", "barrier")
"""Op label values: the lower-case MPI names."""

DEFAULT_SIZES = (*(8 * 4**k for k in range(10)), 4 * 1024 * 1024)
"""8 B, 32 B, … 2 MiB (8 × 4^k), and 4 MiB as the top end."""


@dataclass(frozen=True)
class CollectiveResult:
    """One op at one message size: raw and overhead-corrected figures.

    `size_bytes` is per rank (allreduce, bcast, allgather contribution, reduce_scatter input
    vector) or per destination (alltoall); 0 for barrier.
    """

    op: str
    size_bytes: int
    iterations: int
    raw: Summary
    corrected: Summary
    slowest_rank: int = -1  # the rank that was slowest in most iterations

    def as_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "size_bytes": self.size_bytes,
            "iterations": self.iterations,
            "raw_seconds": self.raw.as_dict(),
            "corrected_seconds": self.corrected.as_dict(),
            "slowest_rank": self.slowest_rank,
        }


@dataclass(frozen=True)
class PairResult:
    """Ping-pong between two nodes: one-way latency (half the round trip) and bandwidth.

    `latency` is corrected: each round trip less `overhead_seconds` (the calibrated cost of
    the timing loop around the same calls to MPI_PROC_NULL), floored at zero, then halved;
    `latency_raw` is half of each round trip as timed.
    """

    node_a: str
    node_b: str
    rank_a: int
    rank_b: int
    latency: Summary  # seconds, per iteration, corrected
    bandwidth_bytes_per_second: float  # message size over the corrected p50 one-way time
    message_bytes: int
    iterations: int
    latency_raw: Summary
    overhead_seconds: float  # per round trip

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_a": self.node_a,
            "node_b": self.node_b,
            "rank_a": self.rank_a,
            "rank_b": self.rank_b,
            "latency_seconds": self.latency.as_dict(),
            "latency_raw_seconds": self.latency_raw.as_dict(),
            "overhead_seconds": self.overhead_seconds,
            "bandwidth_bytes_per_second": self.bandwidth_bytes_per_second,
            "message_bytes": self.message_bytes,
            "iterations": self.iterations,
        }


@dataclass
class ProbeResult:
    """Everything rank 0 knows after the measurement."""

    ranks: int
    identity_mode: str
    rank_nodes: list[str]
    nodes: list[str]
    started_unix: float
    finished_unix: float
    budget_seconds: float
    overhead_seconds: dict[str, float]  # op -> calibrated no-op time (median over ranks)
    overhead_per_rank: dict[str, list[float]]
    collectives: list[CollectiveResult] = field(default_factory=list)
    pairs: list[PairResult] = field(default_factory=list)
    node_slowness: dict[str, float] = field(default_factory=dict)
    node_latency: dict[str, NodeLatency] = field(default_factory=dict)
    worst_pairs: list[PairResult] = field(default_factory=list)
    pairwise_rounds: int = 0
    skipped_cells: list[tuple[str, int]] = field(default_factory=list)  # buffers too large
    timer: str = "python"  # the timing loop: "compiled" or "python" (see timedloop)
    mpi_library: str = ""  # first line of MPI_Get_library_version

    @property
    def duration_seconds(self) -> float:
        return max(0.0, self.finished_unix - self.started_unix)

    def p50_by_cell(self) -> dict[tuple[str, int], float]:
        """Corrected p50 per (op, size_bytes): the figures a baseline compares."""
        return {(c.op, c.size_bytes): c.corrected.p50 for c in self.collectives}

    def slowest_node(self) -> tuple[str, float] | None:
        if not self.node_slowness:
            return None
        node = max(self.node_slowness, key=lambda n: (self.node_slowness[n], n))
        return node, self.node_slowness[node]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ranks": self.ranks,
            "nodes": self.nodes,
            "identity_mode": self.identity_mode,
            "rank_nodes": self.rank_nodes,
            "started_unix": self.started_unix,
            "finished_unix": self.finished_unix,
            "duration_seconds": self.duration_seconds,
            "budget_seconds": self.budget_seconds,
            "timer": self.timer,
            "mpi_library": self.mpi_library,
            "calibration": {
                "method": "median time of the same timed loop around the same MPI call on "
                "MPI_COMM_SELF with zero-length buffers (no communication); subtracted per rank",
                "overhead_seconds": self.overhead_seconds,
                "overhead_seconds_per_rank": self.overhead_per_rank,
            },
            "collectives": [c.as_dict() for c in self.collectives],
            "skipped_cells": [{"op": op, "size_bytes": size} for op, size in self.skipped_cells],
            "pairwise": {
                "rounds": self.pairwise_rounds,
                "pairs": [p.as_dict() for p in self.pairs],
                "worst_pairs": [p.as_dict() for p in self.worst_pairs],
                "node_slowness_ratio": self.node_slowness,
                "node_latency_seconds": {
                    node: summary.as_dict() for node, summary in self.node_latency.items()
                },
            },
        }
