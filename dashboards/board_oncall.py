"""On-call: what is broken now (alerts, failed jobs, nodes, GPUs, fabric, Lustre, probe)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import table
from grafana_foundation_sdk.models import dashboard as dm
from panels import (
    CLUSTER,
    NODE,
    NODE_QUERY,
    PROBE,
    SLURM,
    UNAVAILABLE_STATES,
    ZERO_IS_GOOD,
    dashboard,
    query,
    range_text,
    stat_panel,
    table_panel,
    thresholds,
    ts_panel,
    value_text,
)

UID = "hpcobs-oncall"
NODE_REASON = "hpcobs_slurm_node_reason_info"
IMPORT_STATE = "hpcobs_lustre_client_import_state"
FAILED_INFO = "hpcobs_slurm_job_failed_info"
# The reservations with the MAINT flag (flags: Slurm's, sorted and comma-separated).
MAINT_FLAG = 'flags=~"(.*,)?MAINT(,.*)?"'


def failed_jobs_table() -> table.Panel:
    """The latest failed jobs, one row each; the job id links to its log (`log_url`: the Slurm
    exporter's --slurm.job-log-url filled in, kept as a hidden column for the link)."""
    log_link = {"title": "Job log", "url": "${__data.fields.log_url}", "targetBlank": True}
    return (
        table_panel(
            "Recent failed jobs",
            "The latest jobs that ended FAILED, NODE_FAIL, TIMEOUT, OUT_OF_MEMORY or BOOT_FAIL "
            "(hpcobs_slurm_job_failed_info: at most --slurm.failed-jobs.max of them, for "
            "--slurm.failed-jobs.max-age). Click a job id for its log: the link is the Slurm "
            "exporter's --slurm.job-log-url (docs/dashboards.md).",
            [query(f"{FAILED_INFO}{{{SLURM}}} == 1", instant=True, table_format=True)],
            hide=("Time", "__name__", "Value", "job", "instance"),
            rename={"exit_code": "exit code"},
            width=24,
        )
        .override_by_name("job_id", [dm.DynamicConfigValue(id_val="links", value=[log_link])])
        .override_by_name("log_url", [dm.DynamicConfigValue(id_val="custom.hidden", value=True)])
        .sort_by([cb.TableSortByFieldState().display_name("job_id").desc(True)])
    )


def build() -> db.Dashboard:
    board = dashboard(
        UID,
        "hpcobs / On-call",
        "What is broken now: firing alerts, failed jobs by cause, nodes out of service, lost "
        "GPUs and XIDs, RDMA ports and flaps, Lustre connections, the latest probe verdict.",
        time_from="now-6h",
        refresh="1m",
        node_query=NODE_QUERY,
    )
    board = board.with_row(db.Row("Alerts"))
    board = board.with_panel(
        table_panel(
            "Firing SLO alerts",
            "SLOBurnRatePage / SLOBurnRateTicket alerts firing now (rules from hpcobs-slo rules).",
            [
                query(
                    'ALERTS{alertstate="firing", alertname=~"SLOBurnRate.*"}',
                    instant=True,
                    table_format=True,
                )
            ],
            hide=("Time", "__name__", "Value", "alertstate"),
        )
    )
    board = board.with_panel(
        table_panel(
            "Firing hpcobs alerts",
            "The alerts of alerts/hpcobs-alerts.yml firing now in the selected clusters.",
            [
                query(
                    'ALERTS{alertstate="firing", alertname=~"Hpcobs.*", cluster=~"$cluster"}',
                    instant=True,
                    table_format=True,
                )
            ],
            hide=("Time", "__name__", "Value", "alertstate"),
        )
    )
    board = board.with_row(db.Row("Jobs"))
    board = board.with_panel(
        stat_panel(
            "Jobs killed by the system",
            "Jobs that ended with a system cause (NODE_FAIL, BOOT_FAIL, …) in the period.",
            [
                query(
                    "sum(increase(hpcobs_slurm_jobs_finished_total{"
                    f'{SLURM}, cause="system"}}[$__range])) or vector(0)',
                    "jobs",
                    instant=True,
                )
            ],
            steps=ZERO_IS_GOOD,
            decimals=0,
            height=8,
        )
    )
    board = board.with_panel(
        ts_panel(
            "Failed jobs by cause",
            "Jobs that did not complete, by cause (system / user) and final state.",
            [
                query(
                    "sum by (cause, state) (increase(hpcobs_slurm_jobs_finished_total{"
                    f'{SLURM}, state!="completed"}}[$__rate_interval]))',
                    "{{cause}}: {{state}}",
                )
            ],
            bars=True,
            stacked=True,
            width=18,
        )
    )
    board = board.with_panel(
        ts_panel(
            "Pending jobs by reason",
            "Pending jobs (array tasks) by Slurm's pending reason: Priority and Resources are "
            "a busy cluster; Licenses, ReqNodeNotAvail, Reservation, Dependency or limits "
            "(Assoc…, QOS…) are jobs held by something else.",
            [
                query(
                    f"sum by (reason) (hpcobs_slurm_jobs_pending{{{SLURM}}})",
                    "{{reason}}",
                )
            ],
            stacked=True,
            width=12,
        )
    )
    board = board.with_panel(
        ts_panel(
            "Preemptions and requeues",
            "Jobs that ended PREEMPTED (PreemptMode=CANCEL) and requeues (PreemptMode=REQUEUE, "
            "node failures, scontrol requeue), per partition.",
            [
                query(
                    "sum by (partition) (increase(hpcobs_slurm_jobs_finished_total{"
                    f'{SLURM}, state="preempted"}}[$__rate_interval]))',
                    "{{partition}} preempted",
                ),
                query(
                    "sum by (partition) (increase(hpcobs_slurm_job_requeues_total{"
                    f"{SLURM}}}[$__rate_interval]))",
                    "{{partition}} requeued",
                ),
            ],
            bars=True,
            width=12,
        )
    )
    board = board.with_panel(failed_jobs_table())
    board = board.with_row(db.Row("Nodes"))
    board = board.with_panel(
        stat_panel(
            "Nodes down or drained",
            "Nodes out of service by Slurm state (a node in several partitions counts in each).",
            [
                query(
                    "sum by (state) (hpcobs_slurm_nodes{"
                    f'{SLURM}, state=~"{UNAVAILABLE_STATES}"}})',
                    "{{state}}",
                    instant=True,
                )
            ],
            steps=ZERO_IS_GOOD,
            decimals=0,
            height=8,
        )
    )
    board = board.with_panel(
        table_panel(
            "Down and drained nodes",
            "Each node down, drained, draining or failed, with the reason slurmctld records "
            "(all partitions: the per-node state has no partition label).",
            [
                query(
                    f'{NODE_REASON}{{{CLUSTER}, node=~"$node", state=~"{UNAVAILABLE_STATES}"}}'
                    " == 1",
                    instant=True,
                    table_format=True,
                )
            ],
            hide=("Time", "__name__", "Value", "job", "instance"),
            width=18,
        )
    )
    board = board.with_panel(
        stat_panel(
            "Nodes in maintenance",
            "Nodes in an active Slurm reservation with the MAINT flag: planned work. Their "
            "node, GPU, RDMA, Lustre and exporter alerts are silent, and the partition page "
            "does not count them as unavailable.",
            [
                query(
                    f'count(hpcobs_slurm_node_maintenance{{{CLUSTER}, node=~"$node"}} == 1)'
                    " or vector(0)",
                    "nodes",
                    instant=True,
                )
            ],
            steps=thresholds((None, "green"), (1, "blue")),
            decimals=0,
            height=8,
        )
    )
    board = board.with_panel(
        table_panel(
            "Maintenance reservations",
            "Current and future Slurm reservations with the MAINT flag and their window "
            "(scontrol show reservation).",
            [
                query(
                    f"hpcobs_slurm_reservation_info{{{CLUSTER}, {MAINT_FLAG}}} == 1",
                    instant=True,
                    table_format=True,
                ),
                query(
                    "1000 * hpcobs_slurm_reservation_start_timestamp_seconds{"
                    f"{CLUSTER}}}"
                    f" and on (cluster, reservation) hpcobs_slurm_reservation_info{{{MAINT_FLAG}}}",
                    instant=True,
                    table_format=True,
                ),
                query(
                    "1000 * hpcobs_slurm_reservation_end_timestamp_seconds{"
                    f"{CLUSTER}}}"
                    f" and on (cluster, reservation) hpcobs_slurm_reservation_info{{{MAINT_FLAG}}}",
                    instant=True,
                    table_format=True,
                ),
            ],
            unit="dateTimeAsIso",
            hide=("Time", "__name__", "Value #A", "job", "instance"),
            rename={"Value #B": "start", "Value #C": "end"},
            width=18,
        )
    )
    board = board.with_row(db.Row("GPUs"))
    board = board.with_panel(
        stat_panel(
            "GPUs lost",
            "GPUs NVML cannot reach (fallen off the bus, XID 79, wedged driver).",
            [query(f"count(hpcobs_gpu_up{{{NODE}}} == 0) or vector(0)", "lost", instant=True)],
            steps=ZERO_IS_GOOD,
            decimals=0,
        )
    )
    board = board.with_panel(
        table_panel(
            "Lost GPUs",
            "Which GPUs are lost, per node.",
            [query(f"hpcobs_gpu_up{{{NODE}}} == 0", instant=True, table_format=True)],
            hide=("Time", "__name__", "Value", "job", "instance"),
            width=6,
        )
    )
    board = board.with_panel(
        table_panel(
            "XID errors in the period",
            "XID errors per GPU and code in the selected period (48 double-bit ECC, 79 fallen "
            "off the bus, 94/95 contained/uncontained ECC, 13/31/43 usually application faults).",
            [
                query(
                    "sum by (node, gpu, xid) (increase(hpcobs_gpu_xid_errors_total{"
                    f"{NODE}}}[$__range])) > 0",
                    instant=True,
                    table_format=True,
                )
            ],
            hide=("Time",),
            rename={"Value": "XIDs"},
        )
    )
    board = board.with_row(db.Row("RDMA fabric"))
    board = board.with_panel(
        table_panel(
            "RDMA ports not ACTIVE",
            "Ports whose logical state is not 4 (ACTIVE): 1 DOWN, 2 INIT, 3 ARMED.",
            [query(f"hpcobs_rdma_port_state{{{NODE}}} != 4", instant=True, table_format=True)],
            hide=("Time", "__name__", "job", "instance"),
            rename={"Value": "state"},
        )
    )
    board = board.with_panel(
        table_panel(
            "Link flaps in the period",
            "Link-down events per port (IB LinkDownedCounter) and carrier flaps of RoCE/IPoIB "
            "netdevs in the selected period.",
            [
                query(
                    "sum by (node, device, port) (increase(hpcobs_rdma_port_link_downed_total{"
                    f"{NODE}}}[$__range])) > 0",
                    instant=True,
                    table_format=True,
                ),
                query(
                    "sum by (node, device, port) (increase(hpcobs_rdma_netdev_link_flaps_total{"
                    f"{NODE}}}[$__range])) > 0",
                    instant=True,
                    table_format=True,
                ),
            ],
            hide=("Time",),
            rename={"Value #A": "link downed", "Value #B": "netdev flaps"},
        )
    )
    board = board.with_row(db.Row("Lustre"))
    board = board.with_panel(
        table_panel(
            "Lustre targets not FULL",
            "Client connections (imports) to OSTs/MDTs that are not FULL (IDLE is normal).",
            [
                query(
                    f'{IMPORT_STATE}{{{NODE}, state!~"full|idle"}} == 1',
                    instant=True,
                    table_format=True,
                )
            ],
            hide=("Time", "__name__", "Value", "job", "instance"),
            width=16,
        )
    )
    board = board.with_panel(
        stat_panel(
            "Nodes with Lustre unhealthy",
            "Nodes whose Lustre health_check does not say healthy.",
            [
                query(
                    f"count(hpcobs_lustre_health_ok{{{NODE}}} == 0) or vector(0)",
                    "nodes",
                    instant=True,
                )
            ],
            steps=ZERO_IS_GOOD,
            decimals=0,
            width=8,
            height=8,
        )
    )
    board = board.with_row(db.Row("MPI probe"))
    board = board.with_panel(
        stat_panel(
            "Latest probe verdict",
            "hpcobs-mpi-probe's last run per partition: healthy, or the number of figures "
            "that regressed beyond the baseline tolerance.",
            [
                query(
                    f"max by (partition) (hpcobs_mpi_probe_regressions{{{PROBE}}})",
                    "{{partition}}",
                    instant=True,
                )
            ],
            steps=ZERO_IS_GOOD,
            mappings=[
                value_text({"0": ("healthy", "green")}),
                range_text(1, 1e9, "regressed", "red"),
            ],
            width=12,
        )
    )
    board = board.with_panel(
        stat_panel(
            "Time since the last successful probe",
            "Age of the probe's last successful measurement per partition (stale above 3 h).",
            [
                query(
                    "time() - max by (partition) (hpcobs_mpi_probe_last_success_timestamp_seconds"
                    f"{{{PROBE}}})",
                    "{{partition}}",
                    instant=True,
                )
            ],
            unit="s",
            steps=thresholds((None, "green"), (3 * 3600, "red")),
            width=12,
        )
    )
    return board
