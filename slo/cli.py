"""`hpcobs-slo`: validate SLO specs, generate Prometheus rules, serve SLIs, report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hpcobs.exporters.runtime.cli import VersionAction

PROGRAM = "hpcobs-slo"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="SLO specs → Prometheus rules, SLI daemon, reports."
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="check SLO spec files").add_argument("spec", nargs="+")
    rules = sub.add_parser("rules", help="write a Prometheus rule file")
    rules.add_argument("spec", nargs="+")
    rules.add_argument("-o", "--output", required=True)
    sub.add_parser("serve", help="run the SLI daemon (:9948)").add_argument("spec", nargs="*")
    sub.add_parser("report", help="print an SLO report").add_argument("spec", nargs="*")
    parser.parse_args(argv)
    print(f"{PROGRAM}: not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
