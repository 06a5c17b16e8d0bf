"""Alertmanager's webhook notification (version "4"), parsed: a pure function on the body.

    {"version": "4", "status": "firing", "receiver": "incidents", "groupKey": "…",
     "alerts": [{"status": "firing", "labels": {"alertname": "…", "severity": "page", …},
                 "startsAt": "2024-05-01T10:00:00.123Z", "endsAt": "0001-01-01T00:00:00Z",
                 "fingerprint": "d1f3a0c2b4e5f607", …}, …], …}

Only what incident tracking needs is read: each alert's status, fingerprint, `alertname` and
`severity` labels, `startsAt`, and for a resolved alert `endsAt` (a firing alert's `endsAt`
is Alertmanager's zero time, or a time in the future: not read). Anything else may be absent.
Every problem raises `WebhookError` with one line that says where (`alerts[3].fingerprint`)
and what; the whole notification is then refused, so a bad one never half-applies.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

VERSION = "4"
MAX_FINGERPRINT = 128  # Alertmanager's are 16 hex digits
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
Status = Literal["firing", "resolved"]


class WebhookError(ValueError):
    """A notification that cannot be used; the message is one line."""


@dataclass(frozen=True)
class AlertEvent:
    """One alert of a notification."""

    fingerprint: str
    status: Status
    alertname: str
    severity: str
    starts_at: float  # unix seconds
    ends_at: float | None  # resolved alerts only


@dataclass(frozen=True)
class Notification:
    status: str
    receiver: str
    alerts: tuple[AlertEvent, ...]


def _shown(value: object, limit: int = 40) -> str:
    """A value for an error message: short, one line (containers by kind only: their repr
    could be megabytes, or nested too deep to print)."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_time(text: object, where: str) -> float | None:
    """An RFC 3339 time (as Go writes it: up to 9 fractional digits) → unix seconds; None for
    Go's zero time (0001-01-01T00:00:00Z: not set)."""
    if not isinstance(text, str):
        raise WebhookError(f"{where}: expected an RFC 3339 time, not {_shown(text)}")
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise WebhookError(f"{where}: {_shown(text)} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        dt.datetime(year, month, day, hour, minute, second)  # range checks (day 31 of April…)
    except ValueError as exc:
        raise WebhookError(f"{where}: {_shown(text)} is not a valid time: {exc}") from None
    if year == 1 and month == 1 and day == 1:
        return None
    zone = m.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise WebhookError(f"{where}: {_shown(text)} has an invalid UTC offset")
        offset = sign * (hours * 3600 + minutes * 60)
    whole = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    fraction = float(m.group(7)) if m.group(7) else 0.0
    return whole - offset + fraction


def _label(labels: dict[str, Any], name: str, where: str) -> str:
    value = labels.get(name, "")
    if not isinstance(value, str):
        raise WebhookError(f"{where}.labels.{name}: expected a string, not {_shown(value)}")
    return value


def parse_alert(raw: object, where: str) -> AlertEvent:
    if not isinstance(raw, dict):
        raise WebhookError(f"{where}: expected an object, not {_shown(raw)}")
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        raise WebhookError(f'{where}.status: expected "firing" or "resolved", not {_shown(status)}')
    fingerprint = raw.get("fingerprint")
    if fingerprint is None or fingerprint == "":
        raise WebhookError(f"{where}: missing fingerprint (Alertmanager sends one per alert)")
    if not isinstance(fingerprint, str) or len(fingerprint) > MAX_FINGERPRINT:
        raise WebhookError(
            f"{where}.fingerprint: expected a string of at most {MAX_FINGERPRINT} characters, "
            f"not {_shown(fingerprint)}"
        )
    labels = raw.get("labels", {})
    if not isinstance(labels, dict):
        raise WebhookError(f"{where}.labels: expected an object, not {_shown(labels)}")
    starts_at = parse_time(raw.get("startsAt"), f"{where}.startsAt")
    if starts_at is None:
        raise WebhookError(f"{where}.startsAt: not set (Go's zero time)")
    ends_at = None
    if status == "resolved":
        ends_at = parse_time(raw.get("endsAt"), f"{where}.endsAt")
        if ends_at is None:
            raise WebhookError(f"{where}.endsAt: a resolved alert needs its end time")
        if ends_at < starts_at:
            raise WebhookError(
                f"{where}.endsAt: {raw.get('endsAt')} is before startsAt {raw.get('startsAt')}"
            )
    return AlertEvent(
        fingerprint=fingerprint,
        status=status,
        alertname=_label(labels, "alertname", where),
        severity=_label(labels, "severity", where),
        starts_at=starts_at,
        ends_at=ends_at,
    )


def parse_webhook(body: bytes) -> Notification:
    """The notification in a webhook request's body. Raises WebhookError (one line)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookError(f"malformed JSON: byte {exc.start} is not UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WebhookError(
            f"malformed JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer too long, nesting too deep
        raise WebhookError(f"malformed JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise WebhookError(f"expected a JSON object, not {type(doc).__name__}")
    version = doc.get("version")
    if version != VERSION:
        raise WebhookError(
            f"unknown version {_shown(version)}: this receiver reads Alertmanager's webhook "
            f'version "{VERSION}"'
        )
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise WebhookError(f"alerts: expected a list, not {_shown(alerts)}")
    status, receiver = doc.get("status", ""), doc.get("receiver", "")
    return Notification(
        status=status if isinstance(status, str) else "",
        receiver=receiver if isinstance(receiver, str) else "",
        alerts=tuple(parse_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts)),
    )
