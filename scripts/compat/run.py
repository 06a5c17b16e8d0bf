#!/usr/bin/env python3
"""The version matrix (issue 15): each component at each version, pass or fail, as a table.

    scripts/compat/run.py [--only COMPONENT,...] [--suites SUITE,...] [--json FILE] [--jobs N]

`make test-compat` runs it; `.ci/run` runs it after `make test` and fails with it. Rows:

- prometheus/promtool and alertmanager/amtool of Debian bookworm (the host's packages),
  trixie and sid (their .debs unpacked by scripts/compat/prom-debs.sh outside the clone, kept
  for the next run): the tests below run with that suite's bin directory first on PATH, where
  the harness (tests/harness/servers.py) finds the binaries;
- e2e: tests/real/test_e2e.py once per suite, Prometheus and Alertmanager of that suite
  together (with the host's Slurm);
- slurm: `scripts/compat/slurm.sh SUITE` (host, trixie, sid) builds its Slurm, prints
  `version: X` and runs the real-Slurm tests;
- victoriametrics/vmalert: Debian's victoria-metrics of bookworm (the host's), trixie and sid
  (unpacked by scripts/compat/vm-debs.sh, like prom-debs.sh), its bin directory first on PATH:
  the VictoriaMetrics rule-engine tests (vmalert `-replay` and live against the report) and
  `vmalert -dryRun` on every generated rule file. Debian's builds report no version
  (`-version` prints an empty line), so the version column shows the .deb's, marked so;
- each function in ROWS adds rows: add one for another component.

Each row's version column is what the binaries report (`--version`), not what was asked for.
The table goes to stdout, a JSON copy to build/compat.json, each row's output to
build/compat/<component>-<suite>.log. Exit status 1 if any row failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROM_SUITES = ("bookworm", "trixie", "sid")  # bookworm: the host's own packages
ROW_TIMEOUT = 1200.0  # seconds; a hung row fails instead of hanging CI
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

# What each Prometheus-ecosystem row runs (pytest paths, relative to the repository).
PROMETHEUS_TESTS = (
    "tests/unit/test_alerts_rules.py",  # promtool check rules + test rules on alerts/
    "tests/unit/test_slo_rules.py",  # ... on the generated SLO rules and their golden tests
    "tests/unit/test_dashboards.py",  # promtool on every dashboard query
    "tests/real/test_servers_harness.py",  # the harness itself
    "tests/real/test_runtime_prometheus.py",
    "tests/real/test_lustre_prometheus.py",
    # (the file's other tests run the daemon against a fake Prometheus)
    "tests/real/test_slo_serve.py::test_daemon_matches_independent_computation_and_survives_prometheus_death",
)
ALERTMANAGER_TESTS = (
    "tests/unit/test_alertmanager_config.py",  # amtool check-config, routes, inhibitions
    "tests/real/test_alertmanager_inhibition.py",
)
E2E_TESTS = ("tests/real/test_e2e.py",)
VICTORIAMETRICS_TESTS = (
    "tests/real/test_slo_victoriametrics.py",
    "tests/unit/test_slo_rules_engine.py::test_vmalert_accepts_them",
)
VM_BINARIES = ("victoria-metrics", "vmalert")


@dataclass
class Row:
    """One line of the table."""

    component: str
    suite: str
    versions: dict[str, str] = field(default_factory=dict)
    """Binary → the version it reports."""
    ok: bool = False
    seconds: float = 0.0
    summary: str = ""
    """pytest's last line, or why the row failed."""
    log: str = ""
    ran: list[str] = field(default_factory=list)
    """What ran (test files, commands)."""


@dataclass(frozen=True)
class Check:
    """A row still to run: `run(log_path)` fills in the row. `alone`: the row has timing-
    sensitive tests (an MPI latency baseline, Slurm's timers) and runs with no other row."""

    component: str
    suite: str
    run: Callable[[Path], Row]
    alone: bool = False


# -- the binaries of a suite -----------------------------------------------------------------


@dataclass
class PromSuite:
    suite: str
    bin: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)
    error: str = ""


