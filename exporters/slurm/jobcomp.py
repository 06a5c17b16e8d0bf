"""Tail a jobcomp/filetxt log: every finished job slurmctld logged, once, across restarts.

The read position (device, inode, byte offset) is saved in the state file with the ledger.
Each read goes on to the end of the file, in chunks, and only consumes complete lines (a line
being written stays for the next read). A new inode means the log was rotated, a file shorter
than the offset that it was truncated: either way reading restarts at its beginning (jobs
already counted are not counted again while slurmctld still shows them).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any, BinaryIO, Literal

from hpcobs.exporters.parse.slurm import MAX_JOBCOMP_LINE, parse_jobcomp_line
from hpcobs.exporters.runtime.once import OnceLog
from hpcobs.exporters.slurm.model import Job

log = logging.getLogger("hpcobs.slurm")

CHUNK_BYTES = 8 * 1024 * 1024
Start = Literal["beginning", "end"]


HEAD_BYTES = 128


@dataclass
class Position:
    """Where reading stopped: the file (device, inode), the byte offset, and a digest of its
    first bytes (a log truncated and rewritten in place keeps its inode, maybe its size)."""

    dev: int
    ino: int
    offset: int
    head: str = ""

    def to_state(self) -> dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "head": self.head}

    @classmethod
    def from_state(cls, doc: Any) -> Position | None:
        if not isinstance(doc, dict):
            return None
        try:
            return cls(
                int(doc["dev"]), int(doc["ino"]), int(doc["offset"]), str(doc.get("head", ""))
            )
        except (KeyError, TypeError, ValueError):
            return None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


class JobcompTail:
    def __init__(
        self,
        path: Path,
        *,
        start: Start = "beginning",
        tz: tzinfo | None = None,
        position: Position | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.path = path
        self.start = start
        self.tz = tz
        self.position = position
        self.chunk_bytes = chunk_bytes
        self.readable = False
        self.bad_lines = 0
        self._once = OnceLog(log)

    def read(self) -> Iterator[list[Job]]:
        """Finished jobs logged since the last read, a chunk at a time (the position moves on
        as each chunk is consumed)."""
        try:
            f = self.path.open("rb")
        except OSError as exc:
            self.readable = False
            self._once.warning(
                ("open", str(self.path)),
                "cannot read the jobcomp log",
                path=str(self.path),
                err=exc.strerror or str(exc),
            )
            return
        with f:
            self._once.clear(("open", str(self.path)))
            self.readable = True
            st = os.fstat(f.fileno())
            pos = self.position
            if pos is None:
                offset = 0 if self.start == "beginning" else st.st_size
                pos = self.position = Position(st.st_dev, st.st_ino, offset)
                if offset:
                    pos.head = _digest(f.read(min(HEAD_BYTES, offset)))
                log.info(
                    "reading the jobcomp log",
                    extra={"path": str(self.path), "from_offset": offset, "size": st.st_size},
                )
            elif (pos.dev, pos.ino) != (st.st_dev, st.st_ino):
                log.info(
                    "jobcomp log was replaced (rotated): reading the new file from its start",
                    extra={"path": str(self.path)},
                )
                pos = self.position = Position(st.st_dev, st.st_ino, 0)
            elif st.st_size < pos.offset:
                log.warning(
                    "jobcomp log is shorter than the saved offset (truncated): "
                    "reading it from its start",
                    extra={"path": str(self.path)},
                )
                pos.offset = 0
            if pos.offset and pos.head:
                f.seek(0)
                if _digest(f.read(min(HEAD_BYTES, pos.offset))) != pos.head:
                    log.warning(
                        "jobcomp log was rewritten in place: reading it from its start",
                        extra={"path": str(self.path)},
                    )
                    pos.offset = 0
            f.seek(pos.offset)
            pending = b""
            while True:
                data = f.read(self.chunk_bytes)
                if not data:
                    return  # an unfinished last line stays for the next read
                pending += data
                end = pending.rfind(b"\n")
                if end < 0:
                    if len(pending) > MAX_JOBCOMP_LINE:  # no record is this long: skip it
                        self.bad_lines += 1
                        self._advance(pos, f, len(pending))
                        pending = b""
                    continue
                complete, pending = pending[: end + 1], pending[end + 1 :]
                jobs = []
                for raw in complete.split(b"\n"):
                    if not raw.strip():
                        continue
                    job = parse_jobcomp_line(raw.decode("utf-8", "replace"), self.tz)
                    if job is None:
                        self.bad_lines += 1
                        self._once.warning(
                            ("line", str(self.path)),
                            "jobcomp line not understood",
                            path=str(self.path),
                            line=raw[:200].decode("utf-8", "replace"),
                        )
                    else:
                        jobs.append(job)
                yield jobs
                # The consumer has taken this chunk's jobs: move on.
                self._advance(pos, f, len(complete))

    def _advance(self, pos: Position, f: BinaryIO, consumed: int) -> None:
        before = pos.offset
        pos.offset += consumed
        if before < HEAD_BYTES:
            here = f.tell()
            f.seek(0)
            pos.head = _digest(f.read(min(HEAD_BYTES, pos.offset)))
            f.seek(here)
