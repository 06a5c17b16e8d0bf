"""`hpcobs-slo rules --engine victoriametrics`: rules vmalert evaluates right, live and in
`-replay` (the real runs are in tests/real/test_slo_victoriametrics.py).

What differs from the Prometheus rules, and is checked here:
- no `@` modifier (vmalert resolves `@ end()` in a subquery to the end of the step-aligned
  range live, and to the end of the replayed range in `-replay`);
- one group per SLO, each rule after the rules it reads (`vmalert -replay` replays groups in
  another order than the file's);
- meta rules and alerts compute their ratios from the recorded counts, never from a recorded
  ratio (vmalert marks no vanished series stale);
- the same series names, labels, alerts and annotations as the Prometheus rules.

And what does not: the same promtool unit tests (tests/golden/slo/*.test.yml, hand-computed)
pass on these rules under Prometheus, so the portable expressions compute what the Prometheus
ones compute; the Prometheus output itself is still the golden files' (test_slo_rules.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcobs.slo.cli import main
from hpcobs.slo.loader import load_specs
from hpcobs.slo.rules import ENGINES, RATIO, RuleOptions, render

from harness.servers import find_binary

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "slo"
EXAMPLES = Path(__file__).resolve().parents[2] / "slo" / "examples"
SPECS = sorted(GOLDEN.glob("*.spec.yaml"))
# uneven.test.yml checks the 1d and 3d windows, whose rules are the same for both engines
TESTS = sorted(t for t in GOLDEN.glob("*.test.yml") if t.name != "uneven.test.yml")
RECORDED = re.compile(r"\bslo:[a-z_]+:[a-z_0-9]+\b")
KINDS = ("hpcobs-slo-sli-recordings-", "hpcobs-slo-meta-recordings-", "hpcobs-slo-alerts-")


def generate(
    paths: list[Path], engine: str = "victoriametrics", interval: str | None = None
) -> str:
    loaded = load_specs(paths)
    assert loaded.ok, [str(p) for p in loaded.problems.errors]
    options = RuleOptions(interval=interval, engine=engine)  # type: ignore[arg-type]
    return render(loaded.slos, options, [Path(f).name for f in loaded.files])


def groups(text: str) -> list[dict[str, Any]]:
    doc: list[dict[str, Any]] = yaml.safe_load(text)["groups"]
    return doc


def test_engines() -> None:
    assert ENGINES == ("prometheus", "victoriametrics")
    assert RuleOptions().engine == "prometheus"
    spec = GOLDEN / "burn.spec.yaml"
    assert generate([spec], "prometheus") == (GOLDEN / "burn.rules.yml").read_text()


@pytest.mark.parametrize("source", [*SPECS, EXAMPLES], ids=lambda p: p.name)
def test_no_at_modifier_and_one_group_per_slo_in_dependency_order(source: Path) -> None:
    got = groups(generate([source]))
    slos = load_specs([source]).slos
    assert [g["name"] for g in got] == [f"hpcobs-slo-{s.id}" for s in slos]
    for group in got:
        defined: set[str] = set()
        for rule in group["rules"]:
            assert "@" not in rule["expr"], rule
            read = set(RECORDED.findall(rule["expr"]))
            assert read <= defined, (group["name"], rule.get("record", rule.get("alert")))
            if "record" in rule:
                defined.add(rule["record"])


@pytest.mark.parametrize("source", [*SPECS, EXAMPLES], ids=lambda p: p.name)
def test_same_series_alerts_and_annotations_as_the_prometheus_rules(source: Path) -> None:
    def rules(engine: str) -> list[tuple[str, str, tuple[tuple[str, Any], ...]]]:
        out = []
        for group in groups(generate([source], engine)):
            for rule in group["rules"]:
                name = rule.get("record") or rule["alert"]
                extra = tuple(sorted((k, str(v)) for k, v in rule.items() if k != "expr"))
                out.append((name, str(rule["labels"].get("slo")), extra))
        return sorted(out)

    assert rules("victoriametrics") == rules("prometheus")


@pytest.mark.parametrize("source", [*SPECS, EXAMPLES], ids=lambda p: p.name)
def test_meta_rules_and_alerts_never_read_a_recorded_ratio(source: Path) -> None:
    for group in groups(generate([source])):
        for rule in group["rules"]:
            if rule.get("record", "").startswith(RATIO):
                continue
            assert RATIO not in rule["expr"], rule


def test_interval_applies_to_the_merged_group() -> None:
    got = groups(generate([GOLDEN / "burn.spec.yaml"], interval="30s"))
    assert [g.get("interval") for g in got] == ["30s"]


@pytest.mark.parametrize("source", [*SPECS, EXAMPLES], ids=lambda p: p.name)
def test_promtool_check_rules_accepts_them(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    out.write_text(generate([source]))
    proc = subprocess.run(
        [find_binary("promtool"), "check", "rules", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vmalert_accepts_them(tmp_path: Path) -> None:
    """vmalert -dryRun parses every expression with MetricsQL (the version on PATH)."""
    files = []
    for i, source in enumerate([*SPECS, EXAMPLES]):
        out = tmp_path / f"rules-{i}.yml"
        out.write_text(generate([source]))
        files.append(out)
    proc = subprocess.run(
        [find_binary("vmalert"), "-dryRun", *(f"-rule={f}" for f in files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "fatal" not in output, output[-4000:]


@pytest.mark.parametrize("test_file", TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass_on_them_too(test_file: Path, tmp_path: Path) -> None:
    """The hand-computed promtool tests of the Prometheus rules, on these rules: the group
    order becomes one group per SLO."""
    name = test_file.name.removesuffix(".test.yml")
    doc = yaml.safe_load(test_file.read_text())
    assert doc["rule_files"] == [f"{name}.rules.yml"]
    if "group_eval_order" in doc:
        order: list[str] = []
        for group in doc["group_eval_order"]:
            prefix = next(k for k in KINDS if group.startswith(k))
            merged = "hpcobs-slo-" + group.removeprefix(prefix)
            if merged not in order:
                order.append(merged)
        doc["group_eval_order"] = order
    (tmp_path / f"{name}.rules.yml").write_text(generate([GOLDEN / f"{name}.spec.yaml"]))
    (tmp_path / test_file.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = subprocess.run(
        [find_binary("promtool"), "test", "rules", test_file.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "SUCCESS" in proc.stdout


def test_cli_engine_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(GOLDEN / "burn.spec.yaml")
    out = tmp_path / "vm.rules.yml"
    assert main(["rules", spec, "-o", str(out), "--engine", "victoriametrics"]) == 0
    assert [g["name"] for g in groups(out.read_text())] == ["hpcobs-slo-jobs"]
    assert main(["rules", spec, "-o", "-", "--engine", "prometheus"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "burn.rules.yml").read_text()
    with pytest.raises(SystemExit):
        main(["rules", spec, "-o", "-", "--engine", "thanos"])
    assert "invalid choice" in capsys.readouterr().err
