"""`hpcobs-slo report`: table, JSON, self-contained HTML with burn-down charts; CLI errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_slo_evaluator import NOW, fake, results, slos

from hpcobs.slo.cli import main
from hpcobs.slo.evaluator import Evaluator
from hpcobs.slo.report import burn_down, render_html, render_json, render_table, status

pytestmark = pytest.mark.unit


@pytest.fixture
def evaluated() -> tuple[Evaluator, Any]:
    prom = fake()
    prom.fail.add("hpcobs_slurm_job_resource_seconds_total")
    evaluator = Evaluator(slos(), prom, settle=0)
    return evaluator, evaluator.evaluate(NOW)


def test_status_of_each_slo(evaluated: tuple[Evaluator, Any]) -> None:
    _, ev = evaluated
    r = results(ev)
    assert status(r["jobs-cpu"]) == "page"  # 10x burn
    assert status(r["jobs-gpu"]) == "ok"  # 0.5x
    assert status(r["lost"]) == "error"
    assert status(r["idle"]) == "no data"
    # error ratio 0.25 on a 5 % budget: 5x, under 14.4x and 6x, over 3x and 1x
    assert status(r["wait"]) == "ticket"


def test_table(evaluated: tuple[Evaluator, Any]) -> None:
    _, ev = evaluated
    lines = render_table(ev).splitlines()
    assert lines[0].split()[:4] == ["SLO", "objective", "SLI", "budget"]
    row = next(line for line in lines if line.startswith("jobs-cpu "))
    assert "99% / 30d" in row and "90.000%" in row and "-900.0%" in row and row.endswith("page")
    assert (
        next(line for line in lines if line.startswith("lost "))
        .split("  ")[-1]
        .startswith("error: ")
    )
    assert lines[-1].startswith("as of ") and f"{ev.queries} queries" in lines[-1]
    assert "whole hours up to " in lines[-1] and "then the events since" in lines[-1]


def test_json(evaluated: tuple[Evaluator, Any]) -> None:
    evaluator, ev = evaluated
    doc = json.loads(render_json(ev, evaluator))  # allow_nan=False: no NaN/Inf anywhere
    assert doc["time"] == NOW and doc["success"] is False
    by_id = {s["id"]: s for s in doc["slos"]}
    cpu = by_id["jobs-cpu"]
    assert cpu["objective"] == 0.99 and cpu["period"] == "30d" and cpu["alert"] == "SLOBurnRatePage"
    assert cpu["sli"] == pytest.approx(0.9) and cpu["error_budget_remaining"] == pytest.approx(-9.0)
    assert cpu["windows"]["1h"] == {
        "start": NOW - 3600,
        "end": NOW,
        "good": pytest.approx(3240.0),
        "bad": pytest.approx(360.0),
        "total": pytest.approx(3600.0),
        "sli": pytest.approx(0.9),
        "error_ratio": pytest.approx(0.1),
        "burn_rate": pytest.approx(10.0),
    }
    # the 720 whole hours, then the rest of the period up to the evaluation time
    assert len(cpu["burn_down"]) == 721 and cpu["burn_down"][-1][0] == NOW
    assert cpu["burn_down"][-1][1] == pytest.approx(cpu["error_budget_remaining"])
    assert by_id["lost"]["error"] and by_id["lost"]["windows"] == {}
    assert by_id["idle"]["windows"]["1h"]["sli"] is None


def test_burn_down_ends_at_the_budget_remaining(evaluated: tuple[Evaluator, Any]) -> None:
    evaluator, ev = evaluated
    for r in ev.results:
        bd = burn_down(evaluator, r) if r.ok else None
        if bd is None:
            continue
        assert list(bd.remaining) == sorted(bd.remaining, reverse=True)  # budget only shrinks
        assert bd.remaining[-1] == pytest.approx(r.error_budget_remaining)
        assert bd.even[-1] == pytest.approx(0.0, abs=1e-9)
    gpu = burn_down(evaluator, results(ev)["jobs-gpu"])
    assert gpu is not None and gpu.remaining[-1] == pytest.approx(0.5)  # half the budget used


class Resources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") or (name == "rel" and value == "stylesheet"):
                self.external.append(f"{tag} {name}={value}")


def test_html_is_self_contained_with_a_chart_per_slo(evaluated: tuple[Evaluator, Any]) -> None:
    evaluator, ev = evaluated
    page = render_html(ev, evaluator, title="Weekly <review>")
    parser = Resources()
    parser.feed(page)
    assert "script" not in parser.tags and not parser.external
    charts = sum(1 for r in ev.results if r.ok and r.period and r.period.total > 0)
    assert parser.tags.count("svg") == charts == 5
    assert "<title>Weekly &lt;review&gt;</title>" in page
    assert page.count('class="card"') == len(ev.results)


class EmptyAPI:
    """Answers every query with no data."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                kind = "matrix" if self.path.endswith("query_range") else "vector"
                body = json.dumps(
                    {"status": "success", "data": {"resultType": kind, "result": []}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def empty_api() -> Iterator[EmptyAPI]:
    api = EmptyAPI()
    yield api
    api.server.shutdown()
    api.server.server_close()


EXAMPLES = Path(__file__).resolve().parents[2] / "slo" / "examples"


def test_cli_report_formats(
    empty_api: EmptyAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["report", "--prometheus.url", empty_api.url, str(EXAMPLES)]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "job-success" in out and "no data" in out
    assert main([*base, "--format", "json", "--time", "2024-05-01T12:00:00Z"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["time"] == 1714564800.0 and {s["status"] for s in doc["slos"]} == {"no data"}
    page = tmp_path / "report.html"
    assert main([*base, "--format", "html", "-o", str(page)]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_cli_report_and_serve_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "report",
                "--prometheus.url",
                "http://127.0.0.1:9",
                "--query.retries",
                "0",
                str(EXAMPLES),
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert "error: " in captured.out and "could not be evaluated" in captured.err
    assert main(["report", "--prometheus.url", "localhost:9090", str(EXAMPLES)]) == 1
    assert "must be an http(s) URL" in capsys.readouterr().err
    missing = str(tmp_path / "token")
    assert (
        main(
            [
                "serve",
                "--prometheus.url",
                "http://x",
                "--prometheus.bearer-token-file",
                missing,
                str(EXAMPLES),
            ]
        )
        == 1
    )
    assert "file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    assert main(["serve", "--prometheus.url", "http://x", str(bad)]) == 1
    assert "unsupported version" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["serve", str(EXAMPLES)])
    assert info.value.code == 2  # --prometheus.url is required
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["bogus"])
    assert info.value.code == 2


def test_a_fresh_stack_reports_its_burn_not_no_data() -> None:
    prom = fake()
    prom.born = NOW - 600  # ten minutes of history: no whole hour yet
    evaluator = Evaluator(slos(), prom)
    ev = evaluator.evaluate(NOW)
    r = results(ev)
    assert status(r["jobs-cpu"]) == "page" and status(r["jobs-gpu"]) == "ok"
    assert status(r["idle"]) == "no data"
    row = next(line for line in render_table(ev).splitlines() if line.startswith("jobs-cpu "))
    assert "-900.0%" in row  # the budget left, from the events of the last ten minutes
    bd = burn_down(evaluator, r["jobs-cpu"])
    assert bd is not None and bd.hours[-1] == NOW
    assert bd.remaining[-1] == pytest.approx(r["jobs-cpu"].error_budget_remaining)
