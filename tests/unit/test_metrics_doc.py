from __future__ import annotations

from pathlib import Path

import pytest

from hpcobs.exporters.runtime.catalog import catalog, render_markdown
from hpcobs.exporters.runtime.metricdef import MetricDef

pytestmark = pytest.mark.unit


def test_docs_metrics_md_matches_code(repo_root: Path) -> None:
    committed = (repo_root / "docs" / "metrics.md").read_text()
    assert committed == render_markdown(), "docs/metrics.md is stale: run `make docs`"


def test_catalogue_is_nonempty_and_unique() -> None:
    names = [e.metric.name for e in catalog()]
    assert "hpcobs_collector_up" in names and "hpcobs_build_info" in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("name", "kind", "labels"),
    [
        ("hpcobs_x_total", "gauge", ()),
        ("hpcobs_x", "counter", ()),
        ("node_x", "gauge", ()),
        ("hpcobs_X", "gauge", ()),
        ("hpcobs_x", "gauge", ("le",)),
        ("hpcobs_x_bucket", "histogram", ()),
    ],
)
def test_metricdef_enforces_conventions(name: str, kind: str, labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        MetricDef(name, kind, "help", labels)  # type: ignore[arg-type]
