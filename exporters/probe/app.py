"""`hpcobs-mpi-probe`: flags → MPI + watchdog → measurement → verdict → outputs → exit code.

Every rank runs this. Rank 0 alone reads the baseline, judges, writes and pushes, and prints;
its exit code is the probe's (the launcher reports the highest one): 0 healthy,
1 regression, 2 the probe failed (bad flags or baseline, an output that could not be
delivered, an exception, or the watchdog's `MPI_Abort`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hpcobs.exporters.probe import flags, metrics
from hpcobs.exporters.probe.measure import EarlyExit, Hooks, Plan, Prober
from hpcobs.exporters.probe.model import ProbeResult
from hpcobs.exporters.probe.outputs import Delivery, Targets, deliver, write_textfile
from hpcobs.exporters.probe.report import json_document, summary_lines
from hpcobs.exporters.probe.timedloop import Timer, TimerUnavailable, choose
from hpcobs.exporters.probe.verdict import (
    EXIT_FAILED,
    Baseline,
    Verdict,
    compare,
    dumps_baseline,
    loads_baseline,
    make_baseline,
    no_baseline,
)
from hpcobs.exporters.probe.watchdog import Watchdog, process_age_seconds
from hpcobs.exporters.runtime.log import setup_logging

log = logging.getLogger("hpcobs.probe")


def _error(message: str) -> int:
    print(f"{flags.PROGRAM}: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def load_baseline(path: str) -> Baseline:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"--baseline {path}: {exc.strerror or exc}") from exc
    try:
        return loads_baseline(text)
    except ValueError as exc:
        raise ValueError(f"--baseline {path}: {exc}") from exc


def plan_from(args: argparse.Namespace) -> Plan:
    return Plan(
        ops=tuple(args.ops),
        sizes=tuple(args.sizes),
        budget_seconds=args.budget_seconds,
        iterations_min=args.iterations_min,
        iterations_max=args.iterations_max,
        pairwise=args.pairwise,
        pairwise_bytes=args.pairwise_bytes,
        pairwise_top_k=args.pairwise_top_k,
        identity_mode=args.node_identity,
    )


def targets_from(args: argparse.Namespace) -> Targets:
    grouping = {"cluster": args.cluster, "partition": args.partition, **dict(args.grouping_key)}
    return Targets(
        textfile_dir=args.textfile_dir,
        pushgateway=args.pushgateway,
        push_job=args.push_job,
        grouping_key=grouping,
        otlp_endpoint=args.otlp_endpoint,
        retries=args.push_retries,
        timeout=args.push_timeout,
        fallback_dir=args.fallback_dir,
    )


def finish(result: ProbeResult, baseline: Baseline | None, args: argparse.Namespace) -> int:
    """Rank 0: verdict, baseline, outputs, summary; returns the exit code."""
    if baseline is None:
        verdict: Verdict = no_baseline()
    else:
        verdict = compare(
            baseline,
            result.p50_by_cell(),
            result.ranks,
            len(result.nodes),
            args.tolerance,
            args.tolerance_min_seconds,
            timer=result.timer,
        )
    deliveries: list[Delivery] = []
    if args.write_baseline:
        new = make_baseline(
            result.p50_by_cell(),
            result.ranks,
            len(result.nodes),
            result.finished_unix,
            timer=result.timer,
        )
        target = Path(args.write_baseline)
        try:
            write_textfile(target.parent, dumps_baseline(new).encode(), name=target.name)
            deliveries.append(Delivery("baseline", True, str(target)))
        except OSError as exc:
            deliveries.append(Delivery("baseline", False, f"{target}: {exc}"))

    registry = metrics.registry(result, verdict, args.pairwise_top_k)
    deliveries += deliver(registry, targets_from(args))
    exit_code = max(verdict.exit_code, EXIT_FAILED if any(not d.ok for d in deliveries) else 0)

    summary = "\n".join(summary_lines(result, verdict, deliveries, exit_code)) + "\n"
    if args.json:
        sys.stdout.write(json_document(result, verdict, deliveries, exit_code) + "\n")
        sys.stdout.flush()
        sys.stderr.write(summary)
    else:
        sys.stdout.write(summary)
        sys.stdout.flush()
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = flags.parse(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        import mpi4py

        mpi4py.rc.thread_level = args.mpi_thread_level  # see watchdog.py
        from mpi4py import MPI
    except ImportError as exc:
        return _error(f"mpi4py is needed (pip install 'hpcobs[probe]'): {exc}")

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    watchdog = Watchdog(
        args.timeout,
        lambda: comm.Abort(EXIT_FAILED),
        already_elapsed=process_age_seconds(),
        rank=rank,
    ).start()

    # Read the baseline before measuring, so a bad one fails in seconds, on every rank.
    baseline: Baseline | None = None
    problem = ""
    if rank == 0 and args.baseline:
        try:
            baseline = load_baseline(args.baseline)
        except ValueError as exc:
            problem = str(exc)
    watchdog.enter("start-up")
    problem = comm.bcast(problem, root=0)
    timer: Timer | None = None
    if not problem:
        try:
            timer = choose(args.timer, MPI, comm)  # a collective: every rank decides the same
        except TimerUnavailable as exc:
            problem = f"--timer compiled: {exc}"
    if problem:
        watchdog.disarm()
        if rank == 0:
            _error(problem)
            if args.json:
                print(
                    json.dumps(
                        {"program": flags.PROGRAM, "exit_code": EXIT_FAILED, "error": problem}
                    )
                )
        return EXIT_FAILED

    started = time.monotonic()
    try:
        result = Prober(comm, plan_from(args), Hooks.from_env(os.environ), watchdog, timer).run()
    except EarlyExit as exc:  # test hook: leave without telling the other ranks
        watchdog.disarm()
        log.warning("leaving early", extra={"rank": rank, "reason": str(exc)})
        return 0
    except Exception:
        log.exception("measurement failed; aborting all ranks", extra={"rank": rank})
        comm.Abort(EXIT_FAILED)
        return EXIT_FAILED
    watchdog.disarm()
    log.debug("measured", extra={"rank": rank, "seconds": round(time.monotonic() - started, 3)})
    if result is None:
        return 0
    return finish(result, baseline, args)
