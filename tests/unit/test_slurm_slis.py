"""The scheduler SLIs of issue 17: what the parsers read for them, what the ledger counts
(exactly once, across sources and restarts) and what the collector exports.

The captures `squeue-slis-V.txt`, `reservations-V.txt` and `jobcomp-slis-V.log` come from the
harness's cluster with preemption and one licence, for Slurm 22.05, 24.11 and 26.05
(tests/data/slurm/capture_slis.py; job ids by role as it printed them, the same for every
version): 1 exit 3, 2 SIGKILL, 3 the odd account, 4 preempted and requeued (then cancelled
while pending), 5 and 7 the preemptors, 6 preempted and cancelled (`--no-requeue`), 8 requeued
by `scontrol requeue` (then cancelled), 9 the licence holder, 10 its waiter.
"""

from __future__ import annotations

import json
import shutil
import string
import subprocess
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from hpcobs.exporters.parse.slurm import (
    TAIL_SEP,
    parse_jobcomp_line,
    parse_reservations,
    parse_squeue,
)
from hpcobs.exporters.slurm.collector import families, log_link
from hpcobs.exporters.slurm.ledger import Accounts, Ledger
from hpcobs.exporters.slurm.model import (
    FINISHED_STATES,
    MAX_LABEL_CHARS,
    Job,
    exit_code_text,
    expand_hostlist,
    label_value,
    make_job,
    make_reservation,
    node_state,
    reservation_flags,
)
from hpcobs.exporters.slurm.poller import Poller, summarize_reservations

from fakes.pyslurm_fake import ClusterSpec, FakeCommands, JobSpec, NodeSpec, ReservationSpec

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent.parent / "data" / "slurm"
VERSIONS = ("22.05", "24.11", "26.05")
T0 = 1_800_000_000
ODD = ("q\"uo'te ü " * 40)[:300]


def read(name: str) -> str:
    return (DATA / name).read_text()


def squeue(version: str) -> dict[int, Job]:
    parsed = parse_squeue(read(f"squeue-slis-{version}.txt"))
    assert parsed.bad_lines == 0
    return {j.job_id: j for j in parsed.jobs}


def jobcomp(version: str) -> list[Job]:
    lines = read(f"jobcomp-slis-{version}.log").splitlines()
    jobs = [parse_jobcomp_line(line, UTC) for line in lines]
    assert None not in jobs
    return [j for j in jobs if j is not None]


def job(job_id: int, state: str, **kw: Any) -> Job:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "array_job_id": job_id,
        "array_tasks": "",
        "partition": "debug",
        "state": state,
        "reason": "",
        "eligible_time": T0,
        "start_time": 0,
        "end_time": 0,
        "cpus": 2,
        "memory_bytes": 0,
        "gpus": 0,
        "licenses": (),
        "nodes": "",
        "submit_time": T0,
    }
    fields.update(kw)
    return make_job(**fields)


def ran(job_id: int, state: str, start: int, end: int = 0, **kw: Any) -> Job:
    kw.setdefault("nodes", "node1")
    return job(job_id, state, start_time=start, end_time=end, **kw)


def restored(led: Ledger, **kw: Any) -> Ledger:
    """A new ledger from `led`'s saved state (through JSON, as the state file holds it)."""
    again = Ledger(**kw)
    again.load_state(json.loads(json.dumps(led.to_state())))
    return again


# -- the captures --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_squeue_tail_fields(version: str) -> None:
    jobs = squeue(version)
    assert (jobs[1].state, jobs[1].exit_code, jobs[1].restarts) == ("failed", "3:0", 0)
    assert (jobs[2].state, jobs[2].exit_code) == ("failed", "0:9")  # SIGKILL
    assert jobs[4].restarts == 1 and jobs[8].restarts == 1  # preempted / scontrol requeue
    assert jobs[6].state == "preempted" and jobs[6].restarts == 0
    assert jobs[10].state == "pending" and jobs[10].reason == "Licenses"
    assert all(j.user == "root" and j.submit_time > 0 for j in jobs.values())
    # The odd account, cut to a label value (squeue prints it whole).
    odd = jobs[3].account
    assert len(odd) == MAX_LABEL_CHARS and odd.endswith("...")
    assert odd.startswith("q\"uo'te_ü_q\"uo'te_ü_")
    assert {j.account for i, j in jobs.items() if i != 3} == {""}
    # A requeued job's submit time is the requeue's (Slurm resets it).
    jc = {(j.job_id, j.state): j for j in jobcomp(version)}
    assert jc[(4, "preempted")].submit_time < jobs[4].submit_time


