"""The scheduler SLIs of issue 17 against a real Slurm (the harness's private cluster).

- Preemption (`PreemptType=preempt/partition_prio`, `PreemptMode=REQUEUE`, partitions `low`
  and `high` on node1): a `low` job requeued by a `high` one counts once in
  `hpcobs_slurm_job_requeues_total`, through exporter restarts; a `--no-requeue` `low` job
  preempted (so cancelled) ends as `state="preempted"`.
- Failed jobs appear in `hpcobs_slurm_job_failed_info` with Slurm's exit code and leave it
  `--slurm.failed-jobs.max-age` after their end.
- The run-time and time-to-result histograms' `_count` and `_sum` equal what the jobcomp
  records say.
- A MAINT reservation turns `hpcobs_slurm_node_maintenance` on and off with its window.
- A licence holder and a waiter: `hpcobs_slurm_pending_seconds_total{reason="Licenses"}`
  grows by the time the waiter waited, within one poll interval.
- Bad input: a user, an account and a reservation named with quotes, `ü` and 300 characters
  are exported as bounded label values, and `promtool check metrics` finds nothing wrong. The
  user name comes from the exporter's own view of the passwd database: the exporter (and the
  `squeue` it runs) sees, in a private mount namespace, a passwd file whose `nobody` is named
  that way; the job runs as `nobody` (`sbatch --uid`), so the real slurmd is unaffected.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.exporters.slurm.model import MAX_LABEL_CHARS, label_value

from harness.runtime import BIN, ExporterProcess
from harness.slurm import SlurmCluster, SlurmClusterFactory
from harness.slurm_exporter import PROGRAM, Starter, epoch, wait_for

pytestmark = pytest.mark.real

ODD = ("q\"uo'te ü " * 40)[:300]
ODD_ACCOUNT = ODD.replace(" ", "_")
LOG_URL = "https://logs.example/search?job={job_id}&from={start}&to={end}"
MAX_AGE = 10  # --slurm.failed-jobs.max-age

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_text(exporter: ExporterProcess) -> str:
    with urllib.request.urlopen(exporter.url + "/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def scrape(exporter: ExporterProcess) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(exporter)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def select(samples: Samples, name: str, **match: str) -> dict[tuple[tuple[str, str], ...], float]:
    """`name`'s samples whose labels include `match`, by their whole label set."""
    return {
        labels: v
        for (metric, labels), v in samples.items()
        if metric == name and all(dict(labels).get(k) == w for k, w in match.items())
    }


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(select(samples, name, **match).values())


def squeue_times(cluster: SlurmCluster, job: int) -> dict[str, int]:
    """Submit, start and end time of a job as Unix seconds (0 when not set)."""
    out = cluster.run(
        "squeue", "-h", "--states=all", "-j", str(job), "-O", "SubmitTime:|,StartTime:|,EndTime:|"
    ).stdout
    values = out.strip().split("|")[:3]
    times = [epoch(v) if v[:1].isdigit() and "T" in v else 0 for v in values]
    return dict(zip(("submit", "start", "end"), times, strict=True))


def restarts(cluster: SlurmCluster, job: int) -> int:
    out = cluster.run("squeue", "-h", "--states=all", "-j", str(job), "-O", "RestartCnt").stdout
    return int(out.split()[0]) if out.split() else -1


def reason(cluster: SlurmCluster, job: int) -> str:
    return cluster.run("squeue", "-h", "-j", str(job), "-o", "%r").stdout.strip()


# -- preemption, requeues, failed jobs, histograms -------------------------------------------------


