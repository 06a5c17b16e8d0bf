"""Lustre's files, read into a model of one scan: the node, client mounts and imports, targets.

Each file is looked up under `<procfs>/fs/lustre`, then `<sysfs>/fs/lustre`, then
`<sysfs>/kernel/debug/lustre` (debugfs), so the 2.10-era layout (all in /proc) and the 2.12+
layouts (single values in /sys, statistics in debugfs or /proc) read alike; see
docs/lustre.md. Only a value that a known device should have and that is in none of the three
falls back to `lctl get_param -n` (`Lctl`), with a time limit per call and a budget per scan.

`LustreSource.scan()` reads every file once and returns a `LustreScan` of plain data classes
(parsed by `hpcobs.exporters.parse.lustre`), or None when nothing is mounted or served.
A file that vanishes mid-scan is skipped; a garbled or truncated one gives what parses and is
logged once (by path); a bug or an unforeseen layout in one device is logged once and the
other devices are still read. Nothing here knows about metrics.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcobs.exporters.parse import lustre as parse
from hpcobs.exporters.runtime.once import OnceLog

log = logging.getLogger("hpcobs.lustre")

OSD_KINDS = ("osd-ldiskfs", "osd-zfs")


# -- the model of one scan ---------------------------------------------------------------------


@dataclass
class Space:
    """statfs-like values of a mount or target (None: not found, or not a number)."""

    kbytes_total: int | None = None
    kbytes_free: int | None = None
    kbytes_avail: int | None = None
    files_total: int | None = None
    files_free: int | None = None


# Space's fields by the file each is read from, in reading order
SPACE_FILES = (
    ("kbytestotal", "kbytes_total"),
    ("kbytesfree", "kbytes_free"),
    ("kbytesavail", "kbytes_avail"),
    ("filestotal", "files_total"),
    ("filesfree", "files_free"),
)


@dataclass
class Client:
    """One mounted filesystem (an `llite` device); the first mount of a filesystem only."""

    fs: str
    device: str
    stats: parse.StatsFile | None = None
    space: Space = field(default_factory=Space)
    cache: parse.CacheInfo | None = None


@dataclass
class ClientImport:
    """A client's connection (OSC/MDC import) to one target."""

    fs: str
    target: str
    state: str | None = None  # upper case, as Lustre prints it: FULL, IDLE, DISCONN, ...
    rpcs_in_flight: int | None = None
    max_rpcs_in_flight: int | None = None


@dataclass
class TargetJobs:
    """One target's job_stats of this scan."""

    fs: str
    target: str
    io: parse.JobIOTable
    ops: dict[str, dict[str, parse.Stat]] | None  # MDTs: job → its counters


@dataclass
class Target:
    """One OST (`obdfilter`) or MDT (`mdt`) served by this node."""

    fs: str
    target: str
    kind: str
    stats: parse.StatsFile | None = None
    md_stats: parse.StatsFile | None = None  # MDTs only
    space: Space = field(default_factory=Space)
    num_exports: int | None = None
    recovery: str | None = None  # lower case: complete, recovering, ...
    brw: parse.BrwStats | None = None
    jobs: TargetJobs | None = None


@dataclass
class LustreScan:
    """What one scan found. Objects are added before they are read, so a device whose
    reading failed half-way keeps what was read."""

    health_ok: bool | None = None
    version: str | None = None  # the release, `2.15.4`
    clients: list[Client] = field(default_factory=list)
    imports: list[ClientImport] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)


# -- reading the trees ---------------------------------------------------------------------------


