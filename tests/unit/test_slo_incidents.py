"""Incidents from Alertmanager's webhook: the parser (fuzzed), the state machine, the state file.

tests/data/alertmanager/webhook-{firing,resolved}.json are notifications recorded from
Alertmanager 0.25.0 (the resolved one's endsAt and both externalURLs edited).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpcobs.exporters.runtime.families import Families
from hpcobs.slo.incidents import (
    BUCKETS,
    MAX_LABEL_LENGTH,
    MAX_SEVERITIES,
    METRICS,
    OTHER,
    IncidentReceiver,
    Incidents,
)
from hpcobs.slo.incidents_state import KIND, load_state, save_state
from hpcobs.slo.incidents_webhook import (
    AlertEvent,
    Notification,
    WebhookError,
    parse_time,
    parse_webhook,
)
from hpcobs.slo.loader import load_specs

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "alertmanager"
FIRING = (DATA / "webhook-firing.json").read_bytes()
RESOLVED = (DATA / "webhook-resolved.json").read_bytes()
T0 = 1714557600.0  # 2024-05-01T10:00:00Z


# -- helpers -------------------------------------------------------------------------------
def iso(t: float) -> str:
    """Unix seconds → RFC 3339 with nanoseconds, as Go writes it."""
    whole = int(t // 1)
    nanos = round((t - whole) * 1e9)
    stamp = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z" if nanos else f"{stamp}Z"


def alert(
    fp: str,
    start: float,
    end: float | None = None,
    alertname: str = "HpcobsNodeDown",
    severity: str = "page",
) -> dict[str, Any]:
    return {
        "status": "resolved" if end is not None else "firing",
        "labels": {"alertname": alertname, "severity": severity, "node": fp},
        "annotations": {},
        "startsAt": iso(start),
        "endsAt": iso(end) if end is not None else "0001-01-01T00:00:00Z",
        "fingerprint": fp,
    }


def body(*alerts: dict[str, Any], version: object = "4") -> bytes:
    status = "resolved" if all(a["status"] == "resolved" for a in alerts) else "firing"
    doc = {"version": version, "status": status, "receiver": "incidents", "alerts": list(alerts)}
    return json.dumps(doc).encode()


def notification(*alerts: dict[str, Any]) -> Notification:
    return parse_webhook(body(*alerts))


def figures(incidents: Incidents) -> dict[str, float]:
    """Every sample of the incidents' families, by name and labels."""
    out = Families(METRICS)
    incidents.families(out)
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value for family in out for s in family.samples
    }


def histogram(
    incidents: Incidents, alertname: str = "HpcobsNodeDown", severity: str = "page"
) -> tuple[int, float]:
    hist = incidents.durations.get((alertname, severity))
    return (0, 0.0) if hist is None else (sum(hist.counts), hist.sum)


# -- the parser ----------------------------------------------------------------------------
def test_parses_alertmanagers_notifications() -> None:
    firing = parse_webhook(FIRING)
    assert firing.status == "firing" and firing.receiver == "webhook"
    assert firing.alerts == (
        AlertEvent(
            fingerprint="7f8ed7c251fe73e6",
            status="firing",
            alertname="HpcobsNodeDown",
            severity="ticket",
            starts_at=T0 + 0.123456,
            ends_at=None,  # Go's zero time in a firing alert
        ),
    )
    (resolved,) = parse_webhook(RESOLVED).alerts
    assert resolved.status == "resolved"
    assert resolved.ends_at is not None
    assert resolved.ends_at - resolved.starts_at == pytest.approx(5400.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2024-05-01T10:00:00Z", T0),
        ("2024-05-01T10:00:00.5Z", T0 + 0.5),
        ("2024-05-01T10:00:00.123456789Z", T0 + 0.123456789),
        ("2024-05-01t10:00:00z", T0),
        ("2024-05-01T12:30:00+02:30", T0),
        ("2024-05-01T07:00:00-03:00", T0),
        ("0001-01-01T00:00:00Z", None),
    ],
)
def test_rfc3339_times(text: str, seconds: float | None) -> None:
    got = parse_time(text, "t")
    assert got == pytest.approx(seconds) if seconds is not None else got is None


