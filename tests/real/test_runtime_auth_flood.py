"""A real `hpcobs-node-exporter` with basic auth (bcrypt cost 10) under a flood of distinct wrong
passwords from 40 clients: the scraper with the right password keeps being answered, fast."""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.runtime import ExporterProcess, basic_header
from harness.tls import bcrypt_hash

pytestmark = pytest.mark.real

PASSWORD = "correct horse battery"
FLOOD_PROCESSES = 4
FLOOD_THREADS = 10  # per process: 40 clients
GOOD_SCRAPES = 50

# Each thread is one client with its own address (127.0.0.<first + n>: all of 127/8 is loopback),
# keeps one connection and sends a new wrong password per request as fast as it is answered;
# it reconnects when the server closes. Prints {status: count} as JSON at the end.
FLOOD = r"""
import base64, collections, http.client, json, os, sys, threading, time
port, threads, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
first = int(sys.argv[4])
counts = collections.Counter()
lock = threading.Lock()
stop = time.monotonic() + seconds
def flood(n):
    conn, i, mine = None, 0, collections.Counter()
    while time.monotonic() < stop:
        i += 1
        token = base64.b64encode(f"prometheus:wrong-{os.getpid()}-{n}-{i}".encode()).decode()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(
                    "127.0.0.1", port, timeout=10, source_address=(f"127.0.0.{first + n}", 0)
                )
            conn.request("GET", "/metrics", headers={"Authorization": "Basic " + token})
            resp = conn.getresponse()
            resp.read()
            mine[str(resp.status)] += 1
            if resp.will_close:
                conn.close(); conn = None
        except OSError as exc:
            mine[type(exc).__name__] += 1
            if conn is not None:
                conn.close()
            conn = None
    with lock:
        counts.update(mine)
workers = [threading.Thread(target=flood, args=(n,)) for n in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print(json.dumps(counts))
"""


def good_scrape(conn: http.client.HTTPConnection) -> tuple[int, float]:
    started = time.perf_counter()
    conn.request("GET", "/metrics", headers=basic_header("prometheus", PASSWORD))
    resp = conn.getresponse()
    resp.read()
    return resp.status, time.perf_counter() - started


def test_wrong_password_flood_does_not_starve_scrapes(
    tmp_path: Path, exporter_factory: Callable[..., ExporterProcess]
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: {bcrypt_hash(PASSWORD, rounds=10)}\n")
    exporter = exporter_factory(
        "hpcobs-node-exporter", "--collector.disable-defaults", f"--web.config.file={web}"
    )
    # Prometheus scrapes (and so has its credentials verified) before the flood begins.
    conn = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=10)
    status, _ = good_scrape(conn)
    assert status == 200

    flood_seconds = 12.0
    floods = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                FLOOD,
                str(exporter.port),
                str(FLOOD_THREADS),
                str(flood_seconds),
                str(10 + i * FLOOD_THREADS),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(FLOOD_PROCESSES)
    ]
    try:
        time.sleep(1.5)  # the flood is under way
        results = []
        for _ in range(GOOD_SCRAPES):
            results.append(good_scrape(conn))
            time.sleep(0.1)
        outputs = [p.communicate(timeout=flood_seconds + 30)[0] for p in floods]
    finally:
        for p in floods:
            if p.poll() is None:
                p.kill()
                p.wait()
        conn.close()

    flood: dict[str, int] = {}
    for out in outputs:
        for key, count in json.loads(out).items():
            flood[key] = flood.get(key, 0) + count
    statuses = [status for status, _ in results]
    latencies = sorted(seconds for _, seconds in results)
    p50 = statistics.median(latencies)
    print(f"flood {flood}; good p50 {p50 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")

    # The scraper whose credentials were verified was answered every time, and fast.
    assert statuses == [200] * GOOD_SCRAPES, statuses
    assert p50 <= 0.100, f"p50 {p50 * 1000:.1f} ms, latencies {latencies}"
    # The flood happened: bcrypt said no to some (at most each address' budget), the per-address
    # budget or the busy verifiers stopped the rest.
    assert flood.get("401", 0) > 0 and flood.get("429", 0) > 1000, flood
    assert "200" not in flood and "503" not in flood, flood

    log = exporter.process.log_path.read_text() if exporter.process is not None else ""
    failures = [line for line in log.splitlines() if "basic auth failures" in line]
    assert 1 <= len(failures) <= 3, failures  # rate-limited, not one line per request
    assert "wrong-" not in log  # never the password
