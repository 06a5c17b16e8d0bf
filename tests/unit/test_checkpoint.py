"""hpcobs-checkpoint (exporters/checkpoint.py): the totals model, the parsers, the command's exit
codes and signals, unreachable outputs, atomic and concurrent writes, the context manager."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.exporters.checkpoint import checkpoint, measure, metrics, model, outputs

from harness.servers import find_binary, free_port

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI = [sys.executable, "-m", "hpcobs.exporters.checkpoint"]


# -- helpers ---------------------------------------------------------------------------------
def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCOBS_"))}
    out.update(extra)
    return out


def cli(
    *args: str, job: str = "77", timeout: float = 60, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env(SLURM_JOB_ID=job),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[call-overload]
    )


def samples(path: Path) -> dict[tuple[str, str], float]:
    """(sample name, result label) → value of a written .prom file."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, s.labels.get("result", ""))] = float(s.value)
    return out


def totals_of(path: Path) -> tuple[float, float]:
    got = samples(path)
    return got[("hpcobs_checkpoints_total", "success")], got[
        ("hpcobs_checkpoints_total", "failure")
    ]


def fs_type(path: Path) -> str:
    """The file system type holding `path` (longest mount point prefix of /proc/self/mounts)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind


def promtool_check(path: Path) -> None:
    proc = subprocess.run(
        [find_binary("promtool"), "check", "metrics"],
        input=path.read_bytes(),
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the model -------------------------------------------------------------------------------
def test_first_checkpoint_counts_the_run_from_the_job_start() -> None:
    attempt = model.Attempt(start=1000.0, duration=30.0, ok=True, written_bytes=10)
    totals = model.advance(None, None, attempt, job_start=400.0)
    assert totals == model.Totals(1, 0, 30.0, 630.0, 1030.0)
    # without a job start (or one after the attempt's start), the run starts with the attempt
    assert model.advance(None, None, attempt, None).run_seconds == 30.0
    assert model.advance(None, None, attempt, 2000.0).run_seconds == 30.0


def test_later_checkpoints_add_the_cycle_since_the_previous_end() -> None:
    first = model.advance(None, None, model.Attempt(1000.0, 30.0, True, 0), job_start=1000.0)
    # next one starts 570 s after the first ended, takes 60 s and fails
    second = model.advance(first, 1030.0, model.Attempt(1600.0, 60.0, False, 0), job_start=1000.0)
    assert second.success == 1 and second.failure == 1
    assert second.seconds == 90.0
    assert second.run_seconds == 660.0  # 30 + (1660 - 1030)
    assert second.last_success == 1030.0  # a failure keeps the last success


def test_overlapping_attempts_count_once() -> None:
    """Two ranks checkpoint 1000..1010 at once: the second adds only what the first did not."""
    a = model.advance(None, None, model.Attempt(1000.0, 10.0, True, 0), job_start=900.0)
    b = model.advance(a, 1010.0, model.Attempt(1000.0, 10.2, True, 0), job_start=900.0)
    assert b.success == 2
    assert b.seconds == pytest.approx(10.2)
    assert b.run_seconds == pytest.approx(110.2)


attempts = st.builds(
    model.Attempt,
    start=st.floats(0, 2e9),
    duration=st.floats(0, 1e6),
    ok=st.booleans(),
    written_bytes=st.none() | st.integers(0, 2**62),
)


@FUZZ
@given(
    first=attempts,
    later=st.lists(st.tuples(st.floats(-1e5, 1e6), attempts), max_size=8),
    job_start=st.none() | st.floats(0, 2e9),
)
def test_totals_invariants(
    first: model.Attempt, later: list[tuple[float, model.Attempt]], job_start: float | None
) -> None:
    """Checkpoint time never exceeds run time, both only grow, every attempt is counted once."""
    totals = model.advance(None, None, first, job_start)
    for gap, attempt in later:
        previous = totals
        totals = model.advance(totals, first.end + gap, attempt, job_start)
        assert totals.seconds >= previous.seconds and totals.run_seconds >= previous.run_seconds
        grew = (totals.seconds - previous.seconds, totals.run_seconds - previous.run_seconds)
        assert grew[0] <= grew[1] + 1e-6 * max(1.0, grew[1])
    assert totals.success + totals.failure == 1 + len(later)
    assert totals.seconds <= totals.run_seconds * (1 + 1e-9) + 1e-6


@FUZZ
@given(
    totals=st.builds(
        model.Totals,
        success=st.integers(0, 2**40).map(float),
        failure=st.integers(0, 2**40).map(float),
        seconds=st.floats(0, 1e9),
        run_seconds=st.floats(0, 1e9),
        last_success=st.none() | st.floats(0, 2e9),
    ),
    attempt=attempts,
    job_id=st.from_regex(r"[0-9]{1,10}", fullmatch=True),
    name=st.from_regex(r"[A-Za-z0-9_.+-]{1,20}", fullmatch=True),
)
def test_exposition_round_trip(
    totals: model.Totals, attempt: model.Attempt, job_id: str, name: str
) -> None:
    """What a stream writes is what it reads back next time."""
    text = generate_latest(
        metrics.registry_of(metrics.families(job_id, name, totals, attempt))
    ).decode()
    assert metrics.parse_totals(text, job_id, name) == totals
    assert metrics.parse_totals(text, job_id + "0", name) is None  # another job's stream


@FUZZ
@given(st.text(max_size=400))
@example('hpcobs_checkpoints_total{job_id="1",name="a",result="success"} NaN\n')
@example('hpcobs_checkpoints_total{job_id="1",name="a",result="success"} -3\n')
@example('hpcobs_checkpoints_total{job_id="1",name="a",result="success"} 2\n}{"')
@example("# TYPE x counter\nx_total{")
def test_parse_totals_never_raises(text: str) -> None:
    got = metrics.parse_totals(text, "1", "a")
    if got is not None:
        values = (got.success, got.failure, got.seconds, got.run_seconds)
        assert all(math.isfinite(v) and v >= 0 for v in values)


def test_parse_totals_ignores_bad_values() -> None:
    text = (
        'hpcobs_checkpoints_total{job_id="1",name="a",result="success"} NaN\n'
        'hpcobs_checkpoints_total{job_id="1",name="a",result="failure"} 2\n'
        'hpcobs_checkpoint_seconds_total{job_id="1",name="a"} -5\n'
    )
    assert metrics.parse_totals(text, "1", "a") == model.Totals(success=0, failure=2)


# -- /proc parsers -----------------------------------------------------------------------------
IO = "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 4096\ncancelled_write_bytes: 0\n"


def test_parse_io_write_bytes() -> None:
    assert measure.parse_io_write_bytes(IO) == 4096
    assert measure.parse_io_write_bytes("rchar: 1\n") is None
    assert measure.parse_io_write_bytes("write_bytes: -1\n") is None


STAT = "4242 (my (odd) comm) S 4200 4242 4242 0 -1 4194560 1 0 0 0 2 1 0 0 20 0 1 0 123456 1 2 3"


def test_parse_proc_stat_handles_parentheses_in_comm() -> None:
    assert measure.parse_proc_stat(STAT) == measure.ProcStat("my (odd) comm", 4200, 123456)
    assert measure.parse_proc_stat("4242 (x) S 1") is None
    assert measure.parse_proc_stat("no parentheses at all") is None


def test_parse_boot_time() -> None:
    assert measure.parse_boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n") == 1700000000.0
    assert measure.parse_boot_time("cpu 1 2 3\n") is None


@FUZZ
@given(st.text(max_size=300))
def test_proc_parsers_never_raise(text: str) -> None:
    measure.parse_io_write_bytes(text)
    measure.parse_proc_stat(text)
    measure.parse_boot_time(text)


def fake_proc(root: Path, tree: dict[int, tuple[str, int, int]]) -> Path:
    (root / "stat").parent.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    for pid, (comm, ppid, start) in tree.items():
        (root / str(pid)).mkdir()
        fields = ["S", str(ppid), *["0"] * 17, str(start), "0", "0"]
        (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    return root


def test_step_start_is_the_child_of_slurmstepd(tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(
        tmp_path,
        {
            1: ("systemd", 0, 0),
            100: ("slurmstepd", 1, 50 * ticks),
            200: ("bash", 100, 60 * ticks),  # the batch script: the job's start
            300: ("python", 200, 900 * ticks),
            400: ("hpcobs-checkpoi", 300, 1000 * ticks),
        },
    )
    assert measure.step_start_time(400, proc) == 1700000000 + 60
    # not in a job: the walk ends at pid 1
    outside = fake_proc(tmp_path / "o", {1: ("init", 0, 0), 5: ("sh", 1, 9), 6: ("x", 5, 10)})
    assert measure.step_start_time(6, outside) is None
    assert measure.step_start_time(12345, outside) is None  # vanished


def test_job_start_prefers_slurms_own_variable(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {1: ("init", 0, 0)})
    assert measure.job_start_time({"SLURM_JOB_START_TIME": "1700000123"}, 1, proc) == 1700000123.0
    assert measure.job_start_time({}, 1, proc) is None


def test_path_bytes_of_a_file_a_tree_and_nothing(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"x" * 1000)
    (tmp_path / "d" / "sub" / "b").write_bytes(b"y" * 24)
    (tmp_path / "d" / "link").symlink_to(tmp_path / "d" / "a")  # not counted twice
    assert measure.path_bytes(tmp_path / "d") == 1024
    assert measure.path_bytes(tmp_path / "d" / "a") == 1000
    assert measure.path_bytes(tmp_path / "missing") == 0


def test_names_are_made_safe_for_files_and_urls() -> None:
    assert outputs.safe_label("model/opt state", "x") == "model_opt_state"
    assert outputs.safe_label("", "x") == "x"
    assert outputs.safe_label("..", "x") == "x"
    assert len(outputs.safe_label("a" * 500, "x")) == outputs.MAX_NAME


def test_options_from_the_environment(tmp_path: Path) -> None:
    base = {"SLURM_JOB_ID": "9", "SLURMD_NODENAME": "gpu007", "SLURM_CLUSTER_NAME": "alpha"}
    o = outputs.make_options("m", environ={**base, outputs.ENV_TEXTFILE_DIR: str(tmp_path)})
    assert o.output == outputs.Textfile(tmp_path) and o.job_id == "9" and o.name == "m"
    o = outputs.make_options("m", environ={**base, outputs.ENV_PUSHGATEWAY_URL: "http://pg:9091"})
    assert isinstance(o.output, outputs.Pushgateway)
    assert o.grouping_key() == {"job_id": "9", "name": "m", "node": "gpu007", "cluster": "alpha"}
    # an argument wins over the environment
    o = outputs.make_options(
        "m", textfile_directory=tmp_path, environ={**base, outputs.ENV_PUSHGATEWAY_URL: "http://pg"}
    )
    assert o.output == outputs.Textfile(tmp_path)
    assert outputs.make_options(environ={}).output == outputs.Textfile(
        Path(outputs.DEFAULT_TEXTFILE_DIR)
    )
    assert outputs.make_options(environ={}).job_id == outputs.NO_JOB


# -- the command -------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exit_code_is_the_commands_and_the_result_follows_it(tmp_path: Path, code: int) -> None:
    proc = cli("run", "--textfile.directory", str(tmp_path), "--", "sh", "-c", f"exit {code}")
    assert proc.returncode == code, proc.stderr
    assert proc.stderr == ""
    path = tmp_path / "checkpoint-77-checkpoint.prom"
    assert totals_of(path) == ((1.0, 0.0) if code == 0 else (0.0, 1.0))
    promtool_check(path)


def test_missing_or_unexecutable_command_exits_as_the_shell(tmp_path: Path) -> None:
    proc = cli("run", "--textfile.directory", str(tmp_path), "--", "no-such-command-xyz")
    assert proc.returncode == 127
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\n")
    proc = cli("run", "--textfile.directory", str(tmp_path), "--", str(script))
    assert proc.returncode == 126
    assert totals_of(tmp_path / "checkpoint-77-checkpoint.prom") == (0.0, 2.0)


def test_child_killed_by_a_signal_exits_128_plus_n(tmp_path: Path) -> None:
    proc = cli("run", "--textfile.directory", str(tmp_path), "--", "sh", "-c", "kill -KILL $$")
    assert proc.returncode == 128 + 9
    assert totals_of(tmp_path / "checkpoint-77-checkpoint.prom") == (0.0, 1.0)


CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
signal.signal(signal.SIGINT, lambda *a: sys.exit(8))
signal.signal(signal.SIGUSR1, lambda *a: sys.exit(9))
open(sys.argv[1], "w").close()
time.sleep(120)
"""


