"""hpcobs-job report: text, JSON and HTML from one report value."""

from __future__ import annotations

import dataclasses
import html
import json
import re

import pytest

from hpcobs.slo.jobreport.findings import findings
from hpcobs.slo.jobreport.model import (
    Alert,
    CheckpointStream,
    Fact,
    GpuUsage,
    JobReport,
    LustreUsage,
    NodeUsage,
    Query,
    Slurm,
    Window,
)
from hpcobs.slo.jobreport.render import render_html, render_json, render_text, sections

pytestmark = pytest.mark.unit

HOSTILE = '<script>alert("x")</script> & "quotes"'


def full() -> JobReport:
    r = JobReport(
        job_id="4242",
        cluster="prod",
        as_of=1_700_000_600.0,
        prometheus="http://prometheus:9090",
        window=Window(1_700_000_000.0, 1_700_000_360.0, live=False),
        nodes=("gpu01", "gpu02"),
        slurm=Slurm(
            partition=Fact("gpu", "hpcobs_slurm_job_failed_info"),
            state=Fact("failed", "hpcobs_slurm_job_failed_info"),
            cause=Fact(None, "2 job ends counted within ±120 s of its last sample"),
            exit_code=Fact("1:0", "hpcobs_slurm_job_failed_info"),
            queue_wait_seconds=Fact(95.0, "inferred: ..."),
            allocated={"cpu": 4 * 360.0, "gpu": 2 * 360.0},
            allocated_source="inferred with the job's end",
        ),
        node_usage=(NodeUsage("gpu01", 700.0, 3 * 2**30), NodeUsage("gpu02", 20.0, None)),
        gpus=(
            GpuUsage("gpu01", "0", "GPU-a", 0.38, 0.99, 2**33, 80 * 2**30),
            GpuUsage("gpu02", "0", "GPU-b", None, None, None, None),
        ),
        lustre=(LustreUsage("scratch", 2**30, 0.0, {"open": 4, "close": 4, "mkdir": 0}, 0),),
        checkpoints=(CheckpointStream("gpu01", "model", {"success": 2, "failure": 1}, 30, 12, 9),),
        alerts=(
            Alert(
                "HpcobsGPUXidStorm",
                "ticket",
                {"node": "gpu01", "gpu": "0", "cluster": "prod"},
                1_700_000_100.0,
                1_700_000_200.0,
            ),
            Alert("Weird", "", {"node": HOSTILE}, None, 1_700_000_300.0),
        ),
        queries=(Query("query_range", "x"), Query("query", "y"), Query("query", "z")),
        notes=("a note",),
    )
    return dataclasses.replace(r, findings=findings(r))


def cells(text: str) -> list[list[str]]:
    """Each indented line of the text as its cells (columns are 2+ spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line[:2] == "  "]


def test_text_has_every_section_and_figure() -> None:
    text = render_text(full())
    rows = cells(text)
    assert text.startswith("Job 4242 · cluster prod · as of 2023-11-14T22:23:20Z\n")
    for title in ("Slurm", "Run", "Nodes", "GPUs", "Lustre", "Checkpoints", "Findings", "Notes"):
        assert f"\n{title}\n" in text
    assert ["partition", "gpu", "hpcobs_slurm_job_failed_info"] in rows
    # unknown, and why
    assert ["cause", "unknown", "2 job ends counted within ±120 s of its last sample"] in rows
    assert ["queue wait", "1 m 35 s", "inferred: ..."] in rows
    assert ["allocated", "cpu 24 m 00 s, gpu 12 m 00 s", "inferred with the job's end"] in rows
    assert ["run time", "6 m 00 s", "last sample − first sample"] in rows
    assert ["gpu01", "11 m 40 s", "3.00 GiB"] in rows
    assert ["gpu02", "20.0 s", "-"] in rows  # unknown memory is a dash, not 0
    assert ["gpu01", "0", "GPU-a", "38%", "99%", "8.00 GiB", "80.0 GiB"] in rows
    assert ["gpu02", "0", "GPU-b", "-", "-", "-", "-"] in rows
    assert ["scratch", "1.00 GiB", "0 B", "open 4, close 4"] in rows  # zero counts left out
    assert ["gpu01", "model", "3", "1", "30.0 s", "12.0 s", "9.00 s"] in rows
    assert "cluster=prod" not in text  # the report's own cluster is said once, at the top
    assert "  - GPUs idle 62% of the run (mean utilisation 38% over 1 GPU)" in text
    assert text.endswith(
        "3 queries to http://prometheus:9090; where each figure comes from: docs/job-report.md\n"
    )


def test_text_says_what_is_missing() -> None:
    r = full()
    bare = dataclasses.replace(
        r, window=None, gpus=(), lustre=(), checkpoints=(), alerts=(), node_usage=(), findings=()
    )
    text = render_text(bare)
    assert "never sampled on a monitored node" in text
    assert "none held (no hpcobs_gpu_job_info series)" in text
    assert "none recorded" in text and "none fired" in text
    assert "none: not enough figures" in text
    assert "\nNodes\n" not in text


def test_json_keeps_raw_values_and_sources() -> None:
    doc = json.loads(render_json(full()))
    assert doc["slurm"]["queue_wait_seconds"] == {"value": 95.0, "source": "inferred: ..."}
    assert doc["slurm"]["cause"]["value"] is None
    assert doc["window"] == {
        "first": 1_700_000_000.0,
        "last": 1_700_000_360.0,
        "seconds": 360.0,
        "live": False,
    }
    assert doc["gpus"][1]["utilization_mean"] is None
    assert doc["lustre"][0]["operations"]["mkdir"] == 0  # JSON keeps zero counts
    assert doc["alerts"][0]["labels"]["cluster"] == "prod"
    assert [q["kind"] for q in doc["queries"]] == ["query_range", "query", "query"]
    assert {f["key"] for f in doc["findings"]} >= {"gpu_idle", "checkpoint_share", "outcome"}


def test_html_is_escaped_and_self_contained() -> None:
    page = render_html(full())
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page.split("</style>")[0]
    assert html.escape(HOSTILE) in page
    for sec in sections(full()):
        assert f"<h2>{html.escape(sec.title)}</h2>" in page
    assert '<li class="warn">' in page
