"""The VictoriaMetrics rows of scripts/compat/run.py: vm-debs.sh's output becomes the row's
bin directory and versions (the .deb's where the binaries report none), and the row runs
the VictoriaMetrics tests with those binaries first on PATH."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compat_run_vm", REPO / "scripts/compat/run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compat_run_vm"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run = load_runner()


def script(tmp_path: Path, stdout: str, code: int = 0) -> Path:
    path = tmp_path / "vm-debs.sh"
    path.write_text(f"#!/bin/sh\necho fetching >&2\ncat <<'EOF'\n{stdout}\nEOF\nexit {code}\n")
    path.chmod(0o755)
    return path


def test_versions_the_binaries_report_or_else_the_debs(tmp_path: Path) -> None:
    out = "\n".join(
        [
            f"bin: {tmp_path / 'bin'}",
            "package: 1.112.0+ds1-2",
            "victoria-metrics: none reported",
            "vmalert: vmalert-20250101-tags-v1.112.0",
        ]
    )
    vm = run.fetch_vm_suite("trixie", tmp_path / "fetch.log", script(tmp_path, out))
    assert vm.error == "" and vm.bin == tmp_path / "bin"
    assert vm.versions == {
        "victoria-metrics": "1.112.0+ds1-2 (.deb)",
        "vmalert": "vmalert-20250101-tags-v1.112.0",
    }
    assert "fetching" in (tmp_path / "fetch.log").read_text()


def test_a_failed_fetch_is_a_failed_row_that_says_why(tmp_path: Path) -> None:
    fake = script(tmp_path, "package: 1.145.0+ds1-2", code=1)
    (check,) = run.victoriametrics_rows(["sid"], script=fake)
    assert (check.component, check.suite, check.alone) == ("victoriametrics/vmalert", "sid", True)
    row = check.run(tmp_path / "victoriametrics-sid.log")
    assert not row.ok
    assert row.summary.startswith("vm-debs.sh sid exited with 1")
    assert row.versions == {n: "1.145.0+ds1-2 (.deb)" for n in ("victoria-metrics", "vmalert")}


def test_the_row_runs_only_with_the_suites_binaries_first_on_path(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    out = f"bin: {empty}\npackage: 1.79.5+ds1-2+b5"
    (check,) = run.victoriametrics_rows(["bookworm"], script=script(tmp_path, out))
    row = check.run(tmp_path / "victoriametrics-bookworm.log")
    assert not row.ok and row.summary.endswith(f", not from {empty}")
    assert row.ran == list(run.VICTORIAMETRICS_TESTS)
