"""RDMA ports from sysfs, and their netdevs from rtnetlink: the `rdma` collector's source.

Reads `<sysfs>/class/infiniband/<device>/` (the layout is in `hpcobs.exporters.parse.infiniband`)
and returns a `Scan`: plain data classes with the values as the files hold them (counters raw:
`port_rcv_data` in 4-byte words), parsed by the pure functions of `parse/infiniband.py`. The
netdevs of RoCE / IPoIB ports come from `hpcobs.exporters.sources.netlink.LinkMonitor`, started
at the first scan that finds one. Nothing here knows about metrics.

How a scan stays cheap:

- The layout (devices, ports, counter files, device attributes, `link_layer`, the netdev
  mapping) is cached in plans and re-listed every `rescan_interval`, when the device list
  changes, when a watched folder's (inode, mtime) changes (checked at most every
  `layout_check_interval`), or when a file vanished. A scan otherwise lists
  `class/infiniband/` and reads the value files.
- Value files stay open and are re-read with `pread(fd, 256, 0)`: a read at offset 0 of a sysfs
  attribute runs its show function again, so a fresh value costs one system call, not three
  (open, read, close). Up to `max_open_files` descriptors (half the soft `RLIMIT_NOFILE`) are
  kept; beyond that a file is opened per read. A file of a removed device answers ENODEV.
- Counter files are parsed in one batch (`parse_counters`) and turned into dicts by zipping
  with the plan's file names.

Faults never fail the scan: a file that cannot be read or parsed, a counter that goes
backwards, a device or port that vanishes are logged once with the path (`OnceLog`, logger
`hpcobs.rdma`) and left out of the scan; what read well is returned.

Nothing is read at construction (a sysfs read can block on a wedged driver, and the daemon
must listen first); the first `scan()` lists the tree. `close()` waits at most
`CLOSE_WAIT_SECONDS` for a scan stuck in a read.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import lt
from typing import TypeVar, cast

from hpcobs.exporters.parse.infiniband import (
    is_not_available,
    parse_counter,
    parse_counters,
    parse_dev_port,
    parse_rate,
    parse_state_id,
    parse_text,
    port_netdevs,
    preview,
)
from hpcobs.exporters.runtime.once import OnceLog
from hpcobs.exporters.sources.netlink import Link, LinkMonitor, NetlinkUnavailableError

log = logging.getLogger("hpcobs.rdma")

HW_LIFESPAN = "lifespan"
"""`hw_counters/lifespan`: not a counter but the driver's cache time in milliseconds."""

CLOSE_WAIT_SECONDS = 2.0


# -- the model -------------------------------------------------------------------------------
@dataclass(slots=True)
class Port:
    """One port of an RDMA device as read in one scan. A value that could not be read or
    parsed is `None` (or absent from its dict)."""

    device: str
    port: str  # the sysfs folder name: "1", "2"
    link_layer: str  # "InfiniBand", "Ethernet" (RoCE); "" when unreadable
    state: int | None = None  # logical state number (4 = ACTIVE)
    phys_state: int | None = None  # physical state number (5 = LinkUp)
    rate: float | None = None  # signalling rate in bytes per second
    hw_counters_lifespan_ms: int | None = None  # the driver's hw_counters cache time
    counters: dict[str, int] = field(default_factory=dict)  # counters/<file>, raw
    counters_ext: dict[str, int] = field(default_factory=dict)  # counters_ext/<file>, raw
    hw_counters: dict[str, int] = field(default_factory=dict)  # hw_counters/<file>, raw
    netdevs: tuple[str, ...] = ()  # its RoCE / IPoIB network interfaces, sorted


@dataclass(slots=True)
class Device:
    """One RDMA device (HCA); text attributes are `""` when the driver has no such file."""

    name: str
    firmware_version: str  # fw_ver
    board_id: str
    hca_type: str
    node_guid: str
    ports: list[Port]


@dataclass(slots=True)
class Netlink:
    """The rtnetlink listener's state and the ports' netdevs it found."""

    connected: bool
    failures: int  # connections that failed or broke
    links: dict[str, Link]  # netdev name → link; missing: unknown to the kernel, or no answer
    flaps: dict[str, int]  # netdev name → carrier losses seen since the listener started


@dataclass(slots=True)
class Scan:
    devices: list[Device]  # sorted by name; ports sorted by number
    netlink: Netlink | None  # None: netlink off, or no netdev seen yet (no listener)

    def ports(self) -> Iterator[Port]:
        return (port for device in self.devices for port in device.ports)


