#!/usr/bin/env bash
# `make gpu-check`: run the gpu collector on this machine's real GPUs and compare what it
# exports with `nvidia-smi --query-gpu=... --format=csv`.
#
# Static values (identity, memory size, ECC and retired-page counters, power limit, MIG mode,
# pstate) must match exactly; sampled values (temperature, power, clocks, utilization, memory
# in use) must lie within a tolerance of the range nvidia-smi showed just before and just
# after the collection. A field nvidia-smi reports as [N/A] / [Not Supported] must be absent
# from the exporter's output, and the other way round.
#
# Then, on the first GPU with GPM (Hopper and later), the profiling metrics over a window of
# GPU_CHECK_WINDOW seconds (default 10) idle and then under a bf16 matmul load, against
# `nvidia-smi dmon -s u` over the same window: SM activity against dmon's `sm` (a large GEMM
# keeps every SM busy whenever a kernel runs, so the two agree under that load and when idle),
# DRAM bandwidth against dmon's `mem` (memory controller busy time: related, not the same
# measure, hence the wider tolerance); PCIe receive throughput is shown next to the bytes the
# load copied host-to-device. Finally the collector's scrape time, p50 and max of 20 scrapes,
# with GPM and with the old way (--no-collector.gpu.gpm --collector.gpu.pcie-throughput).
# The load runs `GPU_CHECK_LOAD_PYTHON` (default: the first of .venv/bin/python, python3 that
# imports torch) on a bf16 matmul; GPU_CHECK_LOAD_CMD replaces the whole load command (it
# gets the GPU index and the seconds, and prints `ready` when it has started). Without
# PyTorch the load comparison is skipped and says so.
#
# Exit status: 0 all fields agree, 1 a mismatch, 2 no NVIDIA GPU or driver here.
# Needs: nvidia-smi, the NVIDIA driver (libnvidia-ml.so.1), and the hpcobs venv (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: nvidia-smi not found: this check needs a machine with an NVIDIA GPU and driver" >&2
    exit 2
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: nvidia-smi cannot talk to the driver:" >&2
    nvidia-smi -L >&2 || true
    exit 2
fi

exec "$PY" - "$@" <<'EOF'
"""Compare the gpu collector with nvidia-smi, field by field."""

import csv
import io
import subprocess
import sys

from hpcobs.exporters.collectors.gpu import GpuCollector
from hpcobs.exporters.sources.nvml import NvmlSource

FIELDS = [
    "index", "uuid", "name", "pci.bus_id", "driver_version", "pstate", "mig.mode.current",
    "memory.total", "memory.used", "temperature.gpu", "power.draw", "enforced.power.limit",
    "clocks.sm", "clocks.mem", "utilization.gpu", "utilization.memory", "fan.speed",
    "ecc.errors.corrected.aggregate.total", "ecc.errors.uncorrected.aggregate.total",
    "ecc.errors.corrected.volatile.total", "ecc.errors.uncorrected.volatile.total",
    "retired_pages.single_bit_ecc.count", "retired_pages.double_bit.count",
]
MIB = 1 << 20


def smi() -> list[dict[str, str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(FIELDS)}", "--format=csv,noheader,nounits"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = [[c.strip() for c in row] for row in csv.reader(io.StringIO(out)) if row]
    return [dict(zip(FIELDS, row, strict=True)) for row in rows]


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # [N/A], [Not Supported], Disabled, ...


before = smi()
collector = GpuCollector(NvmlSource(xid=False, processes=False))
try:
    ours: dict[tuple[str, frozenset], float] = {}
    for family in collector.collect():
        for s in family.samples:
            ours[(s.name, frozenset(s.labels.items()))] = s.value
finally:
    collector.close()
after = smi()


def get(name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, lab), v in ours.items() if n == name and want <= set(lab)]
    return found[0] if len(found) == 1 else None


failures = 0
rows = []


def check(gpu: str, field: str, mine: float | str | None, theirs: list[str], kind: str,
          tol: float = 0.0, rel: float = 0.0, scale: float = 1.0) -> None:
    """kind: exact (strings or numbers), range (within [min, max] of both smi reads ± tol)."""
    global failures
    values = [number(t) for t in theirs]
    if kind == "text":
        ok = mine == theirs[0]
        shown = theirs[0]
    elif all(v is None for v in values):
        ok = mine is None  # nvidia-smi has no value: we must omit the metric
        shown = theirs[0]
    elif mine is None or any(v is None for v in values):
        ok, shown = False, theirs[0]
    else:
        lo = min(v for v in values if v is not None) * scale
        hi = max(v for v in values if v is not None) * scale
        slack = max(tol, rel * hi)
        ok = lo - slack <= float(mine) <= hi + slack if kind == "range" else abs(float(mine) - lo) <= slack
        shown = f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"
    failures += not ok
    rows.append((gpu, field, "" if mine is None else f"{mine:g}" if isinstance(mine, float) else str(mine), shown, "ok" if ok else "MISMATCH"))


