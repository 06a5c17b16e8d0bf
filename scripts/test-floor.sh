#!/usr/bin/env bash
# Lowest-versions run: the unit tests against every dependency in pyproject.toml installed at
# exactly its declared floor, so that the floors there stay true.
#
# The pins are derived from pyproject.toml on every run (never kept by hand): the runtime
# dependencies and every extra except those in SKIP_EXTRAS, each `>=X` (or `~=X`) pinned to
# `==X`, an `==X` kept as it is. A dependency with no floor stops the run, except a typing
# stub (`types-*`), which follows upstream and floats. Transitive dependencies float. The
# venv (build/floor-venv, outside git) is rebuilt from scratch when the pins, the build
# inputs or this script change, and reused otherwise; the project itself is installed
# editable with --no-deps (so the tests see the working tree; its optional compiled probe
# loop is built in place, as scripts/bootstrap.sh's editable install does).
#
# Usage: scripts/test-floor.sh [pytest args...]     (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=build/floor-venv
# pyslurm builds only against a matching libslurm and is exercised by the real tests alone.
SKIP_EXTRAS=slurm

log() { printf 'test-floor: %s\n' "$*" >&2; }

mkdir -p build
pins=build/floor-requirements.txt
SKIP_EXTRAS=$SKIP_EXTRAS "$PY" - >"$pins.new" <<'EOF'
import os
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    pyproject = tomllib.load(f)
project = pyproject["project"]
skip = set(os.environ["SKIP_EXTRAS"].split())
requirements = list(project.get("dependencies", []))
for extra, deps in sorted(project.get("optional-dependencies", {}).items()):
    if extra not in skip:
        requirements += deps

NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[^\]]*\])?\s*(.*)")
CLAUSE = re.compile(r"(===|==|~=|>=|<=|!=|>|<)\s*(\S+)")
errors, pins = [], []
for requirement in requirements:
    spec, _, marker = requirement.partition(";")
    match = NAME.fullmatch(spec.strip())
    if not match or "@" in spec:
        errors.append(f"{requirement!r}: not a plain name[extras] + version specifiers")
        continue
    name, extras, specifiers = match.group(1), match.group(2) or "", match.group(3).strip()
    clauses = [c.strip() for c in specifiers.strip("()").split(",") if c.strip()]
    floor = None
    for clause in clauses:
        parsed = CLAUSE.fullmatch(clause)
        if not parsed:
            errors.append(f"{requirement!r}: cannot read {clause!r}")
            break
        op, version = parsed.groups()
        if op in ("==", "===", ">=", "~=") and not version.endswith(".*"):
            floor = version
    if floor is None:
        if not clauses and name.lower().startswith("types-"):
            pins.append(requirement.strip())  # a typing stub: follows upstream, floats
            continue
        errors.append(f"{requirement!r}: no floor (want '>=X' or '==X')")
        continue
    pin = f"{name}{extras}=={floor}"
    pins.append(f"{pin}; {marker.strip()}" if marker.strip() else pin)
if errors:
    sys.exit("test-floor: pyproject.toml:\n  " + "\n  ".join(errors))
build = pyproject.get("build-system", {}).get("requires", [])
print("# derived from pyproject.toml by scripts/test-floor.sh; do not edit")
print("\n".join(pins))
print("# build-system (floating, for the --no-build-isolation install of the project)")
print("\n".join(f"# build: {b}" for b in build))
EOF
mv "$pins.new" "$pins"

stamp=$VENV/.hpcobs-floor
want=$(cat "$pins" setup.py exporters/probe/_timedloop.c "$0" | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "building $VENV with $($PY --version) and the floors:"
    grep -v '^#' "$pins" | sed 's/^/    /' >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    mapfile -t build_requires < <(sed -n 's/^# build: //p' "$pins")
    "$VENV/bin/python" -m pip install -q "${build_requires[@]}"
    # Floors without a wheel for this Python build from source (mpi4py 4.0, against the
    # system MPI): its generated MPI.c takes gcc's -O3 -g (Python's default flags) most of
    # an hour and over 20 GB; unoptimized, a few minutes. pip caches the built wheels.
    CFLAGS=${FLOOR_CFLAGS:--O0 -g0} "$VENV/bin/python" -m pip install -q -r "$pins"
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    "$VENV/bin/python" -m pip check
    echo "$want" >"$stamp"
else
    log "reusing $VENV (pins unchanged)"
fi

# Every pin really is what is installed (pip would have said otherwise; this says it plainly).
"$VENV/bin/python" - "$pins" <<'EOF'
import re
import sys
from importlib.metadata import PackageNotFoundError, version



def release(text: str) -> str:  # "8.0" == "8.0.0"
    parts = text.lower().split(".")
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return ".".join(parts)


bad = []
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^;\s]+)", line)
    if m:
        name, want = m.groups()
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have is None or release(have) != release(want):
            bad.append(f"{name}: want {want}, have {have}")
if bad:
    sys.exit("test-floor: installed versions differ from the floors:\n  " + "\n  ".join(bad))
EOF

log "unit tests at the floors"
exec "$VENV/bin/python" -m pytest tests -m unit -p no:cacheprovider -q "$@"