@pytest.mark.parametrize("version", VERSIONS)
def test_jobcomp_fields(version: str) -> None:
    records = jobcomp(version)
    by_id = {(j.job_id, j.state): j for j in records}
    assert by_id[(1, "failed")].exit_code == "3:0"
    assert by_id[(2, "failed")].exit_code == "0:9"
    assert by_id[(3, "completed")].account == squeue(version)[3].account
    assert by_id[(8, "pending")].ran  # the run `scontrol requeue` ended
    assert all(j.user == "root" and j.submit_time > 0 for j in records)
    squeue_jobs = squeue(version)
    for key in ((1, "failed"), (3, "completed"), (6, "preempted")):
        assert by_id[key].submit_time == squeue_jobs[key[0]].submit_time, key


@pytest.mark.parametrize("version", VERSIONS)
def test_reservations_capture(version: str) -> None:
    parsed = parse_reservations(read(f"reservations-{version}.txt"))
    assert parsed.bad_lines == 0
    maint, odd, daily = parsed.reservations
    assert (maint.name, maint.flags, maint.nodes, maint.partition) == (
        "maint-now",
        ("IGNORE_JOBS", "MAINT", "SPEC_NODES"),
        "node1",
        "",
    )
    assert maint.maintenance and maint.end_time - maint.start_time == 3600
    assert odd.name == label_value(ODD) and len(odd.name) == MAX_LABEL_CHARS
    assert odd.flags == ("IGNORE_JOBS", "SPEC_NODES") and not odd.maintenance
    assert (daily.name, daily.partition, daily.flags) == (
        "daily-debug",
        "debug",
        ("DAILY", "IGNORE_JOBS"),
    )
    assert daily.start_time - maint.start_time == 4 * 3600
    view = summarize_reservations(parsed.reservations, maint.start_time)
    assert view.maintenance == ((maint.start_time, maint.end_time, frozenset({"node1"})),)


def test_no_reservations() -> None:
    parsed = parse_reservations("No reservations in the system\n")
    assert parsed.reservations == [] and parsed.bad_lines == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("order", ["jobcomp first", "squeue first"])
def test_ledger_over_the_captures(version: str, order: str) -> None:
    """Both sources, in either order, count each event once; requeues from either."""
    snapshot = list(squeue(version).values())
    records = jobcomp(version)
    now = max(j.end_time for j in snapshot) + 10
    led = Ledger(run_buckets=(60.0,), result_buckets=(60.0,))
    for _ in range(2):
        if order == "jobcomp first":
            led.apply_finished(records)
            led.apply_snapshot(snapshot, now)
        else:
            led.apply_snapshot(snapshot, now)
            led.apply_finished(records)
    # 4: preempted then requeued; 8: requeued by scontrol. Once each, whatever the order.
    assert led.requeues == {"low": 1.0, "debug": 1.0}
    # Every final record of either source, once (22.05 logs no line for job 8's cancellation).
    finals = list(
        {
            (r.job_id, r.end_time): r for r in [*records, *snapshot] if r.state in FINISHED_STATES
        }.values()
    )
    assert len(finals) == 9 if version == "22.05" else 8
    assert sum(led.finished.values()) == len(finals)
    ran = [r for r in finals if r.ran]
    assert sum(h.count for h in led.run.values()) == len(ran)
    assert sum(h.total for h in led.run.values()) == sum(r.end_time - r.start_time for r in ran)
    completed = [r for r in finals if r.state == "completed"]
    assert sum(h.count for h in led.time_to_result.values()) == len(completed)
    assert sum(h.total for h in led.time_to_result.values()) == sum(
        r.end_time - r.submit_time for r in completed
    )
    failed = {(f.job_id, f.state, f.exit_code) for f in led.failed}
    assert failed == {(1, "failed", "3:0"), (2, "failed", "0:9")}


