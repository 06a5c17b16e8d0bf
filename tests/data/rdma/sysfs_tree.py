"""Build synthetic `/sys/class/infiniband` trees for the rdma tests and benchmark.

Shaped like a real mlx5 node (ConnectX-5/6): per device `fw_ver`, `board_id`, `hca_type`,
`node_guid`; per port `state`, `phys_state`, `rate`, `link_layer`, the 20 PMA counters of
`counters/` and the mlx5 driver counters of `hw_counters/`; RoCE ports get `gid_attrs/ndevs/*`
naming their netdev, IPoIB devices a `device/net/<if>/dev_port`.

Loaded by path (`importlib`) from tests and from `bench/bench_rdma.py`; not a test module.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

PMA_COUNTERS = (
    "VL15_dropped",
    "excessive_buffer_overrun_errors",
    "link_downed",
    "link_error_recovery",
    "local_link_integrity_errors",
    "multicast_rcv_packets",
    "multicast_xmit_packets",
    "port_rcv_constraint_errors",
    "port_rcv_data",
    "port_rcv_errors",
    "port_rcv_packets",
    "port_rcv_remote_physical_errors",
    "port_rcv_switch_relay_errors",
    "port_xmit_constraint_errors",
    "port_xmit_data",
    "port_xmit_discards",
    "port_xmit_packets",
    "port_xmit_wait",
    "symbol_error",
    "unicast_rcv_packets",
    "unicast_xmit_packets",
)

MLX5_HW_COUNTERS = (
    "duplicate_request",
    "implied_nak_seq_err",
    "lifespan",
    "local_ack_timeout_err",
    "np_cnp_sent",
    "np_ecn_marked_roce_packets",
    "out_of_buffer",
    "out_of_sequence",
    "packet_seq_err",
    "req_cqe_error",
    "req_cqe_flush_error",
    "req_remote_access_errors",
    "req_remote_invalid_request",
    "resp_cqe_error",
    "resp_cqe_flush_error",
    "resp_local_length_error",
    "resp_remote_access_errors",
    "rnr_nak_retry_err",
    "roce_adp_retrans",
    "roce_adp_retrans_to",
    "roce_slow_restart",
    "roce_slow_restart_cnps",
    "roce_slow_restart_trans",
    "rp_cnp_handled",
    "rp_cnp_ignored",
    "rx_atomic_requests",
    "rx_dct_connect",
    "rx_icrc_encapsulated",
    "rx_read_requests",
    "rx_write_requests",
)


@dataclass
class Tree:
    """What was built: the sysfs root to pass as `--path.sysfs` and the expected values."""

    sysfs: Path
    devices: list[str] = field(default_factory=list)
    ports: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    """(device, port) → counters/ file → raw value written."""
    hw: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    netdevs: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def ib(self, *parts: str) -> Path:
        return self.sysfs.joinpath("class", "infiniband", *parts)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_tree(
    root: Path,
    *,
    hcas: int = 4,
    ports: int = 2,
    hw_counters: bool = True,
    roce: bool = False,
    ipoib: bool = False,
    seed: int = 1,
    prefix: str = "mlx5_",
) -> Tree:
    """Write a tree of `hcas` devices × `ports` ports under `root` (the sysfs root)."""
    rng = random.Random(seed)
    tree = Tree(sysfs=root)
    for d in range(hcas):
        dev = f"{prefix}{d}"
        tree.devices.append(dev)
        base = tree.ib(dev)
        write(base / "fw_ver", f"20.3{d}.1014\n")
        write(base / "board_id", f"MT_000000023{d}\n")
        write(base / "hca_type", "MT4123\n")
        write(base / "node_guid", f"b859:9f03:00d{d}:{rng.randrange(1 << 16):04x}\n")
        for p in range(1, ports + 1):
            port = base / "ports" / str(p)
            key = (dev, str(p))
            write(port / "state", "4: ACTIVE\n")
            write(port / "phys_state", "5: LinkUp\n")
            write(port / "rate", "200 Gb/sec (4X HDR)\n")
            write(port / "link_layer", "Ethernet\n" if roce else "InfiniBand\n")
            values = {}
            for name in PMA_COUNTERS:
                big = name.endswith(("_data", "_packets"))
                value = rng.randrange(10**9, 10**13) if big else rng.randrange(0, 1000)
                values[name] = value
                write(port / "counters" / name, f"{value}\n")
            tree.ports[key] = values
            if hw_counters:
                hw = {}
                for name in MLX5_HW_COUNTERS:
                    value = 10 if name == "lifespan" else rng.randrange(0, 10**6)
                    hw[name] = value
                    write(port / "hw_counters" / name, f"{value}\n")
                tree.hw[key] = hw
            if roce:
                netdev = f"enp{d}s0f{p - 1}"
                for gid in range(4):  # link-local + IPv4, each as RoCE v1 and v2
                    write(port / "gid_attrs" / "ndevs" / str(gid), f"{netdev}\n")
                tree.netdevs[key] = (netdev,)
            if ipoib:
                netdev = f"ib{d * ports + p - 1}"
                write(base / "device" / "net" / netdev / "dev_port", f"{p - 1}\n")
                tree.netdevs[key] = (netdev,)
    return tree
