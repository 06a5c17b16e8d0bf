"""scripts/gpu-check.sh's comparison logic, run against the fake pynvml and a stand-in
`nvidia-smi` (this checks the script, not a GPU: the real comparison needs a GPU machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent.parent

SITECUSTOMIZE = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from fakes.pynvml_fake import FakeNvml, fleet
sys.modules["pynvml"] = FakeNvml(fleet(2)).module
"""

# What nvidia-smi would print for the fake's two default GPUs (values written out by hand
# from FakeGpu's raw NVML numbers: 85520809984 B = 81559 MiB, 512345 mW = 512.34 W, ...).
SMI_ROW = (
    "{i}, GPU-0000000{i}-1111-2222-3333-00000000000{i}, NVIDIA H100 80GB HBM3, "
    "00000000:{bus}:00.0, 550.54.15, P0, Disabled, 81559, 40960, {temp}, 512.34, 700.00, "
    "1980, 2619, 87, 41, 0, 17, 1, 3, 0, 2, 1"
)


def run_check(tmp_path: Path, temperature: int) -> subprocess.CompletedProcess[str]:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    rows = "\n".join(
        SMI_ROW.format(i=i, bus=f"{0x18 + 0x10 * i:02X}", temp=temperature) for i in range(2)
    )
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        f"#!/bin/sh\ncase \"$1\" in -L) echo GPU 0; exit 0;; esac\ncat <<'X'\n{rows}\nX\n"
    )
    smi.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{smi.parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(tmp_path / "site"),
        "PYTHON": sys.executable,
    }
    return subprocess.run(
        [str(REPO / "scripts" / "gpu-check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_agreeing_values_pass(tmp_path: Path) -> None:
    result = run_check(tmp_path, temperature=63)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpu-check: OK" in result.stdout
    assert "MISMATCH" not in result.stdout
    assert result.stdout.count("temperature.gpu C") == 2


def test_a_disagreeing_value_fails(tmp_path: Path) -> None:
    result = run_check(tmp_path, temperature=80)
    assert result.returncode == 1, result.stdout + result.stderr
    mismatches = [line for line in result.stdout.splitlines() if line.endswith("MISMATCH")]
    assert len(mismatches) == 2 and all("temperature.gpu" in line for line in mismatches)


def test_no_driver_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    if any((Path(d) / "nvidia-smi").exists() for d in ("/usr/bin", "/bin")):
        pytest.fail("this test expects a machine without nvidia-smi")
    result = subprocess.run(
        [str(REPO / "scripts" / "gpu-check.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "needs a machine with an NVIDIA GPU" in result.stderr
