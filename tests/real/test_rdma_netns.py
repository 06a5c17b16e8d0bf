"""The `rdma` collector's netlink path on real kernel interfaces.

The test makes a network namespace with a veth pair, points the collector (running inside
the namespace, tests/data/rdma/netns_driver.py under `ip netns exec`) at a sysfs tree whose
RoCE port maps to one end of the pair, toggles the other end down and up several times
faster than a scrape interval, and checks the flap counter, carrier_changes and the netdev
statistics against the kernel's own `/sys/class/net/<if>/statistics` in that namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.rdma import tree_builder

pytestmark = pytest.mark.real

DATA = Path(__file__).resolve().parents[1] / "data" / "rdma"
NETDEV = "enp0s0f0"  # what the built tree's RoCE port 1 of device 0 names in gid_attrs/ndevs
PEER = "peer0"
TOGGLES = 5
SCRAPE_INTERVAL = 1.0  # the toggles must all happen within one interval between two scrapes

# /sys/class/net/<if>/statistics/<file> → hpcobs metric (written down here, not taken from
# the collector)
STATISTICS = {
    "rx_packets": "hpcobs_rdma_netdev_receive_packets_total",
    "tx_packets": "hpcobs_rdma_netdev_transmit_packets_total",
    "rx_bytes": "hpcobs_rdma_netdev_receive_bytes_total",
    "tx_bytes": "hpcobs_rdma_netdev_transmit_bytes_total",
    "rx_errors": "hpcobs_rdma_netdev_receive_errors_total",
    "tx_errors": "hpcobs_rdma_netdev_transmit_errors_total",
    "rx_dropped": "hpcobs_rdma_netdev_receive_dropped_total",
    "tx_dropped": "hpcobs_rdma_netdev_transmit_dropped_total",
    "multicast": "hpcobs_rdma_netdev_receive_multicast_packets_total",
    "collisions": "hpcobs_rdma_netdev_collisions_total",
    "rx_length_errors": "hpcobs_rdma_netdev_receive_length_errors_total",
    "rx_over_errors": "hpcobs_rdma_netdev_receive_over_errors_total",
    "rx_crc_errors": "hpcobs_rdma_netdev_receive_crc_errors_total",
    "rx_frame_errors": "hpcobs_rdma_netdev_receive_frame_errors_total",
    "rx_fifo_errors": "hpcobs_rdma_netdev_receive_fifo_errors_total",
    "rx_missed_errors": "hpcobs_rdma_netdev_receive_missed_errors_total",
    "tx_aborted_errors": "hpcobs_rdma_netdev_transmit_aborted_errors_total",
    "tx_carrier_errors": "hpcobs_rdma_netdev_transmit_carrier_errors_total",
    "tx_fifo_errors": "hpcobs_rdma_netdev_transmit_fifo_errors_total",
    "tx_heartbeat_errors": "hpcobs_rdma_netdev_transmit_heartbeat_errors_total",
    "tx_window_errors": "hpcobs_rdma_netdev_transmit_window_errors_total",
    "rx_compressed": "hpcobs_rdma_netdev_receive_compressed_packets_total",
    "tx_compressed": "hpcobs_rdma_netdev_transmit_compressed_packets_total",
}


def run(*argv: str, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with IPv6 off (no background traffic) and an up veth pair."""
    name = f"hpcobs-rdma-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    run("ip", "netns", "add", name)
    try:
        run(
            "ip", "netns", "exec", name, "sh", "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
        )  # fmt: skip
        run("ip", "-n", name, "link", "add", NETDEV, "type", "veth", "peer", "name", PEER)
        run("ip", "-n", name, "link", "set", NETDEV, "up")
        run("ip", "-n", name, "link", "set", PEER, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


class Driver:
    """The collector in the namespace, one JSON line per command."""

    def __init__(self, netns: str, sysfs: Path, log: Path) -> None:
        self.log = log
        self.stderr = log.open("wb")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                str(DATA / "netns_driver.py"),
                str(sysfs),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            start_new_session=True,
        )

    def read(self, timeout: float = 20.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            pytest.fail(f"collector driver gave no answer; log:\n{self.log.read_text()[-3000:]}")
        doc: dict[str, Any] = json.loads(line)
        if "error" in doc:
            pytest.fail(f"collector driver: {doc['error']}; log:\n{self.log.read_text()[-3000:]}")
        return doc

    def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()

    def scrape(self) -> dict[tuple[str, str], float]:
        """(metric, netdev) → value for the netdev series; (metric, "") for the others."""
        out = {}
        for name, labels, value in self.command("scrape")["samples"]:
            out[(name, labels.get("netdev", ""))] = value
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self.stderr.close()


def sysfs_statistics(netns: str, ifname: str) -> dict[str, int]:
    """The kernel's counters as `/sys/class/net/<if>/statistics/*` shows them in `netns`."""
    text = run(
        "ip", "netns", "exec", netns, "sh", "-c",
        f"cd /sys/class/net/{ifname}/statistics && for f in *; do echo \"$f $(cat $f)\"; done",
    )  # fmt: skip
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


def test_flaps_between_scrapes_and_netdev_statistics(netns: str, tmp_path: Path) -> None:
    trees = tree_builder()
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=2, roce=True)
    assert tree.netdevs[("mlx5_0", "1")] == (NETDEV,)
    driver = Driver(netns, tree.sysfs, tmp_path / "driver.log")
    try:
        assert driver.read()["ready"]
        before = driver.scrape()
        assert before[("hpcobs_rdma_netlink_up", "")] == 1
        flaps0 = before[("hpcobs_rdma_netdev_link_flaps_total", NETDEV)]
        changes0 = before[("hpcobs_rdma_netdev_carrier_changes_total", NETDEV)]
        assert before[("hpcobs_rdma_netdev_carrier", NETDEV)] == 1
        # port 2's netdev (enp0s0f1) does not exist in the namespace: sysfs series only
        assert ("hpcobs_rdma_netdev_up", "enp0s0f1") not in before

        # N down/up toggles of the peer, all well inside one scrape interval
        started = time.monotonic()
        run(
            "ip",
            "-n",
            netns,
            "-batch",
            "-",
            stdin=f"link set {PEER} down\nlink set {PEER} up\n" * TOGGLES,
        )
        took = time.monotonic() - started
        assert took < SCRAPE_INTERVAL, f"toggling took {took:.2f}s"
        time.sleep(SCRAPE_INTERVAL - took)

        deadline = time.monotonic() + 10
        while True:
            after = driver.scrape()
            flaps = after[("hpcobs_rdma_netdev_link_flaps_total", NETDEV)]
            if flaps >= flaps0 + TOGGLES or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert flaps == flaps0 + TOGGLES
        # the kernel counts both directions of each toggle
        assert after[("hpcobs_rdma_netdev_carrier_changes_total", NETDEV)] == changes0 + 2 * TOGGLES
        time.sleep(0.3)  # nothing more arrives later
        assert driver.scrape()[("hpcobs_rdma_netdev_link_flaps_total", NETDEV)] == flaps

        # Traffic the kernel counts, then the statistics against sysfs
        deadline = time.monotonic() + 5
        while driver.scrape()[("hpcobs_rdma_netdev_carrier", NETDEV)] != 1:
            assert time.monotonic() < deadline, "carrier did not come back"
            time.sleep(0.05)
        assert driver.command(f"send 7 {NETDEV}")["sent"] == 7
        assert driver.command(f"send 3 {PEER}")["sent"] == 3
        kernel = sysfs_statistics(netns, NETDEV)
        got = driver.scrape()
        assert sysfs_statistics(netns, NETDEV) == kernel, "background traffic in the namespace"
        assert kernel["tx_packets"] >= 7 and kernel["rx_packets"] >= 3
        for stat, metric in STATISTICS.items():
            assert got[(metric, NETDEV)] == kernel[stat], stat
        assert got[("hpcobs_rdma_netdev_up", NETDEV)] == 1

        closed = driver.command("quit")
        assert closed == {"closed": True, "listener_alive": False}
        assert driver.proc.wait(10) == 0
    finally:
        driver.stop()


