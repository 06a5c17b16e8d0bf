"""A daemon's state file: one JSON document, written atomically, that never stops the daemon.

Used by the Slurm exporter (the job ledger, `exporters/slurm/state.py`) and the SLO daemon
(open incidents, `slo/incidents_state.py`), each with a `StateFile` of its own kind.

The file is replaced with write-to-temporary + fsync + rename + fsync of the folder, so a crash
leaves either the old or the new state, never a mix. At start-up (`StateFile.restore`) a file
that is corrupt (not UTF-8, not JSON, cut short, not this daemon's, wrong fields or types) is
renamed to `<file>.corrupt-<UTC time>` and the daemon starts afresh; one error line names the
file, what is wrong and what that means. A file that exists but cannot be read (permissions,
EIO, not a regular file) is left alone and the daemon runs without one until it is fixed and
the daemon restarted: saving over it would destroy it. Either way the daemon starts; it never
crash-loops on its own state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Restored = Literal["absent", "restored", "afresh", "unusable"]
"""What `StateFile.restore` did: no file yet; loaded; corrupt, moved aside, starting afresh;
unreadable (or corrupt and not movable), left alone and not to be written."""


class StateFileError(Exception):
    """The state file exists but cannot be read (`corrupt` False) or is malformed (True)."""

    def __init__(self, path: Path, problem: str, *, corrupt: bool) -> None:
        self.path = path
        self.problem = problem
        self.corrupt = corrupt
        super().__init__(f"{path}: {problem}; move it away (or delete it) to start afresh")


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


@dataclass(frozen=True)
class StateFile:
    """One daemon's kind of state file. `kind` is the document's "kind" field; `what` names it
    in errors ("an hpcobs-slurm-exporter state file"); `name` in log lines ("state file");
    `unusable` says what running without one means; `afresh` what starting afresh means."""

    kind: str
    what: str
    max_bytes: int
    log: logging.Logger
    name: str
    unusable: str
    afresh: str
    restart: str

    def parse(self, data: bytes) -> dict[str, Any]:
        """The document in a state file's bytes; ValueError in plain words when it is not one."""
        if not data.strip():
            raise ValueError("it is empty (a write cut short?)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"it is not text (byte 0x{data[exc.start]:02x} at offset {exc.start} is not "
                "UTF-8): binary garbage, not a state file"
            ) from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            ended = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
            cut = " (cut short?)" if ended else ""
            raise ValueError(
                f"it is not valid JSON{cut}: {exc.msg} (line {exc.lineno} column {exc.colno})"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"it is not valid JSON ({type(exc).__name__})") from None
        if not isinstance(doc, dict) or doc.get("kind") != self.kind:
            raise ValueError(f'it is not {self.what} (no "kind": "{self.kind}")')
        return doc

    def load(self, path: Path) -> dict[str, Any] | None:
        """The saved document, or None when there is no state file yet. Removes temporary
        files a crash during a save left behind. Never blocks on a FIFO (opened non-blocking,
        and only a regular file is read). Raises StateFileError."""
        with contextlib.suppress(OSError):
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StateFileError(
                path, f"cannot read it: {exc.strerror or exc}", corrupt=False
            ) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StateFileError(path, "it is not a regular file", corrupt=False)
            if st.st_size > self.max_bytes:
                raise StateFileError(path, f"it is too large ({st.st_size} bytes)", corrupt=True)
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        except OSError as exc:
            raise StateFileError(
                path, f"cannot read it: {exc.strerror or exc}", corrupt=False
            ) from exc
        finally:
            os.close(fd)
        try:
            return self.parse(b"".join(chunks))
        except ValueError as exc:
            raise StateFileError(path, str(exc), corrupt=True) from exc

    def restore(
        self,
        path: Path,
        apply: Callable[[Mapping[str, Any]], None],
        *,
        afresh: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Restored:
        """Load `path` and hand the document to `apply`, which raises ValueError (in plain
        words, changing nothing) when its content is malformed. Logs one line for a file that
        cannot be used (`afresh`, default the StateFile's, says what starting afresh means);
        never raises for the file's content."""
        try:
            doc = self.load(path)
            if doc is None:
                return "absent"
            apply(doc)
            return "restored"
        except StateFileError as exc:
            problem, corrupt = exc.problem, exc.corrupt
        except ValueError as exc:
            problem, corrupt = str(exc), True
        if not corrupt:
            self.log.error(
                f"cannot read the {self.name}: running without one ({self.unusable}); fix it "
                f"and {self.restart}",
                extra={
                    "path": str(path),
                    "problem": problem,
                    "hint": "make it a regular file readable and writable by the daemon's user, "
                    "or move it away to start afresh",
                },
            )
            return "unusable"
        try:
            moved = move_aside(path, clock())
        except OSError as exc:
            self.log.error(
                f"corrupt {self.name}, and it cannot be moved aside: running without one "
                f"({self.unusable}); move it away or delete it and {self.restart}",
                extra={"path": str(path), "problem": problem, "err": exc.strerror or str(exc)},
            )
            return "unusable"
        self.log.error(
            f"corrupt {self.name} moved aside; {afresh or self.afresh}",
            extra={
                "path": str(path),
                "problem": problem,
                "moved_to": str(moved),
                "hint": f"nothing to do to keep running; look at or delete {moved}",
            },
        )
        return "afresh"

    def save(self, path: Path, doc: Mapping[str, Any]) -> int:
        """Replace `path` with `doc` atomically; returns the bytes written. Raises OSError."""
        data = json.dumps({"kind": self.kind, **doc}, separators=(",", ":")).encode()
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