def test_preemption_requeues_failures_and_histograms(
    slurm_cluster_factory: SlurmClusterFactory, tmp_path: Path, start_exporter: Starter
) -> None:
    cluster = slurm_cluster_factory(preemption=True)
    work = tmp_path / "exporters"
    common = (f"--slurm.failed-jobs.max-age={MAX_AGE}s", f"--slurm.job-log-url={LOG_URL}")
    with_log = start_exporter(
        cluster, work, "with-log", f"--slurm.jobcomp-file={cluster.jobcomp_path}", *common
    )
    without_log = start_exporter(cluster, work, "without-log", *common)
    cpus = str(cluster.cpus)

    failed = cluster.sbatch("exit 3")
    killed = cluster.sbatch("kill -9 $$")
    cluster.sbatch("true")
    cluster.wait_job_state(failed, "FAILED")
    cluster.wait_job_state(killed, "FAILED")

    # Failed jobs listed with Slurm's exit codes (slurmctld's, whichever source came first).
    failed_end = squeue_times(cluster, failed)["end"]
    killed_end = squeue_times(cluster, killed)["end"]

    def failures(exporter: ExporterProcess) -> dict[str, dict[str, str]]:
        rows = select(scrape(exporter), "hpcobs_slurm_job_failed_info")
        return {dict(labels)["job_id"]: dict(labels) for labels in rows}

    for exporter in (with_log, without_log):
        listed = wait_for(
            lambda e=exporter: (f := failures(e)) and len(f) == 2 and f,
            20,
            f"{exporter.address}: two failed jobs listed",
        )
        assert listed[str(failed)]["exit_code"] == "3:0"
        assert listed[str(killed)]["exit_code"] == "0:9"
        for job, end in ((failed, failed_end), (killed, killed_end)):
            row = listed[str(job)]
            assert (row["state"], row["user"], row["partition"], row["nodes"]) == (
                "failed",
                "root",
                "debug",
                "node1",
            )
            assert row["account"] == "none"
            start = squeue_times(cluster, job)["start"]
            assert row["log_url"] == f"https://logs.example/search?job={job}&from={start}&to={end}"

    # ... until --slurm.failed-jobs.max-age after they ended, then no longer.
    ended = max(failed_end, killed_end)
    last_listed: dict[ExporterProcess, float] = {}
    first_gone: dict[ExporterProcess, float] = {}
    deadline = time.monotonic() + MAX_AGE + 30
    while len(first_gone) < 2 and time.monotonic() < deadline:
        for exporter in (with_log, without_log):
            if exporter in first_gone:
                continue
            at = time.time()
            if failures(exporter):
                last_listed[exporter] = at
            else:
                first_gone[exporter] = at
        time.sleep(0.2)
    assert len(first_gone) == 2, "failed jobs still listed long after max-age"
    for exporter in (with_log, without_log):
        assert first_gone[exporter] >= ended + MAX_AGE - 1, (first_gone[exporter], ended)
        assert last_listed[exporter] >= ended + MAX_AGE - 5, (last_listed[exporter], ended)

    requeued = cluster.sbatch("sleep 300", "-p", "low", "-c", cpus)
    cluster.wait_job_state(requeued, "RUNNING")
    preemptor = cluster.sbatch("sleep 1", "-p", "high", "-c", cpus)
    cluster.wait_job_state(preemptor, "COMPLETED")
    wait_for(lambda: restarts(cluster, requeued) == 1, 20, "the low job requeued")
    assert cluster.job_states(requeued) == ["PENDING"]
    cancelled = cluster.sbatch("sleep 300", "-p", "low", "-c", cpus, "--no-requeue")
    cluster.wait_job_state(cancelled, "RUNNING")
    preemptor2 = cluster.sbatch("sleep 1", "-p", "high", "-c", cpus)
    cluster.wait_job_state(cancelled, "PREEMPTED")
    cluster.wait_job_state(preemptor2, "COMPLETED")

    # Requeued once, preempted and cancelled once: exactly once through restarts.
    def requeues_and_preempted(exporter: ExporterProcess, preempted: float) -> bool:
        samples = scrape(exporter)
        assert select(samples, "hpcobs_slurm_job_requeues_total", partition="low") == {
            (("partition", "low"),): 1.0
        }
        assert total(samples, "hpcobs_slurm_job_requeues_total") == 1
        got = total(samples, "hpcobs_slurm_jobs_finished_total", partition="low", state="preempted")
        assert got == preempted, got
        return True

    # With the jobcomp log the requeued run counts as a preempted run too (its log record);
    # slurmctld alone shows only the job that ended preempted.
    expected = {with_log: 2.0, without_log: 1.0}
    for exporter, preempted in expected.items():
        wait_for(lambda e=exporter, p=preempted: requeues_and_preempted(e, p), 20, "requeues")
    with_log.stop()
    without_log.stop()
    with_log = start_exporter(
        cluster, work, "with-log", f"--slurm.jobcomp-file={cluster.jobcomp_path}", *common
    )
    without_log = start_exporter(cluster, work, "without-log", *common)
    for exporter, preempted in ((with_log, 2.0), (without_log, 1.0)):
        cycles = wait_for(
            lambda e=exporter: (
                total(scrape(e), "hpcobs_slurm_cycles_total", result="success") >= 3 and scrape(e)
            ),
            20,
            "three cycles after the restart",
        )
        assert cycles
        assert requeues_and_preempted(exporter, preempted)

    # The histograms against the jobcomp records (the exporter that reads the log sees every
    # run; the requeued job is still pending, so it has one record so far).
    records = [r for r in cluster.jobcomp_records() if r["JobState"] != "PENDING"]
    ran = [r for r in records if r["NodeList"] not in ("(null)", "")]
    completed = [r for r in records if r["JobState"] == "COMPLETED"]
    assert len(ran) == 7 and len(completed) == 3  # 2 failed, 3 completed, 2 preempted runs

    def histograms_match() -> bool:
        samples = scrape(with_log)
        run_count = total(samples, "hpcobs_slurm_job_run_seconds_count")
        run_sum = total(samples, "hpcobs_slurm_job_run_seconds_sum")
        assert run_count == len(ran), run_count
        assert run_sum == sum(epoch(r["EndTime"]) - epoch(r["StartTime"]) for r in ran)
        assert total(samples, "hpcobs_slurm_job_time_to_result_seconds_count") == len(completed)
        assert total(samples, "hpcobs_slurm_job_time_to_result_seconds_sum") == sum(
            epoch(r["EndTime"]) - epoch(r["SubmitTime"]) for r in completed
        )
        by_state: dict[tuple[str, str], float] = {}
        for labels, v in select(samples, "hpcobs_slurm_job_run_seconds_count").items():
            key = (dict(labels)["partition"], dict(labels)["state"])
            by_state[key] = by_state.get(key, 0) + v
        assert by_state == {
            ("debug", "failed"): 2,
            ("debug", "completed"): 1,
            ("high", "completed"): 2,
            ("low", "preempted"): 2,
        }, by_state
        return True

    wait_for(histograms_match, 20, "histograms equal to the jobcomp records")

    cluster.run("scancel", str(requeued))


