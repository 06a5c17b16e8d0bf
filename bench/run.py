"""`make bench`: run every bench/bench_*.py (or those named on the command line) in turn.

Each benchmark module has `main() -> None` and prints its own figures. Targets live here,
never in timed unit tests.

The latency-sensitive benchmarks run first and every benchmark starts after a pause: on the
shared 2-core VMs this runs on, a few seconds of full load (the gpu, lustre and slurm
benchmarks) leave the next tens of seconds measurably slower (an 8-byte MPI allreduce read
0.52 µs instead of 0.24 µs right after the lustre benchmark), which would be charged to
whichever benchmark came next. `HPCOBS_BENCH_PAUSE` sets the pause (seconds, default 15).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# latency-sensitive first, the long full-load ones last; others (new ones) in between
FIRST = ("probe", "noise", "runtime", "rdma", "node")
LAST = ("slo", "gpu", "lustre", "slurm")


def ordered(paths: list[Path]) -> list[Path]:
    def key(path: Path) -> tuple[int, int, str]:
        name = path.stem.removeprefix("bench_")
        if name in FIRST:
            return (0, FIRST.index(name), name)
        if name in LAST:
            return (2, LAST.index(name), name)
        return (1, 0, name)

    return sorted(paths, key=key)


def main(argv: list[str]) -> int:
    wanted = set(argv)
    pause = float(os.environ.get("HPCOBS_BENCH_PAUSE", "15"))
    failures = 0
    chosen = [
        p
        for p in ordered(list(HERE.glob("bench_*.py")))
        if not wanted or p.stem.removeprefix("bench_") in wanted
    ]
    for number, path in enumerate(chosen):
        name = path.stem.removeprefix("bench_")
        if number and pause > 0:
            print(f"\n(pausing {pause:g} s so the last benchmark's load does not count here)")
            time.sleep(pause)
        print(f"\n=== bench {name} ===", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        started = time.monotonic()
        try:
            spec.loader.exec_module(module)
            module.main()
        except Exception as exc:  # report and go on with the other benchmarks
            failures += 1
            print(f"bench {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"(bench {name} took {time.monotonic() - started:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main(sys.argv[1:]))
