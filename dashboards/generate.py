#!/usr/bin/env python3
"""Generate the hpcobs Grafana dashboards (dashboards/*.json) from code.

    python dashboards/generate.py            # write dashboards/hpcobs-*.json
    python dashboards/generate.py --check    # exit 1 if a committed file is stale

The dashboards are built with grafana-foundation-sdk (the `dev` extra), one module per
dashboard (board_*.py); the price table of the cost panels is dashboards/prices.yaml.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from a test rather than run as a script
    sys.path.insert(0, str(HERE))

import board_debug  # noqa: E402
import board_executive  # noqa: E402
import board_oncall  # noqa: E402
from panels import render, to_json  # noqa: E402
from prices import load_prices  # noqa: E402

PRICES = HERE / "prices.yaml"


def dashboards(prices_path: Path = PRICES) -> dict[str, dict[str, Any]]:
    """File name → dashboard JSON document, for every hpcobs dashboard."""
    prices = load_prices(prices_path)
    boards = {
        "hpcobs-executive.json": board_executive.build(prices),
        "hpcobs-oncall.json": board_oncall.build(),
        "hpcobs-debug.json": board_debug.build(),
    }
    return {name: render(board) for name, board in boards.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file is stale")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: here)")
    args = parser.parse_args(argv)
    stale = []
    for name, doc in dashboards().items():
        path = args.out / name
        text = to_json(doc)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run `python dashboards/generate.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
