"""The node exporter's whole output for every fixture case against tests/golden/node/<case>.prom.

A failure prints the diff. If the change is intended, regenerate with `make golden` and let the
diff be reviewed with the change that caused it."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from harness.node_golden import CASES, MASK, golden_path, mask, render

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(CASES))
def test_whole_output_matches_the_golden(name: str, tmp_path: Path) -> None:
    got = render(CASES[name], tmp_path)
    path = golden_path(name)
    assert path.is_file(), f"no golden {path}: run `make golden`"
    want = path.read_text()
    if got != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True),
                got.splitlines(keepends=True),
                str(path),
                "this run",
                n=1,
            )
        )
        pytest.fail(f"{name}: output differs from the golden (`make golden` if intended)\n{diff}")
    # every case exports data beyond the runtime's own series, and its collector is up
    assert (
        'hpcobs_collector_up{collector="' in got and "} 0.0\nhpcobs_collector_duration" not in got
    )
    assert sum(1 for line in got.splitlines() if not line.startswith("#")) > 20


def test_no_golden_without_a_case() -> None:
    assert {p.stem for p in golden_path("x").parent.glob("*.prom")} == set(CASES)


def test_mask_hides_only_what_changes_between_runs() -> None:
    text = (
        'hpcobs_collector_duration_seconds{collector="rdma"} 0.00123\n'
        'hpcobs_collector_up{collector="rdma"} 1.0\n'
        "hpcobs_mpi_probe_last_success_timestamp_seconds 1.7e+09\n"
        'hpcobs_build_info{python_version="3.11.7",version="0.1.0"} 1.0\n'
        'hpcobs_lustre_target_disk_io_duration_seconds_bucket{le="0.001"} 1.0\n'
    )
    assert mask(text) == (
        f'hpcobs_collector_duration_seconds{{collector="rdma"}} {MASK}\n'
        'hpcobs_collector_up{collector="rdma"} 1.0\n'
        f"hpcobs_mpi_probe_last_success_timestamp_seconds {MASK}\n"
        f"hpcobs_build_info{{{MASK}}} 1.0\n"
        'hpcobs_lustre_target_disk_io_duration_seconds_bucket{le="0.001"} 1.0\n'
    )
