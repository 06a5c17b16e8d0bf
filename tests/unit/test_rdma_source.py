"""The `rdma` layers one by one: the source's model (sources/rdma.py) and the collector's
mapping from that model to metric families (`to_families`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcobs.exporters.collectors.rdma import (
    HW_COUNTER,
    METRICS,
    RECEIVE_BYTES,
    LabelMemo,
    RdmaCollector,
    to_families,
)
from hpcobs.exporters.sources.netlink import Link
from hpcobs.exporters.sources.rdma import Device, Netlink, Port, RdmaSource, Scan

from harness.rdma import tree_builder

pytestmark = pytest.mark.unit

trees = tree_builder()


@pytest.fixture
def sources() -> Iterator[list[RdmaSource]]:
    made: list[RdmaSource] = []
    yield made
    for source in made:
        source.close()


def source_of(made: list[RdmaSource], sysfs: Path, **kwargs: object) -> RdmaSource:
    source = RdmaSource(str(sysfs), netlink=False, layout_check_interval=0.0, **kwargs)  # type: ignore[arg-type]
    made.append(source)
    return source


# -- the source's model ------------------------------------------------------------------------


def test_scan_holds_the_values_as_the_files_hold_them(
    tmp_path: Path, sources: list[RdmaSource]
) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=2)
    scan = source_of(sources, tree.sysfs).scan()
    assert scan is not None and scan.netlink is None
    assert [d.name for d in scan.devices] == tree.devices
    mlx5_1 = scan.devices[1]
    fw_ver = tree.ib("mlx5_1", "fw_ver").read_text().strip()
    assert (mlx5_1.firmware_version, mlx5_1.hca_type) == (fw_ver, "MT4123")
    assert [(p.device, p.port) for p in scan.ports()] == sorted(tree.ports)
    for port in scan.ports():
        key = (port.device, port.port)
        assert port.counters == tree.ports[key]  # raw: port_rcv_data in 4-byte words
        hw = dict(tree.hw[key])
        assert port.hw_counters_lifespan_ms == hw.pop("lifespan")
        assert port.hw_counters == hw
        assert port.counters_ext == {}
        assert (port.state, port.phys_state, port.rate) == (4, 5, 25e9)
        assert port.link_layer == "InfiniBand"
        assert port.netdevs == ()


def test_a_file_longer_than_the_short_read_is_read_in_full(
    tmp_path: Path, sources: list[RdmaSource], caplog: pytest.LogCaptureFixture
) -> None:
    """Values are read 256 bytes at a time; a file that fills that is read again whole."""
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1)
    counters = tree.ib("mlx5_0", "ports", "1", "counters")
    (counters / "link_downed").write_text(" " * 300 + "42\n")  # only blanks in the first 256
    (counters / "symbol_error").write_text("7" + " " * 300 + "x\n")  # "7" in the first 256
    state = tree.ib("mlx5_0", "ports", "1", "state")
    state.write_text("3" + " " * 300 + ": ARMED\n")
    with caplog.at_level(logging.INFO, logger="hpcobs.rdma"):
        scan = source_of(sources, tree.sysfs).scan()
    assert scan is not None
    (port,) = scan.ports()
    assert port.counters["link_downed"] == 42
    assert "symbol_error" not in port.counters
    assert port.state == 3
    assert [r.path for r in caplog.records] == [str(counters / "symbol_error")]  # type: ignore[attr-defined]


def test_scan_after_close_is_none(tmp_path: Path) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=1, ports=1)
    source = RdmaSource(str(tree.sysfs), netlink=False)
    assert source.scan() is not None
    source.close()
    assert source.scan() is None


# -- the mapping -------------------------------------------------------------------------------


def port(device: str, number: str, **kwargs: object) -> Port:
    return Port(device, number, "InfiniBand", **kwargs)  # type: ignore[arg-type]


def series(scan: Scan, memo: LabelMemo | None = None) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(f"{k}={v}" for k, v in s.labels.items())): s.value
        for family in to_families(scan, memo)
        for s in family.samples
    }


def test_mapping_scales_data_words_to_bytes_and_names_other_files() -> None:
    scan = Scan(
        [
            Device(
                "mlx5_0",
                "20.31.1014",
                "MT_0000000231",
                "MT4123",
                "b859:9f03:00d0:0001",
                [
                    port(
                        "mlx5_0",
                        "1",
                        state=4,
                        counters={"port_rcv_data": 1000, "port_xmit_data": 7, "weird": 3},
                        counters_ext={"port_rcv_data_64": 5, "port_rcv_packets_64": 9},
                        hw_counters={"out_of_buffer": 2},
                        hw_counters_lifespan_ms=10,
                    )
                ],
            )
        ],
        None,
    )
    got = series(scan)
    assert got[("hpcobs_rdma_port_receive_bytes_total", ("device=mlx5_0", "port=1"))] == 4000
    assert got[("hpcobs_rdma_port_transmit_bytes_total", ("device=mlx5_0", "port=1"))] == 28
    assert got[("hpcobs_rdma_port_legacy_receive_bytes_total", ("device=mlx5_0", "port=1"))] == 20
    assert (
        got[
            (
                "hpcobs_rdma_port_legacy_counter_total",
                ("device=mlx5_0", "port=1", "counter=port_rcv_packets_64"),
            )
        ]
        == 9
    )
    other = ("hpcobs_rdma_port_counter_total", ("device=mlx5_0", "port=1", "counter=weird"))
    assert got[other] == 3
    hw = ("hpcobs_rdma_hw_counters_total", ("device=mlx5_0", "port=1", "counter=out_of_buffer"))
    assert got[hw] == 2
    lifespan = ("hpcobs_rdma_hw_counters_lifespan_seconds", ("device=mlx5_0", "port=1"))
    assert got[lifespan] == 0.01
    assert got[("hpcobs_rdma_port_state", ("device=mlx5_0", "port=1"))] == 4
    # values that were not read (None) give no series
    assert not [k for k in got if k[0] == "hpcobs_rdma_port_rate_bytes_per_second"]
    assert not [k for k in got if "netdev" in k[0] or "netlink" in k[0]]


def test_mapping_netdevs_only_those_the_kernel_knows() -> None:
    ports = [port("mlx5_0", "1", netdevs=("eth0", "eth9"))]
    links = {"eth0": Link(2, "eth0", "UP", 1, 3, 1, {"rx_bytes": 10})}
    scan = Scan([Device("mlx5_0", "", "", "", "", ports)], Netlink(False, 2, links, {"eth0": 1}))
    got = series(scan)
    labels = ("device=mlx5_0", "port=1", "netdev=eth0")
    assert got[("hpcobs_rdma_netdev_up", labels)] == 1
    assert got[("hpcobs_rdma_netdev_link_flaps_total", labels)] == 1
    assert got[("hpcobs_rdma_netdev_receive_bytes_total", labels)] == 10
    assert not [k for k in got if "netdev=eth9" in k[1]]
    assert got[("hpcobs_rdma_netlink_up", ())] == 0
    assert got[("hpcobs_rdma_netlink_errors_total", ())] == 2


def test_families_come_out_in_metrics_order(tmp_path: Path) -> None:
    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=2, roce=True)
    port = tree.ib("mlx5_0", "ports", "1")
    (port / "counters" / "zz_vendor").write_text("1\n")
    (port / "counters_ext").mkdir()
    (port / "counters_ext" / "port_xmit_data_64").write_text("1\n")
    collector = RdmaCollector(str(tree.sysfs), netlink=False)
    try:
        names = [family.name for family in collector.collect()]
    finally:
        collector.close()
    order = [m.family().name for m in METRICS]
    assert names == sorted(names, key=order.index)
    assert len(names) > 25


def test_label_dicts_are_made_once_per_series(tmp_path: Path) -> None:
    """`Families.add` keeps the dict it is given: the same dict serves every scrape."""

    def labels_by_series(collector: RdmaCollector) -> dict[tuple[str, str], dict[str, str]]:
        return {
            (s.name, repr(sorted(s.labels.items()))): s.labels
            for family in collector.collect()
            if family.name in (RECEIVE_BYTES.family().name, HW_COUNTER.family().name)
            for s in family.samples
        }

    tree = trees.build_tree(tmp_path / "sys", hcas=2, ports=1)
    collector = RdmaCollector(str(tree.sysfs), netlink=False, layout_check_interval=0.0)
    try:
        first, second = labels_by_series(collector), labels_by_series(collector)
        assert first.keys() == second.keys() and len(first) == 2 * 30
        assert all(first[k] is second[k] for k in first)
        (tree.ib("mlx5_1", "ports", "1") / "hw_counters" / "out_of_buffer").unlink()
        third = labels_by_series(collector)
        assert len(third) == len(first) - 1
        assert all(third[k] is first[k] for k in third)
    finally:
        collector.close()