class Lctl:
    """`lctl get_param -n PARAM` with a time limit, for values in no tree.

    A parameter lctl failed on (or timed out on) is not asked again for `retry_after` seconds,
    and a missing lctl binary is looked for again only as often, so a node without lctl (or
    with a wedged one) costs one attempt per parameter per interval, not one per scrape.
    """

    def __init__(self, path: str, timeout: float, retry_after: float = 300.0) -> None:
        self.path = path
        self.timeout = timeout
        self.retry_after = retry_after
        self._binary: str | None = None
        self._binary_checked = float("-inf")
        self._failed: dict[str, float] = {}
        self._once = OnceLog(log)

    def _resolve(self, now: float) -> str | None:
        if self._binary is None and now - self._binary_checked >= self.retry_after:
            self._binary_checked = now
            self._binary = shutil.which(self.path) if self.path else None
            if self._binary is None and self.path:
                self._once.debug(("lctl", "missing"), "lctl not found", lctl=self.path)
        return self._binary

    def get(self, param: str, deadline: float) -> bytes | None:
        now = time.monotonic()
        if not self.path or now < self._failed.get(param, float("-inf")):
            return None
        binary = self._resolve(now)
        budget = min(self.timeout, deadline - now)
        if binary is None or budget <= 0:
            return None
        try:
            done = subprocess.run(
                [binary, "get_param", "-n", param],
                capture_output=True,
                timeout=budget,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._failed[param] = now + self.retry_after
            self._once.warning(("lctl", param), "lctl timed out", param=param, timeout=budget)
            return None
        except OSError as exc:
            self._binary = None
            self._binary_checked = now
            self._once.warning(("lctl", "exec"), "cannot run lctl", lctl=binary, err=str(exc))
            return None
        if done.returncode != 0:
            self._failed[param] = now + self.retry_after
            self._once.debug(
                ("lctl", param),
                "lctl get_param failed",
                param=param,
                rc=done.returncode,
                err=done.stderr.decode(errors="replace").strip()[:200],
            )
            return None
        self._once.clear(("lctl", param))
        return done.stdout


@dataclass
class TreeScan:
    """One scan's view of the three roots; directory listings are read once per scan."""

    roots: tuple[Path, ...]
    lctl: Lctl | None
    bad: OnceLog
    deadline: float
    # (root, kind, device) → the directory and its names (one Path join per directory, not per
    # file: 64 OSTs read ~640 files)
    _listings: dict[tuple[Path, str, str], tuple[Path, frozenset[str]]] = field(
        default_factory=dict
    )

    def present(self) -> bool:
        return any(root.is_dir() for root in self.roots)

    def top(self, name: str) -> str | None:
        """A file directly under fs/lustre (`health_check`, `version`)."""
        for root in self.roots:
            data = self._read(root / name)
            if data is not None:
                return data.decode("utf-8", errors="replace")
        return None

    def devices(self, kind: str) -> list[str]:
        """Names of the device directories of a kind (`llite`, `osc`, `obdfilter`, ...)."""
        names: set[str] = set()
        for root in self.roots:
            try:
                with os.scandir(root / kind) as it:
                    names.update(e.name for e in it if e.is_dir())
            except OSError:  # absent, or vanished mid-scan
                continue
        return sorted(names)

    def _listing(self, root: Path, kind: str, device: str) -> tuple[Path, frozenset[str]]:
        key = (root, kind, device)
        listing = self._listings.get(key)
        if listing is None:
            directory = root / kind / device
            try:
                names = frozenset(os.listdir(directory))
            except OSError:
                names = frozenset()
            listing = self._listings[key] = (directory, names)
        return listing

    def read(
        self, candidates: Sequence[tuple[str, str]], name: str, *, fallback: bool = False
    ) -> tuple[str, str] | None:
        """The text of `name` for the first (kind, device) that has it, and where it came from.

        With `fallback`, a value found under no root is asked of `lctl get_param -n
        <kind>.<device>.<name>` (first candidate).
        """
        found = self.read_raw(candidates, name, fallback=fallback)
        return None if found is None else (found[0].decode("utf-8", errors="replace"), found[1])

    def read_raw(
        self, candidates: Sequence[tuple[str, str]], name: str, *, fallback: bool = False
    ) -> tuple[bytes, str] | None:
        """As `read`, undecoded (job_stats is parsed as bytes)."""
        for kind, device in candidates:
            for root in self.roots:
                directory, names = self._listing(root, kind, device)
                if name in names:
                    path = directory / name
                    data = self._read(path)
                    if data is not None:
                        return data, str(path)
        if fallback and self.lctl is not None and candidates:
            kind, device = candidates[0]
            param = f"{kind}.{device}.{name}"
            data = self.lctl.get(param, self.deadline)
            if data is not None:
                return data, f"lctl get_param -n {param}"
        return None

    def _read(self, path: Path) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None  # not there, or gone with an unmount
        except OSError as exc:  # EACCES on debugfs, ENODEV/EIO from a dying mount, ...
            self.bad.warning(str(path), "cannot read Lustre file", path=str(path), err=str(exc))
            return None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a scrape reads job_stats and builds its samples.

    A server's job_stats make ~130k Sample tuples and label dicts in one go (64 OSTs x 1000
    jobs); every 700 allocations start a collection that walks them again. They hold no
    reference cycles (reference counting frees them), so the collector is switched off for
    the few hundred milliseconds of a scrape and switched back on only if it was on (a process
    that turned it off keeps it off). It is the Lustre collector's: it holds the pause over the
    scan and the mapping, since most collections are started by the mapping's Samples.

    Measured gain (bench/bench_lustre.py's tree and runs, with and without the pause
    interleaved in one process, three runs, collection CPU p50 on the shared 2-CPU VM):
    2.10/2.12 format 262-284 → 210-225 ms (-18 to -21%); 2.14+ format 370-430 → 304-325 ms
    (-13 to -27%); with --collector.lustre.job-io-operations (259k samples) 420-483 →
    280-306 ms (-33 to -40%). Paused around the scan alone it saves 3-4% only.
    `bench/bench_lustre.py --no-gc-pause` runs the bench without it.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class LustreSource:
    """Reads the three trees (and `lctl`) of one node into a `LustreScan`."""

    def __init__(
        self,
        procfs: str | os.PathLike[str] = "/proc",
        sysfs: str | os.PathLike[str] = "/sys",
        *,
        lctl_path: str = "lctl",
        lctl_timeout: float = 2.0,
        lctl_budget: float = 5.0,
    ) -> None:
        if lctl_timeout <= 0:
            raise ValueError("--collector.lustre.lctl-timeout must be positive")
        self.roots = (
            Path(procfs) / "fs" / "lustre",
            Path(sysfs) / "fs" / "lustre",
            Path(sysfs) / "kernel" / "debug" / "lustre",
        )
        self.lctl = Lctl(lctl_path, lctl_timeout) if lctl_path else None
        self.lctl_budget = lctl_budget  # seconds of lctl calls per scan, all of them together
        self.bad = OnceLog(log)

    def scan(self) -> LustreScan | None:
        """One scan of every device; None when no tree has `fs/lustre` (no Lustre here)."""
        tree = TreeScan(self.roots, self.lctl, self.bad, time.monotonic() + self.lctl_budget)
        if not tree.present():
            return None
        scan = LustreScan()
        for step in (self._node, self._clients, self._targets):
            self.guard(step.__name__, step, tree, scan)
        return scan

    def guard(self, what: str, step: Callable[..., None], *args: object) -> None:
        """Run one part of the scan; a bug or an unforeseen file must not fail the rest."""
        try:
            step(*args)
        except Exception as exc:
            self.bad.warning(
                ("step", what), "lustre collection step failed", step=what, err=repr(exc)
            )

    def _problems(self, where: str, problems: int, what: str) -> None:
        if problems:
            self.bad.warning(
                where, "unparsable lines in Lustre file", path=where, lines=problems, kind=what
            )
        else:
            self.bad.clear(where)

    def _stats(
        self, tree: TreeScan, where: Sequence[tuple[str, str]], name: str, *, fallback: bool
    ) -> parse.StatsFile | None:
        found = tree.read(where, name, fallback=fallback)
        if found is None:
            return None
        stats = parse.parse_stats(found[0])
        self._problems(found[1], stats.problems, name)
        return stats

    def _int(self, tree: TreeScan, where: Sequence[tuple[str, str]], name: str) -> int | None:
        found = tree.read(where, name, fallback=True)
        if found is None:
            return None
        value = parse.parse_int(found[0])
        self._problems(found[1], 0 if value is not None else 1, name)
        return value

    def _space(self, tree: TreeScan, where: Sequence[tuple[str, str]], space: Space) -> None:
        for name, attribute in SPACE_FILES:
            setattr(space, attribute, self._int(tree, where, name))

    # -- node-wide -----------------------------------------------------------------------------

    def _node(self, tree: TreeScan, scan: LustreScan) -> None:
        health = tree.top("health_check")
        if health is not None:
            scan.health_ok = parse.parse_health_check(health)
        version = tree.top("version")
        if version is not None:
            release = parse.parse_key_values(version).get("lustre") or version.strip()
            words = release.split()
            if words and len(words[0]) <= 64:
                scan.version = words[0]

    # -- clients -------------------------------------------------------------------------------

    def _clients(self, tree: TreeScan, scan: LustreScan) -> None:
        seen: set[str] = set()
        for device in tree.devices("llite"):
            mount = parse.parse_mount_name(device)
            if mount is None:
                continue
            if mount.fs in seen:  # the same filesystem mounted twice: report the first
                self.bad.info(("llite", device), "filesystem mounted more than once", device=device)
                continue
            seen.add(mount.fs)
            client = Client(mount.fs, device)
            scan.clients.append(client)
            self.guard(device, self._client, tree, client)
        pairs: set[tuple[str, str]] = set()
        for kind in ("osc", "mdc"):
            for device in tree.devices(kind):
                name = parse.parse_client_import_name(device)
                if name is None or (name.fs, name.target) in pairs:
                    continue  # an MDS's OSP, or a second mount's import of the same target
                pairs.add((name.fs, name.target))
                imported = ClientImport(name.fs, name.target)
                scan.imports.append(imported)
                self.guard(device, self._import, tree, imported, kind, device)

    def _client(self, tree: TreeScan, client: Client) -> None:
        where = [("llite", client.device)]
        client.stats = self._stats(tree, where, "stats", fallback=True)
        self._space(tree, where, client.space)
        found = tree.read(where, "max_cached_mb", fallback=True)
        if found is not None:
            client.cache = parse.parse_max_cached_mb(found[0])
            self._problems(found[1], 0 if client.cache.max_mb is not None else 1, "max_cached_mb")

    def _import(self, tree: TreeScan, imported: ClientImport, kind: str, device: str) -> None:
        where = [(kind, device)]
        info: parse.ImportInfo | None = None
        found = tree.read(where, "import", fallback=True)
        if found is not None:
            info = parse.parse_import(found[0])
            self._problems(found[1], 0 if info is not None else 1, "import")
        state = info.state if info is not None else None
        if state is None:
            found = tree.read(where, "state")
            state = parse.parse_import_state_file(found[0]) if found is not None else None
        imported.state = state
        if info is not None:
            imported.rpcs_in_flight = info.rpcs_in_flight
        imported.max_rpcs_in_flight = self._int(tree, where, "max_rpcs_in_flight")

    # -- targets -------------------------------------------------------------------------------

    def _targets(self, tree: TreeScan, scan: LustreScan) -> None:
        present: set[tuple[str, str]] = set()
        for kind in ("obdfilter", "mdt"):
            for device in tree.devices(kind):
                name = parse.parse_target_name(device)
                if name is None or (name.fs, name.target) in present:
                    continue
                present.add((name.fs, name.target))
                target = Target(name.fs, name.target, kind)
                scan.targets.append(target)
                self.guard(device, self._target, tree, target, device)

    def _target(self, tree: TreeScan, target: Target, device: str) -> None:
        kind = target.kind
        own = [(kind, device)]
        target.stats = self._stats(tree, own, "stats", fallback=kind == "obdfilter")
        if kind == "mdt":
            target.md_stats = self._stats(tree, own, "md_stats", fallback=True)
        self._space(tree, own + [(osd, device) for osd in OSD_KINDS], target.space)
        target.num_exports = self._int(tree, own, "num_exports")
        found = tree.read(own, "recovery_status", fallback=True)
        if found is not None:
            recovery = parse.parse_recovery_status(found[0])
            self._problems(found[1], 0 if recovery is not None else 1, "recovery_status")
            if recovery is not None:
                target.recovery = recovery.status
        # brw_stats lives in the osd (obdfilter/<ost>/brw_stats is a symlink to it)
        found = tree.read([(osd, device) for osd in OSD_KINDS] + own, "brw_stats", fallback=True)
        if found is not None:
            target.brw = parse.parse_brw_stats(found[0])
            self._problems(found[1], target.brw.problems, "brw_stats")
        raw = tree.read_raw(own, "job_stats", fallback=True)
        if raw is not None:
            data, path = raw
            if kind == "mdt":
                parsed = parse.parse_job_stats(data.decode("utf-8", errors="replace"))
                table = parse.job_io_table(parsed)
                ops: dict[str, dict[str, parse.Stat]] | None = {
                    job.job_id: job.stats for job in parsed.jobs
                }
            else:
                table, ops = parse.parse_job_io(data), None
            self._problems(path, table.problems, "job_stats")
            target.jobs = TargetJobs(target.fs, target.target, table, ops)
