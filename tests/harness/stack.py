"""The whole hpcobs suite on one machine, for the end-to-end test and `make demo`.

    single-node Slurm 22.05 (harness.slurm)
    hpcobs-node-exporter ×2 for node1: GPUs (fake pynvml at the import boundary), RDMA and
        Lustre on the real-format fixture trees; per-job attribution on this machine's /proc;
        the textfile directory where a job's hpcobs-checkpoint writes
    hpcobs-slurm-exporter on the cluster
    Pushgateway, with one hpcobs-mpi-probe run (mpirun -n 2) pushed to it
    Prometheus: every target, the rules `hpcobs-slo rules` generates, alerts/hpcobs-alerts.yml
    Alertmanager with alerts/alertmanager.yml, its receivers pointed at a webhook receiver (the
        incidents receiver at the SLO daemon's webhook)
    hpcobs-slo serve

Every server binds 127.0.0.1 on a free port and writes under `workdir`; `stop()` stops all
of them by PID, in reverse order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from harness.runtime import ExporterProcess
from harness.servers import (
    Alertmanager,
    Prometheus,
    Pushgateway,
    WebhookReceiver,
)
from harness.slurm import CLUSTER_NAME, SlurmCluster
from harness.trees import copy_tree

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLUSTER = CLUSTER_NAME  # the `cluster` label equals Slurm's ClusterName, as docs/job-report.md asks


def node_fixture_root(fixture_trees: Path, dest: Path) -> Path:
    """One node's /sys and /proc: the InfiniBand sysfs tree plus Lustre 2.10 client+server."""
    copy_tree(fixture_trees / "sysfs-infiniband-procfs" / "sys", dest / "sys")
    lustre = fixture_trees / "lustre-2.10-hpe"
    copy_tree(lustre / "sys" / "fs", dest / "sys" / "fs")
    copy_tree(lustre / "proc", dest / "proc")
    return dest


