"""`--slurm.*` flags, each declared once: as a field of `SlurmOptions`.

A field's metadata holds its `Flag` (name, help, metavar, and the argparse `type=` that
checks and converts the text into the field's value); the field's default is the flag's.
`add_arguments` and `SlurmOptions.from_args` are generated from the fields, so a new option
is one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hpcobs.exporters.runtime.cli import int_at_least, parse_duration
from hpcobs.exporters.slurm.backend import BACKENDS
from hpcobs.exporters.slurm.ledger import CAUSES, DEFAULT_CAUSES
from hpcobs.exporters.slurm.model import FINISHED_STATES

DEFAULT_THRESHOLDS = "1h,4h,24h"
DEFAULT_BUCKETS = "10s,30s,1m,5m,10m,30m,1h,2h,4h,8h,12h,1d,2d"
DEFAULT_RUN_BUCKETS = "1m,5m,15m,30m,1h,2h,4h,8h,12h,1d,2d,3d,7d"
LOG_URL_FIELDS = ("job_id", "user", "account", "partition", "start", "end")
"""Placeholders of --slurm.job-log-url (each replaced by the URL-quoted value)."""


# -- flag value types (argparse `type=`: text → the field's value, ArgumentTypeError if bad) --


def parse_durations(text: str) -> tuple[float, ...]:
    """`1h,4h,24h` → (3600.0, 14400.0, 86400.0); each must be positive."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        value = parse_duration(part)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"durations must be positive, not {part!r}")
        values.append(value)
    return tuple(sorted(set(values)))


def parse_cause_map(text: str) -> dict[str, str]:
    """`preempted=user,deadline=system` → overrides of the default state → cause mapping."""
    out: dict[str, str] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        state, sep, cause = part.partition("=")
        state, cause = state.strip().lower(), cause.strip().lower()
        if not sep or state not in FINISHED_STATES or cause not in CAUSES:
            raise argparse.ArgumentTypeError(
                f"cause mapping entries are STATE=CAUSE with STATE one of "
                f"{', '.join(sorted(FINISHED_STATES))} and CAUSE one of {', '.join(CAUSES)}; "
                f"not {part!r}"
            )
        out[state] = cause
    return out


def _causes(text: str) -> dict[str, str]:
    return {**DEFAULT_CAUSES, **parse_cause_map(text)}