# -- reading ---------------------------------------------------------------------------------
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_VANISHED = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.ESTALE, errno.ENOTDIR})
_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENODATA, errno.ENOSYS})
_FULL = 4096  # a sysfs attribute is at most a page
# Values are short ("4: ACTIVE\n", 20 digits): pread asks for 256 bytes, which Python
# allocates from its small-object pool, not 4096 (malloc, then a shrinking realloc). A read
# that fills the buffer is read again in full. Measured on the 4 HCA × 2 port tree (432
# files): 0.37 → 0.31 µs per file, 25 µs per scrape.
_SHORT = 256


def _read(path: str) -> bytes:
    fd = os.open(path, _OPEN_FLAGS)
    try:
        return os.read(fd, _FULL)
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


class _Slot:
    """One value file of a port: its path and, while the descriptor budget allows, an open fd
    (-1: opened per read)."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1


def _read_all(
    slots: Sequence[_Slot], fds: list[int], errors: list[tuple[str, OSError]]
) -> Sequence[bytes | None]:
    """Each slot's content (`None` where it failed, the error added to `errors`)."""
    try:  # the common case, in one C loop: every file open and readable
        return list(map(os.pread, fds, repeat(_SHORT), repeat(0)))
    except OSError:
        pass
    out: list[bytes | None] = []
    for slot in slots:
        try:
            out.append(os.pread(slot.fd, _SHORT, 0) if slot.fd >= 0 else _read(slot.path))
        except OSError as exc:
            errors.append((slot.path, exc))
            out.append(None)
    return out


def _full(slot: _Slot, raw: bytes) -> bytes:
    """`raw` if it is the whole file; the whole file if `raw` filled the short buffer."""
    if len(raw) < _SHORT:
        return raw
    try:
        return os.pread(slot.fd, _FULL, 0) if slot.fd >= 0 else _read(slot.path)
    except OSError:
        return raw


# What an "other" slot of a port holds.
_STATE, _PHYS_STATE, _RATE, _LIFESPAN = range(4)
_NOT_STATE = "not '<id>: <name>'"
_T = TypeVar("_T", int, float)


@dataclass(slots=True)
class _PortPlan:
    path: str
    device: str
    port: str
    link_layer: str  # cached: it does not change
    others: list[_Slot]  # state, phys_state, rate (and hw_counters/lifespan)
    other_kinds: list[int]
    counters: list[_Slot]  # counters/, counters_ext/, hw_counters/ files, in this order
    groups: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # their file names
    netdevs: tuple[str, ...] = ()
    other_fds: list[int] = field(default_factory=list)
    counter_fds: list[int] = field(default_factory=list)
    last: Sequence[int | None] = ()  # the counters' values at the previous scan

    @property
    def slots(self) -> list[_Slot]:
        return self.others + self.counters


@dataclass(slots=True)
class _DevicePlan:
    attrs: tuple[str, str, str, str]  # fw_ver, board_id, hca_type, node_guid
    ports: list[_PortPlan]
    watch: list[tuple[str, tuple[int, int] | None]]  # folders whose change means: re-scan
    scanned_at: float
    stale: bool = False


MonitorFactory = Callable[[], LinkMonitor]


