"""The version matrix's plumbing (issue 15): the harness finds each binary's version on PATH,
and scripts/compat/run.py turns rows into a table, a JSON copy and an exit status. (The
matrix itself, with Debian's trixie and sid binaries, is `make test-compat`.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from harness.servers import ComponentStartError, Prometheus, binary_version

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compat_run", REPO / "scripts/compat/run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compat_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run = load_runner()


def fake_binary(directory: Path, name: str, output: str, code: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    path.chmod(0o755)
    return path


# -- the harness ----------------------------------------------------------------------------


def test_binary_version_is_that_of_the_binary_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = tmp_path / "bookworm", tmp_path / "sid"
    fake_binary(old, "prometheus", "prometheus, version 2.42.0+ds (branch: debian/sid)")
    fake_binary(new, "prometheus", "prometheus, version 3.5.3+ds1 (branch: debian/sid)")
    monkeypatch.setenv("PATH", f"{old}:/usr/bin:/bin")
    assert binary_version("prometheus") == (2, 42, 0)
    assert not Prometheus(tmp_path / "p2").left_open_ranges
    monkeypatch.setenv("PATH", f"{new}:{old}:/usr/bin:/bin")
    assert binary_version("prometheus") == (3, 5, 3)
    prom = Prometheus(tmp_path / "p3")
    assert prom.version == (3, 5, 3) and prom.left_open_ranges
    assert prom.binary == str(new / "prometheus")


def test_a_binary_that_reports_no_version_fails_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_binary(tmp_path / "bin", "prometheus", "usage: prometheus [<flags>]", code=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    with pytest.raises(ComponentStartError, match=r"exited with 1 and no version:\nusage"):
        binary_version("prometheus")


# -- scripts/compat/run.py ------------------------------------------------------------------


def test_a_missing_slurm_script_is_a_failed_row_that_says_so(tmp_path: Path) -> None:
    (check,) = run.slurm_rows(["bookworm"], script=tmp_path / "slurm.sh")
    assert (check.component, check.suite, check.alone) == ("slurm", "host", True)
    row = check.run(tmp_path / "slurm-host.log")
    assert not row.ok
    assert row.summary == f"{tmp_path / 'slurm.sh'} is missing or not executable"


@pytest.mark.parametrize(
    ("output", "code", "ok", "versions", "summary"),
    [
        ("version: 24.11.5\n3 passed in 9.00s", 0, True, {"slurm": "24.11.5"}, "3 passed in 9.00s"),
        ("version: 26.05.0\n1 failed in 9.00s", 1, False, {"slurm": "26.05.0"}, "exit 1: 1 failed"),
        ("3 passed in 9.00s", 0, False, {}, "no `version:` line; 3 passed"),
    ],
)
def test_the_slurm_row_reports_the_version_the_script_prints_and_its_status(
    tmp_path: Path, output: str, code: int, ok: bool, versions: dict[str, str], summary: str
) -> None:
    script = fake_binary(tmp_path, "slurm.sh", output, code)
    (check,) = run.slurm_rows(["sid"], script=script)
    row = check.run(tmp_path / "slurm-sid.log")
    assert (row.ok, row.versions) == (ok, versions)
    assert row.summary.startswith(summary)


def test_a_row_refuses_to_run_when_path_would_not_give_the_suites_binaries(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    suite = run.PromSuite("sid", empty, {"prometheus": "3.5.3+ds1"})
    check = run.pytest_row("prometheus/promtool", "sid", suite, ["tests/x.py"], ["prometheus"])
    row = check.run(tmp_path / "prometheus-sid.log")
    assert not row.ok and row.versions == {"prometheus": "3.5.3+ds1"}
    assert row.summary.endswith(f", not from {empty}")


def test_the_table_the_json_copy_and_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def passing(log: Path) -> object:
        return run.Row("widget", "trixie", {"widget": "1.2.3"}, True, summary="2 passed")

    def failing(log: Path) -> object:
        return run.Row("widget", "sid", {"widget": "2.0.0"}, False, summary="exit 1: 1 failed")

    def broken(log: Path) -> object:
        raise RuntimeError("no chroot")

    rows = [
        run.Check("widget", "trixie", passing),
        run.Check("widget", "sid", failing, alone=True),
        run.Check("widget", "sid", broken),
    ]
    monkeypatch.setattr(run, "ROWS", [run.RowSet("widget", False, lambda proms, suites: rows)])
    out = tmp_path / "compat.json"
    code = run.main(["--json", str(out), "--logs", str(tmp_path / "logs")])
    assert code == 1
    table = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert table[0].split() == [
        "component", "suite", "version", "(as", "reported)", "result", "seconds", "detail"
    ]  # fmt: skip
    assert table[1].split()[:5] == ["widget", "trixie", "widget", "1.2.3", "PASS"]
    assert table[2].split()[:5] == ["widget", "sid", "widget", "2.0.0", "FAIL"]
    assert table[3].split()[:4] == ["widget", "sid", "-", "FAIL"]
    assert table[3].endswith("RuntimeError: no chroot")
    doc = json.loads(out.read_text())
    assert doc["ok"] is False
    assert [(r["suite"], r["ok"], r["versions"]) for r in doc["rows"]] == [
        ("trixie", True, {"widget": "1.2.3"}),
        ("sid", False, {"widget": "2.0.0"}),
        ("sid", False, {}),
    ]
    monkeypatch.setattr(run, "ROWS", [run.RowSet("widget", False, lambda proms, suites: rows[:1])])
    assert run.main(["--json", str(out), "--logs", str(tmp_path / "logs")]) == 0
    assert json.loads(out.read_text())["ok"] is True