if [r["uuid"] for r in before] != [r["uuid"] for r in after]:
    sys.exit("gpu-check: the GPU list changed during the check")
for b, a in zip(before, after, strict=True):
    g = b["index"]
    up = get("hpcobs_gpu_up", gpu=g, uuid=b["uuid"])
    check(g, "up", up, ["1"], "exact")
    info = [lab for (n, lab) in ours if n == "hpcobs_gpu_info" and dict(lab)["gpu"] == g]
    labels = dict(info[0]) if info else {}
    check(g, "uuid", labels.get("uuid"), [b["uuid"]], "text")
    check(g, "name", labels.get("name"), [b["name"]], "text")
    check(g, "pci.bus_id", labels.get("pci_bus_id", "").upper(), [b["pci.bus_id"].upper()], "text")
    check(g, "driver_version", labels.get("driver_version"), [b["driver_version"]], "text")
    both = lambda f: [b[f], a[f]]  # noqa: E731
    pstate = get("hpcobs_gpu_performance_state", gpu=g)
    check(g, "pstate", pstate, [p.lstrip("P") for p in both("pstate")], "range")
    mig = get("hpcobs_gpu_mig_enabled", gpu=g)
    check(g, "mig.mode", mig, [{"Enabled": "1", "Disabled": "0"}.get(m, m) for m in both("mig.mode.current")], "exact")
    check(g, "memory.total MiB", None if (v := get("hpcobs_gpu_memory_total_bytes", gpu=g)) is None else v / MIB, both("memory.total"), "exact", tol=1)
    check(g, "memory.used MiB", None if (v := get("hpcobs_gpu_memory_used_bytes", gpu=g)) is None else v / MIB, both("memory.used"), "range", tol=256, rel=0.05)
    check(g, "temperature.gpu C", get("hpcobs_gpu_temperature_celsius", gpu=g), both("temperature.gpu"), "range", tol=3)
    check(g, "power.draw W", get("hpcobs_gpu_power_watts", gpu=g), both("power.draw"), "range", tol=20, rel=0.15)
    check(g, "enforced.power.limit W", get("hpcobs_gpu_power_limit_watts", gpu=g), both("enforced.power.limit"), "exact", tol=0.5)
    check(g, "clocks.sm MHz", None if (v := get("hpcobs_gpu_clock_hertz", gpu=g, clock="sm")) is None else v / 1e6, both("clocks.sm"), "range", tol=60, rel=0.15)
    check(g, "clocks.mem MHz", None if (v := get("hpcobs_gpu_clock_hertz", gpu=g, clock="memory")) is None else v / 1e6, both("clocks.mem"), "range", tol=60, rel=0.15)
    check(g, "utilization.gpu %", None if (v := get("hpcobs_gpu_utilization_ratio", gpu=g)) is None else v * 100, both("utilization.gpu"), "range", tol=20)
    check(g, "utilization.memory %", None if (v := get("hpcobs_gpu_memory_utilization_ratio", gpu=g)) is None else v * 100, both("utilization.memory"), "range", tol=20)
    check(g, "fan.speed %", None if (v := get("hpcobs_gpu_fan_speed_ratio", gpu=g)) is None else v * 100, both("fan.speed"), "range", tol=5)
    check(g, "ecc corrected aggregate", get("hpcobs_gpu_ecc_errors_total", gpu=g, type="corrected"), both("ecc.errors.corrected.aggregate.total"), "range")
    check(g, "ecc uncorrected aggregate", get("hpcobs_gpu_ecc_errors_total", gpu=g, type="uncorrected"), both("ecc.errors.uncorrected.aggregate.total"), "range")
    check(g, "ecc corrected volatile", get("hpcobs_gpu_ecc_volatile_errors_total", gpu=g, type="corrected"), both("ecc.errors.corrected.volatile.total"), "range")
    check(g, "ecc uncorrected volatile", get("hpcobs_gpu_ecc_volatile_errors_total", gpu=g, type="uncorrected"), both("ecc.errors.uncorrected.volatile.total"), "range")
    check(g, "retired pages sbe", get("hpcobs_gpu_retired_pages", gpu=g, cause="multiple_single_bit_ecc"), both("retired_pages.single_bit_ecc.count"), "range")
    check(g, "retired pages dbe", get("hpcobs_gpu_retired_pages", gpu=g, cause="double_bit_ecc"), both("retired_pages.double_bit.count"), "range")