def test_squeue_exit_codes_of_both_eras() -> None:
    assert exit_code_text(768) == "3:0" and exit_code_text(9) == "0:9"
    assert exit_code_text(65280) == "255:0" and exit_code_text(0) == "0:0"
    assert exit_code_text(-1) == "" and exit_code_text(1 << 20) == ""
    head = "1|1|N/A|debug|FAILED|1|2|3|1|cpu=1|(null)|n1|NonZeroExitCode|"
    for printed, expected in (("768", "3:0"), ("3:0", "3:0"), ("143:0", "143:0"), ("x", "")):
        tail = TAIL_SEP.join(["5", "0", printed, "(null)", "u", ""])
        (parsed,) = parse_squeue(head + tail).jobs
        assert parsed.exit_code == expected


def test_squeue_tail_survives_pipes_in_names_and_reason() -> None:
    line = "7|7|N/A|debug|FAILED|1|2|3|4|cpu=4|(null)|n[1-2]|free | text, reason|" + TAIL_SEP.join(
        ["100", "2", "256", "acc|ount", "us|er", ""]
    )
    (parsed,) = parse_squeue(line).jobs
    assert (parsed.reason, parsed.account, parsed.user) == (
        "free | text, reason",
        "acc|ount",
        "us|er",
    )
    assert (parsed.submit_time, parsed.restarts, parsed.exit_code) == (100, 2, "1:0")
    assert (parsed.nodes, parsed.cpus) == ("n[1-2]", 4)
    assert parse_squeue(line[:-1]).bad_lines == 1  # the tail cut short


# -- label values, host lists, flags -----------------------------------------------------------------


def test_label_value() -> None:
    assert label_value("  a\tb\nc\u2028d\x00 ") == "a?b?c?d?"
    assert label_value("(null)") == "" and label_value("", empty="none") == "none"
    assert label_value('q"uo\\te ü') == 'q"uo\\te ü'
    cut = label_value("x" * 300)
    assert len(cut) == MAX_LABEL_CHARS and cut.endswith("...")
    assert label_value("\ud800x") == "?x"  # a lone surrogate cannot be written as UTF-8


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_label_value(text: str) -> None:
    value = label_value(text)
    assert (len(value) <= MAX_LABEL_CHARS and value.isprintable()) or value == ""
    value.encode("utf-8")
    assert "\n" not in value


def test_expand_hostlist() -> None:
    assert expand_hostlist("node[01-03,7],gpu1") == ["node01", "node02", "node03", "node7", "gpu1"]
    assert expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert expand_hostlist("") == []
    for bad in ("n[1-", "n[3-1]", "n[a]", "n[1-2000000]", "n]1["):
        with pytest.raises(ValueError):
            expand_hostlist(bad)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=string.ascii_lowercase + string.digits + "[],-", max_size=40))
def test_fuzz_expand_hostlist(text: str) -> None:
    try:
        hosts = expand_hostlist(text)
    except ValueError:
        return
    assert all("[" not in h and "]" not in h for h in hosts)


def test_reservation_flags_and_maint_node_state() -> None:
    assert reservation_flags(["maint", "MAINTENANCE", "PURGE_COMP=00:05:00", "x y", "DAILY"]) == (
        "DAILY",
        "MAINT",
        "PURGE_COMP",
    )
    # 22.05's sinfo StateComplete of a node in a MAINT reservation
    assert node_state("idle+maintenance+reserved") == "maint"


RESERVATION_LINE = st.builds(
    lambda name, start, end, nodes, flags: (
        f"ReservationName={name} StartTime={start} EndTime={end} Duration=00:10:00 "
        f"Nodes={nodes} NodeCnt=1 CoreCnt=2 Features=(null) PartitionName=(null) "
        f"Flags={flags} TRES=cpu=2 Users=root State=ACTIVE"
    ),
    st.text(max_size=60).filter(lambda t: "\n" not in t and "\r" not in t),
    st.integers(min_value=0, max_value=2**41),
    st.integers(min_value=0, max_value=2**41),
    st.text(alphabet=string.ascii_lowercase + string.digits + "[],-", max_size=20),
    st.text(alphabet=string.ascii_uppercase + "_,=", max_size=40),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=400), st.lists(RESERVATION_LINE, max_size=5).map("\n".join)))
def test_fuzz_reservations(text: str) -> None:
    parsed = parse_reservations(text)
    for r in parsed.reservations:
        assert len(r.name) <= MAX_LABEL_CHARS and r.start_time > 0 and r.end_time > 0
        assert all(flag.replace("_", "").isalnum() for flag in r.flags)
    summarize_reservations(parsed.reservations, T0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=string.printable + "é|" + TAIL_SEP, max_size=400))
