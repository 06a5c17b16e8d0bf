"""`rdma` scrape latency: hpcobs-node-exporter (only `rdma`) vs node_exporter (only `infiniband`).

Both real HTTP servers read the same generated tree of 4 HCAs × 2 ports (mlx5-like: 21 PMA
counters and 30 driver counters per port) and are scraped side by side over keep-alive
connections on loopback, 500 times each, in alternating blocks of 50 (one scrape each in turn
would let node_exporter's Go runtime, still spinning after its answer, compete with the next
hpcobs scrape for the CPU, and the reverse; blocks still spread any drift of the machine's load
over both). Printed: p50/p99/mean latency, the
hpcobs/node_exporter ratio (target ≤ 1.0×), and each server's CPU seconds per scrape (from
/proc/<pid>/stat). Then the collector alone, in-process, and the text encoding of its samples
by the runtime's encoder and by prometheus_client's. The collection is also split into its
two layers: the source's scan (sysfs reads → model) and the mapping (model → families).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
TREE_BUILDER = HERE.parent / "tests" / "data" / "rdma" / "sysfs_tree.py"
SCRAPES = 500
BLOCK = 50  # scrapes in a row of one server before switching to the other
WARMUP = 30
TICKS = os.sysconf("SC_CLK_TCK")


def _load_tree_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rdma_sysfs_tree", TREE_BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Server:
    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [*argv, f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.conn: http.client.HTTPConnection | None = None
        self.latencies: list[float] = []
        self.body = b""

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.scrape()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def scrape(self) -> float:
        assert self.conn is not None
        started = time.perf_counter()
        self.conn.request("GET", "/metrics")
        response = self.conn.getresponse()
        self.body = response.read()
        took = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{self.name}: HTTP {response.status}")
        return took

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def series(body: bytes, prefix: bytes) -> int:
    return sum(1 for line in body.splitlines() if line.startswith(prefix))


def in_process(sysfs: Path) -> None:
    """The collector alone (reading + samples) and the text encoders, without HTTP."""
    from prometheus_client.exposition import generate_latest

    from hpcobs.exporters.collectors.rdma import LabelMemo, RdmaCollector, to_families
    from hpcobs.exporters.runtime.exposition import choose_encoder

    encoder, _ = choose_encoder("")
    collector = RdmaCollector(str(sysfs), netlink=False)
    try:
        families = list(collector.collect())

        class Registry:
            def collect(self):  # type: ignore[no-untyped-def]
                return iter(families)

        def per_call(fn, runs: int = 60, repeats: int = 7) -> float:  # type: ignore[no-untyped-def]
            """Milliseconds per call: the best of `repeats` runs (the machine's load only adds)."""
            fn()
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                for _ in range(runs):
                    fn()
                best = min(best, time.perf_counter() - started)
            return best / runs * 1e3

        collect = per_call(lambda: list(collector.collect()))
        scan = collector.source.scan()
        assert scan is not None
        memo = LabelMemo()
        read = per_call(collector.source.scan)
        mapping = per_call(lambda: list(to_families(scan, memo)))
        ours = per_call(lambda: encoder(Registry()))
        upstream = per_call(lambda: generate_latest(Registry()))
    finally:
        collector.close()
    samples = sum(len(f.samples) for f in families)
    print(
        f"in-process ({samples} samples): collect {collect:.2f} ms (source scan {read:.2f} ms, "
        f"mapping to families {mapping:.2f} ms); text encoding "
        f"{ours:.2f} ms (runtime encoder), {upstream:.2f} ms (prometheus_client's)"
    )


def main() -> None:
    node_exporter = shutil.which("prometheus-node-exporter")
    hpcobs = Path(sys.executable).parent / "hpcobs-node-exporter"
    if node_exporter is None:
        raise RuntimeError("prometheus-node-exporter not found (scripts/bootstrap.sh installs it)")
    if not hpcobs.exists():
        raise RuntimeError(f"{hpcobs} not found (pip install -e . in the venv)")
    with tempfile.TemporaryDirectory(prefix="bench-rdma-") as tmp:
        work = Path(tmp)
        tree = _load_tree_builder().build_tree(work / "sys", hcas=4, ports=2)
        servers = [
            Server(
                "hpcobs",
                [
                    str(hpcobs),
                    f"--path.sysfs={tree.sysfs}",
                    "--collector.disable-defaults",
                    "--collector.rdma",
                    "--log.level=warn",
                ],
                work / "hpcobs.log",
            ),
            Server(
                "node_exporter",
                [
                    node_exporter,
                    f"--path.sysfs={tree.sysfs}",
                    "--collector.disable-defaults",
                    "--collector.infiniband",
                    "--log.level=warn",
                ],
                work / "node_exporter.log",
            ),
        ]
        try:
            for server in servers:
                server.wait_ready()
            for _ in range(WARMUP):
                for server in servers:
                    server.scrape()
            cpu = dict.fromkeys((s.name for s in servers), 0.0)
            for _ in range(SCRAPES // BLOCK):
                for server in servers:
                    time.sleep(0.05)  # let the other server's threads go idle
                    before = cpu_seconds(server.proc.pid)
                    for _ in range(BLOCK):
                        server.latencies.append(server.scrape())
                    cpu[server.name] += cpu_seconds(server.proc.pid) - before
            cpu = {name: seconds / SCRAPES for name, seconds in cpu.items()}
        finally:
            for server in servers:
                server.stop()

        print(
            f"tree: {len(tree.devices)} HCAs x 2 ports; {SCRAPES} scrapes each in alternating "
            f"blocks of {BLOCK}, keep-alive, loopback"
        )
        print(f"{'':16}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'CPU ms/scrape':>15}{'series':>8}")
        for server in servers:
            lat = server.latencies
            prefix = b"hpcobs_rdma_" if server.name == "hpcobs" else b"node_infiniband_"
            print(
                f"{server.name:16}{quantile(lat, 0.5) * 1e3:9.2f}{quantile(lat, 0.99) * 1e3:9.2f}"
                f"{statistics.fmean(lat) * 1e3:9.2f}{cpu[server.name] * 1e3:15.3f}"
                f"{series(server.body, prefix):8d}"
            )
        ours, theirs = servers[0].latencies, servers[1].latencies
        p50 = quantile(ours, 0.5) / quantile(theirs, 0.5)
        p99 = quantile(ours, 0.99) / quantile(theirs, 0.99)
        verdict = "meets" if p50 <= 1.0 else "MISSES"
        print(
            f"ratio hpcobs/node_exporter: p50 {p50:.2f}x, p99 {p99:.2f}x ({verdict} the ≤ 1.0x target)"
        )
        print(
            f"CPU seconds per scrape: hpcobs {cpu['hpcobs']:.6f}, "
            f"node_exporter {cpu['node_exporter']:.6f}"
        )
        in_process(tree.sysfs)


if __name__ == "__main__":
    main()
