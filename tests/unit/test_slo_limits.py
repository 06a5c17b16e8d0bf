"""Bounded spec input (issue 14.6): file size and SLO count limits, and memory per SLO.

A 10 MB spec of 90,000 SLOs took 1.16 GB in `validate` and 10.6 GB in `rules`: the YAML
node graph of the whole document (about 11 KB per SLO) and the whole rule file's YAML
representation (about 150 KB per SLO) were held at once. The memory checks below measure
Python allocations with tracemalloc (deterministic, unlike RSS or time), with bounds far
from both the old and the new figures; `make bench BENCH=slo` prints the numbers.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from hpcobs.slo.cli import main
from hpcobs.slo.loader import DEFAULT_MAX_BYTES, DEFAULT_MAX_SLOS, Limits, load_specs, load_texts

pytestmark = pytest.mark.unit

HEAD = "version: hpcobs.slo/v1\nservice: big\nslos:\n"


def slo_items(n: int, start: int = 0) -> str:
    return "".join(
        f"  - id: s{i}\n    objective: 99\n    sli:\n      ratio:\n"
        f'        bad: a_total{{x="{i}"}}\n        total: a_total\n'
        for i in range(start, start + n)
    )


def openslo_docs(n: int) -> str:
    return "".join(
        f"""---
apiVersion: openslo/v1
kind: SLO
metadata: {{name: o{i}}}
spec:
  service: web
  budgetingMethod: Occurrences
  timeWindow: [{{duration: 30d, isRolling: true}}]
  objectives: [{{target: 0.99}}]
  indicator:
    metadata: {{name: o{i}-sli}}
    spec:
      ratioMetric:
        counter: true
        bad:
          metricSource:
            type: Prometheus
            spec:
              query: a_total{{x="{i}"}}
        total: {{metricSource: {{type: Prometheus, spec: {{query: a_total}}}}}}
"""
        for i in range(n)
    )


def test_defaults() -> None:
    assert Limits() == Limits(DEFAULT_MAX_BYTES, DEFAULT_MAX_SLOS) == Limits(1 << 20, 1000)
    with pytest.raises(ValueError):
        Limits(max_slos=0)


def test_a_file_over_the_byte_limit_is_refused_naming_file_limit_and_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text(HEAD + slo_items(20))
    size = spec.stat().st_size
    assert main(["validate", "--spec.max-bytes", str(size - 1), str(spec)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (
        f"{spec}:0: error: {size} bytes, more than the limit of {size - 1} (--spec.max-bytes)"
    )
    assert main(["validate", "--spec.max-bytes", str(size), str(spec)]) == 0
    capsys.readouterr()
    # the default: 1 MiB, whatever the content (here: a comment)
    spec.write_text(HEAD + slo_items(1) + "#" * DEFAULT_MAX_BYTES + "\n")
    for command in (["validate"], ["rules", "-o", str(tmp_path / "out.yml")]):
        assert main([*command, str(spec)]) == 1
        assert "more than the limit of 1048576 (--spec.max-bytes)" in capsys.readouterr().err
    assert not (tmp_path / "out.yml").exists()


def test_load_texts_applies_the_byte_limit_too() -> None:
    loaded = load_texts([("a.yaml", HEAD + slo_items(3))], Limits(max_bytes=50))
    (problem,) = loaded.problems.errors
    assert problem.file == "a.yaml" and "(--spec.max-bytes)" in problem.message


def test_more_slos_than_the_limit_is_an_error_naming_file_limit_and_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "many.yaml"
    spec.write_text(HEAD + slo_items(DEFAULT_MAX_SLOS + 1))
    assert main(["validate", str(spec)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    line = 3 + 6 * DEFAULT_MAX_SLOS + 1  # the first SLO beyond the limit
    assert first == (
        f"{spec}:{line}: error: more than 1000 SLOs in all, the limit (--spec.max-slos); "
        "stopped reading here"
    )
    assert main(["rules", str(spec), "-o", str(tmp_path / "out.yml")]) == 1
    assert "(--spec.max-slos)" in capsys.readouterr().err
    assert not (tmp_path / "out.yml").exists()
    assert main(["validate", "--spec.max-slos", "1001", str(spec)]) == 0
    assert "1001 SLO(s) in 1 file(s): OK" in capsys.readouterr().out


def test_the_slo_limit_counts_expand_across_files_and_openslo(tmp_path: Path) -> None:
    values = ", ".join(f"v{i}" for i in range(10_000))
    expand = (
        HEAD + "  - id: e\n    objective: 99\n    expand: {p: [" + values + "]}\n"
        "    sli: {ratio: {bad: a_total, total: b_total}}\n"
    )
    loaded = load_texts([("expand.yaml", expand)], Limits(max_bytes=10**7, max_slos=50))
    (problem,) = loaded.problems.errors
    assert (problem.file, problem.line) == ("expand.yaml", 4)
    assert "more than 50 SLOs" in problem.message
    assert not loaded.slos  # nothing half-expanded is kept

    (tmp_path / "a.yaml").write_text(HEAD + slo_items(30))
    (tmp_path / "b.yaml").write_text(HEAD + slo_items(30, start=30))
    (tmp_path / "c.yaml").write_text("this file is never read: {")
    loaded = load_specs([tmp_path], Limits(max_slos=50))
    (problem,) = loaded.problems.errors
    assert problem.file == str(tmp_path / "b.yaml") and "(--spec.max-slos)" in problem.message
    assert loaded.files == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    assert load_specs([tmp_path / "a.yaml", tmp_path / "b.yaml"], Limits(max_slos=60)).ok

    loaded = load_texts([("o.yaml", openslo_docs(4))], Limits(max_slos=3))
    (problem,) = loaded.problems.errors
    assert problem.file == "o.yaml" and "more than 3 SLOs" in problem.message
    assert load_texts([("o.yaml", openslo_docs(4))], Limits(max_slos=4)).ok


def _peak(fn: object) -> int:
    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_loading_costs_a_few_kilobytes_per_slo() -> None:
    """Was about 11 KB per SLO (the whole document's YAML node graph); now about 3 KB."""
    n = 250
    text = HEAD + slo_items(n)
    peak = _peak(lambda: load_texts([("x.yaml", text)]))
    assert peak < 6_000 * n, f"{peak / n:.0f} bytes per SLO"


def test_writing_rules_does_not_hold_the_whole_file(tmp_path: Path) -> None:
    """Was about 150 KB per SLO (PyYAML's representation of the whole rule file); the file
    is now written group by group: the peak is one group's, whatever the SLO count."""
    n = 30
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + slo_items(n))
    out = tmp_path / "out.yml"
    peak = _peak(lambda: main(["rules", str(spec), "-o", str(out)]))
    assert out.stat().st_size > 7000 * n  # the rules are about 8 KB per SLO
    assert peak < 1_500_000, f"peak {peak} bytes"