def test_fuzz_squeue_with_tails(text: str) -> None:
    for j in parse_squeue(text).jobs:
        assert len(j.user) <= MAX_LABEL_CHARS and len(j.account) <= MAX_LABEL_CHARS
        assert j.restarts >= 0


# -- the ledger: exactly once --------------------------------------------------------------------


def test_run_time_and_time_to_result_once_per_job() -> None:
    led = Ledger(run_buckets=(60.0, 3600.0), result_buckets=(60.0, 3600.0))
    done = ran(1, "completed", T0 + 100, T0 + 400, submit_time=T0)
    failed = ran(2, "failed", T0 + 100, T0 + 130, exit_code="1:0")
    never = job(3, "cancelled", end_time=T0 + 50)  # cancelled while pending
    for now in (T0 + 500, T0 + 530):
        led.apply_snapshot([done, failed, never], now)
        led.apply_finished([done, failed, never])
    led = restored(led, run_buckets=(60.0, 3600.0), result_buckets=(60.0, 3600.0))
    led.apply_snapshot([done, failed, never], T0 + 560)
    assert led.run[("debug", "completed")].cumulative() == [0, 1, 1]
    assert led.run[("debug", "completed")].total == 300
    assert led.run[("debug", "failed")].total == 30
    assert ("debug", "cancelled") not in led.run  # never ran
    assert led.time_to_result["debug"].count == 1 and led.time_to_result["debug"].total == 400


def test_requeues_once_from_restart_counts_and_jobcomp_runs() -> None:
    led = Ledger()
    led.apply_snapshot([job(5, "pending", restarts=1)], T0)
    led.apply_snapshot([job(5, "pending", restarts=1)], T0 + 30)
    assert led.requeues == {"debug": 1}
    # The log says the same: the preempted run, then the final one.
    led.apply_finished([ran(5, "preempted", T0 - 100, T0 - 10)])
    assert led.requeues == {"debug": 1}
    led = restored(led)
    led.apply_snapshot([ran(5, "running", T0 + 200, restarts=2)], T0 + 210)
    assert led.requeues == {"debug": 2}
    led.apply_finished([ran(5, "completed", T0 + 200, T0 + 300)])
    assert led.requeues == {"debug": 2}  # 3 runs, 2 requeues


def test_requeues_the_exporter_only_read_in_the_log() -> None:
    """Requeued and gone while the exporter was down: the jobcomp log's runs tell."""
    led = Ledger()
    led.apply_finished(
        [
            ran(6, "pending", T0, T0 + 5),  # `scontrol requeue` (the run's record)
            ran(6, "node_fail", T0 + 200, T0 + 210),  # requeued after a node failure
            ran(6, "completed", T0 + 400, T0 + 500),
            ran(7, "preempted", T0, T0 + 5),  # preempted, requeued, still pending
        ]
    )
    assert led.requeues == {"debug": 2}
    led.apply_snapshot([job(7, "pending", restarts=1)], T0 + 600)
    assert led.requeues == {"debug": 3}


def test_pending_seconds_by_reason() -> None:
    led = Ledger()
    waiting = job(1, "pending", reason="Licenses", submit_time=T0)
    held = job(
        2, "pending", reason="JobHeldUser", array_job_id=2, array_tasks="0-9", submit_time=T0
    )
    led.apply_snapshot([waiting, held], T0 + 100)  # the first snapshot counts nothing
    assert led.pending_seconds == {}
    led.apply_snapshot([waiting, held], T0 + 130)
    assert led.pending_seconds == {("debug", "Licenses"): 30, ("debug", "JobHeldUser"): 300}
    late = job(3, "pending", reason="Priority", submit_time=T0 + 150)
    led.apply_snapshot([waiting, held, late], T0 + 160)
    assert led.pending_seconds[("debug", "Priority")] == 10  # since its submission
    assert led.pending_seconds[("debug", "Licenses")] == 60
    # The licence waiter starts at T0 + 170: 10 s more, then nothing. From the first snapshot
    # to its start: 70 s.
    started = ran(1, "running", T0 + 170)
    led.apply_snapshot([started, held, late], T0 + 190)
    assert led.pending_seconds[("debug", "Licenses")] == 70
    led.apply_snapshot([started], T0 + 220)
    assert led.pending_seconds[("debug", "Licenses")] == 70
    assert led.pending_seconds[("debug", "JobHeldUser")] == 10 * 90


