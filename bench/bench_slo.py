"""`make bench BENCH=slo`: the SLO daemon's evaluation cycle, 200 SLOs over 30 days of data.

A real Prometheus is filled (promtool backfill) with the counters of a 50-partition cluster:
1-minute samples for the last 3 days (what the short windows read), hourly before that, 600
series. 200 SLOs: per partition job success (ratio), queue wait (latency), GPU-hours lost
(weighted) and a calendar-month job success. Printed:

- the cold cycle (fetches 30 days of hourly tiles once), the cycle at an hour's rollover
  (one new tile per metric), steady-state cycles (p50, p99, max);
- queries per cycle for 50, 100 and 200 SLOs: the same, as queries are per metric and window;
- rule generation for the 200 SLOs;
- spec size: wall time and peak RSS of `hpcobs-slo validate` and `rules -o FILE` (each a
  fresh process) for 500 and 2,000 plainly written SLOs, and the cost per extra SLO.

Targets: a steady-state cycle ≤ 2 s; queries per cycle independent of the number of SLOs;
memory linear in the SLO count, ≤ 8 KiB of RSS per SLO for both commands (it was about
12 KiB for validate and 150 KiB for rules: a 90,000-SLO spec took 1.16 GB and 10.6 GB).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hpcobs.slo.evaluator import Evaluator
from hpcobs.slo.loader import load_texts
from hpcobs.slo.promapi import ClientConfig, PrometheusClient
from hpcobs.slo.rules import render

PARTITIONS = [f"p{i:02d}" for i in range(50)]
DAY, HOUR = 86400, 3600
TARGET_CYCLE_S = 2.0
TARGET_KIB_PER_SLO = 8.0
SIZES = (500, 2000)


def spec_text(partitions: list[str]) -> str:
    values = ", ".join(partitions)
    return f"""version: hpcobs.slo/v1
service: bench
slos:
  - id: job-success
    objective: 99
    expand: {{partition: [{values}]}}
    sli:
      ratio:
        bad: hpcobs_slurm_jobs_finished_total{{cause="system"}}
        total: hpcobs_slurm_jobs_finished_total
  - id: queue-wait
    objective: 95
    expand: {{partition: [{values}]}}
    sli:
      latency:
        histogram: hpcobs_slurm_job_queue_wait_seconds
        threshold: 3600
        exceeded: hpcobs_slurm_jobs_wait_exceeded_total
  - id: gpu-lost
    objective: 99.5
    expand: {{partition: [{values}]}}
    sli:
      weighted: {{resource: gpu}}
  - id: month
    objective: 98
    period: calendar-month
    expand: {{partition: [{values}]}}
    sli:
      ratio:
        good: hpcobs_slurm_jobs_finished_total{{cause!="system"}}
        total: hpcobs_slurm_jobs_finished_total
