"""The textfile collector (exporters/collectors/textfile.py) on temporary directories: which
files it reads, bad files, conflicts between files, the Slurm-job grace, the flags, and a fuzz
of whole directories: whatever the files hold, a scrape never fails and its output is valid."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.exporters.attribution import JobAttributor
from hpcobs.exporters.checkpoint import outputs as checkpoint_outputs
from hpcobs.exporters.collectors import discover, textfile
from hpcobs.exporters.collectors.textfile import (
    DEFAULT_DIRECTORY,
    TextfileCollector,
    daemon_metric_names,
)
from hpcobs.exporters.node import DEFAULT_LISTEN, PROGRAM
from hpcobs.exporters.parse.textfile import parse
from hpcobs.exporters.probe import outputs as probe_outputs
from hpcobs.exporters.runtime.app import build_collectors, build_parser
from hpcobs.exporters.runtime.cli import enabled_collectors, parse_args
from hpcobs.exporters.runtime.collector import NoDataError
from hpcobs.exporters.runtime.exposition import generate_openmetrics, generate_text
from hpcobs.exporters.sources.textfile import TextFile

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

CHECKPOINT = """# HELP hpcobs_checkpoint_duration_seconds Wall time.
# TYPE hpcobs_checkpoint_duration_seconds gauge
hpcobs_checkpoint_duration_seconds{{job_id="{job}",name="model"}} 1.5
# HELP hpcobs_checkpoints_total Attempts.
# TYPE hpcobs_checkpoints_total counter
hpcobs_checkpoints_total{{job_id="{job}",name="model",result="success"}} 3.0
"""


def checkpoint_text(job: str) -> str:
    return CHECKPOINT.format(job=job)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write(directory: Path, name: str, text: str | bytes, mtime: float | None = None) -> Path:
    path = directory / name
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def collect(collector: TextfileCollector) -> list[Metric]:
    return list(collector.collect())


def series(
    metrics: Iterable[Metric], name: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in metrics
        for s in m.samples
        if name is None or s.name == name
    }


def value(metrics: Iterable[Metric], metric: str, **labels: str) -> float | None:
    return series(metrics, metric).get((metric, tuple(sorted(labels.items()))))


def files_exported(metrics: Iterable[Metric]) -> set[str]:
    return {dict(k[1])["file"] for k in series(metrics, "hpcobs_textfile_mtime_seconds")}


def text_of(metrics: list[Metric]) -> str:
    class _Registry:
        def collect(self) -> list[Metric]:
            return metrics

    return generate_text(_Registry()).decode()


# -- which files, and what of them ---------------------------------------------------------
def test_prom_files_are_exported_with_their_mtime(tmp_path: Path) -> None:
    write(tmp_path, "a.prom", "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n", 1e9)
    write(tmp_path, "b.prom", '# TYPE b gauge\nb{x="1"} 2.5\n', 1.5e9)
    metrics = collect(TextfileCollector(str(tmp_path)))
    assert value(metrics, "a_total") == 3.0 and value(metrics, "b", x="1") == 2.5
    assert value(metrics, "hpcobs_textfile_mtime_seconds", file="a.prom") == 1e9
    assert value(metrics, "hpcobs_textfile_mtime_seconds", file="b.prom") == 1.5e9
    assert value(metrics, "hpcobs_textfile_scrape_error") == 0.0
    assert value(metrics, "hpcobs_textfile_ignored_files") == 0.0
    text = text_of(metrics)
    assert "# HELP a_total Things.\n# TYPE a_total counter\na_total 3.0\n" in text
    assert '# TYPE b gauge\nb{x="1"} 2.5\n' in text


def test_other_names_temporary_files_and_empty_files(tmp_path: Path) -> None:
    write(tmp_path, "x.txt", "x 1\n")
    write(tmp_path, "x.prom.tmp", "x 1\n")
    write(tmp_path, ".x.prom", "x 1\n")  # a hidden temporary file
    write(tmp_path, ".checkpoint-1-m.prom.abc123.tmp", "x 1\n")  # hpcobs-checkpoint's
    write(tmp_path, ".hpcobs_mpi_probe.prom.k2j3.tmp", "x 1\n")  # the probe's
    write(tmp_path, "empty.prom", "")
    write(tmp_path, "comments.prom", "# just a comment\n")
    metrics = collect(TextfileCollector(str(tmp_path)))
    assert files_exported(metrics) == {"empty.prom", "comments.prom"}
    assert value(metrics, "x") is None
    assert value(metrics, "hpcobs_textfile_scrape_error") == 0.0


def test_a_symlink_to_a_file_is_read(tmp_path: Path) -> None:
    target = write(tmp_path, "elsewhere.txt", "linked 1\n")
    (tmp_path / "linked.prom").symlink_to(target)
    assert value(collect(TextfileCollector(str(tmp_path))), "linked") == 1.0


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("truncated.prom", b"good 1\nhalf_writ", "no newline at the end"),
        ("syntax.prom", b"bad{ 1\n", "line 1"),
        ("binary.prom", b"ok 1\n\xff\xfe\n", "not UTF-8"),
        ("stamped.prom", b"stamped 1 1700000000000\n", "client-side timestamps"),
        ("big.prom", b"big 1\n" * 100, "larger than 64 bytes"),
    ],
)
def test_a_bad_file_is_skipped_the_others_served_and_it_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, content: bytes, why: str
) -> None:
    write(tmp_path, "good.prom", "good 1\n")
    write(tmp_path, name, content)
    collector = TextfileCollector(str(tmp_path), max_file_bytes=64)
    with caplog.at_level(logging.WARNING, logger="hpcobs.textfile"):
        for _ in range(3):
            metrics = collect(collector)
            assert value(metrics, "good") == 1.0
            assert value(metrics, "hpcobs_textfile_scrape_error") == 1.0
            assert files_exported(metrics) == {"good.prom"}
    records = [r for r in caplog.records if r.name == "hpcobs.textfile"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].file == name and why in records[0].err  # type: ignore[attr-defined]


def test_a_fixed_file_clears_the_error_and_a_new_breakage_is_logged_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = TextfileCollector(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="hpcobs.textfile"):
        write(tmp_path, "f.prom", "f 1", mtime=1e9)
        assert value(collect(collector), "hpcobs_textfile_scrape_error") == 1.0
        write(tmp_path, "f.prom", "f 1\n", mtime=1e9)
        metrics = collect(collector)
        assert value(metrics, "hpcobs_textfile_scrape_error") == 0.0 and value(metrics, "f") == 1
        write(tmp_path, "f.prom", "f 1", mtime=1e9)
        assert value(collect(collector), "hpcobs_textfile_scrape_error") == 1.0
    assert len([r for r in caplog.records if r.name == "hpcobs.textfile"]) == 2


def test_each_version_of_a_file_is_parsed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []
    real_load = textfile.load

    def counting(file: TextFile) -> textfile.ParsedFile:
        loaded.append(file.name)
        return real_load(file)

    monkeypatch.setattr(textfile, "load", counting)
    write(tmp_path, "a.prom", "a 1\n", mtime=1e9)
    write(tmp_path, "bad.prom", "bad", mtime=1e9)
    collector = TextfileCollector(str(tmp_path))
    for _ in range(3):
        metrics = collect(collector)
        assert value(metrics, "a") == 1.0 and value(metrics, "hpcobs_textfile_scrape_error") == 1
    assert sorted(loaded) == ["a.prom", "bad.prom"]
    # replaced by rename: same size and mtime, a new inode
    write(tmp_path, ".new", "a 2\n", mtime=1e9)
    os.replace(tmp_path / ".new", tmp_path / "a.prom")
    assert value(collect(collector), "a") == 2.0
    (tmp_path / "bad.prom").unlink()
    assert value(collect(collector), "hpcobs_textfile_scrape_error") == 0.0
    assert sorted(loaded) == ["a.prom", "a.prom", "bad.prom"]
    assert set(collector._files) == {"a.prom"}


def test_a_fifo_or_a_directory_named_prom_is_an_error_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.prom")  # opening it for reading would block without O_NONBLOCK
    (tmp_path / "dir.prom").mkdir()
    write(tmp_path, "ok.prom", "ok 1\n")
    metrics = collect(TextfileCollector(str(tmp_path)))
    assert value(metrics, "ok") == 1.0
    assert value(metrics, "hpcobs_textfile_scrape_error") == 1.0
    assert files_exported(metrics) == {"ok.prom"}


def test_the_default_directory_may_be_absent_a_given_one_may_not(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    default = TextfileCollector()
    assert default.directory == DEFAULT_DIRECTORY and not default.explicit
    default.directory = str(absent)  # as if the default directory did not exist
    with pytest.raises(NoDataError):
        default.collect()
    metrics = collect(TextfileCollector(str(absent)))
    assert value(metrics, "hpcobs_textfile_scrape_error") == 1.0
    assert not files_exported(metrics)
    (tmp_path / "file").write_text("")
    assert (
        value(collect(TextfileCollector(str(tmp_path / "file"))), "hpcobs_textfile_scrape_error")
        == 1
    )


# -- families across files (node_exporter's rules) ----------------------------------------------
def test_families_of_several_files_merge_under_the_first_help(tmp_path: Path) -> None:
    write(tmp_path, "a.prom", '# HELP m The m.\n# TYPE m gauge\nm{f="a"} 1\n')
    write(tmp_path, "b.prom", '# TYPE m gauge\nm{f="b"} 2\n# HELP m The m.\n')
    metrics = collect(TextfileCollector(str(tmp_path)))
    family = next(m for m in metrics if m.name == "m")
    assert family.documentation == "The m." and family.type == "gauge"
    assert sorted(s.labels["f"] for s in family.samples) == ["a", "b"]
    assert value(metrics, "hpcobs_textfile_scrape_error") == 0.0


def test_a_family_without_help_gets_node_exporters(tmp_path: Path) -> None:
    write(tmp_path, "a.prom", 'm{f="a"} 1\n')
    write(tmp_path, "b.prom", 'm{f="b"} 1\n')
    family = next(m for m in collect(TextfileCollector(str(tmp_path))) if m.name == "m")
    assert family.documentation == "Metric read from a.prom, b.prom"


@pytest.mark.parametrize(
    ("second", "why"),
    [
        ('# TYPE m counter\nm{f="b"} 1\n', "type counter differs from gauge in a.prom"),
        ('# HELP m Another.\n# TYPE m gauge\nm{f="b"} 1\n', "help text differs"),
    ],
)
def test_a_conflicting_family_of_a_later_file_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, second: str, why: str
) -> None:
    write(tmp_path, "a.prom", '# HELP m The m.\n# TYPE m gauge\nm{f="a"} 1\n')
    write(tmp_path, "b.prom", second + "other 7\n")
    with caplog.at_level(logging.WARNING, logger="hpcobs.textfile"):
        metrics = collect(TextfileCollector(str(tmp_path)))
    assert [s.labels for m in metrics if m.name == "m" for s in m.samples] == [{"f": "a"}]
    assert value(metrics, "other") == 7.0  # the rest of the file is served
    assert files_exported(metrics) == {"a.prom", "b.prom"}
    assert value(metrics, "hpcobs_textfile_scrape_error") == 1.0
    assert any(why in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_a_series_of_two_files_is_served_once(tmp_path: Path) -> None:
    write(tmp_path, "a.prom", 'm{f="x"} 1\n')
    write(tmp_path, "b.prom", 'm{f="x"} 2\nm{f="y"} 3\n')
    metrics = collect(TextfileCollector(str(tmp_path)))
    assert series(metrics, "m") == {("m", (("f", "x"),)): 1.0, ("m", (("f", "y"),)): 3.0}
    assert value(metrics, "hpcobs_textfile_scrape_error") == 1.0


def test_the_daemons_own_metric_names_are_not_taken_from_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.prom",
        'hpcobs_collector_up{collector="gpu"} 0\n'
        "# TYPE hpcobs_gpu_power_watts gauge\nhpcobs_gpu_power_watts 1\n"
        "hpcobs_textfile_scrape_error 0\n"
        "hpcobs_build_info 1\n"
        "hpcobs_mpi_probe_ranks 4\n",
    )
    reserved = daemon_metric_names()
    assert {
        "hpcobs_collector_up",
        "hpcobs_job_cpu_seconds",
        "hpcobs_textfile_mtime_seconds",
    } <= reserved
    metrics = collect(TextfileCollector(str(tmp_path), reserved=reserved))
    names = {s.name for m in metrics for s in m.samples}
    assert "hpcobs_mpi_probe_ranks" in names
    assert "hpcobs_collector_up" not in names and "hpcobs_gpu_power_watts" not in names
    assert value(metrics, "hpcobs_textfile_scrape_error") == 1.0


def test_every_kind_is_written_back_as_read(tmp_path: Path) -> None:
    text = (
        "# HELP c_total C.\n# TYPE c_total counter\nc_total 1\n"
        "# HELP bare C without _total.\n# TYPE bare counter\nbare 2\n"
        "# HELP h H.\n# TYPE h histogram\n"
        'h_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1.5\nh_count 2\n'
        "# HELP s S.\n# TYPE s summary\n"
        's{quantile="0.5"} 0.1\ns_sum 3\ns_count 4\n'
        "# HELP u U.\n# TYPE u untyped\nu NaN\n"
    )
    write(tmp_path, "all.prom", text)
    metrics = collect(TextfileCollector(str(tmp_path)))
    out = text_of(metrics)
    theirs = {
        f.name: (f.type, sorted((s.name, s.value) for s in f.samples if s.name != "u"))
        for f in text_string_to_metric_families(out)
    }
    assert theirs["c"] == ("counter", [("c_total", 1.0)])
    assert theirs["bare"] == ("unknown", [("bare", 2.0)])  # served untyped (see exposed())
    assert theirs["h"][0] == "histogram" and len(theirs["h"][1]) == 4
    assert theirs["s"][0] == "summary" and len(theirs["s"][1]) == 3
    assert "# TYPE u untyped\nu NaN\n" in out
    assert "# TYPE u unknown\nu NaN\n" in generate_openmetrics(_Metrics(metrics)).decode()


class _Metrics:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


# -- the Slurm job grace --------------------------------------------------------------------
def test_a_jobs_samples_last_while_it_runs_and_for_the_grace_after(tmp_path: Path) -> None:
    clock = Clock()
    live = {"101"}
    write(tmp_path, "checkpoint-101-model.prom", checkpoint_text("101"), mtime=clock.now - 86400)
    collector = TextfileCollector(str(tmp_path), job_grace=60, live_jobs=lambda: live, clock=clock)
    assert value(
        collect(collector), "hpcobs_checkpoint_duration_seconds", job_id="101", name="model"
    )

    live.clear()  # the job ends
    clock.now += 59
    metrics = collect(collector)
    assert value(metrics, "hpcobs_checkpoints_total", job_id="101", name="model", result="success")
    assert files_exported(metrics) == {"checkpoint-101-model.prom"}

    clock.now += 2  # grace passed: the file is ignored as a whole, and kept on disk
    metrics = collect(collector)
    assert not [s for m in metrics for s in m.samples if s.name.startswith("hpcobs_checkpoint")]
    assert not files_exported(metrics)
    assert value(metrics, "hpcobs_textfile_ignored_files") == 1.0
    assert value(metrics, "hpcobs_textfile_scrape_error") == 0.0
    assert (tmp_path / "checkpoint-101-model.prom").exists()


def test_a_job_never_seen_here_is_judged_by_the_files_mtime(tmp_path: Path) -> None:
    clock = Clock()
    write(tmp_path, "fresh.prom", checkpoint_text("7"), mtime=clock.now - 30)
    write(tmp_path, "stale.prom", checkpoint_text("8"), mtime=clock.now - 90)
    collector = TextfileCollector(str(tmp_path), job_grace=60, live_jobs=set, clock=clock)
    metrics = collect(collector)
    assert files_exported(metrics) == {"fresh.prom"}
    assert value(metrics, "hpcobs_textfile_ignored_files") == 1.0
    write(tmp_path, "stale.prom", checkpoint_text("8"), mtime=clock.now)  # a new checkpoint
    assert files_exported(collect(collector)) == {"fresh.prom", "stale.prom"}


def test_only_the_samples_of_jobs_gone_leave_a_file(tmp_path: Path) -> None:
    clock = Clock()
    text = 'm{job_id="1"} 1\nm{job_id="2"} 2\nm{job_id="none"} 3\nnode_level 4\n'
    write(tmp_path, "prolog.prom", text, mtime=clock.now - 3600)
    collector = TextfileCollector(str(tmp_path), job_grace=60, live_jobs=lambda: {"2"}, clock=clock)
    metrics = collect(collector)
    assert series(metrics, "m") == {
        ("m", (("job_id", "2"),)): 2.0,
        ("m", (("job_id", "none"),)): 3.0,  # not a Slurm job id: not judged
    }
    assert value(metrics, "node_level") == 4.0
    assert files_exported(metrics) == {"prolog.prom"}
    assert value(metrics, "hpcobs_textfile_ignored_files") == 0.0


def test_a_histogram_of_a_gone_job_leaves_whole(tmp_path: Path) -> None:
    clock = Clock()
    text = (
        "# TYPE h histogram\n"
        'h_bucket{job_id="1",le="+Inf"} 1\nh_sum{job_id="1"} 1\nh_count{job_id="1"} 1\n'
        'h_bucket{job_id="2",le="+Inf"} 1\nh_sum{job_id="2"} 1\nh_count{job_id="2"} 1\n'
    )
    write(tmp_path, "h.prom", text, mtime=clock.now - 3600)
    collector = TextfileCollector(str(tmp_path), job_grace=60, live_jobs=lambda: {"1"}, clock=clock)
    family = next(m for m in collect(collector) if m.name == "h")
    assert {s.labels["job_id"] for s in family.samples} == {"1"} and len(family.samples) == 3


def test_grace_zero_keeps_every_job_and_asks_nobody(tmp_path: Path) -> None:
    def never() -> set[str]:
        raise AssertionError("not asked")

    write(tmp_path, "old.prom", checkpoint_text("5"), mtime=1.0)
    metrics = collect(TextfileCollector(str(tmp_path), job_grace=0, live_jobs=never))
    assert files_exported(metrics) == {"old.prom"}


def test_attribution_is_asked_only_when_a_file_names_a_job(tmp_path: Path) -> None:
    asked: list[int] = []

    def live() -> set[str]:
        asked.append(1)
        return set()

    write(tmp_path, "plain.prom", "plain 1\n")
    collector = TextfileCollector(str(tmp_path), live_jobs=live)
    collect(collector)
    assert not asked
    write(tmp_path, "job.prom", checkpoint_text("3"))
    collect(collector)
    assert asked == [1]


def test_when_attribution_fails_nothing_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> set[str]:
        raise OSError("procfs gone")

    write(tmp_path, "old.prom", checkpoint_text("5"), mtime=1.0)
    with caplog.at_level(logging.WARNING, logger="hpcobs.textfile"):
        metrics = collect(TextfileCollector(str(tmp_path), job_grace=60, live_jobs=broken))
    assert files_exported(metrics) == {"old.prom"}
    assert any("cannot tell which jobs run here" in r.getMessage() for r in caplog.records)


def test_the_last_seen_table_holds_only_jobs_that_files_name(tmp_path: Path) -> None:
    clock = Clock()
    collector = TextfileCollector(
        str(tmp_path), job_grace=60, live_jobs=lambda: {"1", "2", "3"}, clock=clock
    )
    write(tmp_path, "a.prom", checkpoint_text("1"))
    collect(collector)
    assert set(collector._last_seen) == {"1"}
    (tmp_path / "a.prom").unlink()
    collect(collector)
    assert collector._last_seen == {}


def test_attribution_of_this_process_keeps_its_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real attributor over a procfs copy where this process has a job cgroup."""
    proc = tmp_path / "proc"
    pid = os.getpid()
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(Path(f"/proc/{pid}/stat").read_text())
    (proc / str(pid) / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_4242/step_0\n")
    attributor = JobAttributor(str(proc), environ_fallback=False)
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    write(textfiles, "checkpoint-4242-model.prom", checkpoint_text("4242"), mtime=1.0)
    write(textfiles, "checkpoint-4243-model.prom", checkpoint_text("4243"), mtime=1.0)
    collector = TextfileCollector(
        str(textfiles),
        job_grace=60,
        live_jobs=lambda: {a.job_id for a in attributor.attribute().values()},
    )
    assert files_exported(collect(collector)) == {"checkpoint-4242-model.prom"}


# -- flags and registration -------------------------------------------------------------------
def build(*flags: str) -> list[object]:
    specs = discover()
    args = parse_args(build_parser(PROGRAM, "test", DEFAULT_LISTEN, specs, paths=True), list(flags))
    return build_collectors(args, specs)


def test_enabled_by_default_and_built_from_its_flags(tmp_path: Path) -> None:
    specs = discover()
    args = parse_args(build_parser(PROGRAM, "test", DEFAULT_LISTEN, specs, paths=True), [])
    assert "textfile" in [s.name for s in enabled_collectors(args, specs)]
    collectors = build(
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={tmp_path}",
        "--collector.textfile.job-grace=90s",
        "--collector.textfile.max-file-bytes=1000",
    )
    (collector,) = collectors
    assert isinstance(collector, TextfileCollector)
    assert (
        collector.directory,
        collector.explicit,
        collector.job_grace,
        collector.max_file_bytes,
    ) == (
        str(tmp_path),
        True,
        90.0,
        1000,
    )
    assert "hpcobs_gpu_up" in collector.reserved
    write(tmp_path, "j.prom", checkpoint_text(str(os.getpid())), mtime=1.0)
    assert value(collect(collector), "hpcobs_textfile_ignored_files") == 1.0  # no such job here
    (default,) = build("--collector.disable-defaults", "--collector.textfile")
    assert isinstance(default, TextfileCollector) and default.directory == DEFAULT_DIRECTORY
    assert not default.explicit


def test_bad_flag_values_are_refused() -> None:
    with pytest.raises(ValueError):
        TextfileCollector(job_grace=-1)
    with pytest.raises(ValueError):
        TextfileCollector(job_grace=float("nan"))
    with pytest.raises(ValueError):
        TextfileCollector(max_file_bytes=0)
    with pytest.raises(SystemExit):
        build("--collector.textfile.job-grace=soon")


def test_the_suite_agrees_on_one_directory(tmp_path: Path) -> None:
    assert DEFAULT_DIRECTORY == "/var/lib/hpcobs/textfile"
    assert checkpoint_outputs.DEFAULT_TEXTFILE_DIR == DEFAULT_DIRECTORY
    assert probe_outputs.DEFAULT_TEXTFILE_DIR == DEFAULT_DIRECTORY
    unit = (REPO / "systemd" / "hpcobs-mpi-probe.service").read_text()
    assert f"--textfile-dir {DEFAULT_DIRECTORY} " in unit
    assert f"ReadWritePaths={DEFAULT_DIRECTORY}\n" in unit


def test_tmpfiles_makes_the_directory_sticky_and_world_writable(tmp_path: Path) -> None:
    tool = shutil.which("systemd-tmpfiles")
    if tool is None:
        pytest.fail("systemd-tmpfiles not found: install Debian's `systemd`")
    conf = REPO / "systemd" / "hpcobs-textfile.conf"
    done = subprocess.run(
        [tool, "--create", f"--root={tmp_path}", str(conf)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    made = tmp_path / DEFAULT_DIRECTORY.lstrip("/")
    assert made.is_dir() and made.stat().st_mode & 0o7777 == 0o1777


# -- fuzzing whole directories --------------------------------------------------------------
VALID = [
    checkpoint_text("11"),
    '# HELP m The m.\n# TYPE m gauge\nm{f="a"} 1\n',
    "# TYPE m counter\nm 1\n",
    '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    'hpcobs_collector_up{collector="x"} 1\n',
    'weird{l="\\"\\\\\\n"} -Inf\n',
]
contents = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.sampled_from(VALID).map(str.encode),
    st.tuples(
        st.sampled_from(VALID),
        st.integers(0, 400),
        st.sampled_from(['"', "{", "\n", "\\", " ", "x"]),
    ).map(
        lambda t: (t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) :]).encode()
    ),
)
file_names = st.from_regex(r"[a-z]{1,6}\.prom", fullmatch=True)


