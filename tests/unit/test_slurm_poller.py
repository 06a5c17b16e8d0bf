"""The collection cycle, the state file, the jobcomp tail and the exporter's wiring."""

from __future__ import annotations

import json
import stat
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hpcobs.exporters.runtime.app import build_parser, serve
from hpcobs.exporters.runtime.cli import parse_args
from hpcobs.exporters.slurm import SPEC
from hpcobs.exporters.slurm.backend import Backend, SlurmCallError
from hpcobs.exporters.slurm.collector import SlurmCollector, build_collector, families
from hpcobs.exporters.slurm.jobcomp import JobcompTail
from hpcobs.exporters.slurm.ledger import Ledger
from hpcobs.exporters.slurm.model import Job, License, Node, Reservation, SchedulerStats, make_job
from hpcobs.exporters.slurm.options import SlurmOptions, parse_cause_map
from hpcobs.exporters.slurm.poller import Poller
from hpcobs.exporters.slurm.state import StateFileError, load_state, save_state

from fakes.pyslurm_fake import (
    ClusterSpec,
    JobSpec,
    NodeSpec,
    licenses_text,
    reservations_text,
    sdiag_text,
    sinfo_text,
    squeue_text,
)

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0
DATA = Path(__file__).resolve().parent.parent / "data" / "slurm"


def job(job_id: int, state: str, **kw: Any) -> Job:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "array_job_id": job_id,
        "array_tasks": "",
        "partition": "debug",
        "state": state,
        "reason": "",
        "eligible_time": 0,
        "start_time": 0,
        "end_time": 0,
        "cpus": 1,
        "memory_bytes": 0,
        "gpus": 0,
        "licenses": (),
        "nodes": "n1",
    }
    return make_job(**{**fields, **kw})


def finished(job_id: int, state: str = "completed", end: int = int(T0) - 10) -> Job:
    return job(job_id, state, eligible_time=end - 100, start_time=end - 50, end_time=end)


class FakeBackend(Backend):
    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.job_list: list[Job] = []
        self.node_list: list[Node] = []
        self.reservation_list: list[Reservation] = []
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.block = threading.Event()
        self.blocking: set[str] = set()

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        if call in self.blocking:
            self.block.wait(30)
        if call in self.fail:
            raise SlurmCallError(call, "Unable to contact slurm controller")

    def jobs(self) -> list[Job]:
        self._enter("jobs")
        return list(self.job_list)

    def nodes(self) -> list[Node]:
        self._enter("nodes")
        return list(self.node_list)

    def scheduler(self) -> SchedulerStats:
        self._enter("scheduler")
        return SchedulerStats(server_thread_count=3)

    def licenses(self) -> list[License]:
        self._enter("licenses")
        return [License("matlab", 5, 1, 4)]

    def reservations(self) -> list[Reservation]:
        self._enter("reservations")
        return list(self.reservation_list)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make(backend: Backend, clock: Clock, **kw: Any) -> Poller:
    return Poller(backend, Ledger(buckets=(60.0,), thresholds=(3600.0,)), clock=clock, **kw)


def series(poller: Poller, now: float, stale_after: float = 90) -> dict[str, float]:
    out = {}
    for family in families(poller.published, now, stale_after):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_at_most_three_calls_per_cycle_taking_turns() -> None:
    backend, clock = FakeBackend(), Clock()
    poller = make(backend, clock)
    for _ in range(4):
        assert poller.run_cycle()
    assert backend.calls == [
        "jobs",
        "nodes",
        "scheduler",
        "jobs",
        "nodes",
        "reservations",
        "jobs",
        "nodes",
        "licenses",
        "jobs",
        "nodes",
        "scheduler",
    ]
    assert poller.published.last_cycle_calls == 3
    poller = make(FakeBackend(), clock, extras=())
    poller.run_cycle()
    assert poller.published.last_cycle_calls == 2