def test_pending_seconds_across_a_restart_neither_twice_nor_lost() -> None:
    led = Ledger()
    waiting = job(1, "pending", reason="Resources", submit_time=T0)
    led.apply_snapshot([waiting], T0 + 10)
    led.apply_snapshot([waiting], T0 + 40)
    led = restored(led)
    led.apply_snapshot([waiting], T0 + 40)  # the same moment again: nothing
    assert led.pending_seconds == {("debug", "Resources"): 30}
    led.apply_snapshot([waiting], T0 + 340)  # down for 5 minutes: the job waited them
    assert led.pending_seconds == {("debug", "Resources"): 330}
    led.apply_snapshot([waiting], T0 + 300)  # the clock stepped back: nothing
    assert led.pending_seconds == {("debug", "Resources"): 330}


def test_recent_failures_bounded_by_count_and_age() -> None:
    led = Ledger(failed_max=2, failed_max_age=600)
    jobs = [
        ran(i, "failed", T0, T0 + i * 10, exit_code=f"{i}:0", user="u", account="a")
        for i in range(1, 5)
    ]
    led.apply_finished(jobs)
    assert [f.job_id for f in led.failed] == [4, 3]  # the latest two
    view = led.view()
    assert [f.job_id for f in view.recent_failures(T0 + 100)] == [4, 3]
    assert [f.job_id for f in view.recent_failures(T0 + 635)] == [4]
    assert view.recent_failures(T0 + 700) == []
    led = restored(led, failed_max=2, failed_max_age=600)
    assert [f.job_id for f in led.failed] == [4, 3]
    led.apply_snapshot([], T0 + 700)
    assert led.failed == []
    # Not listed: completed, cancelled, preempted.
    led.apply_finished([ran(9, s, T0, T0 + 800) for s in ("completed", "cancelled", "preempted")])
    assert led.failed == []


def test_failed_entry_takes_slurmctlds_exit_code() -> None:
    """22.05's jobcomp log writes NODE_FAIL jobs as 0:0; slurmctld's record is what counts."""
    led = Ledger()
    logged = ran(3, "node_fail", T0, T0 + 10, exit_code="0:0", nodes="n[1-4]")
    led.apply_finished([logged])
    led.apply_snapshot([logged._replace(exit_code="0:9")], T0 + 20)
    (entry,) = led.failed
    assert (entry.exit_code, entry.nodes) == ("0:9", "n[1-4]")


def test_accounts_top_k_and_other() -> None:
    led = Ledger(max_accounts=2)
    now = T0 + 10_000

    def finish(job_id: int, account: str, seconds: int) -> None:
        led.apply_finished([ran(job_id, "completed", T0, T0 + seconds, account=account, cpus=1)])

    finish(1, "a", 100)
    finish(2, "b", 50)
    finish(3, "c", 60)  # no place free, not 1.25 × b's 50: other
    view = led.view().account_seconds
    assert view[("a", "cpu", "completed")] == 100 and view[("b", "cpu", "completed")] == 50
    assert view[("other", "cpu", "completed")] == 60
    finish(4, "c", 10)  # c: 70 > 1.25 × 50: named from now on, b's later time goes to other
    finish(5, "b", 5)
    view = led.view().account_seconds
    assert {a for a, _, _ in view} == {"a", "c", "other"}
    assert view[("c", "cpu", "completed")] == 10
    assert view[("other", "cpu", "completed")] == 65
    led2 = restored(led, max_accounts=2)
    assert led2.view().account_seconds == view
    assert restored(led, max_accounts=1).accounts.named == {"a"}  # the most used
    led3 = Ledger()
    led3.apply_finished([ran(1, "completed", T0, T0 + 10)])
    assert set(led3.view().account_seconds) == {
        ("none", "cpu", "completed"),
        ("none", "gpu", "completed"),
    }
    assert now  # (times are only relative here)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=3),
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=1000)),
        max_size=60,
    ),
)
def test_fuzz_accounts_series_only_grow_and_add_up(limit: int, events: list[Any]) -> None:
    """Each event adds its resource-time to exactly one shown series (the account's, or
    other's); a series shown never goes down; an account losing its name takes its series
    out of the sum (and brings it back, where it was, if named again), which is why totals
    are increase() over the series, not their sum."""
    accounts = Accounts(limit)
    accounts.cap = 5  # small, so that forgetting happens too
    before: dict[tuple[str, str, str], float] = {}
    last_shown: dict[tuple[str, str, str], float] = {}
    for account, seconds in events:
        accounts.add(account, "completed", (("cpu", float(seconds)), ("gpu", 0.0)))
        after = accounts.view()
        assert len({a for a, _, _ in after} - {"other"}) <= limit
        assert len(accounts.usage) <= accounts.cap
        dropped = sum(v for k, v in before.items() if k not in after)
        # A series shown again (its account named again) goes on from where it was.
        back = sum(last_shown.get(k, 0.0) for k in after if k not in before)
        expected = sum(before.values()) - dropped + back + seconds
        assert sum(after.values()) == pytest.approx(expected)
        for key, value in after.items():
            assert value >= last_shown.get(key, 0.0), key
            last_shown[key] = value
        # A forgotten account starts afresh should it be named again (a counter reset).
        for key in [k for k in last_shown if k[0] not in accounts.usage and k[0] != "other"]:
            del last_shown[key]
        before = after


