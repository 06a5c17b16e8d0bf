"""node_exporter's infiniband collector as the oracle for the `rdma` collector.

Debian's `prometheus-node-exporter --path.sysfs=<tree> --collector.disable-defaults
--collector.infiniband` and `hpcobs-node-exporter --path.sysfs=<tree>
--collector.disable-defaults --collector.rdma` read the same tree; every series node_exporter
exports must have an hpcobs twin (by the table below) with the same value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.rdma import tree_builder
from harness.runtime import ExporterProcess
from harness.servers import NodeExporterFactory
from harness.trees import copy_tree

pytestmark = pytest.mark.real


# node_exporter (1.5) series → hpcobs series: metric name and the labels added to
# {device, port}. Written down here, independently of the collector's own tables.
TWINS: dict[str, tuple[str, dict[str, str]]] = {
    "node_infiniband_state_id": ("hpcobs_rdma_port_state", {}),
    "node_infiniband_physical_state_id": ("hpcobs_rdma_port_physical_state", {}),
    "node_infiniband_rate_bytes_per_second": ("hpcobs_rdma_port_rate_bytes_per_second", {}),
    "node_infiniband_port_data_received_bytes_total": ("hpcobs_rdma_port_receive_bytes_total", {}),
    "node_infiniband_port_data_transmitted_bytes_total": (
        "hpcobs_rdma_port_transmit_bytes_total",
        {},
    ),
    "node_infiniband_port_packets_received_total": ("hpcobs_rdma_port_receive_packets_total", {}),
    "node_infiniband_port_packets_transmitted_total": (
        "hpcobs_rdma_port_transmit_packets_total",
        {},
    ),
    "node_infiniband_unicast_packets_received_total": (
        "hpcobs_rdma_port_unicast_receive_packets_total",
        {},
    ),
    "node_infiniband_unicast_packets_transmitted_total": (
        "hpcobs_rdma_port_unicast_transmit_packets_total",
        {},
    ),
    "node_infiniband_multicast_packets_received_total": (
        "hpcobs_rdma_port_multicast_receive_packets_total",
        {},
    ),
    "node_infiniband_multicast_packets_transmitted_total": (
        "hpcobs_rdma_port_multicast_transmit_packets_total",
        {},
    ),
    "node_infiniband_link_downed_total": ("hpcobs_rdma_port_link_downed_total", {}),
    "node_infiniband_link_error_recovery_total": ("hpcobs_rdma_port_link_error_recovery_total", {}),
    "node_infiniband_symbol_error_total": ("hpcobs_rdma_port_symbol_errors_total", {}),
    "node_infiniband_port_errors_received_total": ("hpcobs_rdma_port_receive_errors_total", {}),
    "node_infiniband_port_discards_transmitted_total": (
        "hpcobs_rdma_port_transmit_discards_total",
        {},
    ),
    "node_infiniband_port_discards_received_total": ("hpcobs_rdma_port_receive_discards_total", {}),
    "node_infiniband_port_transmit_wait_total": ("hpcobs_rdma_port_transmit_wait_total", {}),
    "node_infiniband_port_constraint_errors_received_total": (
        "hpcobs_rdma_port_receive_constraint_errors_total",
        {},
    ),
    "node_infiniband_port_constraint_errors_transmitted_total": (
        "hpcobs_rdma_port_transmit_constraint_errors_total",
        {},
    ),
    "node_infiniband_port_receive_remote_physical_errors_total": (
        "hpcobs_rdma_port_receive_remote_physical_errors_total",
        {},
    ),
    "node_infiniband_port_receive_switch_relay_errors_total": (
        "hpcobs_rdma_port_receive_switch_relay_errors_total",
        {},
    ),
    "node_infiniband_local_link_integrity_errors_total": (
        "hpcobs_rdma_port_local_link_integrity_errors_total",
        {},
    ),
    "node_infiniband_excessive_buffer_overrun_errors_total": (
        "hpcobs_rdma_port_excessive_buffer_overrun_errors_total",
        {},
    ),
    "node_infiniband_vl15_dropped_total": ("hpcobs_rdma_port_vl15_dropped_total", {}),
    # counters_ext/ (kernels before 4.5)
    "node_infiniband_legacy_data_received_bytes_total": (
        "hpcobs_rdma_port_legacy_receive_bytes_total",
        {},
    ),
    "node_infiniband_legacy_data_transmitted_bytes_total": (
        "hpcobs_rdma_port_legacy_transmit_bytes_total",
        {},
    ),
    "node_infiniband_legacy_packets_received_total": (
        "hpcobs_rdma_port_legacy_counter_total",
        {"counter": "port_rcv_packets_64"},
    ),
    "node_infiniband_legacy_packets_transmitted_total": (
        "hpcobs_rdma_port_legacy_counter_total",
        {"counter": "port_xmit_packets_64"},
    ),
    "node_infiniband_legacy_unicast_packets_received_total": (
        "hpcobs_rdma_port_legacy_counter_total",
        {"counter": "port_unicast_rcv_packets"},
    ),
    "node_infiniband_legacy_unicast_packets_transmitted_total": (
        "hpcobs_rdma_port_legacy_counter_total",
        {"counter": "port_unicast_xmit_packets"},
    ),
    "node_infiniband_legacy_multicast_packets_received_total": (
        "hpcobs_rdma_port_legacy_counter_total",
        {"counter": "port_multicast_rcv_packets"},
    ),
    "node_infiniband_legacy_multicast_packets_transmitted_total": (
        "hpcobs_rdma_port_legacy_counter_total",
        {"counter": "port_multicast_xmit_packets"},
    ),
}
INFO = "node_infiniband_info"  # {board_id, device, firmware_version, hca_type}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
Factory = Callable[..., ExporterProcess]


def parse(text: str, prefix: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(prefix):
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def compare(node_exporter: NodeExporterFactory, exporter_factory: Factory, sysfs: Path) -> int:
    """Scrape both on `sysfs`; assert every node_exporter series has its twin. Returns count."""
    ne = node_exporter(
        f"--path.sysfs={sysfs}", "--collector.disable-defaults", "--collector.infiniband"
    )
    hp = exporter_factory(
        "hpcobs-node-exporter",
        f"--path.sysfs={sysfs}",
        "--collector.disable-defaults",
        "--collector.rdma",
        "--no-collector.rdma.netlink",
    )
    ne_text = ne.scrape()
    ours = parse(hp.scrape(), "hpcobs_")
    assert ours[("hpcobs_collector_up", frozenset({("collector", "rdma")}))] == 1
    success = parse(ne_text, "node_scrape_collector_success")
    assert success[("node_scrape_collector_success", frozenset({("collector", "infiniband")}))] == 1
    theirs = parse(ne_text, "node_infiniband_")
    unknown = sorted({name for name, _ in theirs} - set(TWINS) - {INFO})
    assert not unknown, f"node_exporter series without a twin in the table: {unknown}"
    compared = 0
    for (name, labels), value in sorted(theirs.items(), key=lambda kv: kv[0][0]):
        lab = dict(labels)
        if name == INFO:
            twins = [
                dict(k[1])
                for k in ours
                if k[0] == "hpcobs_rdma_device_info" and dict(k[1])["device"] == lab["device"]
            ]
            assert len(twins) == 1, lab
            for label in ("board_id", "firmware_version", "hca_type"):
                assert twins[0][label] == lab[label], (lab, twins[0])
        else:
            twin, extra = TWINS[name]
            twin_key = (twin, frozenset({**lab, **extra}.items()))
            assert twin_key in ours, f"{name}{lab}: no {twin} in hpcobs"
            assert ours[twin_key] == value, (
                f"{name}{lab}: node_exporter {value}, hpcobs {ours[twin_key]}"
            )
        compared += 1
    return compared


def test_real_fixture_tree_matches_node_exporter(
    node_exporter_factory: NodeExporterFactory,
    exporter_factory: Factory,
    fixture_trees: Path,
    tmp_path: Path,
) -> None:
    sysfs = tmp_path / "sys"
    copy_tree(fixture_trees / "sysfs-infiniband-procfs" / "sys", sysfs)
    # hfi1_0 (Omni-Path: no hca_type, "5: LinkUp"), mlx4_0 (2 ports), mlx5_0: 4 ports
    assert compare(node_exporter_factory, exporter_factory, sysfs) >= 4 * 20 + 3


def test_built_tree_with_legacy_and_not_available_counters(
    node_exporter_factory: NodeExporterFactory, exporter_factory: Factory, tmp_path: Path
) -> None:
    trees = tree_builder()
    tree = trees.build_tree(tmp_path / "sys", hcas=4, ports=2)
    port = tree.ib("mlx5_3", "ports", "2")
    # a kernel before 4.5: 64-bit counters in counters_ext/
    ext = port / "counters_ext"
    ext.mkdir()
    for i, name in enumerate(
        (
            "port_rcv_data_64",
            "port_xmit_data_64",
            "port_rcv_packets_64",
            "port_xmit_packets_64",
            "port_unicast_rcv_packets",
            "port_unicast_xmit_packets",
            "port_multicast_rcv_packets",
            "port_multicast_xmit_packets",
        )
    ):
        (ext / name).write_text(f"{(i + 1) * 1234567891011}\n")
    (port / "counters" / "port_rcv_discards").write_text("42\n")
    # iWARP / old hfi1 drivers answer "N/A (no PMA)" for counters they lack
    (tree.ib("mlx5_1", "ports", "1", "counters", "VL15_dropped")).write_text("N/A (no PMA)\n")
    (tree.ib("mlx5_2", "ports", "1", "state")).write_text("1: DOWN\n")
    (tree.ib("mlx5_2", "ports", "1", "phys_state")).write_text("3: Disabled\n")
    (tree.ib("mlx5_2", "ports", "1", "rate")).write_text("10 Gb/sec (4X)\n")
    os.remove(tree.ib("mlx5_0", "hca_type"))
    compared = compare(node_exporter_factory, exporter_factory, tree.sysfs)
    assert compared >= 8 * 24 + 8 + 4
