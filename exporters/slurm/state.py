"""The exporter's state file: the job ledger and the jobcomp read position, written atomically.

One JSON document, replaced with write-to-temporary + fsync + rename + fsync of the folder,
so a crash leaves either the old or the new state, never a mix. A state file that exists but
cannot be read stops start-up (starting afresh would count jobs a second time); move it away
to start afresh on purpose.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT = "hpcobs-slurm-exporter-state"


class StateFileError(Exception):
    """The state file exists but is unreadable or malformed."""


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved document, or None when there is no state file yet. Removes temporary files
    a crash during a save left behind."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read state file: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StateFileError(
            f"{path}: state file is not valid JSON ({exc}); move it away to start afresh"
        ) from exc
    if not isinstance(doc, dict) or doc.get("kind") != FORMAT:
        raise StateFileError(f"{path}: not an hpcobs-slurm-exporter state file")
    return doc


def save_state(path: Path, doc: dict[str, Any]) -> int:
    """Replace `path` with `doc` atomically; returns the bytes written. Raises OSError."""
    data = json.dumps({"kind": FORMAT, **doc}, separators=(",", ":")).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
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
