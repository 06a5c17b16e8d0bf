"""Plain-language efficiency findings from a report's figures. Pure: figures in, sentences out.

Each finding says what was measured and how it was computed, in one sentence, e.g.
"GPUs idle 62% of the run (mean utilisation 38% over 4 GPUs)". A finding is left out when
its figures are unknown, never guessed. Thresholds that make a finding a warning are the
constants below.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from hpcobs.slo.jobreport.model import (
    CheckpointStream,
    Finding,
    GpuUsage,
    JobReport,
    LustreUsage,
    NodeUsage,
)
from hpcobs.slo.jobreport.units import fmt_bytes, fmt_duration, fmt_pct

GPU_IDLE_WARN = 0.5  # idle share of the GPU-time at or above which it is a warning
GPU_MEMORY_LOW = 0.25  # peak memory share of every GPU below which a smaller GPU would do
CPU_EFFICIENCY_WARN = 0.5  # used / allocated CPU time below which it is a warning
CHECKPOINT_TARGET = 0.05  # the checkpoint-time SLO example: under 5% of the run
# A run (or an allocation) shorter than this gives no meaningful averages: Prometheus' samples
# are seconds apart, and dividing by a float artefact near 0 overflows to inf.
MIN_SECONDS = 1.0


def gpu_idle(gpus: Sequence[GpuUsage]) -> Finding | None:
    """NVML's utilisation is the fraction of time a kernel ran, so 1 − its mean over the held
    GPUs is the share of GPU-time nothing ran."""
    means = [g.utilization_mean for g in gpus if g.utilization_mean is not None]
    if not means:
        return None
    mean = sum(means) / len(means)
    idle = 1.0 - mean
    n = len(means)
    return Finding(
        "gpu_idle",
        "warn" if idle >= GPU_IDLE_WARN else "info",
        f"GPUs idle {fmt_pct(idle)} of the run (mean utilisation {fmt_pct(mean)} over "
        f"{n} GPU{'s' if n != 1 else ''})",
        idle,
    )


def gpus_unused(gpus: Sequence[GpuUsage]) -> Finding | None:
    unused = [g for g in gpus if g.utilization_max is not None and g.utilization_max <= 0]
    measured = [g for g in gpus if g.utilization_max is not None]
    if not unused:
        return None
    names = ", ".join(f"{g.node or '-'}/{g.gpu}" for g in unused)
    return Finding(
        "gpus_unused",
        "warn",
        f"{len(unused)} of {len(measured)} GPUs never ran a kernel during the run ({names})",
        float(len(unused)),
    )


def gpu_memory(gpus: Sequence[GpuUsage]) -> Finding | None:
    shares = [
        (g.memory_peak_bytes / g.memory_total_bytes, g)
        for g in gpus
        if g.memory_peak_bytes is not None and g.memory_total_bytes
    ]
    if not shares:
        return None
    top, g = max(shares, key=lambda x: x[0])
    if top >= GPU_MEMORY_LOW:
        return None
    return Finding(
        "gpu_memory_low",
        "info",
        f"GPU memory: at most {fmt_pct(top)} of a GPU's memory used (peak "
        f"{fmt_bytes(g.memory_peak_bytes)} of {fmt_bytes(g.memory_total_bytes)}); a smaller "
        "GPU or a MIG slice would do",
        top,
    )


def cpu(
    nodes: Sequence[NodeUsage], run_seconds: float | None, allocated_cpu_seconds: float | None
) -> Finding | None:
    used = [n.cpu_seconds for n in nodes if n.cpu_seconds is not None]
    if not used:
        return None
    total = sum(used)
    if allocated_cpu_seconds and allocated_cpu_seconds >= MIN_SECONDS:
        eff = total / allocated_cpu_seconds
        return Finding(
            "cpu_efficiency",
            "warn" if eff < CPU_EFFICIENCY_WARN else "info",
            f"CPU efficiency {fmt_pct(eff)}: {fmt_duration(total)} of CPU time used of "
            f"{fmt_duration(allocated_cpu_seconds)} allocated",
            eff,
        )
    if not run_seconds:
        return None
    cores = total / run_seconds / len(used)
    return Finding(
        "cpu_cores",
        "info",
        f"CPU: {cores:.2f} cores busy on average per node over the run (allocation unknown, "
        "so no efficiency)",
        cores,
    )


def checkpoint_share(
    streams: Sequence[CheckpointStream], run_seconds: float | None
) -> Finding | None:
    """Checkpoint time over the run: per node the sum of its streams' checkpoint seconds, the
    busiest node's sum over the job's run time."""
    per_node: dict[str, float] = defaultdict(float)
    for s in streams:
        if s.seconds_total is not None:
            per_node[s.node] += s.seconds_total
    if not per_node or not run_seconds:
        return None
    share = max(per_node.values()) / run_seconds
    over = share > CHECKPOINT_TARGET
    return Finding(
        "checkpoint_share",
        "warn" if over else "info",
        f"checkpoints took {fmt_pct(share)} of the run"
        + (f", above the {fmt_pct(CHECKPOINT_TARGET)} target" if over else ""),
        share,
    )


def checkpoint_failures(streams: Sequence[CheckpointStream]) -> Finding | None:
    total = sum(s.attempts_total for s in streams)
    failed = sum(s.failed for s in streams)
    if not failed:
        return None
    return Finding(
        "checkpoint_failures",
        "warn",
        f"{failed:g} of {total:g} checkpoint attempts failed",
        failed,
    )


def lustre(fs: Sequence[LustreUsage], run_seconds: float | None) -> Finding | None:
    read = sum(f.read_bytes or 0 for f in fs)
    write = sum(f.write_bytes or 0 for f in fs)
    if not fs or (read == 0 and write == 0):
        return None
    rate = f" ({fmt_bytes((read + write) / run_seconds)}/s on average)" if run_seconds else ""
    lower = " at least" if any(f.resets for f in fs) else ""
    return Finding(
        "lustre_io",
        "info",
        f"Lustre:{lower} {fmt_bytes(read)} read and {fmt_bytes(write)} written{rate}",
        read + write,
    )


def queue(wait: float | None, run_seconds: float | None) -> Finding | None:
    if wait is None or not run_seconds or wait <= run_seconds:
        return None
    return Finding(
        "queue_wait",
        "info",
        f"waited {fmt_duration(wait)} in the queue, longer than it ran ({fmt_duration(run_seconds)})",
        wait / run_seconds,
    )


def outcome(state: str | None, cause: str | None) -> Finding | None:
    if state is None or state.lower() in ("running", "completed"):
        return None
    if cause == "system":
        why = "a system failure (cause system), not the job's own doing"
    elif cause == "user":
        why = "the job itself or its owner (cause user): see its output"
    else:
        why = "cause unknown"
    return Finding("outcome", "warn", f"ended {state}: {why}")


def alerts(report: JobReport) -> Finding | None:
    if not report.alerts:
        return None
    names = sorted({a.alertname for a in report.alerts})
    n = len(report.alerts)
    return Finding(
        "alerts",
        "warn",
        f"{n} alert{'s' if n != 1 else ''} fired on its nodes during the run: {', '.join(names)}",
        float(n),
    )


def findings(report: JobReport) -> tuple[Finding, ...]:
    run = report.window.seconds if report.window is not None else None
    if run is not None and not run >= MIN_SECONDS:
        run = None
    slurm = report.slurm
    candidates = (
        outcome(slurm.state.value, slurm.cause.value),
        alerts(report),
        gpu_idle(report.gpus),
        gpus_unused(report.gpus),
        gpu_memory(report.gpus),
        cpu(report.node_usage, run, slurm.allocated.get("cpu")),
        checkpoint_share(report.checkpoints, run),
        checkpoint_failures(report.checkpoints),
        lustre(report.lustre, run),
        queue(slurm.queue_wait_seconds.value, run),
    )
    return tuple(f for f in candidates if f is not None)