def short_alert_rules(hold: str = "1s") -> str:
    """alerts/hpcobs-alerts.yml with every `for:` shortened: the same expressions and labels, on
    a test's time scale (a node down 5 minutes before it pages is 1 second here)."""
    doc: dict[str, Any] = yaml.safe_load((REPO / "alerts" / "hpcobs-alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = hold
    return yaml.safe_dump(doc, sort_keys=False)


def alertmanager_config(
    webhook: WebhookReceiver, incidents_url: str | None = None
) -> dict[str, Any]:
    """alerts/alertmanager.yml as shipped, receivers → the webhook (the `incidents` receiver →
    `incidents_url`, an SLO daemon's webhook, when given), timings for a test."""
    config: dict[str, Any] = yaml.safe_load((REPO / "alerts" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if receiver["name"] == "incidents" and incidents_url is not None:
                hook["url"] = incidents_url
                continue
            path = hook["url"].rsplit("/", 1)[-1]
            hook["url"] = f"{webhook.url.rsplit('/', 1)[0]}/{path}"
    route = config["route"]
    route.update(group_wait="2s", group_interval="2s", repeat_interval="1h")

    def shorten(routes: list[dict[str, Any]]) -> None:
        for sub in routes:
            for key in ("group_wait", "group_interval"):
                if key in sub:
                    sub[key] = "2s"
            shorten(sub.get("routes", []))

    shorten(route.get("routes", []))
    # the example's planned-maintenance windows (a time of the month) must not mute a test run
    for interval in config.get("time_intervals", []):
        interval["time_intervals"] = [{"years": ["2000"]}]
    return config


class Suite:
    def __init__(
        self,
        workdir: Path,
        slurm: SlurmCluster,
        fixture_trees: Path,
        slo_spec: Path = REPO / "tests" / "data" / "e2e" / "slo.yaml",
        eval_interval: str = "2s",
    ) -> None:
        self.workdir = workdir
        self.slurm = slurm
        self.fixture_trees = fixture_trees
        self.slo_spec = slo_spec
        self.eval_interval = eval_interval
        self.started: list[Any] = []
        self.node_root = workdir / "node1"
        self.gpu_jobs = workdir / "gpu-jobs"  # dcgm-style job mapping: one file per GPU index
        self.rules = workdir / "slo-rules.yml"
        self.alerts = workdir / "hpcobs-alerts.yml"
        self.gpu_processes = workdir / "gpu-processes"  # what the fake NVML reports
        self.textfiles = workdir / "textfile"  # hpcobs-checkpoint writes, node_gpu reads

    # -- start ---------------------------------------------------------------------------
    def start(self) -> Suite:
        self.workdir.mkdir(parents=True, exist_ok=True)
        node_fixture_root(self.fixture_trees, self.node_root)
        self.gpu_jobs.mkdir(exist_ok=True)
        self.textfiles.mkdir(exist_ok=True)
        subprocess.run(
            [str(BIN / "hpcobs-slo"), "rules", str(self.slo_spec), "-o", str(self.rules)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )

        self.alerts.write_text(short_alert_rules())

        daemons = self.workdir / "daemons"
        daemons.mkdir(exist_ok=True)
        # the SLO daemon's port goes into Prometheus' and Alertmanager's configs; Prometheus'
        # URL into its flags (added before launch)
        self.slo = ExporterProcess(
            "hpcobs-slo",
            [
                f"--eval-interval={self.eval_interval}",
                f"--incidents.state-file={self.workdir / 'incidents.json'}",
                self.slo_spec,
            ],
            daemons,
            command=[BIN / "hpcobs-slo", "serve"],
        )
        self.webhook = WebhookReceiver()
        self.started.append(self.webhook)
        self.alertmanager = Alertmanager(
            self.workdir / "alertmanager",
            alertmanager_config(self.webhook, f"{self.slo.url}/alertmanager/webhook"),
        )
        self.pushgateway = Pushgateway(self.workdir / "pushgateway")
        # node1 in two processes: RDMA and Lustre on the fixture trees; GPUs (fake NVML at the
        # import boundary) and per-job attribution on this machine's /proc, where the jobs run
        self.node = ExporterProcess(
            "hpcobs-node-exporter",
            [
                f"--path.sysfs={self.node_root / 'sys'}",
                f"--path.procfs={self.node_root / 'proc'}",
                "--collector.disable-defaults",
                "--collector.rdma",
                "--collector.lustre",
            ],
            daemons,
        )
        self.node_gpu = ExporterProcess(
            "hpcobs-node-exporter",
            [
                "--collector.disable-defaults",
                "--collector.gpu",
                "--collector.jobs",
                f"--collector.gpu.job-mapping-dir={self.gpu_jobs}",
                "--collector.textfile",
                f"--collector.textfile.directory={self.textfiles}",
            ],
            daemons,
            command=[
                sys.executable,
                REPO / "tests" / "fakes" / "gpu_node.py",
                "--xid=3:79:3",
                "--xid-burst=3:79:10",
                "--lose-on-signal=7",
                f"--processes-file={self.gpu_processes}",
                "--",
            ],
        )
        self.slurm_exporter = ExporterProcess(
            "hpcobs-slurm-exporter",
            [
                f"--slurm.conf={self.slurm.conf_path}",
                "--slurm.poll-interval=1s",
                f"--slurm.state-file={self.workdir / 'slurm-state.json'}",
                f"--slurm.jobcomp-file={self.slurm.jobcomp_path}",
            ],
            daemons,
            env=self.slurm.env,
        )
        for server in (self.alertmanager, self.pushgateway):
            server.start(wait=False)
            self.started.append(server)
        self.gpu_processes.write_text("")
        for daemon in (self.node, self.node_gpu, self.slurm_exporter):
            daemon.launch()
            self.started.append(daemon)

        self.prometheus = Prometheus(
            self.workdir / "prometheus",
            scrape_configs=self._scrape_configs(),
            rule_files=[self.rules, self.alerts],
            alertmanager_url=self.alertmanager.url,
        )
        self.prometheus.start(wait=True)
        self.started.append(self.prometheus)
        self.slo.args.append(f"--prometheus.url={self.prometheus.url}")
        self.slo.launch()
        self.started.append(self.slo)
        for server in (self.alertmanager, self.pushgateway):
            server.wait_ready()
        for daemon in (self.node, self.node_gpu, self.slurm_exporter, self.slo):
            daemon.wait_ready()
        return self

    def _scrape_configs(self) -> list[dict[str, Any]]:
        def job(name: str, target: str, **labels: str) -> dict[str, Any]:
            return {
                "job_name": name,
                "scrape_interval": "1s",
                "static_configs": [{"targets": [target], "labels": {"cluster": CLUSTER, **labels}}],
            }

        pushgateway = job("hpcobs-pushgateway", self.pushgateway.listen_address)
        pushgateway["honor_labels"] = True
        return [
            job("hpcobs-node", self.node.address, node=self.slurm.node_name),
            job("hpcobs-node-gpu", self.node_gpu.address, node=self.slurm.node_name),
            job("hpcobs-slurm", self.slurm_exporter.address),
            job("hpcobs-slo", self.slo.address),
            pushgateway,
        ]

    # -- actions -------------------------------------------------------------------------
    def run_probe(
        self, ranks: int = 2, budget: float = 2.0, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        (self.workdir / "probe-textfile").mkdir(exist_ok=True)
        return subprocess.run(
            [
                "mpirun",
                "--oversubscribe",
                "-n",
                str(ranks),
                str(BIN / "hpcobs-mpi-probe"),
                f"--budget-seconds={budget}",
                "--timeout=60",
                f"--pushgateway={self.pushgateway.url}",
                f"--cluster={CLUSTER}",
                "--partition=debug",
                f"--textfile-dir={self.workdir / 'probe-textfile'}",
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def submit_workload(
        self, completing: int = 4, long_running: int = 2
    ) -> tuple[list[int], list[int]]:
        """Jobs that complete (good events), then long jobs that keep node1 busy, the first of
        them after a checkpoint (hpcobs-checkpoint into the textfile directory); waits until the
        exporter has counted the completed ones and sees the running ones and the checkpoint."""
        done = [self.slurm.sbatch("true", "--partition=debug") for _ in range(completing)]
        checkpoint = (
            f"{BIN / 'hpcobs-checkpoint'} run --name e2e --textfile.directory {self.textfiles}"
            " -- sleep 1; "
        )
        running = [
            self.slurm.sbatch(
                f"{checkpoint if i == 0 else ''}sleep 600", "--no-requeue", "--partition=debug"
            )
            for i in range(long_running)
        ]
        for job in done:
            self.slurm.wait_job_state(job, {"COMPLETED"}, timeout=60)
        for job in running:
            self.slurm.wait_job_state(job, {"RUNNING"}, timeout=60)
        self.map_gpus_to_jobs({gpu: running[gpu % len(running)] for gpu in range(4)})
        self.prometheus.wait_for(
            f'sum(hpcobs_slurm_jobs_finished_total{{state="completed"}}) == {completing}',
            timeout=60,
        )
        self.prometheus.wait_for(
            f'sum(hpcobs_slurm_jobs{{state="running"}}) == {long_running}', timeout=60
        )
        if running:
            self.prometheus.wait_for(
                f'hpcobs_checkpoints_total{{job_id="{running[0]}",result="success"}} == 1',
                timeout=60,
            )
        return done, running

    def fail_node(self, running: list[int]) -> None:
        """node1 goes down under its running jobs: they end in NODE_FAIL (cause=system)."""
        self.slurm.run(
            "scontrol", "update", f"nodename={self.slurm.node_name}", "state=down", "reason=e2e"
        )
        for job in running:
            self.slurm.wait_job_state(job, {"NODE_FAIL"}, timeout=60)
        self.prometheus.wait_for(
            f'sum(hpcobs_slurm_jobs_finished_total{{state="node_fail",cause="system"}}) == {len(running)}',
            timeout=60,
        )

    def slo_report(self, fmt: str = "table") -> str:
        result = subprocess.run(
            [
                str(BIN / "hpcobs-slo"),
                "report",
                f"--prometheus.url={self.prometheus.url}",
                f"--format={fmt}",
                str(self.slo_spec),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"hpcobs-slo report failed: {result.stderr.strip()}")
        return result.stdout

    def xid_burst(self) -> None:
        """Ten XID 79 errors from GPU 3 of node1 (the fake NVML delivers them to the event thread)."""
        assert self.node_gpu.process is not None
        os.kill(self.node_gpu.process.pid, signal.SIGUSR1)

    def gpus_run_jobs(self) -> None:
        """The running jobs' processes use GPUs 0-3 (1 GiB each), as NVML would report them."""
        pids = sorted(self.slurm.job_processes())
        lines = [f"{i % 4} {pid} {2**30}" for i, pid in enumerate(pids)]
        self.gpu_processes.write_text("\n".join(lines) + "\n")

    def inject_hardware_faults(self) -> None:
        """GPU 7 falls off the bus; an RDMA port goes down and error counters rise; an OST
        import disconnects: what the on-call dashboards exist for."""
        assert self.node_gpu.process is not None
        os.kill(self.node_gpu.process.pid, signal.SIGUSR2)
        ib = self.node_root / "sys" / "class" / "infiniband"
        ports = sorted(p for p in ib.glob("*/ports/*") if (p / "counters").is_dir())
        (ports[0] / "state").write_text("1: DOWN\n")
        (ports[0] / "phys_state").write_text("3: Disabled\n")
        # the client's own OSC (osc/*-osc-MDT0000 are the MDS's OSPs, symlinked from osp/)
        osc = self.node_root / "proc" / "fs" / "lustre" / "osc"
        imports = sorted(p / "import" for p in osc.iterdir() if not p.is_symlink())
        imports[0].write_text(imports[0].read_text().replace("state: FULL", "state: DISCONN"))
        self.bump_rdma_errors()

    def bump_rdma_errors(self, by: int = 7) -> None:
        """Error counters of every port (and the RoCE driver counters) rise by `by`."""
        ib = self.node_root / "sys" / "class" / "infiniband"
        names = (
            "symbol_error",
            "link_error_recovery",
            "link_downed",
            "port_rcv_errors",
            "port_xmit_discards",
        )
        hw_names = (
            "out_of_sequence",
            "packet_seq_err",
            "local_ack_timeout_err",
            "rnr_nak_retry_err",
            "out_of_buffer",
        )
        for port in ib.glob("*/ports/*"):
            files = [port / "counters" / n for n in names] + [
                port / "hw_counters" / n for n in hw_names
            ]
            for path in files:
                try:
                    value = int(path.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
                path.write_text(f"{value + by}\n")

    def map_gpus_to_jobs(self, jobs: dict[int, int]) -> None:
        """What a Slurm prolog writes for dcgm-style attribution: GPU index → job id."""
        for gpu, job_id in jobs.items():
            (self.gpu_jobs / str(gpu)).write_text(f"{job_id}\n")

    def urls(self) -> dict[str, str]:
        return {
            "prometheus": self.prometheus.url,
            "alertmanager": self.alertmanager.url,
            "pushgateway": self.pushgateway.url,
            "node exporter (node1: RDMA, Lustre)": f"{self.node.url}/metrics",
            "node exporter (node1: GPUs, jobs)": f"{self.node_gpu.url}/metrics",
            "slurm exporter": f"{self.slurm_exporter.url}/metrics",
            "slo daemon": f"{self.slo.url}/metrics",
            "webhook receiver": self.webhook.url,
        }

    def stop(self) -> None:
        for item in reversed(self.started):
            try:
                item.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping {item}: {exc}", file=sys.stderr)
        self.started.clear()