"""


def plain_spec(n: int) -> str:
    """n SLOs written one by one (no expand), about 110 bytes each."""
    head = "version: hpcobs.slo/v1\nservice: bench\nslos:\n"
    return head + "".join(
        f"  - id: s{i}\n    objective: 99\n    sli:\n      ratio:\n"
        f'        bad: a_total{{x="{i}"}}\n        total: a_total\n'
        for i in range(n)
    )


_MEASURE = """
import resource, sys, time
from hpcobs.slo.cli import main
t = time.monotonic()
rc = main(sys.argv[1:])
print(rc, time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure_cli(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in KiB) of `hpcobs-slo ARGS` in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, check=False
    )
    rc, seconds, rss = done.stdout.split()[-3:]
    if rc != "0":
        raise RuntimeError(f"hpcobs-slo {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return float(seconds), float(rss)


def spec_size_figures(work: Path) -> None:
    for command in ("validate", "rules"):
        figures = {}
        for n in SIZES:
            spec = work / f"plain-{n}.yaml"
            spec.write_text(plain_spec(n))
            args = [command, f"--spec.max-slos={n}", str(spec)]
            if command == "rules":
                args += ["-o", str(work / f"plain-{n}.rules.yml")]
            figures[n] = measure_cli(args)
        (n1, (t1, r1)), (n2, (t2, r2)) = sorted(figures.items())
        per_slo = (r2 - r1) / (n2 - n1)
        print(
            f"{command} of a plain spec: "
            + ", ".join(
                f"{n} SLOs {t:.2f} s, {r / 1024:.0f} MiB peak RSS" for n, (t, r) in figures.items()
            )
            + f"; per extra SLO {per_slo:.1f} KiB, {(t2 - t1) / (n2 - n1) * 1000:.2f} ms "
            f"(target <= {TARGET_KIB_PER_SLO:g} KiB: {'met' if per_slo <= TARGET_KIB_PER_SLO else 'MISSED'})"
        )


def write_openmetrics(path: Path, now: int) -> int:
    """Counters of every partition; returns the number of samples written."""
    start = (now - 31 * DAY) // HOUR * HOUR
    fine = (now - 3 * DAY) // HOUR * HOUR
    times = list(range(start, fine, HOUR)) + list(range(fine, now - 60, 60))
    series: list[tuple[str, str, float]] = []
    for p in PARTITIONS:
        for state, cause, rate in (
            ("completed", "none", 20.0),
            ("failed", "user", 0.6),
            ("node_fail", "system", 0.1),
        ):
            series.append(
                (
                    "hpcobs_slurm_jobs_finished_total",
                    f'partition="{p}",state="{state}",cause="{cause}"',
                    rate,
                )
            )
        for le, rate in (("600.0", 14.0), ("3600.0", 19.5), ("+Inf", 20.7)):
            series.append(
                ("hpcobs_slurm_job_queue_wait_seconds_bucket", f'partition="{p}",le="{le}"', rate)
            )
        series.append(("hpcobs_slurm_job_queue_wait_seconds_count", f'partition="{p}"', 20.7))
        series.append(
            ("hpcobs_slurm_jobs_wait_exceeded_total", f'partition="{p}",threshold="3600"', 1.3)
        )
        for state, rate in (("completed", 9000.0), ("node_fail", 40.0)):
            for resource, scale in (("gpu", 1.0), ("cpu", 16.0)):
                series.append(
                    (
                        "hpcobs_slurm_job_resource_seconds_total",
                        f'partition="{p}",state="{state}",resource="{resource}"',
                        rate * scale,
                    )
                )
    families = {
        "hpcobs_slurm_jobs_finished_total": "# TYPE hpcobs_slurm_jobs_finished counter",
        "hpcobs_slurm_job_queue_wait_seconds_bucket": "# TYPE hpcobs_slurm_job_queue_wait_seconds histogram",
        "hpcobs_slurm_jobs_wait_exceeded_total": "# TYPE hpcobs_slurm_jobs_wait_exceeded counter",
        "hpcobs_slurm_job_resource_seconds_total": "# TYPE hpcobs_slurm_job_resource_seconds counter",
    }
    samples = 0
    with path.open("w") as out:
        for name, header in families.items():
            out.write(header + "\n")
            names = (
                (name, "hpcobs_slurm_job_queue_wait_seconds_count")
                if name.endswith("_bucket")
                else (name,)
            )
            for n, labels, rate in series:
                if n not in names:
                    continue
                value = 1e6
                prev = times[0]
                lines = []
                for t in times:
                    value += rate * (t - prev) / 60
                    prev = t
                    lines.append(f"{n}{{{labels}}} {value:.1f} {t}\n")
                out.write("".join(lines))
                samples += len(lines)
        out.write("# EOF\n")
    return samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    for binary in ("prometheus", "promtool"):
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} not found (scripts/bootstrap.sh installs it)")
    work = Path(tempfile.mkdtemp(prefix="bench-slo-"))
    prom: subprocess.Popen[bytes] | None = None
    try:
        spec_size_figures(work)
        now = int(time.time()) // 60 * 60
        t = time.monotonic()
        om = work / "data.om"
        samples = write_openmetrics(om, now)
        subprocess.run(
            [
                "promtool",
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--max-block-duration=744h",
                str(om),
                str(work / "tsdb"),
            ],
            check=True,
            capture_output=True,
        )
        om.unlink()
        print(
            f"data: {samples / 1e6:.2f} M samples, {len(PARTITIONS)} partitions, backfilled in {time.monotonic() - t:.1f} s"
        )
        port = free_port()
        (work / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
        log = (work / "prometheus.log").open("wb")
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                "--storage.tsdb.retention.time=90d",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or prom.poll() is not None:
                raise RuntimeError(
                    "prometheus did not start:\n" + (work / "prometheus.log").read_text()[-2000:]
                )
            time.sleep(0.2)
        client = PrometheusClient(ClientConfig(url=url, timeout=60))

        counts = {}
        for n in (12, 25, 50):
            loaded = load_texts([("bench.yaml", spec_text(PARTITIONS[:n]))])
            assert loaded.ok, loaded.problems.items
            counts[len(loaded.slos)] = Evaluator(loaded.slos, client).queries_per_cycle
        print(
            "instant queries per cycle by SLO count: "
            + ", ".join(f"{k} SLOs: {v}" for k, v in counts.items())
        )

        loaded = load_texts([("bench.yaml", spec_text(PARTITIONS))])
        slos = loaded.slos
        evaluator = Evaluator(slos, client, settle=0, timeout=120)
        cold = evaluator.evaluate(now - HOUR)
        assert cold.success, [r.error for r in cold.results if r.error]
        rollover = evaluator.evaluate(float(now))
        steady = [evaluator.evaluate(float(now)) for _ in range(10)]
        assert all(e.success for e in steady)
        times_s = [e.duration for e in steady]
        p50 = statistics.median(times_s)
        print(
            f"SLOs: {len(slos)}; cold cycle (30 days of hourly tiles): {cold.duration:.2f} s, {cold.queries} queries"
        )
        print(
            f"hour rollover cycle (one new tile per metric): {rollover.duration:.3f} s, {rollover.queries} queries"
        )
        print(
            f"steady cycle: p50 {p50:.3f} s, p99 {percentile(times_s, 0.99):.3f} s, max {max(times_s):.3f} s, "
            f"{steady[0].queries} queries (target <= {TARGET_CYCLE_S} s: {'met' if max(times_s) <= TARGET_CYCLE_S else 'MISSED'})"
        )
        same = len(set(counts.values())) == 1 and steady[0].queries == counts[len(slos)]
        print(f"query count independent of the SLO count: {'yes' if same else 'NO'}")
        t = time.monotonic()
        text = render(slos)
        print(
            f"rules for {len(slos)} SLOs: {text.count('- record:')} recording rules, "
            f"{text.count('- alert:')} alerts, {len(text) / 1e6:.1f} MB, generated in {time.monotonic() - t:.2f} s"
        )
    finally:
        if prom is not None and prom.poll() is None:
            os.kill(prom.pid, signal.SIGTERM)
            try:
                prom.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(prom.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