def test_failed_call_ends_the_cycle_and_up_drops() -> None:
    backend, clock = FakeBackend(), Clock()
    backend.job_list = [finished(1)]
    poller = make(backend, clock)
    assert poller.run_cycle()
    assert series(poller, clock.now)["hpcobs_slurm_up"] == 1
    backend.fail.add("jobs")
    backend.calls.clear()
    clock.now += 30
    assert not poller.run_cycle()
    assert backend.calls == ["jobs"]  # no more calls to a controller that is down
    now = series(poller, clock.now)
    assert now["hpcobs_slurm_up"] == 0
    assert now['hpcobs_slurm_jobs{partition="debug",state="completed"}'] == 1  # not stale yet
    assert (
        now['hpcobs_slurm_jobs_finished_total{cause="none",partition="debug",state="completed"}']
        == 1
    )
    assert now['hpcobs_slurm_call_errors_total{call="jobs"}'] == 1
    assert now["hpcobs_slurm_last_success_timestamp_seconds"] == T0
    later = series(poller, T0 + 91)  # past --slurm.stale-after: gauges dropped, counters kept
    assert later["hpcobs_slurm_up"] == 0
    assert not any(k.startswith(("hpcobs_slurm_jobs{", "hpcobs_slurm_nodes")) for k in later)
    assert (
        later['hpcobs_slurm_jobs_finished_total{cause="none",partition="debug",state="completed"}']
        == 1
    )
    backend.fail.clear()
    clock.now = T0 + 120
    assert poller.run_cycle()
    assert series(poller, clock.now)["hpcobs_slurm_up"] == 1


def test_unreadable_job_records_do_not_make_jobs_look_gone() -> None:
    class Garbled(FakeBackend):
        garbled = False

        def jobs(self) -> list[Job]:
            jobs = super().jobs()
            if self.garbled:
                self.parse_errors["jobs"] += 1  # job 1's line could not be read
                return []
            return jobs

    backend, clock = Garbled(), Clock()
    backend.job_list = [finished(1)]
    poller = make(backend, clock)
    poller.run_cycle()
    backend.garbled = True
    for _ in range(3):
        poller.run_cycle()
    backend.garbled = False
    poller.run_cycle()
    key = 'hpcobs_slurm_jobs_finished_total{cause="none",partition="debug",state="completed"}'
    assert series(poller, clock.now)[key] == 1
    assert series(poller, clock.now)['hpcobs_slurm_parse_errors_total{call="jobs"}'] == 3


def test_scrape_answers_at_once_while_a_cycle_hangs() -> None:
    backend, clock = FakeBackend(), Clock()
    backend.job_list = [finished(1)]
    poller = make(backend, clock, poll_interval=0.05)
    collector = SlurmCollector(poller, stale_after=90, clock=clock)
    assert poller.run_cycle()
    backend.blocking.add("jobs")
    poller.start()
    try:
        time.sleep(0.2)  # the background cycle is now stuck in jobs()
        assert not poller.run_cycle()  # never two cycles at once
        started = time.monotonic()
        values = {s.name: s.value for f in collector.collect() for s in f.samples}
        assert time.monotonic() - started < 0.1
        assert values["hpcobs_slurm_up"] == 1  # the last finished cycle succeeded
        assert backend.calls.count("jobs") == 2
    finally:
        backend.block.set()
        poller.close()


def test_state_is_saved_before_counters_are_published(tmp_path: Path) -> None:
    backend, clock = FakeBackend(), Clock()
    state = tmp_path / "state.json"
    backend.job_list = [finished(1)]
    poller = make(backend, clock, state_file=state)
    poller.run_cycle()
    doc = load_state(state)
    assert doc is not None and doc["ledger"]["finished"] == [["debug", "completed", "none", 1.0]]
    assert poller.published.state_saves == 1
    # An unwritable state: the new count is not published until it is saved.
    state.unlink()
    state.mkdir()
    backend.job_list = [finished(1), finished(2)]
    poller.run_cycle()
    key = 'hpcobs_slurm_jobs_finished_total{cause="none",partition="debug",state="completed"}'
    assert series(poller, clock.now)[key] == 1
    assert series(poller, clock.now)["hpcobs_slurm_state_save_errors_total"] == 1
    state.rmdir()
    poller.run_cycle()
    assert series(poller, clock.now)[key] == 2
    assert not list(tmp_path.glob(".state.json.*"))  # no temporary files left behind


def test_unchanged_ledger_is_not_rewritten(tmp_path: Path) -> None:
    backend, clock = FakeBackend(), Clock()
    backend.job_list = [finished(1)]
    poller = make(backend, clock, state_file=tmp_path / "s.json")
    for _ in range(3):
        poller.run_cycle()
    assert poller.published.state_saves == 1