class RdmaSource:
    """See the module docstring. `scan()` is called once per scrape; `close()` once."""

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
        self.monitor: LinkMonitor | None = None
        self._lock = threading.Lock()
        self._closed = False
        # Nothing is read here: a sysfs read can block (a wedged driver), and the daemon must
        # listen first. The first scan lists the tree, under the scrape's deadline.

    def scan(self) -> Scan | None:
        """Read every device and port (and the ports' netdevs); `None` once closed."""
        with self._lock:
            if self._closed:
                return None
            self._refresh_plans()
            devices = []
            for name, plan in self._plans.items():
                ports = []
                for port_plan in plan.ports:
                    port, intact = self._read_port(port_plan)
                    ports.append(port)
                    if not intact:
                        plan.stale = True  # a file vanished: re-list the device next scan
                devices.append(Device(name, *plan.attrs, ports))
            return Scan(devices, self._read_netdevs())

    def close(self) -> None:
        """Stop the listener and close the descriptors. A scan stuck in a sysfs read is
        waited for only `CLOSE_WAIT_SECONDS` (its descriptors are then left to the exit)."""
        self._closed = True  # no listener is started after this
        locked = self._lock.acquire(timeout=CLOSE_WAIT_SECONDS)
        try:
            monitor, self.monitor = self.monitor, None
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

    # -- layout cache ------------------------------------------------------------------------
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
            port.other_fds = [-1] * len(port.others)
            port.counter_fds = [-1] * len(port.counters)

    def _open_slot(self, slot: _Slot) -> None:
        if self._open_fds >= self.fd_budget:
            return
        try:
            slot.fd = os.open(slot.path, _OPEN_FLAGS)
        except OSError:
            return  # read per scan; the error (if it persists) is reported then
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
        fw_ver, board_id, hca_type, node_guid = (
            _read_text(os.path.join(path, a))
            for a in ("fw_ver", "board_id", "hca_type", "node_guid")
        )
        device_net = self._device_netdevs(path)
        last: dict[str, int | None] = {}
        for old in previous.ports if previous is not None else ():
            last.update(zip((s.path for s in old.counters), old.last, strict=True))
        ports = []
        for port in port_names:
            port_path = os.path.join(ports_path, port)
            plan = self._scan_port(name, port, port_path, len(port_names), device_net)
            for slot in plan.slots:
                self._open_slot(slot)
            plan.other_fds = [slot.fd for slot in plan.others]
            plan.counter_fds = [slot.fd for slot in plan.counters]
            plan.last = [last.get(slot.path) for slot in plan.counters]
            ports.append(plan)
            watch.append((port_path, _signature(port_path)))
            for folder in ("counters", "counters_ext", "hw_counters"):
                folder_path = os.path.join(port_path, folder)
                if os.path.isdir(folder_path):
                    watch.append((folder_path, _signature(folder_path)))
        return _DevicePlan(
            attrs=(fw_ver, board_id, hca_type, node_guid),
            ports=ports,
            watch=watch,
            scanned_at=now,
        )

    @staticmethod
    def _scan_port(
        device: str, port: str, path: str, nports: int, device_net: dict[str, int | None]
    ) -> _PortPlan:
        others = [_Slot(os.path.join(path, f)) for f in ("state", "phys_state", "rate")]
        kinds = [_STATE, _PHYS_STATE, _RATE]
        slots: list[_Slot] = []
        groups: list[tuple[str, ...]] = []
        for folder in ("counters", "counters_ext", "hw_counters"):
            folder_path = os.path.join(path, folder)
            files = _list_files(folder_path)
            if folder == "hw_counters" and HW_LIFESPAN in files:
                files.remove(HW_LIFESPAN)
                others.append(_Slot(os.path.join(folder_path, HW_LIFESPAN)))
                kinds.append(_LIFESPAN)
            slots.extend(_Slot(os.path.join(folder_path, file)) for file in files)
            groups.append(tuple(files))
        ndevs_path = os.path.join(path, "gid_attrs", "ndevs")
        gid_ndevs = [
            raw
            for n in _list_files(ndevs_path)
            if (raw := _try_read(os.path.join(ndevs_path, n))) is not None
        ]
        return _PortPlan(
            path=path,
            device=device,
            port=port,
            link_layer=_read_text(os.path.join(path, "link_layer")),
            others=others,
            other_kinds=kinds,
            counters=slots,
            groups=(groups[0], groups[1], groups[2]),
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

    # -- one scan ----------------------------------------------------------------------------
    def _read_port(self, plan: _PortPlan) -> tuple[Port, bool]:
        """One port's values; False when a file vanished (re-scan needed)."""
        errors: list[tuple[str, OSError]] = []
        state = phys_state = lifespan = None
        rate = None
        raws = _read_all(plan.others, plan.other_fds, errors)
        for slot, kind, raw in zip(plan.others, plan.other_kinds, raws, strict=True):
            if raw is None:
                continue
            if kind == _RATE:
                rate = self._parse_other(slot, raw, parse_rate, "not '<n> Gb/sec (...)'")
            elif kind == _LIFESPAN:
                lifespan = self._parse_other(
                    slot, raw, parse_counter, "not a number of milliseconds"
                )
            elif kind == _STATE:
                state = self._parse_other(slot, raw, parse_state_id, _NOT_STATE)
            else:
                phys_state = self._parse_other(slot, raw, parse_state_id, _NOT_STATE)
        # The bulk: counters/, counters_ext/ and hw_counters/ files, parsed in one batch when
        # all read and are plain counters (24 µs less per scrape of the 4 HCA × 2 port tree
        # than one by one, see parse_counters), else one by one.
        raws = _read_all(plan.counters, plan.counter_fds, errors)
        counts = None if errors else parse_counters(cast("list[bytes]", raws))
        values: Sequence[int | None]
        names, names_ext, names_hw = plan.groups
        if counts is not None:
            values = counts
            it = iter(counts)  # each dict takes its files' values, in order
            counters = dict(zip(names, it, strict=False))
            counters_ext = dict(zip(names_ext, it, strict=False))
            hw_counters = dict(zip(names_hw, it, strict=False))
        else:
            values = self._parse_counters(plan.counters, raws)
            some = iter(values)
            counters, counters_ext, hw_counters = (
                {name: v for name, v in zip(group, some, strict=False) if v is not None}
                for group in plan.groups
            )
        try:
            backwards = any(map(lt, values, plan.last))  # type: ignore[arg-type]  # None: below
        except TypeError:  # a None: the port's first scan, or a file that did not read
            backwards = True
        if backwards:
            self._check_backwards(plan, values)
        else:
            plan.last = values
        if self._bad_paths:
            bad_paths = self._bad_paths
            for slot, value in zip(plan.counters, values, strict=True):
                if value is not None and slot.path in bad_paths:
                    self._mark_good(slot.path)
        port = Port(
            plan.device,
            plan.port,
            plan.link_layer,
            state,
            phys_state,
            rate,
            lifespan,
            counters,
            counters_ext,
            hw_counters,
            plan.netdevs,
        )
        return port, not errors or self._vanished(plan, errors)

    def _parse_other(
        self, slot: _Slot, raw: bytes, parse: Callable[[bytes], _T | None], what: str
    ) -> _T | None:
        """state, phys_state, rate, hw_counters/lifespan → its value (None: reported bad)."""
        if len(raw) >= _SHORT:
            raw = _full(slot, raw)
        value = parse(raw)
        if value is None:
            self._bad_value(slot.path, raw, what)
        elif self._bad_paths and slot.path in self._bad_paths:
            self._mark_good(slot.path)
        return value

    def _parse_counters(
        self, slots: Sequence[_Slot], raws: Sequence[bytes | None]
    ) -> list[int | None]:
        """One by one: a file that did not read or is not a counter is `None` (and reported,
        unless it is a driver's "N/A": no value, not an error)."""
        out: list[int | None] = []
        for slot, raw in zip(slots, raws, strict=True):
            count = None
            if raw is not None:
                raw = _full(slot, raw)
                count = parse_counter(raw)
                if count is None and not is_not_available(raw):
                    self._bad_value(slot.path, raw, "not a counter")
            out.append(count)
        return out

    def _check_backwards(self, plan: _PortPlan, values: Sequence[int | None]) -> None:
        """Report counters that went backwards; remember each one's last value read."""
        last: list[int | None] = []
        for slot, value, previous in zip(plan.counters, values, plan.last, strict=True):
            if value is None:
                last.append(previous)
                continue
            if previous is not None and value < previous:
                self.bad.info(
                    ("backwards", slot.path),
                    "counter went backwards (reset, driver reload or wrap); exported as read",
                    path=slot.path,
                    previous=previous,
                    value=value,
                )
            last.append(value)
        plan.last = last

    def _vanished(self, plan: _PortPlan, errors: list[tuple[str, OSError]]) -> bool:
        """Report the port's read errors; False when a file vanished (re-scan needed)."""
        intact = True
        for path, error in errors:
            if error.errno in _VANISHED:
                intact = False
                if not os.path.isdir(plan.path):
                    self.bad.info(plan.path, "RDMA port disappeared", path=plan.path)
                    break
                self.bad.info(path, "file disappeared", path=path)
            else:
                self._report(path, "cannot read", error)
        return intact

    def _bad_value(self, path: str, raw: bytes, what: str) -> None:
        self._mark_bad(path)
        self.bad.warning(path, "unexpected content", path=path, reason=f"{what}: {preview(raw)}")

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

    # -- netdevs -----------------------------------------------------------------------------
    def _ensure_monitor(self) -> LinkMonitor | None:
        if not self.netlink or self._closed:
            return None
        if self.monitor is None and any(p.netdevs for d in self._plans.values() for p in d.ports):
            self.monitor = self.monitor_factory()
            self.monitor.start()
        return self.monitor

    def _read_netdevs(self) -> Netlink | None:
        targets = [
            netdev
            for plan in self._plans.values()
            for port in plan.ports
            for netdev in port.netdevs
        ]
        monitor = self._ensure_monitor() if targets else self.monitor
        if monitor is None:
            return None
        if not monitor.connected and monitor.connects == 0 and monitor.failures == 0:
            monitor.wait_connected(1.0)  # just started: not a reason to skip the first scrape
        state = Netlink(monitor.connected, monitor.failures, {}, {})
        if not targets:
            return state
        try:
            found = monitor.query(targets)
        except NetlinkUnavailableError as exc:
            self.bad.warning(
                "netlink",
                "netlink unavailable: netdev metrics skipped, sysfs counters still exported",
                err=exc.strerror or str(exc),
            )
            return state
        if self.bad.reported("netlink"):
            self.bad.clear("netlink")
            log.info("netlink available again")
        state.flaps = monitor.flaps.totals()
        for netdev in targets:
            link = found.get(netdev)
            if link is None:
                self.bad.info(("netdev", netdev), "netdev of an RDMA port not found", netdev=netdev)
                continue
            self.bad.clear(("netdev", netdev))
            state.links[netdev] = link
        return state
