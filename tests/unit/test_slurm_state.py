"""The state file at start-up and when it cannot be written (issue 14, items 9 and 11a).

A corrupt state file gives exactly one log line naming the file, what is wrong and what
happens / what to do; it is moved aside (not lost) and the exporter starts afresh instead of
refusing to start. An unwritable state directory is said once, not every cycle, and once more
when saving works again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from hpcobs.exporters.runtime.log import LogfmtFormatter
from hpcobs.exporters.slurm.backend import Backend
from hpcobs.exporters.slurm.collector import SlurmCollector, build_collector, families, make_ledger
from hpcobs.exporters.slurm.ledger import Ledger
from hpcobs.exporters.slurm.model import Job, License, Node, Reservation, SchedulerStats, make_job
from hpcobs.exporters.slurm.options import SlurmOptions
from hpcobs.exporters.slurm.poller import Poller
from hpcobs.exporters.slurm.state import FORMAT, load_state, save_state

pytestmark = pytest.mark.unit

T0 = 1_800_000_000
DATA = Path(__file__).resolve().parent.parent / "data" / "slurm"


def finished(job_id: int) -> Job:
    return make_job(
        job_id=job_id,
        array_job_id=job_id,
        array_tasks="",
        partition="debug",
        state="completed",
        reason="",
        eligible_time=T0 - 100,
        start_time=T0 - 50,
        end_time=T0 - 10,
        cpus=1,
        memory_bytes=0,
        gpus=0,
        licenses=(),
        nodes="n1",
    )


class ListBackend(Backend):
    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.job_list: list[Job] = []

    def jobs(self) -> list[Job]:
        return list(self.job_list)

    def nodes(self) -> list[Node]:
        return []

    def scheduler(self) -> SchedulerStats:
        return SchedulerStats()

    def licenses(self) -> list[License]:
        return []

    def reservations(self) -> list[Reservation]:
        return []


def good_state(tmp_path: Path) -> dict[str, Any]:
    """A state document as the exporter writes it, with one finished job counted."""
    ledger = make_ledger(SlurmOptions())
    ledger.apply_snapshot([finished(1)], T0)
    path = tmp_path / "good.json"
    save_state(path, {"saved_at": T0, "ledger": ledger.to_state()})
    doc = load_state(path)
    assert doc is not None
    path.unlink()
    return doc


def with_ledger(doc: dict[str, Any], **changes: Any) -> bytes:
    out = json.loads(json.dumps(doc))
    out["ledger"].update(changes)
    return json.dumps(out).encode()


def without(doc: dict[str, Any], *path: str) -> bytes:
    out = json.loads(json.dumps(doc))
    where = out
    for key in path[:-1]:
        where = where[key]
    del where[path[-1]]
    return json.dumps(out).encode()


def corruptions(doc: dict[str, Any]) -> dict[str, tuple[bytes, str]]:
    """kind → (file content, words the problem must contain)."""
    text = json.dumps(doc).encode()
    return {
        "bad-json": (b"{not json", "not valid JSON"),
        "truncated": (text[: len(text) // 2], "cut short"),
        "empty": (b"", "empty"),
        "binary": (b"\xff\xfe\x00\x01 garbage", "byte 0xff at offset 0 is not UTF-8"),
        "other-kind": (json.dumps({"kind": "other"}).encode(), "not an hpcobs-slurm-exporter"),
        "not-an-object": (b"[1, 2]", "not an hpcobs-slurm-exporter"),
        "no-ledger": (without(doc, "ledger"), "'ledger' is missing"),
        "ledger-not-object": (json.dumps({"kind": FORMAT, "ledger": 5}).encode(), "not a JSON"),
        "ledger-key-missing": (without(doc, "ledger", "finished"), "lacks the key 'finished'"),
        "keys-missing": (without(doc, "ledger", "keys"), "lacks the key 'keys'"),
        "wrong-int": (with_ledger(doc, hwm="x"), "invalid literal for int()"),
        "wrong-shape": (with_ledger(doc, finished=[[1, 2]]), "malformed value"),
        "wrong-format": (with_ledger(doc, format=99), "unknown format 99"),
        "bad-jobcomp": (
            json.dumps({**doc, "jobcomp": {"dev": "x"}}).encode(),
            "jobcomp read position is malformed",
        ),
    }


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("hpcobs") and r.levelno >= logging.WARNING
    ]


def build(state: Path, **kw: Any) -> SlurmCollector:
    return build_collector(SlurmOptions(backend="portable", state_file=state, **kw), start=False)


def published_finished(collector: SlurmCollector) -> float:
    for family in families(collector.poller.published, T0, 90):
        for s in family.samples:
            if s.name == "hpcobs_slurm_jobs_finished_total" and s.labels["state"] == "completed":
                return s.value
    return 0.0


KINDS = list(corruptions({"kind": FORMAT, "ledger": Ledger().to_state()}))


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_state_file_is_moved_aside_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    content, words = corruptions(good_state(tmp_path))[kind]
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.INFO, logger="hpcobs"):
        collector = build(path)  # before: KeyError 'ledger', UnicodeDecodeError, … stop start-up
    try:
        [record] = problems(caplog)
        assert record.levelno == logging.ERROR
        assert getattr(record, "path", None) == str(path)
        assert words in getattr(record, "problem", ""), record.__dict__
        moved = Path(getattr(record, "moved_to", ""))
        assert moved.name.startswith("state.json.corrupt-") and moved.parent == tmp_path
        assert moved.read_bytes() == content  # kept for a look, not lost
        assert not path.exists()
        assert "moved aside" in record.getMessage() and "afresh" in record.getMessage()
        assert str(moved) in getattr(record, "hint", "")
        line = LogfmtFormatter().format(record)
        assert "\n" not in line and f"path={path}" in line and "problem=" in line
        # The exporter runs on, counting afresh, and saves a good state file again.
        assert collector.poller.ledger.tracked_jobs() == 0
        backend = ListBackend()
        backend.job_list = [finished(2)]
        collector.poller.backend = backend
        assert collector.poller.run_cycle()
        assert published_finished(collector) == 1
        saved = load_state(path)
        assert saved is not None and saved["ledger"]["hwm"] == 2
    finally:
        collector.close()


def test_good_state_file_is_restored_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(good_state(tmp_path)))
    with caplog.at_level(logging.INFO, logger="hpcobs"):
        collector = build(path)
    try:
        assert problems(caplog) == []
        assert published_finished(collector) == 1
        assert list(tmp_path.iterdir()) == [path]
    finally:
        collector.close()


def test_corrupt_state_with_a_jobcomp_log_reads_only_new_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Starting afresh must not count the whole jobcomp history a second time."""
    log = tmp_path / "jobcomp.log"
    log.write_text((DATA / "jobcomp-22.05.log").read_text())
    path = tmp_path / "state.json"
    path.write_bytes(b"\xff")
    with caplog.at_level(logging.INFO, logger="hpcobs"):
        collector = build(path, jobcomp_file=log)
    try:
        [record] = problems(caplog)
        assert "jobcomp log is read from its end" in record.getMessage()
        tail = collector.poller.jobcomp
        assert tail is not None
        assert [j for chunk in tail.read() for j in chunk] == []
    finally:
        collector.close()


