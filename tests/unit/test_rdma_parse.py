"""The pure InfiniBand sysfs value parsers (exporters/parse/infiniband.py)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hpcobs.exporters.parse.infiniband import (
    MAX_COUNTER,
    PortState,
    is_not_available,
    parse_counter,
    parse_counters,
    parse_dev_port,
    parse_netdev_name,
    parse_rate,
    parse_state,
    parse_text,
    port_netdevs,
    preview,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"0\n", 0),
        (b"345091702026\n", 345091702026),
        (b"  42  \n", 42),
        (b"18446744073709551615\n", 2**64 - 1),
        (b"18446744073709551616\n", None),  # above u64: not a kernel counter
        (b"-1\n", None),
        (b"+5\n", None),
        (b"1_000\n", None),
        (b"1e3\n", None),
        (b"0x10\n", None),
        (b"\n", None),
        (b"", None),
        ("１２".encode(), None),  # non-ASCII digits
        (b"N/A (no PMA)\n", None),
    ],
)
def test_parse_counter(raw: bytes, expected: int | None) -> None:
    assert parse_counter(raw) == expected


_COUNTERISH = st.one_of(
    st.binary(max_size=24),
    st.integers(min_value=0, max_value=2**70).map(lambda n: b"%d\n" % n),
    st.sampled_from([b"\n", b"", b"0012\n", b"1\n2\n", b"\n\n7", b"1_0\n", b"N/A (no PMA)\n"]),
)


@given(st.lists(_COUNTERISH, max_size=12))
@example([b"18446744073709551616\n"])  # above u64
@example([b"000000000000000000001"])  # 21 digits: not a counter for parse_counter either
def test_parse_counters_is_parse_counter_of_each_or_none(raws: list[bytes]) -> None:
    """The batch parser gives what `parse_counter` gives each file, or `None` (the caller then
    parses them one by one): never a different value."""
    each = [parse_counter(raw) for raw in raws]
    got = parse_counters(raws)
    if got is not None:
        assert got == each
    if None in each:
        assert got is None


@given(st.lists(st.integers(min_value=0, max_value=10**19 - 1), max_size=60))
def test_parse_counters_takes_the_common_case(values: list[int]) -> None:
    """Files the kernel writes (`"<decimal>\n"`, up to 19 digits): parsed in one batch."""
    assert parse_counters([b"%d\n" % v for v in values]) == values


def test_not_available_is_recognised() -> None:
    assert is_not_available(b"N/A (no PMA)\n")
    assert is_not_available(b"N/A\n")
    assert not is_not_available(b"12\n")
    assert not is_not_available(b"garbage\n")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"4: ACTIVE\n", PortState(4, "ACTIVE")),
        (b"5: LinkUp\n", PortState(5, "LinkUp")),  # hfi1 / mlx4 wording of phys_state
        (b"1: DOWN", PortState(1, "DOWN")),
        (b"3:ARMED\n", PortState(3, "ARMED")),
        (b"ACTIVE\n", None),
        (b"4: A: B\n", None),
        (b": ACTIVE\n", None),
        (b"x: ACTIVE\n", None),
        (b"", None),
    ],
)
def test_parse_state(raw: bytes, expected: PortState | None) -> None:
    assert parse_state(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"100 Gb/sec (4X EDR)\n", 12.5e9),
        (b"40 Gb/sec (4X QDR)\n", 5e9),
        (b"25 Gb/sec (1X EDR)\n", 3.125e9),
        (b"2.5 Gb/sec (1X SDR)\n", 312_500_000.0),
        (b"200 Gb/sec (4X HDR)\n", 25e9),
        (b"10 Gb/sec\n", 1.25e9),
        (b"56\n", 7e9),  # a bare number is Gb/sec
        (b"100 Mb/sec\n", 12.5e6),
        (b"fast Gb/sec\n", None),
        (b"nan Gb/sec\n", None),
        (b"-1 Gb/sec\n", None),
        (b"10 furlongs/fortnight\n", None),
        (b"", None),
    ],
)
def test_parse_rate(raw: bytes, expected: float | None) -> None:
    assert parse_rate(raw) == expected


def test_parse_text_bounds_and_cleans() -> None:
    assert parse_text(b"MT4123\n") == "MT4123"
    assert parse_text(b"a\x01b\n") == "a b"
    assert parse_text(b"\xff\xfe") == "\ufffd\ufffd"
    assert len(parse_text(b"x" * 10_000)) == 256


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"ib0\n", "ib0"),
        (b"enp65s0f1np1\n", "enp65s0f1np1"),
        (b"bond0.100\n", "bond0.100"),
        (b"", None),
        (b"\n", None),
        (b"a/b\n", None),
        (b"a b\n", None),
        (b"..", None),
        (b"sixteen-chars-xx\n", None),
        ("é".encode(), None),
    ],
)
def test_parse_netdev_name(raw: bytes, expected: str | None) -> None:
    assert parse_netdev_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"0\n", 0), (b"1\n", 1), (b"0x1\n", 1), (b"0X0\n", 0), (b"zz\n", None), (b"\n", None)],
)
def test_parse_dev_port(raw: bytes, expected: int | None) -> None:
    assert parse_dev_port(raw) == expected


def test_port_netdevs_roce_gids_deduplicated() -> None:
    gids = [b"enp1s0f0\n", b"enp1s0f0\n", b"enp1s0f0.100\n", b"\n", b"bad name\n"]
    assert port_netdevs(1, 2, gids, {"ib0": 0}) == ("enp1s0f0", "enp1s0f0.100")


def test_port_netdevs_ipoib_by_dev_port() -> None:
    net = {"ib0": 0, "ib1": 1, "ib0.8001": 0, "mystery": None}
    assert port_netdevs(1, 2, [], net) == ("ib0", "ib0.8001")
    assert port_netdevs(2, 2, [], net) == ("ib1",)
    # one port: everything of the PCI function is that port's, dev_port or not
    assert port_netdevs(1, 1, [], {"ib0": None, "ib0.8001": 0}) == ("ib0", "ib0.8001")
    assert port_netdevs(1, 1, [], {}) == ()


# -- properties ----------------------------------------------------------------------------


@given(st.binary(max_size=64))
@example(b"N/A (no PMA)\n")
@example(b"\x00" * 8)
def test_counter_parser_never_raises(raw: bytes) -> None:
    value = parse_counter(raw)
    assert value is None or 0 <= value <= MAX_COUNTER
    assert isinstance(is_not_available(raw), bool)
    assert isinstance(preview(raw), str)


@given(st.integers(min_value=0, max_value=MAX_COUNTER), st.sampled_from(["", "\n", " \n"]))
def test_counter_roundtrip(value: int, end: str) -> None:
    assert parse_counter(f"{value}{end}".encode()) == value


@given(st.binary(max_size=64))
@example(b"4: ACTIVE\n")
@example(b"99999999999999999999: X")
def test_state_parser_never_raises(raw: bytes) -> None:
    state = parse_state(raw)
    assert state is None or (state.id >= 0 and isinstance(state.name, str))


@given(st.integers(min_value=0, max_value=7), st.sampled_from(["ACTIVE", "LinkUp", "DOWN"]))
def test_state_roundtrip(number: int, name: str) -> None:
    assert parse_state(f"{number}: {name}\n".encode()) == PortState(number, name)


@given(st.binary(max_size=64))
@example(b"1e308 Gb/sec")
@example(b"inf Gb/sec")
def test_rate_parser_never_raises(raw: bytes) -> None:
    rate = parse_rate(raw)
    assert rate is None or 0 <= rate < 1e18


@given(st.integers(min_value=0, max_value=1600), st.sampled_from(["SDR", "EDR", "HDR", "NDR"]))
def test_rate_roundtrip(gbits: int, speed: str) -> None:
    assert parse_rate(f"{gbits} Gb/sec (4X {speed})\n".encode()) == gbits * 125_000_000


@given(st.binary(max_size=300))
def test_text_parsers_never_raise(raw: bytes) -> None:
    text = parse_text(raw)
    assert len(text) <= 256 and text.isprintable()
    name = parse_netdev_name(raw)
    assert name is None or (0 < len(name) <= 15 and "/" not in name)
    port = parse_dev_port(raw)
    assert port is None or port >= 0


@given(
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=300),
    st.lists(st.binary(max_size=20), max_size=8),
    st.dictionaries(st.text(max_size=20), st.none() | st.integers(-5, 5), max_size=6),
)
def test_port_netdevs_never_raises(
    port: int, ports: int, gids: list[bytes], net: dict[str, int | None]
) -> None:
    names = port_netdevs(port, ports, gids, net)
    assert list(names) == sorted(set(names))
    assert all(parse_netdev_name(n.encode()) == n for n in names)
