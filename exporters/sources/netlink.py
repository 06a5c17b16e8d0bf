"""Network interfaces over rtnetlink (pyroute2): link state, statistics and carrier flaps.

One background thread owns an asyncio event loop with two pyroute2 sockets:

- a *listener* bound to the `RTMGRP_LINK` multicast group: the kernel sends an
  `RTM_NEWLINK` message whenever a link changes (carrier, operstate, flags), so a carrier
  loss is seen as it happens, however short it is compared with the scrape interval;
- a *query* socket for `RTM_GETLINK` requests from scrapes (`stats64`, operstate, carrier,
  carrier_changes), served by the same loop: pyroute2 sockets belong to the thread and loop
  that made them, and scrapes run in short-lived worker threads.

A flap is one loss of carrier (up → down). Each `RTM_NEWLINK` message carries the kernel's
`IFLA_CARRIER_DOWN_COUNT` (Linux 4.16+), so losses are counted from that counter's increase:
even when the kernel's link watcher merges a down and an up into one notification, or
messages are lost, nothing is missed. Older kernels fall back to up → down transitions of
`IFLA_CARRIER` between consecutive messages.

When the listener's socket fails (e.g. `ENOBUFS` after a burst, messages lost), the thread
closes both sockets, waits (0.5 s, doubling up to 30 s) and reconnects; on every (re)connect
it dumps all links, which also accounts for losses that happened while it was away.
`close()` cancels the loop's main task and joins the thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("hpcobs.netlink")

RTMGRP_LINK = 0x1
"""rtnetlink multicast group of link notifications (linux/rtnetlink.h)."""

STATS64_FIELDS: tuple[str, ...] = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "multicast",
    "collisions",
    "rx_length_errors",
    "rx_over_errors",
    "rx_crc_errors",
    "rx_frame_errors",
    "rx_fifo_errors",
    "rx_missed_errors",
    "tx_aborted_errors",
    "tx_carrier_errors",
    "tx_fifo_errors",
    "tx_heartbeat_errors",
    "tx_window_errors",
    "rx_compressed",
    "tx_compressed",
    "rx_nohandler",
)
"""`struct rtnl_link_stats64` fields, named as in `/sys/class/net/<if>/statistics/`."""


_NO_SUCH_LINK = frozenset({errno.ENODEV, errno.ENOENT, errno.EINVAL, errno.ERANGE})


class NetlinkUnavailableError(OSError):
    """rtnetlink cannot be used now (no pyroute2, socket refused, listener reconnecting)."""


@dataclass(frozen=True, slots=True)
class Link:
    """One interface as an `RTM_NEWLINK` message describes it."""

    index: int
    name: str
    operstate: str = "UNKNOWN"
    carrier: int | None = None
    carrier_changes: int | None = None
    carrier_down_count: int | None = None
    stats: Mapping[str, int] = field(default_factory=dict)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def link_from_message(msg: Any) -> Link | None:
    """A pyroute2 `ifinfmsg` → Link; `None` for anything that is not a usable link message."""
    try:
        index = _int(msg["index"])
        name = msg.get("IFLA_IFNAME")
    except (KeyError, TypeError, AttributeError):
        return None
    if index is None or not isinstance(name, str) or not name:
        return None
    stats: dict[str, int] = {}
    raw = msg.get("IFLA_STATS64")
    if raw is not None:
        for key in STATS64_FIELDS:
            try:
                value = _int(raw.get(key))
            except (AttributeError, TypeError):
                break
            if value is not None:
                stats[key] = value
    operstate = msg.get("IFLA_OPERSTATE")
    return Link(
        index=index,
        name=name,
        operstate=operstate if isinstance(operstate, str) else "UNKNOWN",
        carrier=_int(msg.get("IFLA_CARRIER")),
        carrier_changes=_int(msg.get("IFLA_CARRIER_CHANGES")),
        carrier_down_count=_int(msg.get("IFLA_CARRIER_DOWN_COUNT")),
        stats=stats,
    )


@dataclass(slots=True)
class _Seen:
    name: str
    carrier: int | None
    down_count: int | None


class FlapCounter:
    """Counts carrier losses per interface name from a stream of link observations.

    The first observation of an interface index is its baseline. An interface deleted and
    recreated under the same name starts from a new baseline and keeps adding to the
    name's total. Thread-safe: the listener observes, scrapes read `totals()`.
    """

    def __init__(self, max_names: int = 4096) -> None:
        self.max_names = max_names
        self._seen: dict[int, _Seen] = {}
        self._totals: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe(self, link: Link) -> int:
        """Account one observation; returns the number of carrier losses it revealed."""
        with self._lock:
            seen = self._seen.get(link.index)
            if seen is None:
                self._seen[link.index] = _Seen(link.name, link.carrier, link.carrier_down_count)
                self._total(link.name)
                return 0
            losses = 0
            if link.carrier_down_count is not None and seen.down_count is not None:
                if link.carrier_down_count >= seen.down_count:
                    losses = link.carrier_down_count - seen.down_count
                elif seen.carrier == 1 and link.carrier == 0:  # counter reset
                    losses = 1
            elif seen.carrier == 1 and link.carrier == 0:
                losses = 1
            seen.name = link.name
            if link.carrier is not None:
                seen.carrier = link.carrier
            if link.carrier_down_count is not None:
                seen.down_count = link.carrier_down_count
            self._totals[link.name] = self._total(link.name) + losses
            return losses

    def _total(self, name: str) -> int:
        total = self._totals.get(name)
        if total is None:
            if len(self._totals) >= self.max_names:  # bound the memory on veth-churning hosts
                self._totals = {n: t for n, t in self._totals.items() if t}
                if len(self._totals) >= self.max_names:
                    self._totals.clear()
            total = self._totals[name] = 0
        return total

    def removed(self, index: int) -> None:
        with self._lock:
            self._seen.pop(index, None)

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)


SocketFactory = Callable[[], Any]
"""Makes an asyncio pyroute2 rtnetlink socket (`AsyncIPRoute()`); replaceable in tests."""


def _default_socket() -> Any:
    from pyroute2 import AsyncIPRoute  # imported lazily: heavy, and absent on some systems

    return AsyncIPRoute()


class LinkMonitor:
    """The background rtnetlink thread (see the module docstring)."""

    def __init__(
        self,
        *,
        socket_factory: SocketFactory = _default_socket,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        logger: logging.Logger = log,
    ) -> None:
        self.flaps = FlapCounter()
        self.socket_factory = socket_factory
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.log = logger
        self.connects = 0
        """Successful (re)connections so far."""
        self.failures = 0
        """Connection attempts or sessions that ended with an error."""
        self.last_error = ""
        self._connected = threading.Event()
        self._started = threading.Event()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._query_socket: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- life cycle (any thread) -------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="rdma-netlink", daemon=True)
            self._thread.start()
        self._started.wait(5.0)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the listener: cancel its task, close its sockets, join the thread."""
        with self._lock:
            self._closed = True
            thread, loop, task = self._thread, self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(task.cancel)
        if thread is not None:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- queries (scrape threads) --------------------------------------------------------
    def query(self, names: Iterable[str], timeout: float = 2.0) -> dict[str, Link | None]:
        """RTM_GETLINK each name: name → Link, or `None` for an interface that does not exist.

        Raises `NetlinkUnavailableError` when the monitor is not connected or does not answer.
        """
        wanted = list(dict.fromkeys(names))
        loop = self._loop
        if loop is None or not self.connected or self._closed:
            raise NetlinkUnavailableError(
                errno.ENOTCONN, f"netlink not connected: {self.last_error or 'starting'}"
            )
        import asyncio  # loaded by the thread already (see _run)

        try:
            future = asyncio.run_coroutine_threadsafe(self._query(wanted), loop)
        except RuntimeError as exc:  # loop closed under us
            raise NetlinkUnavailableError(errno.ENOTCONN, f"netlink loop stopped: {exc}") from exc
        try:
            return future.result(timeout)
        except FutureTimeout as exc:
            future.cancel()
            raise NetlinkUnavailableError(
                errno.ETIMEDOUT, f"netlink query timed out after {timeout:g}s"
            ) from exc
        except NetlinkUnavailableError:
            raise
        except Exception as exc:
            raise NetlinkUnavailableError(
                errno.EIO, f"netlink query failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def _query(self, names: list[str]) -> dict[str, Link | None]:
        sock = self._query_socket
        if sock is None:
            raise NetlinkUnavailableError(errno.ENOTCONN, "netlink reconnecting")
        out: dict[str, Link | None] = {}
        for name in names:
            try:
                messages = await sock.link("get", ifname=name)
            except Exception as exc:
                # The kernel's answer about this name (no such device, a name it refuses);
                # anything else is the socket's trouble and fails the whole query.
                if getattr(exc, "code", None) in _NO_SUCH_LINK:
                    out[name] = None
                    continue
                raise
            link = None
            for msg in messages:
                link = link_from_message(msg)
                if link is not None:
                    break
            out[name] = link
        return out

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        # asyncio is loaded here, when a netdev is first watched, not at import: a node with no
        # RoCE/IPoIB netdev never needs it (1.25 MiB of RSS, measured with the rdma collector)
        import asyncio

        try:
            asyncio.run(self._main())
        except (asyncio.CancelledError, KeyboardInterrupt):
            pass
        except Exception:  # never let the thread die silently
            self.log.exception("netlink listener stopped unexpectedly")
        finally:
            self._connected.clear()
            self._started.set()

    async def _main(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        if self._closed:
            return
        delay = self.retry_initial
        while not self._closed:
            connects = self.connects
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                error = f"{type(exc).__name__}: {exc}"
                # The first failure after a success (or a different one) is a warning; the
                # same failure again while retrying is not worth a line every 30 s.
                repeated = error == self.last_error and self.connects == connects
                self.last_error = error
                self.log.log(
                    logging.DEBUG if repeated else logging.WARNING,
                    "netlink listener error; reconnecting",
                    extra={"err": error, "retry_seconds": delay},
                )
            if self.connects > connects:  # the session had connected: start backing off anew
                delay = self.retry_initial
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _session(self) -> None:
        listener = query = None
        try:
            listener = self.socket_factory()
            await listener.bind(groups=RTMGRP_LINK)
            query = self.socket_factory()
            # Baseline (or catch up after a reconnect) from a full dump; changes racing with
            # the dump arrive on the listener afterwards and are idempotent.
            async for msg in await query.link("dump"):
                self._handle(msg)
            self._query_socket = query
            self.connects += 1
            self._connected.set()
            if self.connects > 1:
                self.log.info("netlink listener reconnected", extra={"connects": self.connects})
            while True:
                got = False
                async for msg in listener.get():
                    got = True
                    self._handle(msg)
                if not got:
                    raise ConnectionError("netlink listener socket closed")
        finally:
            self._connected.clear()
            self._query_socket = None
            for sock in (listener, query):
                if sock is not None:
                    try:
                        sock.close()
                    except Exception as exc:  # closing a broken socket: nothing more to do
                        self.log.debug("closing netlink socket failed", extra={"err": str(exc)})

    def _handle(self, msg: Any) -> None:
        try:
            event = msg.get("event") if hasattr(msg, "get") else None
        except Exception:
            event = None
        if event == "RTM_DELLINK":
            index = _int(_safe_index(msg))
            if index is not None:
                self.flaps.removed(index)
            return
        link = link_from_message(msg)
        if link is not None:
            self.flaps.observe(link)


def _safe_index(msg: Any) -> Any:
    try:
        return msg["index"]
    except (KeyError, TypeError):
        return None
