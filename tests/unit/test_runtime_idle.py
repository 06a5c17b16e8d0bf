"""Between scrapes the daemon sleeps (issue 16 item 2): no thread of an idle exporter wakes up
on a timer, and shutdown (a call or SIGTERM) still takes effect at once."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
from hpcobs.exporters.runtime.server import ExporterServer

from harness.collectors import StaticCollector
from harness.servers import free_port

pytestmark = pytest.mark.unit

FIXTURE_SYSFS = Path(__file__).resolve().parents[1] / "data/fixtures/sysfs-infiniband-procfs/sys"


def switches(pid: int, tid: int | None = None) -> int:
    """Context switches (voluntary + involuntary) of a thread, or of all a process' threads."""
    tids = [tid] if tid is not None else [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    total = 0
    for t in tids:
        try:
            status = Path(f"/proc/{pid}/task/{t}/status").read_text()
        except OSError:  # a thread that just ended
            continue
        total += sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line
        )
    return total


def test_the_accepting_loop_sleeps_until_a_connection_or_shutdown() -> None:
    coord = ScrapeCoordinator([StaticCollector()], timeout=2.0)
    server = ExporterServer(("127.0.0.1", 0), program="t", version="t", coordinator=coord)
    tid: list[int] = []

    def serve() -> None:
        tid.append(threading.get_native_id())
        server.serve_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
        conn.close()
        time.sleep(0.2)
        before = switches(os.getpid(), tid[0])
        time.sleep(1.0)
        # socketserver's loop (poll_interval 0.5 s; the daemon used 0.2 s) would wake 2-5 times
        assert switches(os.getpid(), tid[0]) - before <= 1
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 2.0
        thread.join(5)
        assert not thread.is_alive()
    finally:
        server.server_close()
        coord.close()


def test_shutdown_right_after_start_returns() -> None:
    coord = ScrapeCoordinator([StaticCollector()], timeout=2.0)
    server = ExporterServer(("127.0.0.1", 0), program="t", version="t", coordinator=coord)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.shutdown()
    thread.join(5)
    assert not thread.is_alive()
    server.server_close()
    coord.close()


def test_an_idle_daemon_does_not_wake_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpcobs.exporters.node",
            "--collector.disable-defaults",
            "--collector.rdma",
            "--no-collector.rdma.netlink",
            f"--path.sysfs={FIXTURE_SYSFS}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the daemon did not start listening"
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):
            conn.request("GET", "/metrics")
            assert conn.getresponse().read().count(b'hpcobs_collector_up{collector="rdma"} 1.0')
        conn.close()
        time.sleep(0.3)
        before = switches(proc.pid)
        time.sleep(1.5)
        assert switches(proc.pid) - before <= 2  # every thread asleep between scrapes
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 3.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_a_new_connection_per_scrape_reuses_the_waiting_connection_thread() -> None:
    """No thread start per scrape for a client that connects anew each time; closing the
    server ends the threads that wait for a connection."""
    from harness.collectors import wait_until

    coord = ScrapeCoordinator([StaticCollector()], timeout=2.0)
    server = ExporterServer(("127.0.0.1", 0), program="t", version="t", coordinator=coord)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def connection_threads() -> set[int]:
        return {
            t.ident or 0
            for t in threading.enumerate()
            if t.name.startswith("http-") and "process_request_thread" in t.name
        }

    others = connection_threads()  # other servers' (other tests'), left alone
    seen: set[int] = set()
    try:
        for _ in range(10):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200 and b"hpcobs_test_value" in response.read()
            seen |= connection_threads() - others
            conn.close()
            assert wait_until(lambda: server.connections == 0)
        assert len(seen) <= 2  # one, or two when a close overlapped the next connect
    finally:
        server.shutdown()
        server.server_close()
        coord.close()
    assert wait_until(lambda: not connection_threads() & seen, timeout=5)
