"""The Slurm model's normalisers (both backends name states and reasons with them), its
array task specifications and `make_job`: examples and properties."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcobs.exporters.slurm.model import (
    FINISHED_STATES,
    JOB_STATES,
    NODE_STATES,
    STARTED_STATES,
    array_task_count,
    array_task_ids,
    compress_ids,
    gpu_count,
    job_state,
    make_job,
    node_state,
    pending_reason,
    requested_licenses,
)

pytestmark = pytest.mark.unit

TEXT = st.text(alphabet=string.printable + "é|", max_size=400)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- normalisers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("IDLE", "idle"),
        ("idle+drain", "drain"),
        ("IDLE+DRAIN", "drain"),
        ("MIXED+DRAIN", "draining"),
        ("allocated+drain", "draining"),
        ("drained", "drain"),
        ("draining", "draining"),
        ("down*", "down"),
        ("DOWN+DRAIN+NOT_RESPONDING", "down"),
        ("IDLE+FAIL", "fail"),
        ("MIXED+MAINT", "maint"),
        ("IDLE+POWERED_DOWN", "powered_down"),
        ("IDLE+REBOOT_REQUESTED", "reboot"),
        ("ALLOCATED+COMPLETING", "completing"),
        ("mixed", "mixed"),
        ("IDLE+RESERVED", "reserved"),
        ("weird", "unknown"),
        ("", "unknown"),
    ],
)
def test_node_state(raw: str, expected: str) -> None:
    assert node_state(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Priority", "Priority"),
        ("None", "none"),
        ("ReqNodeNotAvail, UnavailableNodes:node[1-3]", "ReqNodeNotAvail"),
        (
            "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority "
            "partitions",
            "ReqNodeNotAvail",
        ),
        ("(QOSMaxJobsPerUserLimit)", "other"),
        ("Some free text from an admin", "other"),
    ],
)
def test_pending_reason(raw: str, expected: str) -> None:
    assert pending_reason(raw) == expected


def test_job_states() -> None:
    assert job_state("CANCELLED by 0") == "cancelled" and job_state("BOGUS") == "unknown"
    assert job_state(" node_fail ") == "node_fail"
    assert FINISHED_STATES <= JOB_STATES and STARTED_STATES <= JOB_STATES
    assert not FINISHED_STATES & STARTED_STATES


def test_resources_and_licenses() -> None:
    assert gpu_count({"gpu": 2, "gpu:a100": 2}) == 2
    assert gpu_count({"gpu:a100": 2, "gpu:v100": 1, "mps": 100}) == 3
    assert gpu_count({"gpu": -1}) == 0
    assert requested_licenses(["matlab:2", "ansys", "(null)", " fluent@db:4 ", "x:y"]) == (
        ("matlab", 2),
        ("ansys", 1),
        ("fluent@db", 4),
        ("x:y", 1),
    )


def test_array_task_specifications() -> None:
    assert array_task_ids("0-4:2,7,9-10") == [0, 2, 4, 7, 9, 10]
    assert array_task_ids("0x15") == [0, 2, 4]
    assert array_task_ids("1,3,5...") == [1, 3, 5]
    assert array_task_ids("[0-2%1]") == [0, 1, 2]
    assert array_task_count("0-999%10") == 1000 and array_task_count("junk") == 1
    assert compress_ids([5, 0, 1, 2, 9, 10]) == "0-2,5,9-10"
    for bad in ("", "3-1", "1-x", "0-4:0"):
        with pytest.raises(ValueError):
            array_task_ids(bad)


def _job(**kw: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "job_id": 7,
        "array_job_id": 5,
        "array_tasks": "",
        "partition": "debug",
        "state": "pending",
        "reason": "",
        "eligible_time": 0,
        "start_time": 0,
        "end_time": 0,
        "cpus": 1,
        "memory_bytes": 0,
        "gpus": 0,
        "licenses": (),
        "nodes": "",
    }
    return {**fields, **kw}


def test_make_job_normalises_what_every_source_reports() -> None:
    plain = make_job(**_job(nodes="(null)", partition="debug,batch "))  # type: ignore[arg-type]
    assert (plain.nodes, plain.partition, plain.array_job_id, plain.base_id) == ("", "debug", 7, 7)
    assert not plain.is_array and plain.task_ids() == [-1] and plain.task_count == 1
    rest = make_job(**_job(array_tasks=" 8-11%2"))  # type: ignore[arg-type]
    assert (rest.array_tasks, rest.task_count, rest.base_id) == ("8-11", 4, 5)
    assert rest.is_remainder and rest.task_ids() == [8, 9, 10, 11]
    task = make_job(**_job(array_tasks="3", nodes="n1", start_time=10))  # type: ignore[arg-type]
    assert task.is_array and not task.is_remainder and task.task_ids() == [3] and task.ran
    assert make_job(**_job(array_tasks="N/A")).array_tasks == ""  # type: ignore[arg-type]


# -- fuzzing: arbitrary input never raises (beyond ValueError where documented) ---------------


@FUZZ
@given(TEXT)
def test_fuzz_normalisers_are_bounded(text: str) -> None:
    assert node_state(text) in NODE_STATES
    assert job_state(text) in JOB_STATES | {"unknown"}
    reason = pending_reason(text)
    assert reason in ("none", "other") or (reason.isidentifier() and len(reason) <= 48)
    assert array_task_count(text) >= 1
    for name, count in requested_licenses(text.split(",")):
        assert name and count >= 0


@FUZZ
@given(st.text(alphabet="0123456789-,:%x[]abcdef.", max_size=30))
def test_fuzz_array_task_ids_only_value_error(spec: str) -> None:
    try:
        ids = array_task_ids(spec)
    except ValueError:
        return
    assert all(i >= 0 for i in ids)


@FUZZ
@given(st.sets(st.integers(min_value=0, max_value=5000), max_size=200))
def test_compress_ids_round_trip(ids: set[int]) -> None:
    text = compress_ids(ids)
    assert (set(array_task_ids(text)) if text else set()) == ids
