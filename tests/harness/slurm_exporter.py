"""hpcobs-slurm-exporter as a real process on a private Slurm cluster (tests/harness/slurm.py),
for the real Slurm exporter tests: the `start_exporter` fixture and their polling helpers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness.runtime import ExporterProcess
from harness.slurm import SlurmCluster

PROGRAM = "hpcobs-slurm-exporter"

Starter = Callable[..., ExporterProcess]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something true (returned) within `timeout` seconds; an
    AssertionError naming `what` and the last result (or assertion) otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s; last: {last}")
        time.sleep(interval)


def epoch(text: str) -> int:
    """Slurm's local `YYYY-MM-DDTHH:MM:SS` as Unix seconds."""
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp())


def exporter(
    cluster: SlurmCluster,
    workdir: Path,
    name: str,
    *extra: str,
    command: list[str] | None = None,
) -> ExporterProcess:
    """An exporter (not started) polling `cluster` every second, its state file in `workdir`."""
    return ExporterProcess(
        PROGRAM,
        [
            f"--slurm.conf={cluster.conf_path}",
            "--slurm.backend=auto",
            "--slurm.poll-interval=1s",
            "--slurm.timeout=5s",
            "--slurm.stale-after=4s",
            f"--slurm.state-file={workdir / f'{name}.state'}",
            *extra,
        ],
        workdir,
        command=command,
    )


@pytest.fixture
def start_exporter() -> Iterator[Starter]:
    """Start hpcobs-slurm-exporter processes (`exporter`'s arguments); all stopped (by PID) at
    teardown."""
    started: list[ExporterProcess] = []

    def start(*args: Any, **kwargs: Any) -> ExporterProcess:
        process = exporter(*args, **kwargs)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
