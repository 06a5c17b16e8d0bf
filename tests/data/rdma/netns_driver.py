"""Run the `rdma` collector inside a network namespace, driven over stdin/stdout.

    ip netns exec <ns> python netns_driver.py <sysfs tree>

tests/real/test_rdma_netns.py starts it so that the collector (and its netlink listener)
lives in the namespace the test made, while the test toggles interfaces from outside.
Commands, one per line; every answer is one JSON line:

    scrape        → {"samples": [[name, {labels}, value], ...]}
    send N IF     → {"sent": N}      N raw Ethernet frames out of interface IF (AF_PACKET)
    quit          → {"closed": true, "listener_alive": false}   then exit 0
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time

from hpcobs.exporters.collectors.rdma import RdmaCollector


def answer(doc: object) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def send_frames(count: int, ifname: str) -> int:
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"hpcobs-rdma-test".ljust(46)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for _ in range(count):
            sock.send(frame)
    return count


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    collector = RdmaCollector(sys.argv[1], netlink=True, rescan_interval=3600)
    collector.collect()  # construction reads nothing: the first scrape starts the listener
    monitor = collector._monitor
    if monitor is None or not monitor.wait_connected(10):
        answer({"error": "netlink listener did not connect"})
        return 1
    answer({"ready": True})
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "scrape":
            samples = [
                [s.name, s.labels, s.value]
                for family in collector.collect()
                for s in family.samples
            ]
            answer({"samples": samples, "time": time.time()})
        elif words[0] == "send":
            answer({"sent": send_frames(int(words[1]), words[2])})
        elif words[0] == "quit":
            collector.close()
            alive = any(t.name == "rdma-netlink" for t in threading.enumerate())
            answer({"closed": True, "listener_alive": alive})
            return 0
        else:
            answer({"error": f"unknown command {words[0]!r}"})
    collector.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
