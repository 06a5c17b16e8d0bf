"""The rtnetlink helper (exporters/sources/netlink.py): message decoding, flap counting, the listener's
reconnects and shutdown, against a fake pyroute2 socket (the real kernel path is in
tests/real/test_rdma_netns.py)."""

from __future__ import annotations

import asyncio
import errno
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.exporters.sources.netlink import (
    STATS64_FIELDS,
    FlapCounter,
    Link,
    LinkMonitor,
    NetlinkUnavailableError,
    link_from_message,
)

pytestmark = pytest.mark.unit


class Msg(dict[str, Any]):
    """Shaped like a pyroute2 ifinfmsg: fields by `[]`, NLAs by `.get("IFLA_...")`."""

    def __init__(self, index: int, name: str, event: str = "RTM_NEWLINK", **attrs: Any) -> None:
        super().__init__(index=index, event=event)
        self.attrs = {"IFLA_IFNAME": name, **attrs}

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return self.attrs.get(key, default)


def link_msg(index: int, name: str, carrier: int, down: int | None, **attrs: Any) -> Msg:
    extra = {"IFLA_CARRIER": carrier, "IFLA_OPERSTATE": "UP" if carrier else "DOWN", **attrs}
    if down is not None:
        extra["IFLA_CARRIER_DOWN_COUNT"] = down
        extra["IFLA_CARRIER_CHANGES"] = 2 * down + (0 if carrier else -1) + 1
    return Msg(index, name, **extra)


class NoDevice(Exception):
    code = errno.ENODEV


class FakeNetlink:
    """A stand-in for pyroute2's AsyncIPRoute: a dump, per-name gets and a stream of events.

    The test thread feeds events (or exceptions, to break the socket) through `events`.
    """

    def __init__(self, world: FakeWorld) -> None:
        self.world = world
        self.closed = False
        self.bound: int | None = None

    async def bind(self, groups: int = 0) -> None:
        if self.world.fail_bind:
            raise OSError(errno.EPERM, "netlink refused (test)")
        self.bound = groups

    async def link(self, command: str, **kwargs: Any) -> Any:
        if command == "dump":
            snapshot = list(self.world.links.values())

            async def gen() -> AsyncIterator[Msg]:
                for msg in snapshot:
                    yield msg

            return gen()
        assert command == "get"
        msg = self.world.links.get(kwargs["ifname"])
        if msg is None:
            raise NoDevice("No such device")
        return [msg]

    async def get(self) -> AsyncIterator[Msg]:
        while not self.closed:
            try:
                item = self.world.events.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.002)
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
            return

    def close(self) -> None:
        self.closed = True


class FakeWorld:
    def __init__(self) -> None:
        self.links: dict[str, Msg] = {}
        self.events: queue.Queue[Msg | BaseException] = queue.Queue()
        self.sockets: list[FakeNetlink] = []
        self.fail_bind = False

    def factory(self) -> FakeNetlink:
        sock = FakeNetlink(self)
        self.sockets.append(sock)
        return sock

    def set(self, msg: Msg, *, notify: bool = True) -> None:
        self.links[msg.get("IFLA_IFNAME")] = msg
        if notify:
            self.events.put(msg)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# -- decoding ------------------------------------------------------------------------------


def test_link_from_message_reads_state_and_stats() -> None:
    stats = {name: i for i, name in enumerate(STATS64_FIELDS)}
    msg = Msg(
        7,
        "ens1f0np0",
        IFLA_OPERSTATE="UP",
        IFLA_CARRIER=1,
        IFLA_CARRIER_CHANGES=5,
        IFLA_CARRIER_DOWN_COUNT=2,
        IFLA_STATS64=stats,
    )
    link = link_from_message(msg)
    assert link == Link(7, "ens1f0np0", "UP", 1, 5, 2, stats)


@pytest.mark.parametrize(
    "msg",
    [None, 42, {}, {"index": "x"}, Msg(1, ""), Msg(-1, 5)],  # type: ignore[arg-type]
)
def test_link_from_message_rejects_junk(msg: Any) -> None:
    assert link_from_message(msg) is None


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "IFLA_IFNAME",
                "IFLA_CARRIER",
                "IFLA_OPERSTATE",
                "IFLA_STATS64",
                "IFLA_CARRIER_CHANGES",
            ]
        ),
        st.none()
        | st.integers()
        | st.text(max_size=5)
        | st.booleans()
        | st.just({"rx_bytes": "x"}),
    ),
    st.none() | st.integers() | st.text(max_size=3),
)
def test_link_from_message_never_raises(attrs: dict[str, Any], index: Any) -> None:
    msg = Msg(0, "x")
    msg["index"] = index
    msg.attrs = attrs
    link = link_from_message(msg)
    assert link is None or (isinstance(link.index, int) and link.name)


# -- counting ------------------------------------------------------------------------------