@pytest.mark.parametrize(
    "text",
    ["", "2024-05-01", "2024-05-01 10:00:00Z", "2024-02-30T10:00:00Z", "2024-05-01T25:00:00Z",
     "2024-05-01T10:00:00", "2024-05-01T10:00:00.Z", "2024-05-01T10:00:00.1234567890Z",
     "2024-05-01T10:00:00+24:00", "1714557600", 1714557600, None],
)  # fmt: skip
def test_bad_times_are_one_line_errors(text: object) -> None:
    with pytest.raises(WebhookError) as err:
        parse_time(text, "alerts[0].startsAt")
    assert str(err.value).startswith("alerts[0].startsAt: ") and "\n" not in str(err.value)


def _without(key: str) -> bytes:
    doc = json.loads(FIRING)
    del doc["alerts"][0][key]
    return json.dumps(doc).encode()


def _with(**fields: object) -> bytes:
    doc = json.loads(RESOLVED)
    doc["alerts"][0].update(fields)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "malformed JSON: Expecting property name"),
        (b"\xff\xfe{}", "malformed JSON: byte 0 is not UTF-8"),
        (b"[" * 100_000, "malformed JSON"),
        (b'{"version": "4", "alerts": [' + b"1" * 5000 + b"]}", "malformed JSON"),
        (b"[]", "expected a JSON object, not list"),
        (b'{"version": "3", "alerts": []}', "unknown version '3'"),
        (b'{"version": 4, "alerts": []}', "unknown version 4"),
        (b'{"alerts": []}', "unknown version None"),
        (b'{"version": "4"}', "alerts: expected a list, not None"),
        (b'{"version": "4", "alerts": [[]]}', "alerts[0]: expected an object, not a list"),
        (_without("fingerprint"), "alerts[0]: missing fingerprint"),
        (_with(fingerprint=""), "alerts[0]: missing fingerprint"),
        (_with(fingerprint=7), "alerts[0].fingerprint: expected a string"),
        (_with(fingerprint="f" * 129), "alerts[0].fingerprint: expected a string"),
        (_with(status="pending"), 'alerts[0].status: expected "firing" or "resolved"'),
        (_with(labels=[]), "alerts[0].labels: expected an object"),
        (_with(labels={"alertname": 1}), "alerts[0].labels.alertname: expected a string"),
        (_without("startsAt"), "alerts[0].startsAt: expected an RFC 3339 time, not None"),
        (_with(startsAt="0001-01-01T00:00:00Z"), "alerts[0].startsAt: not set"),
        (_with(endsAt="0001-01-01T00:00:00Z"), "alerts[0].endsAt: a resolved alert needs"),
        (_with(endsAt="2024-05-01T09:00:00Z"), "alerts[0].endsAt: 2024-05-01T09:00:00Z is before"),
    ],
)
def test_bad_notifications_are_refused_with_one_line(raw: bytes, reason: str) -> None:
    with pytest.raises(WebhookError) as err:
        parse_webhook(raw)
    assert str(err.value).startswith(reason), str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


def _must_parse_or_refuse(raw: bytes) -> None:
    try:
        result = parse_webhook(raw)
    except WebhookError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(result, Notification)


@given(st.binary(max_size=2000))
@example(
    b'{"version":"4","alerts":[{"status":"resolved","fingerprint":"x","startsAt":"9999-12-31T23:59:59.999999999-23:59","endsAt":"9999-12-31T23:59:59.999999999-23:59"}]}'
)
@settings(max_examples=300)
def test_fuzz_bytes(raw: bytes) -> None:
    _must_parse_or_refuse(raw)


@given(JSON)
@settings(max_examples=300)
def test_fuzz_json_documents(doc: object) -> None:
    _must_parse_or_refuse(json.dumps(doc).encode())


PATHS = st.sampled_from(
    [(), ("alerts",), ("alerts", 0), ("alerts", 0, "labels"), ("alerts", 0, "labels", "alertname"),
     ("alerts", 0, "startsAt"), ("alerts", 0, "endsAt"), ("alerts", 0, "fingerprint"),
     ("alerts", 0, "status"), ("version",)]
)  # fmt: skip


