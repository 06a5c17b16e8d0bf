"""Log a problem once per key (a file path, a GPU, a job), not once per scrape.

bad_files = OnceLog(logging.getLogger("hpcobs.rdma"))
bad_files.warning(path, "unreadable counter", err=str(exc))   # logged the first time only
bad_files.clear(path)                                          # when it becomes good again
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from typing import Any


class OnceLog:
    """Remembers which keys were reported; bounded so a flood of keys cannot grow it forever."""

    def __init__(self, logger: logging.Logger, limit: int = 10_000) -> None:
        self.logger = logger
        self.limit = limit
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    def _first(self, key: Hashable) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) >= self.limit:
                self._seen.clear()
            self._seen.add(key)
            return True

    def log(self, level: int, key: Hashable, msg: str, **fields: Any) -> bool:
        """Log `msg` with `fields` if `key` was not reported since it was last cleared."""
        if not self._first(key):
            return False
        self.logger.log(level, msg, extra={"key": str(key), **fields})
        return True

    def debug(self, key: Hashable, msg: str, **fields: Any) -> bool:
        return self.log(logging.DEBUG, key, msg, **fields)

    def info(self, key: Hashable, msg: str, **fields: Any) -> bool:
        return self.log(logging.INFO, key, msg, **fields)

    def warning(self, key: Hashable, msg: str, **fields: Any) -> bool:
        return self.log(logging.WARNING, key, msg, **fields)

    def clear(self, key: Hashable) -> None:
        with self._lock:
            self._seen.discard(key)

    def reported(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._seen
