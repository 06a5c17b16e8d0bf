"""The `jobs` collector: attribution on fixture procfs trees and on this machine's /proc."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.metrics_core import Metric

from hpcobs.exporters import attribution
from hpcobs.exporters.attribution import JobAttributor
from hpcobs.exporters.collectors import gpu, jobs
from hpcobs.exporters.collectors.jobs import JobsCollector
from hpcobs.exporters.runtime.app import build_collectors, build_parser
from hpcobs.exporters.runtime.cli import parse_args
from hpcobs.exporters.runtime.collector import Services
from hpcobs.exporters.sources.procfs import CpuAccumulator, ProcSample, PsutilSampler

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent.parent / "data" / "jobs"


def hierarchy_jobs(cgroup_root: Path) -> dict[int, str]:
    """pid → job from a cgroup hierarchy's cgroup.procs files (independent of the parser)."""
    found: dict[int, str] = {}
    for procs in cgroup_root.rglob("cgroup.procs"):
        jobs_in_path = [
            p[4:] for p in procs.parent.relative_to(cgroup_root).parts if p.startswith("job_")
        ]
        if not jobs_in_path:
            continue
        for line in procs.read_text().split():
            found[int(line)] = jobs_in_path[-1]
    return found


class TableSampler:
    """Process data from a table (pid → sample); pids not in it are 'gone'."""

    def __init__(self, table: dict[int, ProcSample]) -> None:
        self.table = table

    def sample(self, pid: int) -> ProcSample | None:
        return self.table.get(pid)


