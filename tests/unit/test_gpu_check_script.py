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

SITECUSTOMIZE = """
import sys
sys.path.insert(0, {tests!r})
from fakes.pynvml_fake import FakeNvml, fleet
sys.modules["pynvml"] = FakeNvml(fleet(2, gpm_supported={gpm})).module
"""

# What nvidia-smi would print for the fake's two default GPUs (values written out by hand
# from FakeGpu's raw NVML numbers: 85520809984 B = 81559 MiB, 512345 mW = 512.34 W, ...).
SMI_ROW = (
    "{i}, GPU-0000000{i}-1111-2222-3333-00000000000{i}, NVIDIA H100 80GB HBM3, "
    "00000000:{bus}:00.0, 550.54.15, P0, Disabled, 81559, 40960, {temp}, 512.34, 700.00, "
    "1980, 2619, 87, 41, 0, 17, 1, 3, 0, 2, 1"
)
# `nvidia-smi dmon -s u` as the driver prints it, with the fake GPUs' GPM rates (62 % SM
# activity, 38 % DRAM bandwidth) standing in for a GPU busy with a large GEMM
DMON = """#!/bin/sh
echo '# gpu     sm    mem    enc    dec    jpg    ofa'
echo '# Idx      %      %      %      %      %      %'
echo '    0     {sm}     {mem}      0      0      0      0'
"""
# The load: starts, says so, "copies" 1.5 GB/s host-to-device
LOAD = (
    "import sys, time; print('ready', flush=True); time.sleep(float(sys.argv[2]) / 4); "
    "print('h2d_bytes_per_second 1500000000', flush=True)"
)


def run_check(
    tmp_path: Path,
    temperature: int = 63,
    dmon_sm: int = 62,
    dmon_mem: int = 38,
    gpm: bool = True,
    load: bool = True,
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(tests=str(REPO / "tests"), gpm=gpm)
    )
    rows = "\n".join(
        SMI_ROW.format(i=i, bus=f"{0x18 + 0x10 * i:02X}", temp=temperature) for i in range(2)
    )
    (tmp_path / "dmon").write_text(DMON.format(sm=dmon_sm, mem=dmon_mem))
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        f'#!/bin/sh\ncase "$1" in -L) echo GPU 0; exit 0;; dmon) exec sh {tmp_path / "dmon"};; '
        f"esac\ncat <<'X'\n{rows}\nX\n"
    )
    smi.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{smi.parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(tmp_path / "site"),
        "PYTHON": sys.executable,
        "GPU_CHECK_WINDOW": "0.5",
    }
    if load:
        env["GPU_CHECK_LOAD_CMD"] = f"{sys.executable} -c {LOAD!r}"
    else:  # no PyTorch anywhere
        env.pop("GPU_CHECK_LOAD_CMD", None)
        env["GPU_CHECK_LOAD_PYTHON"] = "/bin/false"
    return subprocess.run(
        [str(REPO / "scripts" / "gpu-check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines(out: str, start: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(start)]


def test_agreeing_values_pass(tmp_path: Path) -> None:
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpu-check: OK" in result.stdout
    assert "MISMATCH" not in result.stdout
    assert result.stdout.count("temperature.gpu C") == 2
    # GPM against dmon under the load, and the PCIe bytes next to what the load copied
    (sm,) = lines(result.stdout, "bf16 load: SM activity % vs dmon sm")
    assert sm.split()[-1] == "ok" and "62.0" in sm
    (dram,) = lines(result.stdout, "bf16 load: DRAM bandwidth % vs dmon mem")
    assert "38.0" in dram and "ok" in dram
    (pcie,) = lines(result.stdout, "bf16 load: PCIe receive GB/s vs copied")
    assert "2.56" in pcie and "1.50" in pcie  # the fake's 2441.4 MiB/s, the load's 1.5 GB/s
    # dmon shows the GPU busy before the load too (the fake's rates): no idle comparison
    assert "skipped: dmon sm 62" in result.stdout
    # the scrape time, both ways
    assert len(lines(result.stdout, "  GPM (default): p50 ")) == 1
    assert len(lines(result.stdout, "  old way (--no-collector.gpu.gpm")) == 1


def test_a_disagreeing_value_fails(tmp_path: Path) -> None:
    result = run_check(tmp_path, temperature=80)
    assert result.returncode == 1, result.stdout + result.stderr
    mismatches = [line for line in result.stdout.splitlines() if line.endswith("MISMATCH")]
    assert len(mismatches) == 2 and all("temperature.gpu" in line for line in mismatches)


def test_gpm_disagreeing_with_dmon_fails(tmp_path: Path) -> None:
    result = run_check(tmp_path, dmon_sm=30)
    assert result.returncode == 1, result.stdout + result.stderr
    (sm,) = lines(result.stdout, "bf16 load: SM activity % vs dmon sm")
    assert sm.endswith("MISMATCH")
    assert "gpu-check: 1 mismatch(es)" in result.stdout


def test_idle_gpu_compared_when_dmon_shows_it_idle(tmp_path: Path) -> None:
    """dmon idle (0 %) while the fake's GPM reads 62 %: the idle comparison runs and fails."""
    result = run_check(tmp_path, dmon_sm=0)
    (idle,) = lines(result.stdout, "idle: SM activity % vs dmon sm")
    assert idle.endswith("MISMATCH")


def test_without_pytorch_the_load_is_skipped(tmp_path: Path) -> None:
    result = run_check(tmp_path, load=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped: no PyTorch with CUDA" in result.stdout


def test_pre_hopper_gpus_skip_the_gpm_comparison(tmp_path: Path) -> None:
    result = run_check(tmp_path, gpm=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GPM: no GPU here has GPM profiling metrics" in result.stdout
    assert len(lines(result.stdout, "  old way (--no-collector.gpu.gpm")) == 1


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
