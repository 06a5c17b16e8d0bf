"""`hpcobs-mpi-probe`: an mpi4py job measuring collective and pairwise latency, then pushing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hpcobs.exporters.runtime.cli import VersionAction

PROGRAM = "hpcobs-mpi-probe"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Run under mpirun/srun: measure MPI collective and pairwise latency, then push.",
    )
    parser.add_argument("--version", action=VersionAction)
    parser.parse_args(argv)
    print(f"{PROGRAM}: not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
