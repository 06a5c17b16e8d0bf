"""Where a stream's text goes (the textfile directory, or a Pushgateway and a private state
directory), how its totals are read back and updated under a lock, and the options that say
which."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.exposition import generate_latest, push_to_gateway

from hpcobs.exporters.checkpoint.measure import job_start_time
from hpcobs.exporters.checkpoint.metrics import families, parse_totals, registry_of
from hpcobs.exporters.checkpoint.model import Attempt, Totals, advance

log = logging.getLogger("hpcobs.checkpoint")

PUSH_JOB = "hpcobs_checkpoint"
# hpcobs-node-exporter's textfile directory (exporters/collectors/textfile.py), the probe's too
DEFAULT_TEXTFILE_DIR = "/var/lib/hpcobs/textfile"
ENV_TEXTFILE_DIR = "HPCOBS_CHECKPOINT_TEXTFILE_DIRECTORY"
ENV_PUSHGATEWAY_URL = "HPCOBS_CHECKPOINT_PUSHGATEWAY_URL"
DEFAULT_NAME = "checkpoint"
NO_JOB = "none"
MAX_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def safe_label(value: str, default: str) -> str:
    """`value` usable in a file name and a Pushgateway path: [A-Za-z0-9_.+-], at most 64."""
    cleaned = _UNSAFE.sub("_", value)[:MAX_NAME].lstrip(".")
    return cleaned or default


def file_name(job_id: str, name: str) -> str:
    return f"checkpoint-{job_id}-{name}.prom"


def write_atomically(directory: Path, name: str, text: bytes) -> Path:
    """`directory/name` replaced in one rename: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # the node exporter runs as another user
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return directory / name


@contextlib.contextmanager
def locked(
    directory: Path, timeout: float, sleep: Callable[[float], None] = time.sleep
) -> Iterator[bool]:
    """Hold an exclusive flock on `directory` for the block; yields False when it timed out."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    held = False
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                    raise
                if time.monotonic() >= deadline:
                    break
                sleep(0.01)
        yield held
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class Textfile:
    directory: Path


@dataclass(frozen=True)
class Pushgateway:
    url: str
    state_directory: Path
    node: str
    cluster: str | None = None
    timeout: float = 5.0


Output = Textfile | Pushgateway


@dataclass(frozen=True)
class Options:
    """How and where one stream's checkpoints are recorded."""

    output: Output
    name: str = DEFAULT_NAME
    job_id: str = NO_JOB
    path: Path | None = None
    job_start: float | None = None
    lock_timeout: float = 5.0

    def grouping_key(self) -> dict[str, str]:
        assert isinstance(self.output, Pushgateway)
        key = {"job_id": self.job_id, "name": self.name, "node": self.output.node}
        if self.output.cluster:
            key["cluster"] = self.output.cluster
        return key


class RecordError(Exception):
    """The attempt could not be recorded (the job goes on; the caller warns)."""


def _state_dir(options: Options) -> Path:
    if isinstance(options.output, Textfile):
        return options.output.directory
    directory = options.output.state_directory
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = directory.stat().st_uid
    except OSError as exc:
        raise RecordError(f"state directory {directory}: {exc.strerror or exc}") from exc
    if owner != os.getuid():  # e.g. made by another user in a shared /tmp: not to be trusted
        raise RecordError(f"state directory {directory} belongs to uid {owner}, not to this user")
    return directory


def _read_state(path: Path, options: Options) -> tuple[Totals | None, float | None]:
    """The stream's totals and when they were last written (≈ the previous checkpoint's end)."""
    try:
        st = path.stat()
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        log.warning(f"{path}: {exc.strerror or exc}; the stream's totals start again")
        return None, None
    totals = parse_totals(text, options.job_id, options.name)
    if totals is None:
        log.warning(f"{path}: no totals of this stream in it; they start again")
        return None, None
    return totals, st.st_mtime