# -- maintenance reservations ----------------------------------------------------------------------


def test_maint_reservation_turns_node_maintenance_on_and_off(
    slurm_cluster_factory: SlurmClusterFactory, tmp_path: Path, start_exporter: Starter
) -> None:
    cluster = slurm_cluster_factory()
    exporter = start_exporter(cluster, tmp_path / "exporters", "maint")
    wait_for(lambda: scrape(exporter)[("hpcobs_slurm_up", ())] == 1, 20, "exporter up")
    cluster.run(
        "scontrol", "create", "reservation", "reservationname=disk-swap", "starttime=now+8",
        "endtime=now+30", f"nodes={cluster.node_name}", "flags=maint,ignore_jobs", "users=root",
    )  # fmt: skip
    cluster.run(
        "scontrol", "create", "reservation", "reservationname=training", "starttime=now+3600",
        "duration=30", f"nodes={cluster.node_name}", "flags=ignore_jobs", "users=root",
    )  # fmt: skip
    show = cluster.run("scontrol", "show", "reservation", "disk-swap", "--oneliner").stdout
    window = {k: epoch(v) for k, v in (f.split("=", 1) for f in show.split()) if k.endswith("Time")}
    start, end = window["StartTime"], window["EndTime"]

    def reservations() -> dict[str, dict[str, str]]:
        rows = select(scrape(exporter), "hpcobs_slurm_reservation_info")
        return {dict(labels)["reservation"]: dict(labels) for labels in rows}

    info = wait_for(lambda: len(r := reservations()) == 2 and r, 20, "both reservations")
    assert info["disk-swap"]["flags"] == "IGNORE_JOBS,MAINT,SPEC_NODES"
    assert info["training"]["flags"] == "IGNORE_JOBS,SPEC_NODES"
    samples = scrape(exporter)
    starts = select(samples, "hpcobs_slurm_reservation_start_timestamp_seconds")
    assert starts[(("reservation", "disk-swap"),)] == start
    ends = select(samples, "hpcobs_slurm_reservation_end_timestamp_seconds")
    assert ends[(("reservation", "disk-swap"),)] == end

    def maintenance() -> tuple[float, set[str]]:
        at = time.time()
        nodes = {
            dict(labels)["node"]
            for labels, v in select(scrape(exporter), "hpcobs_slurm_node_maintenance").items()
            if v == 1
        }
        return at, nodes

    # Off before the window, on within it, off after it: each change seen at the scrape
    # after the window's edge (computed at scrape time, not waiting for the next read).
    at, nodes = maintenance()
    assert at < start and nodes == set()
    on_at = wait_for(lambda: (m := maintenance())[1] == {"node1"} and m[0], 30, "maintenance on")
    assert start - 1 <= on_at <= start + 2, (on_at, start)
    # sinfo's node state says so too, once slurmctld marks the node (a few seconds).
    wait_for(
        lambda: (
            select(scrape(exporter), "hpcobs_slurm_nodes", partition="debug")
            == {(("partition", "debug"), ("state", "maint")): 1}
        ),
        10,
        "hpcobs_slurm_nodes{state=maint}",
    )
    off_at = wait_for(lambda: (m := maintenance())[1] == set() and m[0], 30, "maintenance off")
    assert end - 1 <= off_at <= end + 2, (off_at, end)
    wait_for(lambda: set(reservations()) == {"training"}, 10, "the ended reservation gone")

    # A MAINT reservation deleted in its window: off within three cycles (reservations are
    # read every third one).
    cluster.run(
        "scontrol", "create", "reservation", "reservationname=short-maint", "starttime=now",
        "duration=10", f"nodes={cluster.node_name}", "flags=maint,ignore_jobs", "users=root",
    )  # fmt: skip
    wait_for(lambda: maintenance()[1] == {"node1"}, 10, "maintenance on again")
    cluster.run("scontrol", "delete", "reservation=short-maint")
    wait_for(lambda: maintenance()[1] == set(), 10, "maintenance off after the delete")