@given(st.sampled_from([FIRING, RESOLVED]), PATHS, JSON, st.booleans())
@settings(max_examples=400)
def test_fuzz_mutated_notifications(base: bytes, path: tuple[Any, ...], value: object, drop: bool) -> None:  # fmt: skip
    """A real notification with one field replaced by any JSON value, or removed."""
    doc: Any = json.loads(base)
    if not path:
        doc = value
    else:
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if drop and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    _must_parse_or_refuse(json.dumps(doc).encode())


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.integers(min_value=0, max_value=10**10),
            st.none() | st.integers(min_value=0, max_value=10**9),
            st.text(max_size=20),
        ),
        max_size=5,
    )
)
def test_valid_alerts_parse_to_what_was_sent(rows: list[tuple[str, int, int | None, str]]) -> None:
    alerts = [
        alert(fp, T0 + start / 1000, None if d is None else T0 + (start + d) / 1000, name)
        for fp, start, d, name in rows
    ]
    parsed = parse_webhook(body(*alerts) if alerts else b'{"version":"4","alerts":[]}').alerts
    assert [(a.fingerprint, a.alertname, a.status) for a in parsed] == [
        (fp, name, "firing" if d is None else "resolved") for fp, _, d, name in rows
    ]
    for a, (_, start, d, _) in zip(parsed, rows, strict=True):
        assert a.starts_at == pytest.approx(T0 + start / 1000, abs=1e-6)
        if d is not None:
            assert a.ends_at is not None
            assert a.ends_at - a.starts_at == pytest.approx(d / 1000, abs=1e-6)


# -- the state machine ---------------------------------------------------------------------
def test_an_incident_is_observed_once_when_it_resolves() -> None:
    inc = Incidents()
    assert inc.apply(notification(alert("a", T0))) == Counter(opened=1)
    assert (
        figures(inc)["hpcobs_incidents_open[('alertname', 'HpcobsNodeDown'), ('severity', 'page')]"]
        == 1
    )
    assert histogram(inc) == (0, 0.0)
    count = "hpcobs_incident_duration_seconds_count[('alertname', 'HpcobsNodeDown'), ('severity', 'page')]"  # fmt: skip
    assert figures(inc)[count] == 0  # there from the start: increase() sees the first one
    for _ in range(3):  # repeat notifications
        assert inc.apply(notification(alert("a", T0))) == Counter(duplicate=1)
    assert inc.apply(notification(alert("a", T0, T0 + 1234.5))) == Counter(resolved=1)
    assert histogram(inc) == (1, 1234.5)
    for _ in range(3):  # resends of the resolved notice, and a late retry of the firing one
        assert inc.apply(notification(alert("a", T0, T0 + 1234.5))) == Counter(duplicate=1)
        assert inc.apply(notification(alert("a", T0))) == Counter(duplicate=1)
    got = figures(inc)
    assert got["hpcobs_incidents_open[('alertname', 'HpcobsNodeDown'), ('severity', 'page')]"] == 0
    assert got["hpcobs_incidents_total[('alertname', 'HpcobsNodeDown'), ('severity', 'page')]"] == 1
    assert histogram(inc) == (1, 1234.5)
    le = "hpcobs_incident_duration_seconds_bucket[('alertname', 'HpcobsNodeDown'), ('le', '{}'), ('severity', 'page')]"
    assert got[le.format("600.0")] == 0 and got[le.format("1800.0")] == 1
    assert got[le.format("+Inf")] == 1


def test_the_same_alert_firing_again_later_is_a_new_incident() -> None:
    inc = Incidents()
    inc.apply(notification(alert("a", T0)))
    inc.apply(notification(alert("a", T0, T0 + 60)))
    assert inc.apply(notification(alert("a", T0 + 600))) == Counter(opened=1)
    assert inc.apply(notification(alert("a", T0 + 600, T0 + 700))) == Counter(resolved=1)
    assert histogram(inc) == (2, 160.0)
    assert inc.totals == {("HpcobsNodeDown", "page"): 2}


def test_a_resolution_never_seen_firing_counts_once() -> None:
    inc = Incidents()
    assert inc.apply(notification(alert("a", T0, T0 + 60))) == Counter(resolved=1)
    assert inc.apply(notification(alert("a", T0, T0 + 60))) == Counter(duplicate=1)
    assert histogram(inc) == (1, 60.0) and inc.totals == {("HpcobsNodeDown", "page"): 1}


