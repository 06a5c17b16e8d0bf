"""`make bench BENCH=gpu`: one GPU collection for 8 fake GPUs with every metric.

The fake pynvml (tests/fakes/pynvml_fake.py) answers every call in Python, so the figures
are the collector's own cost (threads, NVML call wrapping, attribution, family building)
plus the fake's; a real driver adds its call latency. The fake GPUs are H100s with GPM: the
profiling metrics (a sample and a computation per GPU and per MIG GPU instance, from the
second scrape on) are in the figures, and PCIe throughput comes from GPM; the old way's
nvmlDeviceGetPcieThroughput, which a real driver makes wait 20 ms per direction, is not
called (`--collector.gpu.pcie-throughput` only asks it of GPUs without GPM). Prints p50/p99
of `collect()` and of a full text exposition, the series count, and the process RSS.

Measured on the 2-core CI VM (issue 19), in instructions per collection under callgrind (the
timings there move by ±20 % with the neighbours' load): before GPM 48.6 M (1,168 series,
1,142 NVML calls), with GPM 48.1 M (1,310 series, 1,162 calls).
"""

from __future__ import annotations

import gc
import logging
import statistics
import sys
import time
from pathlib import Path

import psutil
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from hpcobs.exporters.collectors.gpu import GpuCollector  # noqa: E402
from hpcobs.exporters.sources.nvml import NvmlSource  # noqa: E402

from fakes.pynvml_fake import FakeNvml, FakeProcess, fleet  # noqa: E402

GPUS = 8
WARMUP = 20
ROUNDS = 400


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    logging.getLogger("hpcobs").setLevel(logging.ERROR)  # the XIDs below are expected
    rss_start = psutil.Process().memory_info().rss
    gpus = fleet(GPUS)
    gpus[6].enable_mig(instances=3)
    gpus[7].enable_mig(instances=7)
    for g in gpus:  # every GPU busy with a few processes (pids of this machine: no job)
        g.processes = [
            FakeProcess(pid=1, used_memory=1 << 30),
            FakeProcess(pid=2, used_memory=None),
        ]
    fake = FakeNvml(gpus)
    real_pynvml = sys.modules.get("pynvml")
    sys.modules["pynvml"] = fake.module  # the import boundary the collector loads through
    collector = GpuCollector(NvmlSource(timeout=5.0, xid_wait_ms=100))
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        for _ in range(WARMUP):
            list(collector.collect())
        for i in range(GPUS):
            fake.xid(i, 79 if i % 2 else 48)
        time.sleep(0.3)  # let the XID thread count them
        families = list(collector.collect())
        series = sum(len(f.samples) for f in families)

        gc.collect()
        collect_times = []
        cpu0 = time.process_time()
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            list(collector.collect())
            collect_times.append(time.perf_counter() - t0)
        cpu_per_scrape = (time.process_time() - cpu0) / ROUNDS
        expose_times = []
        size = 0
        for _ in range(ROUNDS // 4):
            t0 = time.perf_counter()
            size = len(generate_latest(registry))
            expose_times.append(time.perf_counter() - t0)
        rss_end = psutil.Process().memory_info().rss
    finally:
        collector.close()
        if real_pynvml is not None:  # other benchmarks in this process see the real one
            sys.modules["pynvml"] = real_pynvml
        else:
            sys.modules.pop("pynvml", None)

    ms = 1000.0
    print(f"gpus={GPUS} (2 in MIG mode, 10 MIG devices) series={series} exposition_bytes={size}")
    print(
        f"collect(): p50={statistics.median(collect_times) * ms:.2f} ms "
        f"p99={percentile(collect_times, 0.99) * ms:.2f} ms "
        f"max={max(collect_times) * ms:.2f} ms over {ROUNDS} scrapes; "
        f"CPU {cpu_per_scrape * ms:.2f} ms per scrape (all threads)"
    )
    print(
        f"collect()+text exposition: p50={statistics.median(expose_times) * ms:.2f} ms "
        f"p99={percentile(expose_times, 0.99) * ms:.2f} ms"
    )
    print(
        f"nvml calls per scrape={sum(fake.calls.values()) / (WARMUP + 1 + ROUNDS + ROUNDS // 4):.0f} "
        f"rss_start={rss_start / 2**20:.1f} MiB rss_end={rss_end / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
