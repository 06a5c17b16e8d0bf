"""The C heap of a long-running daemon: how glibc's malloc keeps and gives back memory.

The node daemon runs next to the jobs the node exists for; its resident memory is taken from
them. Two settings and one trim, each measured on the 2-core CI VM (issue 16; hpcobs-node-
exporter with every collector on a node of 8 fake GPUs, 4 HCAs and a Lustre client with 1,000
jobs, RSS after 60 scrapes; and with only `rdma` on the 4 HCA × 2 port tree):

- one malloc arena (`M_ARENA_MAX` 1): glibc gives each thread that allocates while another
  holds the main arena an arena of its own, and each keeps its high-water mark; the collector
  workers, connection threads and the collectors' own threads would hold several. 41.6 →
  41.0 MiB (a new connection per scrape: 42.9 → 41.0 MiB). The daemon's threads take turns on
  the GIL anyway, so they hardly contend for the one arena;
- a fixed mmap threshold (`M_MMAP_THRESHOLD` 128 KiB, glibc's initial one): without it glibc
  raises the threshold after the first large free, and the next scrapes' large buffers (the
  body of a 400 KB exposition, its encoded bytes) stay in the heap; with it they are mapped
  and unmapped per scrape: 41.0 → 40.6 MiB;
- `malloc_trim(0)` once, right before the daemon starts serving: what importing the modules and
  building the collectors freed goes back to the kernel: 32.1 → 30.8 MiB (`rdma` only; trimming
  again after scrapes gained nothing more), for ~25 µs.

`ctypes` (0.4 MiB) is the price of the three. Elsewhere than glibc (musl) this does nothing.
"""

from __future__ import annotations

from typing import Any

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024

_libc: Any = None
_looked_up = False


def _c_library() -> Any:
    global _libc, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                _libc = libc
        except (OSError, AttributeError):
            _libc = None
    return _libc


def tune_malloc() -> None:
    """One arena and a fixed mmap threshold (see the module docstring). Call before the
    daemon starts its threads."""
    libc = _c_library()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 1)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_free_memory() -> None:
    """`malloc_trim(0)`, where the C library has it."""
    libc = _c_library()
    if libc is not None:
        libc.malloc_trim(0)
