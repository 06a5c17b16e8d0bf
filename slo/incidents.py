"""Incidents from Alertmanager's webhook: how long alerts fire (time to debug).

`hpcobs-slo serve` accepts Alertmanager's notifications at `POST /alertmanager/webhook`
(`incidents_webhook.py` parses them) and keeps, per alert fingerprint, the incidents that
are open. An incident opens when a firing alert is first seen and closes when its resolved
notification arrives; its duration, `endsAt − startsAt` as Alertmanager reports them, is
observed once in `hpcobs_incident_duration_seconds{alertname,severity}`.

An incident is one fingerprint with one `startsAt` (Alertmanager merges the notifications of
an alert that keeps firing, keeping its first start), so:
- resends and repeat notifications of a firing alert, or of a resolved one, change nothing
  (`hpcobs_incident_alerts_total{outcome="duplicate"}`); a resolved incident's key is
  remembered (the last `MAX_RESOLVED`), so a late retry of its firing notice does not reopen it;
- a resolved alert never seen firing (the daemon was down, or new) counts and is observed
  then;
- a firing alert with a later `startsAt` than the open incident of its fingerprint is a new
  incident: the open one ended unseen (its resolution never arrived) and is dropped without
  a duration (`outcome="abandoned"`).
A limit of the key: an alert that Alertmanager resolved on its own (Prometheus stopped
sending it for its resolve timeout) and that fires again with the same `startsAt` is a
late retry here, not reopened: its duration is the one Alertmanager reported resolved.

Labels are bounded: the first `max_alertnames` alert names (default 100) and
`MAX_SEVERITIES` severities seen are kept, later ones (and values over `MAX_LABEL_LENGTH`
characters) are exported as `other`. At most `MAX_OPEN` incidents are tracked open; beyond
that a new one is not (`outcome="dropped"`), and counts when it resolves.

The state (open incidents, resolved keys, counts, durations, admitted label values) is saved
after each notification that changes it (`--incidents.state-file`, `incidents_state.py`), so
a restart changes nothing either.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.collector import Collector
from hpcobs.exporters.runtime.families import Families
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.slo.incidents_state import Restored, restore_state, save_state
from hpcobs.slo.incidents_webhook import AlertEvent, Notification, WebhookError, parse_webhook

log = logging.getLogger("hpcobs.slo")

WEBHOOK_PATH = "/alertmanager/webhook"
DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_MAX_ALERTNAMES = 100
MAX_SEVERITIES = 10
MAX_LABEL_LENGTH = 128
MAX_OPEN = 10_000
MAX_RESOLVED = 10_000
OTHER = "other"
STATE_FORMAT = 1
# 10 s … 7 d; 14400 (4 h) is the example SLO's threshold (slo/examples/incidents.yaml)
BUCKETS = (
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    43200.0,
    86400.0,
    172800.0,
    604800.0,
)
OUTCOMES = ("opened", "resolved", "duplicate", "abandoned", "dropped")

DURATION = MetricDef(
    "hpcobs_incident_duration_seconds",
    "histogram",
    "Incidents by how long they lasted (endsAt - startsAt of the alert in Alertmanager's "
    "webhook), observed once when the alert resolves.",
    ("alertname", "severity"),
)
OPEN = MetricDef(
    "hpcobs_incidents_open",
    "gauge",
    "Incidents firing now (seen firing, resolution not yet received).",
    ("alertname", "severity"),
)
TOTAL = MetricDef(
    "hpcobs_incidents_total",
    "counter",
    "Incidents seen (an alert fingerprint with a new startsAt), counted once however often "
    "Alertmanager notifies.",
    ("alertname", "severity"),
)
ALERTS = MetricDef(
    "hpcobs_incident_alerts_total",
    "counter",
    "Alerts in accepted webhook notifications, by what they did: opened, resolved, duplicate "
    "(a resend: nothing changed), abandoned (an open incident replaced by a newer one of the "
    "same fingerprint, its resolution never received), dropped (too many open).",
    ("outcome",),
)
NOTIFICATIONS = MetricDef(
    "hpcobs_incident_notifications_total",
    "counter",
    "Alertmanager webhook notifications received, by result (accepted, rejected: 400).",
    ("result",),
)
METRICS = (DURATION, OPEN, TOTAL, ALERTS, NOTIFICATIONS)

Key = tuple[str, str]  # (alertname, severity) as exported


@dataclass
class OpenIncident:
    key: Key
    starts_at: float


@dataclass
class Durations:
    counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    sum: float = 0.0


@dataclass
class Incidents:
    """The state machine: notifications in, incidents and their durations out (no I/O)."""

    bounds: tuple[float, ...] = BUCKETS
    max_alertnames: int = DEFAULT_MAX_ALERTNAMES
    max_open: int = MAX_OPEN
    max_resolved: int = MAX_RESOLVED
    open: dict[str, OpenIncident] = field(default_factory=dict)
    resolved: OrderedDict[tuple[str, float], None] = field(default_factory=OrderedDict)
    totals: dict[Key, int] = field(default_factory=dict)
    durations: dict[Key, Durations] = field(default_factory=dict)
    alertnames: dict[str, None] = field(default_factory=dict)  # admitted, in order
    severities: dict[str, None] = field(default_factory=dict)

    # -- notifications ---------------------------------------------------------------------
    def apply(self, notification: Notification) -> Counter[str]:
        """Apply every alert of `notification`, in order; the count of each outcome."""
        out: Counter[str] = Counter()
        for event in notification.alerts:
            if event.status == "firing":
                self._firing(event, out)
            else:
                self._resolved(event, out)
        return out

    def _firing(self, e: AlertEvent, out: Counter[str]) -> None:
        current = self.open.get(e.fingerprint)
        if (e.fingerprint, e.starts_at) in self.resolved or (
            current is not None and e.starts_at <= current.starts_at
        ):
            out["duplicate"] += 1
            return
        if current is not None:  # a newer incident: the open one's resolution never came
            del self.open[e.fingerprint]
            out["abandoned"] += 1
        if len(self.open) >= self.max_open:
            out["dropped"] += 1
            return
        key = self._key(e)
        self.open[e.fingerprint] = OpenIncident(key, e.starts_at)
        self.totals[key] = self.totals.get(key, 0) + 1
        out["opened"] += 1

    def _resolved(self, e: AlertEvent, out: Counter[str]) -> None:
        assert e.ends_at is not None
        if (e.fingerprint, e.starts_at) in self.resolved:
            out["duplicate"] += 1
            return
        current = self.open.get(e.fingerprint)
        if current is not None and e.starts_at > current.starts_at:
            del self.open[e.fingerprint]  # this resolves a newer incident: the open one ended
            out["abandoned"] += 1  # unseen
            current = None
        if current is not None and e.ends_at >= current.starts_at:
            del self.open[e.fingerprint]
            key, start = current.key, min(current.starts_at, e.starts_at)
            self._remember(e.fingerprint, current.starts_at)
        else:  # never seen firing (or an older incident than the open one): counts now
            key, start = self._key(e), e.starts_at
            self.totals[key] = self.totals.get(key, 0) + 1
        self._remember(e.fingerprint, e.starts_at)
        self._observe(key, e.ends_at - start)
        out["resolved"] += 1

    def _remember(self, fingerprint: str, starts_at: float) -> None:
        self.resolved[(fingerprint, starts_at)] = None
        self.resolved.move_to_end((fingerprint, starts_at))
        while len(self.resolved) > self.max_resolved:
            self.resolved.popitem(last=False)

    def _observe(self, key: Key, seconds: float) -> None:
        hist = self.durations.get(key)
        if hist is None:
            hist = self.durations[key] = Durations([0] * (len(self.bounds) + 1))
        index = next((i for i, b in enumerate(self.bounds) if seconds <= b), len(self.bounds))
        hist.counts[index] += 1
        hist.sum += seconds

    def _key(self, e: AlertEvent) -> Key:
        return (
            _admit(e.alertname, self.alertnames, self.max_alertnames),
            _admit(e.severity, self.severities, MAX_SEVERITIES),
        )

    # -- the exported view -----------------------------------------------------------------
    def families(self, out: Families) -> None:
        """Every label set seen, the histogram too: at zero from its first incident's start,
        so that `increase()` counts the first resolution (a series that appears at 1 has
        no increase)."""
        open_by_key: Counter[Key] = Counter(o.key for o in self.open.values())
        les = [repr(b) for b in self.bounds] + ["+Inf"]
        empty = Durations([0] * len(les))
        for key in sorted(set(self.totals) | set(open_by_key) | set(self.durations)):
            hist, cumulative, buckets = self.durations.get(key, empty), 0, []
            for le, n in zip(les, hist.counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            out.histogram(DURATION, key, buckets, hist.sum)
            out.add_values(OPEN, key, float(open_by_key.get(key, 0)))
            out.add_values(TOTAL, key, float(self.totals.get(key, 0)))

    # -- the state file --------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "bounds": list(self.bounds),
            "alertnames": list(self.alertnames),
            "severities": list(self.severities),
            "open": [[fp, *o.key, o.starts_at] for fp, o in self.open.items()],
            "resolved": [[fp, start] for fp, start in self.resolved],
            "totals": [[*k, n] for k, n in self.totals.items()],
            "durations": [[*k, h.counts, h.sum] for k, h in self.durations.items()],
        }

    def load_state(self, doc: Mapping[str, Any]) -> None:
        """Restore what `to_state()` saved. Raises ValueError, in plain words and without
        changing anything, when `doc` is malformed."""
        if doc.get("format") != STATE_FORMAT:
            raise ValueError(
                f"unknown format {doc.get('format')!r} (this daemon writes {STATE_FORMAT})"
            )
        try:
            parsed = _parse_state(doc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"malformed incidents state ({type(exc).__name__}: {exc})") from None
        bounds, alertnames, severities, open_, resolved, totals, durations = parsed
        if bounds != self.bounds:
            if durations:
                log.warning(
                    "incident duration buckets changed since the state was saved: the "
                    "histogram restarts"
                )
            durations = {}
        self.alertnames, self.severities = alertnames, severities
        self.open, self.totals, self.durations = open_, totals, durations
        self.resolved = OrderedDict((k, None) for k in resolved[-self.max_resolved :])


def _admit(value: str, admitted: dict[str, None], cap: int) -> str:
    """`value` as a label value: itself when admitted already, or while there is room."""
    if value in admitted:
        return value
    if len(value) > MAX_LABEL_LENGTH or len(admitted) >= cap:
        return OTHER
    admitted[value] = None
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, not {value!r}")
    return float(value)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, not {value!r}")
    return value


def _parse_state(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    bounds = tuple(_number(b) for b in doc["bounds"])
    alertnames = {_string(a): None for a in doc["alertnames"]}
    severities = {_string(s): None for s in doc["severities"]}
    open_ = {
        _string(fp): OpenIncident((_string(a), _string(s)), _number(start))
        for fp, a, s, start in doc["open"]
    }
    resolved = [(_string(fp), _number(start)) for fp, start in doc["resolved"]]
    totals = {(_string(a), _string(s)): _count(n) for a, s, n in doc["totals"]}
    durations = {}
    for a, s, counts, total in doc["durations"]:
        hist = Durations([_count(n) for n in counts], _number(total))
        if len(hist.counts) != len(bounds) + 1:
            raise ValueError("a histogram's bucket counts do not match its bounds")
        durations[(_string(a), _string(s))] = hist
    return bounds, alertnames, severities, open_, resolved, totals, durations


class IncidentReceiver:
    """The webhook endpoint: parses a notification, applies it, saves the state, and serves
    the figures to scrapes. One notification is applied (and saved) at a time; a scrape
    waits only for the in-memory update, never for the disk."""

    def __init__(
        self,
        incidents: Incidents,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.incidents = incidents
        self.state_file = state_file
        self.clock = clock
        self.saving = state_file is not None
        self.notifications: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()  # the state: held briefly, by scrapes too
        self._write = threading.Lock()  # one notification at a time, through its save
        self._save_failed = False

    def restore(self) -> Restored:
        """Load the state file, if any (see `incidents_state.restore_state`)."""
        if self.state_file is None:
            return "absent"
        with self._write, self._lock:
            result = restore_state(self.state_file, self.incidents.load_state, clock=self.clock)
        self.saving = result != "unusable"
        if result == "restored":
            log.info(
                "incidents restored",
                extra={"path": str(self.state_file), "open": len(self.incidents.open)},
            )
        return result

    def handle(self, body: bytes) -> tuple[int, str]:
        """A webhook request's body → (HTTP status, one line)."""
        try:
            notification = parse_webhook(body)
        except WebhookError as exc:
            with self._lock:
                self.notifications["rejected"] += 1
            log.warning("webhook notification refused", extra={"problem": str(exc)})
            return 400, str(exc)
        with self._write:
            with self._lock:
                outcomes = self.incidents.apply(notification)
                self.notifications["accepted"] += 1
                self.outcomes.update(outcomes)
                changed = set(outcomes) - {"duplicate"}
                doc = self.incidents.to_state() if changed and self.saving else None
            if doc is not None:
                self._save(doc)
        log.debug("webhook notification", extra=dict(outcomes))
        return 200, "ok " + " ".join(f"{k}={outcomes[k]}" for k in OUTCOMES if outcomes[k])

    def _save(self, doc: dict[str, Any]) -> None:
        assert self.state_file is not None
        try:
            save_state(self.state_file, doc)
        except OSError as exc:
            if not self._save_failed:
                log.error(
                    "cannot save the incidents state file: open incidents would be lost at a "
                    "restart (logged once until it works again)",
                    extra={"path": str(self.state_file), "err": exc.strerror or str(exc)},
                )
            self._save_failed = True
            return
        if self._save_failed:
            log.info("incidents state file saved again", extra={"path": str(self.state_file)})
        self._save_failed = False

    def collect(self) -> Iterator[Metric]:
        out = Families(METRICS)
        with self._lock:
            self.incidents.families(out)
            for outcome in OUTCOMES:
                out.add_values(ALERTS, (outcome,), float(self.outcomes[outcome]))
            for result in ("accepted", "rejected"):
                out.add_values(NOTIFICATIONS, (result,), float(self.notifications[result]))
        return iter(list(out))


class IncidentCollector(Collector):
    """The receiver's figures at each scrape."""

    def __init__(self, receiver: IncidentReceiver) -> None:
        self.receiver = receiver

    def collect(self) -> Iterator[Metric]:
        return self.receiver.collect()