def record(options: Options, attempt: Attempt) -> Path | str:
    """Add `attempt` to the stream and publish it; the file or URL written. Raises RecordError."""
    directory = _state_dir(options)
    name = file_name(options.job_id, options.name)
    try:
        with locked(directory, options.lock_timeout) as held:
            if not held:
                log.warning(
                    f"{directory}: lock not free after {options.lock_timeout:g} s; "
                    "recording without it"
                )
            totals, previous_end = _read_state(directory / name, options)
            totals = advance(totals, previous_end, attempt, options.job_start)
            registry = registry_of(families(options.job_id, options.name, totals, attempt))
            written = write_atomically(directory, name, generate_latest(registry))
            if isinstance(options.output, Textfile):
                return written
            push_to_gateway(
                options.output.url,
                job=PUSH_JOB,
                registry=registry,
                grouping_key=options.grouping_key(),
                timeout=options.output.timeout,
            )
            return options.output.url
    except RecordError:
        raise
    except OSError as exc:  # includes urllib's URLError (a refused or failed push)
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        where = exc.filename or (
            options.output.url if isinstance(options.output, Pushgateway) else directory
        )
        raise RecordError(f"{where}: {reason}") from exc
    except Exception as exc:  # e.g. an HTTP error status from the Pushgateway
        raise RecordError(f"{type(exc).__name__}: {exc}") from exc


def record_or_warn(options: Options, attempt: Attempt) -> bool:
    """`record`, turning every failure into one warning. True when recorded."""
    try:
        where = record(options, attempt)
    except Exception as exc:
        log.warning(
            f"checkpoint {options.name!r} of job {options.job_id} not recorded: {exc} "
            "(the job goes on)"
        )
        return False
    log.debug(f"checkpoint {options.name!r} recorded in {where}")
    return True


# -- configuration ---------------------------------------------------------------------------
def default_state_directory(environ: Mapping[str, str]) -> Path:
    base = environ.get("TMPDIR") or tempfile.gettempdir()
    return Path(base) / f"hpcobs-checkpoint-{os.getuid()}"


def make_options(
    name: str | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    textfile_directory: str | os.PathLike[str] | None = None,
    pushgateway_url: str | None = None,
    pushgateway_timeout: float = 5.0,
    state_directory: str | os.PathLike[str] | None = None,
    job_id: str | None = None,
    lock_timeout: float = 5.0,
    environ: Mapping[str, str] | None = None,
    pid: int | None = None,
) -> Options:
    """Options from arguments, then the environment (HPCOBS_CHECKPOINT_*, SLURM_*)."""
    env = os.environ if environ is None else environ
    if textfile_directory is not None and pushgateway_url is not None:
        raise ValueError("give either a textfile directory or a Pushgateway URL, not both")
    clean_name = safe_label(name or DEFAULT_NAME, DEFAULT_NAME)
    if name and clean_name != name:
        log.warning(f"checkpoint name {name!r} recorded as {clean_name!r}")
    raw_job = job_id or env.get("SLURM_JOB_ID") or ""
    clean_job = safe_label(raw_job, NO_JOB)
    if not raw_job:
        log.warning(f"SLURM_JOB_ID is not set: recording with job_id={NO_JOB!r}")
    output: Output
    if pushgateway_url is None and textfile_directory is None:
        textfile_directory = env.get(ENV_TEXTFILE_DIR) or None
        if textfile_directory is None:
            pushgateway_url = env.get(ENV_PUSHGATEWAY_URL) or None
    if pushgateway_url is not None:
        node = env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
        output = Pushgateway(
            url=pushgateway_url,
            state_directory=Path(state_directory)
            if state_directory
            else default_state_directory(env),
            node=node,
            cluster=env.get("SLURM_CLUSTER_NAME") or None,
            timeout=pushgateway_timeout,
        )
    else:
        output = Textfile(Path(textfile_directory or DEFAULT_TEXTFILE_DIR))
    return Options(
        output=output,
        name=clean_name,
        job_id=clean_job,
        path=Path(path) if path is not None else None,
        job_start=job_start_time(env, os.getpid() if pid is None else pid),
        lock_timeout=lock_timeout,
    )
