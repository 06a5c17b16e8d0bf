#!/usr/bin/env bash
# ruff (lint + format check) and mypy --strict over the whole `hpcobs` namespace.
# mypy cannot follow setuptools' package-dir mapping, so it reads the sources through a
# link tree build/typecheck/hpcobs/{exporters,slo} that mirrors the installed layout.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
mapfile -t SOURCES < <(ls -d exporters slo tests scripts bench dashboards setup.py 2>/dev/null)
$V/ruff check "${SOURCES[@]}"
$V/ruff format --check "${SOURCES[@]}"
mkdir -p build/typecheck/hpcobs
ln -sfn ../../../exporters build/typecheck/hpcobs/exporters
ln -sfn ../../../slo build/typecheck/hpcobs/slo
(cd build/typecheck && ../../$V/mypy -p hpcobs)