def parse_log_url(text: str) -> str:
    """A URL template with `{job_id}` (and optionally {user}, {account}, {partition},
    {start}, {end}); "" for none. Literal braces are written `{{` and `}}`."""
    text = str(text).strip()
    if not text:
        return ""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
        specs = [(spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad URL template {text!r}: {exc}") from None
    unknown = sorted({f for f in fields if f not in LOG_URL_FIELDS})
    if unknown or any(spec or conv for spec, conv in specs):
        raise argparse.ArgumentTypeError(
            f"the URL template {text!r} may hold only "
            f"{', '.join('{' + f + '}' for f in LOG_URL_FIELDS)} (no format specification), "
            f"not {', '.join(repr('{' + f + '}') for f in unknown) or 'a format specification'}"
        )
    if "job_id" not in fields:
        raise argparse.ArgumentTypeError(f"the URL template {text!r} lacks {{job_id}}")
    return text


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _time_zone(text: str) -> tzinfo | None:
    if not text:
        return None
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r}") from None


# -- the declaration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """How one `SlurmOptions` field is set on the command line (and in `--config.file`)."""

    name: str
    help: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    boolean: bool = False  # --NAME / --no-NAME
    at_least: int | None = None  # an integer flag with a lower bound

    @property
    def dest(self) -> str:
        """`--slurm.node-reasons.max` → `slurm_node_reasons_max` (the argparse destination)."""
        return self.name[2:].replace(".", "_").replace("-", "_")

    def argparse_kwargs(self, default: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {"dest": self.dest, "default": default, "help": self.help}
        if self.boolean:
            kw["action"] = argparse.BooleanOptionalAction
            return kw
        if self.at_least is not None:
            kw["type"] = int_at_least(self.at_least)
        elif self.type is not None:
            kw["type"] = self.type
        if self.choices is not None:
            kw["choices"] = self.choices
        if self.metavar is not None:
            kw["metavar"] = self.metavar
        return kw


@dataclass(frozen=True)
class SlurmOptions:
    backend: str = field(
        default="auto",
        metadata={
            "flag": Flag(
                "--slurm.backend",
                "where to read Slurm: pyslurm, the portable commands, or auto (pyslurm when "
                "installed and matching the installed Slurm; default auto)",
                choices=BACKENDS,
            )
        },
    )
    slurm_conf: str = field(
        default="",
        metadata={
            "flag": Flag(
                "--slurm.conf",
                "slurm.conf of the cluster to read (SLURM_CONF for the commands / pyslurm)",
                metavar="FILE",
            )
        },
    )
    bin_dir: str = field(
        default="",
        metadata={
            "flag": Flag(
                "--slurm.bin-dir",
                "folder of squeue, sinfo, sdiag, scontrol (default: from PATH)",
                metavar="DIR",
            )
        },
    )
    poll_interval: float = field(
        default=30.0,
        metadata={
            "flag": Flag(
                "--slurm.poll-interval",
                "one collection cycle (at most 3 slurmctld calls) per interval (default 30s)",
                metavar="DURATION",
                type=parse_duration,
            )
        },
    )
    timeout: float = field(
        default=10.0,
        metadata={
            "flag": Flag(
                "--slurm.timeout",
                "time limit of each slurmctld call (default 10s)",
                metavar="DURATION",
                type=parse_duration,
            )
        },
    )
    stale_after: float = field(
        default=90.0,
        metadata={
            "flag": Flag(
                "--slurm.stale-after",
                "stop serving queue/node gauges this long after the last successful cycle "
                "(default 90s; counters are always served)",
                metavar="DURATION",
                type=parse_duration,
            )
        },
    )
    state_file: Path | None = field(
        default=None,
        metadata={
            "flag": Flag(
                "--slurm.state-file",
                "where to keep the job ledger so a restart neither double-counts nor misses "
                "finished jobs (written atomically; without it a restart recounts the finished "
                "jobs slurmctld still shows)",
                metavar="FILE",
                type=_optional_path,
            )
        },
    )
    jobcomp_file: Path | None = field(
        default=None,
        metadata={
            "flag": Flag(
                "--slurm.jobcomp-file",
                "a jobcomp/filetxt log (JobCompLoc) to tail for finished jobs, so jobs that "
                "left slurmctld (MinJobAge) while the exporter was down are still counted",
                metavar="FILE",
                type=_optional_path,
            )
        },
    )
    jobcomp_start: str = field(
        default="beginning",
        metadata={
            "flag": Flag(
                "--slurm.jobcomp-start",
                "where to start reading the jobcomp log the first time (default beginning: "
                "count its whole history); later reads continue from the saved offset",
                choices=("beginning", "end"),
            )
        },
    )
    jobcomp_tz: tzinfo | None = field(
        default=None,
        metadata={
            "flag": Flag(
                "--slurm.jobcomp-timezone",
                "time zone of slurmctld, in which the jobcomp log writes times (default: local)",
                metavar="ZONE",
                type=_time_zone,
            )
        },
    )
    thresholds: tuple[float, ...] = field(
        default=parse_durations(DEFAULT_THRESHOLDS),
        metadata={
            "flag": Flag(
                "--slurm.wait-thresholds",
                "queue-wait SLO thresholds counted by hpcobs_slurm_jobs_wait_exceeded_total, "
                f"also histogram bucket bounds (default {DEFAULT_THRESHOLDS})",
                metavar="LIST",
                type=parse_durations,
            )
        },
    )
    buckets: tuple[float, ...] = field(
        default=parse_durations(DEFAULT_BUCKETS),
        metadata={
            "flag": Flag(
                "--slurm.wait-buckets",
                f"queue-wait histogram bucket bounds (default {DEFAULT_BUCKETS})",
                metavar="LIST",
                type=parse_durations,
            )
        },
    )
    run_buckets: tuple[float, ...] = field(
        default=parse_durations(DEFAULT_RUN_BUCKETS),
        metadata={
            "flag": Flag(
                "--slurm.run-time-buckets",
                "bucket bounds of hpcobs_slurm_job_run_seconds (make-span of finished jobs; "
                f"default {DEFAULT_RUN_BUCKETS})",
                metavar="LIST",
                type=parse_durations,
            )
        },
    )
    result_buckets: tuple[float, ...] = field(
        default=parse_durations(DEFAULT_RUN_BUCKETS),
        metadata={
            "flag": Flag(
                "--slurm.time-to-result-buckets",
                "bucket bounds of hpcobs_slurm_job_time_to_result_seconds (submit to end of "
                f"completed jobs; default {DEFAULT_RUN_BUCKETS})",
                metavar="LIST",
                type=parse_durations,
            )
        },
    )
    causes: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_CAUSES),
        metadata={
            "flag": Flag(
                "--slurm.cause-map",
                "override the cause of finished-job states, e.g. preempted=user,deadline=system "
                "(default: node_fail, boot_fail, preempted → system; completed → none; the rest → "
                "user)",
                metavar="LIST",
                type=_causes,
            )
        },
    )
    licenses: bool = field(
        default=True,
        metadata={
            "flag": Flag(
                "--slurm.licenses",
                "read license use (takes turns with the scheduler statistics; default on)",
                boolean=True,
            )
        },
    )
    scheduler_stats: bool = field(
        default=True,
        metadata={
            "flag": Flag(
                "--slurm.scheduler-stats",
                "read sdiag's scheduler statistics (default on)",
                boolean=True,
            )
        },
    )
    reservations: bool = field(
        default=True,
        metadata={
            "flag": Flag(
                "--slurm.reservations",
                "read reservations (takes turns with licenses and scheduler statistics; "
                "default on): hpcobs_slurm_reservation_*, hpcobs_slurm_node_maintenance",
                boolean=True,
            )
        },
    )
    failed_jobs_max: int = field(
        default=50,
        metadata={
            "flag": Flag(
                "--slurm.failed-jobs.max",
                "hpcobs_slurm_job_failed_info lists at most this many of the latest failed "
                "jobs (default 50)",
                metavar="N",
                at_least=0,
            )
        },
    )
    failed_jobs_max_age: float = field(
        default=3600.0,
        metadata={
            "flag": Flag(
                "--slurm.failed-jobs.max-age",
                "and only those that ended within this time (default 1h)",
                metavar="DURATION",
                type=parse_duration,
            )
        },
    )
    max_accounts: int = field(
        default=100,
        metadata={
            "flag": Flag(
                "--slurm.max-accounts",
                "hpcobs_slurm_account_resource_seconds_total names at most this many accounts, "
                'the most used; the rest count as account="other" (default 100)',
                metavar="N",
                at_least=0,
            )
        },
    )
    job_log_url: str = field(
        default="",
        metadata={
            "flag": Flag(
                "--slurm.job-log-url",
                "URL template of a job's logs (a Loki, Elasticsearch or Open OnDemand search), "
                "with {job_id} and optionally {user}, {account}, {partition}, {start}, {end}: "
                "hpcobs_slurm_job_failed_info gets it, filled in, as its log_url label "
                "(default none; the exporter never reads job output)",
                metavar="URL",
                type=parse_log_url,
            )
        },
    )
    node_reasons_max: int = field(
        default=500,
        metadata={
            "flag": Flag(
                "--slurm.node-reasons.max",
                "at most this many hpcobs_slurm_node_reason_info series (default 500)",
                metavar="N",
                at_least=0,
            )
        },
    )

    def __post_init__(self) -> None:
        for name in ("poll_interval", "timeout", "failed_jobs_max_age"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{flag_of(name).name} must be positive")
        if self.stale_after <= self.poll_interval:
            raise ValueError(
                f"{flag_of('stale_after').name} ({self.stale_after:g}s) must be longer than "
                f"{flag_of('poll_interval').name} ({self.poll_interval:g}s)"
            )
        for f in _FIELDS:  # what the flags' int_at_least refuses, for options made in code
            bound = _flag(f).at_least
            if bound is not None and getattr(self, f.name) < bound:
                raise ValueError(f"{_flag(f).name} must be at least {bound}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SlurmOptions:
        """The options `add_arguments`' flags parsed (their types converted the text)."""
        return cls(**{f.name: getattr(args, _flag(f).dest) for f in _FIELDS})


_FIELDS = dataclasses.fields(SlurmOptions)


def _flag(f: dataclasses.Field[Any]) -> Flag:
    flag: Flag = f.metadata["flag"]
    return flag


def flag_of(field_name: str) -> Flag:
    """The flag that sets `SlurmOptions.<field_name>`."""
    (f,) = (f for f in _FIELDS if f.name == field_name)
    return _flag(f)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """One flag per `SlurmOptions` field, in field order, with the field's default."""
    defaults = SlurmOptions()
    for f in _FIELDS:
        group.add_argument(_flag(f).name, **_flag(f).argparse_kwargs(getattr(defaults, f.name)))
