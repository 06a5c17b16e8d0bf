"""Run a job report's three queries (`queries`) and turn their answers into a `JobReport`.

`gather` is the only function here that talks to Prometheus; the `parse_*` and `slurm_facts`
functions are pure, from answers to model values.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hpcobs.slo.jobreport import queries as q
from hpcobs.slo.jobreport.findings import findings
from hpcobs.slo.jobreport.model import (
    Alert,
    CheckpointStream,
    Fact,
    GpuUsage,
    JobNotFound,
    JobReport,
    LustreUsage,
    NodeUsage,
    Query,
    Slurm,
    Window,
)
from hpcobs.slo.promapi import PrometheusClient, Sample, Series

DAY = 86400.0


class AmbiguousJob(Exception):
    """The job id was seen in several clusters: the user must pick one."""


@dataclass(frozen=True)
class Options:
    job_id: str
    as_of: float
    cluster: str | None = None
    search: float = 90 * DAY  # how far back to look for the job
    match: float = 120.0  # ± around the job's first/last sample for Slurm's counters
    settle: float = 120.0  # after the last sample: Lustre, checkpoints, failed-job record
    deadline: float | None = None  # time.monotonic() bound for all queries


@dataclass(frozen=True)
class Located:
    run: tuple[float, float] | None  # first and last bucket with process/GPU samples
    failed: tuple[float, float] | None  # the same for the failed-job record
    bucket: float


@dataclass(frozen=True)
class Refined:
    first: float
    last: float
    live: bool
    nodes: tuple[str, ...]
    clusters: tuple[str, ...]


# -- pure: answers → values ---------------------------------------------------------------
def parse_locate(series: Sequence[Series], bucket: float) -> Located:
    spans: dict[str, list[float]] = defaultdict(list)
    for s in series:
        source = s.labels.get("source", "")
        spans[source].extend(t for t, v in s.points if v > 0)
    run = spans["processes"] + spans["gpus"]
    failed = spans["failed"]
    return Located(
        run=(min(run), max(run)) if run else None,
        failed=(min(failed), max(failed)) if failed else None,
        bucket=bucket,
    )


def parse_refine(samples: Sequence[Sample], located: Located) -> Refined:
    assert located.run is not None
    first, last = located.run[0] - located.bucket, located.run[1]
    live = False
    nodes: set[str] = set()
    clusters: set[str] = set()
    for s in samples:
        edge = s.labels.get("edge")
        if edge == "first":
            first = s.value
        elif edge == "last":
            last = s.value
        elif edge == "live":
            live = s.value > 0
        elif edge in ("node", "gpu_node"):
            nodes.add(s.labels.get("node", ""))
            clusters.add(s.labels.get("cluster", ""))
    return Refined(
        first=first,
        last=max(first, last),
        live=live,
        nodes=tuple(sorted(nodes)),
        clusters=tuple(sorted(c for c in clusters if c)),
    )


def by_figure(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.labels.get("figure", "")].append(s)
    return out


def _keyed(samples: Iterable[Sample], *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.get(k, "") for k in keys): s.value for s in samples}


def parse_nodes(figs: Mapping[str, list[Sample]], nodes: Iterable[str]) -> tuple[NodeUsage, ...]:
    cpu = _keyed(figs.get("cpu_seconds", ()), "node")
    mem = _keyed(figs.get("memory_peak", ()), "node")
    names = set(nodes) | {k[0] for k in cpu} | {k[0] for k in mem}
    return tuple(NodeUsage(n, cpu.get((n,)), mem.get((n,))) for n in sorted(names))


def parse_gpus(figs: Mapping[str, list[Sample]]) -> tuple[GpuUsage, ...]:
    keys = ("node", "gpu", "uuid")
    held = _keyed(figs.get("gpu_held", ()), *keys)
    mean = _keyed(figs.get("gpu_util_mean", ()), *keys)
    peak = _keyed(figs.get("gpu_util_max", ()), *keys)
    mem = _keyed(figs.get("gpu_memory_peak", ()), *keys)
    total = _keyed(figs.get("gpu_memory_total", ()), *keys)
    out = []
    for k in sorted(set(held) | set(mean) | set(mem), key=_gpu_order):
        out.append(GpuUsage(k[0], k[1], k[2], mean.get(k), peak.get(k), mem.get(k), total.get(k)))
    return tuple(out)


def _gpu_order(key: tuple[str, ...]) -> tuple[str, int, str]:
    node, gpu, uuid = key
    return (node, int(gpu) if gpu.isdigit() else 1 << 30, gpu + uuid)


def parse_lustre(figs: Mapping[str, list[Sample]]) -> tuple[LustreUsage, ...]:
    read = _keyed(figs.get("lustre_read", ()), "fs")
    write = _keyed(figs.get("lustre_write", ()), "fs")
    resets: dict[tuple[str, ...], float] = defaultdict(float)
    for name, samples in figs.items():
        if name.startswith("lustre_resets_"):
            for s in samples:
                resets[(s.labels.get("fs", ""),)] += s.value
    ops: dict[str, dict[str, float]] = defaultdict(dict)
    for s in figs.get("lustre_ops", ()):
        ops[s.labels.get("fs", "")][s.labels.get("operation", "")] = s.value
    names = {k[0] for k in read} | {k[0] for k in write} | set(ops)
    return tuple(
        LustreUsage(
            fs=fs,
            read_bytes=read.get((fs,)),
            write_bytes=write.get((fs,)),
            operations=dict(sorted(ops.get(fs, {}).items())),
            resets=int(resets.get((fs,), 0)),
        )
        for fs in sorted(names)
    )


def parse_checkpoints(figs: Mapping[str, list[Sample]]) -> tuple[CheckpointStream, ...]:
    seconds = _keyed(figs.get("ckpt_seconds", ()), "node", "name")
    longest = _keyed(figs.get("ckpt_longest", ()), "node", "name")
    last = _keyed(figs.get("ckpt_last", ()), "node", "name")
    attempts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for s in figs.get("ckpt_attempts", ()):
        key = (s.labels.get("node", ""), s.labels.get("name", ""))
        attempts[key][s.labels.get("result", "")] = s.value
    keys = set(seconds) | set(longest) | set(attempts)
    return tuple(
        CheckpointStream(
            node=k[0],
            name=k[1],
            attempts=dict(sorted(attempts.get((k[0], k[1]), {}).items())),
            seconds_total=seconds.get(k),
            longest_seconds=longest.get(k),
            last_seconds=last.get(k),
        )
        for k in sorted(keys)
    )


_NOT_ALERT_LABELS = {"figure", "alertname", "alertstate", "severity", "__name__"}


def parse_alerts(figs: Mapping[str, list[Sample]]) -> tuple[Alert, ...]:
    def key(s: Sample) -> tuple[tuple[str, str], ...]:
        return tuple(
            sorted((k, v) for k, v in s.labels.items() if k not in ("figure", "alertstate"))
        )

    since: dict[tuple[tuple[str, str], ...], float] = {}
    for name in ("alerts_node_since", "alerts_job_since"):
        for s in figs.get(name, ()):
            k = key(s)
            since[k] = min(s.value, since.get(k, s.value))
    last: dict[tuple[tuple[str, str], ...], float] = {}
    for name in ("alerts_node_last", "alerts_job_last", "alerts_node_end", "alerts_job_end"):
        for s in figs.get(name, ()):
            k = key(s)
            last[k] = max(s.value, last.get(k, s.value))
    out = []
    for k, when in last.items():
        labels = dict(k)
        out.append(
            Alert(
                alertname=labels.get("alertname", ""),
                severity=labels.get("severity", ""),
                labels={a: b for a, b in k if a not in _NOT_ALERT_LABELS},
                active_since=since.get(k),
                last_firing=when,
            )
        )
    return tuple(sorted(out, key=alert_order))


def alert_order(a: Alert) -> tuple[float, str, list[tuple[str, str]]]:
    """Alerts by when they became active, then name and labels."""
    return (a.active_since or a.last_firing or 0.0, a.alertname, sorted(a.labels.items()))


def _window_text(seconds: float) -> str:
    return f"±{seconds:g} s"


def slurm_facts(
    figs: Mapping[str, list[Sample]], match: float, live: bool, has_window: bool
) -> tuple[Slurm, tuple[str, ...]]:
    """Partition, state, cause, exit code and queue wait, from the failed-job record when there
    is one and otherwise inferred from Slurm's per-partition counters when exactly one job
    event falls within the match window of the job's first (start) or last (end) sample."""
    notes: list[str] = []
    w = _window_text(match)
    failed = figs.get("failed_info", [])
    record = failed[0].labels if failed else None
    record_source = "hpcobs_slurm_job_failed_info"

    # the start: one queue-wait observation next to the first sample
    start_partition: str | None = None
    queue_wait = Fact[float](None, "")
    starts = {s.labels.get("partition", ""): s.value for s in figs.get("starts", ())}
    waits = {s.labels.get("partition", ""): s.value for s in figs.get("waits", ())}
    n_starts = sum(starts.values())
    if not has_window:
        queue_wait = Fact(None, "the job was never sampled on a node")
    elif any(v < 0 for v in starts.values()):
        queue_wait = Fact(None, "the Slurm exporter's counters reset near the start")
    elif n_starts == 1 and list(starts.values()).count(1) == 1:
        start_partition = next(p for p, v in starts.items() if v == 1)
        queue_wait = Fact(
            waits.get(start_partition, 0.0),
            f"inferred: the only job start the Slurm exporter counted within {w} of the "
            "job's first sample (hpcobs_slurm_job_queue_wait_seconds)",
        )
    elif n_starts == 0:
        queue_wait = Fact(
            None, f"the Slurm exporter counted no job start within {w} of its first sample"
        )
    else:
        queue_wait = Fact(
            None,
            f"{n_starts:g} job starts counted within {w} of its first sample; "
            "Prometheus has no per-job record to tell them apart",
        )

    # the end: one finished job next to the last sample
    end: dict[str, str] | None = None
    ends = [s for s in figs.get("ends", ()) if s.value != 0]
    n_ends = sum(s.value for s in ends)
    end_why = ""
    if live:
        end_why = "the job is running"
    elif not has_window:
        end_why = "the job was never sampled on a node"
    elif any(s.value < 0 for s in ends):
        end_why = "the Slurm exporter's counters reset near the end"
    elif n_ends == 1 and len(ends) == 1:
        end = {k: ends[0].labels.get(k, "") for k in ("partition", "state", "cause")}
    elif n_ends == 0:
        end_why = f"the Slurm exporter counted no job end within {w} of its last sample"
    else:
        end_why = f"{n_ends:g} job ends counted within {w} of its last sample"
    end_source = (
        f"inferred: the only job end the Slurm exporter counted within {w} of the job's last "
        "sample (hpcobs_slurm_jobs_finished_total)"
    )

    # inferences that contradict a per-job record or each other are dropped
    if (
        record is not None
        and end is not None
        and (end["partition"] != record.get("partition") or end["state"] != record.get("state", ""))
    ):
        notes.append(
            "the job end counted near its last sample is another job's (it disagrees with "
            "hpcobs_slurm_job_failed_info): cause unknown"
        )
        end, end_why = None, "the job end counted near its last sample was another job's"
    if (
        record is not None
        and start_partition is not None
        and start_partition != record.get("partition")
    ):
        notes.append("the job start counted near its first sample is another job's")
        start_partition = None
        queue_wait = Fact(None, "the only start counted nearby was another job's")
    if start_partition is not None and end is not None and start_partition != end["partition"]:
        notes.append(
            "the job start and end counted near its samples are in different partitions: "
            "at least one is another job's, so neither is used"
        )
        start_partition, end = None, None
        queue_wait = Fact(None, "the starts and ends counted nearby disagree")
        end_why = "the starts and ends counted nearby disagree"

    if record is not None:
        partition = Fact[str](record.get("partition", ""), record_source)
    elif start_partition is not None:
        partition = Fact(
            start_partition,
            f"inferred: the only job start the Slurm exporter counted within {w} of the job's "
            "first sample (hpcobs_slurm_job_queue_wait_seconds_count)",
        )
    elif end is not None:
        partition = Fact(end["partition"], end_source)
    else:
        partition = Fact(
            None,
            "no failed-job record, and no single job start or end counted next to "
            "the job's samples",
        )

    if record is not None:
        state = Fact[str](record.get("state", ""), record_source)
    elif end is not None:
        state = Fact(end["state"], end_source)
    elif live:
        state = Fact("running", "its processes or GPUs are sampled at the report's time")
    else:
        state = Fact(None, f"ended; {end_why}")

    cause = Fact[str](end["cause"], end_source) if end is not None else Fact(None, end_why)
    if record is not None and record.get("exit_code", "") != "":
        exit_code = Fact[str](record["exit_code"], record_source)
    elif end is not None and end["state"] == "completed":
        exit_code = Fact("0", "state completed (Slurm's COMPLETED means exit code 0)")
    elif live:
        exit_code = Fact(None, "the job is running")
    else:
        exit_code = Fact(None, "only failed jobs' exit codes are exported")

    allocated: dict[str, float] = {}
    allocated_source = ""
    if end is not None:
        for s in figs.get("allocated", ()):
            if (
                s.labels.get("partition") == end["partition"]
                and s.labels.get("state") == end["state"]
            ):
                allocated[s.labels.get("resource", "")] = s.value
        allocated_source = "inferred with the job's end (hpcobs_slurm_job_resource_seconds_total)"
    return (
        Slurm(
            partition=partition,
            state=state,
            cause=cause,
            exit_code=exit_code,
            queue_wait_seconds=queue_wait,
            allocated=allocated,
            allocated_source=allocated_source,
            record={k: record[k] for k in q.RECORD_LABELS if record and record.get(k)},
        ),
        tuple(notes),
    )