def test_accounts_beyond_the_tracking_cap() -> None:
    accounts = Accounts(2)
    for i in range(5000):
        accounts.add(f"acct{i}", "completed", (("cpu", float(i % 7 + 1)), ("gpu", 0.0)))
    assert len(accounts.usage) <= accounts.cap == 1000
    assert len(accounts.named) == 2 and {a for a, _, _ in accounts.view()} - accounts.named == {
        "other"
    }


def test_state_of_format_1_loads_with_new_counters_at_zero() -> None:
    led = Ledger()
    led.apply_snapshot([ran(1, "completed", T0, T0 + 10)], T0 + 20)
    state = led.to_state()
    old = {
        k: state[k] for k in ("hwm", "bounds", "finished", "resource_seconds", "exceeded", "waits")
    }
    old["format"] = 1
    old["keys"] = {k: state["keys"][k] for k in ("finished", "started", "exceeded")}
    again = Ledger()
    again.load_state(old)
    assert again.finished == led.finished and again.run == {} and again.failed == []
    again.apply_snapshot([ran(1, "completed", T0, T0 + 10)], T0 + 30)
    assert again.finished == led.finished  # keys kept: not counted again


@pytest.mark.parametrize(
    "change",
    [
        {"pending_seconds": [["debug"]]},
        {"failed": [[1, "u"]]},
        {"accounts": {"named": []}},
        {"run": [["debug", "completed", "x", 1.0]]},
    ],
)
def test_malformed_new_sections_are_refused_in_plain_words(change: dict[str, Any]) -> None:
    led = Ledger(run_buckets=(60.0,))
    led.apply_snapshot([ran(1, "completed", T0, T0 + 10)], T0 + 20)
    state = {**led.to_state(), **change}
    again = Ledger(run_buckets=(60.0,))
    with pytest.raises(ValueError, match="job ledger"):
        again.load_state(state)
    assert again.finished == {}


# -- the collector: hostile input exported safely ----------------------------------------------------


def exposition(cluster: ClusterSpec, now: int, log_url: str = "") -> str:
    from hpcobs.exporters.slurm.collector import make_ledger
    from hpcobs.exporters.slurm.options import SlurmOptions
    from hpcobs.exporters.slurm.portable import PortableBackend

    poller = Poller(
        PortableBackend(runner=FakeCommands(cluster)),
        make_ledger(SlurmOptions()),
        clock=lambda: float(now),
    )
    for _ in range(3):
        assert poller.run_cycle()

    class _Reg:
        def collect(self) -> list[Metric]:
            return list(families(poller.published, now, 90.0, log_url))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reg())
    return generate_latest(registry).decode()


def hostile() -> ClusterSpec:
    odd = ODD + "\\ back\\slash"
    return ClusterSpec(
        jobs=[
            JobSpec(
                1,
                "FAILED",
                submit=T0 - 100,
                eligible=T0 - 100,
                start=T0 - 60,
                end=T0 - 30,
                nodes="node[001-100,200-300],gpu[1-9]," + ",".join(f"x{i}" for i in range(40)),
                user=odd,
                account=odd,
                exit_status=768,
            ),
            JobSpec(2, "PENDING", reason="Licenses", submit=T0 - 10, licenses=["matlab:1"]),
        ],
        nodes=[NodeSpec("node001", ["debug"], "IDLE+MAINT")],
        reservations=[ReservationSpec(odd, T0 - 5, T0 + 600, "node[001-002]", "", ["MAINT"])],
    )


