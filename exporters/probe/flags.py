"""The probe's command line (Prometheus-exporter style; every flag may come from `--config.file`)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

from hpcobs.exporters.probe.model import DEFAULT_SIZES, OPS
from hpcobs.exporters.probe.timedloop import TIMER_CHOICES
from hpcobs.exporters.probe.topology import IDENTITY_MODES
from hpcobs.exporters.runtime.cli import (
    VersionAction,
    add_logging_flags,
    int_at_least,
    parse_args,
    parse_duration,
)

PROGRAM = "hpcobs-mpi-probe"
MAX_SIZE = 1 << 30

_SIZE = re.compile(r"^(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """`8`, `8B`, `64KiB`, `4MiB`, `1M` (binary units) → bytes; a positive multiple of 8."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r} (e.g. 8, 64KiB, 4MiB)")
    unit = (match.group(2) or "").lower()[:1]
    value = int(match.group(1)) * _UNITS[unit]
    if value <= 0 or value % 8:
        raise ValueError(f"size {text!r} must be a positive multiple of 8 bytes")
    if value > MAX_SIZE:
        raise ValueError(f"size {text!r} is larger than 1 GiB")
    return value


def size_list(text: str) -> tuple[int, ...]:
    try:
        sizes = sorted({parse_size(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return tuple(sizes)


def op_list(text: str) -> tuple[str, ...]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in OPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown op(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(OPS)}"
        )
    return tuple(op for op in OPS if op in names)  # canonical order, no duplicates


def _positive_float(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"must be a non-negative ratio, not {text!r}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", key):
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, not {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Run under mpirun/srun: time MPI collectives and pairwise point-to-point links, "
            "compare with a baseline, and push the results (Pushgateway, node_exporter "
            "textfile, OTLP, JSON). Exit 0 healthy, 1 regression, 2 the probe failed."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("--config.file", dest="config_file", metavar="FILE")

    m = parser.add_argument_group("measurement")
    m.add_argument(
        "--budget-seconds",
        dest="budget_seconds",
        type=_positive_float,
        default=10.0,
        metavar="N",
        help="time budget of the measurement (default 10)",
    )
    m.add_argument(
        "--timeout",
        dest="timeout",
        type=_positive_float,
        default=120.0,
        metavar="N",
        help="abort every rank (MPI_Abort, exit 2) when the probe has "
        "not finished measuring N seconds after it started (default 120)",
    )
    m.add_argument(
        "--sizes",
        type=size_list,
        default=DEFAULT_SIZES,
        metavar="LIST",
        help="message sizes, comma-separated, multiples of 8 (e.g. 8,64KiB,4MiB; "
        "default 8 B to 4 MiB in steps of 4)",
    )
    m.add_argument(
        "--ops",
        type=op_list,
        default=OPS,
        metavar="LIST",
        help=f"collectives to time (default {','.join(OPS)})",
    )
    m.add_argument(
        "--iterations.min",
        dest="iterations_min",
        type=int_at_least(1),
        default=5,
        metavar="N",
        help="timed iterations per cell at least (default 5)",
    )
    m.add_argument(
        "--iterations.max",
        dest="iterations_max",
        type=int_at_least(1),
        default=10000,
        metavar="N",
        help="timed iterations per cell at most (default 10000)",
    )
    m.add_argument(
        "--pairwise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure point-to-point latency and bandwidth between every pair of "
        "nodes (default on)",
    )
    m.add_argument(
        "--pairwise.bytes",
        dest="pairwise_bytes",
        type=parse_size,
        default=1 << 20,
        metavar="SIZE",
        help="message size of the bandwidth ping-pong (default 1MiB)",
    )
    m.add_argument(
        "--pairwise.top-k",
        dest="pairwise_top_k",
        type=int_at_least(0),
        default=5,
        metavar="K",
        help="export the K slowest pairs (default 5)",
    )
    m.add_argument(
        "--node-identity",
        dest="node_identity",
        choices=IDENTITY_MODES,
        default="auto",
        help="what a node is in the pairwise phase: a host, a rank, "
        "or auto (hosts when ranks span several, else ranks; default auto)",
    )

    m.add_argument(
        "--timer",
        choices=TIMER_CHOICES,
        default="auto",
        help="timing loop: compiled (the C extension calls MPI, no interpreter between "
        "calls), python (perf_counter around each mpi4py call), or auto (compiled where "
        "built on every rank, else python; default auto)",
    )
    m.add_argument(
        "--mpi.thread-level",
        dest="mpi_thread_level",
        choices=("single", "funneled", "serialized", "multiple"),
        default="single",
        help="MPI thread level to request (default single: only the main thread "
        "communicates; 'multiple' makes the watchdog's last-resort MPI_Abort from its own "
        "thread standard-conforming, at about 0.1 µs per small collective)",
    )

    v = parser.add_argument_group("baseline and verdict")
    v.add_argument("--baseline", metavar="FILE", help="compare with this baseline")
    v.add_argument(
        "--write-baseline",
        dest="write_baseline",
        metavar="FILE",
        help="store this run's figures as a baseline (after comparing)",
    )
    v.add_argument(
        "--tolerance",
        type=_ratio,
        default=0.3,
        metavar="RATIO",
        help="a figure regresses when it exceeds baseline × (1 + RATIO) plus "
        "--tolerance.min-seconds (default 0.3)",
    )
    v.add_argument(
        "--tolerance.min-seconds",
        dest="tolerance_min_seconds",
        type=_ratio,
        default=1e-6,
        metavar="SECONDS",
        help="absolute slack added to every limit (default 1e-6)",
    )

    o = parser.add_argument_group("outputs (all optional, combinable)")
    o.add_argument("--json", action="store_true", help="print one JSON document on rank 0's stdout")
    o.add_argument(
        "--textfile-dir",
        dest="textfile_dir",
        metavar="DIR",
        help="write DIR/hpcobs_mpi_probe.prom atomically (node_exporter textfile)",
    )
    o.add_argument("--pushgateway", metavar="URL", help="push to this Pushgateway")
    o.add_argument(
        "--push.job",
        dest="push_job",
        default="hpcobs_mpi_probe",
        metavar="NAME",
        help="job label of the pushed group (default hpcobs_mpi_probe)",
    )
    o.add_argument(
        "--push.cluster",
        "--cluster",
        dest="cluster",
        default=os.environ.get("SLURM_CLUSTER_NAME") or "default",
        metavar="NAME",
        help="cluster grouping label (default $SLURM_CLUSTER_NAME or 'default')",
    )
    o.add_argument(
        "--push.partition",
        "--partition",
        dest="partition",
        default=os.environ.get("SLURM_JOB_PARTITION") or "none",
        metavar="NAME",
        help="partition grouping label (default $SLURM_JOB_PARTITION or 'none')",
    )
    o.add_argument(
        "--push.grouping-key",
        dest="grouping_key",
        type=_key_value,
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="extra grouping label, repeatable (e.g. instance=$(hostname) for "
        "node-local runs that push)",
    )
    o.add_argument(
        "--push.retries",
        dest="push_retries",
        type=int_at_least(0),
        default=2,
        metavar="N",
        help="retries after a failed push or OTLP export (default 2)",
    )
    o.add_argument(
        "--push.timeout",
        dest="push_timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="timeout of one push attempt (default 5)",
    )
    o.add_argument(
        "--push.fallback-dir",
        dest="fallback_dir",
        metavar="DIR",
        help="where the textfile goes when a push fails (default: --textfile-dir, "
        "else /var/lib/hpcobs/textfile if writable, else the current "
        "directory)",
    )
    o.add_argument(
        "--otlp.endpoint",
        dest="otlp_endpoint",
        metavar="URL",
        help="export OTLP metrics over HTTP/protobuf (base URL such as "
        "http://collector:4318; /v1/metrics is appended unless a path is given)",
    )

    add_logging_flags(parser)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check flags; exits 2 with a message on errors (argparse's way)."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.iterations_max < args.iterations_min:
        parser.error("--iterations.max must be at least --iterations.min")
    if args.timeout <= args.budget_seconds:
        parser.error(
            f"--timeout ({args.timeout:g}) must be larger than --budget-seconds "
            f"({args.budget_seconds:g}): the watchdog would abort a healthy run"
        )
    return args
