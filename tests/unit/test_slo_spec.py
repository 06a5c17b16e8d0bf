"""Spec loading and `hpcobs-slo validate`: every problem with file, line and a fix hint.

The invalid specs are files in tests/data/slo/invalid/; each lists, in `# expect:` comments,
every problem it must produce (line, severity, text). The checked-in examples must load
cleanly, and an OpenSLO document must mean the same as the equivalent hpcobs spec.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcobs.slo.cli import main
from hpcobs.slo.loader import load_specs, load_texts
from hpcobs.slo.model import PAGE, TICKET, LatencySLI, Period, RatioSLI, Term, WeightedSLI
from hpcobs.slo.selector import Matcher, Selector

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent.parent / "data" / "slo"
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
EXAMPLES = Path(__file__).resolve().parents[2] / "slo" / "examples"
EXPECT = re.compile(r"^# expect: (\d+) (error|warning) (.+)$")


def expectations(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = EXPECT.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_spec_reports_every_problem_with_line_and_hint(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} lists no expectations"
    problems = load_specs([path]).problems.sorted()
    got = [(p.line, p.severity, p.message) for p in problems]
    for line, severity, text in expected:
        assert any(ln == line and sev == severity and text in msg for ln, sev, msg in got), (
            f"missing: {line} {severity} {text!r}\ngot:\n" + "\n".join(map(str, got))
        )
    unexpected = [
        g
        for g in got
        if not any(g[0] == ln and g[1] == sev and t in g[2] for ln, sev, t in expected)
    ]
    assert not unexpected, f"unexpected problems: {unexpected}"
    for p in problems:
        assert p.file == str(path)
        assert p.hint.strip(), f"no hint for {p}"


def test_validate_cli_prints_file_line_and_hint_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = DATA / "invalid" / "native-errors.yaml"
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:18: error: slos[0]: unknown key 'objectiv'" in err
    assert "hint: did you mean 'objective'?" in err
    assert "error(s) in 1 file(s)" in err


def test_validate_cli_warnings_do_not_fail(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(DATA / "invalid" / "never-fires.yaml")]) == 0
    captured = capsys.readouterr()
    assert "warning: SLO 'lenient': SLOBurnRatePage" in captured.err
    assert "raise the objective above 93.06 %" in captured.err
    assert "1 SLO(s) in 1 file(s): OK, 1 warning(s)" in captured.out


def test_examples_load_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_specs([EXAMPLES])
    assert loaded.ok and not loaded.problems.warnings, [str(p) for p in loaded.problems.items]
    ids = {s.id for s in loaded.slos}
    assert {
        "job-success",
        "gpu-hours-lost",
        "allreduce-latency",
        "jobs-without-node-failure",
    } <= ids
    assert {"queue-wait-cpu", "queue-wait-gpu", "queue-wait-debug"} <= ids
    kinds = {s.sli.kind for s in loaded.slos}
    assert kinds == {"ratio", "latency", "weighted"}
    assert main(["validate", str(EXAMPLES)]) == 0


def test_native_model_of_each_kind() -> None:
    loaded = load_specs([EXAMPLES])
    by_id = {s.id: s for s in loaded.slos}
    job = by_id["job-success"]
    assert job.objective == Decimal("0.995") and job.error_budget == Decimal("0.005")
    assert job.period == Period("rolling", 30)
    assert dict(job.labels) == {"team": "hpc-ops"}
    assert dict(job.alerting.min_events) == {"1h": 20, "6h": 20, "1d": 20, "3d": 20}
    assert isinstance(job.sli, RatioSLI)
    ev = job.sli.events()
    assert ev.bad == (
        Term(Selector("hpcobs_slurm_jobs_finished_total", (Matcher("cause", "=", "system"),))),
    )
    wait = by_id["queue-wait-gpu"]
    assert isinstance(wait.sli, LatencySLI) and wait.sli.threshold == 3600
    assert ("partition", "gpu") in wait.labels
    ev = wait.sli.events()
    (good,) = ev.good
    assert good.selector.metric == "hpcobs_slurm_job_queue_wait_seconds_bucket"
    assert good.matches({"partition": "gpu", "le": "3600"})
    assert good.matches({"partition": "gpu", "le": "3600.0"})
    assert not good.matches({"partition": "cpu", "le": "3600"})
    assert not good.matches({"partition": "gpu", "le": "36000"})
    (bad,) = ev.bad
    assert bad.matches({"partition": "gpu", "threshold": "3600"}) and not ev.total
    gpu = by_id["gpu-hours-lost"]
    assert isinstance(gpu.sli, WeightedSLI)
    (lost,) = gpu.sli.events().bad
    assert lost.matches({"resource": "gpu", "state": "node_fail"})
    assert not lost.matches({"resource": "cpu", "state": "node_fail"})
    assert not lost.matches({"resource": "gpu", "state": "failed"})
    probe = by_id["allreduce-latency"]
    assert isinstance(probe.sli, LatencySLI) and probe.sli.source == "gauge"
    assert probe.alert_defs() == (TICKET,)
    (ok,) = probe.sli.events().good
    (all_slices,) = probe.sli.events().total
    assert ok.below == 0.0001 and all_slices.below == math.inf


OPENSLO = """
apiVersion: openslo/v1
kind: Service
metadata: {name: slurm}
spec: {description: the batch system}
---
apiVersion: openslo/v1
kind: SLO
metadata:
  name: job-success
  labels: {team: [hpc-ops]}
