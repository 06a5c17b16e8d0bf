"""Flags, fault-injection hooks and the watchdog of the MPI probe (no MPI needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.exporters.probe import flags
from hpcobs.exporters.probe.measure import Hooks, buffer_bytes
from hpcobs.exporters.probe.model import DEFAULT_SIZES, OPS
from hpcobs.exporters.probe.watchdog import Watchdog, process_age_seconds

pytestmark = pytest.mark.unit


def test_defaults_follow_the_conventions() -> None:
    args = flags.parse([])
    assert args.budget_seconds == 10.0
    assert args.ops == OPS
    assert args.sizes == DEFAULT_SIZES
    assert args.sizes[0] == 8 and args.sizes[-1] == 4 << 20
    assert all(b == a * 4 for a, b in zip(args.sizes[:-2], args.sizes[1:-1], strict=True))
    assert not args.json and args.textfile_dir is None and args.pushgateway is None
    assert args.otlp_endpoint is None and args.baseline is None and args.write_baseline is None
    assert args.mpi_thread_level == "single"


def test_every_conventions_flag_is_accepted(tmp_path: Path) -> None:
    args = flags.parse(
        [
            "--budget-seconds", "3", "--timeout", "1m", "--sizes", "8,64KiB,4MiB",
            "--ops", "barrier,allreduce", "--textfile-dir", str(tmp_path),
            "--pushgateway", "http://pg:9091", "--otlp.endpoint", "http://otel:4318",
            "--json", "--baseline", "b.json", "--write-baseline", "c.json", "--tolerance", "0.5",
        ]
    )  # fmt: skip
    assert args.budget_seconds == 3.0 and args.timeout == 60.0
    assert args.sizes == (8, 64 << 10, 4 << 20)
    assert args.ops == ("allreduce", "barrier")  # canonical order
    assert args.tolerance == 0.5 and args.json


@pytest.mark.parametrize(
    "argv",
    [
        ["--sizes", "7"],
        ["--sizes", "0"],
        ["--sizes", "2GiB"],
        ["--sizes", "lots"],
        ["--ops", "allreduce,gather"],
        ["--budget-seconds", "10", "--timeout", "10"],
        ["--tolerance", "-1"],
        ["--iterations.min", "10", "--iterations.max", "5"],
        ["--push.grouping-key", "no-equals"],
    ],
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        flags.parse(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


@given(st.integers(min_value=1, max_value=1 << 27))
def test_sizes_parse_in_binary_units(n: int) -> None:
    size = n * 8
    assert flags.parse_size(str(size)) == size
    if size % 1024 == 0:
        assert flags.parse_size(f"{size // 1024}KiB") == size


def test_config_file_supplies_flags(tmp_path: Path) -> None:
    config = tmp_path / "probe.yml"
    config.write_text("budget-seconds: 4\nops: allreduce\ntextfile-dir: /tmp/x\n")
    args = flags.parse(["--config.file", str(config), "--budget-seconds", "5"])
    assert args.budget_seconds == 5.0  # flags win
    assert args.ops == ("allreduce",) and args.textfile_dir == "/tmp/x"


def test_hooks_from_environment() -> None:
    assert Hooks.from_env({}) == Hooks()
    hooks = Hooks.from_env(
        {"HPCOBS_PROBE_TEST_SLOW_RANK": "2", "HPCOBS_PROBE_TEST_SLOW_SECONDS": "0.01",
         "HPCOBS_PROBE_TEST_EXIT_RANK": "1", "HPCOBS_PROBE_TEST_STALL_RANK": "x"}
    )  # fmt: skip
    assert hooks == Hooks(slow_rank=2, slow_seconds=0.01, exit_rank=1, stall_rank=None)


def test_buffer_sizes() -> None:
    assert buffer_bytes("alltoall", 1024, 4) == 4096
    assert buffer_bytes("allgather", 1024, 4) == 4096
    assert buffer_bytes("allreduce", 1024, 4) == 1024


def test_watchdog_aborts_after_the_timeout_and_names_the_phase(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aborted = threading.Event()
    exits: list[int] = []
    dog = Watchdog(0.2, aborted.set, rank=3, exit=exits.append)
    dog.enter("pairwise round 1/3")
    started = time.monotonic()
    dog.start()
    assert aborted.wait(5)
    assert 0.15 <= time.monotonic() - started < 2
    for _ in range(100):
        if exits:
            break
        time.sleep(0.01)
    assert exits == [2] and dog.fired
    record = next(r for r in caplog.records if "watchdog" in r.getMessage())
    assert record.__dict__["phase"] == "pairwise round 1/3" and record.__dict__["rank"] == 3


def test_watchdog_counts_from_process_start_and_can_be_disarmed() -> None:
    aborted = threading.Event()
    dog = Watchdog(0.3, aborted.set, exit=lambda code: None).start()
    dog.disarm()
    assert not aborted.wait(0.6) and not dog.fired
    late = Watchdog(10.0, aborted.set, already_elapsed=9.95, exit=lambda code: None)
    assert late.remaining() <= 0.05
    assert process_age_seconds() > 0


def test_watchdog_backstop_exits_when_abort_hangs() -> None:
    exits: list[int] = []
    release = threading.Event()
    dog = Watchdog(
        0.05, lambda: release.wait(3) and None, backstop_seconds=0.1, exit=exits.append
    ).start()
    deadline = time.monotonic() + 2
    while not exits and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exits[:1] == [2]  # the backstop fired while the abort still hung
    release.set()
    assert dog.fired


def test_baseline_problems_name_the_file(tmp_path: Path) -> None:
    from hpcobs.exporters.probe.app import load_baseline

    with pytest.raises(ValueError, match=r"missing\.json"):
        load_baseline(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json: not JSON"):
        load_baseline(str(bad))
