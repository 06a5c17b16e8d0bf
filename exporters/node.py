"""`hpcobs-node-exporter`: the per-node daemon (collectors gpu, rdma, lustre, jobs, textfile)."""

from __future__ import annotations

from collections.abc import Sequence

from hpcobs.exporters.collectors import discover
from hpcobs.exporters.runtime.app import run_exporter

PROGRAM = "hpcobs-node-exporter"
DEFAULT_LISTEN = ":9946"


def main(argv: Sequence[str] | None = None) -> int:
    return run_exporter(
        PROGRAM,
        "Per-node exporter for HPC nodes: GPUs (NVML), RDMA ports, Lustre, per-job attribution, "
        "textfiles.",
        DEFAULT_LISTEN,
        discover(),
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
