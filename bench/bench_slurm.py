"""`make bench BENCH=slurm`: hpcobs-slurm-exporter against a real slurmctld holding 100,000 jobs.

1. A private Slurm 22.05 (the test harness's cluster, MaxJobCount/MaxArraySize raised) gets
   100 held job arrays of 1,000 tasks, then each array's tasks are moved to another partition
   (all but one), which splits them into 100,000 separate job records: the worst case for the
   exporter, as many `squeue` lines as jobs.
2. The real exporter program runs against it (portable backend, the default on Debian's
   Slurm) for several cycles; from its own metrics and /proc: cycle time (p50, max), slurmctld
   calls per cycle, its RSS (peak); from `sdiag`: the RPCs slurmctld served per cycle.
3. The same cycle while the 100,000 tasks are still 100 compact held arrays.
4. Separately, parsing a 100,000-job `squeue` output captured from that slurmctld (the
   exporter's own format): time (p50, p99) and memory.
5. What the performance tricks gain (the figures quoted next to them): the squeue parser's
   CPU time on that output with each memo table disabled in turn, and the generic way
   (`make_job` and the value parsers) instead of its inlined fast path
   (exporters/parse/slurm.py); the ledger's cycle over 100 pending arrays of 1,000 tasks
   past every wait threshold, with and without its remainder fast path (ledger.py); and the
   ledger's cycle over 100,000 pending job records (pending time by reason, issue 17).
   `python bench/bench_slurm.py --offline` runs this step alone, without Slurm, on 100,000
   synthetic squeue lines of the same shape (100 arrays of 1,000 tasks, one in ten running).

Targets: ≤ 1.5 s per cycle, RSS ≤ 250 MB, ≤ 3 slurmctld calls per cycle.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

ARRAYS = 100
TASKS = 1000
CYCLES = 6
TARGET_CYCLE_S = 1.5
TARGET_RSS_MB = 250
TARGET_CALLS = 3
RPCS = (
    "REQUEST_JOB_INFO",
    "REQUEST_NODE_INFO",
    "REQUEST_PARTITION_INFO",
    "REQUEST_STATS_INFO",
    "REQUEST_LICENSE_INFO",
    "REQUEST_RESERVATION_INFO",
)


def rpc_counts(cluster: object) -> dict[str, int]:
    out = cluster.run("sdiag").stdout  # type: ignore[attr-defined]
    counts = dict.fromkeys(RPCS, 0)
    for name, n in re.findall(r"^\s*(REQUEST_\w+)\s+\(\s*\d+\)\s+count:(\d+)", out, re.M):
        if name in counts:
            counts[name] = int(n)
    return counts


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_exporter(cluster: object, workdir: Path, cycles: int) -> dict[str, float]:
    """Start the real program, watch `cycles` cycles, return figures."""
    from harness.servers import free_port

    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "hpcobs-slurm-exporter"),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--slurm.conf={cluster.conf_path}",  # type: ignore[attr-defined]
        "--slurm.backend=portable",
        "--slurm.poll-interval=2s",
        "--slurm.stale-after=60s",
        "--slurm.timeout=30s",
        f"--slurm.state-file={workdir / 'state.json'}",
    ]
    log = (workdir / f"exporter-{port}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    durations: list[float] = []
    calls: list[float] = []
    seen = 0.0
    rpc_before = rpc_counts(cluster)
    deadline = time.monotonic() + 60 + cycles * 10
    try:
        while len(durations) < cycles and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    text = r.read().decode()
            except OSError:
                continue
            done = metric(text, 'hpcobs_slurm_cycles_total{result="success"}') or 0.0
            if done > seen:
                seen = done
                durations.append(metric(text, "hpcobs_slurm_cycle_duration_seconds") or 0.0)
                calls.append(metric(text, "hpcobs_slurm_cycle_calls") or 0.0)
        rpc_after = rpc_counts(cluster)
        rss_peak = status_kb(proc.pid, "VmHWM") / 1024
        rss_now = status_kb(proc.pid, "VmRSS") / 1024
        total = metric(text, 'hpcobs_slurm_cycles_total{result="success"}') or 1.0
        failures = metric(text, 'hpcobs_slurm_cycles_total{result="failure"}') or 0.0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    if len(durations) < cycles:
        raise RuntimeError(f"only {len(durations)} cycles in time; see {log.name}")
    # sdiag itself adds one REQUEST_STATS_INFO per rpc_counts() call (the second one's is
    # counted after the snapshot) and one per exporter sdiag call.
    rpcs = sum(rpc_after[k] - rpc_before[k] for k in RPCS) - 1
    return {
        "cycles": total + failures,
        "failures": failures,
        "p50": statistics.median(durations),
        "max": max(durations),
        "calls_max": max(calls),
        "rpcs_per_cycle": rpcs / (total + failures),
        "rss_peak_mb": rss_peak,
        "rss_mb": rss_now,
    }


def report(label: str, r: dict[str, float]) -> None:
    ok = (
        r["max"] <= TARGET_CYCLE_S
        and r["rss_peak_mb"] <= TARGET_RSS_MB
        and r["calls_max"] <= TARGET_CALLS
        and not r["failures"]
    )
    print(
        f"{label}: cycle p50 {r['p50']:.3f} s, max {r['max']:.3f} s (target ≤ {TARGET_CYCLE_S} s); "
        f"RSS peak {r['rss_peak_mb']:.0f} MB, now {r['rss_mb']:.0f} MB (target ≤ {TARGET_RSS_MB}); "
        f"slurmctld calls/cycle ≤ {r['calls_max']:.0f} (target ≤ {TARGET_CALLS}), "
        f"RPCs/cycle {r['rpcs_per_cycle']:.1f}; cycles {r['cycles']:.0f}, "
        f"failed {r['failures']:.0f} — {'OK' if ok else 'MISSED'}",
        flush=True,
    )


def bench_parse(text: str) -> None:
    from hpcobs.exporters.parse.slurm import parse_squeue

    lines = text.count("\n")
    times = []
    for _ in range(7):
        started = time.perf_counter()
        parsed = parse_squeue(text)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    parsed = parse_squeue(text)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times.sort()
    print(
        f"parse {lines} squeue lines ({len(text) / 1e6:.1f} MB): p50 {statistics.median(times):.3f} s, "
        f"p99 {times[-1]:.3f} s (of {len(times)}), {len(parsed.jobs)} jobs, "
        f"{parsed.bad_lines} bad lines, peak allocations {peak / 1e6:.0f} MB",
        flush=True,
    )


def synthetic_squeue(arrays: int = ARRAYS, tasks: int = TASKS) -> str:
    """`arrays` × `tasks` split array tasks as squeue prints them (one in ten running)."""
    from hpcobs.exporters.parse.slurm import TAIL_SEP as US

    lines = []
    job_id = 1000
    for n in range(arrays):
        base = job_id
        tail = f"1795599000{US}0{US}0{US}acct{n % 13}{US}user{n % 37}{US}"
        for task in range(tasks):
            job_id += 1
            if task % 10 == 0:
                lines.append(
                    f"{job_id}|{base}|{task}|batch|RUNNING|1795599049|1795599100|1795602700|4|"
                    f"cpu=4,mem=16G,node=1,billing=4,gres/gpu=1|(null)|node{task % 7}|None|{tail}"
                )
            else:
                lines.append(
                    f"{job_id}|{base}|{task}|bench|PENDING|N/A|N/A|N/A|1|"
                    f"cpu=1,mem=100M,node=1,billing=1|(null)||JobHeldUser|{tail}"
                )
    return "\n".join(lines) + "\n"


class _Forgetful(dict[str, object]):
    """A memo table that never remembers (to measure what the real one saves)."""

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return default

    def __setitem__(self, key: str, value: object) -> None:
        pass


def bench_parse_tricks(text: str, rounds: int = 9) -> None:
    """CPU time of parse_squeue as it is, without each memo, and the generic way."""
    import hpcobs.exporters.parse.slurm as ps
    from hpcobs.exporters.slurm.model import (
        exit_code_text,
        job_state,
        make_job,
        requested_licenses,
    )

    def generic() -> None:
        for line in text.splitlines():
            head, restarts, exit_code, account, user, _ = line.rsplit(
                ps.TAIL_SEP, len(ps.SQUEUE_TAIL_FIELDS)
            )
            head, _, submit = head.rpartition(ps.SEP)
            f = head.split(ps.SEP, len(ps.SQUEUE_FIELDS) - 1)
            tres = ps.parse_tres(f[9])
            make_job(
                job_id=ps.parse_int(f[0]),
                array_job_id=ps.parse_int(f[1]),
                array_tasks=f[2],
                partition=f[3],
                state=job_state(f[4]),
                reason=f[12],
                eligible_time=ps.parse_time(f[5]),
                start_time=ps.parse_time(f[6]),
                end_time=ps.parse_time(f[7]),
                cpus=ps.parse_int(f[8]),
                memory_bytes=tres.memory_bytes,
                gpus=tres.gpus,
                licenses=() if f[10] == "(null)" else requested_licenses(f[10].split(",")),
                nodes=f[11],
                submit_time=ps.parse_time(submit),
                restarts=ps.parse_int(restarts),
                exit_code=exit_code_text(ps.parse_int(exit_code)),
                account=account,
                user=user,
            )

    memos = {
        "_TRES_CACHE": ps._TRES_CACHE,
        "_STATES": ps._STATES,
        "_LABELS": ps._LABELS,
        "_EXIT_CODES": ps._EXIT_CODES,
    }
    variants = {
        "as is": ("", lambda: ps.parse_squeue(text)),
        "without the TRES memo": ("_TRES_CACHE", lambda: ps.parse_squeue(text)),
        "without the state memo": ("_STATES", lambda: ps.parse_squeue(text)),
        "without the label memo": ("_LABELS", lambda: ps.parse_squeue(text)),
        "make_job + value parsers": ("", generic),
    }
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):  # interleaved, least CPU time of each: shared cores are noisy
        for label, (memo, run) in variants.items():
            if memo:
                setattr(ps, memo, _Forgetful())
            try:
                started = time.process_time()
                run()
                best[label] = min(best[label], time.process_time() - started)
            finally:
                for name, table in memos.items():
                    setattr(ps, name, table)
    lines = text.count("\n")
    for label, seconds in best.items():
        print(
            f"parse {lines} squeue lines, {label}: {seconds * 1000:.0f} ms CPU "
            f"({seconds / best['as is']:.2f}× as is, {seconds / lines * 1e6:.2f} µs a line)",
            flush=True,
        )


def bench_ledger_fast_path(rounds: int = 9) -> None:
    """A cycle of the ledger over 100 pending remainders of 1,000 tasks past 3 thresholds."""
    from hpcobs.exporters.slurm.ledger import Ledger
    from hpcobs.exporters.slurm.model import make_job

    now = 1_800_000_000
    jobs = [
        make_job(
            job_id=TASKS * n,
            array_job_id=TASKS * n,
            array_tasks=f"0-{TASKS - 1}%10",
            partition="batch",
            state="pending",
            reason="JobArrayTaskLimit",
            eligible_time=now - 2 * 86400,
            start_time=0,
            end_time=0,
            cpus=1,
            memory_bytes=0,
            gpus=0,
            licenses=(),
            nodes="",
        )
        for n in range(1, ARRAYS + 1)
    ]
    seconds = {}
    for fast in (True, False):
        ledger = Ledger(thresholds=(3600.0, 14400.0, 86400.0))
        if not fast:
            ledger._keys.complete_spec = _Forgetful()  # type: ignore[assignment]
        ledger.apply_snapshot(jobs, now)  # the first cycle marks every task
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            ledger.apply_snapshot(jobs, now)
            best = min(best, time.process_time() - started)
        seconds[fast] = best
    print(
        f"ledger cycle, {ARRAYS} pending arrays of {TASKS} tasks past 3 thresholds: "
        f"{seconds[True] * 1000:.2f} ms CPU with the remainder fast path, "
        f"{seconds[False] * 1000:.0f} ms without ({seconds[False] / seconds[True]:.0f}×)",
        flush=True,
    )


def bench_ledger_pending(text: str, rounds: int = 5) -> None:
    """A cycle of the ledger over a job list of 100,000 records, 90 % of them pending: pending
    time by reason accrues for each (issue 17), on top of what the ledger did before."""
    from hpcobs.exporters.parse.slurm import parse_squeue
    from hpcobs.exporters.slurm.ledger import Ledger

    jobs = parse_squeue(text).jobs
    ledger = Ledger(thresholds=(3600.0, 14400.0, 86400.0))
    now = 1_800_000_000.0
    ledger.apply_snapshot(jobs, now)
    best = float("inf")
    for i in range(rounds):
        started = time.process_time()
        ledger.apply_snapshot(jobs, now + 30 * (i + 1))
        best = min(best, time.process_time() - started)
    pending = sum(1 for j in jobs if j.state == "pending")
    print(
        f"ledger cycle over {len(jobs)} job records ({pending} pending, pending time by "
        f"reason): {best * 1000:.0f} ms CPU",
        flush=True,
    )


def main() -> None:
    if "--offline" in sys.argv[1:]:
        text = synthetic_squeue()
        bench_parse_tricks(text)
        bench_ledger_fast_path()
        bench_ledger_pending(text)
        return
    from hpcobs.exporters.slurm.portable import PortableBackend

    from harness.slurm import SlurmCluster

    with tempfile.TemporaryDirectory(prefix="hpcobs-bench-slurm-") as tmp:
        base = Path(tmp)
        cluster = SlurmCluster(
            base / "slurm",
            max_job_count=250_000,
            max_array_size=100_001,
            extra_conf=["PartitionName=bench Nodes=node1 MaxTime=INFINITE State=UP"],
        )
        started = time.monotonic()
        cluster.start()
        try:
            t0 = time.monotonic()
            arrays = [
                cluster.sbatch("true", f"--array=0-{TASKS - 1}", "--hold") for _ in range(ARRAYS)
            ]
            phases = ", ".join(f"{k} {v:.2f} s" for k, v in cluster.timings.items())
            print(f"slurm: started in {t0 - started:.1f} s, target <= 10 ({phases})", flush=True)
            print(
                f"slurm: {ARRAYS} held arrays of {TASKS} "
                f"tasks submitted in {time.monotonic() - t0:.1f} s",
                flush=True,
            )
            work = base / "exporter"
            work.mkdir()
            report(
                f"{ARRAYS * TASKS} tasks as {ARRAYS} held arrays", run_exporter(cluster, work, 3)
            )

            t0 = time.monotonic()
            for job in arrays:  # all tasks but the last (the array's own record) split off
                cluster.run("scontrol", "update", f"jobid={job}_[0-{TASKS - 2}]", "Partition=bench")
            env = {**cluster.env, "SLURM_TIME_FORMAT": "%s", "TZ": "UTC"}
            squeue = ["squeue", *PortableBackend.SQUEUE_ARGS]  # the exporter's own call
            out = subprocess.run(
                squeue,
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
            records = out.count("\n")
            pid = cluster.slurmctld_pid
            ctld_mb = status_kb(pid, "VmRSS") / 1024 if pid else 0
            print(
                f"slurm: split into {records} job records in {time.monotonic() - t0:.1f} s "
                f"(slurmctld RSS {ctld_mb:.0f} MB)",
                flush=True,
            )
            if records < ARRAYS * TASKS:
                raise RuntimeError(f"expected {ARRAYS * TASKS} job records, squeue shows {records}")
            t0 = time.monotonic()
            subprocess.run(squeue, capture_output=True, env=env, check=True)
            print(f"squeue alone: {time.monotonic() - t0:.3f} s for {records} jobs", flush=True)
            report(f"{records} job records", run_exporter(cluster, work, CYCLES))
            bench_parse(out)
            bench_parse_tricks(out)
            bench_ledger_fast_path()
            bench_ledger_pending(out)
        finally:
            cluster.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
