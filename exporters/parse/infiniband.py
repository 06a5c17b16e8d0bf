"""InfiniBand / RoCE / Omni-Path sysfs values: pure functions on the bytes of the files.

The files live under `/sys/class/infiniband/<device>/` (kernel ABI
`Documentation/ABI/stable/sysfs-class-infiniband`):

    fw_ver, board_id, hca_type, node_guid                 device attributes (text)
    ports/<n>/state, phys_state                            "4: ACTIVE", "5: LinkUp"
    ports/<n>/rate                                         "100 Gb/sec (4X EDR)"
    ports/<n>/link_layer                                   "InfiniBand" | "Ethernet"
    ports/<n>/counters/<name>                              IB PMA counters, decimal
    ports/<n>/counters_ext/<name>                          64-bit PMA counters (kernel < 4.5)
    ports/<n>/hw_counters/<name>                           driver counters, decimal
    ports/<n>/gid_attrs/ndevs/<gid index>                  RoCE: netdev of each GID
    device/net/<netdev>/dev_port (or dev_id)               IPoIB / RoCE netdevs of the PCI function

Counters are plain decimal integers; some drivers answer `N/A (no PMA)` for counters their
port-management agent does not implement (iWARP, older hfi1), which is "no value", not an
error. The collector reads the files; everything here is pure: arbitrary bytes never raise,
a value that does not parse comes back as `None` and the caller reports the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

MAX_COUNTER = 2**64 - 1
"""Counters are unsigned 64-bit in the kernel; anything larger is not a counter value."""

MAX_TEXT = 256
"""Device attributes become label values: keep them bounded."""

MAX_NETDEV_NAME = 15
"""IFNAMSIZ - 1."""

_WHITESPACE = b" \t\n\r\x00\x0b\x0c"
_NOT_AVAILABLE = b"N/A"


# -- single values ----------------------------------------------------------------------


def parse_counter(raw: bytes) -> int | None:
    """A decimal counter file (`"12345\\n"`) → its value; `None` if it is not one."""
    text = raw.strip(_WHITESPACE)
    if not text.isdigit() or len(text) > 20:  # bytes.isdigit(): ASCII digits only
        return None
    value = int(text)
    return value if value <= MAX_COUNTER else None


_DIGITS_NEWLINE = b"0123456789\n"


def parse_counters(raws: Sequence[bytes]) -> list[int] | None:
    """Many counter files at once: their values, as `parse_counter` gives each, or `None`
    unless every one is plain digits and newlines of at most 20 bytes (then parse them one by
    one). The common case costs a few C loops over the batch instead of a Python call per
    file: 0.23 → 0.17 µs per file measured (a port's 50 files)."""
    if b"".join(raws).translate(None, _DIGITS_NEWLINE) or max(map(len, raws), default=0) > 20:
        return None
    try:
        values = list(map(int, raws))  # int() strips the newlines; an empty file raises
    except ValueError:
        return None
    return values if max(values, default=0) <= MAX_COUNTER else None


def preview(raw: bytes, limit: int = 40) -> str:
    """A short printable rendering of a bad value, for log messages."""
    return repr(raw[:limit]) + ("…" if len(raw) > limit else "")


def is_not_available(raw: bytes) -> bool:
    """`N/A (no PMA)` and the like: the driver has no value for this counter."""
    return raw.strip(_WHITESPACE).startswith(_NOT_AVAILABLE)


@dataclass(frozen=True, slots=True)
class PortState:
    """`state` / `phys_state`: the numeric IB state and its name (`4`, `ACTIVE`)."""

    id: int
    name: str


def parse_state(raw: bytes) -> PortState | None:
    """`"4: ACTIVE\\n"` → PortState(4, "ACTIVE"); `None` unless it is `<number>: <name>`."""
    number = parse_state_id(raw)
    if number is None:
        return None
    return PortState(number, parse_text(raw.partition(b":")[2]))


def parse_state_id(raw: bytes) -> int | None:
    """`"4: ACTIVE\\n"` → 4: `parse_state(raw).id`, without making the name (what a scrape
    needs; 1.24 → 0.47 µs measured)."""
    head, sep, tail = raw.partition(b":")
    if not sep or b":" in tail:
        return None
    number = head.strip(_WHITESPACE)
    if not number.isdigit() or len(number) > 10:
        return None
    return int(number)


_RATE_UNITS = {b"gb/sec": 1e9, b"gb/s": 1e9, b"mb/sec": 1e6, b"mb/s": 1e6}


def parse_rate(raw: bytes) -> float | None:
    """`"100 Gb/sec (4X EDR)"` → 12.5e9 (bytes per second); `None` if unreadable.

    The kernel always writes Gb/sec; a bare number is taken as Gb/sec as well. Fractional
    bytes (impossible for real rates) are truncated, as node_exporter does.
    """
    parts = raw.strip(_WHITESPACE).split(None, 2)
    if not parts:
        return None
    try:
        value = float(parts[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not 0.0 <= value < 1e9:  # also rejects nan
        return None
    scale = 1e9
    if len(parts) > 1:
        unit = _RATE_UNITS.get(parts[1].lower())
        if unit is None:
            return None
        scale = unit
    return float(int(value * scale / 8))


def parse_text(raw: bytes) -> str:
    """A text attribute (`fw_ver`, `board_id`, `hca_type`, `node_guid`, `link_layer`)."""
    text = raw.strip(_WHITESPACE).decode("utf-8", errors="replace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " for c in text)
    return text[:MAX_TEXT]


def parse_netdev_name(raw: bytes) -> str | None:
    """A `gid_attrs/ndevs/<n>` file or a directory name → a netdev name, or `None`."""
    name = raw.strip(_WHITESPACE)
    if not name or len(name) > MAX_NETDEV_NAME or name in (b".", b".."):
        return None
    if b"/" in name or b":" in name or any(c <= 0x20 or c >= 0x7F for c in name):
        return None
    return name.decode("ascii")


def parse_dev_port(raw: bytes) -> int | None:
    """`/sys/class/net/<if>/dev_port` (decimal) or `dev_id` (`0x1`) → 0-based port index."""
    text = raw.strip(_WHITESPACE)
    base = 10
    if text[:2].lower() == b"0x":
        text, base = text[2:], 16
    if not text or len(text) > 8:
        return None
    try:
        return int(text.decode("ascii"), base)
    except (UnicodeDecodeError, ValueError):
        return None


# -- port → netdev mapping -----------------------------------------------------------------


def port_netdevs(
    port: int,
    ports: int,
    gid_ndevs: Iterable[bytes],
    device_net: Mapping[str, int | None],
) -> tuple[str, ...]:
    """The netdevs of one port, sorted.

    - RoCE: the names in the port's `gid_attrs/ndevs/*` (one per populated GID entry, many
      entries name the same netdev).
    - Otherwise (IPoIB, or kernels without `gid_attrs`): the netdevs of the device's
      `device/net/` folder, given as name → 0-based `dev_port` (`None` when unknown). With a
      single port every netdev belongs to it; with several, a netdev belongs to port
      `dev_port + 1` and one with an unknown `dev_port` is left out (it cannot be placed).
    """
    names = {n for n in (parse_netdev_name(raw) for raw in gid_ndevs) if n is not None}
    if not names:
        for raw_name, dev_port in device_net.items():
            name = parse_netdev_name(raw_name.encode("utf-8", errors="replace"))
            if name is None:
                continue
            if ports == 1 or (dev_port is not None and dev_port + 1 == port):
                names.add(name)
    return tuple(sorted(names))