# -- I/O ---------------------------------------------------------------------------------
def gather(client: PrometheusClient, opts: Options) -> JobReport:
    """Three requests: locate, refine, figures (two when the job was never sampled on a node)."""
    if not q.JOB_ID.fullmatch(opts.job_id):
        raise ValueError(f"invalid job id {opts.job_id!r}")
    sel = q.Selectors(opts.job_id, opts.cluster)
    sent: list[Query] = []

    start, end, bucket = q.locate_grid(opts.as_of, opts.search)
    expr = q.locate_expr(sel, bucket)
    sent.append(Query("query_range", expr, start=start, end=end, step=bucket))
    located = parse_locate(
        client.query_range(expr, start, end, bucket, deadline=opts.deadline), bucket
    )
    if located.run is None and located.failed is None:
        raise JobNotFound(
            f"job {opts.job_id}: no series of it in Prometheus from {_iso(start - bucket)} to "
            f"{_iso(opts.as_of)}"
            + (f" in cluster {opts.cluster}" if opts.cluster else "")
            + ": unknown to Prometheus, or older than its retention"
        )

    if located.run is None:
        assert located.failed is not None
        expr = q.failed_only_expr(sel, located.failed[0], located.failed[1], bucket)
        sent.append(Query("query", expr, time=opts.as_of))
        figs = by_figure(client.query(expr, opts.as_of, deadline=opts.deadline))
        slurm, notes = slurm_facts(figs, opts.match, live=False, has_window=False)
        return _finish(
            opts,
            client,
            sent,
            window=None,
            nodes=(),
            slurm=slurm,
            figs=figs,
            notes=(
                "no process or GPU of the job was ever sampled on a monitored node: no run "
                "window, so no node, GPU, Lustre, checkpoint or alert figures",
                *notes,
            ),
        )

    expr = q.refine_expr(sel, located.run[0], located.run[1], bucket)
    sent.append(Query("query", expr, time=opts.as_of))
    refined = parse_refine(client.query(expr, opts.as_of, deadline=opts.deadline), located)
    if opts.cluster is None and len(refined.clusters) > 1:
        raise AmbiguousJob(
            f"job {opts.job_id} was seen in clusters {', '.join(refined.clusters)}: "
            "choose one with --cluster"
        )
    cluster = opts.cluster or (refined.clusters[0] if refined.clusters else None)
    sel = q.Selectors(opts.job_id, cluster)
    times = q.Times.of(refined.first, refined.last, opts.as_of, opts.settle, opts.match)
    nodes = tuple(n for n in refined.nodes if n)
    expr, _ = q.figures_expr(sel, times, nodes, refined.live)
    sent.append(Query("query", expr, time=opts.as_of))
    figs = by_figure(client.query(expr, opts.as_of, deadline=opts.deadline))
    slurm, notes = slurm_facts(figs, opts.match, refined.live, has_window=True)
    if "" in refined.nodes:
        notes = (*notes, "some of the job's series have no node label; they are shown as '-'")
    return _finish(
        opts,
        client,
        sent,
        window=Window(refined.first, refined.last, refined.live),
        nodes=refined.nodes,
        slurm=slurm,
        figs=figs,
        notes=notes,
        cluster=cluster,
    )


def _finish(
    opts: Options,
    client: PrometheusClient,
    sent: list[Query],
    *,
    window: Window | None,
    nodes: tuple[str, ...],
    slurm: Slurm,
    figs: Mapping[str, list[Sample]],
    notes: tuple[str, ...],
    cluster: str | None = None,
) -> JobReport:
    report = JobReport(
        job_id=opts.job_id,
        cluster=cluster or opts.cluster,
        as_of=opts.as_of,
        prometheus=client.base,
        window=window,
        nodes=nodes,
        slurm=slurm,
        node_usage=parse_nodes(figs, nodes) if window else (),
        gpus=parse_gpus(figs),
        lustre=parse_lustre(figs),
        checkpoints=parse_checkpoints(figs),
        alerts=parse_alerts(figs),
        queries=tuple(sent),
        notes=notes,
    )
    return dataclasses.replace(report, findings=findings(report))


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
