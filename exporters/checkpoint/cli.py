"""`hpcobs-checkpoint run [options] -- CMD…`: run CMD as one checkpoint attempt, forwarding
signals to it, record the attempt, and exit with CMD's status whatever happens to the record."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hpcobs.exporters.checkpoint.measure import path_bytes, read_write_bytes
from hpcobs.exporters.checkpoint.model import Attempt
from hpcobs.exporters.checkpoint.outputs import (
    DEFAULT_NAME,
    DEFAULT_TEXTFILE_DIR,
    ENV_PUSHGATEWAY_URL,
    ENV_TEXTFILE_DIR,
    Options,
    log,
    make_options,
    record_or_warn,
)
from hpcobs.exporters.version import VERSION

PROGRAM = "hpcobs-checkpoint"
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def exit_status(returncode: int) -> int:
    """A child's exit status as the shell reports it: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _terminal_sent_it_too(signum: int) -> bool:
    """True for SIGINT/SIGQUIT when this process group is its terminal's foreground group:
    the terminal then sent the signal to the child as well (it shares our process group)."""
    if signum not in (signal.SIGINT, signal.SIGQUIT):
        return False
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


@dataclass(frozen=True)
class Outcome:
    exit_status: int
    attempt: Attempt


class Forwarder(contextlib.AbstractContextManager["Forwarder"]):
    """Forwards FORWARDED_SIGNALS to the running child, for as long as the block lasts.

    A signal that comes before the child exists is kept for it; one that comes after it was
    reaped (while the attempt is recorded) is ignored, so that the exit status stays CMD's and
    no signal can reach another process that reuses the child's pid.
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.reaped = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Forwarder:
        self._previous = {s: signal.signal(s, self._handle) for s in FORWARDED_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.reaped or _terminal_sent_it_too(signum):
            return
        if self.pid is None:
            self.pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def started(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reaping(self) -> None:
        self.reaped = True


def run_command(
    argv: Sequence[str], path: Path | None = None, forwarder: Forwarder | None = None
) -> Outcome:
    """Run `argv`, forwarding signals to it; its exit status and the measured attempt."""
    if forwarder is None:
        with Forwarder() as own:
            return run_command(argv, path, own)
    start, clock = time.time(), time.monotonic()
    try:
        proc = subprocess.Popen(list(argv))
    except OSError as exc:
        status = 127 if isinstance(exc, FileNotFoundError) else 126
        print(f"{PROGRAM}: {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        forwarder.reaping()
        return Outcome(status, Attempt(start, time.monotonic() - clock, False, 0))
    forwarder.started(proc.pid)
    # Wait for the exit but leave the child a zombie, so that its I/O counters (which include
    # those of the children it reaped) can still be read; then reap it.
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    duration = time.monotonic() - clock
    written = path_bytes(path) if path is not None else read_write_bytes(proc.pid)
    forwarder.reaping()
    status = exit_status(proc.wait())
    return Outcome(status, Attempt(start, duration, status == 0, written))


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROGRAM,
        description="Time a checkpoint from inside a Slurm job and record it for Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run CMD as one checkpoint attempt",
        usage=f"{PROGRAM} run [--name N] [--path P] [options] -- CMD…",
        description="Run CMD (after --) as one checkpoint attempt, record it, exit with its status.",
    )
    run.add_argument(
        "--name", default=DEFAULT_NAME, help="the stream's name (default: %(default)s)"
    )
    run.add_argument(
        "--path", help="the checkpoint's file or folder: its size is the bytes written"
    )
    out = run.add_mutually_exclusive_group()
    out.add_argument(
        "--textfile.directory",
        dest="textfile_directory",
        metavar="DIR",
        help=f"the node exporter's textfile directory (default: ${ENV_TEXTFILE_DIR}, "
        f"else {DEFAULT_TEXTFILE_DIR})",
    )
    out.add_argument(
        "--pushgateway.url",
        dest="pushgateway_url",
        metavar="URL",
        help=f"push to this Pushgateway instead (default: ${ENV_PUSHGATEWAY_URL})",
    )
    run.add_argument(
        "--pushgateway.timeout",
        dest="pushgateway_timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="HTTP timeout of the push (default: %(default)s)",
    )
    run.add_argument(
        "--state.directory",
        dest="state_directory",
        metavar="DIR",
        help="where pushed streams keep their totals (default: $TMPDIR/hpcobs-checkpoint-<uid>)",
    )
    run.add_argument("--job-id", help="the job (default: $SLURM_JOB_ID)")
    run.add_argument(
        "--lock.timeout",
        dest="lock_timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up waiting for the directory lock after this long (default: %(default)s)",
    )
    run.add_argument(
        "--log.level", dest="log_level", choices=("debug", "info", "warn", "error"), default="warn"
    )
    return parser


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(f"{PROGRAM}: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel({"warn": logging.WARNING}.get(level, level.upper()))


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    own, sep, command = _split(args_in)
    _setup_logging("warn")
    try:
        args = build_parser().parse_args(own)
    except _UsageError as exc:
        if not command:
            print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
            print(f"usage: {PROGRAM} run [--name N] [--path P] [options] -- CMD…", file=sys.stderr)
            return 2
        log.warning(f"{exc}; running the command without recording it")
        return run_command(command).exit_status
    if not sep or not command:
        print(f"{PROGRAM}: error: no command given (run [options] -- CMD…)", file=sys.stderr)
        return 2
    _setup_logging(args.log_level)
    try:
        options: Options | None = make_options(
            args.name,
            path=args.path,
            textfile_directory=args.textfile_directory,
            pushgateway_url=args.pushgateway_url,
            pushgateway_timeout=args.pushgateway_timeout,
            state_directory=args.state_directory,
            job_id=args.job_id,
            lock_timeout=args.lock_timeout,
        )
    except Exception as exc:
        log.warning(f"{exc}; running the command without recording it")
        options = None
    with Forwarder() as forwarder:  # also while recording: the exit status stays CMD's
        outcome = run_command(command, options.path if options else None, forwarder)
        if options is not None:
            record_or_warn(options, outcome.attempt)
    return outcome.exit_status


def _split(args: list[str]) -> tuple[list[str], bool, list[str]]:
    """(our arguments, whether `--` was given, CMD): everything after the first `--` is CMD."""
    if "--" in args:
        i = args.index("--")
        return args[:i], True, args[i + 1 :]
    return args, False, []
