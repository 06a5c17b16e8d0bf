"""The one single-flight runner: at most one run of a piece of work in flight per key, each key
served by a persistent daemon worker thread.

Used by the scrape coordinator (a key per collector) and the NVML source (a key per device
call). A caller whose key still has a run in flight joins that run instead of starting a second
one, so a collector or driver call that hangs holds one thread, never one per scrape.

Why a persistent worker and not a thread per run: starting a thread costs about 70 µs of CPU
per scrape and collector (measured on the 2-core CI machine, issue 16). A worker idles in a
blocking `queue.get` (no wake-ups between scrapes: nothing runs while MPI jobs compute) and
exits after `idle_exit` seconds without work, so keys that are no longer asked for do not keep
threads. Workers are daemon threads: a run hung in a driver call must not keep the process from
exiting (a `ThreadPoolExecutor` would join it at exit).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

IDLE_EXIT_SECONDS = 600.0


@dataclass(frozen=True)
class Flight(Generic[T]):
    """A run: its future, when it was submitted (`time.monotonic()`), and whether this caller
    joined a run already in flight rather than starting it."""

    future: Future[T]
    submitted: float
    joined: bool


_Work = tuple[Callable[[], Any], "Future[Any]"] | None  # None: exit (close())


class _Worker:
    __slots__ = ("alive", "queue")

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self.alive = True


class SingleFlight:
    """See the module docstring."""

    def __init__(self, prefix: str, idle_exit: float = IDLE_EXIT_SECONDS) -> None:
        if not idle_exit > 0:
            raise ValueError("idle_exit must be positive")
        self._prefix = prefix
        self._idle_exit = idle_exit
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, Flight[Any]] = {}
        self._workers: dict[Hashable, _Worker] = {}

    def submit(self, key: Hashable, fn: Callable[[], T]) -> Flight[T]:
        """Run `fn` on `key`'s worker, or join the run of `key` still in flight."""
        with self._lock:
            running = self._inflight.get(key)
            if running is not None and not running.future.done():
                return Flight(running.future, running.submitted, joined=True)
            future: Future[T] = Future()
            flight = Flight(future, time.monotonic(), joined=False)
            self._inflight[key] = flight
            worker = self._workers.get(key)
            if worker is None or not worker.alive:
                worker = self._workers[key] = _Worker()
                threading.Thread(
                    target=self._serve,
                    args=(key, worker),
                    name=f"{self._prefix}-{key}",
                    daemon=True,
                ).start()
            worker.queue.put((fn, future))
        return flight

    def running(self, key: Hashable) -> bool:
        """Whether `key` has a run in flight."""
        with self._lock:
            flight = self._inflight.get(key)
            return flight is not None and not flight.future.done()

    def workers(self) -> int:
        """Live worker threads (for tests and the landing page)."""
        with self._lock:
            return sum(1 for w in self._workers.values() if w.alive)

    def close(self) -> None:
        """Let every worker exit: an idle one now, one still in a run when that run ends (its
        callers keep waiting on it). A later `submit` starts a new worker. For shutdown, and so
        that an abandoned runner (a closed exporter, a test's) does not keep idle threads."""
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
            for worker in workers:
                worker.alive = False
                worker.queue.put(None)

    def _serve(self, key: Hashable, worker: _Worker) -> None:
        while True:
            try:
                work = worker.queue.get(timeout=self._idle_exit)
            except queue.Empty:
                with self._lock:
                    if worker.queue.empty():  # nothing was queued while we timed out
                        worker.alive = False
                        if self._workers.get(key) is worker:
                            del self._workers[key]
                        return
                continue
            if work is None:
                return
            fn, future = work
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)
            del fn, future, work  # no reference to the last run while idle
