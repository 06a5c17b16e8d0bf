"""`--slurm.*` flags and their validation into one `SlurmOptions`."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hpcobs.exporters.parse.slurm import FINISHED_STATES
from hpcobs.exporters.runtime.cli import parse_duration
from hpcobs.exporters.slurm.backend import BACKENDS
from hpcobs.exporters.slurm.ledger import CAUSES, DEFAULT_CAUSES

DEFAULT_THRESHOLDS = "1h,4h,24h"
DEFAULT_BUCKETS = "10s,30s,1m,5m,10m,30m,1h,2h,4h,8h,12h,1d,2d"


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


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--slurm.backend",
        dest="slurm_backend",
        choices=BACKENDS,
        default="auto",
        help="where to read Slurm: pyslurm, the portable commands, or auto (pyslurm when "
        "installed and matching the installed Slurm; default auto)",
    )
    group.add_argument(
        "--slurm.conf",
        dest="slurm_conf",
        default="",
        metavar="FILE",
        help="slurm.conf of the cluster to read (SLURM_CONF for the commands / pyslurm)",
    )
    group.add_argument(
        "--slurm.bin-dir",
        dest="slurm_bin_dir",
        default="",
        metavar="DIR",
        help="folder of squeue, sinfo, sdiag, scontrol (default: from PATH)",
    )
    group.add_argument(
        "--slurm.poll-interval",
        dest="slurm_poll_interval",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="one collection cycle (at most 3 slurmctld calls) per interval (default 30s)",
    )
    group.add_argument(
        "--slurm.timeout",
        dest="slurm_timeout",
        type=parse_duration,
        default=10.0,
        metavar="DURATION",
        help="time limit of each slurmctld call (default 10s)",
    )
    group.add_argument(
        "--slurm.stale-after",
        dest="slurm_stale_after",
        type=parse_duration,
        default=90.0,
        metavar="DURATION",
        help="stop serving queue/node gauges this long after the last successful cycle "
        "(default 90s; counters are always served)",
    )
    group.add_argument(
        "--slurm.state-file",
        dest="slurm_state_file",
        default="",
        metavar="FILE",
        help="where to keep the job ledger so a restart neither double-counts nor misses "
        "finished jobs (written atomically; without it a restart recounts the finished "
        "jobs slurmctld still shows)",
    )
    group.add_argument(
        "--slurm.jobcomp-file",
        dest="slurm_jobcomp_file",
        default="",
        metavar="FILE",
        help="a jobcomp/filetxt log (JobCompLoc) to tail for finished jobs, so jobs that "
        "left slurmctld (MinJobAge) while the exporter was down are still counted",
    )
    group.add_argument(
        "--slurm.jobcomp-start",
        dest="slurm_jobcomp_start",
        choices=("beginning", "end"),
        default="beginning",
        help="where to start reading the jobcomp log the first time (default beginning: "
        "count its whole history); later reads continue from the saved offset",
    )
    group.add_argument(
        "--slurm.jobcomp-timezone",
        dest="slurm_jobcomp_timezone",
        default="",
        metavar="ZONE",
        help="time zone of slurmctld, in which the jobcomp log writes times (default: local)",
    )
    group.add_argument(
        "--slurm.wait-thresholds",
        dest="slurm_wait_thresholds",
        type=parse_durations,
        default=parse_durations(DEFAULT_THRESHOLDS),
        metavar="LIST",
        help="queue-wait SLO thresholds counted by hpcobs_slurm_jobs_wait_exceeded_total, "
        f"also histogram bucket bounds (default {DEFAULT_THRESHOLDS})",
    )
    group.add_argument(
        "--slurm.wait-buckets",
        dest="slurm_wait_buckets",
        type=parse_durations,
        default=parse_durations(DEFAULT_BUCKETS),
        metavar="LIST",
        help=f"queue-wait histogram bucket bounds (default {DEFAULT_BUCKETS})",
    )
    group.add_argument(
        "--slurm.cause-map",
        dest="slurm_cause_map",
        type=parse_cause_map,
        default={},
        metavar="LIST",
        help="override the cause of finished-job states, e.g. preempted=user,deadline=system "
        "(default: node_fail, boot_fail, preempted → system; completed → none; the rest → user)",
    )
    group.add_argument(
        "--slurm.licenses",
        dest="slurm_licenses",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read license use (takes turns with the scheduler statistics; default on)",
    )
    group.add_argument(
        "--slurm.scheduler-stats",
        dest="slurm_scheduler_stats",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read sdiag's scheduler statistics (default on)",
    )
    group.add_argument(
        "--slurm.node-reasons.max",
        dest="slurm_node_reasons_max",
        type=int,
        default=500,
        metavar="N",
        help="at most this many hpcobs_slurm_node_reason_info series (default 500)",
    )


@dataclass(frozen=True)
class SlurmOptions:
    backend: str = "auto"
    slurm_conf: str = ""
    bin_dir: str = ""
    poll_interval: float = 30.0
    timeout: float = 10.0
    stale_after: float = 90.0
    state_file: Path | None = None
    jobcomp_file: Path | None = None
    jobcomp_start: str = "beginning"
    jobcomp_tz: tzinfo | None = None
    thresholds: tuple[float, ...] = parse_durations(DEFAULT_THRESHOLDS)
    buckets: tuple[float, ...] = parse_durations(DEFAULT_BUCKETS)
    causes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CAUSES))
    licenses: bool = True
    scheduler_stats: bool = True
    node_reasons_max: int = 500

    def __post_init__(self) -> None:
        if self.poll_interval <= 0:
            raise ValueError("--slurm.poll-interval must be positive")
        if self.timeout <= 0:
            raise ValueError("--slurm.timeout must be positive")
        if self.stale_after <= self.poll_interval:
            raise ValueError(
                f"--slurm.stale-after ({self.stale_after:g}s) must be longer than "
                f"--slurm.poll-interval ({self.poll_interval:g}s)"
            )
        if self.node_reasons_max < 0:
            raise ValueError("--slurm.node-reasons.max must not be negative")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SlurmOptions:
        tz: tzinfo | None = None
        if args.slurm_jobcomp_timezone:
            try:
                tz = ZoneInfo(args.slurm_jobcomp_timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(
                    f"--slurm.jobcomp-timezone: unknown time zone {args.slurm_jobcomp_timezone!r}"
                ) from exc
        return cls(
            backend=args.slurm_backend,
            slurm_conf=args.slurm_conf,
            bin_dir=args.slurm_bin_dir,
            poll_interval=args.slurm_poll_interval,
            timeout=args.slurm_timeout,
            stale_after=args.slurm_stale_after,
            state_file=Path(args.slurm_state_file) if args.slurm_state_file else None,
            jobcomp_file=Path(args.slurm_jobcomp_file) if args.slurm_jobcomp_file else None,
            jobcomp_start=args.slurm_jobcomp_start,
            jobcomp_tz=tz,
            thresholds=tuple(args.slurm_wait_thresholds),
            buckets=tuple(args.slurm_wait_buckets),
            causes={**DEFAULT_CAUSES, **args.slurm_cause_map},
            licenses=args.slurm_licenses,
            scheduler_stats=args.slurm_scheduler_stats,
            node_reasons_max=args.slurm_node_reasons_max,
        )