def fetch_prom_suite(suite: str, log: Path) -> PromSuite:
    """Run prom-debs.sh SUITE: the bin directory and the versions its binaries report."""
    out = PromSuite(suite)
    with log.open("w") as f:
        try:
            proc = subprocess.run(
                [str(HERE / "prom-debs.sh"), suite],
                stdout=subprocess.PIPE,
                stderr=f,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.error = f"prom-debs.sh {suite}: {exc}"
            return out
        f.write(proc.stdout)
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(": ")
        if key == "bin":
            out.bin = Path(value)
        elif value:
            out.versions[key] = value
    if proc.returncode != 0 or out.bin is None:
        out.error = f"prom-debs.sh {suite} exited with {proc.returncode}: {tail(log, 3)}"
    return out


# -- running tests ---------------------------------------------------------------------------


def slug(component: str) -> str:
    """ "e2e paging" -> "e2e-paging", "prometheus/promtool" -> "prometheus"."""
    return re.sub(r"[^a-z0-9]+", "-", component.split("/")[0].lower()).strip("-")


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").rstrip("\n").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])


def pytest_row(
    component: str,
    suite: str,
    prom: PromSuite,
    tests: Sequence[str],
    versions: Sequence[str],
    *,
    alone: bool = False,
) -> Check:
    """A row that runs `tests` with the suite's binaries first on PATH."""

    def run(log: Path) -> Row:
        row = Row(component, suite, {k: prom.versions.get(k, "?") for k in versions})
        row.ran = list(tests)
        if prom.bin is None:
            row.summary = prom.error
            return row
        env = {**os.environ, "PATH": f"{prom.bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        for name in versions:  # the tests must find this suite's binaries
            found = shutil.which(name, path=env["PATH"])
            if found is None or Path(found).parent != prom.bin:
                row.summary = f"{name} on PATH is {found}, not from {prom.bin}"
                return row
        # (no spaces: Slurm's configuration takes paths under it unquoted)
        basetemp = Path(tempfile.mkdtemp(prefix=f"hpcobs-compat-{slug(component)}-{suite}-"))
        argv = [
            PYTHON,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={basetemp / 'pytest'}",
            *tests,
        ]
        try:
            row.ok, row.summary = run_logged(argv, log, env)
        finally:
            shutil.rmtree(basetemp, ignore_errors=True)
        return row

    return Check(component, suite, run, alone)


def run_logged(argv: Sequence[str], log: Path, env: dict[str, str]) -> tuple[bool, str]:
    """Run `argv` in the repository with its output in `log`: (exit status 0, last line)."""
    with log.open("w") as f:
        f.write(f"# {' '.join(argv)}\n")
        f.flush()
        try:
            proc = subprocess.run(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=ROW_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, f"timed out after {ROW_TIMEOUT:g} s"
    last = tail(log, 1).strip("= ")
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {last}"
    return True, last


# -- the rows --------------------------------------------------------------------------------


def prometheus_rows(proms: dict[str, PromSuite]) -> list[Check]:
    return [
        pytest_row("prometheus/promtool", s, p, PROMETHEUS_TESTS, ("prometheus", "promtool"))
        for s, p in proms.items()
    ]


def alertmanager_rows(proms: dict[str, PromSuite]) -> list[Check]:
    return [
        pytest_row("alertmanager/amtool", s, p, ALERTMANAGER_TESTS, ("alertmanager", "amtool"))
        for s, p in proms.items()
    ]


def e2e_rows(proms: dict[str, PromSuite]) -> list[Check]:
    return [
        pytest_row("e2e paging", s, p, E2E_TESTS, ("prometheus", "alertmanager"), alone=True)
        for s, p in proms.items()
    ]


def slurm_rows(suites: Sequence[str], script: Path = HERE / "slurm.sh") -> list[Check]:
    """`scripts/compat/slurm.sh SUITE` (host for bookworm, trixie, sid): prints `version: X`
    on stdout, then runs the real-Slurm tests against that Slurm; non-zero exit status on
    failure."""

    def row_for(suite: str) -> Check:
        def run(log: Path) -> Row:
            row = Row("slurm", suite, ran=[f"{script.name} {suite}"])
            if not os.access(script, os.X_OK):
                row.summary = f"{script} is missing or not executable"
                return row
            row.ok, row.summary = run_logged([str(script), suite], log, dict(os.environ))
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("version: "):
                    row.versions["slurm"] = line.removeprefix("version: ").strip()
                    break
            if "slurm" not in row.versions:
                row.ok = False
                row.summary = "no `version:` line; " + row.summary
            return row

        return Check("slurm", suite, run, alone=True)

    return [row_for("host" if s == "bookworm" else s) for s in suites]


def fetch_vm_suite(suite: str, log: Path, script: Path = HERE / "vm-debs.sh") -> PromSuite:
    """Run vm-debs.sh SUITE: its bin directory and the versions of victoria-metrics and
    vmalert; where a binary reports none (Debian's builds), the .deb's version, marked
    "(.deb)"."""
    out = PromSuite(suite)
    with log.open("w") as f:
        try:
            proc = subprocess.run(
                [str(script), suite],
                stdout=subprocess.PIPE,
                stderr=f,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.error = f"{script.name} {suite}: {exc}"
            return out
        f.write(proc.stdout)
    fields = dict(line.partition(": ")[::2] for line in proc.stdout.splitlines())
    if fields.get("bin"):
        out.bin = Path(fields["bin"])
    package = fields.get("package", "")
    for name in VM_BINARIES:
        reported = fields.get(name, "")
        if reported and reported != "none reported":
            out.versions[name] = reported
        elif package:
            out.versions[name] = f"{package} (.deb)"
    if proc.returncode != 0 or out.bin is None:
        out.error = f"{script.name} {suite} exited with {proc.returncode}: {tail(log, 3)}"
    return out


def victoriametrics_rows(suites: Sequence[str], script: Path = HERE / "vm-debs.sh") -> list[Check]:
    """VictoriaMetrics and vmalert of each suite (Debian's victoria-metrics: 1.79 in bookworm,
    1.112 in trixie, 1.145 in sid), fetched when the row runs. The rows run alone: the
    replay's pauses and the live evaluations are timed."""

    def row_for(suite: str) -> Check:
        def run(log: Path) -> Row:
            vm = fetch_vm_suite(suite, log.with_name(f"fetch-vm-{suite}.log"), script)
            check = pytest_row(
                "victoriametrics/vmalert", suite, vm, VICTORIAMETRICS_TESTS, VM_BINARIES
            )
            return check.run(log)

        return Check("victoriametrics/vmalert", suite, run, alone=True)

    return [row_for(s) for s in suites]


@dataclass(frozen=True)
class RowSet:
    """A component's rows: `make(proms, suites)`, given the fetched Prometheus suites (when
    `needs_prom`) and the Debian suites asked for (bookworm, trixie, sid)."""

    name: str
    needs_prom: bool
    make: Callable[[dict[str, PromSuite], Sequence[str]], list[Check]]


ROWS: list[RowSet] = [
    RowSet("prometheus", True, lambda proms, _suites: prometheus_rows(proms)),
    RowSet("alertmanager", True, lambda proms, _suites: alertmanager_rows(proms)),
    RowSet("e2e", True, lambda proms, _suites: e2e_rows(proms)),
    RowSet("slurm", False, lambda _proms, suites: slurm_rows(suites)),
    RowSet("victoriametrics", False, lambda _proms, suites: victoriametrics_rows(suites)),
]


# -- output ----------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    head = ("component", "suite", "version (as reported)", "result", "seconds", "detail")
    lines = [
        (
            r.component,
            r.suite,
            ", ".join(f"{k} {v}" for k, v in r.versions.items()) or "-",
            "PASS" if r.ok else "FAIL",
            f"{r.seconds:.0f}",
            r.summary,
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    out = []
    for cells in [head, *lines]:
        out.append(
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1]
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated row sets: " + ",".join(r.name for r in ROWS) + " (default: all)",
    )
    ap.add_argument(
        "--suites",
        default="",
        help="comma-separated suites (bookworm or host, trixie, sid; default: all)",
    )
    ap.add_argument("--json", type=Path, default=REPO / "build" / "compat.json")
    ap.add_argument("--logs", type=Path, default=REPO / "build" / "compat")
    ap.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("HPCOBS_COMPAT_JOBS", "1")),
        help="rows run at once, except those that run alone (default 1, or "
        "$HPCOBS_COMPAT_JOBS; on 2 cores 2 is no faster: promtool's tests are CPU-bound)",
    )
    args = ap.parse_args(argv)
    only = {x for x in args.only.split(",") if x}
    unknown = only - {r.name for r in ROWS}
    if unknown:
        ap.error(f"unknown row sets: {sorted(unknown)}")
    # bookworm is the host: the same suite for either name
    suites = {"bookworm" if x == "host" else x for x in args.suites.split(",") if x}
    unknown = suites - set(PROM_SUITES)
    if unknown:
        ap.error(f"unknown suites: {sorted(unknown)}")
    wanted = [r for r in ROWS if not only or r.name in only]
    debian = [s for s in PROM_SUITES if not suites or s in suites]
    args.logs.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    proms: dict[str, PromSuite] = {}
    if any(r.needs_prom for r in wanted):
        for s in debian:
            t = time.monotonic()
            proms[s] = fetch_prom_suite(s, args.logs / f"fetch-{s}.log")
            print(
                f"compat: {s}: {proms[s].error or proms[s].versions} "
                f"({time.monotonic() - t:.0f} s)",
                flush=True,
            )
    checks = [c for r in wanted for c in r.make(proms, debian)]

    def execute(check: Check) -> Row:
        log = args.logs / f"{slug(check.component)}-{check.suite}.log"
        t = time.monotonic()
        try:
            row = check.run(log)
        except Exception as exc:  # a broken row must not hide the others
            row = Row(check.component, check.suite, summary=f"{type(exc).__name__}: {exc}")
        row.seconds = time.monotonic() - t
        row.log = str(log.relative_to(REPO)) if log.is_relative_to(REPO) else str(log)
        print(
            f"compat: {row.component} {row.suite}: {'PASS' if row.ok else 'FAIL'} "
            f"({row.seconds:.0f} s) {row.summary}",
            flush=True,
        )
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        parallel = [c for c in checks if not c.alone]
        shared = dict(zip(parallel, pool.map(execute, parallel), strict=True))
    results = {**shared, **{c: execute(c) for c in checks if c.alone}}
    rows = [results[c] for c in checks]  # in the order of ROWS
    wall = time.monotonic() - started

    print()
    print(table(rows))
    failed = [r for r in rows if not r.ok]
    print(
        f"\n{len(rows) - len(failed)} of {len(rows)} rows passed in {wall:.0f} s"
        + ("; logs: " + ", ".join(r.log for r in failed if r.log) if failed else "")
    )
    doc = {
        "measured": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": f"{platform.node()} {platform.platform()}, {os.cpu_count()} CPUs",
        "seconds": round(wall, 1),
        "ok": not failed,
        "rows": [dataclasses.asdict(r) | {"seconds": round(r.seconds, 1)} for r in rows],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
