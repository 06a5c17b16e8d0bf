"""`hpcobs-slurm-exporter`: one per cluster (queue, partitions, nodes, job outcomes, queue wait)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hpcobs.exporters.runtime.app import build_parser
from hpcobs.exporters.runtime.cli import parse_args

PROGRAM = "hpcobs-slurm-exporter"
DEFAULT_LISTEN = ":9947"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        PROGRAM,
        "Cluster-wide Slurm exporter: queue, partitions, nodes, job outcomes, queue wait.",
        DEFAULT_LISTEN,
        [],
        paths=False,
    )
    parse_args(parser, argv)
    print(f"{PROGRAM}: not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
