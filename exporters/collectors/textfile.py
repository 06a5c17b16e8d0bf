"""Collector `textfile`: the `*.prom` files of a directory, as node_exporter's textfile collector.

Programs that run now and then write their metrics as a file for the daemon to serve:
`hpcobs-mpi-probe --textfile-dir`, `hpcobs-checkpoint` from inside jobs, a site's cron scripts.
All of them default to one directory, `/var/lib/hpcobs/textfile` (`DEFAULT_DIRECTORY`;
`--collector.textfile.directory`). Details and the reasons: docs/textfile.md.

Source → parse → filter → merge → families:

- `sources/textfile.py` reads every `*.prom` file of the directory (not hidden ones: a writer's
  temporary file; never blocking on a FIFO; at most `--collector.textfile.max-file-bytes`),
  except those unchanged since the last scrape (same inode, size, mtime and ctime);
- `parse/textfile.py` parses each new version of a file, whole (text format 0.0.4, Go expfmt's
  rules; about 10 µs a sample, so 4 MiB, the default limit, take a second or two). A file
  that cannot be read or parsed, or that has client-side timestamps, is skipped: its metrics
  and its `hpcobs_textfile_mtime_seconds` are left out, `hpcobs_textfile_scrape_error` is 1 and
  the problem is logged once (again only after it was gone for a scrape). The scrape goes on;
- samples labelled `job_id` with a Slurm job id (digits) are left out once that job has been
  off this node for `--collector.textfile.job-grace` (default 5m; 0: never): the job is on the
  node while the daemon's shared `JobAttributor` attributes a process to it (its slurmstepd
  counts), and a job never seen is judged by the file's mtime. A file left without samples is
  ignored as a whole (`hpcobs_textfile_ignored_files`), not deleted;
- families of the same name from several files merge into one (files in name order, the first
  HELP wins). As node_exporter: a family whose TYPE or HELP differs from the first file's is
  dropped from the later file, a series already read from an earlier file is dropped, and both
  set the scrape error; a family named like one of the daemon's own metrics is dropped too.

A missing default directory means nothing to collect (no error); a directory given by flag that
cannot be listed is a scrape error.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from hpcobs.exporters import attribution
from hpcobs.exporters.parse.textfile import Family, parse
from hpcobs.exporters.runtime import scrape
from hpcobs.exporters.runtime.cli import int_at_least, parse_duration
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, NoDataError, Services
from hpcobs.exporters.runtime.families import Families
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.runtime.once import OnceLog
from hpcobs.exporters.sources.textfile import Stamp, TextFile, read_directory
from hpcobs.exporters.version import METRICS as VERSION_METRICS

# The one directory of the suite: hpcobs-checkpoint and hpcobs-mpi-probe write here by default
# (exporters/checkpoint/outputs.py, exporters/probe/outputs.py; a test keeps them equal).
DEFAULT_DIRECTORY = "/var/lib/hpcobs/textfile"
DEFAULT_JOB_GRACE = 300.0
DEFAULT_MAX_FILE_BYTES = 4 << 20

MTIME = MetricDef(
    "hpcobs_textfile_mtime_seconds",
    "gauge",
    "Modification time (Unix seconds) of each *.prom file of the textfile directory whose "
    "metrics were exported in this scrape.",
    ("file",),
)
SCRAPE_ERROR = MetricDef(
    "hpcobs_textfile_scrape_error",
    "gauge",
    "1 when the textfile directory, or a file in it, could not be read or parsed, or a "
    "family conflicted with another file's or the daemon's own (the file or family is "
    "skipped and logged once); else 0.",
)
IGNORED = MetricDef(
    "hpcobs_textfile_ignored_files",
    "gauge",
    "Files of the textfile directory left out because every Slurm job their samples name "
    "(label job_id) left this node more than --collector.textfile.job-grace ago.",
)
METRICS = (MTIME, SCRAPE_ERROR, IGNORED)

log = logging.getLogger("hpcobs.textfile")

JOB_LABEL = "job_id"
_SLURM_JOB_ID = re.compile(r"[0-9]{1,20}", re.ASCII)


@dataclass(frozen=True)
class Problem:
    """Something wrong with the directory, a file or a family: logged once per `key`."""

    key: Hashable
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedFile:
    name: str
    mtime: float
    families: list[Family]


# -- pure steps --------------------------------------------------------------------------------
def load(file: TextFile) -> ParsedFile:
    """The families of one file read from the directory. Raises ValueError with the reason
    (ParseError is one) for a file that is to be skipped."""
    if file.error is not None or file.data is None:
        raise ValueError(file.error or "not read")
    try:
        text = file.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from None
    families = parse(text)
    for family in families:
        if any(s.timestamp_ms is not None for s in family.samples):
            raise ValueError(
                f"metric {family.name!r} has client-side timestamps, which are not supported"
            )
    return ParsedFile(file.name, file.mtime, families)


def slurm_jobs(families: Iterable[Family]) -> set[str]:
    """The Slurm job ids (label `job_id`, digits only) the samples of `families` name."""
    return {
        job
        for family in families
        for s in family.samples
        if (job := s.labels.get(JOB_LABEL)) is not None and _SLURM_JOB_ID.fullmatch(job)
    }


def without_jobs(file: ParsedFile, gone: Callable[[str], bool]) -> ParsedFile:
    """`file` without the samples whose Slurm job is `gone` (families left empty removed)."""
    families = []
    for family in file.families:
        samples = [
            s
            for s in family.samples
            if not (
                (job := s.labels.get(JOB_LABEL)) is not None
                and _SLURM_JOB_ID.fullmatch(job)
                and gone(job)
            )
        ]
        if len(samples) == len(family.samples):
            families.append(family)
        elif samples:
            families.append(Family(family.name, family.type, family.help, samples, family.typed))
    return ParsedFile(file.name, file.mtime, families)


def exposed(name: str, kind: str) -> tuple[str, str]:
    """The prometheus_client family (name, type) that writes a text family back unchanged.

    Its text encoder names a counter family `<name>_total`: a counter of the text `x_total`
    is the family `x`. A counter whose samples lack `_total` cannot be written as a counter
    under its own name, so it is served untyped; untyped is prometheus_client's `unknown`.
    """
    if kind == "counter":
        return (name[: -len("_total")], "counter") if name.endswith("_total") else (name, "unknown")
    return name, "unknown" if kind == "untyped" else kind


@dataclass
class _Merging:
    family: Family
    metric_name: str
    metric_type: str
    files: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Merged:
    metrics: list[Metric]
    problems: list[Problem]


def merge(files: Sequence[ParsedFile], reserved: Collection[str] = ()) -> Merged:
    """The families of `files` (in that order) as prometheus_client families, merged by name,
    with the conflicts node_exporter reports (see the module docstring)."""
    merging: dict[str, _Merging] = {}
    by_metric: dict[str, str] = {}  # exposed family name → text family name
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    problems: list[Problem] = []

    def conflict(file: str, family: str, why: str) -> None:
        problems.append(
            Problem(
                ("family", file, family, why),
                f"metric family skipped: {why}",
                {
                    "file": file,
                    "metric": family,
                },
            )
        )

    for file in files:
        for family in file.families:
            metric_name, metric_type = exposed(family.name, family.type)
            if family.name in reserved or metric_name in reserved:
                conflict(file.name, family.name, "the daemon exports a metric of that name")
                continue
            current = merging.get(family.name)
            if current is None:
                other = by_metric.get(metric_name)
                if other is not None:
                    conflict(file.name, family.name, f"it would be written as {other!r}")
                    continue
                current = merging[family.name] = _Merging(
                    Family(family.name, family.type, family.help), metric_name, metric_type
                )
                by_metric[metric_name] = family.name
            elif family.type != current.family.type:
                conflict(
                    file.name,
                    family.name,
                    f"type {family.type} differs from {current.family.type} in {current.files[0]}",
                )
                continue
            elif (
                family.help is not None
                and current.family.help is not None
                and family.help != current.family.help
            ):
                conflict(file.name, family.name, f"help text differs from {current.files[0]}'s")
                continue
            elif current.family.help is None:
                current.family.help = family.help
            duplicates = 0
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                current.samples.append(Sample(s.name, s.labels, s.value))
            if duplicates:
                conflict(
                    file.name, family.name, f"{duplicates} series already read from another file"
                )
            current.files.append(file.name)

    metrics = []
    for entry in merging.values():
        if not entry.samples:
            continue
        help_text = entry.family.help
        if help_text is None:  # node_exporter's words
            help_text = "Metric read from " + ", ".join(entry.files)
        metric = Metric(entry.metric_name, help_text, entry.metric_type)
        metric.samples = entry.samples
        metrics.append(metric)
    return Merged(metrics, problems)


# -- the collector -----------------------------------------------------------------------------
class TextfileCollector(Collector):
    name = "textfile"

    def __init__(
        self,
        directory: str | None = None,
        *,
        job_grace: float = DEFAULT_JOB_GRACE,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        live_jobs: Callable[[], Collection[str]] | None = None,
        reserved: Collection[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`directory`: None for the default one (whose absence is not an error).
        `live_jobs`: the Slurm job ids with processes on this node now (default: none known,
        so job files are judged by their mtime alone)."""
        if not job_grace >= 0 or not math.isfinite(job_grace):
            raise ValueError("--collector.textfile.job-grace must be a duration, 0 or more")
        if max_file_bytes < 1:
            raise ValueError("--collector.textfile.max-file-bytes must be at least 1")
        self.explicit = directory is not None
        self.directory = directory if directory is not None else DEFAULT_DIRECTORY
        self.job_grace = job_grace
        self.max_file_bytes = max_file_bytes
        self.live_jobs = live_jobs
        self.reserved = frozenset(reserved) | {m.name for m in METRICS}
        self.clock = clock
        self._last_seen: dict[str, float] = {}  # job id → when last seen on the node
        # each file's last reading: its stamp and what it parsed to (or why it did not)
        self._files: dict[str, tuple[Stamp, ParsedFile | str]] = {}
        self._once = OnceLog(log)
        self._reported: set[Hashable] = set()

    def collect(self) -> list[Metric]:
        problems: list[Problem] = []
        known = {name: stamp for name, (stamp, _) in self._files.items()}
        try:
            files = read_directory(self.directory, self.max_file_bytes, known)
        except FileNotFoundError as exc:
            if not self.explicit:
                self._report([])
                raise NoDataError(f"no textfile directory {self.directory}") from exc
            files = []
            problems.append(self._directory_problem(exc))
        except OSError as exc:
            files = []
            problems.append(self._directory_problem(exc))

        parsed = []
        for file in files:
            result = self._load(file)
            if isinstance(result, ParsedFile):
                parsed.append(ParsedFile(file.name, file.mtime, result.families))
            else:
                problems.append(
                    Problem(
                        ("file", file.name, file.mtime, result),
                        "textfile skipped",
                        {"file": file.name, "err": result},
                    )
                )
        present = {file.name for file in files}
        self._files = {n: entry for n, entry in self._files.items() if n in present}
        kept, ignored = self._drop_jobs_gone(parsed)
        merged = merge(kept, self.reserved)
        problems.extend(merged.problems)
        self._report(problems)

        out = Families(METRICS)
        for exported in kept:
            out.add(MTIME, {"file": exported.name}, exported.mtime)
        out.add(SCRAPE_ERROR, {}, 1.0 if problems else 0.0)
        out.add(IGNORED, {}, float(ignored))
        return [*merged.metrics, *out]

    def _load(self, file: TextFile) -> ParsedFile | str:
        """What `file` parses to, or why it cannot be used; parsed once per version of it."""
        if file.unchanged and file.name in self._files:
            return self._files[file.name][1]
        try:
            result: ParsedFile | str = load(file)
        except ValueError as exc:  # ParseError is one
            result = str(exc)
        if file.stamp is not None:
            self._files[file.name] = (file.stamp, result)
        else:
            self._files.pop(file.name, None)
        return result

    def _directory_problem(self, exc: OSError) -> Problem:
        return Problem(
            ("directory", exc.errno),
            "cannot read the textfile directory",
            {"path": self.directory, "err": exc.strerror or str(exc)},
        )

    def _drop_jobs_gone(self, files: list[ParsedFile]) -> tuple[list[ParsedFile], int]:
        """`files` without the samples of Slurm jobs gone from the node for longer than the
        grace, and how many files that left empty (those are left out)."""
        if self.job_grace <= 0:
            return files, 0
        named = set().union(*(slurm_jobs(f.families) for f in files))
        if not named:
            self._last_seen.clear()
            return files, 0
        now = self.clock()
        try:
            live = set(self.live_jobs()) if self.live_jobs is not None else set()
        except Exception as exc:  # attribution failing must not drop anyone's series
            self._once.warning("live-jobs", "cannot tell which jobs run here", err=str(exc))
            return files, 0
        self._once.clear("live-jobs")
        for job in named & live:
            self._last_seen[job] = now
        self._last_seen = {j: t for j, t in self._last_seen.items() if j in named}

        kept, ignored = [], 0
        for file in files:
            reference = file.mtime

            def gone(job: str, reference: float = reference) -> bool:
                return now - max(self._last_seen.get(job, -math.inf), reference) > self.job_grace

            left = without_jobs(file, gone)
            if file.families and not left.families:
                ignored += 1
                continue
            kept.append(left)
        return kept, ignored

    def _report(self, problems: list[Problem]) -> None:
        """Log each problem once; forget those gone, so they are logged again if they return."""
        keys = set()
        for problem in problems:
            keys.add(problem.key)
            self._once.warning(problem.key, problem.message, **problem.fields)
        for key in self._reported - keys:
            self._once.clear(key)
        self._reported = keys


