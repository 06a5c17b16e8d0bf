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

width = [max(len(str(r[i])) for r in [("gpu", "field", "hpcobs", "nvidia-smi", "")] + rows) for i in range(5)]
for row in [("gpu", "field", "hpcobs", "nvidia-smi", "")] + rows:
    print("  ".join(str(c).ljust(w) for c, w in zip(row, width)))
driver = [(n, dict(lab)) for (n, lab) in ours if n == "hpcobs_gpu_driver_info"]
print(f"\n{len(before)} GPU(s); driver_info: {driver[0][1] if driver else 'missing'}")
print(f"gpu-check: {'OK' if not failures else f'{failures} mismatch(es)'}")
sys.exit(1 if failures else 0)
EOF
