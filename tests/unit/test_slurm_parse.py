"""Parsers of Slurm command output and jobcomp lines: real Slurm 22.05, 24.11 and 26.05
captures, and fuzzing.

The captures in tests/data/slurm/ come from the harness's private cluster (squeue/sinfo with
the exporter's own formats and SLURM_TIME_FORMAT=%s, sdiag, scontrol show licenses, the
jobcomp/filetxt log): Debian 12's 22.05.8, trixie's 24.11.5 and sid's 26.05.5 (the last two
by tests/data/slurm/capture.py, see the README there); `squeue-r-V.txt` is the same queue
printed by `squeue -r` (Slurm itself expanding every array into one line per task), the
independent truth for task counts.
"""

from __future__ import annotations

import string
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcobs.exporters.parse.slurm import (
    SINFO_FIELDS,
    SQUEUE_FIELDS,
    parse_gres,
    parse_jobcomp_line,
    parse_licenses,
    parse_memory,
    parse_sdiag,
    parse_sinfo,
    parse_squeue,
    parse_time,
    parse_tres,
)
from hpcobs.exporters.slurm.ledger import Ledger
from hpcobs.exporters.slurm.model import (
    JOB_STATES,
    NODE_STATES,
    Job,
    job_state,
    make_job,
    pending_reason,
    requested_licenses,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent.parent / "data" / "slurm"
MIB = 1024 * 1024


def read(name: str) -> str:
    return (DATA / name).read_text()


# -- squeue ---------------------------------------------------------------------------------


def test_squeue_capture_records() -> None:
    parsed = parse_squeue(read("squeue-22.05.txt"))
    assert parsed.bad_lines == 0
    jobs = {j.job_id: j for j in parsed.jobs}
    assert len(jobs) == 17
    held = jobs[5]  # sbatch -a 0-999 -H: one record standing for 1000 held tasks
    assert (held.state, held.task_count, held.is_remainder) == ("pending", 1000, True)
    assert pending_reason(held.reason) == "JobHeldUser" and held.eligible_time == 0
    throttled = jobs[15]  # -a 0-5%2, none started: the throttle is not a task
    assert throttled.task_count == 6 and throttled.array_tasks == "0-5"
    assert pending_reason(throttled.reason) == "ReqNodeNotAvail"
    task0 = jobs[11]  # task 0 of array 4, split off when it started
    assert (task0.array_job_id, task0.array_tasks, task0.task_ids()) == (4, "0", [0])
    assert task0.ran and task0.state == "cancelled"
    rest = jobs[4]  # the rest of array 4 (tasks 2-9), cancelled while pending
    assert (rest.state, rest.task_count, rest.ran, rest.nodes) == ("cancelled", 8, False, "")
    failed = jobs[2]
    assert failed.state == "failed" and failed.reason == "NonZeroExitCode"
    assert (failed.eligible_time, failed.start_time, failed.end_time) == (
        1795598990,
        1795599049,
        1795599050,
    )
    assert (failed.cpus, failed.memory_bytes, failed.gpus) == (1, 100 * MIB, 0)
    running = jobs[13]
    assert running.state == "running" and running.end_time == 0 and running.nodes == "node1"
    assert jobs[16].licenses == (("matlab", 5),) and jobs[13].licenses == ()
    assert jobs[10].partition == "debug"  # pending in debug,short: the first partition
    assert jobs[9].state == "timeout" and jobs[7].state == "pending"


@pytest.mark.parametrize(
    ("version", "debug_pending"),
    [
        ("22.05", 1003),  # jobs 7, 14, 10 and the 1000 held tasks
        ("24.11", 1001),  # job 18 and the 1000 held tasks
        ("26.05", 1002),  # jobs 11 (-c 64) and 18, and the 1000 held tasks
    ],
)
def test_squeue_task_counts_match_slurms_own_expansion(version: str, debug_pending: int) -> None:
    """Tasks per (partition, state) from the compact output equal `squeue -r`'s lines."""
    counts: Counter[tuple[str, str]] = Counter()
    parsed = parse_squeue(read(f"squeue-{version}.txt"))
    assert parsed.bad_lines == 0
    for job in parsed.jobs:
        counts[(job.partition, job.state)] += job.task_count
    truth: Counter[tuple[str, str]] = Counter()
    for line in read(f"squeue-r-{version}.txt").splitlines():
        fields = line.split("|")
        truth[(fields[3].split(",")[0], fields[4].lower())] += 1
    assert counts == truth
    assert truth[("debug", "pending")] == debug_pending


def test_squeue_free_text_reason_with_separator() -> None:
    line = "7|7|N/A|p|PENDING|2|N/A|N/A|1|cpu=1|(null)||held: a | b ||\n"
    (job,) = parse_squeue(line).jobs
    assert job.reason == "held: a | b |"


def test_squeue_bad_lines_are_counted_not_raised() -> None:
    good = read("squeue-22.05.txt").splitlines()[0]
    parsed = parse_squeue(f"garbage\n{good}\nx|y|z\n")
    assert len(parsed.jobs) == 1 and parsed.bad_lines == 2 and parsed.first_bad == "garbage"


# -- sinfo ----------------------------------------------------------------------------------


def test_sinfo_capture() -> None:
    parsed = parse_sinfo(read("sinfo-22.05.txt"))
    assert parsed.bad_lines == 0
    (node,) = parsed.nodes
    assert node.name == "node1" and node.partitions == ("ovs", "debug", "short")
    assert node.state == "draining" and node.raw_state == "allocated+drain"
    assert (node.cpus, node.cpus_allocated) == (2, 1)
    assert (node.memory_bytes, node.memory_allocated_bytes) == (2000 * MIB, 100 * MIB)
    assert node.reason == "disk replacement | ticket 42"


def test_sinfo_gres() -> None:
    text = (
        "gpu1|gpu|mixed|8/24/0/32|512000|8000|gpu:a100:4(S:0-1)|gpu:a100:3(IDX:0-2)|none|\n"
        "gpu2|gpu|idle|0/32/0/32|512000|0|gpu:2,gpu:v100:2|gpu:0,gpu:v100:0|none|\n"
        "cpu1|batch|down*|0/0/16/16|64000|0|(null)|(null)|Not responding|\n"
    )
    nodes = {n.name: n for n in parse_sinfo(text).nodes}
    assert (nodes["gpu1"].gpus, nodes["gpu1"].gpus_allocated) == (4, 3)
    assert nodes["gpu2"].gpus == 2  # the untyped entry is the total
    assert nodes["cpu1"].state == "down" and nodes["cpu1"].reason == "Not responding"


# -- sdiag, licenses --------------------------------------------------------------------------


def test_sdiag_capture() -> None:
    s = parse_sdiag(read("sdiag-22.05.txt"))
    assert (s.server_thread_count, s.agent_queue_size, s.dbd_agent_queue_size) == (3, 0, 0)
    assert (s.jobs_submitted, s.jobs_started, s.jobs_completed, s.jobs_canceled) == (
        1028,
        9,
        3,
        4,
    )
    assert (s.main_last_cycle_us, s.main_max_cycle_us, s.main_mean_cycle_us) == (68, 949, 189)
    assert (s.main_total_cycles, s.main_last_queue_length, s.main_mean_depth) == (13, 4, 3)
    assert (s.backfill_total_jobs, s.backfill_total_cycles) == (4, 2)
    assert (s.backfill_last_cycle_us, s.backfill_max_cycle_us, s.backfill_mean_cycle_us) == (
        138,
        2650,
        1394,
    )
    assert (s.backfill_last_depth, s.backfill_last_queue_length) == (3, 3)
    assert s.rpc_count["REQUEST_JOB_INFO"] == 5 and s.rpc_time_us["REQUEST_JOB_INFO"] == 1305
    assert len(s.rpc_count) == 13 and "root" not in s.rpc_count


def test_licenses_capture() -> None:
    lics = parse_licenses(read("licenses-22.05.txt"))
    assert [(x.name, x.total, x.used, x.free) for x in lics] == [
        ("ansys", 2, 0, 2),
        ("matlab", 5, 0, 5),
    ]


# -- jobcomp --------------------------------------------------------------------------------


def test_jobcomp_capture_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    from zoneinfo import ZoneInfo

    utc = ZoneInfo("UTC")
    jobs = [parse_jobcomp_line(line, utc) for line in read("jobcomp-22.05.log").splitlines()]
    assert all(j is not None for j in jobs)
    by_id = {j.job_id: j for j in jobs if j is not None}
    assert sorted(by_id) == [1, 2, 3, 4, 6, 7, 8, 9, 11, 12]
    assert by_id[7].state == "node_fail"  # its name holds "|" and spaces
    assert by_id[9].state == "timeout" and by_id[9].start_time == 1795599019
    assert by_id[9].end_time == 1795599049 and by_id[9].cpus == 1
    assert (by_id[11].array_job_id, by_id[11].array_tasks) == (4, "0")
    assert by_id[8].ran is False and by_id[8].nodes == ""  # cancelled while pending
    assert by_id[4].eligible_time == 0  # EligibleTime=unknown
    # The same events as squeue shows (same end times), so the two sources agree on keys.
    squeue = {j.job_id: j for j in parse_squeue(read("squeue-22.05.txt")).jobs}
    for job_id in (1, 2, 3, 4, 6, 8, 9, 11, 12):
        assert by_id[job_id].end_time == squeue[job_id].end_time, job_id
        assert by_id[job_id].ran == squeue[job_id].ran, job_id


def test_jobcomp_rejects_other_lines() -> None:
    assert parse_jobcomp_line("") is None
    assert parse_jobcomp_line("JobId=12 garbage") is None
    line = read("jobcomp-22.05.log").splitlines()[0]
    assert parse_jobcomp_line(line[:-40]) is None


# -- Slurm 24.11 and 26.05 (tests/data/slurm/capture.py; job ids by role as it prints them) ----

NEW_VERSIONS = ("24.11", "26.05")


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_squeue_capture_records_new_versions(version: str) -> None:
    parsed = parse_squeue(read(f"squeue-{version}.txt"))
    assert parsed.bad_lines == 0
    jobs = {j.job_id: j for j in parsed.jobs}
    assert len(jobs) == 18
    held = jobs[6]  # -a 0-999 -H
    assert (held.state, held.task_count, held.is_remainder, held.eligible_time) == (
        "pending",
        1000,
        True,
        0,
    )
    assert pending_reason(held.reason) == "JobHeldUser"
    rest = jobs[5]  # -a 0-9%2 cancelled with tasks 0 and 1 (jobs 12, 13) running
    assert (rest.state, rest.array_tasks, rest.task_count, rest.ran) == (
        "cancelled",
        "2-9",
        8,
        False,
    )
    assert [(jobs[i].array_job_id, jobs[i].task_ids(), jobs[i].ran) for i in (12, 13)] == [
        (5, [0], True),
        (5, [1], True),
    ]
    throttled = jobs[15]  # -a 0-5%2 on the drained node
    assert (throttled.task_count, throttled.array_tasks) == (6, "0-5")
    assert pending_reason(throttled.reason) == "ReqNodeNotAvail"
    for job_id, licenses in ((16, (("matlab", 5),)), (17, (("matlab", 1),))):
        assert jobs[job_id].licenses == licenses
        assert pending_reason(jobs[job_id].reason) == "ReqNodeNotAvail"
    assert jobs[7].licenses == (("matlab", 5),) and jobs[7].state == "cancelled"
    assert (jobs[8].state, jobs[8].ran) == ("cancelled", False)  # held, then cancelled
    assert (jobs[3].state, pending_reason(jobs[3].reason)) == ("pending", "BeginTime")  # requeued
    assert (jobs[10].state, jobs[10].ran, jobs[10].reason) == ("node_fail", True, "NodeDown")
    assert jobs[9].state == "timeout" and jobs[9].end_time > jobs[9].start_time > 0
    assert jobs[18].partition == "debug"  # pending in debug,short: the first partition
    running = jobs[14]
    assert (running.state, running.end_time, running.nodes, running.cpus) == (
        "running",
        0,
        "node1",
        1,
    )
    failed = jobs[1]
    assert (failed.state, failed.reason, failed.memory_bytes) == (
        "failed",
        "NonZeroExitCode",
        100 * MIB,
    )
    too_big = jobs[11]  # sbatch -c 64 on a 2-CPU node
    assert (too_big.cpus, too_big.nodes, too_big.ran) == (64, "", False)
    if version == "24.11":  # refused, recorded as FAILED
        assert (too_big.state, too_big.reason) == ("failed", "BadConstraints")
        assert too_big.start_time == too_big.end_time == too_big.eligible_time > 0
    else:  # queued, as 22.05 does
        assert (too_big.state, too_big.reason) == ("pending", "PartitionConfig")


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_sinfo_capture_new_versions(version: str) -> None:
    parsed = parse_sinfo(read(f"sinfo-{version}.txt"))
    assert parsed.bad_lines == 0
    (node,) = parsed.nodes
    assert node.partitions == ("ovs", "debug", "batch", "short")
    # One of two CPUs allocated, node drained: 22.05 printed allocated+drain.
    assert node.state == "draining" and node.raw_state == "mixed+drain"
    assert (node.cpus, node.cpus_allocated) == (2, 1)
    assert (node.memory_bytes, node.memory_allocated_bytes) == (23639 * MIB, 100 * MIB)
    assert node.reason == "disk replacement | ticket 42"


@pytest.mark.parametrize(
    ("version", "main", "backfill", "jobs"),
    [
        ("24.11", (48, 954, 170, 14, 3, 1), (0, 1, 72, 72, 72, 3, 3), (1029, 10, 3, 4, 0)),
        ("26.05", (49, 3018, 350, 13, 3, 1), (0, 1, 83, 83, 83, 3, 3), (1029, 10, 2, 4, 0)),
    ],
)
def test_sdiag_capture_new_versions(
    version: str,
    main: tuple[int, ...],
    backfill: tuple[int, ...],
    jobs: tuple[int, ...],
) -> None:
    text = read(f"sdiag-{version}.txt")
    # New blocks after the main and the backfill statistics; their lines are no statistic.
    assert "\nMain scheduler exit:\n" in text and "\nBackfill exit\n" in text
    s = parse_sdiag(text)
    assert (s.server_thread_count, s.agent_queue_size, s.dbd_agent_queue_size) == (1, 0, 0)
    assert (
        s.jobs_submitted,
        s.jobs_started,
        s.jobs_completed,
        s.jobs_canceled,
        s.jobs_failed,
    ) == jobs
    assert (
        s.main_last_cycle_us,
        s.main_max_cycle_us,
        s.main_mean_cycle_us,
        s.main_total_cycles,
        s.main_last_queue_length,
        s.main_mean_depth,
    ) == main
    assert (
        s.backfill_total_jobs,
        s.backfill_total_cycles,
        s.backfill_last_cycle_us,
        s.backfill_max_cycle_us,
        s.backfill_mean_cycle_us,
        s.backfill_last_depth,
        s.backfill_last_queue_length,
    ) == backfill
    assert s.rpc_count["REQUEST_SUBMIT_BATCH_JOB"] == 16
    assert len(s.rpc_count) == 14 and "root" not in s.rpc_count


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_licenses_capture_new_versions(version: str) -> None:
    lics = parse_licenses(read(f"licenses-{version}.txt"))
    assert [(x.name, x.total, x.used, x.free) for x in lics] == [
        ("ansys", 2, 0, 2),
        ("matlab", 5, 0, 5),
    ]


def _jobcomp(version: str) -> dict[int, Job]:
    from zoneinfo import ZoneInfo

    utc = ZoneInfo("UTC")  # captured on a UTC machine
    jobs = [parse_jobcomp_line(line, utc) for line in read(f"jobcomp-{version}.log").splitlines()]
    assert all(j is not None for j in jobs)
    return {j.job_id: j for j in jobs if j is not None}


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_jobcomp_capture_new_versions(version: str) -> None:
    by_id = _jobcomp(version)
    refused = version == "24.11"
    assert sorted(by_id) == [1, 2, 3, 4, 5, 7, 8, 9, 10, *([11] if refused else []), 12, 13]
    # NODE_FAIL lines end `DerivedExitCode=0:0 ExitCode=0:1` (22.05: ExitCode=0:0).
    for job_id in (3, 10):
        assert by_id[job_id].state == "node_fail" and by_id[job_id].ran
    assert "name with | pipe" in read(f"jobcomp-{version}.log")  # job 3's name
    assert (by_id[12].array_job_id, by_id[12].array_tasks) == (5, "0")
    assert (by_id[5].ran, by_id[5].nodes) == (False, "")  # the array's pending rest
    assert by_id[9].state == "timeout" and by_id[9].cpus == 1
    squeue = {j.job_id: j for j in parse_squeue(read(f"squeue-{version}.txt")).jobs}
    for job_id in (1, 2, 4, 7, 8, 9, 10, 12, 13, *([11] if refused else [])):
        assert by_id[job_id].end_time == squeue[job_id].end_time, job_id
        assert by_id[job_id].ran == squeue[job_id].ran, job_id
    if refused:  # the refused -c 64: ProcCnt=0, no nodes
        assert (by_id[11].state, by_id[11].ran, by_id[11].cpus) == ("failed", False, 0)


def test_refused_job_2411_counts_once_as_failed_user_without_resources() -> None:
    """24.11's refused `sbatch -c 64` is counted the way Slurm accounts it: one failed job,
    cause user (it asked for what the partition cannot give), no CPU-time, no queue wait,
    whichever source (squeue, then the jobcomp log) shows it."""
    squeue = parse_squeue(read("squeue-24.11.txt")).jobs
    led = Ledger(buckets=(10.0,), thresholds=(5.0,))
    led.apply_snapshot(squeue, now=max(j.end_time for j in squeue))
    led.apply_finished(_jobcomp("24.11").values())
    assert led.finished[("debug", "failed", "user")] == 2  # exit 3, and the refused job
    failed_cpu = led.resource_seconds[("debug", "failed", "cpu")]
    exit3 = next(j for j in squeue if j.job_id == 1)
    assert failed_cpu == exit3.end_time - exit3.start_time  # 1 CPU; nothing for the refused
    assert led.waits["debug"].count == 2  # jobs 1 and 2 started; the refused one never did
    assert ("debug", "5") not in led.exceeded


def test_small_values() -> None:
    assert parse_tres("cpu=4,mem=16G,node=1,billing=4,gres/gpu=2,gres/gpu:a100=2").gpus == 2
    assert parse_tres("cpu=4,gres/gpu:a100=2,gres/gpu:v100=1").gpus == 3
    assert parse_tres("cpu=4,mem=1.50G").memory_bytes == int(1.5 * 1024 * MIB)
    assert parse_memory("2048") == 2048 * MIB and parse_memory("x") == 0
    assert parse_gres("gpu:a100:4(S:0-1),gpu:v100:2(S:0)") == {"gpu:a100": 4, "gpu:v100": 2}
    assert parse_time("N/A") == 0 and parse_time("1795598990") == 1795598990


# -- fuzzing: arbitrary input never raises (beyond ValueError where documented) ---------------

TEXT = st.text(alphabet=string.printable + "é|", max_size=400)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _lines(fields: int) -> st.SearchStrategy[str]:
    cell = st.text(alphabet=string.ascii_letters + string.digits + "-_,[]%:=/()*+. ", max_size=12)
    row = st.lists(cell, min_size=fields - 2, max_size=fields + 2).map(lambda c: "|".join(c) + "|")
    return st.lists(row, max_size=8).map("\n".join)


@FUZZ
@given(st.one_of(TEXT, _lines(len(SQUEUE_FIELDS))))
def test_fuzz_squeue(text: str) -> None:
    parsed = parse_squeue(text)
    for job in parsed.jobs:
        assert job.task_count >= 1 and job.state in JOB_STATES | {"unknown"}


@FUZZ
@given(st.one_of(TEXT, _lines(len(SINFO_FIELDS))))
def test_fuzz_sinfo(text: str) -> None:
    for node in parse_sinfo(text).nodes:
        assert node.state in NODE_STATES


@FUZZ
@given(TEXT)
def test_fuzz_sdiag_licenses_jobcomp(text: str) -> None:
    parse_sdiag(text)
    parse_licenses(text)
    for line in [*text.splitlines(), "JobId=1 " + text]:
        parse_jobcomp_line(line)


@FUZZ
@given(TEXT)
def test_fuzz_value_parsers(text: str) -> None:
    parse_time(text)
    parse_tres(text)
    parse_gres(text)
    parse_memory(text)


def test_jobcomp_hostile_names_parse_in_linear_time() -> None:
    import time as _time

    line = read("jobcomp-22.05.log").splitlines()[0]
    evil = " JobState=COMPLETED Partition=x ReservationName= (0) GroupId=" * 400
    hostile = line.replace("Name=wrap", "Name=" + evil, 1).replace(
        "WorkDir=/tmp/hs", "WorkDir=/tmp/" + evil, 1
    )
    started = _time.perf_counter()
    job = parse_jobcomp_line(hostile)
    assert _time.perf_counter() - started < 0.5
    assert job is not None and job.job_id == 8 and job.state == "cancelled"


# -- the squeue fast path against the model's make_job -----------------------------------------

_SQUEUE_TIME = st.one_of(
    st.integers(min_value=1, max_value=4_000_000_000).map(str),
    st.sampled_from(["N/A", "NONE", "Unknown", "0"]),
)


@st.composite
def _squeue_row(draw: st.DrawFn) -> str:
    job_id = draw(st.integers(min_value=1, max_value=10**9))
    array_job_id, tasks = draw(
        st.one_of(
            st.just((job_id, "N/A")),
            st.tuples(
                st.integers(min_value=1, max_value=10**9),
                st.sampled_from(["0", "7", "1-3", "0-999%10", "2,4-6", "0x15", "1,3,5..."]),
            ),
        )
    )
    state = draw(
        st.sampled_from([*sorted(s.upper() for s in JOB_STATES), "CANCELLED by 0", "WEIRD"])
    )
    fields = [
        str(job_id),
        str(array_job_id),
        tasks,
        draw(st.sampled_from(["debug", "batch", "gpu,debug"])),
        state,
        draw(_SQUEUE_TIME),
        draw(_SQUEUE_TIME),
        draw(_SQUEUE_TIME),
        str(draw(st.integers(min_value=0, max_value=10**6))),
        draw(
            st.sampled_from(
                ["cpu=1,mem=100M,node=1,billing=1", "cpu=8,mem=16G,gres/gpu=2,gres/gpu:a100=2", ""]
            )
        ),
        draw(st.sampled_from(["(null)", "matlab:2", "matlab:4,ansys"])),
        draw(st.sampled_from(["", "(null)", "None assigned", "node[1-2]", "g1"])),
        draw(st.text(alphabet=string.ascii_letters + " |,:()", max_size=30)),
    ]
    return "|".join(fields) + "|"


@FUZZ
@given(st.lists(_squeue_row(), min_size=1, max_size=5))
def test_squeue_fast_path_builds_what_make_job_builds(rows: list[str]) -> None:
    """parse_squeue inlines make_job's rules for speed; on what squeue prints, the two agree."""
    parsed = parse_squeue("\n".join(rows))
    assert parsed.bad_lines == 0
    for row, job in zip(rows, parsed.jobs, strict=True):
        f = row[:-1].split("|", len(SQUEUE_FIELDS) - 1)
        resources = parse_tres(f[9])
        expected = make_job(
            job_id=int(f[0]),
            array_job_id=int(f[1]),
            array_tasks=f[2],
            partition=f[3],
            state=job_state(f[4]),
            reason=f[12],
            eligible_time=parse_time(f[5]),
            start_time=parse_time(f[6]),
            end_time=parse_time(f[7]),
            cpus=int(f[8]),
            memory_bytes=resources.memory_bytes,
            gpus=resources.gpus,
            licenses=() if f[10] == "(null)" else requested_licenses(f[10].split(",")),
            nodes=f[11],
        )
        assert job == expected
