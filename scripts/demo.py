"""`make demo`: the whole hpcobs suite on this machine, with a failure injected.

Starts a private single-node Slurm cluster, the node exporter (GPUs simulated at the pynvml
boundary, RDMA and Lustre on real-format fixture trees, jobs on this machine's /proc), the
Slurm exporter, Prometheus with the generated SLO rules and the shipped alerts, Alertmanager
paging a local webhook, the SLO daemon and one MPI probe run pushed to a Pushgateway. Then it
runs a few jobs, sets the node down under two running ones (NODE_FAIL), waits for the SLO page
to reach the on-call webhook, prints the URLs and the SLO report, and keeps everything running
(printing live values) until Ctrl-C. Everything binds 127.0.0.1; state lives in ./demo-state.

HPCOBS_DEMO_ONCE=1 exits after the first report (used by the test of this script).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness.slurm import SlurmCluster  # noqa: E402
from harness.stack import Suite  # noqa: E402

STATE = REPO / "demo-state"
FIXTURES = REPO / "tests" / "data" / "fixtures"


def show(suite: Suite) -> None:
    rows = [
        ("targets up", "sum by (job) (up)"),
        ("collectors up", "sum by (job) (hpcobs_collector_up)"),
        ("jobs by state", "sum by (state) (hpcobs_slurm_jobs) > 0"),
        ("finished jobs", "sum by (state, cause) (hpcobs_slurm_jobs_finished_total)"),
        ("GPUs up", "sum(hpcobs_gpu_up)"),
        ("GPU XIDs", "sum by (gpu, xid) (hpcobs_gpu_xid_errors_total)"),
        ("RDMA ports ACTIVE", "count(hpcobs_rdma_port_state == 4)"),
        ("Lustre job write bytes", "sum(hpcobs_lustre_job_write_bytes_total)"),
        (
            "probe allreduce 8 B p50 (s)",
            'hpcobs_mpi_collective_latency_seconds{op="allreduce",size_bytes="8",stat="p50"}',
        ),
        ("SLO burn rate 1h", 'hpcobs_slo_burn_rate{window="1h"}'),
        ("SLO budget remaining", "hpcobs_slo_error_budget_remaining_ratio"),
        ("firing alerts", 'count by (alertname, severity) (ALERTS{alertstate="firing"})'),
    ]
    print(time.strftime("--- live values %H:%M:%S ---"))
    for title, expr in rows:
        try:
            result = suite.prometheus.query(expr)
        except Exception as exc:
            print(f"  {title}: query failed: {exc}")
            continue
        if not result:
            print(f"  {title}: –")
        for r in result:
            labels = {
                k: v for k, v in r["metric"].items() if k not in ("__name__", "instance", "cluster")
            }
            shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            value = float(r["value"][1])
            print(f"  {title}{' {' + shown + '}' if shown else ''}: {value:g}")
    sys.stdout.flush()


def main() -> int:
    if not FIXTURES.is_dir():
        print(f"demo: fixture trees not found at {FIXTURES}", file=sys.stderr)
        return 1
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    cluster = SlurmCluster(STATE / "slurm")
    suite = Suite(STATE / "suite", cluster, FIXTURES)
    try:
        print("hpcobs demo: starting Slurm and the suite ...", flush=True)
        cluster.start()
        suite.start()
        print("URLs:")
        for name, url in suite.urls().items():
            print(f"  {name:<42} {url}")
        print("waiting for Prometheus to scrape every target ...", flush=True)
        suite.prometheus.wait_for("count(up == 1) == 5", timeout=60)
        probe = suite.run_probe()
        print("MPI probe run (pushed to the Pushgateway):")
        print("\n".join("  " + line for line in probe.stdout.splitlines()[:12]))
        print("running 4 short jobs and 2 long ones ...", flush=True)
        _, running = suite.submit_workload(completing=4, long_running=2)
        print(
            f"injecting a failure: node1 set down under jobs {running} (NODE_FAIL) ...", flush=True
        )
        suite.fail_node(running)
        page = suite.webhook.wait_for(
            lambda p: any(
                a["labels"].get("alertname") == "SLOBurnRatePage" for a in p.get("alerts", [])
            ),
            timeout=120,
        )
        for alert in page["alerts"]:
            labels = alert["labels"]
            print(
                f"PAGED (on-call webhook): {labels.get('alertname')} slo={labels.get('slo')} "
                f"severity={labels.get('severity')}: {alert['annotations'].get('summary')}"
            )
        time.sleep(4)  # one more SLO daemon cycle
        print("SLO report (hpcobs-slo report):")
        print(suite.slo_report())
        once = os.environ.get("HPCOBS_DEMO_ONCE") == "1"
        while True:
            show(suite)
            if once:
                return 0
            print("Ctrl-C to stop.", flush=True)
            time.sleep(30)
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        suite.stop()
        cluster.stop()
        if os.environ.get("HPCOBS_DEMO_KEEP") != "1":
            shutil.rmtree(STATE, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