def test_hostile_names_are_exported_safely_and_promtool_clean(tmp_path: Path) -> None:
    text = exposition(hostile(), T0, "https://logs.example/search?job={job_id}&user={user}")
    lines = text.splitlines()
    failed = [line for line in lines if line.startswith("hpcobs_slurm_job_failed_info{")]
    assert len(failed) == 1
    user = label_value(ODD + "\\ back\\slash")
    assert user.endswith("...") and len(user) == MAX_LABEL_CHARS
    escaped = user.replace("\\", "\\\\").replace('"', '\\"')
    assert f'user="{escaped}"' in failed[0] and f'account="{escaped}"' in failed[0]
    assert 'nodes="node[001-100,200-300],gpu[1-9],x0,' in failed[0]
    nodes = failed[0].split('nodes="', 1)[1].split('"', 1)[0]
    assert len(nodes) == MAX_LABEL_CHARS and nodes.endswith("...")
    assert 'job_id="1"' in failed[0] and 'exit_code="3:0"' in failed[0]
    assert 'log_url="https://logs.example/search?job=1&user=q%22uo%27te%20%C3%BC%20' in failed[0]
    assert any(
        line.startswith("hpcobs_slurm_reservation_info{") and escaped in line for line in lines
    )
    assert 'hpcobs_slurm_node_maintenance{node="node001"} 1.0' in lines
    assert 'hpcobs_slurm_node_maintenance{node="node002"} 1.0' in lines
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian package prometheus)"
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_log_link_quotes_every_value() -> None:
    from hpcobs.exporters.slurm.ledger import FailedJob

    job_ = FailedJob(42, "a b", "c&d", "p/q", "failed", "1:0", "n1", T0, T0 + 5)
    url = log_link("https://x/{job_id}?u={user}&a={account}&p={partition}&t={start}-{end}", job_)
    assert url == f"https://x/42?u=a%20b&a=c%26d&p=p%2Fq&t={T0}-{T0 + 5}"


def test_maintenance_follows_the_window_at_scrape_time() -> None:
    cluster = ClusterSpec(
        nodes=[NodeSpec("n1", ["debug"], "IDLE"), NodeSpec("n2", ["debug"], "IDLE")],
        reservations=[
            ReservationSpec("m", T0 + 60, T0 + 120, "n[1-2]", "", ["MAINT", "IGNORE_JOBS"]),
            ReservationSpec("not-maint", T0, T0 + 600, "n1", "", ["IGNORE_JOBS"]),
        ],
    )
    from hpcobs.exporters.slurm.collector import make_ledger
    from hpcobs.exporters.slurm.options import SlurmOptions
    from hpcobs.exporters.slurm.portable import PortableBackend

    poller = Poller(
        PortableBackend(runner=FakeCommands(cluster)),
        make_ledger(SlurmOptions()),
        clock=lambda: float(T0),
    )
    assert poller.run_cycle()  # scheduler statistics
    assert poller.run_cycle()  # reservations

    def maintenance(now: float) -> set[str]:
        return {
            s.labels["node"]
            for family in families(poller.published, now, 1e9)
            for s in family.samples
            if s.name == "hpcobs_slurm_node_maintenance"
        }

    assert maintenance(T0 + 59) == set()
    assert maintenance(T0 + 60) == {"n1", "n2"}
    assert maintenance(T0 + 119) == {"n1", "n2"}
    assert maintenance(T0 + 120) == set()
    info = {
        s.labels["reservation"]
        for family in families(poller.published, T0 + 130, 1e9)
        for s in family.samples
        if s.name == "hpcobs_slurm_reservation_info"
    }
    assert info == {"not-maint"}  # "m" has ended


def test_make_reservation_normalises() -> None:
    r = make_reservation(
        name=" r\n1 ",
        start_time=-5,
        end_time=10,
        nodes="(null)",
        partition="(null)",
        flags=["maint"],
    )
    assert (r.name, r.start_time, r.nodes, r.partition, r.flags) == ("r?1", 0, "", "", ("MAINT",))
