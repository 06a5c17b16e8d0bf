# The README's two commands: `make demo` and `make test`. Both install what is missing.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: bootstrap test test-unit test-real test-floor test-compat demo bench lint docs golden gpu-check clean

bootstrap:
	@scripts/bootstrap.sh

# Two pytest-xdist workers: the real tests one after another on one of them (tests/conftest.py),
# the unit tests spread over both. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

test: bootstrap
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-unit: bootstrap
	$(PY) -m pytest tests -m unit $(PYTEST_ARGS)

test-real: bootstrap
	$(PY) -m pytest tests -m real $(PYTEST_ARGS)

# The suite against the lowest dependency versions pyproject.toml allows (build/floor-venv).
test-floor: bootstrap
	scripts/test-floor.sh $(PYTEST_ARGS)

# The version matrix: Slurm, Prometheus and Alertmanager versions sites run (docs/install.md §7).
test-compat: bootstrap
	$(PY) scripts/compat/run.py $(COMPAT_ARGS)

demo: bootstrap
	$(PY) scripts/demo.py

bench: bootstrap
	$(PY) bench/run.py $(BENCH)

lint: bootstrap
	@scripts/lint.sh

gpu-check: bootstrap
	scripts/gpu-check.sh

# Rewrite the node exporter's whole-output goldens (tests/golden/node/) after an intended change.
golden: bootstrap
	$(PY) tests/harness/node_golden.py --write

docs: bootstrap
	$(PY) scripts/gen_metrics_doc.py > docs/metrics.md
	$(PY) dashboards/generate.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache .hypothesis
