"""The rule generator: golden files, `promtool check rules`, and `promtool test rules`.

Golden files live in tests/golden/slo/: `<name>.spec.yaml` → `<name>.rules.yml`, plus
`examples.rules.yml` for slo/examples/. `<name>.test.yml` are promtool unit tests with
hand-computed expectations (burn rates that page / ticket / stay quiet, min_events, uneven
traffic, gauge time slices, calendar months); they run on freshly generated rules.

To accept a deliberate change of the generated rules: `HPCOBS_UPDATE_GOLDEN=1 pytest
tests/unit/test_slo_rules.py`, then review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hpcobs.slo.cli import main
from hpcobs.slo.loader import load_specs
from hpcobs.slo.rules import RuleOptions, render

from harness.servers import find_binary

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "slo"
EXAMPLES = Path(__file__).resolve().parents[2] / "slo" / "examples"
SPECS = sorted(GOLDEN.glob("*.spec.yaml"))
TESTS = sorted(GOLDEN.glob("*.test.yml"))


def generate(paths: list[Path]) -> str:
    loaded = load_specs(paths)
    assert loaded.ok, [str(p) for p in loaded.problems.errors]
    return render(loaded.slos, RuleOptions(), [Path(f).name for f in loaded.files])


def check_golden(text: str, golden: Path) -> None:
    if os.environ.get("HPCOBS_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: run with HPCOBS_UPDATE_GOLDEN=1 and review"
    assert text == golden.read_text(), f"{golden.name} differs from the generated rules"


def test_golden_specs_exist() -> None:
    names = {p.name.removesuffix(".spec.yaml") for p in SPECS}
    assert {"burn", "min-events", "uneven", "probe", "month"} <= names
    assert {p.name.removesuffix(".test.yml") for p in TESTS} <= names


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_rules_match_golden_file(spec: Path) -> None:
    check_golden(generate([spec]), GOLDEN / spec.name.replace(".spec.yaml", ".rules.yml"))


def test_examples_match_golden_file() -> None:
    check_golden(generate([EXAMPLES]), GOLDEN / "examples.rules.yml")


@pytest.mark.parametrize("source", [*SPECS, EXAMPLES], ids=lambda p: p.name)
def test_promtool_check_rules_accepts_generated_file(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    out.write_text(generate([source]))
    proc = subprocess.run(
        [find_binary("promtool"), "check", "rules", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("test_file", TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_on_generated_rules(test_file: Path, tmp_path: Path) -> None:
    """Runs the promtool unit test against rules generated now (not the golden copy)."""
    name = test_file.name.removesuffix(".test.yml")
    doc = yaml.safe_load(test_file.read_text())
    assert doc["rule_files"] == [f"{name}.rules.yml"]
    (tmp_path / f"{name}.rules.yml").write_text(generate([GOLDEN / f"{name}.spec.yaml"]))
    shutil.copy(test_file, tmp_path / test_file.name)
    proc = subprocess.run(
        [find_binary("promtool"), "test", "rules", test_file.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "SUCCESS" in proc.stdout


def test_every_rule_carries_slo_and_service_and_alerts_their_contract() -> None:
    doc = yaml.safe_load(generate([EXAMPLES]))
    alerts = []
    for group in doc["groups"]:
        assert group["name"].startswith("hpcobs-slo-")
        for rule in group["rules"]:
            if "record" in rule:
                assert {"slo", "service"} <= set(rule["labels"]), rule["record"]
            else:
                alerts.append(rule)
                assert rule["alert"] in ("SLOBurnRatePage", "SLOBurnRateTicket")
                assert {"slo", "severity"} <= set(rule["labels"])
                assert set(rule["annotations"]) >= {"summary", "description", "runbook_url"}
                assert rule["annotations"]["runbook_url"].endswith(f"{rule['alert']}.md")
    assert alerts


def test_sloth_compatible_names_for_every_window() -> None:
    doc = yaml.safe_load(generate([GOLDEN / "burn.spec.yaml"]))
    records = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"):
        assert f"slo:sli_error:ratio_rate{w}" in records
    assert {
        "slo:objective:ratio",
        "slo:error_budget:ratio",
        "slo:current_burn_rate:ratio",
        "slo:period_burn_rate:ratio",
        "slo:period_error_budget_remaining:ratio",
    } <= records


def test_long_windows_never_read_raw_series() -> None:
    """1d, 3d and the period sum recorded event counts; raw selectors stop at 6h."""
    doc = yaml.safe_load(generate([EXAMPLES]))
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("record", "")
            if name.endswith(("increase1d", "increase3d", "increase30d", "increase_month")):
                assert "hpcobs_" not in rule["expr"], rule
                assert "sum_over_time(slo:sli_" in rule["expr"].replace("\n", "").replace("  ", "")
            if name.startswith("slo:sli_error:ratio_rate"):
                assert "> 0)" in rule["expr"], "ratios must guard their denominator"


def test_cli_rules_writes_file_and_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "slo.rules.yml"
    assert (
        main(
            [
                "rules",
                str(GOLDEN / "burn.spec.yaml"),
                "-o",
                str(out),
                "--runbook.base-url",
                "https://runbooks.example/slo/",
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "runbook_url: https://runbooks.example/slo/SLOBurnRatePage.md" in text
    assert main(["rules", str(GOLDEN / "burn.spec.yaml"), "-o", "-", "--rules.interval", "1m"]) == 0
    assert "interval: 1m" in capsys.readouterr().out
    assert (
        main(["rules", str(GOLDEN / "burn.spec.yaml"), "-o", "-", "--rules.interval", "10m"]) == 1
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: hpcobs.slo/v1\nservice: x\nslos: []\n")
    assert main(["rules", str(bad), "-o", str(tmp_path / "x.yml")]) == 1
    assert not (tmp_path / "x.yml").exists()
