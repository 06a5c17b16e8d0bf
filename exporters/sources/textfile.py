"""Source: the `*.prom` files of a textfile directory, read whole, one at a time.

The directory is often writable by every user (hpcobs-checkpoint writes there from inside
jobs), so nothing in it is trusted: names starting with `.` (temporary files) and names not
ending in `.prom` are skipped; a FIFO, a device or a directory named `*.prom` is an error
for that file, not a read that blocks the scrape (opened non-blocking, checked to be a regular
file after open); a file larger than the size limit is an error, read no further than that.
Symbolic links are followed, as node_exporter does.

Each file's `Stamp` (device, inode, size, modification and change times in ns) says whether
it changed since a read: a file replaced by rename has a new inode, a write or `touch` changes
the change time, which no user can set back. The caller passes the stamps it holds
parsed, and such files are not read again.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

SUFFIX = ".prom"
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CHUNK = 1 << 16


Stamp = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


@dataclass(frozen=True)
class TextFile:
    """One file of the directory: its contents, or why they could not be read. `data` is None
    and `error` too when the file is unchanged since the stamp the caller gave for it."""

    name: str
    mtime: float = 0.0  # Unix seconds
    data: bytes | None = None
    error: str | None = None
    stamp: Stamp | None = None

    @property
    def unchanged(self) -> bool:
        return self.data is None and self.error is None


def wanted(name: str) -> bool:
    """A name the collector reads: `*.prom`, not hidden (`.name.prom.tmp` and the like)."""
    return name.endswith(SUFFIX) and not name.startswith(".") and len(name) > len(SUFFIX)


def read_file(directory: str, name: str, max_bytes: int, known: Stamp | None = None) -> TextFile:
    """`directory/name`, unless its stamp is `known` (then only its stamp and mtime)."""
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        return TextFile(name, error=exc.strerror or str(exc))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return TextFile(name, st.st_mtime, error="not a regular file")
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp == known:
            return TextFile(name, st.st_mtime, stamp=stamp)
        if st.st_size > max_bytes:
            return TextFile(name, st.st_mtime, error=f"larger than {max_bytes} bytes", stamp=stamp)
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # grew while read
            return TextFile(name, st.st_mtime, error=f"larger than {max_bytes} bytes")
        return TextFile(name, st.st_mtime, b"".join(chunks), stamp=stamp)
    except OSError as exc:
        return TextFile(name, error=exc.strerror or str(exc))
    finally:
        os.close(fd)


def read_directory(
    directory: str, max_bytes: int, known: Mapping[str, Stamp] | None = None
) -> list[TextFile]:
    """Every wanted file of `directory`, by name; those whose stamp is in `known` unread.
    Raises OSError when the directory cannot be listed (FileNotFoundError: it does not exist)."""
    names = sorted(n for n in os.listdir(directory) if wanted(n))
    known = known or {}
    return [read_file(directory, name, max_bytes, known.get(name)) for name in names]