def test_flaps_from_the_kernel_down_counter_include_merged_events() -> None:
    flaps = FlapCounter()
    assert flaps.observe(Link(3, "eth0", carrier=1, carrier_down_count=4)) == 0  # baseline
    assert flaps.observe(Link(3, "eth0", carrier=0, carrier_down_count=5)) == 1
    assert flaps.observe(Link(3, "eth0", carrier=1, carrier_down_count=5)) == 0
    # down and up merged into one notification by the kernel's link watcher, twice
    assert flaps.observe(Link(3, "eth0", carrier=1, carrier_down_count=7)) == 2
    assert flaps.observe(Link(3, "eth0", carrier=1, carrier_down_count=7)) == 0  # duplicate
    assert flaps.totals() == {"eth0": 3}


def test_flaps_without_down_counter_count_transitions() -> None:
    flaps = FlapCounter()
    for carrier in (1, 0, 0, 1, 0, 1, 1):
        flaps.observe(Link(2, "ib0", carrier=carrier))
    assert flaps.totals() == {"ib0": 2}


def test_recreated_interface_keeps_its_total_and_starts_a_new_baseline() -> None:
    flaps = FlapCounter()
    flaps.observe(Link(3, "eth0", carrier=1, carrier_down_count=0))
    flaps.observe(Link(3, "eth0", carrier=0, carrier_down_count=1))
    flaps.removed(3)
    flaps.observe(Link(9, "eth0", carrier=1, carrier_down_count=0))  # new index, new counter
    flaps.observe(Link(9, "eth0", carrier=0, carrier_down_count=1))
    assert flaps.totals() == {"eth0": 2}


def test_down_counter_reset_counts_the_visible_loss_only() -> None:
    flaps = FlapCounter()
    flaps.observe(Link(3, "eth0", carrier=1, carrier_down_count=10))
    assert flaps.observe(Link(3, "eth0", carrier=0, carrier_down_count=0)) == 1


def test_flap_memory_is_bounded() -> None:
    flaps = FlapCounter(max_names=50)
    for i in range(500):
        flaps.observe(Link(i, f"veth{i}", carrier=1, carrier_down_count=0))
    assert len(flaps.totals()) <= 50


# -- the listener ----------------------------------------------------------------------------


def test_listener_counts_reconnects_and_catches_up_after_an_error() -> None:
    world = FakeWorld()
    world.set(link_msg(3, "eth0", 1, 0), notify=False)
    monitor = LinkMonitor(socket_factory=world.factory, retry_initial=0.01, retry_max=0.05)
    monitor.start()
    try:
        assert monitor.wait_connected(5)
        assert world.sockets[0].bound == 1  # RTMGRP_LINK
        world.set(link_msg(3, "eth0", 0, 1))
        world.set(link_msg(3, "eth0", 1, 1))
        wait_for(lambda: monitor.flaps.totals().get("eth0") == 1)

        # The socket breaks (e.g. ENOBUFS); two flaps happen while the listener is away.
        world.links["eth0"] = link_msg(3, "eth0", 1, 3)
        world.events.put(OSError(errno.ENOBUFS, "No buffer space available"))
        wait_for(lambda: monitor.connects == 2)
        assert monitor.failures == 1
        assert "ENOBUFS" in monitor.last_error or "buffer" in monitor.last_error
        wait_for(lambda: monitor.flaps.totals().get("eth0") == 3)  # caught up from the dump
        assert all(s.closed for s in world.sockets[:2])  # the broken session's sockets

        links = monitor.query(["eth0", "missing0"])
        assert links["missing0"] is None
        eth0 = links["eth0"]
        assert eth0 is not None and eth0.carrier_down_count == 3
    finally:
        started = time.monotonic()
        monitor.close()
    assert time.monotonic() - started < 2
    assert not monitor.alive
    assert all(s.closed for s in world.sockets)
    with pytest.raises(NetlinkUnavailableError):
        monitor.query(["eth0"])


def test_listener_without_netlink_degrades() -> None:
    world = FakeWorld()
    world.fail_bind = True
    monitor = LinkMonitor(socket_factory=world.factory, retry_initial=0.01, retry_max=0.02)
    monitor.start()
    try:
        wait_for(lambda: monitor.failures >= 3)
        assert not monitor.connected
        assert "EPERM" in monitor.last_error or "refused" in monitor.last_error
        with pytest.raises(NetlinkUnavailableError):
            monitor.query(["eth0"])
    finally:
        monitor.close()
    assert not monitor.alive


def test_listener_stops_cleanly_while_idle_and_twice() -> None:
    world = FakeWorld()
    monitor = LinkMonitor(socket_factory=world.factory)
    monitor.start()
    assert monitor.wait_connected(5)
    before = {t.name for t in threading.enumerate()}
    assert "rdma-netlink" in before
    monitor.close()
    monitor.close()
    assert not monitor.alive
    assert "rdma-netlink" not in {t.name for t in threading.enumerate()}


def test_close_before_start_never_starts() -> None:
    world = FakeWorld()
    monitor = LinkMonitor(socket_factory=world.factory)
    monitor.close()
    monitor.start()
    assert not monitor.alive and world.sockets == []
