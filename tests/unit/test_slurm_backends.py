"""The two backends give the same metrics for the same cluster state (one table-driven test).

Each case describes a cluster once (`ClusterSpec`); the portable backend reads it as the
Slurm 22.05 commands print it (rendered here in the formats of the real captures in
tests/data/slurm/), the pyslurm backend through the fake pyslurm module (pyslurm 25.11's
objects and conventions). Both run the same collection cycles; every metric must agree.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from hpcobs.exporters.parse.slurm import SINFO_FORMAT, SQUEUE_FORMAT
from hpcobs.exporters.slurm.backend import (
    Backend,
    DeferredBackend,
    SlurmCallError,
    select_backend,
    startup_backend,
    versions_match,
)
from hpcobs.exporters.slurm.collector import build_collector, families, make_ledger
from hpcobs.exporters.slurm.options import SlurmOptions
from hpcobs.exporters.slurm.poller import Poller
from hpcobs.exporters.slurm.portable import PortableBackend, command_env
from hpcobs.exporters.slurm.pyslurm_backend import PyslurmBackend

from fakes.pyslurm_fake import (
    ClusterSpec,
    FakeCommands,
    FakePyslurm,
    JobSpec,
    LicenseSpec,
    NodeSpec,
    ReservationSpec,
)
from harness.collectors import wait_until

pytestmark = pytest.mark.unit

NOW = 1_800_000_000
OPTIONS = SlurmOptions()

# -- the cases ----------------------------------------------------------------------------------


def busy() -> ClusterSpec:
    s, e = NOW - 7200, NOW - 7000
    return ClusterSpec(
        jobs=[
            JobSpec(
                1,
                "RUNNING",
                "gpu",
                submit=s,
                eligible=e,
                start=NOW - 600,
                cpus=8,
                mem_mib=16384,
                gpus=2,
                gpu_type="a100",
                nodes="g1",
            ),
            JobSpec(
                2,
                "RUNNING",
                "debug",
                submit=s,
                eligible=e,
                start=NOW - 60,
                cpus=2,
                nodes="n1",
                licenses=["matlab:2"],
                restarts=1,
            ),
            JobSpec(
                3,
                "PENDING",
                "debug",
                reason="Licenses",
                submit=s,
                eligible=e,
                licenses=["matlab:4", "ansys"],
            ),
            JobSpec(
                4,
                "PENDING",
                "debug",
                reason="Priority",
                submit=NOW - 30,
                eligible=NOW - 30,
                restarts=2,
            ),
            # an array: task 0 and task 3 split off and running, the rest pending, throttled
            JobSpec(
                10,
                "PENDING",
                "batch",
                array_job_id=10,
                remainder="1-2,4-99%4",
                reason="JobArrayTaskLimit",
                submit=s,
                eligible=e,
            ),
            JobSpec(
                11,
                "RUNNING",
                "batch",
                array_job_id=10,
                task=0,
                submit=s,
                eligible=e,
                start=NOW - 100,
                nodes="n2",
            ),
            JobSpec(
                14,
                "RUNNING",
                "batch",
                array_job_id=10,
                task=3,
                submit=s,
                eligible=e,
                start=NOW - 90,
                nodes="n2",
            ),
            JobSpec(
                20,
                "PENDING",
                "batch",
                array_job_id=20,
                remainder="0-999",
                reason="JobHeldUser",
                submit=s,
            ),
            JobSpec(
                30,
                "COMPLETED",
                "debug",
                submit=s,
                eligible=e,
                start=NOW - 500,
                end=NOW - 400,
                cpus=4,
                nodes="n1",
                reason="None",
                account="physics",
            ),
            JobSpec(
                31,
                "FAILED",
                "debug",
                submit=s,
                eligible=e,
                start=NOW - 300,
                end=NOW - 299,
                nodes="n1",
                reason="NonZeroExitCode",
                user="alice",
                account="physics",
                exit_status=768,
            ),
            JobSpec(
                32,
                "TIMEOUT",
                "gpu",
                submit=s,
                eligible=e,
                start=NOW - 3000,
                end=NOW - 100,
                gpus=1,
                nodes="g1",
                reason="TimeLimit",
                user="bob",
                account="chem",
                exit_status=15,
            ),
            JobSpec(
                33,
                "CANCELLED",
                "debug",
                submit=s,
                eligible=e,
                start=NOW - 200,
                end=NOW - 200,
                reason="Priority",
            ),
            JobSpec(
                34,
                "NODE_FAIL",
                "batch",
                submit=s,
                eligible=e,
                start=NOW - 900,
                end=NOW - 800,
                cpus=16,
                nodes="n3",
                reason="NodeDown",
                account='q"uo\\te ü',
            ),
            JobSpec(
                35,
                "OUT_OF_MEMORY",
                "batch",
                submit=s,
                eligible=e,
                start=NOW - 700,
                end=NOW - 650,
                nodes="n2",
                reason="OutOfMemory",
                exit_status=9,
            ),
            JobSpec(
                36,
                "PREEMPTED",
                "gpu",
                submit=s,
                eligible=e,
                start=NOW - 1000,
                end=NOW - 20,
                gpus=4,
                nodes="g1",
            ),
            JobSpec(
                40,
                "PENDING",
                "debug",
                reason="ReqNodeNotAvail, UnavailableNodes:n3",
                submit=s,
                eligible=e,
            ),
        ],
        nodes=[
            NodeSpec(
                "g1",
                ["gpu"],
                "MIXED",
                cpus=32,
                cpus_allocated=8,
                mem_mib=512000,
                mem_allocated_mib=16384,
                gpus=4,
                gpus_allocated=2,
                gpu_type="a100",
            ),
            NodeSpec("n1", ["debug", "batch"], "MIXED", cpus=4, cpus_allocated=2),
            NodeSpec(
                "n2",
                ["batch"],
                "ALLOCATED+DRAIN",
                cpus=4,
                cpus_allocated=4,
                reason="bad dimm | replace",
            ),
            NodeSpec(
                "n3", ["batch", "debug"], "DOWN+NOT_RESPONDING", cpus=16, reason="Not responding"
            ),
            NodeSpec("n4", ["debug"], "IDLE+DRAIN", reason="maintenance"),
            NodeSpec("n5", ["debug"], "IDLE"),
        ],
        licenses=[LicenseSpec("matlab", 5, 2), LicenseSpec("ansys", 1, 0)],
        reservations=[
            ReservationSpec(
                "disk swap", NOW - 100, NOW + 3600, "n[3-4]", "", ["MAINT", "IGNORE_JOBS"]
            ),
            ReservationSpec("train", NOW + 7200, NOW + 10800, "g1", "gpu", ["DAILY", "SPEC_NODES"]),
            ReservationSpec("later-maint", NOW + 60, NOW + 120, "n5", "", ["MAINT"]),
            ReservationSpec("gone", NOW - 7200, NOW - 3600, "n1", "", ["MAINT"]),
        ],
        stats={
            "server_thread_count": 4,
            "jobs_submitted": 1130,
            "jobs_started": 12,
            "schedule_cycle_last": 120,
            "schedule_cycle_max": 9000,
            "schedule_cycle_mean": 300,
            "schedule_cycle_counter": 77,
            "schedule_queue_length": 6,
            "schedule_cycle_mean_depth": 5,
            "backfilled_jobs": 3,
            "backfill_cycle_counter": 9,
            "backfill_cycle_last": 800,
            "backfill_cycle_max": 4000,
            "backfill_cycle_mean": 1000,
            "backfill_last_depth": 6,
            "backfill_queue_length": 5,
        },
        rpcs={"REQUEST_JOB_INFO": (40, 12000), "REQUEST_NODE_INFO": (20, 5000)},
    )


def quiet() -> ClusterSpec:
    return ClusterSpec(nodes=[NodeSpec("n1", ["debug"], "IDLE")])


CASES = {"busy": busy, "quiet": quiet}


def exposition(poller: Poller, now: float, log_url: str = "") -> list[str]:
    class _Reg:
        def collect(self) -> list[Metric]:
            return list(families(poller.published, now, OPTIONS.stale_after, log_url))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reg())
    text = generate_latest(registry).decode()
    differ = (
        "hpcobs_slurm_backend_info",
        "hpcobs_slurm_cycle_duration_seconds",
        "hpcobs_slurm_call_duration_seconds",
    )
    return [
        line
        for line in text.splitlines()
        if not line.startswith(differ)
        and not line.startswith(tuple("# HELP " + d for d in differ))
        and not line.startswith(tuple("# TYPE " + d for d in differ))
    ]


def run_cycles(backend: Backend, cycles: int = 3) -> Poller:
    poller = Poller(backend, make_ledger(OPTIONS), clock=lambda: float(NOW))
    for _ in range(cycles):
        assert poller.run_cycle()
    return poller


@pytest.mark.parametrize("case", sorted(CASES))
def test_pyslurm_and_portable_backends_give_the_same_metrics(case: str) -> None:
    cluster = CASES[case]()
    portable = run_cycles(PortableBackend(runner=FakeCommands(cluster)))
    fake = FakePyslurm(cluster)
    pyslurm = run_cycles(PyslurmBackend(module=fake.module()))
    a, b = exposition(portable, NOW), exposition(pyslurm, NOW)
    assert a == b
    assert fake.calls == {"jobs": 3, "nodes": 3, "reservations": 1, "diag": 1, "licenses": 1}
    assert portable.published.calls == pyslurm.published.calls
    assert any(line.startswith("hpcobs_slurm_jobs{") for line in a)


def _value(lines: list[str], series: str) -> float:
    for line in lines:
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not exported")


def test_busy_cluster_metrics_match_the_description() -> None:
    """Spot checks against sums computed straight from the description."""
    cluster = busy()
    lines = exposition(run_cycles(PortableBackend(runner=FakeCommands(cluster))), NOW)
    pending_batch = 98 + 1000  # array 10's rest (1-2,4-99) and the 1000 held tasks
    assert _value(lines, 'hpcobs_slurm_jobs{partition="batch",state="pending"}') == pending_batch
    assert (
        _value(lines, 'hpcobs_slurm_jobs_pending{partition="batch",reason="JobHeldUser"}') == 1000
    )
    assert (
        _value(lines, 'hpcobs_slurm_jobs_pending{partition="debug",reason="ReqNodeNotAvail"}') == 1
    )
    assert _value(lines, 'hpcobs_slurm_license_pending_jobs{license="ansys"}') == 1
    assert _value(lines, 'hpcobs_slurm_jobs_allocated_gpus{partition="gpu"}') == 2
    assert (
        _value(lines, 'hpcobs_slurm_jobs_allocated_memory_bytes{partition="gpu"}') == 16384 * 2**20
    )
    assert _value(lines, 'hpcobs_slurm_nodes{partition="batch",state="draining"}') == 1
    assert _value(lines, 'hpcobs_slurm_nodes{partition="debug",state="down"}') == 1
    assert _value(lines, 'hpcobs_slurm_nodes{partition="debug",state="drain"}') == 1
    assert _value(lines, 'hpcobs_slurm_partition_cpus{partition="debug"}') == 4 + 16 + 2 + 2
    assert _value(lines, 'hpcobs_slurm_partition_gpus_allocated{partition="gpu"}') == 2
    assert (
        _value(
            lines,
            'hpcobs_slurm_node_reason_info{node="n2",reason="bad dimm | replace",state="draining"}',
        )
        == 1
    )
    fin = 'hpcobs_slurm_jobs_finished_total{cause="%s",partition="%s",state="%s"}'
    assert _value(lines, fin % ("system", "batch", "node_fail")) == 1
    assert _value(lines, fin % ("system", "gpu", "preempted")) == 1
    assert _value(lines, fin % ("user", "batch", "out_of_memory")) == 1
    res = 'hpcobs_slurm_job_resource_seconds_total{partition="%s",resource="%s",state="%s"}'
    assert _value(lines, res % ("gpu", "gpu", "preempted")) == 4 * 980
    assert _value(lines, res % ("batch", "cpu", "node_fail")) == 16 * 100
    assert _value(lines, res % ("debug", "cpu", "cancelled")) == 0  # never ran
    # Queue waits: every job seen started or finished-after-running, once each.
    started_debug = 3  # jobs 2, 30, 31
    assert _value(lines, 'hpcobs_slurm_job_queue_wait_seconds_count{partition="debug"}') == (
        started_debug
    )
    assert _value(lines, 'hpcobs_slurm_job_queue_wait_seconds_count{partition="batch"}') == 4
    # Waits past 1 h: pending since e = NOW-7000 (array 10's 97 tasks, jobs 3, 40) and the
    # jobs that started after more than an hour (11, 14, 1, 2, 30, 31, 34, 35, 36, 32).
    assert _value(
        lines, 'hpcobs_slurm_jobs_wait_exceeded_total{partition="batch",threshold="3600"}'
    ) == (
        98 + 4  # the rest of array 10, tasks 0 and 3, jobs 34 and 35
    )
    assert _value(lines, "hpcobs_slurm_up") == 1
    assert _value(lines, 'hpcobs_slurm_license_count{license="matlab"}') == 5
    assert _value(lines, 'hpcobs_slurm_rpc_calls_total{type="REQUEST_JOB_INFO"}') == 40
    assert (
        _value(lines, 'hpcobs_slurm_scheduler_cycle_seconds{scheduler="backfill",stat="max"}')
        == 0.004
    )


# -- the portable backend's commands -------------------------------------------------------------


def test_portable_commands_are_explicit_and_shell_free() -> None:
    commands = FakeCommands(quiet())
    backend = PortableBackend(runner=commands, bin_dir="/opt/slurm/bin", timeout=3)
    backend.jobs()
    backend.nodes()
    backend.scheduler()
    backend.licenses()
    assert commands.argvs == [
        ["/opt/slurm/bin/squeue", "--all", "--noheader", "--states=all", "--Format", SQUEUE_FORMAT],
        ["/opt/slurm/bin/sinfo", "--all", "--noheader", "--Node", "--Format", SINFO_FORMAT],
        ["/opt/slurm/bin/sdiag"],
        ["/opt/slurm/bin/scontrol", "show", "licenses", "--oneliner"],
    ]
    assert "--json" not in " ".join(commands.argvs[0])


def test_command_environment_overrides_site_formats() -> None:
    env = command_env(
        "/etc/slurm/other.conf",
        {"PATH": "/bin", "SQUEUE_FORMAT": "%i", "SINFO_SORT": "P", "SLURM_TIME_FORMAT": "relative"},
    )
    assert env == {
        "PATH": "/bin",
        "SLURM_TIME_FORMAT": "%s",
        "TZ": "UTC",
        "LC_ALL": "C",
        "SLURM_CONF": "/etc/slurm/other.conf",
    }


def test_portable_timeout_kills_the_command(tmp_path: Path) -> None:
    script = tmp_path / "squeue"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    backend = PortableBackend(bin_dir=str(tmp_path), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SlurmCallError, match="timed out"):
        backend.jobs()
    assert time.monotonic() - started < 5


def test_portable_failure_reports_slurms_message(tmp_path: Path) -> None:
    commands = FakeCommands(quiet())
    commands.fail.add("squeue")
    with pytest.raises(SlurmCallError, match="Unable to contact slurm controller"):
        PortableBackend(runner=commands).jobs()
    with pytest.raises(SlurmCallError, match="cannot run"):
        PortableBackend(bin_dir=str(tmp_path / "none")).jobs()


# -- the pyslurm backend's worker process ------------------------------------------------------------


def _worker_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: float, timeout: float
) -> PyslurmBackend:
    spec = tmp_path / "cluster.json"
    spec.write_text(busy().to_json())
    monkeypatch.setenv("HPCOBS_FAKE_PYSLURM", str(spec))
    monkeypatch.setenv("HPCOBS_FAKE_PYSLURM_DELAY", str(delay))
    return PyslurmBackend(module_name="fakes.pyslurm_fake", timeout=timeout)


def test_pyslurm_worker_process_serves_the_same_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _worker_backend(tmp_path, monkeypatch, delay=0, timeout=30)
    try:
        in_process = PyslurmBackend(module=FakePyslurm(busy()).module())
        assert backend.jobs() == in_process.jobs()
        assert backend.nodes() == in_process.nodes()
        assert backend.version() == ("25.11.2", (25, 11, 2))
        assert backend.worker_starts == 1
    finally:
        backend.close()


def test_pyslurm_slow_call_is_abandoned_without_blocking_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _worker_backend(tmp_path, monkeypatch, delay=30, timeout=2)
    try:
        ticks = 0
        import threading

        done = threading.Event()

        def tick() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                time.sleep(0.01)

        threading.Thread(target=tick, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(SlurmCallError, match="no answer within 2s"):
            backend.jobs()
        took = time.monotonic() - started
        done.set()
        assert 1.9 < took < 6
        assert ticks > 50  # this process's threads kept running during the call
    finally:
        backend.close()


def test_pyslurm_import_failure_is_a_call_error(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = PyslurmBackend(module_name="hpcobs_no_such_module", timeout=30)
    try:
        with pytest.raises(SlurmCallError, match="cannot import"):
            backend.version()
    finally:
        backend.close()


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert versions_match("25.11.2", (25, 11, 2), (25, 11)) == ""
    assert "22.05" in versions_match("25.11.2", (25, 11, 2), (22, 5))
    assert "built against" in versions_match("25.11.2", (24, 5, 1), None)
    assert select_backend("portable", timeout=1).name == "portable"
    # Debian's Slurm 22.05 without pyslurm: auto falls back to the portable backend.
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert select_backend("auto", timeout=1).name == "portable"
    with pytest.raises(ValueError):
        select_backend("magic", timeout=1)


def test_explicit_pyslurm_backend_without_pyslurm_fails_at_start() -> None:
    with pytest.raises(ValueError, match=r"--slurm\.backend=pyslurm"):
        select_backend("pyslurm", timeout=30)


def test_python_path_reaches_worker() -> None:
    # The worker is started with `spawn`: it must find `fakes` through sys.path.
    assert any(Path(p).name == "tests" for p in sys.path)
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0


# -- start-up runs no command (issue 14, item 3) ---------------------------------------------------


def pretend_pyslurm_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> ModuleSpec | None:
        return ModuleSpec("pyslurm", None) if name == "pyslurm" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_backend_choice_that_needs_pyslurm_waits_for_the_first_cycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checking pyslurm against the installed Slurm starts a worker process and runs
    `sinfo --version`; building the exporter (before it listens) must not do that."""
    pretend_pyslurm_installed(monkeypatch)
    chosen: list[tuple[str, str]] = []
    commands = FakeCommands(ClusterSpec(nodes=[NodeSpec("n1", ["debug"], "IDLE")]))

    def select(kind: str, **options: Any) -> Backend:
        chosen.append((kind, threading.current_thread().name))
        return PortableBackend(runner=commands)

    monkeypatch.setattr("hpcobs.exporters.slurm.backend.select_backend", select)
    collector = build_collector(SlurmOptions(backend="auto"), start=False)
    try:
        assert chosen == [] and commands.argvs == []
        samples = {
            (s.name, tuple(s.labels.values())): s.value
            for family in collector.collect()
            for s in family.samples
        }
        assert samples[("hpcobs_slurm_backend_info", ("auto",))] == 1
        collector.poller.start()
        assert wait_until(lambda: collector.poller.published.cycles_done >= 1)
        assert chosen == [("auto", "slurm-poller")]
        assert collector.poller.published.backend == "portable"
        assert collector.poller.published.last_cycle_ok
    finally:
        collector.close()


def test_deferred_backend_choice_that_fails_fails_the_cycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def select(kind: str, **options: Any) -> Backend:
        raise ValueError("--slurm.backend=pyslurm: pyslurm 25.11.2 needs Slurm 25.11")

    backend = DeferredBackend("pyslurm", timeout=1, select=select)
    with pytest.raises(SlurmCallError, match=r"needs Slurm 25\.11"):
        backend.jobs()
    assert backend.name == "pyslurm"
    backend.close()


def test_explicit_pyslurm_without_pyslurm_still_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ValueError, match="pyslurm is not installed"):
        startup_backend("pyslurm", timeout=1)
    assert startup_backend("auto", timeout=1).name == "portable"
