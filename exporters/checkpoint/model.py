"""One checkpoint attempt and a stream's totals across attempts (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attempt:
    """One checkpoint attempt, as measured."""

    start: float  # Unix time
    duration: float  # seconds (monotonic clock)
    ok: bool
    written_bytes: int | None  # None: unknown (the I/O counters could not be read)

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Totals:
    """What a stream keeps across invocations (read back from its exposition text)."""

    success: float = 0.0
    failure: float = 0.0
    seconds: float = 0.0
    run_seconds: float = 0.0
    last_success: float | None = None


def advance(
    totals: Totals | None,
    previous_end: float | None,
    attempt: Attempt,
    job_start: float | None,
) -> Totals:
    """The stream's totals after `attempt`.

    `totals` and `previous_end` (when the stream's latest checkpoint ended) are None for the
    first checkpoint of the stream; the run time then starts at `job_start` (when known and not
    after the attempt) or at the attempt's own start. Later, both counters grow by the part of
    the attempt after `previous_end` only, so overlapping attempts count once and the
    checkpoint time never exceeds the run time.
    """
    end = attempt.end
    if totals is None or previous_end is None:
        base = totals or Totals()
        since = attempt.start
        if job_start is not None and job_start <= attempt.start:
            since = job_start
        seconds = attempt.duration
        run = max(end - since, attempt.duration)
    else:
        base = totals
        seconds = max(0.0, end - max(attempt.start, previous_end))
        run = max(0.0, end - previous_end)
    return Totals(
        success=base.success + (1 if attempt.ok else 0),
        failure=base.failure + (0 if attempt.ok else 1),
        seconds=base.seconds + seconds,
        run_seconds=base.run_seconds + run,
        last_success=end if attempt.ok else base.last_success,
    )