# ---- GPM profiling metrics against nvidia-smi dmon, idle and under a bf16 matmul load ----
import os
import shlex
import statistics
import time

WINDOW = float(os.environ.get("GPU_CHECK_WINDOW", "10"))
LOAD_SCRIPT = r"""
import sys, time, torch
gpu, seconds = int(sys.argv[1]), float(sys.argv[2])
device = torch.device("cuda", gpu)
a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
host = torch.empty(256 << 20, dtype=torch.uint8).pin_memory()
dev = torch.empty(256 << 20, dtype=torch.uint8, device=device)
a @ b
torch.cuda.synchronize(device)
print("ready", flush=True)
end = time.time() + seconds
copied, started = 0, time.time()
while time.time() < end:
    for _ in range(10):
        a @ b
    dev.copy_(host, non_blocking=True)
    copied += host.numel()
    torch.cuda.synchronize(device)
print(f"h2d_bytes_per_second {copied / (time.time() - started):.0f}", flush=True)
"""


def load_command(gpu: int, seconds: float) -> list[str] | None:
    if os.environ.get("GPU_CHECK_LOAD_CMD"):
        return [*shlex.split(os.environ["GPU_CHECK_LOAD_CMD"]), str(gpu), str(seconds)]
    candidates = [os.environ.get("GPU_CHECK_LOAD_PYTHON"), sys.executable, "python3"]
    for python in [c for c in candidates if c]:
        probe = subprocess.run([python, "-c", "import torch; assert torch.cuda.is_available()"],
                               capture_output=True, check=False)
        if probe.returncode == 0:
            return [python, "-c", LOAD_SCRIPT, str(gpu), str(seconds)]
    return None


def dmon(gpu: int, seconds: float) -> subprocess.Popen[str]:
    """`nvidia-smi dmon -s u` on one GPU, a line a second."""
    count = max(1, round(seconds))
    return subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", "-d", "1", "-c", str(count), "-i", str(gpu)],
                            stdout=subprocess.PIPE, text=True)


def dmon_means(proc: subprocess.Popen[str]) -> dict[str, float]:
    """Mean of each dmon column (`sm`, `mem`, ...) over its lines."""
    out, _ = proc.communicate(timeout=WINDOW + 30)
    columns: list[str] = []
    rows: list[list[str]] = []
    for line in out.splitlines():
        if line.startswith("#"):
            if not columns:
                columns = line.lstrip("#").split()
            continue
        if line.split():
            rows.append(line.split())
    means = {}
    for i, name in enumerate(columns):
        values = [number(r[i]) for r in rows if i < len(r)]
        values = [v for v in values if v is not None]
        if values:
            means[name] = statistics.mean(values)
    return means


def window(collector: GpuCollector, gpu: int) -> tuple[dict[str, float], dict[str, float]]:
    """(our GPM values over a window, dmon's means over the same window)."""
    collector.collect()  # the sample the window starts from
    proc = dmon(gpu, WINDOW)
    time.sleep(WINDOW)
    values = {s.name: s.value for f in collector.collect() for s in f.samples
              if s.labels.get("gpu") == str(gpu) and "gpu_instance" not in s.labels}
    return values, dmon_means(proc)


gpm_rows = []


def compare(what: str, mine: float | None, theirs: float | None, tol: float, note: str = "") -> None:
    global failures
    ok = mine is not None and theirs is not None and abs(mine - theirs) <= tol
    failures += not ok
    shown = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    gpm_rows.append((what, shown(mine), shown(theirs), f"±{tol:g}", ("ok" if ok else "MISMATCH") + note))