def test_a_newer_start_abandons_the_open_incident() -> None:
    """Its resolution was lost: it ends without a duration, the newer one counts."""
    inc = Incidents()
    inc.apply(notification(alert("a", T0)))
    assert inc.apply(notification(alert("a", T0 + 600))) == Counter(abandoned=1, opened=1)
    assert inc.apply(notification(alert("a", T0 + 600, T0 + 660))) == Counter(resolved=1)
    assert histogram(inc) == (1, 60.0) and inc.totals[("HpcobsNodeDown", "page")] == 2
    assert not inc.open


def test_a_late_resolution_of_an_older_incident_keeps_the_open_one() -> None:
    inc = Incidents()
    inc.apply(notification(alert("a", T0 + 600)))
    assert inc.apply(notification(alert("a", T0, T0 + 60))) == Counter(resolved=1)
    assert set(inc.open) == {"a"} and histogram(inc) == (1, 60.0)
    inc.apply(notification(alert("a", T0 + 600, T0 + 900)))
    assert histogram(inc) == (2, 360.0)


def test_an_earlier_start_for_the_open_incident_is_the_same_incident() -> None:
    """Alertmanager keeps an alert's earliest start when it merges: the duration uses it."""
    inc = Incidents()
    inc.apply(notification(alert("a", T0 + 10)))
    assert inc.apply(notification(alert("a", T0))) == Counter(duplicate=1)
    inc.apply(notification(alert("a", T0, T0 + 100)))
    assert histogram(inc) == (1, 100.0) and not inc.open


def test_alertnames_and_severities_are_capped() -> None:
    inc = Incidents(max_alertnames=3)
    alerts = [alert(f"f{i}", T0, alertname=f"A{i}", severity=f"s{i}") for i in range(20)]
    alerts.append(alert("long", T0, alertname="x" * (MAX_LABEL_LENGTH + 1)))
    inc.apply(notification(*alerts))
    names = {k[0] for k in inc.totals}
    assert names == {"A0", "A1", "A2", OTHER}
    assert len({k[1] for k in inc.totals}) == MAX_SEVERITIES + 1  # and `other`
    assert inc.totals[(OTHER, OTHER)] == 20 - MAX_SEVERITIES + 1  # "page" came too late
    inc.apply(notification(alert("f0", T0, T0 + 5, alertname="A0", severity="s0")))
    assert histogram(inc, "A0", "s0") == (1, 5.0)
    # a label set admitted before is kept, whatever came since
    inc.apply(notification(alert("g", T0, T0 + 1, alertname="A1", severity="s1")))
    assert histogram(inc, "A1", "s1") == (1, 1.0)


def test_open_incidents_are_capped_and_count_when_they_resolve() -> None:
    inc = Incidents(max_open=2)
    got = inc.apply(notification(*(alert(f"f{i}", T0) for i in range(3))))
    assert got == Counter(opened=2, dropped=1) and len(inc.open) == 2
    assert inc.apply(notification(alert("f2", T0, T0 + 9))) == Counter(resolved=1)
    assert inc.totals[("HpcobsNodeDown", "page")] == 3 and histogram(inc) == (1, 9.0)


def test_resolved_keys_are_bounded() -> None:
    inc = Incidents(max_resolved=5)
    for i in range(20):
        inc.apply(notification(alert(f"f{i}", T0, T0 + 1)))
    assert len(inc.resolved) == 5 and ("f19", T0) in inc.resolved


Event = tuple[int, str]  # (incident index, "firing" | "resolved")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[str, float, float | None]], list[Event], int]:
    """Incidents (distinct fingerprints; one fingerprint's successive incidents have tests
    of their own above) (fingerprint, start, end or None: still open), and the notifications
    Alertmanager may send for them: each incident's firing notices before its resolved ones,
    any number of each (resends, repeats), interleaved across incidents; and where the
    daemon restarts."""
    n = draw(st.integers(min_value=1, max_value=6))
    incidents = []
    for i in range(n):
        fp = f"{draw(st.sampled_from(['fa', 'fb', 'fc']))}{i}"
        start = T0 + draw(st.integers(min_value=0, max_value=10**6)) / 8
        end = draw(st.none() | st.integers(min_value=0, max_value=10**6).map(lambda d: d / 8))
        incidents.append((fp, start, None if end is None else start + end))
    queues = []
    for i, (_, _, end) in enumerate(incidents):
        firing = draw(st.integers(min_value=0 if end is not None else 1, max_value=3))
        resolved = draw(st.integers(min_value=1, max_value=3)) if end is not None else 0
        queues.append([(i, "firing")] * firing + [(i, "resolved")] * resolved)
    events: list[Event] = []
    rng = random.Random(draw(st.integers(0, 2**32)))
    while any(queues):
        q = rng.choice([q for q in queues if q])
        events.append(q.pop(0))
    return incidents, events, draw(st.integers(min_value=0, max_value=len(events)))