def test_state_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    (tmp_path / ".s.json.4242.tmp").write_text("{half a sa")  # a crash during a save
    assert load_state(path) is None
    assert not (tmp_path / ".s.json.4242.tmp").exists()
    path.write_text("{not json")
    with pytest.raises(StateFileError, match="move it away"):
        load_state(path)
    path.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(StateFileError):
        load_state(path)
    save_state(path, {"a": 1})
    assert load_state(path) == {"kind": "hpcobs-slurm-exporter-state", "a": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- the jobcomp tail ----------------------------------------------------------------------------


def test_jobcomp_tail_reads_complete_lines_once(tmp_path: Path) -> None:
    lines = (DATA / "jobcomp-22.05.log").read_text().splitlines(keepends=True)
    log = tmp_path / "jobcomp.log"
    log.write_text("".join(lines[:3]) + lines[3][:50])  # the 4th line is being written
    tail = JobcompTail(log, chunk_bytes=200)
    got = [j.job_id for chunk in tail.read() for j in chunk]
    assert got == [8, 1, 9]
    with log.open("a") as f:
        f.write(lines[3][50:] + lines[4])
    assert [j.job_id for chunk in tail.read() for j in chunk] == [6, 4]
    assert [j.job_id for chunk in tail.read() for j in chunk] == []
    assert tail.bad_lines == 0


def test_jobcomp_tail_follows_rotation_and_truncation(tmp_path: Path) -> None:
    lines = (DATA / "jobcomp-22.05.log").read_text().splitlines(keepends=True)
    log = tmp_path / "jobcomp.log"
    log.write_text("".join(lines[:2]))
    tail = JobcompTail(log)
    assert len([j for c in tail.read() for j in c]) == 2
    log.rename(tmp_path / "jobcomp.log.1")  # logrotate
    log.write_text(lines[2])
    assert [j.job_id for c in tail.read() for j in c] == [9]
    log.write_text("")  # truncated in place
    log.write_text(lines[5])
    assert [j.job_id for c in tail.read() for j in c] == [12]


def test_jobcomp_tail_from_end_and_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "jobcomp.log"
    tail = JobcompTail(log, start="end")
    assert list(tail.read()) == [] and tail.readable is False
    log.write_text((DATA / "jobcomp-22.05.log").read_text())
    assert list(tail.read()) == [] and tail.readable is True  # first read: from the end
    with log.open("a") as f:
        f.write("not a job record\n")
    assert [j for c in tail.read() for j in c] == [] and tail.bad_lines == 1


# -- flags and the running exporter ----------------------------------------------------------------


def test_options_validation() -> None:
    parser = build_parser("x", "x", ":1", [SPEC], paths=False)
    args = parse_args(
        parser, ["--slurm.wait-thresholds=30m,2h", "--slurm.cause-map=preempted=user"]
    )
    options = SlurmOptions.from_args(args)
    assert options.thresholds == (1800.0, 7200.0)
    assert options.causes["preempted"] == "user" and options.causes["node_fail"] == "system"
    with pytest.raises(ValueError, match="stale-after"):
        SlurmOptions(poll_interval=30, stale_after=30)
    with pytest.raises(Exception, match="STATE=CAUSE"):
        parse_cause_map("running=user")
    with pytest.raises(SystemExit):
        parse_args(parser, ["--slurm.backend=magic"])


def fake_slurm_bin(tmp_path: Path, cluster: ClusterSpec) -> Path:
    """squeue/sinfo/sdiag/scontrol scripts printing the cluster like Slurm 22.05 does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("squeue", squeue_text(cluster)),
        ("sinfo", sinfo_text(cluster)),
        ("sdiag", sdiag_text(cluster)),
        ("scontrol", licenses_text(cluster)),
        ("scontrol-reservation", reservations_text(cluster)),
    ):
        (bin_dir / f"{name}.out").write_text(text)
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\nexec cat '{bin_dir / name}.out'\n")
        script.chmod(0o755)
    # scontrol show licenses | reservation
    (bin_dir / "scontrol").write_text(
        "#!/bin/sh\n"
        f"[ \"$2\" = reservation ] && exec cat '{bin_dir}/scontrol-reservation.out'\n"
        f"exec cat '{bin_dir}/scontrol.out'\n"
    )
    return bin_dir


def test_exporter_serves_and_restarts_from_its_state(tmp_path: Path) -> None:
    cluster = ClusterSpec(
        jobs=[
            JobSpec(
                1,
                "COMPLETED",
                submit=int(T0),
                eligible=int(T0),
                start=int(T0) + 5,
                end=int(T0) + 65,
                nodes="n1",
                cpus=4,
            )
        ],
        nodes=[NodeSpec("n1", ["debug"], "IDLE")],
    )
    bin_dir = fake_slurm_bin(tmp_path, cluster)
    state = tmp_path / "state.json"
    argv = [
        "--web.listen-address=127.0.0.1:0",
        "--slurm.backend=portable",
        f"--slurm.bin-dir={bin_dir}",
        f"--slurm.state-file={state}",
        "--slurm.poll-interval=0.1s",
        "--slurm.stale-after=5s",
    ]

    def scrape_after_restart() -> str:
        parser = build_parser("hpcobs-slurm-exporter", "x", ":9947", [SPEC], paths=False)
        args = parse_args(parser, argv)
        collector = build_collector(SlurmOptions.from_args(args), start=False)
        try:
            for _ in range(3):
                collector.poller.run_cycle()
            return "\n".join(
                f"{s.name} {s.labels} {s.value}" for f in collector.collect() for s in f.samples
            )
        finally:
            collector.close()

    first = scrape_after_restart()
    second = scrape_after_restart()
    for text in (first, second):
        assert (
            "hpcobs_slurm_jobs_finished_total {'partition': 'debug', 'state': 'completed', "
            "'cause': 'none'} 1.0"
        ) in text
        assert (
            "hpcobs_slurm_job_resource_seconds_total {'partition': 'debug', "
            "'state': 'completed', 'resource': 'cpu'} 240.0"
        ) in text


def test_main_serves_metrics_over_http(tmp_path: Path) -> None:
    bin_dir = fake_slurm_bin(tmp_path, ClusterSpec(nodes=[NodeSpec("n1", ["debug"], "IDLE")]))
    parser = build_parser("hpcobs-slurm-exporter", "x", ":9947", [SPEC], paths=False)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = parse_args(
        parser,
        [
            f"--web.listen-address=127.0.0.1:{port}",
            "--slurm.backend=portable",
            f"--slurm.bin-dir={bin_dir}",
            "--slurm.poll-interval=0.2s",
            "--slurm.stale-after=5s",
        ],
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=("hpcobs-slurm-exporter", args, [SPEC]),
        kwargs={"stop": stop},
        daemon=True,
    )
    thread.start()
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.05)
                continue
            if "hpcobs_slurm_up 1.0" in body:
                break
            time.sleep(0.05)
        assert "hpcobs_slurm_up 1.0" in body
        assert 'hpcobs_collector_up{collector="slurm"} 1.0' in body
        assert 'hpcobs_slurm_nodes{partition="debug",state="idle"} 1.0' in body
    finally:
        stop.set()
        thread.join(10)


def test_counters_of_a_known_partition_start_at_zero() -> None:
    """`increase()` cannot see a series born with its first value: the first NODE_FAIL of a
    partition must move an existing 0 series, not create one."""
    backend, clock = FakeBackend(), Clock()
    backend.job_list = [
        job(7, "pending", partition="gpu", eligible_time=int(T0) - 100, cpus=4, gpus=1)
    ]
    poller = make(backend, clock)
    assert poller.run_cycle()
    values = series(poller, clock.now)
    assert (
        values['hpcobs_slurm_jobs_finished_total{cause="system",partition="gpu",state="node_fail"}']
        == 0
    )
    assert (
        values['hpcobs_slurm_jobs_finished_total{cause="none",partition="gpu",state="completed"}']
        == 0
    )
    assert (
        values[
            'hpcobs_slurm_job_resource_seconds_total{partition="gpu",resource="gpu",state="node_fail"}'
        ]
        == 0
    )
    assert values['hpcobs_slurm_jobs_wait_exceeded_total{partition="gpu",threshold="3600"}'] == 0
    assert values['hpcobs_slurm_job_queue_wait_seconds_count{partition="gpu"}'] == 0
    assert values['hpcobs_slurm_job_queue_wait_seconds_bucket{le="+Inf",partition="gpu"}'] == 0
