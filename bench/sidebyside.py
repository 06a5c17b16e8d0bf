"""Helpers of the side-by-side benchmarks (bench_node.py, bench_noise.py): real exporter
processes on 127.0.0.1, scraped as Prometheus scrapes, and the node trees they read.

Not a benchmark itself (bench/run.py runs only bench_*.py).
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"
FIXTURES = TESTS / "data" / "fixtures"
PROCFS_IB_FIXTURE = FIXTURES / "sysfs-infiniband-procfs" / "sys"
FAKE_GPU_LAUNCHER = HERE / "fake_gpu_node.py"
TICKS = os.sysconf("SC_CLK_TCK")

# What Prometheus 2.42 (Debian 12's) sends with every scrape.
PROMETHEUS_HEADERS = {
    "Accept": (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ),
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}

if str(TESTS) not in sys.path:  # harness.* and fakes.* as the tests import them
    sys.path.insert(0, str(TESTS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    """VmRSS of a process, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def node_exporter_binary() -> str:
    found = shutil.which("prometheus-node-exporter")
    if found is None:
        raise RuntimeError("prometheus-node-exporter not found (scripts/bootstrap.sh installs it)")
    return found


def hpcobs_binary() -> str:
    path = Path(sys.executable).parent / "hpcobs-node-exporter"
    if not path.exists():
        raise RuntimeError(f"{path} not found (pip install -e . in the venv)")
    return str(path)


def fake_gpu_hpcobs(gpus: int) -> list[str]:
    """hpcobs-node-exporter with `gpus` fake GPUs at the pynvml boundary (tests/fakes)."""
    return [sys.executable, str(FAKE_GPU_LAUNCHER), str(gpus)]


class Agent:
    """An exporter process listening on a free 127.0.0.1 port, and a scraping client."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [*argv, f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.conn: http.client.HTTPConnection | None = None
        self.body = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                self.scrape()
                return
            except OSError:
                self.close_connection()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def scrape(self, headers: dict[str, str] | None = None, new_connection: bool = False) -> float:
        """One GET of /metrics; seconds from sending to the last byte read. With
        `new_connection` the TCP connection is made for this scrape and closed after it."""
        if new_connection:
            self.close_connection()
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        started = time.perf_counter()
        if new_connection:
            self.conn.connect()
        self.conn.request("GET", "/metrics", headers=headers or {})
        response = self.conn.getresponse()
        self.body = response.read()
        took = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{self.name}: HTTP {response.status}")
        if new_connection:
            self.close_connection()
        return took

    def text(self) -> str:
        """The last scrape's exposition (gunzipped)."""
        body = self.body
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        return body.decode()

    def close_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def stop(self) -> None:
        self.close_connection()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def lustre_job_ids(count: int) -> dict[str, tuple[int, int]]:
    return {f"{1000000 + i}": (4096 * (i + 1), 8192 * (i % 7)) for i in range(count)}


def build_full_node(root: Path, *, hcas: int = 4, jobs: int = 1000, seed: int = 16) -> list[str]:
    """A node tree under `root`: `hcas` HCAs × 2 ports (mlx5-like), a Lustre 2.12+ client, and
    an OST's job_stats with `jobs` jobs (the lustre collector's largest table). Returns the
    node daemon's flags for every collector on it (gpus come from the fake)."""
    from harness.lustre_trees import build_client_212, build_server_212
    from harness.rdma import tree_builder

    tree_builder().build_tree(root / "sys", hcas=hcas, ports=2, seed=seed)
    build_client_212(root)
    build_server_212(root, {"scratch-OST0000": lustre_job_ids(jobs)})
    (root / "gpu-jobs").mkdir(parents=True, exist_ok=True)  # dcgm-style job mapping: none
    return [
        f"--path.sysfs={root / 'sys'}",
        f"--path.procfs={root / 'proc'}",
        "--collector.lustre.lctl-path=",
        f"--collector.gpu.job-mapping-dir={root / 'gpu-jobs'}",
    ]
