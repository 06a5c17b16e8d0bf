"""The incidents' state file (`--incidents.state-file`): one JSON document, written atomically.

As the Slurm exporter's state file (`hpcobs.exporters.slurm.state`): replaced with
write-to-temporary + fsync + rename + fsync of the folder, so a crash leaves the old state or
the new one, never a mix. At start-up a file that is corrupt (not UTF-8, not JSON, cut short,
not this daemon's, wrong fields or types) is renamed to `<file>.corrupt-<UTC time>` and the
incidents start afresh, with one error line that names the file, the problem and what that
means; a file that exists but cannot be read (permissions, not a regular file) is left alone
and the daemon runs without saving (saving over it would destroy it). Either way it starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("hpcobs.slo")

KIND = "hpcobs-slo-incidents"
MAX_STATE_BYTES = 256 << 20  # far above any state within the daemon's caps

Restored = Literal["absent", "restored", "afresh", "unusable"]
"""No file yet; loaded; corrupt, moved aside, starting afresh; unreadable (or corrupt and not
movable), left alone and not to be written."""


class StateFileError(Exception):
    """The state file exists but cannot be read (`corrupt` False) or is malformed (True)."""

    def __init__(self, path: Path, problem: str, *, corrupt: bool) -> None:
        self.path = path
        self.problem = problem
        self.corrupt = corrupt
        super().__init__(f"{path}: {problem}")


def parse_state(data: bytes) -> dict[str, Any]:
    """The document in a state file's bytes; ValueError in plain words when it is not one."""
    if not data.strip():
        raise ValueError("it is empty (a write cut short?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"it is not text (byte {exc.start} is not UTF-8)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"it is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"it is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise ValueError(f'it is not an incidents state file (no "kind": "{KIND}")')
    return doc


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved document, or None when there is no file yet. Removes temporary files a crash
    during a save left behind; never blocks on a FIFO. Raises StateFileError."""
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StateFileError(path, f"cannot read it: {exc.strerror or exc}", corrupt=False) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(path, "it is not a regular file", corrupt=False)
        if st.st_size > MAX_STATE_BYTES:
            raise StateFileError(path, f"it is too large ({st.st_size} bytes)", corrupt=True)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as exc:
        raise StateFileError(path, f"cannot read it: {exc.strerror or exc}", corrupt=False) from exc
    finally:
        os.close(fd)
    try:
        return parse_state(b"".join(chunks))
    except ValueError as exc:
        raise StateFileError(path, str(exc), corrupt=True) from exc


def move_aside(path: Path, now: float) -> Path:
    """Rename `path` to `<path>.corrupt-<UTC time>` (never over an existing file); OSError."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        n += 1
    os.rename(path, target)
    return target


def restore_state(
    path: Path,
    apply: Callable[[Mapping[str, Any]], None],
    *,
    clock: Callable[[], float] = time.time,
) -> Restored:
    """Load `path` and hand the document to `apply`, which raises ValueError (in plain words,
    changing nothing) when its content is malformed. Logs one line for a file that cannot be
    used; never raises for the file's content."""
    try:
        doc = load_state(path)
        if doc is None:
            return "absent"
        apply(doc)
        return "restored"
    except StateFileError as exc:
        problem, corrupt = exc.problem, exc.corrupt
    except ValueError as exc:
        problem, corrupt = str(exc), True
    if not corrupt:
        log.error(
            "cannot read the incidents state file: running without one (nothing saved); fix "
            "it and restart",
            extra={"path": str(path), "problem": problem},
        )
        return "unusable"
    try:
        moved = move_aside(path, clock())
    except OSError as exc:
        log.error(
            "corrupt incidents state file, and it cannot be moved aside: running without one "
            "(nothing saved); move it away and restart",
            extra={"path": str(path), "problem": problem, "err": exc.strerror or str(exc)},
        )
        return "unusable"
    log.error(
        "corrupt incidents state file moved aside; open incidents and counts start afresh",
        extra={"path": str(path), "problem": problem, "moved_to": str(moved)},
    )
    return "afresh"


def save_state(path: Path, doc: Mapping[str, Any]) -> int:
    """Replace `path` with `doc` atomically; returns the bytes written. Raises OSError."""
    data = json.dumps({"kind": KIND, **doc}, separators=(",", ":")).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return len(data)
