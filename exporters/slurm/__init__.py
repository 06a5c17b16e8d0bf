"""`hpcobs-slurm-exporter`: one per cluster (queue, partitions, nodes, job outcomes, queue wait).

    hpcobs-slurm-exporter --slurm.state-file=/var/lib/hpcobs/slurm.state \\
        --slurm.jobcomp-file=/var/log/slurm/jobcomp.log

A background cycle reads slurmctld (at most 3 calls per `--slurm.poll-interval`) through one
of two backends (`--slurm.backend`: pyslurm or the portable Slurm commands); scrapes are served
from the last cycle's result. See docs/slurm-exporter.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hpcobs.exporters.runtime.app import run_exporter
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, Services

PROGRAM = "hpcobs-slurm-exporter"
DEFAULT_LISTEN = ":9947"


def _factory(args: argparse.Namespace, services: Services) -> Collector:
    from hpcobs.exporters.slurm.collector import build_collector
    from hpcobs.exporters.slurm.options import SlurmOptions

    return build_collector(SlurmOptions.from_args(args))


def _add_arguments(group: argparse._ArgumentGroup) -> None:
    from hpcobs.exporters.slurm.options import add_arguments

    add_arguments(group)


SPEC = CollectorSpec(
    name="slurm",
    help="Slurm queue, nodes, partitions, licenses, scheduler statistics and job outcomes",
    factory=_factory,
    add_arguments=_add_arguments,
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_exporter(
        PROGRAM,
        "Cluster-wide Slurm exporter: queue, partitions, nodes, job outcomes, queue wait.",
        DEFAULT_LISTEN,
        [SPEC],
        argv,
        paths=False,
    )


if __name__ == "__main__":
    raise SystemExit(main())
