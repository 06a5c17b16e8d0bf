"""`hpcobs-mpi-probe`: an mpi4py job that times MPI collectives and pairwise links, then pushes.

Run it under `mpirun`/`srun` (see docs/probe.md). Module map:

- `flags`: the command line.
- `measure`: the timed part on every rank (calibration, collectives, pairwise phase).
- `stats`, `topology`, `verdict`: pure logic (statistics, node identity and round-robin
  schedule, baselines and exit codes), property-tested.
- `model`: the run's result; `metrics`: its metric families; `report`: summary and JSON.
- `outputs`: Pushgateway, textfile, OTLP, with retries and the textfile fallback.
- `watchdog`: `MPI_Abort` after `--timeout`.
- `app`: wires them together.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from hpcobs.exporters.probe.app import main as run

    return run(argv)


__all__ = ["main"]
