"""`rdma`: InfiniBand / RoCE / Omni-Path ports from sysfs, their netdevs from rtnetlink.

Reads `<--path.sysfs>/class/infiniband/<device>/`:

- device attributes `fw_ver`, `board_id`, `hca_type`, `node_guid` → `hpcobs_rdma_device_info`;
- per port `state`, `phys_state`, `rate`, `link_layer`;
- per port `counters/*` (IB PMA counters; every file gets a metric: the well-known ones a
  named metric, the rest `hpcobs_rdma_port_counter_total{counter}`), `counters_ext/*` (64-bit
  counters of kernels before 4.5) and `hw_counters/*` (driver counters,
  `hpcobs_rdma_hw_counters_total{counter}`);
- the port's netdevs (RoCE: `gid_attrs/ndevs/*`; IPoIB: `device/net/*` with `dev_port`), whose
  statistics, operstate, carrier and carrier_changes come from rtnetlink (`RTM_GETLINK`), and
  whose carrier losses a background listener counts as they happen
  (`hpcobs_rdma_netdev_link_flaps_total`, see `hpcobs.exporters.netlink`).

`port_xmit_data` / `port_rcv_data` (and the `_64` variants) count 4-byte words; they are
exported in bytes (× 4), as node_exporter does. hfi1 (Omni-Path) reports these two in 8-byte
flits; node_exporter multiplies them by 4 all the same and so does this collector, to give
the same numbers for the same tree (docs/rdma.md).

Speed: the layout of the tree (which devices, ports and counter files exist, the device
attributes, `link_layer` and the netdev mapping) is cached and re-listed every
`--collector.rdma.rescan-interval`, when the device list changes, or when a file vanished;
a scrape only lists `class/infiniband/` and reads the value files with `os.open`/`os.read`.

Start-up reads nothing: constructing the collector only stores its options, so a sysfs read
that blocks (a wedged driver) cannot keep the daemon from listening. The first scrape lists the
tree and starts the netlink listener, in the scrape's worker thread under `--scrape.timeout`
like every collection: a read that hangs costs `hpcobs_collector_up{collector="rdma"} 0` at the
deadline, and later scrapes wait on that same collection (one thread, not one per scrape)
until the read returns.

Faults never fail the scrape: a file that cannot be read or parsed, a counter that goes
backwards and a device or port that vanishes are logged once with the path (`OnceLog`) and
the rest is exported. No `class/infiniband` at all means no series (the collector stays up).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from hpcobs.exporters.netlink import STATS64_FIELDS, LinkMonitor, NetlinkUnavailableError
from hpcobs.exporters.parse.infiniband import (
    is_not_available,
    parse_counter,
    parse_dev_port,
    parse_rate,
    parse_state,
    parse_text,
    port_netdevs,
    preview,
)
from hpcobs.exporters.runtime.cli import parse_duration
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, Services
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.runtime.once import OnceLog

log = logging.getLogger("hpcobs.rdma")

PORT = ("device", "port")
NETDEV = ("device", "port", "netdev")

# -- device and port ----------------------------------------------------------------------
DEVICE_INFO = MetricDef(
    "hpcobs_rdma_device_info",
    "gauge",
    "RDMA device (HCA) attributes from sysfs; constant 1.",
    ("device", "firmware_version", "board_id", "hca_type", "node_guid"),
)
PORT_INFO = MetricDef(
    "hpcobs_rdma_port_info",
    "gauge",
    "RDMA port link layer (InfiniBand, Ethernet for RoCE); constant 1.",
    ("device", "port", "link_layer"),
)
PORT_STATE = MetricDef(
    "hpcobs_rdma_port_state",
    "gauge",
    "IB logical port state (1 down, 2 init, 3 armed, 4 active, 5 active defer).",
    PORT,
)
PORT_PHYSICAL_STATE = MetricDef(
    "hpcobs_rdma_port_physical_state",
    "gauge",
    "IB physical port state (1 sleep, 2 polling, 3 disabled, 4 port configuration training, "
    "5 link up, 6 link error recovery, 7 phy test).",
    PORT,
)
PORT_RATE = MetricDef(
    "hpcobs_rdma_port_rate_bytes_per_second",
    "gauge",
    "Port signalling rate (sysfs rate, Gb/s converted to bytes per second).",
    PORT,
)


def _port_counter(name: str, help: str) -> MetricDef:
    return MetricDef(f"hpcobs_rdma_port_{name}_total", "counter", help, PORT)


RECEIVE_BYTES = _port_counter(
    "receive_bytes", "Data received on the port in bytes (port_rcv_data × 4)."
)
TRANSMIT_BYTES = _port_counter(
    "transmit_bytes", "Data transmitted on the port in bytes (port_xmit_data × 4)."
)
RECEIVE_PACKETS = _port_counter(
    "receive_packets", "Packets received on all VLs (port_rcv_packets)."
)
TRANSMIT_PACKETS = _port_counter(
    "transmit_packets", "Packets transmitted on all VLs (port_xmit_packets)."
)
UNICAST_RECEIVE_PACKETS = _port_counter(
    "unicast_receive_packets", "Unicast packets received (unicast_rcv_packets)."
)
UNICAST_TRANSMIT_PACKETS = _port_counter(
    "unicast_transmit_packets", "Unicast packets transmitted (unicast_xmit_packets)."
)
MULTICAST_RECEIVE_PACKETS = _port_counter(
    "multicast_receive_packets", "Multicast packets received (multicast_rcv_packets)."
)
MULTICAST_TRANSMIT_PACKETS = _port_counter(
    "multicast_transmit_packets", "Multicast packets transmitted (multicast_xmit_packets)."
)
LINK_DOWNED = _port_counter(
    "link_downed", "Times the link failed to recover from an error and went down (link_downed)."
)
LINK_ERROR_RECOVERY = _port_counter(
    "link_error_recovery",
    "Times the link recovered from an error state (link_error_recovery).",
)
SYMBOL_ERRORS = _port_counter(
    "symbol_errors", "Minor link errors on the physical lanes (symbol_error)."
)
RECEIVE_ERRORS = _port_counter(
    "receive_errors", "Received packets with an error (port_rcv_errors)."
)
TRANSMIT_DISCARDS = _port_counter(
    "transmit_discards",
    "Outbound packets discarded because the port was down or congested (port_xmit_discards).",
)
TRANSMIT_WAIT = _port_counter(
    "transmit_wait",
    "Ticks during which the port had data to send but could not (port_xmit_wait).",
)
RECEIVE_DISCARDS = _port_counter(
    "receive_discards", "Inbound packets discarded by the port (port_rcv_discards)."
)
RECEIVE_REMOTE_PHYSICAL_ERRORS = _port_counter(
    "receive_remote_physical_errors",
    "Received packets marked bad by a remote physical error (port_rcv_remote_physical_errors).",
)
RECEIVE_SWITCH_RELAY_ERRORS = _port_counter(
    "receive_switch_relay_errors",
    "Received packets a switch could not relay (port_rcv_switch_relay_errors).",
)
RECEIVE_CONSTRAINT_ERRORS = _port_counter(
    "receive_constraint_errors",
    "Received packets discarded by partition/filter constraints (port_rcv_constraint_errors).",
)
TRANSMIT_CONSTRAINT_ERRORS = _port_counter(
    "transmit_constraint_errors",
    "Packets not transmitted because of partition/filter constraints "
    "(port_xmit_constraint_errors).",
)
LOCAL_LINK_INTEGRITY_ERRORS = _port_counter(
    "local_link_integrity_errors",
    "Times local physical errors exceeded the threshold (local_link_integrity_errors).",
)
EXCESSIVE_BUFFER_OVERRUN_ERRORS = _port_counter(
    "excessive_buffer_overrun_errors",
    "Consecutive receive buffer overrun events (excessive_buffer_overrun_errors).",
)
VL15_DROPPED = _port_counter("vl15_dropped", "Subnet management packets dropped (VL15_dropped).")
PORT_COUNTER = MetricDef(
    "hpcobs_rdma_port_counter_total",
    "counter",
    "Other files of the port's counters/ folder, raw value, by file name.",
    ("device", "port", "counter"),
)
LEGACY_RECEIVE_BYTES = _port_counter(
    "legacy_receive_bytes",
    "Data received in bytes from counters_ext/port_rcv_data_64 × 4 (kernels before 4.5).",
)
LEGACY_TRANSMIT_BYTES = _port_counter(
    "legacy_transmit_bytes",
    "Data transmitted in bytes from counters_ext/port_xmit_data_64 × 4 (kernels before 4.5).",
)
LEGACY_COUNTER = MetricDef(
    "hpcobs_rdma_port_legacy_counter_total",
    "counter",
    "Other files of the port's counters_ext/ folder (kernels before 4.5), raw value, by name.",
    ("device", "port", "counter"),
)
HW_COUNTER = MetricDef(
    "hpcobs_rdma_hw_counters_total",
    "counter",
    "Driver counters of the port's hw_counters/ folder, by file name (lifespan excluded).",
    ("device", "port", "counter"),
)
HW_COUNTERS_LIFESPAN = MetricDef(
    "hpcobs_rdma_hw_counters_lifespan_seconds",
    "gauge",
    "How long the driver caches hw_counters values (hw_counters/lifespan, milliseconds / 1000).",
    PORT,
)

# counters/ file → (metric, factor to base units)
COUNTERS: dict[str, tuple[MetricDef, int]] = {
    "port_rcv_data": (RECEIVE_BYTES, 4),
    "port_xmit_data": (TRANSMIT_BYTES, 4),
    "port_rcv_packets": (RECEIVE_PACKETS, 1),
    "port_xmit_packets": (TRANSMIT_PACKETS, 1),
    "unicast_rcv_packets": (UNICAST_RECEIVE_PACKETS, 1),
    "unicast_xmit_packets": (UNICAST_TRANSMIT_PACKETS, 1),
    "multicast_rcv_packets": (MULTICAST_RECEIVE_PACKETS, 1),
    "multicast_xmit_packets": (MULTICAST_TRANSMIT_PACKETS, 1),
    "link_downed": (LINK_DOWNED, 1),
    "link_error_recovery": (LINK_ERROR_RECOVERY, 1),
    "symbol_error": (SYMBOL_ERRORS, 1),
    "port_rcv_errors": (RECEIVE_ERRORS, 1),
    "port_xmit_discards": (TRANSMIT_DISCARDS, 1),
    "port_xmit_wait": (TRANSMIT_WAIT, 1),
    "port_rcv_discards": (RECEIVE_DISCARDS, 1),
    "port_rcv_remote_physical_errors": (RECEIVE_REMOTE_PHYSICAL_ERRORS, 1),
    "port_rcv_switch_relay_errors": (RECEIVE_SWITCH_RELAY_ERRORS, 1),
    "port_rcv_constraint_errors": (RECEIVE_CONSTRAINT_ERRORS, 1),
    "port_xmit_constraint_errors": (TRANSMIT_CONSTRAINT_ERRORS, 1),
    "local_link_integrity_errors": (LOCAL_LINK_INTEGRITY_ERRORS, 1),
    "excessive_buffer_overrun_errors": (EXCESSIVE_BUFFER_OVERRUN_ERRORS, 1),
    "VL15_dropped": (VL15_DROPPED, 1),
}
# counters_ext/ file → (metric, factor); the rest go to LEGACY_COUNTER
COUNTERS_EXT: dict[str, tuple[MetricDef, int]] = {
    "port_rcv_data_64": (LEGACY_RECEIVE_BYTES, 4),
    "port_xmit_data_64": (LEGACY_TRANSMIT_BYTES, 4),
}
HW_LIFESPAN = "lifespan"  # not a counter: the driver's cache time in milliseconds

# -- netdevs ------------------------------------------------------------------------------
NETDEV_INFO = MetricDef(
    "hpcobs_rdma_netdev_info",
    "gauge",
    "A netdev of an RDMA port (RoCE or IPoIB) with its operstate; constant 1.",
    ("device", "port", "netdev", "operstate"),
)
NETDEV_UP = MetricDef(
    "hpcobs_rdma_netdev_up",
    "gauge",
    "1 when the netdev's operstate is UP.",
    NETDEV,
)
NETDEV_CARRIER = MetricDef(
    "hpcobs_rdma_netdev_carrier",
    "gauge",
    "1 when the netdev has carrier (IFLA_CARRIER).",
    NETDEV,
)
NETDEV_CARRIER_CHANGES = MetricDef(
    "hpcobs_rdma_netdev_carrier_changes_total",
    "counter",
    "Carrier changes of the netdev, up and down, as the kernel counts them (IFLA_CARRIER_CHANGES).",
    NETDEV,
)
NETDEV_LINK_FLAPS = MetricDef(
    "hpcobs_rdma_netdev_link_flaps_total",
    "counter",
    "Carrier losses (up → down) of the netdev seen by the netlink listener since the "
    "exporter started, however short.",
    NETDEV,
)
_STAT_NAMES = {
    "rx_": "receive_",
    "tx_": "transmit_",
}
_STAT_SPECIAL = {
    "multicast": "receive_multicast_packets",
    "collisions": "collisions",
    "rx_compressed": "receive_compressed_packets",
    "tx_compressed": "transmit_compressed_packets",
    "rx_nohandler": "receive_nohandler_packets",
}


def _stat_metric(field_name: str) -> MetricDef:
    name = _STAT_SPECIAL.get(field_name)
    if name is None:
        name = _STAT_NAMES[field_name[:3]] + field_name[3:]
    return MetricDef(
        f"hpcobs_rdma_netdev_{name}_total",
        "counter",
        f"Netdev statistic {field_name} (rtnetlink IFLA_STATS64).",
        NETDEV,
    )


NETDEV_STATS: dict[str, MetricDef] = {f: _stat_metric(f) for f in STATS64_FIELDS}
NETLINK_UP = MetricDef(
    "hpcobs_rdma_netlink_up",
    "gauge",
    "1 while the rtnetlink listener is connected (netdev metrics need it).",
)
NETLINK_ERRORS = MetricDef(
    "hpcobs_rdma_netlink_errors_total",
    "counter",
    "rtnetlink listener connections that failed or broke (each followed by a reconnect).",
)

METRICS = (
    DEVICE_INFO,
    PORT_INFO,
    PORT_STATE,
    PORT_PHYSICAL_STATE,
    PORT_RATE,
    *(metric for metric, _ in COUNTERS.values()),
    PORT_COUNTER,
    *(metric for metric, _ in COUNTERS_EXT.values()),
    LEGACY_COUNTER,
    HW_COUNTER,
    HW_COUNTERS_LIFESPAN,
    NETDEV_INFO,
    NETDEV_UP,
    NETDEV_CARRIER,
    NETDEV_CARRIER_CHANGES,
    NETDEV_LINK_FLAPS,
    *NETDEV_STATS.values(),
    NETLINK_UP,
    NETLINK_ERRORS,
)

_INDEX = {id(metric): i for i, metric in enumerate(METRICS)}

# -- reading ------------------------------------------------------------------------------
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_VANISHED = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.ESTALE, errno.ENOTDIR})
_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENODATA, errno.ENOSYS})


def _read(path: str) -> bytes:
    fd = os.open(path, _OPEN_FLAGS)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _try_read(path: str) -> bytes | None:
    try:
        return _read(path)
    except OSError:
        return None


def _read_text(path: str) -> str:
    """A text attribute's value; "" when it cannot be read."""
    raw = _try_read(path)
    return "" if raw is None else parse_text(raw)


