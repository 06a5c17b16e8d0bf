"""The node daemon next to Debian's node_exporter, in one run (issue 16 item 1).

hpcobs-node-exporter with only `rdma` (`--collector.disable-defaults --collector.rdma`) and
node_exporter with only `infiniband` (`--collector.disable-defaults --collector.infiniband`),
both real processes on free 127.0.0.1 ports reading the same tree, on two trees:

- `held-out`: a tree generated for this benchmark (tests/data/rdma/sysfs_tree.py, 4 HCAs × 2
  ports, mlx5-like, another seed than the tests' and bench_rdma's trees);
- `procfs`: the Prometheus procfs InfiniBand fixture (tests/data/fixtures/sysfs-infiniband-
  procfs: mlx4, mlx5 and hfi1 devices, as upstream lays them out).

For each tree and connection pattern, SCRAPES scrapes of each server in alternating blocks of
BLOCK (so drifts of this shared machine's load fall on both), every request with Prometheus'
headers (its Accept header, gzip, the scrape-timeout header):

- `keep-alive`: one connection for all scrapes, as Prometheus scrapes;
- `new conn`: a TCP connection made and closed per scrape.

Printed, each as hpcobs / node_exporter next to node_exporter's figure, with PASS/MISS:

- CPU per scrape: utime + stime of the process (/proc/<pid>/stat) over the block's scrapes /
  scrapes (target ≤ 0.9×);
- scrape p50, from sending the request to the last byte read (target ≤ 1.0×);
- RSS (VmRSS) after the scrapes, rdma only (target ≤ 32 MiB, node_exporter's for reference).

Then hpcobs with every collector on a node with 8 fake GPUs (tests/fakes pynvml), 4 HCAs, a
Lustre 2.12+ client and an OST job_stats table of 1,000 jobs: its RSS after 20 scrapes
(target ≤ 40 MiB; node_exporter with its default collectors on this machine for reference).

The daemon is measured as installed: `pip install` compiles the package's modules to bytecode
(`__pycache__`), so the benchmark does the same first (`compileall`) rather than have each
daemon compile its sources at start-up, which leaves some of the compiler's memory resident
(0.2–0.3 MiB of the full node's RSS; where PYTHONDONTWRITEBYTECODE is set, as on the CI VM,
nothing else writes them).

The benchmark prints; it never fails the suite. HPCOBS_BENCH_NODE_SCRAPES sets SCRAPES.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sidebyside import (
    PROCFS_IB_FIXTURE,
    PROMETHEUS_HEADERS,
    Agent,
    build_full_node,
    cpu_seconds,
    fake_gpu_hpcobs,
    hpcobs_binary,
    node_exporter_binary,
    quantile,
    rss_mib,
)

SCRAPES = int(os.environ.get("HPCOBS_BENCH_NODE_SCRAPES", "600"))
BLOCK = 50
WARMUP = 50
CPU_TARGET = 0.9
P50_TARGET = 1.0
RSS_RDMA_TARGET_MIB = 32.0
RSS_FULL_TARGET_MIB = 40.0


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # seconds over all scrapes

    def p50(self) -> float:
        return quantile(self.latencies, 0.5)

    def cpu_per_scrape(self) -> float:
        return self.cpu / max(1, len(self.latencies))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def side_by_side(agents: list[Agent], new_connection: bool) -> dict[str, Figures]:
    figures = {a.name: Figures() for a in agents}
    for agent in agents:
        for _ in range(WARMUP):
            agent.scrape(PROMETHEUS_HEADERS, new_connection)
    for _ in range(max(1, SCRAPES // BLOCK)):
        for agent in agents:
            time.sleep(0.05)  # let the other server's threads go idle
            before = cpu_seconds(agent.pid)
            got = figures[agent.name]
            for _ in range(BLOCK):
                got.latencies.append(agent.scrape(PROMETHEUS_HEADERS, new_connection))
            got.cpu += cpu_seconds(agent.pid) - before
    return figures


def compare_rdma(label: str, sysfs: Path, work: Path) -> list[str]:
    """Both servers on `sysfs`; prints the table, returns the PASS/MISS lines."""
    agents = [
        Agent(
            "hpcobs",
            [
                hpcobs_binary(),
                f"--path.sysfs={sysfs}",
                "--collector.disable-defaults",
                "--collector.rdma",
            ],
            work / f"hpcobs-{label}.log",
        ),
        Agent(
            "node_exporter",
            [
                node_exporter_binary(),
                f"--path.sysfs={sysfs}",
                "--collector.disable-defaults",
                "--collector.infiniband",
            ],
            work / f"node_exporter-{label}.log",
        ),
    ]
    lines = []
    try:
        for agent in agents:
            agent.wait_ready()
        results = {
            "keep-alive": side_by_side(agents, new_connection=False),
            "new conn": side_by_side(agents, new_connection=True),
        }
        rss = {a.name: rss_mib(a.pid) for a in agents}
        series = {
            "hpcobs": sum(1 for x in agents[0].text().splitlines() if x.startswith("hpcobs_rdma_")),
            "node_exporter": sum(
                1 for x in agents[1].text().splitlines() if x.startswith("node_infiniband_")
            ),
        }
    finally:
        for agent in agents:
            agent.stop()

    print(
        f"\n[{label}] {sysfs}: {series['hpcobs']} hpcobs_rdma_* / {series['node_exporter']} "
        f"node_infiniband_* series; {SCRAPES} scrapes each per pattern, blocks of {BLOCK}"
    )
    print(
        f"{'pattern':<12}{'server':<15}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
        f"{'CPU ms/scrape':>15}"
    )
    for pattern, figures in results.items():
        for name, got in figures.items():
            print(
                f"{pattern:<12}{name:<15}{got.p50() * 1e3:9.3f}"
                f"{quantile(got.latencies, 0.99) * 1e3:9.3f}"
                f"{statistics.fmean(got.latencies) * 1e3:9.3f}{got.cpu_per_scrape() * 1e3:15.3f}"
            )
    for pattern, figures in results.items():
        ours, ref = figures["hpcobs"], figures["node_exporter"]
        cpu = ours.cpu_per_scrape() / ref.cpu_per_scrape()
        p50 = ours.p50() / ref.p50()
        lines.append(
            f"[{label}] {pattern:<10} CPU/scrape {cpu:5.2f}× node_exporter's "
            f"{ref.cpu_per_scrape() * 1e3:.3f} ms (target ≤ {CPU_TARGET}×) "
            f"{verdict(cpu <= CPU_TARGET)}"
        )
        lines.append(
            f"[{label}] {pattern:<10} p50        {p50:5.2f}× node_exporter's "
            f"{ref.p50() * 1e3:.3f} ms (target ≤ {P50_TARGET}×) {verdict(p50 <= P50_TARGET)}"
        )
    lines.append(
        f"[{label}] RSS rdma only {rss['hpcobs']:.1f} MiB = "
        f"{rss['hpcobs'] / rss['node_exporter']:.2f}× node_exporter's "
        f"{rss['node_exporter']:.1f} MiB (target ≤ {RSS_RDMA_TARGET_MIB:g} MiB) "
        f"{verdict(rss['hpcobs'] <= RSS_RDMA_TARGET_MIB)}"
    )
    return lines


def full_node_rss(work: Path) -> list[str]:
    flags = build_full_node(work / "node")
    agents = [
        Agent("hpcobs", [*fake_gpu_hpcobs(8), *flags], work / "hpcobs-full.log"),
        Agent("node_exporter", [node_exporter_binary()], work / "node_exporter-full.log"),
    ]
    try:
        for agent in agents:
            agent.wait_ready()
        for _ in range(20):
            for agent in agents:
                agent.scrape(PROMETHEUS_HEADERS)
        rss = {a.name: rss_mib(a.pid) for a in agents}
        up = sorted(
            line
            for line in agents[0].text().splitlines()
            if line.startswith("hpcobs_collector_up{")
        )
    finally:
        for agent in agents:
            agent.stop()
    print(f"\n[full node] 8 fake GPUs, 4 HCAs, Lustre client + 1,000 jobs: {', '.join(up)}")
    return [
        f"[full node] RSS every collector {rss['hpcobs']:.1f} MiB = "
        f"{rss['hpcobs'] / rss['node_exporter']:.2f}× node_exporter's {rss['node_exporter']:.1f} "
        f"MiB (its default collectors, this machine) (target ≤ {RSS_FULL_TARGET_MIB:g} MiB) "
        f"{verdict(rss['hpcobs'] <= RSS_FULL_TARGET_MIB)}"
    ]


def compile_as_installed() -> None:
    """Byte-compile the package, as `pip install` does (see the module docstring)."""
    import compileall

    repo = Path(__file__).resolve().parents[1]
    # and the fake pynvml, which stands in for the installed nvidia-ml-py
    for package in ("exporters", "slo", "tests/fakes"):
        compileall.compile_dir(repo / package, quiet=1)


def main() -> None:
    from harness.rdma import tree_builder

    compile_as_installed()

    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        work = Path(tmp)
        held_out = tree_builder().build_tree(work / "held-out" / "sys", hcas=4, ports=2, seed=16)
        lines = compare_rdma("held-out", held_out.sysfs, work)
        lines += compare_rdma("procfs", PROCFS_IB_FIXTURE, work)
        lines += full_node_rss(work)
    print("\nhpcobs / node_exporter, targets (issue 16 item 1):")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
