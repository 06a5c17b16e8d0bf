"""The job ledger: each finished job, queue wait and threshold crossing counted exactly once."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcobs.exporters.slurm.ledger import Ledger
from hpcobs.exporters.slurm.model import Job, make_job

pytestmark = pytest.mark.unit

T0 = 1_800_000_000
H = 3600.0


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
    }
    fields.update(kw)
    return make_job(**fields)


def ran(job_id: int, state: str, start: int, end: int = 0, **kw: Any) -> Job:
    return job(job_id, state, start_time=start, end_time=end, nodes="node1", **kw)


def ledger(**kw: Any) -> Ledger:
    kw.setdefault("buckets", (10.0, 60.0, H))
    kw.setdefault("thresholds", (H, 4 * H))
    return Ledger(**kw)


def wait_count(led: Ledger, partition: str = "debug") -> int:
    hist = led.waits.get(partition)
    return 0 if hist is None else hist.count


def test_job_through_its_life_is_counted_once() -> None:
    led = ledger()
    led.apply_snapshot([job(1, "pending")], T0 + 5)
    led.apply_snapshot([ran(1, "running", T0 + 30)], T0 + 40)
    led.apply_snapshot([ran(1, "running", T0 + 30)], T0 + 70)
    done = ran(1, "completed", T0 + 30, T0 + 130)
    for now in (T0 + 140, T0 + 170, T0 + 200):
        led.apply_snapshot([done], now)
    assert led.finished == {("debug", "completed", "none"): 1}
    assert led.resource_seconds[("debug", "completed", "cpu")] == 2 * 100
    assert led.resource_seconds[("debug", "completed", "gpu")] == 0
    hist = led.waits["debug"]
    assert hist.count == 1 and hist.total == 30
    assert hist.cumulative() == [0, 1, 1, 1, 1]  # 30 s: above 10, within 60 (bounds 10..4h)
    assert led.exceeded == {}


def test_jobcomp_and_squeue_name_the_same_event() -> None:
    done = ran(7, "failed", T0 + 10, T0 + 50)
    a, b = ledger(), ledger()
    a.apply_finished([done])
    a.apply_snapshot([done], T0 + 60)
    b.apply_snapshot([done], T0 + 60)
    b.apply_finished([done])
    expected = {("debug", "failed", "user"): 1}
    assert a.finished == b.finished == expected
    assert wait_count(a) == wait_count(b) == 1


def test_log_time_off_by_a_dst_hour_is_the_same_event() -> None:
    led = ledger()
    led.apply_snapshot([ran(7, "completed", T0 + 10, T0 + 50)], T0 + 60)
    led.apply_finished([ran(7, "completed", T0 + 10 + 3600, T0 + 50 + 3600)])
    assert sum(led.finished.values()) == 1 and wait_count(led) == 1


def test_requeued_job_counts_each_run() -> None:
    led = ledger(causes={"node_fail": "system", "completed": "none"})
    led.apply_finished([ran(9, "node_fail", T0 + 10, T0 + 20)])  # logged before the requeue
    led.apply_snapshot([job(9, "pending", eligible_time=T0 + 140)], T0 + 30)
    led.apply_snapshot([ran(9, "completed", T0 + 150, T0 + 200, eligible_time=T0 + 140)], T0 + 210)
    assert led.finished == {
        ("debug", "node_fail", "system"): 1,
        ("debug", "completed", "none"): 1,
    }
    assert wait_count(led) == 2  # each start waited


def test_keys_are_pruned_after_two_absent_snapshots_only() -> None:
    led = ledger()
    done = ran(3, "completed", T0, T0 + 10)
    led.apply_snapshot([done], T0 + 20)
    led.apply_snapshot([], T0 + 30)  # absent once: still remembered
    led.apply_finished([done])
    assert sum(led.finished.values()) == 1
    led.apply_snapshot([], T0 + 40)  # absent twice: forgotten (slurmctld purged it)
    assert led.tracked_jobs() == 0


def test_incomplete_list_forgets_nothing() -> None:
    led = ledger()
    done = ran(3, "completed", T0, T0 + 10)
    led.apply_snapshot([done], T0 + 20)
    for now in (T0 + 30, T0 + 40, T0 + 50):
        led.apply_snapshot([], now, complete=False)  # its line could not be read
    led.apply_snapshot([done], T0 + 60)
    assert sum(led.finished.values()) == 1


def test_restart_neither_double_counts_nor_misses() -> None:
    before = ledger()
    a = ran(1, "completed", T0, T0 + 10)
    b = ran(2, "running", T0 + 5)
    before.apply_snapshot([a, b], T0 + 20)
    saved = json.loads(json.dumps(before.to_state()))
    after = ledger()
    after.load_state(saved)
    # Meanwhile job 2 finished and job 3 ran and finished; slurmctld shows all three.
    snapshot = [a, ran(2, "timeout", T0 + 5, T0 + 65), ran(3, "completed", T0 + 30, T0 + 40)]
    after.apply_snapshot(snapshot, T0 + 70)
    after.apply_snapshot(snapshot, T0 + 100)
    assert after.finished == {("debug", "completed", "none"): 2, ("debug", "timeout", "user"): 1}
    assert wait_count(after) == 3


def test_changed_buckets_restart_the_histogram_but_keep_the_keys() -> None:
    before = ledger()
    done = ran(1, "completed", T0 + 5, T0 + 10)
    before.apply_snapshot([done], T0 + 20)
    after = ledger(buckets=(5.0, 50.0))
    after.load_state(before.to_state())
    after.apply_snapshot([done], T0 + 30)
    assert after.waits == {} and sum(after.finished.values()) == 1


def test_malformed_state_is_rejected() -> None:
    with pytest.raises(ValueError):
        ledger().load_state({"format": 1, "finished": "nope"})
    with pytest.raises(ValueError):
        ledger().load_state({"format": 99})


def test_pending_array_crossing_thresholds_counts_each_task_once() -> None:
    led = ledger()
    rest = job(10, "pending", array_tasks="0-999", eligible_time=T0)
    led.apply_snapshot([rest], T0 + H - 1)
    assert led.exceeded == {}
    led.apply_snapshot([rest], T0 + H + 1)
    led.apply_snapshot([rest], T0 + H + 30)
    assert led.exceeded == {("debug", "3600"): 1000}
    # Task 5 starts (split off with its own job id) after waiting 1.5 h; the rest waits on.
    task = ran(1005, "running", int(T0 + 1.5 * H), array_job_id=10, array_tasks="5")
    rest2 = job(10, "pending", array_tasks="0-4,6-999", eligible_time=T0)
    led.apply_snapshot([rest2, task], T0 + 2 * H)
    assert led.exceeded == {("debug", "3600"): 1000}
    assert wait_count(led) == 1
    led.apply_snapshot([rest2, task], T0 + 4 * H + 5)
    assert led.exceeded == {("debug", "3600"): 1000, ("debug", "14400"): 999}


def test_threshold_crossed_between_two_cycles_is_counted_at_start() -> None:
    led = ledger()
    led.apply_snapshot([job(4, "pending")], T0 + H - 10)
    led.apply_snapshot([ran(4, "running", int(T0 + H + 5))], T0 + H + 20)
    assert led.exceeded == {("debug", "3600"): 1}


def test_job_cancelled_while_pending_past_a_threshold() -> None:
    led = ledger()
    gone = job(5, "cancelled", start_time=T0 + 2 * 3600, end_time=T0 + 2 * 3600)
    led.apply_snapshot([gone], T0 + 2 * H + 10)
    assert led.exceeded == {("debug", "3600"): 1}
    assert led.finished == {("debug", "cancelled", "user"): 1}
    assert wait_count(led) == 0  # it never started
    assert led.resource_seconds[("debug", "cancelled", "cpu")] == 0


def test_held_job_without_eligible_time_never_waits() -> None:
    led = ledger()
    led.apply_snapshot([job(6, "pending", array_tasks="0-9", eligible_time=0)], T0 + 10 * H)
    assert led.exceeded == {}


def test_cancelled_array_rest_is_one_record() -> None:
    led = ledger()
    rest = job(8, "cancelled", array_tasks="2-9", start_time=T0 + 5, end_time=T0 + 5)
    led.apply_snapshot([rest], T0 + 10)
    led.apply_finished([job(8, "cancelled", start_time=T0 + 5, end_time=T0 + 5)])
    assert led.finished == {("debug", "cancelled", "user"): 1}


def test_cause_mapping_is_configurable() -> None:
    led = ledger(causes={"preempted": "user", "timeout": "system"})
    led.apply_snapshot(
        [
            ran(1, "preempted", T0, T0 + 5),
            ran(2, "timeout", T0, T0 + 5),
            ran(3, "deadline", T0, T0 + 5),
        ],
        T0 + 10,
    )
    assert led.finished == {
        ("debug", "preempted", "user"): 1,
        ("debug", "timeout", "system"): 1,
        ("debug", "deadline", "unknown"): 1,
    }


def test_gpu_seconds() -> None:
    led = ledger()
    led.apply_snapshot([ran(1, "completed", T0, T0 + 100, gpus=4, cpus=8)], T0 + 110)
    assert led.resource_seconds[("debug", "completed", "gpu")] == 400
    assert led.resource_seconds[("debug", "completed", "cpu")] == 800


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 3), st.booleans()), min_size=1, max_size=6
    ),
    st.integers(0, 12),
    st.booleans(),
)
def test_any_timing_and_restart_counts_once(
    jobs: list[tuple[int, int, bool]], restart_at: int, use_log: bool
) -> None:
    """Simulate the poller: each cycle reads the log to its end, then takes a snapshot. Job i
    finishes at cycle f, stays visible for `age` cycles (MinJobAge; 0: purged before any
    snapshot saw it), and its log line is read in cycle f or, written just after that read,
    in cycle f+1. A restart (state saved and reloaded) may come at any cycle. Every job that
    any source showed is counted exactly once, its queue wait observed exactly once."""
    specs = [
        (ran(i + 1, "completed", T0 + f * 30 - 5, T0 + f * 30), f, age, late)
        for i, (f, age, late) in enumerate(jobs)
    ]
    led = ledger()
    shown: set[int] = set()
    for cycle in range(12):
        if cycle == restart_at:
            state = json.loads(json.dumps(led.to_state()))
            led = ledger()
            led.load_state(state)
        if use_log:
            logged = [j for j, f, _, late in specs if f + late == cycle]
            led.apply_finished(logged)
            shown |= {j.job_id for j in logged}
        visible = [j for j, f, age, _ in specs if f <= cycle < f + age]
        led.apply_snapshot(visible, T0 + cycle * 30 + 10)
        shown |= {j.job_id for j in visible}
    assert sum(led.finished.values()) == len(shown)
    assert wait_count(led) == len(shown)
