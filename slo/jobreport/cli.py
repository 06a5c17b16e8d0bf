"""`hpcobs-job`: one job's story from Prometheus.

    hpcobs-job report JOBID --prometheus.url URL [--format text|json|html] [-o FILE]

Exit status: 0 with a report; 2 when the job is unknown to Prometheus (or older than its
retention), was seen in several clusters without --cluster, or the command line is wrong;
1 when Prometheus cannot answer.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hpcobs.exporters.runtime.cli import VersionAction, parse_duration, positive_duration
from hpcobs.slo.cli import _when, add_prometheus_flags, client_from_args, no_command
from hpcobs.slo.jobreport.gather import AmbiguousJob, Options, gather
from hpcobs.slo.jobreport.model import JobNotFound
from hpcobs.slo.jobreport.queries import JOB_ID
from hpcobs.slo.jobreport.render import render_html, render_json, render_text
from hpcobs.slo.promapi import QueryError

PROGRAM = "hpcobs-job"
COMMANDS = {"report": "one job's partition, state, run, CPU, memory, GPUs, Lustre, checkpoints"}
# flags of add_prometheus_flags that only the SLO evaluator uses
_SLO_ONLY = {"query_concurrency", "settle"}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        return no_command(
            PROGRAM, "Reports on Slurm jobs from the metrics in Prometheus.", COMMANDS, args
        )
    return report_main(args[1:])


def _job_id(text: str) -> str:
    if not JOB_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid job id {text!r} (letters, digits and _ . : @ + -, up to 128)"
        )
    return text


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROGRAM} report",
        description="One job's story from Prometheus: partition, state and cause, queue wait, "
        "run time; per node CPU time and peak memory; GPUs held with utilisation and memory; "
        "Lustre I/O; checkpoints; alerts on its nodes; efficiency findings. "
        "See docs/job-report.md for where each figure comes from.",
    )
    p.add_argument("job_id", type=_job_id, metavar="JOBID", help="Slurm job id")
    add_prometheus_flags(p, required=True)
    for action in p._actions:
        if action.dest in _SLO_ONLY:
            action.help = argparse.SUPPRESS
    p.add_argument("--format", choices=("text", "json", "html"), default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--time",
        type=_when,
        metavar="TIME",
        help="report as of this time (unix seconds or RFC 3339; default now)",
    )
    p.add_argument(
        "--cluster",
        metavar="NAME",
        help="the job's cluster (label cluster); needed when the job id was seen in several",
    )
    p.add_argument(
        "--search.window",
        dest="search",
        type=positive_duration,
        default=90 * 86400.0,
        metavar="DURATION",
        help="how far back to look for the job (default 90d)",
    )
    p.add_argument(
        "--slurm.match-window",
        dest="match",
        type=positive_duration,
        default=120.0,
        metavar="DURATION",
        help="a job start or end the Slurm exporter counted this close to the job's first or "
        "last sample is taken as the job's when it is the only one (default 2m: at least a "
        "scrape interval plus the exporter's poll interval)",
    )
    p.add_argument(
        "--settle",
        type=parse_duration,
        default=120.0,
        metavar="DURATION",
        help="how long after the job's last sample to read figures reported late: Lustre "
        "job_stats, checkpoints, the failed-job record (default 2m)",
    )
    p.add_argument("--version", action=VersionAction)
    return p


def report_main(argv: Sequence[str]) -> int:
    args = report_parser().parse_args(argv)
    try:
        client = client_from_args(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    opts = Options(
        job_id=args.job_id,
        as_of=args.time if args.time is not None else time.time(),
        cluster=args.cluster,
        search=args.search,
        match=args.match,
        settle=args.settle,
    )
    try:
        report = gather(client, opts)
    except (JobNotFound, AmbiguousJob) as exc:
        return _fail(str(exc), 2)
    except QueryError as exc:
        return _fail(str(exc), 1)
    if args.format == "json":
        text = render_json(report)
    elif args.format == "html":
        text = render_html(report)
    else:
        text = render_text(report)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            return _fail(f"cannot write {args.output}: {exc}", 1)
    else:
        sys.stdout.write(text)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"{PROGRAM}: {' '.join(message.split())}", file=sys.stderr)
    return code