@FUZZ
@given(
    files=st.dictionaries(file_names, contents, max_size=6),
    live=st.sets(st.sampled_from(["11", "12"])),
)
def test_whatever_the_files_hold_a_scrape_succeeds_and_is_valid(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes], live: set[str]
) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    for name, data in files.items():
        write(directory, name, data, mtime=1.0)
    collector = TextfileCollector(
        str(directory), job_grace=60, live_jobs=lambda: live, reserved=daemon_metric_names()
    )
    metrics = collect(collector)
    error = value(metrics, "hpcobs_textfile_scrape_error")
    assert error in (0.0, 1.0)
    if error == 0.0:
        assert files_exported(metrics) | _ignored_or_empty(metrics, files) >= set(files)
    text = text_of(metrics)
    parsed = list(text_string_to_metric_families(text))  # valid for prometheus_client
    assert sum(len(f.samples) for f in parsed) == sum(len(m.samples) for m in metrics)
    generate_openmetrics(_Metrics(metrics))
    parse(text)  # and for ourselves: one family per name, no duplicate series


def _ignored_or_empty(metrics: list[Metric], files: dict[str, bytes]) -> set[str]:
    """Files that may be missing from the mtime series without an error: ignored job files."""
    ignored = value(metrics, "hpcobs_textfile_ignored_files") or 0.0
    return set(files) if ignored else set()


@FUZZ
@given(rounds=st.lists(st.dictionaries(file_names, contents, max_size=4), min_size=2, max_size=4))
def test_a_collector_that_saw_earlier_versions_serves_what_a_new_one_serves(
    tmp_path_factory: pytest.TempPathFactory, rounds: list[dict[str, bytes]]
) -> None:
    directory = tmp_path_factory.mktemp("rounds")
    kept = TextfileCollector(str(directory), job_grace=0)
    for files in rounds:
        for old in directory.iterdir():
            if old.name not in files:
                old.unlink()
        for name, data in files.items():  # as writers do: a new file renamed into place
            write(directory, ".tmp", data, mtime=1.0)
            os.replace(directory / ".tmp", directory / name)
        assert text_of(collect(kept)) == text_of(
            collect(TextfileCollector(str(directory), job_grace=0))
        )