collector = GpuCollector(NvmlSource(xid=False, processes=False))
try:
    collector.collect()  # GPM gives its metrics from the second scrape on
    time.sleep(1)
    first = {(s.name, s.labels.get("gpu")) for f in collector.collect() for s in f.samples}
    gpm_gpus = [int(g["index"]) for g in before if ("hpcobs_gpu_sm_active_ratio", g["index"]) in first]
    if not gpm_gpus:
        print("\nGPM: no GPU here has GPM profiling metrics (Hopper and later): comparison skipped")
    else:
        gpu = gpm_gpus[0]
        pct = lambda v: None if v is None else v * 100  # noqa: E731
        idle, idle_smi = window(collector, gpu)
        if idle_smi.get("sm", 100) <= 5:  # nothing else runs on it
            compare("idle: SM activity % vs dmon sm", pct(idle.get("hpcobs_gpu_sm_active_ratio")), idle_smi.get("sm"), 5)
        else:
            gpm_rows.append(("idle", "", "", "", f"skipped: dmon sm {idle_smi.get('sm')} % (the GPU is in use)"))
        command = load_command(gpu, WINDOW + 15)
        if command is None:
            gpm_rows.append(("bf16 matmul load", "", "", "", "skipped: no PyTorch with CUDA (GPU_CHECK_LOAD_PYTHON)"))
        else:
            env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # CUDA's index = NVML's
            load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
            try:
                started = load.stdout.readline().strip() if load.stdout else ""
                if started != "ready":
                    sys.exit(f"gpu-check: the load did not start (it printed {started!r})")
                time.sleep(min(2.0, WINDOW))  # past the load's start
                busy, busy_smi = window(collector, gpu)
                rest, _ = load.communicate(timeout=WINDOW + 60)
            finally:
                if load.poll() is None:
                    load.kill()
            compare("bf16 load: SM activity % vs dmon sm", pct(busy.get("hpcobs_gpu_sm_active_ratio")), busy_smi.get("sm"), 15)
            compare("bf16 load: DRAM bandwidth % vs dmon mem", pct(busy.get("hpcobs_gpu_dram_active_ratio")), busy_smi.get("mem"), 25,
                    " (related measures)")
            for name, label in (("hpcobs_gpu_tensor_active_ratio", "tensor activity %"),
                                ("hpcobs_gpu_sm_occupancy_ratio", "SM occupancy %")):
                value = busy.get(name)
                gpm_rows.append((f"bf16 load: {label}", "-" if value is None else f"{value * 100:.1f}", "", "", "shown"))
            copied = [float(w.split()[1]) for w in rest.splitlines() if w.startswith("h2d_bytes_per_second")]
            received = busy.get("hpcobs_gpu_pcie_receive_bytes_per_second")
            if copied and received is not None:
                gpm_rows.append(("bf16 load: PCIe receive GB/s vs copied", f"{received / 1e9:.2f}",
                                 f"{copied[0] / 1e9:.2f}", "", f"shown (ratio {received / copied[0]:.3f})"))
finally:
    collector.close()

# ---- the gpu collector's scrape time: with GPM, and the old way (NVML's 20 ms PCIe sample) ----
def scrape_times(source: NvmlSource, n: int = 20) -> tuple[float, float]:
    c = GpuCollector(source)
    try:
        c.collect()
        took = []
        for _ in range(n):
            t0 = time.perf_counter()
            c.collect()
            took.append(time.perf_counter() - t0)
        return statistics.median(took) * 1000, max(took) * 1000
    finally:
        c.close()


timing = {
    "GPM (default)": scrape_times(NvmlSource(xid=False)),
    "old way (--no-collector.gpu.gpm --collector.gpu.pcie-throughput)": scrape_times(NvmlSource(xid=False, gpm=False, pcie_throughput=True)),
}

width = [max(len(str(r[i])) for r in [("gpu", "field", "hpcobs", "nvidia-smi", "")] + rows) for i in range(5)]
for row in [("gpu", "field", "hpcobs", "nvidia-smi", "")] + rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(row, width)))
if gpm_rows:
    print(f"\nGPM on GPU {gpm_gpus[0]}, {WINDOW:g} s windows:")
    head = ("check", "hpcobs", "nvidia-smi dmon", "tolerance", "")
    width = [max(len(str(r[i])) for r in [head] + gpm_rows) for i in range(5)]
    for row in [head] + gpm_rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, width)).rstrip())
print("\ngpu collector scrape time, 20 scrapes:")
for name, (p50, worst) in timing.items():
    print(f"  {name}: p50 {p50:.1f} ms, max {worst:.1f} ms")
driver = [(n, dict(lab)) for (n, lab) in ours if n == "hpcobs_gpu_driver_info"]
print(f"\n{len(before)} GPU(s); driver_info: {driver[0][1] if driver else 'missing'}")
print(f"gpu-check: {'OK' if not failures else f'{failures} mismatch(es)'}")
sys.exit(1 if failures else 0)
EOF