@pytest.mark.parametrize(("signum", "code"), [("SIGTERM", 7), ("SIGINT", 8), ("SIGUSR1", 9)])
def test_signals_reach_the_command(tmp_path: Path, signum: str, code: int) -> None:
    """Only the wrapper is signalled (not its group): the command sees it by forwarding."""
    ready = tmp_path / "ready"
    command = [sys.executable, "-c", CHILD, str(ready)]
    wrapper = subprocess.Popen(
        [*CLI, "run", "--textfile.directory", str(tmp_path), "--", *command],
        env=env(SLURM_JOB_ID="77"),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and wrapper.poll() is None, "child did not start"
            time.sleep(0.02)
        started = time.monotonic()
        os.kill(wrapper.pid, getattr(signal, signum))
        try:
            _, stderr = wrapper.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            wrapper.kill()
            _, stderr = wrapper.communicate()
            pytest.fail(f"the command did not stop on {signum}: {stderr}")
        assert wrapper.returncode == code, stderr
        assert time.monotonic() - started < 60  # the child exited on the signal, not on sleep
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    assert totals_of(tmp_path / "checkpoint-77-checkpoint.prom") == (0.0, 1.0)


def test_a_signal_while_recording_keeps_the_commands_status(tmp_path: Path) -> None:
    """CMD has exited; SIGTERM comes while the wrapper waits for the directory lock."""
    import fcntl

    ready = tmp_path / "ready"
    fd = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        command = ["sh", "-c", f"touch {ready}; exit 3"]
        wrapper = subprocess.Popen(
            [
                *CLI,
                "run",
                "--textfile.directory",
                str(tmp_path),
                "--lock.timeout",
                "30",
                "--",
                *command,
            ],
            env=env(SLURM_JOB_ID="77"),
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "child did not start"
            time.sleep(0.02)
        time.sleep(0.5)  # the child has exited; the wrapper waits for the lock
        wrapper.terminate()
        time.sleep(0.2)
    finally:
        os.close(fd)  # the recording goes on
    assert wrapper.wait(timeout=30) == 3
    assert totals_of(tmp_path / "checkpoint-77-checkpoint.prom") == (0.0, 1.0)


def test_sigterm_to_a_command_without_handler_exits_143(tmp_path: Path) -> None:
    wrapper = subprocess.Popen(
        [*CLI, "run", "--textfile.directory", str(tmp_path), "--", "sleep", "60"],
        env=env(SLURM_JOB_ID="77"),
        stdin=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # the interpreter starts and spawns sleep (a signal before is kept for it)
    wrapper.terminate()
    assert wrapper.wait(timeout=30) == 143
    assert totals_of(tmp_path / "checkpoint-77-checkpoint.prom") == (0.0, 1.0)


def test_totals_accumulate_across_invocations(tmp_path: Path) -> None:
    for code in (0, 0, 1, 0):
        cli("run", "--name", "model", "--textfile.directory", str(tmp_path), "--", "sh", "-c",
            f"sleep 0.05; exit {code}")  # fmt: skip
    path = tmp_path / "checkpoint-77-model.prom"
    assert totals_of(path) == (3.0, 1.0)
    got = samples(path)
    seconds = got[("hpcobs_checkpoint_seconds_total", "")]
    run = got[("hpcobs_checkpoint_run_seconds_total", "")]
    assert 4 * 0.05 <= seconds <= run
    # another job, another name: other streams, other files
    cli("run", "--name", "model", "--textfile.directory", str(tmp_path), "--", "true", job="78")
    cli("run", "--name", "optim", "--textfile.directory", str(tmp_path), "--", "true")
    assert totals_of(tmp_path / "checkpoint-78-model.prom") == (1.0, 0.0)
    assert totals_of(tmp_path / "checkpoint-77-optim.prom") == (1.0, 0.0)
    assert totals_of(path) == (3.0, 1.0)


def test_concurrent_invocations_of_one_stream_lose_nothing(tmp_path: Path) -> None:
    """Eight ranks on a node checkpoint the same stream at once."""
    procs = [
        subprocess.Popen(
            [*CLI, "run", "--textfile.directory", str(tmp_path), "--", "sleep", "0.2"],
            env=env(SLURM_JOB_ID="77"),
            stdin=subprocess.DEVNULL,
        )
        for _ in range(8)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0] * 8
    path = tmp_path / "checkpoint-77-checkpoint.prom"
    assert totals_of(path) == (8.0, 0.0)
    got = samples(path)
    # overlapping attempts count once: far less than 8 x 0.2 s of checkpoint time
    assert got[("hpcobs_checkpoint_seconds_total", "")] < 8 * 0.2
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_bytes_from_path_and_from_the_io_counters(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write = f"head -c 3000000 /dev/zero > {out}/ckpt.bin"
    proc = cli("run", "--path", str(out), "--textfile.directory", str(tmp_path), "--",
               "sh", "-c", write)  # fmt: skip
    assert proc.returncode == 0
    assert samples(tmp_path / "checkpoint-77-checkpoint.prom")[
        ("hpcobs_checkpoint_bytes", "")
    ] == measure.path_bytes(out)
    proc = cli("run", "--name", "io", "--textfile.directory", str(tmp_path), "--",
               "sh", "-c", write.replace("ckpt.bin", "two.bin"))  # fmt: skip
    written = samples(tmp_path / "checkpoint-77-io.prom")[("hpcobs_checkpoint_bytes", "")]
    if fs_type(out) in ("tmpfs", "ramfs", "overlay"):
        assert written >= 0  # no storage layer under it: write_bytes may stay 0
    else:  # the grandchild's writes count: sh reaped head before it exited
        assert written >= 3_000_000


def test_no_output_reachable_warns_and_keeps_the_exit_code(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    port = free_port()  # nothing listens there
    for output in (
        ["--textfile.directory", str(tmp_path / "missing")],
        ["--textfile.directory", str(not_a_dir)],
        ["--pushgateway.url", f"http://127.0.0.1:{port}", "--state.directory", str(tmp_path / "s")],
        [
            "--pushgateway.url",
            "http://127.0.0.1:bad-port",
            "--state.directory",
            str(tmp_path / "t"),
        ],
    ):
        proc = cli("run", *output, "--", "sh", "-c", "exit 3")
        assert proc.returncode == 3, (output, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and "warning" in lines[0] and "not recorded" in lines[0], lines


def test_push_failure_keeps_the_totals_for_the_next_push(tmp_path: Path) -> None:
    state = tmp_path / "state"
    url = f"http://127.0.0.1:{free_port()}"
    for _ in range(2):
        cli("run", "--pushgateway.url", url, "--state.directory", str(state), "--", "true")
    assert totals_of(state / "checkpoint-77-checkpoint.prom") == (2.0, 0.0)


def test_bad_flags_still_run_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    proc = cli("run", "--no-such-flag", "--", "sh", "-c", f"touch {marker}; exit 5")
    assert proc.returncode == 5 and marker.exists()
    assert "without recording" in proc.stderr
    proc = cli("run", "--textfile.directory", "a", "--pushgateway.url", "b", "--", "true")
    assert proc.returncode == 0
    # nothing to run: a usage error
    assert cli("run", "--name", "x").returncode == 2
    assert cli("run", "--").returncode == 2


def test_unreadable_previous_file_starts_the_totals_again(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-77-checkpoint.prom"
    path.write_text("this is { not an exposition\n")
    proc = cli("run", "--textfile.directory", str(tmp_path), "--", "true")
    assert proc.returncode == 0 and "start again" in proc.stderr
    assert totals_of(path) == (1.0, 0.0)


def test_lock_timeout_records_anyway(tmp_path: Path) -> None:
    import fcntl

    fd = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        proc = cli("run", "--lock.timeout", "0.3", "--textfile.directory", str(tmp_path), "--",
                   "true")  # fmt: skip
        assert proc.returncode == 0 and "lock not free" in proc.stderr
        assert time.monotonic() - started < 15
    finally:
        os.close(fd)
    assert totals_of(tmp_path / "checkpoint-77-checkpoint.prom") == (1.0, 0.0)


# -- atomic writes -----------------------------------------------------------------------------
def test_readers_only_ever_see_whole_files(tmp_path: Path) -> None:
    options = outputs.make_options("a", textfile_directory=tmp_path, job_id="5", environ={})
    path = tmp_path / "checkpoint-5-a.prom"
    outputs.record(options, model.Attempt(time.time(), 0.1, True, 1))
    stop = threading.Event()
    seen: list[float] = []
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set():
            text = path.read_text()
            got = metrics.parse_totals(text, "5", "a")
            if got is None or not text.endswith("\n"):
                problems.append(text)
            else:
                seen.append(got.success)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            outputs.record(options, model.Attempt(time.time(), 0.001, True, 1))
    finally:
        stop.set()
        reader.join()
    assert not problems and seen == sorted(seen) and seen
    assert totals_of(path) == (201.0, 0.0)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# -- the context manager -----------------------------------------------------------------------
@pytest.fixture
def caplog_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="hpcobs.checkpoint")
    yield caplog


def test_context_manager_records_success_and_bytes(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    with checkpoint("cm", path=out, textfile_directory=tmp_path, job_id="11") as c:
        out.write_bytes(b"z" * 12345)
        time.sleep(0.05)
    assert c.recorded and c.attempt is not None and c.attempt.ok
    got = samples(tmp_path / "checkpoint-11-cm.prom")
    assert got[("hpcobs_checkpoints_total", "success")] == 1
    assert got[("hpcobs_checkpoint_bytes", "")] == 12345
    assert got[("hpcobs_checkpoint_duration_seconds", "")] >= 0.05
    promtool_check(tmp_path / "checkpoint-11-cm.prom")


def test_context_manager_io_counter_bytes(tmp_path: Path) -> None:
    with (
        checkpoint("io", textfile_directory=tmp_path, job_id="11") as c,
        open(tmp_path / "data", "wb") as f,
    ):
        f.write(b"q" * 2_000_000)
    assert c.attempt is not None and c.attempt.written_bytes is not None
    if fs_type(tmp_path) not in ("tmpfs", "ramfs", "overlay"):
        assert c.attempt.written_bytes >= 2_000_000


def test_context_manager_lets_the_bodys_exception_through(tmp_path: Path) -> None:
    error = RuntimeError("disk full")
    with (
        pytest.raises(RuntimeError) as raised,
        checkpoint("cm", textfile_directory=tmp_path, job_id="11"),
    ):
        raise error
    assert raised.value is error
    assert totals_of(tmp_path / "checkpoint-11-cm.prom") == (0.0, 1.0)


def test_context_manager_never_raises_from_the_recording(
    tmp_path: Path, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    with checkpoint("cm", textfile_directory=tmp_path / "missing", job_id="11") as c:
        value = 42
    assert value == 42 and not c.recorded
    with checkpoint(
        "cm", pushgateway_url="http://127.0.0.1:1", state_directory=tmp_path, job_id="11"
    ):
        pass
    with checkpoint("cm", textfile_directory=tmp_path, pushgateway_url="http://x", job_id="1"):
        pass
    messages = [r.getMessage() for r in caplog_warnings.records]
    assert len(messages) == 3, messages
    assert "not recorded" in messages[0] and "not recorded" in messages[1]
    assert "will not be recorded" in messages[2]


# -- the SLO example ---------------------------------------------------------------------------
def test_slo_example_is_the_one_tested_with_promtool(repo_root: Path) -> None:
    """slo/examples/checkpoint-time.yaml is the SLO that tests/golden/slo/checkpoint.test.yml
    exercises (through checkpoint.spec.yaml), over the metrics this module declares."""
    from hpcobs.slo.loader import load_specs
    from hpcobs.slo.rules import RuleOptions, render

    def rules(path: Path) -> str:
        loaded = load_specs([path])
        assert loaded.ok, [str(p) for p in loaded.problems.errors]
        return render(loaded.slos, RuleOptions(), ["spec"])

    example = rules(repo_root / "slo" / "examples" / "checkpoint-time.yaml")
    assert example == rules(repo_root / "tests" / "golden" / "slo" / "checkpoint.spec.yaml")
    text = (repo_root / "slo" / "examples" / "checkpoint-time.yaml").read_text()
    assert metrics.SECONDS.name in text and metrics.RUN_SECONDS.name in text
