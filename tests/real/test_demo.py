"""`make demo` keeps working: the whole suite comes up, the injected node failure pages, and
the SLO report is printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real


def test_demo_runs_the_whole_suite(repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "demo.py")],
        env={**os.environ, "HPCOBS_DEMO_ONCE": "1"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "prometheus" in out and "alertmanager" in out and "slurm exporter" in out
    assert "PAGED (on-call webhook): SLOBurnRatePage slo=job-success severity=page" in out
    assert "SLO report" in out and "job-success" in out.split("SLO report", 1)[1]