spec:
  description: Jobs that do not fail because of the system
  service: slurm
  indicator:
    metadata: {name: job-success-sli}
    spec:
      ratioMetric:
        counter: true
        bad: {metricSource: {type: Prometheus, spec: {query: 'hpcobs_slurm_jobs_finished_total{cause="system"}'}}}
        total: {metricSource: {type: Prometheus, spec: {query: hpcobs_slurm_jobs_finished_total}}}
  timeWindow: [{duration: 1M, isRolling: false, calendar: {startTime: "2024-01-01 00:00:00", timeZone: UTC}}]
  budgetingMethod: Occurrences
  objectives: [{displayName: ok, targetPercent: 99.5}]
"""

NATIVE = """
version: hpcobs.slo/v1
service: slurm
slos:
  - id: job-success
    description: Jobs that do not fail because of the system
    objective: 99.5
    period: calendar-month
    labels: {team: hpc-ops}
    sli:
      ratio:
        bad: hpcobs_slurm_jobs_finished_total{cause="system"}
        total: hpcobs_slurm_jobs_finished_total
"""


def test_openslo_means_the_same_as_the_native_spec() -> None:
    a = load_texts([("a.yaml", OPENSLO)])
    b = load_texts([("b.yaml", NATIVE)])
    assert a.ok and b.ok, [str(p) for p in a.problems.items + b.problems.items]
    (x,), (y,) = a.slos, b.slos
    for field in (
        "id",
        "service",
        "objective",
        "sli",
        "period",
        "description",
        "labels",
        "alerting",
    ):
        assert getattr(x, field) == getattr(y, field), field


def test_duplicate_ids_across_files_name_both_places() -> None:
    text = "version: hpcobs.slo/v1\nservice: s\nslos:\n  - id: same\n    objective: 99\n    sli: {ratio: {bad: a_total, total: b_total}}\n"
    loaded = load_texts([("one.yaml", text), ("two.yaml", text)])
    (problem,) = loaded.problems.errors
    assert (problem.file, problem.line) == ("two.yaml", 4)
    assert "already defined at one.yaml:4" in problem.message
    assert [s.file for s in loaded.slos] == ["one.yaml"]


def test_every_never_firing_alert_is_warned_about() -> None:
    text = "version: hpcobs.slo/v1\nservice: s\nslos:\n  - id: loose\n    objective: 80\n    sli: {ratio: {bad: a_total, total: b_total}}\n"
    warnings = load_texts([("f.yaml", text)]).problems.warnings
    # 14.4 x 0.2, 6 x 0.2 and 3 x 0.2... only factors with factor x 0.2 >= 1 can never fire.
    assert {w.message.split(": ")[1].split(" (")[0] for w in warnings} == {"SLOBurnRatePage"}
    assert len(warnings) == 2  # 14.4x and 6x
    assert all(f"{c.factor}×" in w.message for w, c in zip(warnings, PAGE.conditions, strict=True))


def test_missing_paths_and_empty_folders(tmp_path: Path) -> None:
    loaded = load_specs([tmp_path / "nope.yaml", tmp_path])
    messages = [p.message for p in loaded.problems.errors]
    assert "no such file or folder" in messages
    assert "no *.yaml or *.yml files in this folder" in messages


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_never_crashes_the_loader(text: str) -> None:
    loaded = load_texts([("fuzz.yaml", text)])
    for p in loaded.problems.items:
        assert p.hint


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
_docs = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "version",
                    "service",
                    "slos",
                    "id",
                    "objective",
                    "sli",
                    "ratio",
                    "bad",
                    "total",
                    "latency",
                    "weighted",
                    "alerting",
                    "min_events",
                    "apiVersion",
                    "kind",
                    "spec",
                    "metadata",
                    "name",
                    "period",
                    "expand",
                    "selector",
                    "threshold",
                    "histogram",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_docs, st.booleans())
def test_arbitrary_structures_never_crash_the_loader(doc: object, native: bool) -> None:
    if isinstance(doc, dict):
        doc = {**doc, **({"version": "hpcobs.slo/v1"} if native else {"apiVersion": "openslo/v1"})}
    loaded = load_texts([("fuzz.yaml", yaml.safe_dump(doc))])
    for p in loaded.problems.items:
        assert p.line >= 0 and p.hint


def test_offline_bucket_defaults_follow_the_slurm_exporter() -> None:
    from hpcobs.exporters.slurm.ledger import DEFAULT_CAUSES
    from hpcobs.exporters.slurm.options import DEFAULT_BUCKETS, DEFAULT_THRESHOLDS, parse_durations
    from hpcobs.slo.spec import DEFAULT_BAD_STATES, SLURM_WAIT_BUCKETS, SLURM_WAIT_THRESHOLDS

    assert parse_durations(DEFAULT_THRESHOLDS) == SLURM_WAIT_THRESHOLDS
    assert parse_durations(DEFAULT_BUCKETS) == SLURM_WAIT_BUCKETS
    # the weighted SLI's default bad states are system failures for the exporter too
    assert all(DEFAULT_CAUSES[s] == "system" for s in DEFAULT_BAD_STATES)


def test_yaml_anchors_and_merge_keys() -> None:
    """Values are built from the parser's events (issue 14.6): anchors, aliases and merge
    keys still work; a key of the mapping itself overrides a merged one (not a duplicate)."""
    text = """version: hpcobs.slo/v1
service: s
slos:
  - &base
    id: a
    objective: 99
    labels: &labels {tier: "1", team: hpc}
    sli: {ratio: {bad: a_total, total: b_total}}
  - <<: *base
    id: b
    labels: {<<: *labels, tier: "2"}
  - <<: [{id: c, objective: 95}, *base]
    id: c
"""
    loaded = load_texts([("m.yaml", text)])
    assert loaded.ok, [str(p) for p in loaded.problems.items]
    a, b, c = loaded.slos
    assert (b.id, b.objective, b.sli) == ("b", a.objective, a.sli)
    assert b.labels == (("tier", "2"), ("team", "hpc"))
    assert (c.id, c.objective, c.line) == ("c", Decimal("0.95"), 12)
    dup = load_texts([("d.yaml", text.replace("    id: c\n", "    id: c\n    id: d\n"))])
    (problem,) = dup.problems.errors
    assert (problem.line, problem.message) == (14, "slos[2]: duplicate key 'id'")