def _list_files(path: str) -> list[str]:
    """Names of the regular files of a folder (sysfs attributes), sorted; [] if absent."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_file())
    except OSError:
        return []


def _read_all(slots: list[_Slot], errors: list[tuple[str, OSError]]) -> list[bytes | None]:
    """Each slot's file content (`None` where it failed, the error added to `errors`)."""
    pread = os.pread
    try:  # the common case, in one tight loop: every file open and readable
        return [pread(slot.fd, 4096, 0) for slot in slots]
    except OSError:
        pass
    out: list[bytes | None] = []
    for slot in slots:
        try:
            out.append(pread(slot.fd, 4096, 0) if slot.fd >= 0 else _read(slot.path))
        except OSError as exc:
            errors.append((slot.path, exc))
            out.append(None)
    return out


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _default_fd_budget() -> int:
    """Keep at most half of the soft RLIMIT_NOFILE as open counter files."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return 8192
    return max(0, min(8192, soft // 2 - 64))


# What a slot reads.
_COUNTER, _STATE, _PHYS_STATE, _RATE, _LIFESPAN = range(5)


class _Slot:
    """One value file of a port, with everything its sample needs, worked out at scan time.

    Files are kept open (`fd`) and re-read with `pread(fd, 4096, 0)`: a read at offset 0 of a
    sysfs attribute calls the attribute's show function again (seq_file), so each scrape gets
    a fresh value for one system call instead of three. A file of a removed device answers
    ENODEV. `fd` is -1 beyond the descriptor budget: then the file is opened per read.
    """

    __slots__ = ("fd", "index", "kind", "labels", "last", "name", "path", "scale")

    def __init__(
        self, path: str, kind: int, metric: MetricDef, labels: dict[str, str], scale: int = 1
    ) -> None:
        self.path = path
        self.kind = kind
        self.index = _INDEX[id(metric)]
        self.name = metric.name
        self.labels = labels
        self.scale = scale
        self.fd = -1
        self.last: int | None = None


@dataclass(slots=True)
class _PortPlan:
    path: str
    labels: dict[str, str]
    info: dict[str, str]  # PORT_INFO labels (link_layer cached: it does not change)
    others: list[_Slot]  # state, phys_state, rate, hw_counters/lifespan
    counters: list[_Slot]  # counters/, counters_ext/, hw_counters/ files
    netdevs: tuple[str, ...] = ()

    @property
    def slots(self) -> list[_Slot]:
        return self.others + self.counters


@dataclass(slots=True)
class _DevicePlan:
    info: dict[str, str]  # DEVICE_INFO labels
    ports: list[_PortPlan]
    watch: list[tuple[str, tuple[int, int] | None]]  # folders whose change means: re-scan
    scanned_at: float
    stale: bool = False


class _Samples:
    """Samples of one scrape by metric; families are made at the end, in METRICS order."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: list[list[Sample]] = [[] for _ in METRICS]

    def add(self, metric: MetricDef, labels: dict[str, str], value: float) -> None:
        self.buckets[_INDEX[id(metric)]].append(Sample(metric.name, labels, value))

    def families(self) -> list[Metric]:
        out = []
        for metric, samples in zip(METRICS, self.buckets, strict=True):
            if samples:
                family = metric.family()
                family.samples = samples
                out.append(family)
        return out


