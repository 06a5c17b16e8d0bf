"""`make demo` keeps working: the demo script brings the stack up and Prometheus sees up=1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.real


def test_demo_comes_up(repo_root) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "demo.py")],
        env={**os.environ, "HPCOBS_DEMO_ONCE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up (exporter scraped by Prometheus): 1" in result.stdout
    assert "prometheus    : http://127.0.0.1:" in result.stdout