def daemon_metric_names() -> frozenset[str]:
    """Every metric name (and sample name) the node daemon exports itself: a textfile family
    by one of these names would be a second family of that name in the exposition."""
    from hpcobs.exporters import collectors

    definitions = [*scrape.METRICS, *VERSION_METRICS]
    for module in collectors.modules():
        definitions.extend(getattr(module, "METRICS", ()))
    names: set[str] = set()
    for d in definitions:
        names.add(d.name)
        if d.kind == "counter":
            names.add(d.name[: -len("_total")])
        elif d.kind == "histogram":
            names.update(d.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return frozenset(names)


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--collector.textfile.directory",
        dest="textfile_directory",
        default=None,
        metavar="DIR",
        help=f"read the *.prom files of DIR (default {DEFAULT_DIRECTORY}, where "
        "hpcobs-checkpoint and hpcobs-mpi-probe write; when that one does not exist, nothing "
        "is collected)",
    )
    group.add_argument(
        "--collector.textfile.job-grace",
        dest="textfile_job_grace",
        type=parse_duration,
        default=DEFAULT_JOB_GRACE,
        metavar="DURATION",
        help="leave out samples labelled job_id=<Slurm job id> once that job has had no process "
        "on this node for this long (a job never seen: since the file's mtime); 0 keeps them "
        "(default 5m)",
    )
    group.add_argument(
        "--collector.textfile.max-file-bytes",
        dest="textfile_max_file_bytes",
        type=int_at_least(1),
        default=DEFAULT_MAX_FILE_BYTES,
        metavar="N",
        help=f"skip (as an error) files larger than N bytes (default {DEFAULT_MAX_FILE_BYTES})",
    )
    attribution.add_arguments(group)  # the shared attribution service's flags


def _factory(args: argparse.Namespace, services: Services) -> TextfileCollector:
    attributor = services.get(attribution.from_args)

    def live_jobs() -> set[str]:
        return {a.job_id for a in attributor.attribute().values()}

    return TextfileCollector(
        directory=args.textfile_directory,
        job_grace=args.textfile_job_grace,
        max_file_bytes=args.textfile_max_file_bytes,
        live_jobs=live_jobs,
        reserved=daemon_metric_names(),
    )


SPEC = CollectorSpec(
    name="textfile",
    help="metrics from the *.prom files of a directory (node_exporter's textfile collector); "
    "series of Slurm jobs that left the node end",
    default_enabled=True,
    add_arguments=_options,
    factory=_factory,
)