def test_daemon_serves_netdev_metrics_and_stops_cleanly(
    exporter_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """hpcobs-node-exporter with the listener running: served over HTTP, SIGTERM ends it."""
    trees = tree_builder()
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1, roce=True)
    (tree.ib("mlx5_0", "ports", "1", "gid_attrs", "ndevs", "0")).write_text("lo\n")
    (tree.ib("mlx5_0", "ports", "1", "gid_attrs", "ndevs", "1")).write_text("lo\n")
    daemon = exporter_factory(
        "hpcobs-node-exporter",
        f"--path.sysfs={tree.sysfs}",
        "--collector.disable-defaults",
        "--collector.rdma",
    )
    text = daemon.scrape()
    got = {
        (s.name, s.labels.get("netdev", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert got[("hpcobs_collector_up", "")] == 1
    assert got[("hpcobs_rdma_netlink_up", "")] == 1
    assert got[("hpcobs_rdma_netdev_link_flaps_total", "lo")] == 0
    assert got[("hpcobs_rdma_netdev_receive_packets_total", "lo")] >= 0
    assert ("hpcobs_rdma_port_transmit_bytes_total", "") in got
    started = time.monotonic()
    assert daemon.stop() == 0  # SIGTERM: closes the collector, joins the netlink thread
    assert time.monotonic() - started < 3
