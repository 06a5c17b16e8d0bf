"""The `rdma` collector on real and built sysfs trees: values, layouts, faults, netdevs."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric

from hpcobs.exporters.collectors import discover, rdma
from hpcobs.exporters.collectors.rdma import SPEC, RdmaCollector
from hpcobs.exporters.runtime.app import build_parser
from hpcobs.exporters.runtime.cli import parse_args
from hpcobs.exporters.runtime.collector import Services
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
from hpcobs.exporters.sources import rdma as rdma_source
from hpcobs.exporters.sources.netlink import FlapCounter, Link, NetlinkUnavailableError

from harness.collectors import wait_until
from harness.rdma import tree_builder
from harness.trees import copy_tree

pytestmark = pytest.mark.unit


trees = tree_builder()

# counters/ file → hpcobs metric and factor, written down independently of the collector
# (CONVENTIONS.md names the first ones; the others follow the same pattern).
EXPECTED_COUNTERS = {
    "port_rcv_data": ("hpcobs_rdma_port_receive_bytes_total", 4),
    "port_xmit_data": ("hpcobs_rdma_port_transmit_bytes_total", 4),
    "link_downed": ("hpcobs_rdma_port_link_downed_total", 1),
    "symbol_error": ("hpcobs_rdma_port_symbol_errors_total", 1),
    "link_error_recovery": ("hpcobs_rdma_port_link_error_recovery_total", 1),
    "port_rcv_errors": ("hpcobs_rdma_port_receive_errors_total", 1),
    "port_xmit_discards": ("hpcobs_rdma_port_transmit_discards_total", 1),
    "port_xmit_wait": ("hpcobs_rdma_port_transmit_wait_total", 1),
    "port_rcv_packets": ("hpcobs_rdma_port_receive_packets_total", 1),
    "port_xmit_packets": ("hpcobs_rdma_port_transmit_packets_total", 1),
    "unicast_rcv_packets": ("hpcobs_rdma_port_unicast_receive_packets_total", 1),
    "unicast_xmit_packets": ("hpcobs_rdma_port_unicast_transmit_packets_total", 1),
    "multicast_rcv_packets": ("hpcobs_rdma_port_multicast_receive_packets_total", 1),
    "multicast_xmit_packets": ("hpcobs_rdma_port_multicast_transmit_packets_total", 1),
    "port_rcv_remote_physical_errors": (
        "hpcobs_rdma_port_receive_remote_physical_errors_total",
        1,
    ),
    "port_rcv_switch_relay_errors": ("hpcobs_rdma_port_receive_switch_relay_errors_total", 1),
    "port_rcv_constraint_errors": ("hpcobs_rdma_port_receive_constraint_errors_total", 1),
    "port_xmit_constraint_errors": ("hpcobs_rdma_port_transmit_constraint_errors_total", 1),
    "local_link_integrity_errors": ("hpcobs_rdma_port_local_link_integrity_errors_total", 1),
    "excessive_buffer_overrun_errors": (
        "hpcobs_rdma_port_excessive_buffer_overrun_errors_total",
        1,
    ),
    "VL15_dropped": ("hpcobs_rdma_port_vl15_dropped_total", 1),
}

Key = tuple[str, frozenset[tuple[str, str]]]


def samples(metrics: Iterable[Metric]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for family in metrics:
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def key(name: str, **labels: str) -> Key:
    return (name, frozenset(labels.items()))


def names(metrics: dict[Key, float]) -> set[str]:
    return {name for name, _ in metrics}


def ports_of(sysfs: Path) -> Iterator[tuple[str, str, Path]]:
    for dev in sorted((sysfs / "class" / "infiniband").iterdir()):
        for port in sorted((dev / "ports").iterdir()):
            yield dev.name, port.name, port


@pytest.fixture
def fixture_sysfs(fixture_trees: Path, tmp_path: Path) -> Path:
    """A writable copy of the real-format tree of the Prometheus procfs project."""
    return copy_tree(fixture_trees / "sysfs-infiniband-procfs" / "sys", tmp_path / "sys")


@pytest.fixture
def collectors() -> Iterator[list[RdmaCollector]]:
    made: list[RdmaCollector] = []
    yield made
    for c in made:
        c.close()


def make(made: list[RdmaCollector], sysfs: Path, **kwargs: Any) -> RdmaCollector:
    kwargs.setdefault("netlink", False)
    kwargs.setdefault("layout_check_interval", 0.0)  # see every change at the next scrape
    collector = RdmaCollector(str(sysfs), **kwargs)
    made.append(collector)
    return collector


# -- the real fixture tree -------------------------------------------------------------------


def test_fixture_tree_every_counter_file_has_its_value(
    fixture_sysfs: Path, collectors: list[RdmaCollector]
) -> None:
    got = samples(make(collectors, fixture_sysfs).collect())
    seen_ports = 0
    for dev, port, path in ports_of(fixture_sysfs):
        seen_ports += 1
        for file in sorted((path / "counters").iterdir()):
            raw = int(file.read_text())
            if file.name in EXPECTED_COUNTERS:
                metric, factor = EXPECTED_COUNTERS[file.name]
                assert got[key(metric, device=dev, port=port)] == raw * factor, file
            else:
                counter_key = key(
                    "hpcobs_rdma_port_counter_total", device=dev, port=port, counter=file.name
                )
                assert got[counter_key] == raw, file
        state_id = int((path / "state").read_text().split(":")[0])
        phys_id = int((path / "phys_state").read_text().split(":")[0])
        gbits = float((path / "rate").read_text().split()[0])
        assert got[key("hpcobs_rdma_port_state", device=dev, port=port)] == state_id
        assert got[key("hpcobs_rdma_port_physical_state", device=dev, port=port)] == phys_id
        assert got[key("hpcobs_rdma_port_rate_bytes_per_second", device=dev, port=port)] == (
            gbits * 1e9 / 8
        )
        layer = (path / "link_layer").read_text().strip()
        assert got[key("hpcobs_rdma_port_info", device=dev, port=port, link_layer=layer)] == 1
    assert seen_ports == 4


def test_fixture_tree_hw_counters_and_device_info(
    fixture_sysfs: Path, collectors: list[RdmaCollector]
) -> None:
    got = samples(make(collectors, fixture_sysfs).collect())
    hw = fixture_sysfs / "class/infiniband/mlx5_0/ports/1/hw_counters"
    for file in hw.iterdir():
        hw_key = key("hpcobs_rdma_hw_counters_total", device="mlx5_0", port="1", counter=file.name)
        if file.name == "lifespan":  # the driver's cache time, not a counter
            assert hw_key not in got
            lifespan_key = key(
                "hpcobs_rdma_hw_counters_lifespan_seconds", device="mlx5_0", port="1"
            )
            assert got[lifespan_key] == int(file.read_text()) / 1000
        else:
            assert got[hw_key] == int(file.read_text())
    assert (
        got[
            key(
                "hpcobs_rdma_device_info",
                device="mlx5_0",
                firmware_version="14.28.2006",
                board_id="SM_2001000001034",
                hca_type="MT4118",
                node_guid="0a7f:bc12:45ef:d23b",
            )
        ]
        == 1
    )
    # hfi1 (Omni-Path) has no hca_type nor node_guid file
    hfi1 = [k for k in got if k[0] == "hpcobs_rdma_device_info" and ("device", "hfi1_0") in k[1]]
    assert len(hfi1) == 1
    labels = dict(hfi1[0][1])
    assert labels["hca_type"] == "" and labels["node_guid"] == ""
    assert labels["board_id"].startswith("HPE 100Gb 1-port OP101")
    # no netdevs on this tree: no netlink series at all
    assert not any(n.startswith("hpcobs_rdma_netdev") for n in names(got))


# -- built trees ------------------------------------------------------------------------------


def test_four_hcas_two_ports(tmp_path: Path, collectors: list[RdmaCollector]) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=4, ports=2)
    got = samples(make(collectors, tree.sysfs).collect())
    assert len(tree.ports) == 8
    for (dev, port), values in tree.ports.items():
        for file, raw in values.items():
            metric, factor = EXPECTED_COUNTERS[file]
            assert got[key(metric, device=dev, port=port)] == raw * factor
        for file, raw in tree.hw[(dev, port)].items():
            if file != "lifespan":
                counter_key = key(
                    "hpcobs_rdma_hw_counters_total", device=dev, port=port, counter=file
                )
                assert got[counter_key] == raw
        assert got[key("hpcobs_rdma_port_rate_bytes_per_second", device=dev, port=port)] == 25e9
    info = [k for k in got if k[0] == "hpcobs_rdma_device_info"]
    assert sorted(dict(k[1])["device"] for k in info) == tree.devices


def test_open_descriptors_and_per_read_opens_agree(
    tmp_path: Path, collectors: list[RdmaCollector]
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=2)
    kept = make(collectors, tree.sysfs)
    per_read = make(collectors, tree.sysfs, max_open_files=0)
    limited = make(collectors, tree.sysfs, max_open_files=7)
    assert samples(kept.collect()) == samples(per_read.collect()) == samples(limited.collect())
    for dev, port in tree.ports:  # values written after start-up are seen by all three
        path = tree.ib(dev, "ports", port, "counters", "link_downed")
        path.write_text("123456\n")
    expected = key("hpcobs_rdma_port_link_downed_total", device="mlx5_0", port="1")
    for c in (kept, per_read, limited):
        assert samples(c.collect())[expected] == 123456


def test_replaced_file_and_new_counter_are_seen(
    tmp_path: Path, collectors: list[RdmaCollector]
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1)
    collector = make(collectors, tree.sysfs)
    collector.collect()
    counters = tree.ib("mlx5_0", "ports", "1", "counters")
    (counters / "tmp").write_text("999\n")
    os.replace(counters / "tmp", counters / "symbol_error")  # new inode: an atomic rewrite
    (counters / "port_rcv_discards").write_text("17\n")  # a counter that was not there
    got = samples(collector.collect())
    assert got[key("hpcobs_rdma_port_symbol_errors_total", device="mlx5_0", port="1")] == 999
    assert got[key("hpcobs_rdma_port_receive_discards_total", device="mlx5_0", port="1")] == 17


def test_layout_is_rechecked_at_most_once_a_second_and_rescanned_every_minute(
    tmp_path: Path, collectors: list[RdmaCollector]
) -> None:
    now = [1000.0]
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1)
    ndevs = tree.ib("mlx5_0", "ports", "1", "gid_attrs", "ndevs")
    ndevs.mkdir(parents=True)
    (ndevs / "0").write_text("eth8\n")
    collector = make(collectors, tree.sysfs, layout_check_interval=1.0, clock=lambda: now[0])
    collector.collect()
    counters = tree.ib("mlx5_0", "ports", "1", "counters")
    (counters / "port_rcv_discards").write_text("17\n")
    discards = key("hpcobs_rdma_port_receive_discards_total", device="mlx5_0", port="1")
    now[0] += 0.5
    assert discards not in samples(collector.collect())
    now[0] += 0.6
    assert samples(collector.collect())[discards] == 17
    # a change no folder shows (a GID's netdev): picked up by the periodic rescan
    (ndevs / "0").write_text("eth9\n")
    now[0] += 30
    assert collector.source._plans["mlx5_0"].ports[0].netdevs == ("eth8",)
    collector.collect()
    assert collector.source._plans["mlx5_0"].ports[0].netdevs == ("eth8",)
    now[0] += 31
    collector.collect()
    assert collector.source._plans["mlx5_0"].ports[0].netdevs == ("eth9",)


def test_roce_netdevs_from_gid_attrs(tmp_path: Path, collectors: list[RdmaCollector]) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=2, roce=True)
    monitor = FakeMonitor(
        {
            "enp0s0f0": Link(5, "enp0s0f0", "UP", 1, 4, 2, {"rx_bytes": 1000, "tx_packets": 7}),
            "enp0s0f1": Link(6, "enp0s0f1", "DOWN", 0, 3, 2, {"rx_bytes": 5}),
            "enp1s0f0": Link(7, "enp1s0f0", "UP", 1, 0, 0, {}),
        },
        flaps={"enp0s0f0": 2},
    )
    collector = make(collectors, tree.sysfs, netlink=True, monitor_factory=lambda: monitor)
    assert not monitor.started  # construction starts nothing; the first scrape does
    got = samples(collector.collect())
    assert monitor.started
    up = dict(device="mlx5_0", port="1", netdev="enp0s0f0")
    assert got[key("hpcobs_rdma_netdev_info", **up, operstate="UP")] == 1
    assert got[key("hpcobs_rdma_netdev_up", **up)] == 1
    assert got[key("hpcobs_rdma_netdev_carrier", **up)] == 1
    assert got[key("hpcobs_rdma_netdev_carrier_changes_total", **up)] == 4
    assert got[key("hpcobs_rdma_netdev_link_flaps_total", **up)] == 2
    assert got[key("hpcobs_rdma_netdev_receive_bytes_total", **up)] == 1000
    assert got[key("hpcobs_rdma_netdev_transmit_packets_total", **up)] == 7
    down = dict(device="mlx5_0", port="2", netdev="enp0s0f1")
    assert got[key("hpcobs_rdma_netdev_up", **down)] == 0
    assert got[key("hpcobs_rdma_netdev_carrier", **down)] == 0
    assert got[key("hpcobs_rdma_netdev_link_flaps_total", **down)] == 0
    # enp1s0f1 (mlx5_1 port 2) does not exist in this "kernel": skipped, sysfs still there
    assert not any(dict(k[1]).get("netdev") == "enp1s0f1" for k in got)
    assert got[key("hpcobs_rdma_port_state", device="mlx5_1", port="2")] == 4
    assert got[key("hpcobs_rdma_netlink_up")] == 1
    assert sorted(monitor.queried) == ["enp0s0f0", "enp0s0f1", "enp1s0f0", "enp1s0f1"]
    collector.close()
    assert monitor.closed


def test_ipoib_netdevs_from_device_net(tmp_path: Path, collectors: list[RdmaCollector]) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=2, ipoib=True)
    monitor = FakeMonitor({"ib0": Link(3, "ib0", "UP", 1, 2, 1, {}), "ib1": Link(4, "ib1")})
    collector = make(collectors, tree.sysfs, netlink=True, monitor_factory=lambda: monitor)
    got = samples(collector.collect())
    assert key("hpcobs_rdma_netdev_up", device="mlx5_0", port="1", netdev="ib0") in got
    assert key("hpcobs_rdma_netdev_up", device="mlx5_0", port="2", netdev="ib1") in got


def test_netlink_unavailable_keeps_sysfs_and_logs_once(
    tmp_path: Path, collectors: list[RdmaCollector], caplog: pytest.LogCaptureFixture
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1, roce=True)
    monitor = FakeMonitor({}, unavailable=True)
    collector = make(collectors, tree.sysfs, netlink=True, monitor_factory=lambda: monitor)
    with caplog.at_level(logging.INFO, logger="hpcobs.rdma"):
        for _ in range(3):
            got = samples(collector.collect())
            assert got[key("hpcobs_rdma_port_state", device="mlx5_0", port="1")] == 4
            assert got[key("hpcobs_rdma_netlink_up")] == 0
            assert not any(n.startswith("hpcobs_rdma_netdev") for n in names(got))
    assert len([r for r in caplog.records if "netlink unavailable" in r.getMessage()]) == 1


def test_netlink_off_starts_no_listener(tmp_path: Path, collectors: list[RdmaCollector]) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1, roce=True)

    def refuse() -> Any:
        raise AssertionError("no listener wanted")

    got = samples(make(collectors, tree.sysfs, netlink=False, monitor_factory=refuse).collect())
    assert not any("netdev" in n or "netlink" in n for n in names(got))


# -- faults ----------------------------------------------------------------------------------


def bad_file_logs(caplog: pytest.LogCaptureFixture, path: Path) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "path", None) == str(path)]


def test_bad_files_are_skipped_and_reported_once(
    tmp_path: Path, collectors: list[RdmaCollector], caplog: pytest.LogCaptureFixture
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=2)
    port = tree.ib("mlx5_0", "ports", "1")
    (port / "counters" / "symbol_error").write_text("garbage\n")
    (port / "counters" / "VL15_dropped").write_text("N/A (no PMA)\n")  # iWARP / old hfi1
    (port / "state").write_text("ACTIVE\n")
    (port / "rate").write_text("quick\n")
    unreadable = port / "hw_counters" / "out_of_buffer"
    unreadable.unlink()
    # A regular file whose read fails with EIO, as a broken driver attribute does (file
    # permissions would not stop root): the reading process's memory at address 0.
    unreadable.symlink_to("/proc/self/mem")
    collector = make(collectors, tree.sysfs)
    with caplog.at_level(logging.INFO, logger="hpcobs.rdma"):
        for _ in range(3):
            got = samples(collector.collect())
            labels = dict(device="mlx5_0", port="1")
            assert key("hpcobs_rdma_port_symbol_errors_total", **labels) not in got
            assert key("hpcobs_rdma_port_vl15_dropped_total", **labels) not in got
            assert key("hpcobs_rdma_port_state", **labels) not in got
            assert key("hpcobs_rdma_port_rate_bytes_per_second", **labels) not in got
            hw_key = key("hpcobs_rdma_hw_counters_total", **labels, counter="out_of_buffer")
            assert hw_key not in got
            # everything else of that port, and the other ports, are there
            assert got[key("hpcobs_rdma_port_physical_state", **labels)] == 5
            assert key("hpcobs_rdma_port_link_downed_total", **labels) in got
            assert got[key("hpcobs_rdma_port_state", device="mlx5_1", port="2")] == 4
    for bad in ("counters/symbol_error", "state", "rate", "hw_counters/out_of_buffer"):
        records = bad_file_logs(caplog, port / bad)
        assert len(records) == 1, (bad, records)
        assert records[0].levelno == logging.WARNING
    assert bad_file_logs(caplog, port / "counters" / "VL15_dropped") == []

    # Fixed, then broken again: reported again.
    (port / "counters" / "symbol_error").write_text("3\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hpcobs.rdma"):
        got = samples(collector.collect())
        assert got[key("hpcobs_rdma_port_symbol_errors_total", device="mlx5_0", port="1")] == 3
        (port / "counters" / "symbol_error").write_text("x\n")
        collector.collect()
    assert len(bad_file_logs(caplog, port / "counters" / "symbol_error")) == 1


def test_a_dangling_symlink_is_a_missing_file(
    tmp_path: Path, collectors: list[RdmaCollector], caplog: pytest.LogCaptureFixture
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1)
    port = tree.ib("mlx5_0", "ports", "1")
    for name in ("counters/symbol_error", "hw_counters/out_of_buffer"):
        (port / name).unlink()
        (port / name).symlink_to(tmp_path / "nowhere")
    collector = make(collectors, tree.sysfs)
    with caplog.at_level(logging.DEBUG, logger="hpcobs.rdma"):
        for _ in range(2):
            got = samples(collector.collect())
            labels = dict(device="mlx5_0", port="1")
            assert key("hpcobs_rdma_port_symbol_errors_total", **labels) not in got
            assert (
                key("hpcobs_rdma_hw_counters_total", **labels, counter="out_of_buffer") not in got
            )
            assert key("hpcobs_rdma_port_link_downed_total", **labels) in got
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], caplog.records


def test_counter_going_backwards_is_exported_and_reported_once(
    tmp_path: Path, collectors: list[RdmaCollector], caplog: pytest.LogCaptureFixture
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1)
    data = tree.ib("mlx5_0", "ports", "1", "counters", "port_xmit_data")
    data.write_text("1000\n")
    collector = make(collectors, tree.sysfs)
    collector.collect()
    with caplog.at_level(logging.INFO, logger="hpcobs.rdma"):
        for value in (10, 5):
            data.write_text(f"{value}\n")
            got = samples(collector.collect())
            labels = dict(device="mlx5_0", port="1")
            assert got[key("hpcobs_rdma_port_transmit_bytes_total", **labels)] == value * 4
    records = bad_file_logs(caplog, data)
    assert len(records) == 1 and "backwards" in records[0].getMessage()


def test_device_and_port_appear_and_disappear_between_scrapes(
    tmp_path: Path, collectors: list[RdmaCollector]
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=3, ports=2)
    collector = make(collectors, tree.sysfs)
    assert {dict(k[1])["device"] for k in samples(collector.collect())} == set(tree.devices)
    shutil.rmtree(tree.ib("mlx5_1"))  # hot unplug
    shutil.rmtree(tree.ib("mlx5_2", "ports", "2"))
    got = samples(collector.collect())
    assert {dict(k[1])["device"] for k in got} == {"mlx5_0", "mlx5_2"}
    assert key("hpcobs_rdma_port_state", device="mlx5_2", port="1") in got
    assert key("hpcobs_rdma_port_state", device="mlx5_2", port="2") not in got
    trees.build_tree(tmp_path / "sys", hcas=4, ports=2)  # driver reload brings all back
    got = samples(collector.collect())
    assert {dict(k[1])["device"] for k in got} == {f"mlx5_{i}" for i in range(4)}
    assert key("hpcobs_rdma_port_state", device="mlx5_2", port="2") in got


def test_device_vanishing_in_the_middle_of_a_read(
    tmp_path: Path,
    collectors: list[RdmaCollector],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=2)
    collector = make(collectors, tree.sysfs, max_open_files=0)  # every read opens the file
    real_read: Callable[[str], bytes] = rdma_source._read
    reads = 0

    def unplug_mid_scrape(path: str) -> bytes:
        nonlocal reads
        reads += 1
        if reads == 70:  # inside mlx5_0's second port
            shutil.rmtree(tree.ib("mlx5_0"))
        return real_read(path)

    monkeypatch.setattr(rdma_source, "_read", unplug_mid_scrape)
    with caplog.at_level(logging.INFO, logger="hpcobs.rdma"):
        got = samples(collector.collect())
    assert reads >= 70
    assert got[key("hpcobs_rdma_port_state", device="mlx5_1", port="2")] == 4
    assert key("hpcobs_rdma_port_state", device="mlx5_0", port="1") in got  # read before
    assert any("disappeared" in r.getMessage() for r in caplog.records)
    got = samples(collector.collect())
    assert {dict(k[1])["device"] for k in got} == {"mlx5_1"}


def test_vanished_files_of_a_removed_device_answer_enodev(
    tmp_path: Path, collectors: list[RdmaCollector], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On sysfs, an open attribute of a removed device reads ENODEV (not stale data)."""
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=1)
    collector = make(collectors, tree.sysfs)
    collector.collect()
    gone = {s.fd for p in collector.source._plans["mlx5_0"].ports for s in p.slots}
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        if fd in gone:
            raise OSError(errno.ENODEV, "No such device")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    got = samples(collector.collect())  # the device's files fail, the other device reads
    assert key("hpcobs_rdma_port_state", device="mlx5_1", port="1") in got
    assert key("hpcobs_rdma_port_state", device="mlx5_0", port="1") not in got
    assert collector.source._plans["mlx5_0"].stale  # re-listed (and re-opened) next scrape
    monkeypatch.setattr(os, "pread", real_pread)
    got = samples(collector.collect())
    assert key("hpcobs_rdma_port_state", device="mlx5_0", port="1") in got


