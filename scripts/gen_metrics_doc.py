"""Print docs/metrics.md, generated from every module's METRICS (see hpcobs.exporters.runtime.catalog)."""

from hpcobs.exporters.runtime.catalog import render_markdown

print(render_markdown(), end="")