def values(metrics: Iterator[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in metrics:
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_cgroup_v2_tree_matches_hierarchy() -> None:
    tree = DATA / "cgroup-v2"
    expected = hierarchy_jobs(tree / "sys" / "fs" / "cgroup")
    assert len(expected) >= 10 and set(expected.values()) == {"1001", "1002"}
    found = JobAttributor(str(tree / "proc"), environ_fallback=True).attribute()
    assert {pid: a.job_id for pid, a in found.items()} == expected
    assert {a.source for a in found.values()} == {"cgroup"}


def test_cgroup_v1_tree_matches_hierarchy() -> None:
    tree = DATA / "cgroup-v1"
    expected = hierarchy_jobs(tree / "sys" / "fs" / "cgroup" / "freezer")
    assert set(expected.values()) == {"2001", "2002"}
    found = JobAttributor(str(tree / "proc")).attribute()
    assert {pid: a.job_id for pid, a in found.items()} == expected
    assert {a.source for a in found.values()} == {"cgroup"}


def _expected_linuxproc() -> dict[int, tuple[str, str]]:
    rows = (DATA / "linuxproc" / "expected-jobs.txt").read_text().splitlines()
    return {
        int(r.split()[0]): (r.split()[1], r.split()[2])
        for r in rows
        if r.strip() and not r.startswith("#")
    }


def test_linuxproc_tree_by_stepd_ancestry_and_environ() -> None:
    found = JobAttributor(str(DATA / "linuxproc" / "proc")).attribute()
    assert {pid: (a.job_id, a.source) for pid, a in found.items()} == _expected_linuxproc()


def test_environ_fallback_can_be_turned_off() -> None:
    found = JobAttributor(str(DATA / "linuxproc" / "proc"), environ_fallback=False).attribute()
    expected = {p: v for p, v in _expected_linuxproc().items() if v[1] != "environ"}
    assert {pid: (a.job_id, a.source) for pid, a in found.items()} == expected


def test_subset_of_pids_walks_ancestors_lazily() -> None:
    attributor = JobAttributor(str(DATA / "linuxproc" / "proc"))
    found = attributor.attribute([3003, 3301, 999999])
    assert {pid: a.job_id for pid, a in found.items()} == {3003: "3001"}


def test_positive_answers_are_cached_per_process(tmp_path: Path) -> None:
    import shutil

    tree = tmp_path / "proc"
    shutil.copytree(DATA / "cgroup-v2" / "proc", tree)
    attributor = JobAttributor(str(tree))
    first = attributor.attribute()
    # The cgroup file changing under a known process does not re-attribute it ...
    (tree / "4131" / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_9/step_0\n")
    assert attributor.attribute()[4131].job_id == first[4131].job_id == "1001"
    # ... but a new process with the same pid (another start time) is looked at afresh.
    stat = (tree / "4131" / "stat").read_text().split(" ")
    stat[21] = str(int(stat[21]) + 1)
    (tree / "4131" / "stat").write_text(" ".join(stat))
    assert attributor.attribute()[4131].job_id == "9"


def test_environment_reread_only_after_exec(tmp_path: Path) -> None:
    import shutil

    tree = tmp_path / "proc"
    shutil.copytree(DATA / "linuxproc" / "proc", tree)
    attributor = JobAttributor(str(tree))
    assert 3301 not in attributor.attribute()
    (tree / "3301" / "environ").write_bytes(b"PATH=/bin\0SLURM_JOB_ID=5\0")
    assert 3301 not in attributor.attribute()  # same process image: environment not re-read
    stat = (tree / "3301" / "stat").read_text()
    (tree / "3301" / "stat").write_text(stat.replace("(python3)", "(srun)"))  # it exec'd
    found = attributor.attribute()
    assert (found[3301].job_id, found[3301].source) == ("5", "environ")
    # a process entering a job's cgroup (pam_slurm_adopt) is seen on the next look
    (tree / "3301" / "environ").write_bytes(b"PATH=/bin\0")
    fresh = JobAttributor(str(tree))
    assert fresh.attribute().get(3301) is None
    (tree / "3301" / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_77/step_extern\n")
    assert fresh.attribute()[3301].job_id == "77"


def test_collector_on_v2_tree() -> None:
    tree = DATA / "cgroup-v2" / "proc"
    table = {
        pid: ProcSample(cpu_seconds=pid / 1000, rss_bytes=pid * 1024) for pid in range(1, 10000)
    }
    expected = hierarchy_jobs(DATA / "cgroup-v2" / "sys" / "fs" / "cgroup")
    collector = JobsCollector(procfs=str(tree), sampler=TableSampler(table))
    got = values(collector.collect())
    for job in ("1001", "1002"):
        pids = [p for p, j in expected.items() if j == job]
        labels = (("job_id", job),)
        assert got[("hpcobs_job_processes", labels)] == len(pids)
        assert got[("hpcobs_job_memory_bytes", labels)] == sum(p * 1024 for p in pids)
        assert got[("hpcobs_job_cpu_seconds_total", labels)] == pytest.approx(
            sum(p / 1000 for p in pids)
        )
    assert got[("hpcobs_jobs_active", ())] == 2
    assert got[("hpcobs_jobs_over_limit", ())] == 0
    assert got[("hpcobs_jobs_attributed_processes", (("source", "cgroup"),))] == len(expected)
    assert got[("hpcobs_jobs_attributed_processes", (("source", "environ"),))] == 0


def test_max_jobs_keeps_lowest_ids_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    tree = DATA / "cgroup-v2" / "proc"
    table = {pid: ProcSample(1.0, 1) for pid in range(1, 10000)}
    collector = JobsCollector(procfs=str(tree), max_jobs=1, sampler=TableSampler(table))
    with caplog.at_level(logging.WARNING, logger="hpcobs.jobs"):
        got = values(collector.collect())
        values(collector.collect())
    jobs_seen = {dict(labels)["job_id"] for name, labels in got if name == "hpcobs_job_processes"}
    assert jobs_seen == {"1001"}
    assert got[("hpcobs_jobs_active", ())] == 2
    assert got[("hpcobs_jobs_over_limit", ())] == 1
    assert len([r for r in caplog.records if "max-jobs" in r.getMessage()]) == 1


def test_cpu_counter_stays_monotonic_when_processes_exit() -> None:
    acc = CpuAccumulator()
    assert acc.update({(1, 10): ("7", 5.0), (2, 20): ("7", 3.0)}) == {"7": 8.0}
    # process 2 exits: its last 3.0 s stay in the job's total
    assert acc.update({(1, 10): ("7", 6.0)}) == {"7": 9.0}
    # a new process joins
    assert acc.update({(1, 10): ("7", 6.5), (3, 30): ("7", 1.0)}) == {"7": 10.5}
    # a reading that goes backwards (pid reuse, clock quirk) never lowers the counter
    assert acc.update({(1, 10): ("7", 1.0), (3, 30): ("7", 1.0)}) == {"7": 10.5}
    # the job leaves the node: forgotten; a later job with the same id starts afresh
    assert acc.update({}) == {}
    assert acc.update({(4, 40): ("7", 2.0)}) == {"7": 2.0}


def test_exited_between_listing_and_sampling_is_not_exported() -> None:
    tree = DATA / "cgroup-v2" / "proc"
    collector = JobsCollector(procfs=str(tree), sampler=TableSampler({}))
    got = values(collector.collect())
    assert not [k for k in got if k[0] == "hpcobs_job_processes"]
    assert got[("hpcobs_jobs_active", ())] == 2


# unique to this test run: concurrent runs on the machine must not see each other's processes
JOB = str(900_000_000 + os.getpid())


@pytest.fixture
def job_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes on this machine carrying SLURM_JOB_ID=JOB in their environment."""
    env = {**os.environ, "SLURM_JOB_ID": JOB}
    procs = [
        subprocess.Popen(["sleep", "60"], env=env),
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; x = bytearray(32 << 20); print('ready', flush=True); "
                "time.sleep(60)",
            ],
            env=env,
            stdout=subprocess.PIPE,
        ),
    ]
    # the allocation is resident once the child says so (no guessed sleep)
    assert procs[1].stdout is not None and procs[1].stdout.readline() == b"ready\n"
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_real_proc_environ_attribution_with_psutil(
    job_processes: list[subprocess.Popen[bytes]],
) -> None:
    collector = JobsCollector(procfs="/proc")
    found = collector.attributor.attribute()
    mine = {pid for pid, a in found.items() if a.job_id == JOB}
    assert mine == {p.pid for p in job_processes}
    got = values(collector.collect())
    labels = (("job_id", JOB),)
    assert got[("hpcobs_job_processes", labels)] == 2
    assert got[("hpcobs_job_memory_bytes", labels)] > 32 << 20  # the bytearray is resident
    assert got[("hpcobs_job_cpu_seconds_total", labels)] >= 0.0
    off = JobAttributor("/proc", environ_fallback=False).attribute()
    assert not {pid for pid, a in off.items() if a.job_id == JOB}


def test_psutil_sampler_gone_process() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert PsutilSampler().sample(proc.pid) is None
    me = PsutilSampler().sample(os.getpid())
    assert me is not None and me.rss_bytes > 0


def test_flags_reach_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    # a non-default --path.procfs points psutil there (process-wide); restore it afterwards
    monkeypatch.setattr(psutil, "PROCFS_PATH", psutil.PROCFS_PATH)
    parser = build_parser("test", "test", ":0", [jobs.SPEC], paths=True)
    args = parse_args(
        parser,
        [
            "--path.procfs",
            str(DATA / "linuxproc" / "proc"),
            "--collector.jobs.max-jobs=3",
            "--no-attribution.environ-fallback",
        ],
    )
    collector = jobs.SPEC.factory(args, Services(args))
    assert isinstance(collector, JobsCollector)
    assert collector.max_jobs == 3 and collector.attributor.environ_fallback is False
    assert collector.attributor.proc.root == str(DATA / "linuxproc" / "proc")
    assert str(DATA / "linuxproc" / "proc") == psutil.PROCFS_PATH
    with pytest.raises(SystemExit):
        parse_args(parser, ["--collector.jobs.max-jobs=0"])


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        ([], True),
        (["--no-attribution.environ-fallback"], False),
        (["--no-collector.jobs.environ-fallback"], False),  # its older spelling
        (["--no-attribution.environ-fallback", "--collector.jobs.environ-fallback"], True),
    ],
)
def test_environ_fallback_flag_and_its_alias(argv: list[str], want: bool) -> None:
    parser = build_parser("test", "test", ":0", [gpu.SPEC, jobs.SPEC], paths=True)
    args = parse_args(parser, argv)
    assert attribution.from_args(args).environ_fallback is want


@pytest.mark.parametrize("key", ["attribution.environ-fallback", "collector.jobs.environ-fallback"])
def test_environ_fallback_from_the_config_file(key: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(f"{key}: false\n")
    parser = build_parser("test", "test", ":0", [gpu.SPEC, jobs.SPEC], paths=True)
    args = parse_args(parser, [f"--config.file={config}"])
    assert attribution.from_args(args).environ_fallback is False


def test_gpu_and_jobs_share_one_attributor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "PROCFS_PATH", psutil.PROCFS_PATH)
    tree = str(DATA / "linuxproc" / "proc")
    parser = build_parser("test", "test", ":0", [gpu.SPEC, jobs.SPEC], paths=True)
    args = parse_args(parser, [f"--path.procfs={tree}", "--no-attribution.environ-fallback"])
    services = Services(args)
    collectors = build_collectors(args, [gpu.SPEC, jobs.SPEC], services)
    try:
        gpu_collector, jobs_collector = collectors
        assert isinstance(gpu_collector, gpu.GpuCollector)
        assert isinstance(jobs_collector, JobsCollector)
        shared = services.get(attribution.from_args)
        assert gpu_collector.attributor is shared and jobs_collector.attributor is shared
        assert shared.proc.root == tree and shared.environ_fallback is False
    finally:
        for collector in collectors:
            collector.close()
        services.close()


def test_shared_attributor_some_pids_then_all() -> None:
    """The gpu collector asks about the PIDs on its GPUs, the jobs collector about every
    process: a look at some PIDs forgets nothing the other look needs, and both answer as a
    fresh attributor would."""
    tree = str(DATA / "linuxproc" / "proc")
    expected = _expected_linuxproc()
    shared = JobAttributor(tree)
    for _ in range(3):
        some = shared.attribute([3003, 3201, 999999])
        assert {pid: (a.job_id, a.source) for pid, a in some.items()} == {
            pid: expected[pid] for pid in (3003, 3201)
        }
        every = shared.attribute()
        assert {pid: (a.job_id, a.source) for pid, a in every.items()} == expected
    assert shared.attribute([3003]) == {3003: every[3003]}  # cached answers are kept


def test_shared_attributor_from_many_threads() -> None:
    tree = str(DATA / "linuxproc" / "proc")
    expected = _expected_linuxproc()
    shared = JobAttributor(tree)
    errors: list[BaseException] = []

    def look(pids: list[int] | None) -> None:
        try:
            for _ in range(50):
                found = shared.attribute(pids)
                want = expected if pids is None else {p: expected[p] for p in pids}
                assert {pid: (a.job_id, a.source) for pid, a in found.items()} == want
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=look, args=(None,)) for _ in range(2)]
    threads += [threading.Thread(target=look, args=([3003, 3102],)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_recent_look_at_every_process_answers_the_next(tmp_path: Path) -> None:
    """Within `reuse_seconds` a look at every process is answered from the last one (the
    collectors of one scrape walk /proc once); after it, and for some PIDs, it is fresh."""
    import shutil

    tree = tmp_path / "proc"
    shutil.copytree(DATA / "linuxproc" / "proc", tree)
    now = [100.0]
    attributor = JobAttributor(str(tree), reuse_seconds=1.0, clock=lambda: now[0])
    first = attributor.attribute()
    assert 3301 not in first
    (tree / "3301" / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_77/step_0\n")
    now[0] += 0.5
    again = attributor.attribute()
    assert again == first and again is not first  # the caller may change its copy
    assert attributor.attribute([3301])[3301].job_id == "77"  # some PIDs: always looked at
    now[0] += 0.6
    assert attributor.attribute()[3301].job_id == "77"


def test_one_scrape_of_jobs_and_textfile_walks_proc_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcobs.exporters.collectors import textfile

    monkeypatch.setattr(psutil, "PROCFS_PATH", psutil.PROCFS_PATH)
    tree = str(DATA / "linuxproc" / "proc")
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    (textfiles / "job.prom").write_text('hpcobs_checkpoint_last_seconds{job_id="3001"} 2\n')
    specs = [jobs.SPEC, textfile.SPEC]
    parser = build_parser("test", "test", ":0", specs, paths=True)
    args = parse_args(
        parser, [f"--path.procfs={tree}", f"--collector.textfile.directory={textfiles}"]
    )
    services = Services(args)
    shared = services.get(attribution.from_args)  # what both collectors get from the daemon
    table = {pid: ProcSample(1.0, 1) for pid in range(1, 10000)}
    collectors = [
        JobsCollector(sampler=TableSampler(table), attributor=shared),
        textfile.SPEC.factory(args, services),
    ]
    walks: list[int] = []
    pids = shared.proc.pids
    monkeypatch.setattr(shared.proc, "pids", lambda: walks.append(1) or pids())
    results: dict[int, list[Metric]] = {}
    try:
        threads = [
            threading.Thread(target=lambda i=i, c=c: results.update({i: list(c.collect())}))
            for i, c in enumerate(collectors)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert walks == [1]
        active = {job for job, _ in _expected_linuxproc().values()}
        assert values(iter(results[0]))[("hpcobs_jobs_active", ())] == len(active)
        kept = [m for m in results[1] if m.name == "hpcobs_checkpoint_last_seconds"]
        assert [s.labels["job_id"] for s in kept[0].samples] == ["3001"]
    finally:
        for collector in collectors:
            collector.close()
        services.close()
