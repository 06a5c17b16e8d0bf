"""`hpcobs-slo serve`: evaluate every `--eval-interval`, export the latest results.

The evaluation loop runs in a background thread owned by `SLOCollector` (started when the
runtime builds the collector, stopped by its `close()`); a scrape only reads the latest
`DaemonState`, so scrapes are fast and never query Prometheus. When Prometheus is down the
loop keeps going, each SLO is marked stale and its figures disappear until an evaluation
computes them again. A scrape judges staleness by the data's age too (older than
`STALE_INTERVALS` × the interval: stale), so a Prometheus that hangs, keeping an
evaluation waiting, shows as stale while it hangs, not only once the evaluation gives up.

Beside the evaluation, the daemon receives Alertmanager's webhook (`incidents.py`): a POST
route of the same HTTP server, so under the same TLS and basic auth, and a collector
`incidents` that exports incident counts and durations.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.collector import Collector, CollectorSpec
from hpcobs.exporters.runtime.server import PostRoute
from hpcobs.slo.evaluator import Evaluation, Evaluator
from hpcobs.slo.incidents import WEBHOOK_PATH, IncidentCollector, IncidentReceiver, Incidents
from hpcobs.slo.metrics import DaemonState, families

log = logging.getLogger("hpcobs.slo")
STALE_INTERVALS = 2.0  # figures older than this many evaluation intervals are stale


class Engine:
    """Runs `evaluator` every `interval` seconds (the first cycle at once)."""

    def __init__(self, evaluator: Evaluator, interval: float) -> None:
        if interval <= 0:
            raise ValueError("--eval-interval must be positive")
        self.evaluator = evaluator
        self.interval = interval
        self._state = DaemonState(slos=evaluator.slos)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_ok: bool | None = None

    @property
    def stale_after(self) -> float:
        """Age (seconds) beyond which the latest figures are stale: an evaluation is overdue."""
        return STALE_INTERVALS * self.interval

    @property
    def state(self) -> DaemonState:
        with self._lock:
            return self._state

    def run_once(self) -> Evaluation:
        try:
            evaluation = self.evaluator.evaluate()
        except Exception:  # a bug must not end the loop: log it, try again next cycle
            log.exception("evaluation crashed")
            raise
        with self._lock:
            self._state = self._state.after(evaluation)
        self._log(evaluation)
        return evaluation

    def _log(self, evaluation: Evaluation) -> None:
        fields = {
            "queries": evaluation.queries,
            "failed_queries": evaluation.failed_queries,
            "duration_seconds": round(evaluation.duration, 3),
            "stale_slos": sum(not r.ok for r in evaluation.results),
        }
        if evaluation.success != self._was_ok:
            if evaluation.success:
                log.info("evaluation succeeded", extra=fields)
            else:
                log.warning("evaluation failed: results are stale", extra=fields)
        else:
            log.debug("evaluation done", extra=fields)
        self._was_ok = evaluation.success

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="slo-evaluation", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_run = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # logged in run_once; keep looping
                self.run_once()
            next_run += self.interval
            now = time.monotonic()
            if next_run < now:  # a cycle overran: skip the missed ticks
                log.warning(
                    "evaluation took longer than --eval-interval",
                    extra={"interval_seconds": self.interval},
                )
                next_run = now
            self._stop.wait(next_run - now)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class SLOCollector(Collector):
    """Exposes the engine's latest state; owns (starts and stops) the engine."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        engine.start()

    def collect(self) -> Iterator[Metric]:
        return families(self.engine.state, self.clock(), self.engine.stale_after)

    def close(self) -> None:
        self.engine.stop()


def incident_receiver(args: argparse.Namespace) -> tuple[CollectorSpec, PostRoute]:
    """The webhook receiver from `serve`'s flags, its state file restored: the collector that
    exports its figures and the POST route that feeds it."""
    receiver = IncidentReceiver(
        Incidents(max_alertnames=args.incidents_max_alertnames),
        Path(args.incidents_state_file) if args.incidents_state_file else None,
    )
    receiver.restore()
    spec = CollectorSpec(
        name="incidents",
        help=f"incident counts and durations from Alertmanager's webhook (POST {WEBHOOK_PATH})",
        factory=lambda _args, _services: IncidentCollector(receiver),
    )
    return spec, PostRoute(WEBHOOK_PATH, receiver.handle, args.incidents_max_body_bytes)