@given(histories())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_resends_and_a_restart_change_nothing(
    history: tuple[list[tuple[str, float, float | None]], list[Event], int],
) -> None:
    """Whatever resends Alertmanager makes, in whatever interleaving, and wherever the daemon
    restarts (state saved to JSON and loaded into a new machine): each incident counts once,
    each resolved one is observed once with its own duration, the others stay open."""
    incidents, events, restart_at = history
    inc = Incidents()
    for k, (i, status) in enumerate(events):
        if k == restart_at:
            saved = json.loads(json.dumps(inc.to_state()))
            inc = Incidents()
            inc.load_state(saved)
        fp, start, end = incidents[i]
        inc.apply(notification(alert(fp, start, end if status == "resolved" else None)))
    resolved = [end - start for _, start, end in incidents if end is not None]
    count, total = histogram(inc)
    assert count == len(resolved)
    assert total == pytest.approx(sum(resolved), abs=1e-3)
    assert inc.totals == {("HpcobsNodeDown", "page"): len(incidents)}
    assert sorted(inc.open) == sorted(fp for fp, _, end in incidents if end is None)


# -- the state ---------------------------------------------------------------------------
def busy() -> Incidents:
    inc = Incidents()
    inc.apply(notification(alert("a", T0), alert("b", T0 + 1, T0 + 100, "Other", "ticket")))
    return inc


def test_state_round_trips() -> None:
    inc = busy()
    again = Incidents()
    again.load_state(json.loads(json.dumps(inc.to_state())))
    assert figures(again) == figures(inc)
    assert again.open == inc.open and again.resolved == inc.resolved


def test_changed_buckets_restart_the_histogram(caplog: pytest.LogCaptureFixture) -> None:
    inc = busy()
    other = Incidents(bounds=(1.0, 2.0))
    with caplog.at_level(logging.WARNING):
        other.load_state(inc.to_state())
    assert not other.durations and other.totals == inc.totals and other.open == inc.open
    assert "histogram restarts" in caplog.text


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(format=2),
        lambda d: d.pop("open"),
        lambda d: d.update(open=[["a", "X", "page"]]),
        lambda d: d.update(open=[["a", "X", "page", "soon"]]),
        lambda d: d.update(open=[[1, "X", "page", 1.0]]),
        lambda d: d.update(totals=[["X", "page", -1]]),
        lambda d: d.update(totals=[["X", "page", True]]),
        lambda d: d.update(resolved={"a": 1}),
        lambda d: d.update(durations=[["X", "page", [1, 2], 3.0]]),
        lambda d: d.update(bounds=["ten"]),
        lambda d: d.update(alertnames=None),
    ],
)
def test_a_malformed_state_is_refused_and_changes_nothing(change: Any) -> None:
    doc = busy().to_state()
    change(doc)
    inc = busy()
    before = figures(inc)
    with pytest.raises(ValueError):
        inc.load_state(doc)
    assert figures(inc) == before


@given(st.sampled_from(["open", "resolved", "totals", "durations", "bounds", "alertnames"]), JSON)
@settings(max_examples=200)
def test_fuzz_state_documents(key: str, value: object) -> None:
    doc = busy().to_state()
    doc[key] = value
    inc = Incidents()
    try:
        inc.load_state(json.loads(json.dumps(doc)))
    except ValueError:
        assert figures(inc) == {}