MonitorFactory = Callable[[], LinkMonitor]
CLOSE_WAIT_SECONDS = 2.0


class RdmaCollector(Collector):
    """See the module docstring."""

    name = "rdma"

    def __init__(
        self,
        sysfs: str = "/sys",
        *,
        netlink: bool = True,
        rescan_interval: float = 60.0,
        layout_check_interval: float = 1.0,
        max_open_files: int | None = None,
        monitor_factory: MonitorFactory = LinkMonitor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = os.path.join(sysfs, "class", "infiniband")
        self.netlink = netlink
        self.rescan_interval = rescan_interval
        self.layout_check_interval = layout_check_interval
        self._layout_checked = float("-inf")
        self.fd_budget = _default_fd_budget() if max_open_files is None else max_open_files
        self.monitor_factory = monitor_factory
        self.clock = clock
        self.bad = OnceLog(log)
        self._bad_paths: set[str] = set()
        self._plans: dict[str, _DevicePlan] = {}
        self._open_fds = 0
        self._monitor: LinkMonitor | None = None
        self._lock = threading.Lock()
        self._closed = False
        # Nothing is read here: a sysfs read can block (a wedged driver), and the daemon must
        # listen first. The first scrape lists the tree, under the scrape deadline.

    # -- Collector -------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._closed:
                return iter(())
            samples = _Samples()
            self._refresh_plans()
            for plan in self._plans.values():
                samples.add(DEVICE_INFO, plan.info, 1.0)
                for port in plan.ports:
                    if not self._collect_port(port, samples):
                        plan.stale = True  # a file vanished: re-list the device next scrape
            self._collect_netdevs(samples)
            return iter(samples.families())

    def close(self) -> None:
        """Stop the listener and close the descriptors. A collection stuck in a sysfs read is
        waited for only `CLOSE_WAIT_SECONDS` (its descriptors are then left to the exit)."""
        self._closed = True  # no listener is started after this
        locked = self._lock.acquire(timeout=CLOSE_WAIT_SECONDS)
        try:
            monitor, self._monitor = self._monitor, None
            if locked:
                for plan in self._plans.values():
                    self._close_plan(plan)
                self._plans.clear()
            else:
                log.warning(
                    "rdma collection still running (a sysfs read does not return); "
                    "not waiting for it",
                    extra={"root": self.root},
                )
        finally:
            if locked:
                self._lock.release()
        if monitor is not None:
            monitor.close()

    # -- layout cache ----------------------------------------------------------------------
    def _refresh_plans(self) -> None:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            names = []
        except OSError as exc:
            self._report(self.root, "cannot list RDMA devices", exc)
            names = []
        now = self.clock()
        current = set(names)
        for gone in [n for n in self._plans if n not in current]:
            self.bad.info(("gone", gone), "RDMA device disappeared", device=gone)
            self._close_plan(self._plans.pop(gone))
        # Folders' (inode, mtime) show files added, removed or replaced (a tree of plain files;
        # on sysfs a removed device's files also answer ENODEV): checked at most once a second.
        check = now - self._layout_checked >= self.layout_check_interval
        if check:
            self._layout_checked = now
        changed = False
        for name in names:
            plan = self._plans.get(name)
            if (
                plan is not None
                and not plan.stale
                and now - plan.scanned_at < self.rescan_interval
                and not (check and any(_signature(path) != sig for path, sig in plan.watch))
            ):
                continue
            if plan is not None:
                self._close_plan(plan)
            fresh = self._scan_device(name, now, plan)
            changed = True
            if fresh is None:
                self._plans.pop(name, None)
            else:
                self._plans[name] = fresh
                self.bad.clear(("gone", name))
        if changed:
            self._plans = dict(sorted(self._plans.items()))

    def _close_plan(self, plan: _DevicePlan) -> None:
        for port in plan.ports:
            for slot in port.slots:
                if slot.fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(slot.fd)
                    slot.fd = -1
                    self._open_fds -= 1

    def _open_slot(self, slot: _Slot) -> None:
        if self._open_fds >= self.fd_budget:
            return
        try:
            slot.fd = os.open(slot.path, _OPEN_FLAGS)
        except OSError:
            return  # read per scrape; the error (if it persists) is reported then
        self._open_fds += 1

    def _scan_device(
        self, name: str, now: float, previous: _DevicePlan | None
    ) -> _DevicePlan | None:
        path = os.path.join(self.root, name)
        ports_path = os.path.join(path, "ports")
        watch = [(ports_path, _signature(ports_path))]
        try:
            port_names = sorted((p for p in os.listdir(ports_path) if p.isdigit()), key=int)
        except OSError as exc:
            if exc.errno in _VANISHED:
                if os.path.isdir(path):
                    self.bad.info(ports_path, "RDMA device without ports", path=ports_path)
                return None
            self._report(ports_path, "cannot list ports", exc)
            return None
        attrs = [
            _read_text(os.path.join(path, a))
            for a in ("fw_ver", "board_id", "hca_type", "node_guid")
        ]
        info = dict(zip(DEVICE_INFO.labels, (name, *attrs), strict=True))
        device_net = self._device_netdevs(path)
        last = {
            slot.path: slot.last
            for port in (previous.ports if previous is not None else ())
            for slot in port.slots
        }
        ports = []
        for port in port_names:
            port_path = os.path.join(ports_path, port)
            plan = self._scan_port(name, port, port_path, len(port_names), device_net)
            for slot in plan.slots:
                slot.last = last.get(slot.path)
                self._open_slot(slot)
            ports.append(plan)
            watch.append((port_path, _signature(port_path)))
            for folder in ("counters", "counters_ext", "hw_counters"):
                folder_path = os.path.join(port_path, folder)
                if os.path.isdir(folder_path):
                    watch.append((folder_path, _signature(folder_path)))
        return _DevicePlan(info=info, ports=ports, watch=watch, scanned_at=now)

    @staticmethod
    def _scan_port(
        device: str, port: str, path: str, nports: int, device_net: dict[str, int | None]
    ) -> _PortPlan:
        labels = {"device": device, "port": port}
        info = {**labels, "link_layer": _read_text(os.path.join(path, "link_layer"))}
        others = [
            _Slot(os.path.join(path, "state"), _STATE, PORT_STATE, labels),
            _Slot(os.path.join(path, "phys_state"), _PHYS_STATE, PORT_PHYSICAL_STATE, labels),
            _Slot(os.path.join(path, "rate"), _RATE, PORT_RATE, labels),
        ]
        slots: list[_Slot] = []
        for folder, known, other in (
            ("counters", COUNTERS, PORT_COUNTER),
            ("counters_ext", COUNTERS_EXT, LEGACY_COUNTER),
        ):
            folder_path = os.path.join(path, folder)
            for file in _list_files(folder_path):
                file_path = os.path.join(folder_path, file)
                metric_scale = known.get(file)
                if metric_scale is None:
                    slots.append(_Slot(file_path, _COUNTER, other, {**labels, "counter": file}))
                else:
                    metric, scale = metric_scale
                    slots.append(_Slot(file_path, _COUNTER, metric, labels, scale))
        hw_path = os.path.join(path, "hw_counters")
        for file in _list_files(hw_path):
            file_path = os.path.join(hw_path, file)
            if file == HW_LIFESPAN:
                others.append(_Slot(file_path, _LIFESPAN, HW_COUNTERS_LIFESPAN, labels))
            else:
                slots.append(_Slot(file_path, _COUNTER, HW_COUNTER, {**labels, "counter": file}))
        ndevs_path = os.path.join(path, "gid_attrs", "ndevs")
        gid_ndevs = [
            raw
            for n in _list_files(ndevs_path)
            if (raw := _try_read(os.path.join(ndevs_path, n))) is not None
        ]
        return _PortPlan(
            path=path,
            labels=labels,
            info=info,
            others=others,
            counters=slots,
            netdevs=port_netdevs(int(port), nports, gid_ndevs, device_net),
        )

    @staticmethod
    def _device_netdevs(path: str) -> dict[str, int | None]:
        """`<device>/device/net/*` (and `<device>/net/*`): netdev → 0-based dev_port."""
        found: dict[str, int | None] = {}
        for folder in (os.path.join(path, "device", "net"), os.path.join(path, "net")):
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                continue
            for netdev in names:
                dev_port = None
                for attr in ("dev_port", "dev_id"):
                    raw = _try_read(os.path.join(folder, netdev, attr))
                    if raw is not None:
                        dev_port = parse_dev_port(raw)
                        if dev_port is not None:
                            break
                found.setdefault(netdev, dev_port)
        return found

    # -- one scrape ------------------------------------------------------------------------
    def _collect_port(self, port: _PortPlan, out: _Samples) -> bool:
        """Read one port's files into `out`; False when a file vanished (re-scan needed)."""
        buckets = out.buckets
        bad_paths = self._bad_paths
        errors: list[tuple[str, OSError]] = []
        out.add(PORT_INFO, port.info, 1.0)
        for slot, raw in zip(port.others, _read_all(port.others, errors), strict=True):
            if raw is None:
                continue
            value = self._parse_other(slot, raw)
            if value is not None:
                buckets[slot.index].append(Sample(slot.name, slot.labels, value))
        # The bulk: counters/, counters_ext/ and hw_counters/ files.
        for slot, raw in zip(port.counters, _read_all(port.counters, errors), strict=True):
            if raw is None:
                continue
            count = parse_counter(raw)
            if count is None:
                if not is_not_available(raw):  # "N/A (no PMA)": no value, not an error
                    self._bad_value(slot.path, raw, "not a counter")
                continue
            last = slot.last
            slot.last = count
            if last is not None and count < last:
                self._backwards(slot.path, last, count)
            buckets[slot.index].append(Sample(slot.name, slot.labels, count * slot.scale))
            if bad_paths and slot.path in bad_paths:
                self._mark_good(slot.path)
        if not errors:
            return True
        intact = True
        for path, error in errors:
            if error.errno in _VANISHED:
                intact = False
                if not os.path.isdir(port.path):
                    self.bad.info(port.path, "RDMA port disappeared", path=port.path)
                    break
                self.bad.info(path, "file disappeared", path=path)
            else:
                self._report(path, "cannot read", error)
        return intact

    def _parse_other(self, slot: _Slot, raw: bytes) -> float | None:
        """state, phys_state, rate, hw_counters/lifespan → the sample value (None: bad)."""
        value: float | None
        if slot.kind == _RATE:
            value = parse_rate(raw)
            what = "not '<n> Gb/sec (...)'"
        elif slot.kind == _LIFESPAN:
            count = parse_counter(raw)
            value = None if count is None else count / 1000.0
            what = "not a number of milliseconds"
        else:
            state = parse_state(raw)
            value = None if state is None else state.id
            what = "not '<id>: <name>'"
        if value is None:
            self._bad_value(slot.path, raw, what)
        elif self._bad_paths and slot.path in self._bad_paths:
            self._mark_good(slot.path)
        return value

    def _bad_value(self, path: str, raw: bytes, what: str) -> None:
        self._mark_bad(path)
        self.bad.warning(path, "unexpected content", path=path, reason=f"{what}: {preview(raw)}")

    def _backwards(self, path: str, last: int, value: int) -> None:
        self.bad.info(
            ("backwards", path),
            "counter went backwards (reset, driver reload or wrap); exported as read",
            path=path,
            previous=last,
            value=value,
        )

    def _report(self, path: str, msg: str, exc: OSError) -> None:
        self._mark_bad(path)
        level = logging.INFO if exc.errno in _UNSUPPORTED else logging.WARNING
        self.bad.log(level, path, msg, path=path, err=exc.strerror or str(exc))

    def _mark_bad(self, path: str) -> None:
        if len(self._bad_paths) < 10_000:
            self._bad_paths.add(path)

    def _mark_good(self, path: str) -> None:
        """A file reported bad reads well again: report it anew when it next goes bad."""
        self._bad_paths.discard(path)
        self.bad.clear(path)

    # -- netdevs ---------------------------------------------------------------------------
    def _ensure_monitor(self) -> LinkMonitor | None:
        if not self.netlink or self._closed:
            return None
        if self._monitor is None and any(p.netdevs for d in self._plans.values() for p in d.ports):
            self._monitor = self.monitor_factory()
            self._monitor.start()
        return self._monitor

    def _collect_netdevs(self, out: _Samples) -> None:
        targets = [
            (port.labels, netdev)
            for plan in self._plans.values()
            for port in plan.ports
            for netdev in port.netdevs
        ]
        monitor = self._ensure_monitor() if targets else self._monitor
        if monitor is None:
            return
        if not monitor.connected and monitor.connects == 0 and monitor.failures == 0:
            monitor.wait_connected(1.0)  # just started: not a reason to skip the first scrape
        out.add(NETLINK_UP, {}, 1.0 if monitor.connected else 0.0)
        out.add(NETLINK_ERRORS, {}, monitor.failures)
        if not targets:
            return
        try:
            links = monitor.query(netdev for _, netdev in targets)
        except NetlinkUnavailableError as exc:
            self.bad.warning(
                "netlink",
                "netlink unavailable: netdev metrics skipped, sysfs counters still exported",
                err=exc.strerror or str(exc),
            )
            return
        if self.bad.reported("netlink"):
            self.bad.clear("netlink")
            log.info("netlink available again")
        flaps = monitor.flaps.totals()
        for port_labels, netdev in targets:
            link = links.get(netdev)
            if link is None:
                self.bad.info(("netdev", netdev), "netdev of an RDMA port not found", netdev=netdev)
                continue
            self.bad.clear(("netdev", netdev))
            labels = {**port_labels, "netdev": netdev}
            out.add(NETDEV_INFO, {**labels, "operstate": link.operstate}, 1.0)
            out.add(NETDEV_UP, labels, 1.0 if link.operstate == "UP" else 0.0)
            if link.carrier is not None:
                out.add(NETDEV_CARRIER, labels, float(link.carrier))
            if link.carrier_changes is not None:
                out.add(NETDEV_CARRIER_CHANGES, labels, link.carrier_changes)
            out.add(NETDEV_LINK_FLAPS, labels, flaps.get(netdev, 0))
            for field_name, value in link.stats.items():
                metric = NETDEV_STATS.get(field_name)
                if metric is not None:
                    out.add(metric, labels, value)


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--collector.rdma.netlink",
        dest="rdma_netlink",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="netdev statistics, carrier and link flaps of RoCE/IPoIB ports over rtnetlink "
        "(default: enabled)",
    )
    group.add_argument(
        "--collector.rdma.rescan-interval",
        dest="rdma_rescan_interval",
        type=parse_duration,
        default=60.0,
        metavar="DURATION",
        help="re-list devices' ports, counter files and netdevs at least this often "
        "(default 60s; added or removed devices and files are seen at the next scrape)",
    )


def _factory(args: argparse.Namespace, services: Services) -> RdmaCollector:
    return RdmaCollector(
        getattr(args, "path_sysfs", "/sys"),
        netlink=getattr(args, "rdma_netlink", True),
        rescan_interval=getattr(args, "rdma_rescan_interval", 60.0),
    )


SPEC = CollectorSpec(
    name="rdma",
    help="InfiniBand/RoCE/Omni-Path port counters (sysfs) and their netdevs (netlink)",
    default_enabled=True,
    add_arguments=_options,
    factory=_factory,
)