def test_corrupt_state_that_cannot_be_moved_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"{not json")

    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)
    with caplog.at_level(logging.INFO, logger="hpcobs"):
        collector = build(path)
    try:
        [record] = problems(caplog)
        assert getattr(record, "path", None) == str(path)
        assert "not valid JSON" in getattr(record, "problem", "")
        assert "move it away or delete it and restart" in record.getMessage()
        assert collector.poller.state_file is None  # never saved over
        backend = ListBackend()
        backend.job_list = [finished(1)]
        collector.poller.backend = backend
        collector.poller.run_cycle()
        assert published_finished(collector) == 1  # counted in memory
        assert path.read_bytes() == b"{not json"
    finally:
        collector.close()


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_unreadable_state_file_is_said_once_and_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    path = tmp_path / "state.json"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # opening it for reading would block: it must not
    built: list[SlurmCollector] = []
    with caplog.at_level(logging.INFO, logger="hpcobs"):
        thread = threading.Thread(target=lambda: built.append(build(path)), daemon=True)
        thread.start()
        thread.join(10)
    assert built, "building the collector blocked on the state file"
    try:
        [record] = problems(caplog)
        assert getattr(record, "path", None) == str(path)
        assert "not a regular file" in getattr(record, "problem", "")
        assert "running without one" in record.getMessage()
        assert getattr(record, "hint", "")
        assert built[0].poller.state_file is None
        assert path.exists()
    finally:
        built[0].close()


# -- an unwritable state directory (item 11a) -------------------------------------------------


def unwritable_by_a_file_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state path's parent is a regular file: every save fails with ENOTDIR (root too)."""
    blocker = tmp_path / "statedir"
    blocker.write_text("not a directory")
    return blocker / "state.json"


def unwritable_by_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        if getattr(replace, "broken", True):
            raise PermissionError(13, "Permission denied")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return tmp_path / "state.json"


@pytest.mark.parametrize("make_unwritable", [unwritable_by_a_file_parent, unwritable_by_replace])
def test_unwritable_state_directory_warns_once_and_says_when_it_works_again(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    make_unwritable: Any,
) -> None:
    path = make_unwritable(tmp_path, monkeypatch)
    backend = ListBackend()
    poller = Poller(backend, Ledger(), state_file=path, clock=lambda: float(T0))
    with caplog.at_level(logging.INFO, logger="hpcobs"):
        for n in range(1, 7):  # every cycle has something new to save
            backend.job_list = [finished(i) for i in range(1, n + 1)]
            poller.run_cycle()
        warned = [r for r in problems(caplog) if "cannot save the state file" in r.getMessage()]
        assert len(warned) == 1  # before: one per cycle
        assert getattr(warned[0], "path", None) == str(path)
        assert getattr(warned[0], "err", "") and getattr(warned[0], "hint", "")
        assert poller.published.state_save_errors == 6
        assert poller.published.ledger.finished == {}  # held back until saved: exactly once
        # Writing works again: said once, and the counts are published.
        if path.parent.is_file():
            path.parent.unlink()
            path.parent.mkdir()
        else:
            os.replace.broken = False  # type: ignore[attr-defined]
        for _ in range(3):
            poller.run_cycle()
    again = [r for r in caplog.records if "saved again" in r.getMessage()]
    assert len(again) == 1 and getattr(again[0], "failed_saves", None) == 6
    assert len([r for r in problems(caplog) if "cannot save" in r.getMessage()]) == 1
    assert sum(poller.published.ledger.finished.values()) == 6
    assert load_state(path) is not None
