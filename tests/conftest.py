"""Suite-wide pytest configuration.

Every test carries exactly one of the markers `unit` (no servers, seconds) or `real`
(real Prometheus, Alertmanager, Pushgateway, node_exporter, Slurm, Open MPI). A `real`
test whose component cannot start fails with the reason; nothing is skipped quietly.

Fixtures for the real components live in `tests/harness/` and are loaded as plugins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# CI (CI=true) explores the same examples on every run, so a landing never depends on the
# seed; developers' runs keep exploring new ones (and pin what they find with @example).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

pytest_plugins = ["harness.servers", "harness.slurm", "harness.runtime", "harness.slurm_exporter"]

REPO = Path(__file__).resolve().parent.parent
FIXTURE_TREES = REPO / "tests" / "data" / "fixtures"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bad = []
    for item in items:
        kinds = {m.name for m in item.iter_markers()} & {"unit", "real"}
        if len(kinds) != 1:
            bad.append(item.nodeid)
    if bad:
        raise pytest.UsageError(
            "every test needs exactly one of the markers 'unit' or 'real': " + ", ".join(bad[:10])
        )
    # `make test` runs on two pytest-xdist workers with --dist loadgroup: the real tests, one
    # after another on one worker (they start private Slurm clusters whose jobs the node
    # exporters under test would attribute to each other through /proc, and time MPI runs),
    # the unit tests spread over both. Without xdist the marker is inert.
    for item in items:
        if item.get_closest_marker("real") is not None:
            item.add_marker(pytest.mark.xdist_group("real"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixture_trees() -> Path:
    """The real-format fixture trees, as upstream lays them out (tests/data/fixtures; symlinks
    kept, dangling ones included). Treat them as read-only: copy with `harness.trees.copy_tree`
    before rewriting a counter."""
    if not FIXTURE_TREES.is_dir():
        pytest.fail(f"fixture trees not found at {FIXTURE_TREES}")
    return FIXTURE_TREES


@pytest.fixture(autouse=True)
def _psutil_procfs() -> Iterator[None]:
    """psutil reads one procfs per interpreter (`psutil.PROCFS_PATH`), which a collector built
    with `--path.procfs` on a fixture tree sets: put it back after every test."""
    import psutil

    saved = psutil.PROCFS_PATH
    yield
    psutil.PROCFS_PATH = saved
