"""The portable backend: `squeue`, `sinfo`, `sdiag`, `scontrol` with explicit formats.

Works with any Slurm ≥ 21.08 and no compiled bindings. Every command runs without a shell,
with a time limit (killed when it expires), in an environment stripped of the variables that
change the commands' output (`SQUEUE_FORMAT`, `SINFO_SORT`, …) and with
`SLURM_TIME_FORMAT=%s` (and `TZ=UTC`), so times arrive as Unix seconds whatever the locale or
time zone.

`squeue --json` is not used: at scale it is far slower than a custom format.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from hpcobs.exporters.parse.slurm import (
    SINFO_FORMAT,
    SQUEUE_FORMAT,
    parse_licenses,
    parse_reservations,
    parse_sdiag,
    parse_sinfo,
    parse_squeue,
)
from hpcobs.exporters.slurm.backend import Backend, SlurmCallError
from hpcobs.exporters.slurm.model import Job, License, Node, Reservation, SchedulerStats

_STRIP_PREFIXES = ("SQUEUE_", "SINFO_", "SCONTROL_", "SDIAG_", "SLURM_TIME_FORMAT")


class CommandFailed(Exception):
    """The command exited non-zero."""

    def __init__(self, returncode: int, stderr: bytes) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"exit status {returncode}")


Runner = Callable[[Sequence[str], Mapping[str, str], float], Iterator[bytes]]
"""Runs a command and yields its standard output in chunks as they arrive. Raises
subprocess.TimeoutExpired (the command is killed), CommandFailed, or OSError."""

MAX_STDERR = 64 * 1024


def run_command(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> Iterator[bytes]:
    """Run without a shell, within `timeout` seconds in all, streaming stdout (so parsing
    overlaps the command's own formatting of a long job list)."""
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
    )
    assert proc.stdout is not None and proc.stderr is not None
    err = bytearray()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "out")
            sel.register(proc.stderr, selectors.EVENT_READ, "err")
            streams = 2
            while streams:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise subprocess.TimeoutExpired(list(argv), timeout)
                for key, _ in sel.select(remaining):
                    data = os.read(key.fd, 1 << 20)
                    if not data:
                        sel.unregister(key.fileobj)
                        streams -= 1
                    elif key.data == "out":
                        yield data
                    elif len(err) < MAX_STDERR:
                        err += data
        returncode = proc.wait(max(0.001, deadline - time.monotonic()))
        if returncode != 0:
            raise CommandFailed(returncode, bytes(err))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def command_env(slurm_conf: str = "", base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(_STRIP_PREFIXES)
    }
    env["SLURM_TIME_FORMAT"] = "%s"
    # Unix seconds do not depend on the zone; naming one spares glibc a look at
    # /etc/localtime for every time printed (squeue is about 40 % faster at 100,000 jobs).
    env["TZ"] = "UTC"
    env["LC_ALL"] = "C"
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    return env


class PortableBackend(Backend):
    name = "portable"

    SQUEUE_ARGS = ("--all", "--noheader", "--states=all", "--Format", SQUEUE_FORMAT)
    SINFO_ARGS = ("--all", "--noheader", "--Node", "--Format", SINFO_FORMAT)
    LICENSE_ARGS = ("show", "licenses", "--oneliner")
    RESERVATION_ARGS = ("show", "reservation", "--oneliner")

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        slurm_conf: str = "",
        bin_dir: str = "",
        runner: Runner = run_command,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.timeout = timeout
        self.bin_dir = bin_dir
        self.runner = runner
        self.env = command_env(slurm_conf, env)

    def _binary(self, name: str) -> str:
        if self.bin_dir:
            return os.path.join(self.bin_dir, name)
        return shutil.which(name, path=self.env.get("PATH")) or name

    def _blocks(self, call: str, command: str, args: Sequence[str]) -> Iterator[str]:
        """The command's output as text blocks of whole lines, as it arrives."""
        argv = [self._binary(command), *args]
        pending = b""
        try:
            for chunk in self.runner(argv, self.env, self.timeout):
                pending += chunk
                end = pending.rfind(b"\n")
                if end >= 0:
                    block, pending = pending[: end + 1], pending[end + 1 :]
                    yield block.decode("utf-8", "replace")
        except subprocess.TimeoutExpired as exc:
            raise SlurmCallError(call, f"{command} timed out after {self.timeout:g}s") from exc
        except CommandFailed as exc:
            err = exc.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = err[-1] if err else "no error output"
            raise SlurmCallError(call, f"{command} exited with {exc.returncode}: {detail}") from exc
        except OSError as exc:
            raise SlurmCallError(call, f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        if pending:
            yield pending.decode("utf-8", "replace")

    def _run(self, call: str, command: str, args: Sequence[str]) -> str:
        return "".join(self._blocks(call, command, args))

    def jobs(self) -> list[Job]:
        jobs: list[Job] = []
        bad = 0
        for block in self._blocks("jobs", "squeue", self.SQUEUE_ARGS):
            parsed = parse_squeue(block)
            jobs.extend(parsed.jobs)
            bad += parsed.bad_lines
        self.parse_errors["jobs"] += bad  # only once the whole list was read
        return jobs

    def nodes(self) -> list[Node]:
        parsed = parse_sinfo(self._run("nodes", "sinfo", self.SINFO_ARGS))
        self.parse_errors["nodes"] += parsed.bad_lines
        return parsed.nodes

    def scheduler(self) -> SchedulerStats:
        text = self._run("scheduler", "sdiag", ())
        if "Main schedule statistics" not in text:
            raise SlurmCallError("scheduler", "sdiag output not understood")
        return parse_sdiag(text)

    def licenses(self) -> list[License]:
        return parse_licenses(self._run("licenses", "scontrol", self.LICENSE_ARGS))

    def reservations(self) -> list[Reservation]:
        parsed = parse_reservations(self._run("reservations", "scontrol", self.RESERVATION_ARGS))
        self.parse_errors["reservations"] += parsed.bad_lines
        return parsed.reservations