# -- the receiver and its state file -------------------------------------------------------
def test_receiver_saves_changes_only_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    first = IncidentReceiver(Incidents(), path)
    assert first.restore() == "absent"
    assert first.handle(body(alert("a", T0))) == (200, "ok opened=1")
    saved = path.read_bytes()
    os.utime(path, (0, 0))
    assert first.handle(body(alert("a", T0))) == (200, "ok duplicate=1")
    assert path.stat().st_mtime == 0 and path.read_bytes() == saved  # not written again
    code, reason = first.handle(b'{"version": "3"}')
    assert code == 400 and reason.startswith("unknown version")
    assert path.stat().st_mtime == 0
    assert json.loads(saved)["kind"] == KIND

    second = IncidentReceiver(Incidents(), path)  # the daemon restarted
    assert second.restore() == "restored"
    assert second.handle(body(alert("a", T0))) == (200, "ok duplicate=1")
    assert second.handle(body(alert("a", T0, T0 + 42))) == (200, "ok resolved=1")
    assert histogram(second.incidents) == (1, 42.0)
    third = IncidentReceiver(Incidents(), path)
    third.restore()
    assert figures(third.incidents) == figures(second.incidents)


@pytest.mark.parametrize(
    "content", [b"", b"\x00\xff garbage", b'{"kind": "other"}', b'{"kind": "' + KIND.encode() + b'"', b"[1, 2"]
)  # fmt: skip
def test_a_corrupt_state_file_is_moved_aside(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "incidents.json"
    path.write_bytes(content)
    receiver = IncidentReceiver(Incidents(), path)
    with caplog.at_level(logging.ERROR):
        assert receiver.restore() == "afresh"
    assert len(caplog.records) == 1 and "moved aside" in caplog.records[0].getMessage()
    (moved,) = tmp_path.glob("incidents.json.corrupt-*")
    assert moved.read_bytes() == content
    receiver.handle(body(alert("a", T0)))
    assert load_state(path) is not None  # saving again


def test_a_corrupt_ledger_inside_a_valid_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    doc = busy().to_state()
    doc["totals"] = "many"
    save_state(path, doc)
    assert IncidentReceiver(Incidents(), path).restore() == "afresh"
    assert list(tmp_path.glob("incidents.json.corrupt-*"))


def test_an_unreadable_state_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    path.mkdir()  # not a regular file
    receiver = IncidentReceiver(Incidents(), path)
    assert receiver.restore() == "unusable"
    assert receiver.handle(body(alert("a", T0))) == (200, "ok opened=1")
    assert path.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_a_failing_save_is_logged_once_and_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gone" / "incidents.json"
    receiver = IncidentReceiver(Incidents(), path)
    with caplog.at_level(logging.ERROR):
        assert receiver.handle(body(alert("a", T0)))[0] == 200
        assert receiver.handle(body(alert("b", T0)))[0] == 200
    assert len([r for r in caplog.records if "cannot save" in r.getMessage()]) == 1
    path.parent.mkdir()
    receiver.handle(body(alert("c", T0)))
    saved = load_state(path)
    assert saved is not None and {fp for fp, *_ in saved["open"]} == {"a", "b", "c"}


def test_rejected_notifications_change_nothing(tmp_path: Path) -> None:
    receiver = IncidentReceiver(busy(), tmp_path / "s.json")
    before = figures(receiver.incidents)
    bad = [b"{", b'{"version":"3","alerts":[]}', _without("fingerprint"),
           body(alert("z", T0), {"status": "firing"})]  # fmt: skip
    for raw in bad:
        code, reason = receiver.handle(raw)
        assert code == 400 and "\n" not in reason
    assert figures(receiver.incidents) == before  # not even alert "z", before the bad one
    assert not (tmp_path / "s.json").exists()
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for f in receiver.collect()
        for s in f.samples
        if s.name == "hpcobs_incident_notifications_total"
    }
    assert samples == {
        ("hpcobs_incident_notifications_total", ("accepted",)): 0,
        ("hpcobs_incident_notifications_total", ("rejected",)): 4,
    }


# -- the example SLO ---------------------------------------------------------------------
def test_the_example_slo_uses_the_daemons_buckets() -> None:
    loaded = load_specs([REPO / "slo" / "examples" / "incidents.yaml"])
    assert loaded.ok, [str(p) for p in loaded.problems.errors]
    (slo,) = loaded.slos
    sli: Any = slo.sli
    assert sli.metric == "hpcobs_incident_duration_seconds"
    assert sli.buckets == BUCKETS and sli.threshold == 14400
    assert ("severity", "=", "page") in {(m.label, m.op, m.value) for m in sli.matchers}


def test_state_file_is_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    save_state(path, copy.deepcopy(busy().to_state()))
    assert path.stat().st_mode & 0o077 == 0