# -- licence waits ---------------------------------------------------------------------------------


def test_licence_wait_counts_pending_seconds(
    slurm_cluster_factory: SlurmClusterFactory, tmp_path: Path, start_exporter: Starter
) -> None:
    cluster = slurm_cluster_factory(licenses={"matlab": 1})
    exporter = start_exporter(cluster, tmp_path / "exporters", "licences")
    wait_for(lambda: scrape(exporter)[("hpcobs_slurm_up", ())] == 1, 20, "exporter up")
    holder = cluster.sbatch("sleep 300", "-L", "matlab:1")
    cluster.wait_job_state(holder, "RUNNING")
    waiter = cluster.sbatch("sleep 300", "-L", "matlab:1")
    wait_for(lambda: reason(cluster, waiter) == "Licenses", 20, "the waiter waiting for matlab")

    def licence_wait() -> tuple[float, float]:
        """pending seconds (reason Licenses) and the time of the cycle that counted them."""
        samples = scrape(exporter)
        seconds = total(samples, "hpcobs_slurm_pending_seconds_total", reason="Licenses")
        return seconds, samples[("hpcobs_slurm_last_success_timestamp_seconds", ())]

    def waiting_seen() -> tuple[float, float] | None:
        samples = scrape(exporter)
        pending = select(samples, "hpcobs_slurm_jobs_pending", reason="Licenses")
        if sum(pending.values()) != 1:
            return None
        return licence_wait()

    first, first_at = wait_for(waiting_seen, 20, "the exporter seeing the waiter")
    wait_for(
        lambda: scrape(exporter).get(("hpcobs_slurm_license_free", (("license", "matlab"),))) == 0,
        10,
        "hpcobs_slurm_license_free 0",
    )
    # Let it wait a while (a condition on the exporter's own count: 5 more seconds).
    wait_for(lambda: licence_wait()[0] >= first + 5, 20, "five more seconds of licence wait")
    cluster.run("scancel", str(holder))
    cluster.wait_job_state(waiter, "RUNNING")
    started = squeue_times(cluster, waiter)["start"]

    def counted_until_start() -> tuple[float, float] | None:
        seconds, at = licence_wait()
        return (seconds, at) if at > started + 1 else None

    last, _ = wait_for(counted_until_start, 20, "a cycle after the waiter started")
    # From the cycle of the first reading to the start: that much more, within one poll
    # interval (1 s; Slurm's start time has whole seconds).
    grown = last - first
    assert abs(grown - (started - first_at)) <= 1.0 + 1e-6, (grown, started, first_at)
    # Nothing more is counted afterwards.
    again = wait_for(lambda: (w := licence_wait()) and w[1] > started + 3 and w, 20, "later")
    assert again[0] == last


