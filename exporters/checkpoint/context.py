"""`with checkpoint("name"):`: the block as one checkpoint attempt."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from types import TracebackType

from hpcobs.exporters.checkpoint.measure import path_bytes, read_write_bytes
from hpcobs.exporters.checkpoint.model import Attempt
from hpcobs.exporters.checkpoint.outputs import (
    DEFAULT_NAME,
    Options,
    log,
    make_options,
    record_or_warn,
)


@dataclass
class Checkpoint(contextlib.AbstractContextManager["Checkpoint"]):
    """Times its `with` block as one checkpoint attempt (see `checkpoint`)."""

    options: Options | None
    attempt: Attempt | None = None
    recorded: bool = False
    _start: float = field(default=0.0, repr=False)
    _clock: float = field(default=0.0, repr=False)
    _written: int | None = field(default=None, repr=False)

    def __enter__(self) -> Checkpoint:
        self._written = read_write_bytes("self")
        self._start = time.time()
        self._clock = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration = time.monotonic() - self._clock
        try:
            if self.options is None:
                return
            if self.options.path is not None:
                written: int | None = path_bytes(self.options.path)
            else:
                now = read_write_bytes("self")
                written = (
                    None if now is None or self._written is None else max(0, now - self._written)
                )
            self.attempt = Attempt(self._start, duration, exc_type is None, written)
            self.recorded = record_or_warn(self.options, self.attempt)
        except Exception as err:  # never raise from the recording
            log.warning(f"checkpoint not recorded: {type(err).__name__}: {err} (the job goes on)")


def checkpoint(
    name: str = DEFAULT_NAME,
    *,
    path: str | os.PathLike[str] | None = None,
    textfile_directory: str | os.PathLike[str] | None = None,
    pushgateway_url: str | None = None,
    pushgateway_timeout: float = 5.0,
    state_directory: str | os.PathLike[str] | None = None,
    job_id: str | None = None,
    lock_timeout: float = 5.0,
) -> Checkpoint:
    """A context manager that records its block as one checkpoint of stream `name`.

    The block succeeds when it raises nothing; its exceptions propagate unchanged, and the
    recording itself never raises (a problem is one warning on the `hpcobs.checkpoint`
    logger). Bytes written: the size of `path` if given, else this process's write_bytes
    over the block (all its threads and the children it reaped). Outputs as `hpcobs-checkpoint
    run`: `textfile_directory` or `pushgateway_url`, else $HPCOBS_CHECKPOINT_TEXTFILE_DIRECTORY,
    $HPCOBS_CHECKPOINT_PUSHGATEWAY_URL, else /var/lib/hpcobs/textfile.
    """
    try:
        options: Options | None = make_options(
            name,
            path=path,
            textfile_directory=textfile_directory,
            pushgateway_url=pushgateway_url,
            pushgateway_timeout=pushgateway_timeout,
            state_directory=state_directory,
            job_id=job_id,
            lock_timeout=lock_timeout,
        )
    except Exception as exc:
        log.warning(f"checkpoint {name!r} will not be recorded: {exc}")
        options = None
    return Checkpoint(options)
