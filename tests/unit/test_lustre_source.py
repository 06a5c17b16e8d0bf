"""The Lustre source and job model without metrics: `LustreSource.scan()` → `LustreScan`,
`JobFolder.fold()` → `JobSeries` (the collector's families are tested in
test_lustre_collector.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcobs.exporters.parse.lustre import JobIOTable
from hpcobs.exporters.sources.lustre import LustreSource, TargetJobs
from hpcobs.exporters.sources.lustre_jobs import JobFolder, JobSeries, TargetJobSeries, delta

from harness.lustre_trees import build_server_212

pytestmark = pytest.mark.unit


def source_of(root: Path) -> LustreSource:
    return LustreSource(root / "proc", root / "sys", lctl_path="")


def test_scan_of_the_2_10_tree(fixture_trees: Path) -> None:
    scan = source_of(fixture_trees / "lustre-2.10-hpe").scan()
    assert scan is not None
    assert scan.health_ok is True and scan.version == "2.10.1"
    [client] = scan.clients
    assert client.fs == "lustrefs" and client.stats is not None
    assert client.space.kbytes_total == 283010362368
    assert {(i.fs, i.target) for i in scan.imports} >= {("lustrefs", "lustrefs-OST0000")}
    assert all(i.state is not None for i in scan.imports)
    by_name = {t.target: t for t in scan.targets}
    ost0, mdt0 = by_name["lustrefs-OST0000"], by_name["lustrefs-MDT0000"]
    assert ost0.kind == "obdfilter" and ost0.md_stats is None
    assert ost0.space.kbytes_total == 47168367616 and ost0.num_exports == 3
    assert ost0.recovery == "complete" and ost0.brw is not None
    assert ost0.jobs is not None and ost0.jobs.ops is None and len(ost0.jobs.io) > 0
    assert mdt0.kind == "mdt" and mdt0.md_stats is not None and mdt0.recovery == "inactive"
    assert mdt0.jobs is not None and mdt0.jobs.ops is not None  # MDTs keep every counter


def test_no_lustre_is_no_scan(tmp_path: Path) -> None:
    assert source_of(tmp_path).scan() is None


def test_a_target_without_files_is_in_the_scan_with_nothing_known(tmp_path: Path) -> None:
    build_server_212(tmp_path, {"scratch-OST0000": {}})
    (tmp_path / "proc/fs/lustre/obdfilter/scratch-OST0001").mkdir(parents=True)
    scan = source_of(tmp_path).scan()
    assert scan is not None
    [empty] = [t for t in scan.targets if t.target == "scratch-OST0001"]
    assert empty.stats is None and empty.space.kbytes_total is None and empty.jobs is None


def table(fs: str, target: str, jobs: dict[str, tuple[int, int]]) -> TargetJobs:
    ids = list(jobs)
    reads = [jobs[j][0] for j in ids]
    writes = [jobs[j][1] for j in ids]
    io = JobIOTable(ids, [1] * len(ids), reads, [1] * len(ids), writes)
    return TargetJobs(fs, target, io, None)


def series_of(folded: JobSeries | None, target: str) -> TargetJobSeries:
    assert folded is not None
    [found] = [t for t in folded.targets if t.target == target]
    return found


def test_fold_keeps_the_busiest_and_other_grows_by_deltas() -> None:
    folder = JobFolder(max_jobs=1)
    present = {("fs", "fs-OST0000")}
    first = folder.fold([table("fs", "fs-OST0000", {"a": (0, 100), "b": (0, 10)})], present)
    assert first is not None and (first.seen, first.folded) == (2, 1)
    t = series_of(first, "fs-OST0000")
    assert list(t.job_ids) == ["a"] and list(t.write_bytes) == [100]
    assert t.other == {"read_bytes": 0.0, "write_bytes": 10.0}
    # b grew by 5, c is new (3): other grows by 8, never goes down
    second = folder.fold(
        [table("fs", "fs-OST0000", {"a": (0, 200), "b": (0, 15), "c": (0, 3)})], present
    )
    assert series_of(second, "fs-OST0000").other["write_bytes"] == 18.0
    # everything fits again: no job is folded, "other" keeps its total
    folder.max_jobs = 10
    third = folder.fold([table("fs", "fs-OST0000", {"a": (0, 200), "b": (0, 15)})], present)
    t = series_of(third, "fs-OST0000")
    assert set(t.job_ids) == {"a", "b"} and t.other["write_bytes"] == 18.0


def test_fold_without_folding_has_no_other_and_a_gone_target_forgets() -> None:
    folder = JobFolder(max_jobs=0)
    present = {("fs", "fs-OST0000")}
    folder.fold([table("fs", "fs-OST0000", {"a": (1, 2)})], present)
    assert folder.fold([], set()) is None  # the target went away: its ledger too
    again = folder.fold([table("fs", "fs-OST0000", {"a": (1, 2)})], present)
    assert series_of(again, "fs-OST0000").other == {"read_bytes": 1.0, "write_bytes": 2.0}
    wide = JobFolder(max_jobs=5).fold([table("fs", "fs-OST0000", {"a": (1, 2)})], present)
    assert series_of(wide, "fs-OST0000").other == {}
    with pytest.raises(ValueError):
        JobFolder(max_jobs=-1)


def test_delta_treats_a_counter_that_went_down_as_restarted() -> None:
    assert delta(None, 5) == 0
    assert delta(7, None) == 7
    assert delta(7, 5) == 2
    assert delta(3, 5) == 3
