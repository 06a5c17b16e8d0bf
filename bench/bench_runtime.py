"""Runtime overhead: scrape latency (p50/p99 over 1,000 scrapes) of an exporter process whose
only collector is trivial, over plain HTTP and over HTTPS with basic auth, and its RSS.

The server runs in its own process (this file, in server mode), the client scrapes it over a
keep-alive connection on loopback, as Prometheus does.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SCRAPES = 1000


def serve(port: int, web_config: str) -> None:
    from prometheus_client.metrics_core import Metric

    from hpcobs.exporters.runtime.collector import Collector
    from hpcobs.exporters.runtime.metricdef import MetricDef
    from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
    from hpcobs.exporters.runtime.server import ExporterServer
    from hpcobs.exporters.runtime.webconfig import load_web_config
    from hpcobs.exporters.version import build_info

    value = MetricDef("hpcobs_bench_value", "gauge", "Trivial.", ("i",))

    class Trivial(Collector):
        name = "trivial"

        def collect(self) -> Iterator[Metric]:
            family = value.gauge()
            for i in range(10):
                family.add_metric([str(i)], float(i))
            yield family

    coordinator = ScrapeCoordinator([Trivial()], timeout=10.0)
    server = ExporterServer(
        ("127.0.0.1", port),
        program="bench",
        version="bench",
        coordinator=coordinator,
        extra=[build_info],
        web=load_web_config(web_config or None),
    )
    server.serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    label: str, web_config: str, context: ssl.SSLContext | None, headers: dict[str, str]
) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), web_config], env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("bench server did not start") from None
                time.sleep(0.05)
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection("127.0.0.1", port, context=context)
            if context
            else http.client.HTTPConnection("127.0.0.1", port)
        )
        for _ in range(20):  # warm-up (and the one bcrypt check, then cached)
            conn.request("GET", "/metrics", headers=headers)
            conn.getresponse().read()
        cpu0 = cpu_seconds(proc.pid)
        times = []
        for _ in range(SCRAPES):
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers=headers)
            resp = conn.getresponse()
            resp.read()
            times.append(time.perf_counter() - t0)
            assert resp.status == 200, resp.status
        cpu = cpu_seconds(proc.pid) - cpu0
        times.sort()
        p50 = statistics.median(times)
        p99 = times[int(0.99 * len(times)) - 1]
        print(
            f"runtime {label:<22} scrapes={SCRAPES} p50={p50 * 1e3:.3f} ms p99={p99 * 1e3:.3f} ms "
            f"server_cpu_per_scrape={cpu / SCRAPES * 1e3:.3f} ms rss={rss_bytes(proc.pid) / 2**20:.1f} MiB"
        )
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    run("http", "", None, {})
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from harness.tls import bcrypt_hash, make_tls_material

    with tempfile.TemporaryDirectory() as tmp:
        tls = make_tls_material(Path(tmp))
        web = Path(tmp) / "web.yml"
        web.write_text(
            f"tls_server_config:\n  cert_file: {tls.server_cert}\n  key_file: {tls.server_key}\n"
            f"basic_auth_users:\n  bench: {bcrypt_hash('pw', rounds=10)}\n"
        )
        token = base64.b64encode(b"bench:pw").decode()
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        run("https+basic_auth", str(web), context, {"Authorization": f"Basic {token}"})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
    else:
        main()
