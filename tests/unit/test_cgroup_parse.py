"""The process → Slurm job parsers (exporters/parse/cgroup.py): examples and properties."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcobs.exporters.parse.cgroup import (
    job_from_cgroup_path,
    job_from_environ,
    job_from_stepd_cmdline,
    parse_job_mapping_file,
    parse_proc_cgroup,
    parse_proc_stat,
    slurm_job_from_cgroup,
)

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

V1 = """12:freezer:/slurm/uid_1000/job_2001/step_batch
11:memory:/slurm/uid_1000/job_2001/step_batch/task_0
4:cpu,cpuacct:/
1:name=systemd:/system.slice/slurmd.service
0::/system.slice/slurmd.service
"""
V2 = "0::/system.slice/slurmstepd.scope/job_1001/step_0/user/task_1\n"


def test_v2_unified_line() -> None:
    found = slurm_job_from_cgroup(V2)
    assert found is not None
    assert (found.job_id, found.step, found.uid, found.version) == ("1001", "0", None, 2)


def test_v1_lines_when_unified_names_no_job() -> None:
    found = slurm_job_from_cgroup(V1)
    assert found is not None
    assert (found.job_id, found.step, found.uid, found.version) == ("2001", "batch", "1000", 1)


def test_v1_multiple_slurmd_prefix() -> None:
    found = job_from_cgroup_path("/slurm_node7/uid_1001/job_2002/step_extern", version=1)
    assert found is not None and (found.job_id, found.step, found.uid) == ("2002", "extern", "1001")


def test_freezer_preferred_when_v1_lines_disagree() -> None:
    text = "11:memory:/slurm/uid_1/job_9/step_0\n12:freezer:/slurm/uid_1/job_8/step_0\n"
    found = slurm_job_from_cgroup(text)
    assert found is not None and found.job_id == "8"


def test_unified_wins_over_v1() -> None:
    text = "12:freezer:/slurm/uid_1/job_8/step_0\n0::/system.slice/slurmstepd.scope/job_7/step_0\n"
    found = slurm_job_from_cgroup(text)
    assert found is not None and (found.job_id, found.version) == ("7", 2)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/user.slice/user-1000.slice/session-3.scope",
        "/myjob_12/step_0",  # `job_` must start a path component
        "/job_12abc/step_0",
        "/job_/step_0",
        "/system.slice/job_-3",
        "/job_١٢",  # non-ASCII digits
    ],
)
def test_paths_without_a_job(path: str) -> None:
    assert job_from_cgroup_path(path) is None
    assert slurm_job_from_cgroup(f"0::{path}\n") is None


def test_path_may_contain_colons() -> None:
    entries = parse_proc_cgroup("0::/a:b/job_5/step_0\n")
    assert entries[0].path == "/a:b/job_5/step_0"
    found = slurm_job_from_cgroup("0::/a:b/job_5/step_0\n")
    assert found is not None and found.job_id == "5"


def test_malformed_lines_are_skipped() -> None:
    text = "garbage\nx:memory:/job_1\n3:memory:relative/job_2\n²:cpu:/job_3\n4:cpu:/job_4/step_0\n"
    entries = parse_proc_cgroup(text)
    assert [(e.hierarchy_id, e.path) for e in entries] == [(4, "/job_4/step_0")]


def test_proc_stat_with_parentheses_and_spaces_in_comm() -> None:
    text = "5203 (my (odd) prog) S 5202 5203 5203 0 -1 4194560 " + " ".join(["0"] * 12)
    text += " 200203 12345678 789 " + " ".join(["0"] * 28) + "\n"
    parsed = parse_proc_stat(text)
    assert parsed is not None
    assert (parsed.pid, parsed.comm, parsed.state, parsed.ppid, parsed.start_ticks) == (
        5203,
        "my (odd) prog",
        "S",
        5202,
        200203,
    )


@pytest.mark.parametrize("text", ["", "12", "12 (x) S", "x (y) S 1 " + "0 " * 30, "(a) " * 30])
def test_proc_stat_malformed(text: str) -> None:
    assert parse_proc_stat(text) is None


def test_stepd_titles() -> None:
    assert job_from_stepd_cmdline(b"slurmstepd: [1001.batch]\0\0\0") == "1001"
    assert job_from_stepd_cmdline(b"slurmstepd: [1001.extern]") == "1001"
    assert job_from_stepd_cmdline(b"slurmstepd: [77]") == "77"
    assert job_from_stepd_cmdline(b"slurmstepd\0-D\0") is None
    assert job_from_stepd_cmdline(b"/usr/sbin/slurmd\0") is None


def test_environ() -> None:
    env = b"PATH=/bin\0SLURM_JOB_ID=4242\0SLURM_JOBID=4242\0"
    assert job_from_environ(env) == "4242"
    assert job_from_environ(b"PATH=/bin\0SLURM_JOB_IDX=1\0") is None
    assert job_from_environ(b"SLURM_JOB_ID=abc\0") is None
    assert job_from_environ(b"") is None


def test_job_mapping_file() -> None:
    assert parse_job_mapping_file("1234\n1235\n\n1234\n") == ["1234", "1235"]
    assert parse_job_mapping_file("45916256 262563\n") == ["45916256"]  # jobstats: "<job> <uid>"
    assert parse_job_mapping_file("# comment\nnot-a-job\n") == []


# -- properties ------------------------------------------------------------------------------

segment = st.text(alphabet=string.ascii_letters + string.digits + "-._@", min_size=1, max_size=12)
job_ids = st.integers(min_value=1, max_value=10**12).map(str)
steps = st.sampled_from(["batch", "extern", "interactive", "0", "1", "12"])
controllers = st.sampled_from(
    ["memory", "freezer", "cpuset", "cpu,cpuacct", "devices", "pids", "name=systemd", "blkio"]
)


def _safe(seg: str) -> str:
    """A path segment that cannot itself be read as `job_<n>`."""
    return seg if not seg.startswith("job_") else f"x{seg}"


@FUZZ
@given(st.text())
def test_arbitrary_cgroup_text_never_raises(text: str) -> None:
    for entry in parse_proc_cgroup(text):
        assert entry.path.startswith("/") and entry.hierarchy_id >= 0
    found = slurm_job_from_cgroup(text)
    assert found is None or found.job_id.isdigit()


@FUZZ
@given(st.binary())
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    job_from_environ(data)
    job_from_stepd_cmdline(data)
    text = data.decode("utf-8", "replace")
    parse_proc_stat(text)
    parse_job_mapping_file(text)


@FUZZ
@given(
    prefix=st.lists(segment.map(_safe), max_size=4),
    job=job_ids,
    step=steps,
    suffix=st.lists(segment.map(_safe), max_size=3),
    unified_first=st.booleans(),
)
def test_v2_layout_round_trip(
    prefix: list[str], job: str, step: str, suffix: list[str], unified_first: bool
) -> None:
    path = "/" + "/".join([*prefix, f"job_{job}", f"step_{step}", *suffix])
    lines = ["1:name=systemd:/", f"0::{path}"]
    text = "\n".join(lines if not unified_first else lines[::-1]) + "\n"
    found = slurm_job_from_cgroup(text)
    assert found is not None
    assert (found.job_id, found.step, found.version, found.path) == (job, step, 2, path)


@FUZZ
@given(
    uid=st.integers(min_value=0, max_value=2**32).map(str),
    job=job_ids,
    step=steps,
    job_controllers=st.lists(controllers, min_size=1, max_size=4, unique=True),
    other=st.lists(controllers, max_size=4, unique=True),
)
def test_v1_layout_round_trip(
    uid: str, job: str, step: str, job_controllers: list[str], other: list[str]
) -> None:
    lines = [
        f"{10 + i}:{c}:/slurm/uid_{uid}/job_{job}/step_{step}"
        for i, c in enumerate(job_controllers)
    ]
    lines += [f"{2 + i}:{c}:/system.slice/slurmd.service" for i, c in enumerate(other)]
    lines.append("0::/system.slice/slurmd.service")
    found = slurm_job_from_cgroup("\n".join(lines) + "\n")
    assert found is not None
    assert (found.job_id, found.step, found.uid, found.version) == (job, step, uid, 1)


@FUZZ
@given(
    pid=st.integers(min_value=1, max_value=2**22),
    ppid=st.integers(min_value=0, max_value=2**22),
    start=st.integers(min_value=0, max_value=2**63),
    comm=st.text(alphabet=st.characters(blacklist_characters="\n\0"), max_size=16),
    state=st.sampled_from(list("RSDZTtXI")),
)
def test_proc_stat_round_trip(pid: int, ppid: int, start: int, comm: str, state: str) -> None:
    fields = [str(pid), f"({comm})", state, str(ppid), *(["0"] * 17), str(start), *(["0"] * 30)]
    parsed = parse_proc_stat(" ".join(fields) + "\n")
    assert parsed is not None
    assert (parsed.pid, parsed.comm, parsed.state, parsed.ppid, parsed.start_ticks) == (
        pid,
        comm,
        state,
        ppid,
        start,
    )


@FUZZ
@given(
    before=st.dictionaries(
        st.text(alphabet=string.ascii_uppercase + "_", min_size=1, max_size=10).filter(
            lambda k: k != "SLURM_JOB_ID"
        ),
        st.text(alphabet=string.printable.replace("\0", ""), max_size=20),
        max_size=5,
    ),
    job=job_ids,
)
def test_environ_round_trip(before: dict[str, str], job: str) -> None:
    items = [f"{k}={v}".encode() for k, v in before.items()] + [f"SLURM_JOB_ID={job}".encode()]
    assert job_from_environ(b"\0".join(items) + b"\0") == job


@FUZZ
@given(
    st.lists(job_ids, max_size=8), st.lists(st.sampled_from(["", "#x", "  ", "abc"]), max_size=4)
)
def test_job_mapping_round_trip(jobs: list[str], noise: list[str]) -> None:
    text = "\n".join(noise + jobs) + "\n"
    assert parse_job_mapping_file(text) == list(dict.fromkeys(jobs))
