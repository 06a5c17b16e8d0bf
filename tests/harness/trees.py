"""Writable copies of the real-format fixture trees (tests/data/fixtures), laid out as upstream
and real machines lay them out: symlinks stay symlinks, the dangling ones included (a Lustre
OSS's `obdfilter/<ost>/read_cache_enable` points into an `osd-zfs/<ost>/` that lacks it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy `src` to `dst` (merged into an existing `dst`), keeping symlinks as symlinks, and make
    the copied files and folders writable so a test can rewrite counters. Symlinks are left as
    they are: their targets are copied (or dangle) in the copy as in the source."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if name in dirs else 0o644)
    return dst