def test_no_hcas_is_a_normal_state(tmp_path: Path, collectors: list[RdmaCollector]) -> None:
    collector = make(collectors, tmp_path)  # no class/infiniband at all
    assert list(collector.collect()) == []
    collector.name = "rdma"
    coordinator = ScrapeCoordinator([collector], timeout=5)
    got = samples(coordinator.scrape())
    assert got[key("hpcobs_collector_up", collector="rdma")] == 1
    assert not any(n.startswith("hpcobs_rdma") for n in names(got))
    (tmp_path / "class" / "infiniband").mkdir(parents=True)  # module loaded, no device yet
    assert list(collector.collect()) == []


def test_close_releases_descriptors(tmp_path: Path) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=2)
    before = len(os.listdir("/proc/self/fd"))
    collector = RdmaCollector(str(tree.sysfs), netlink=False)
    collector.collect()
    assert len(os.listdir("/proc/self/fd")) > before + 100
    collector.close()
    assert len(os.listdir("/proc/self/fd")) <= before
    assert list(collector.collect()) == []


# -- a sysfs read that blocks (a wedged driver; a FIFO here) ---------------------------------


def fifo_in_place_of(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


def release_fifo(path: Path, text: str) -> None:
    """Give the reader blocked on the FIFO something to read (a writer must open it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader (any more)
        return
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def construct_within(seconds: float, sysfs: Path, **kwargs: Any) -> RdmaCollector:
    """Build the collector in a thread (a hang must fail the test, not wedge the suite)."""
    built: list[RdmaCollector] = []
    thread = threading.Thread(
        target=lambda: built.append(RdmaCollector(str(sysfs), **kwargs)), daemon=True
    )
    thread.start()
    thread.join(seconds)
    assert built, f"constructing the collector did not return within {seconds}s"
    return built[0]


@pytest.mark.parametrize(
    ("blocked", "tree_kw"),
    [
        (("mlx5_0", "ports", "1", "state"), {}),  # a value file, kept open by the scan
        (("mlx5_0", "fw_ver"), {}),  # a device attribute, read by the scan
        (("mlx5_0", "ports", "1", "link_layer"), {}),  # a port attribute, read by the scan
        (("mlx5_0", "device", "net", "ib0", "dev_port"), {"ipoib": True}),  # netdev mapping
    ],
    ids=["state", "fw_ver", "link_layer", "dev_port"],
)
def test_blocking_sysfs_read_costs_the_collector_not_the_daemon(
    tmp_path: Path,
    collectors: list[RdmaCollector],
    blocked: tuple[str, ...],
    tree_kw: dict[str, Any],
) -> None:
    """Issue 14 item 3: the layout scan ran in the constructor, before the daemon listened,
    so a read that blocks kept it from ever listening. Now construction reads nothing and the
    scan runs in the scrape, under its deadline; the hung collection is shared, not repeated."""
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=1, **tree_kw)
    fifo = fifo_in_place_of(tree.ib(*blocked))
    collector = construct_within(5.0, tree.sysfs, netlink=False)
    collectors.append(collector)
    collector.name = "rdma"
    coordinator = ScrapeCoordinator([collector], timeout=0.3)
    try:
        for _ in range(3):
            started = time.monotonic()
            got = samples(coordinator.scrape())
            assert time.monotonic() - started < 10  # the deadline (0.3 s), loosely
            assert got[key("hpcobs_collector_up", collector="rdma")] == 0
            assert not any(n.startswith("hpcobs_rdma") for n in names(got))
        hung = [t for t in threading.enumerate() if t.name == "collector-rdma"]
        assert len(hung) == 1  # single flight: three scrapes, one collection thread
    finally:
        release_fifo(fifo, "4: ACTIVE\n" if blocked[-1] == "state" else "x\n")
    # The read returns: the same collection ends and the collector is up again.
    assert wait_until(
        lambda: samples(coordinator.scrape())[key("hpcobs_collector_up", collector="rdma")] == 1,
        timeout=10,
    )
    got = samples(coordinator.scrape())
    assert got[key("hpcobs_rdma_port_state", device="mlx5_1", port="1")] == 4
    fifo.unlink()  # gone, as a file of a vanished device: the rest keeps being read
    assert samples(coordinator.scrape())[key("hpcobs_collector_up", collector="rdma")] == 1


def test_construction_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1, roce=True)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("I/O at construction")

    with monkeypatch.context() as patched:
        for name in ("open", "listdir", "scandir", "stat"):
            patched.setattr(os, name, refuse)
        collector = SPEC.factory(ns := argparse.Namespace(path_sysfs=str(tree.sysfs)), Services(ns))
    try:
        assert isinstance(collector, RdmaCollector)
        assert collector.source._plans == {} and collector._monitor is None
    finally:
        collector.close()


def test_close_does_not_wait_for_a_hung_collection(tmp_path: Path) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1)
    fifo = fifo_in_place_of(tree.ib("mlx5_0", "ports", "1", "state"))
    thread = threading.Thread(daemon=True)
    try:
        collector = construct_within(5.0, tree.sysfs, netlink=False)
        thread = threading.Thread(target=lambda: list(collector.collect()), daemon=True)
        thread.start()
        assert wait_until(lambda: collector.source._lock.locked())
        closing = threading.Thread(target=collector.close, daemon=True)
        closing.start()
        closing.join(rdma.CLOSE_WAIT_SECONDS + 10)
        assert not closing.is_alive(), "close() waited for the hung read"
    finally:
        release_fifo(fifo, "4: ACTIVE\n")
        if thread.is_alive():
            thread.join(10)
    assert list(collector.collect()) == []  # closed


# -- wiring ----------------------------------------------------------------------------------


def test_spec_is_discovered_with_its_flags(tmp_path: Path) -> None:
    assert SPEC in discover()
    parser = build_parser("hpcobs-node-exporter", "test", ":9946", [SPEC], True)
    args = parse_args(
        parser,
        [
            f"--path.sysfs={tmp_path}",
            "--collector.disable-defaults",
            "--collector.rdma",
            "--no-collector.rdma.netlink",
            "--collector.rdma.rescan-interval=5m",
        ],
    )
    assert args.collector_rdma is True
    collector = SPEC.factory(args, Services(args))
    try:
        assert isinstance(collector, RdmaCollector)
        assert collector.source.root == os.path.join(str(tmp_path), "class", "infiniband")
        assert collector.source.netlink is False
        assert collector.source.rescan_interval == 300
    finally:
        collector.close()
    defaults = SPEC.factory(ns := argparse.Namespace(path_sysfs=str(tmp_path)), Services(ns))
    try:
        assert isinstance(defaults, RdmaCollector) and defaults.source.netlink is True
    finally:
        defaults.close()


class FakeMonitor:
    """Stands in for LinkMonitor: fixed links, fixed flap totals."""

    def __init__(
        self,
        links: dict[str, Link],
        flaps: dict[str, int] | None = None,
        unavailable: bool = False,
    ) -> None:
        self.links = links
        self.flaps = FlapCounter()
        for name, count in (flaps or {}).items():
            self.flaps._totals[name] = count
        self.unavailable = unavailable
        self.started = False
        self.closed = False
        self.failures = 0
        self.connects = 0 if unavailable else 1
        self.queried: list[str] = []

    @property
    def connected(self) -> bool:
        return not self.unavailable

    def start(self) -> None:
        self.started = True

    def wait_connected(self, timeout: float) -> bool:
        return self.connected

    def close(self) -> None:
        self.closed = True

    def query(self, names: Iterable[str], timeout: float = 2.0) -> dict[str, Link | None]:
        wanted = list(dict.fromkeys(names))
        self.queried = wanted
        if self.unavailable:
            raise NetlinkUnavailableError(errno.ENOTCONN, "netlink not connected (test)")
        return {n: self.links.get(n) for n in wanted}
