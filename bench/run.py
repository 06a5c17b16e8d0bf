"""`make bench`: run every bench/bench_*.py (or those named on the command line) in turn.

Each benchmark module has `main() -> None` and prints its own figures. Targets live here,
never in timed unit tests.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = set(argv)
    failures = 0
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if wanted and name not in wanted:
            continue
        print(f"\n=== bench {name} ===", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
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