# -- bad input -------------------------------------------------------------------------------------


def test_odd_user_account_and_reservation_names_are_exported_safely(
    slurm_cluster_factory: SlurmClusterFactory, tmp_path: Path, start_exporter: Starter
) -> None:
    unshare, promtool = shutil.which("unshare"), shutil.which("promtool")
    assert unshare and promtool, "needs unshare (util-linux) and promtool (prometheus)"
    passwd = tmp_path / "passwd"
    rows = Path("/etc/passwd").read_text().splitlines()
    nobody = [r for r in rows if r.split(":")[2:3] == ["65534"]]
    assert nobody, "no user with uid 65534 (nobody) in /etc/passwd"
    odd_rows = [(ODD + r[r.index(":") :]) if r in nobody else r for r in rows]
    passwd.write_text("\n".join(odd_rows) + "\n")
    cluster = slurm_cluster_factory()
    # Under scripts/compat/slurm.sh the Slurm commands run chrooted into another release's
    # root, where squeue reads that root's passwd: the private passwd goes over both.
    targets = ["/etc/passwd"]
    if root := os.environ.get("HPCOBS_COMPAT_SLURM_ROOT"):
        targets.append(f"{root}/etc/passwd")
    command = [
        unshare,
        "--mount",
        "--",
        "sh",
        "-c",
        f'for t in {" ".join(map(shlex.quote, targets))}; do mount --bind "$0" "$t" || exit 1;'
        ' done; exec "$@"',
        str(passwd),
        str(BIN / PROGRAM),
    ]
    exporter = start_exporter(cluster, tmp_path / "exporters", "odd", command=command)
    job = cluster.sbatch(
        "exit 3",
        "--uid=65534",
        "--gid=65534",
        "--chdir=/tmp",
        "--output=/dev/null",
        f"--account={ODD_ACCOUNT}",
    )
    cluster.wait_job_state(job, "FAILED")
    cluster.run(
        "scontrol", "create", "reservation", f"reservationname={ODD}", "starttime=now",
        "duration=10", f"nodes={cluster.node_name}", "flags=maint,ignore_jobs", "users=root",
    )  # fmt: skip

    def exported() -> str | None:
        text = scrape_text(exporter)
        if "hpcobs_slurm_job_failed_info{" not in text:
            return None
        if "hpcobs_slurm_reservation_info{" not in text:
            return None
        if "hpcobs_slurm_account_resource_seconds_total{" not in text:
            return None
        return text

    text = wait_for(exported, 20, "the failed job and the reservation exported")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    (row,) = [dict(labels) for labels in select(samples, "hpcobs_slurm_job_failed_info")]
    assert row["user"] == label_value(ODD), row["user"]
    assert row["account"] == label_value(ODD_ACCOUNT)
    assert len(row["user"]) == len(row["account"]) == MAX_LABEL_CHARS
    assert row["exit_code"] == "3:0"
    accounts = {
        dict(labels)["account"]
        for labels in select(samples, "hpcobs_slurm_account_resource_seconds_total")
    }
    assert accounts == {label_value(ODD_ACCOUNT)}
    (resv,) = [dict(labels) for labels in select(samples, "hpcobs_slurm_reservation_info")]
    assert (
        resv["reservation"] == label_value(ODD) and resv["flags"] == "IGNORE_JOBS,MAINT,SPEC_NODES"
    )
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The label values are what the exposition escapes, nothing more.
    escaped = label_value(ODD).replace("\\", "\\\\").replace('"', '\\"')
    assert f'user="{escaped}"' in text
