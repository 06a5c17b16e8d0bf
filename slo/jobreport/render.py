"""A job report as text, JSON or a self-contained HTML page (no scripts, no external
resources; every value escaped).

Text and HTML print the same tables (`sections`), with the same number formats (`units`);
JSON keeps raw values (seconds, bytes, ratios 0–1, unix times), each Slurm fact with its
source, and the queries sent.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcobs.slo.jobreport.model import Fact, JobReport
from hpcobs.slo.jobreport.units import fmt_bytes, fmt_count, fmt_duration, fmt_pct, fmt_time

DOC = "docs/job-report.md"


@dataclass(frozen=True)
class Section:
    title: str
    header: tuple[str, ...]  # empty: a key / value / source list
    rows: tuple[tuple[str, ...], ...]
    empty: str = ""  # said instead of the table when there are no rows


def _fact(value: str, fact: Fact[Any]) -> tuple[str, str]:
    return (value if fact.known else "unknown", fact.source)


def sections(r: JobReport) -> list[Section]:
    s = r.slurm
    qw = s.queue_wait_seconds
    slurm_rows = [
        ("partition", *_fact(str(s.partition.value), s.partition)),
        ("state", *_fact(str(s.state.value), s.state)),
        ("cause", *_fact(str(s.cause.value), s.cause)),
        ("exit code", *_fact(str(s.exit_code.value), s.exit_code)),
        ("queue wait", *_fact(fmt_duration(qw.value), qw)),
    ]
    for key, value in s.record.items():
        slurm_rows.append((key.replace("_", " "), value, "hpcobs_slurm_job_failed_info"))
    if s.allocated:
        alloc = ", ".join(f"{k} {fmt_duration(v)}" for k, v in sorted(s.allocated.items()))
        slurm_rows.append(("allocated", alloc, s.allocated_source))
    out = [Section("Slurm", (), tuple(slurm_rows))]

    w = r.window
    if w is None:
        out.append(Section("Run", (), (), "never sampled on a monitored node"))
    else:
        out.append(
            Section(
                "Run",
                (),
                (
                    (
                        "first sample",
                        fmt_time(w.first),
                        "hpcobs_job_processes / hpcobs_gpu_job_info",
                    ),
                    (
                        "last sample",
                        fmt_time(w.last),
                        "running: sampled at the report's time" if w.live else "ended",
                    ),
                    ("run time", fmt_duration(w.seconds), "last sample − first sample"),
                    ("nodes", " ".join(n or "-" for n in r.nodes) or "-", ""),
                ),
            )
        )
        out.append(
            Section(
                "Nodes",
                ("node", "CPU time", "peak memory"),
                tuple(
                    (n.node or "-", fmt_duration(n.cpu_seconds), fmt_bytes(n.memory_peak_bytes))
                    for n in r.node_usage
                ),
                "no hpcobs_job_* series: the jobs collector did not see its processes",
            )
        )
    out.append(
        Section(
            "GPUs",
            ("node", "gpu", "uuid", "mean util", "max util", "peak memory", "GPU memory"),
            tuple(
                (
                    g.node or "-",
                    g.gpu or "-",
                    g.uuid or "-",
                    fmt_pct(g.utilization_mean),
                    fmt_pct(g.utilization_max),
                    fmt_bytes(g.memory_peak_bytes),
                    fmt_bytes(g.memory_total_bytes),
                )
                for g in r.gpus
            ),
            "none held (no hpcobs_gpu_job_info series)",
        )
    )
    out.append(
        Section(
            "Lustre",
            ("fs", "read", "written", "operations"),
            tuple(
                (
                    f.fs or "-",
                    fmt_bytes(f.read_bytes),
                    fmt_bytes(f.write_bytes),
                    ", ".join(f"{op} {fmt_count(n)}" for op, n in f.operations.items() if n) or "-",
                )
                for f in r.lustre
            ),
            "no job_stats of the job (hpcobs_lustre_job_* series)",
        )
    )
    out.append(
        Section(
            "Checkpoints",
            ("node", "name", "attempts", "failed", "total time", "longest", "last"),
            tuple(
                (
                    c.node or "-",
                    c.name or "-",
                    fmt_count(c.attempts_total),
                    fmt_count(c.failed),
                    fmt_duration(c.seconds_total),
                    fmt_duration(c.longest_seconds),
                    fmt_duration(c.last_seconds),
                )
                for c in r.checkpoints
            ),
            "none recorded (hpcobs_checkpoint_* series)",
        )
    )
    out.append(
        Section(
            "Alerts on its nodes during the run",
            ("alert", "severity", "labels", "active since", "last firing"),
            tuple(
                (
                    a.alertname,
                    a.severity or "-",
                    " ".join(
                        f"{k}={v}"
                        for k, v in sorted(a.labels.items())
                        if not (k == "cluster" and v == r.cluster)
                    )
                    or "-",
                    fmt_time(a.active_since),
                    fmt_time(a.last_firing),
                )
                for a in r.alerts
            ),
            "none fired",
        )
    )
    return out


def _title(r: JobReport) -> str:
    cluster = f" · cluster {r.cluster}" if r.cluster else ""
    return f"Job {r.job_id}{cluster} · as of {fmt_time(r.as_of)}"


def _footer(r: JobReport) -> str:
    return f"{len(r.queries)} queries to {r.prometheus}; where each figure comes from: {DOC}"


# -- text ----------------------------------------------------------------------------------
def _columns(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(c.ljust(widths[i]) for i, c in enumerate(row))).rstrip() for row in rows
    ]


def render_text(r: JobReport) -> str:
    lines = [_title(r), ""]
    for sec in sections(r):
        lines.append(sec.title)
        if not sec.rows:
            lines.append(f"  {sec.empty}")
        elif sec.header:
            lines.extend(_columns([sec.header, *sec.rows]))
        else:
            lines.extend(_columns(sec.rows))
        lines.append("")
    lines.append("Findings")
    lines.extend(f"  - {f.text}" for f in r.findings)
    if not r.findings:
        lines.append("  none: not enough figures")
    if r.notes:
        lines.extend(["", "Notes"])
        lines.extend(f"  - {n}" for n in r.notes)
    lines.extend(["", _footer(r)])
    return "\n".join(lines) + "\n"


# -- JSON ----------------------------------------------------------------------------------
def _fact_json(f: Fact[Any]) -> dict[str, Any]:
    return {"value": f.value, "source": f.source}


def to_json(r: JobReport) -> dict[str, Any]:
    s = r.slurm
    w = r.window
    return {
        "job_id": r.job_id,
        "cluster": r.cluster,
        "as_of": r.as_of,
        "prometheus": r.prometheus,
        "slurm": {
            "partition": _fact_json(s.partition),
            "state": _fact_json(s.state),
            "cause": _fact_json(s.cause),
            "exit_code": _fact_json(s.exit_code),
            "queue_wait_seconds": _fact_json(s.queue_wait_seconds),
            "allocated_resource_seconds": dict(s.allocated),
            "allocated_source": s.allocated_source or None,
            "record": dict(s.record),
        },
        "window": None
        if w is None
        else {"first": w.first, "last": w.last, "seconds": w.seconds, "live": w.live},
        "nodes": [
            {"node": n.node, "cpu_seconds": n.cpu_seconds, "memory_peak_bytes": n.memory_peak_bytes}
            for n in r.node_usage
        ],
        "gpus": [
            {
                "node": g.node,
                "gpu": g.gpu,
                "uuid": g.uuid,
                "utilization_mean": g.utilization_mean,
                "utilization_max": g.utilization_max,
                "memory_peak_bytes": g.memory_peak_bytes,
                "memory_total_bytes": g.memory_total_bytes,
            }
            for g in r.gpus
        ],
        "lustre": [
            {
                "fs": f.fs,
                "read_bytes": f.read_bytes,
                "write_bytes": f.write_bytes,
                "operations": dict(f.operations),
                "counter_resets": f.resets,
            }
            for f in r.lustre
        ],
        "checkpoints": [
            {
                "node": c.node,
                "name": c.name,
                "attempts": dict(c.attempts),
                "seconds_total": c.seconds_total,
                "longest_seconds": c.longest_seconds,
                "last_seconds": c.last_seconds,
            }
            for c in r.checkpoints
        ],
        "alerts": [
            {
                "alertname": a.alertname,
                "severity": a.severity,
                "labels": dict(a.labels),
                "active_since": a.active_since,
                "last_firing": a.last_firing,
            }
            for a in r.alerts
        ],
        "findings": [
            {"key": f.key, "level": f.level, "text": f.text, "value": f.value} for f in r.findings
        ],
        "notes": list(r.notes),
        "queries": [
            {
                k: v
                for k, v in {
                    "kind": q.kind,
                    "expr": q.expr,
                    "time": q.time,
                    "start": q.start,
                    "end": q.end,
                    "step": q.step,
                }.items()
                if v is not None
            }
            for q in r.queries
        ],
    }


def render_json(r: JobReport) -> str:
    return json.dumps(to_json(r), indent=2, allow_nan=False) + "\n"


# -- HTML ----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:left}
.muted{color:#666;font-size:.9em}.warn{color:#9a6700;font-weight:bold}.info{color:#222}
"""


def render_html(r: JobReport) -> str:
    esc = html.escape
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(_title(r))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(_title(r))}</h1>",
    ]
    parts.append("<h2>Findings</h2><ul>")
    parts.extend(f'<li class="{esc(f.level)}">{esc(f.text)}</li>' for f in r.findings)
    if not r.findings:
        parts.append("<li>none: not enough figures</li>")
    parts.append("</ul>")
    for sec in sections(r):
        parts.append(f"<h2>{esc(sec.title)}</h2>")
        if not sec.rows:
            parts.append(f'<p class="muted">{esc(sec.empty)}</p>')
            continue
        parts.append("<table>")
        if sec.header:
            parts.append("<tr>" + "".join(f"<th>{esc(c)}</th>" for c in sec.header) + "</tr>")
            for row in sec.rows:
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        else:
            for key, value, source in sec.rows:
                parts.append(
                    f"<tr><th>{esc(key)}</th><td>{esc(value)}</td>"
                    f'<td class="muted">{esc(source)}</td></tr>'
                )
        parts.append("</table>")
    if r.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{esc(n)}</li>" for n in r.notes)
        parts.append("</ul>")
    parts.append(f'<p class="muted">{esc(_footer(r))}</p></body></html>\n')
    return "".join(parts)
