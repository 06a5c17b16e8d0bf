"""The `--slurm.*` flags as a contract: their names, defaults and which values they accept.

Written before the flags were generated from `SlurmOptions`' fields, and kept to hold them
there: a value is either accepted (into the option it sets) or refused at start-up, by argparse
(exit 2) or by `SlurmOptions` (ValueError, exit 1); where it is refused may move, whether not.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import tzinfo
from pathlib import Path
from typing import Any

import pytest

from hpcobs.exporters.runtime.app import build_parser
from hpcobs.exporters.runtime.cli import parse_args
from hpcobs.exporters.slurm import SPEC
from hpcobs.exporters.slurm.ledger import DEFAULT_CAUSES
from hpcobs.exporters.slurm.options import SlurmOptions

pytestmark = pytest.mark.unit

# flag → (metavar, choices); a boolean flag also takes its --no- form
FLAGS: dict[str, tuple[str | None, tuple[str, ...] | None]] = {
    "--slurm.backend": (None, ("auto", "pyslurm", "portable")),
    "--slurm.conf": ("FILE", None),
    "--slurm.bin-dir": ("DIR", None),
    "--slurm.poll-interval": ("DURATION", None),
    "--slurm.timeout": ("DURATION", None),
    "--slurm.stale-after": ("DURATION", None),
    "--slurm.state-file": ("FILE", None),
    "--slurm.jobcomp-file": ("FILE", None),
    "--slurm.jobcomp-start": (None, ("beginning", "end")),
    "--slurm.jobcomp-timezone": ("ZONE", None),
    "--slurm.wait-thresholds": ("LIST", None),
    "--slurm.wait-buckets": ("LIST", None),
    "--slurm.run-time-buckets": ("LIST", None),
    "--slurm.time-to-result-buckets": ("LIST", None),
    "--slurm.cause-map": ("LIST", None),
    "--slurm.licenses": (None, None),
    "--slurm.scheduler-stats": (None, None),
    "--slurm.reservations": (None, None),
    "--slurm.failed-jobs.max": ("N", None),
    "--slurm.failed-jobs.max-age": ("DURATION", None),
    "--slurm.max-accounts": ("N", None),
    "--slurm.job-log-url": ("URL", None),
    "--slurm.node-reasons.max": ("N", None),
}
BOOLEAN = ("--slurm.licenses", "--slurm.scheduler-stats", "--slurm.reservations")
# 1 minute to 7 days: the run-time and time-to-result bucket bounds
RUN_BUCKETS = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    43200.0,
    86400.0,
    172800.0,
    259200.0,
    604800.0,
)

DEFAULTS: dict[str, Any] = {
    "backend": "auto",
    "slurm_conf": "",
    "bin_dir": "",
    "poll_interval": 30.0,
    "timeout": 10.0,
    "stale_after": 90.0,
    "state_file": None,
    "jobcomp_file": None,
    "jobcomp_start": "beginning",
    "jobcomp_tz": None,
    "thresholds": (3600.0, 14400.0, 86400.0),
    "buckets": (
        10.0,
        30.0,
        60.0,
        300.0,
        600.0,
        1800.0,
        3600.0,
        7200.0,
        14400.0,
        28800.0,
        43200.0,
        86400.0,
        172800.0,
    ),
    "run_buckets": RUN_BUCKETS,
    "result_buckets": RUN_BUCKETS,
    "causes": dict(DEFAULT_CAUSES),
    "licenses": True,
    "scheduler_stats": True,
    "reservations": True,
    "failed_jobs_max": 50,
    "failed_jobs_max_age": 3600.0,
    "max_accounts": 100,
    "job_log_url": "",
    "node_reasons_max": 500,
}


class Refused(Exception):
    pass


def parser() -> argparse.ArgumentParser:
    return build_parser("hpcobs-slurm-exporter", "x", ":9947", [SPEC], paths=False)


def options(argv: Sequence[str]) -> SlurmOptions:
    """The options `argv` gives, or Refused when start-up would refuse them."""
    try:
        return SlurmOptions.from_args(parse_args(parser(), argv))
    except SystemExit as exc:
        assert exc.code == 2
        raise Refused(str(argv)) from exc
    except ValueError as exc:
        raise Refused(str(exc)) from exc


def slurm_actions() -> list[argparse.Action]:
    groups = [g for g in parser()._action_groups if g.title == "collector slurm"]
    assert len(groups) == 1
    return list(groups[0]._group_actions)


def test_the_flag_set() -> None:
    actions = slurm_actions()
    names = [a.option_strings[0] for a in actions]
    assert names == list(FLAGS)
    for action in actions:
        name = action.option_strings[0]
        metavar, choices = FLAGS[name]
        assert action.metavar == metavar, name
        assert (tuple(action.choices) if action.choices else None) == choices, name
        expected = [name, "--no-" + name[2:]] if name in BOOLEAN else [name]
        assert action.option_strings == expected
        assert action.help and not action.required, name


def test_defaults() -> None:
    got = options([])
    assert {k: getattr(got, k) for k in DEFAULTS} == DEFAULTS
    assert got == SlurmOptions()


ACCEPTED: list[tuple[str, str, Any]] = [
    ("--slurm.backend=portable", "backend", "portable"),
    ("--slurm.backend=pyslurm", "backend", "pyslurm"),
    ("--slurm.conf=/etc/slurm/slurm.conf", "slurm_conf", "/etc/slurm/slurm.conf"),
    ("--slurm.bin-dir=/opt/slurm/bin", "bin_dir", "/opt/slurm/bin"),
    ("--slurm.poll-interval=1m", "poll_interval", 60.0),
    ("--slurm.poll-interval=0.5", "poll_interval", 0.5),
    ("--slurm.timeout=500ms", "timeout", 0.5),
    ("--slurm.stale-after=1h", "stale_after", 3600.0),
    ("--slurm.state-file=/var/lib/s.json", "state_file", Path("/var/lib/s.json")),
    ("--slurm.state-file=", "state_file", None),
    ("--slurm.jobcomp-file=/var/log/jc.log", "jobcomp_file", Path("/var/log/jc.log")),
    ("--slurm.jobcomp-file=", "jobcomp_file", None),
    ("--slurm.jobcomp-start=end", "jobcomp_start", "end"),
    ("--slurm.jobcomp-timezone=", "jobcomp_tz", None),
    ("--slurm.wait-thresholds=2h,30m,2h", "thresholds", (1800.0, 7200.0)),
    ("--slurm.wait-thresholds=", "thresholds", ()),
    ("--slurm.wait-buckets=1m,10s", "buckets", (10.0, 60.0)),
    (
        "--slurm.cause-map=preempted=user, DEADLINE=System",
        "causes",
        {**DEFAULT_CAUSES, "preempted": "user", "deadline": "system"},
    ),
    ("--slurm.cause-map=", "causes", dict(DEFAULT_CAUSES)),
    ("--no-slurm.licenses", "licenses", False),
    ("--slurm.licenses", "licenses", True),
    ("--no-slurm.scheduler-stats", "scheduler_stats", False),
    ("--slurm.run-time-buckets=1h,1m", "run_buckets", (60.0, 3600.0)),
    ("--slurm.time-to-result-buckets=30m", "result_buckets", (1800.0,)),
    ("--no-slurm.reservations", "reservations", False),
    ("--slurm.failed-jobs.max=0", "failed_jobs_max", 0),
    ("--slurm.failed-jobs.max=500", "failed_jobs_max", 500),
    ("--slurm.failed-jobs.max-age=1d", "failed_jobs_max_age", 86400.0),
    ("--slurm.max-accounts=0", "max_accounts", 0),
    ("--slurm.max-accounts=20", "max_accounts", 20),
    (
        "--slurm.job-log-url=https://grafana/explore?q={job_id}&from={start}000&to={end}000",
        "job_log_url",
        "https://grafana/explore?q={job_id}&from={start}000&to={end}000",
    ),
    (
        "--slurm.job-log-url=https://ood/jobs/{{x}}/{job_id}",
        "job_log_url",
        "https://ood/jobs/{{x}}/{job_id}",
    ),
    ("--slurm.job-log-url=", "job_log_url", ""),
    ("--slurm.node-reasons.max=0", "node_reasons_max", 0),
    ("--slurm.node-reasons.max=7", "node_reasons_max", 7),
    ("--slurm.node-reasons.max=+7", "node_reasons_max", 7),
]


@pytest.mark.parametrize(("flag", "field", "value"), ACCEPTED)
def test_accepted_values(flag: str, field: str, value: Any) -> None:
    got = options([flag])
    assert getattr(got, field) == value
    others = {k: v for k, v in DEFAULTS.items() if k != field}
    assert {k: getattr(got, k) for k in others} == others


def test_a_time_zone_is_looked_up() -> None:
    zone = options(["--slurm.jobcomp-timezone=Europe/Berlin"]).jobcomp_tz
    assert isinstance(zone, tzinfo) and str(zone) == "Europe/Berlin"


REFUSED: list[list[str]] = [
    ["--slurm.backend=magic"],
    ["--slurm.poll-interval=0"],
    ["--slurm.poll-interval=-1s"],
    ["--slurm.poll-interval=soon"],
    ["--slurm.timeout=0s"],
    ["--slurm.stale-after=30s"],  # not longer than the poll interval
    ["--slurm.poll-interval=2m"],  # now the default stale-after (90s) is too short
    ["--slurm.jobcomp-start=middle"],
    ["--slurm.jobcomp-timezone=Mars/Olympus"],
    ["--slurm.wait-thresholds=0s"],
    ["--slurm.wait-thresholds=1h,x"],
    ["--slurm.wait-buckets=-1"],
    ["--slurm.cause-map=running=user"],
    ["--slurm.cause-map=preempted=nobody"],
    ["--slurm.cause-map=preempted"],
    ["--slurm.run-time-buckets=0"],
    ["--slurm.time-to-result-buckets=soon"],
    ["--slurm.failed-jobs.max=-1"],
    ["--slurm.failed-jobs.max-age=0s"],
    ["--slurm.max-accounts=-5"],
    ["--slurm.job-log-url=https://logs/"],  # no {job_id}
    ["--slurm.job-log-url=https://logs/{job}"],
    ["--slurm.job-log-url=https://logs/{job_id!r}"],
    ["--slurm.job-log-url=https://logs/{job_id:>9}"],
    ["--slurm.job-log-url=https://logs/{job_id"],
    ["--slurm.node-reasons.max=-1"],
    ["--slurm.node-reasons.max=1.5"],
    ["--slurm.node-reasons.max=many"],
    ["--slurm.licenses=yes"],
    ["--slurm.poll"],  # no abbreviations
]


@pytest.mark.parametrize("argv", REFUSED, ids=lambda a: a[0])
def test_refused_values(argv: list[str]) -> None:
    with pytest.raises(Refused):
        options(argv)


def test_the_config_file_takes_the_same_names_and_checks(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(
        "slurm:\n  licenses: false\n  node-reasons.max: 3\n  wait-thresholds: 1h\n"
        "  state-file: /tmp/s.json\n"
    )
    got = options([f"--config.file={good}", "--slurm.node-reasons.max=4"])
    assert (got.licenses, got.node_reasons_max, got.thresholds) == (False, 4, (3600.0,))
    assert got.state_file == Path("/tmp/s.json")
    for text in ("slurm.node-reasons.max: -1\n", "slurm.backend: magic\n", "slurm.licenses: 1\n"):
        bad = tmp_path / "bad.yml"
        bad.write_text(text)
        with pytest.raises(Refused):
            options([f"--config.file={bad}"])


def test_the_docs_list_every_flag() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "slurm-exporter.md").read_text()
    table = doc.split("## Flags", 1)[1].split("\n\n", 2)[1]
    documented = set()
    for row in table.splitlines()[2:]:
        name = row.split("`")[1]
        documented.add(name.replace("--[no-]", "--"))
    assert documented == set(FLAGS)
