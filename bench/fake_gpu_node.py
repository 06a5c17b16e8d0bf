"""hpcobs-node-exporter with N fake GPUs at the pynvml boundary, as a real process.

    python bench/fake_gpu_node.py N [node exporter flags...]

The fake (tests/fakes/pynvml_fake.py, as the goldens and `make demo` use it) stands in for
`pynvml` in `sys.modules` before the daemon starts; everything else is the daemon's own code.
Not a benchmark itself (bench/run.py runs only bench_*.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main(argv: list[str]) -> int:
    gpus = int(argv[0])
    sys.path.insert(0, str(TESTS))
    from fakes.pynvml_fake import FakeNvml, fleet

    sys.modules["pynvml"] = FakeNvml(fleet(gpus)).module  # type: ignore[assignment]
    from hpcobs.exporters.node import main as node_main

    return node_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
