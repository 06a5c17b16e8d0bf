"""Debug: per-node and per-job detail for finding the cause."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from panels import (
    CLUSTER,
    DS,
    NODE,
    NODE_QUERY,
    PROBE,
    SLURM,
    Target,
    dashboard,
    query,
    table_panel,
    ts_panel,
)

UID = "hpcobs-debug"
RATE = "[$__rate_interval]"
RDMA_ERRORS = {
    "symbol errors": "hpcobs_rdma_port_symbol_errors_total",
    "link error recovery": "hpcobs_rdma_port_link_error_recovery_total",
    "link downed": "hpcobs_rdma_port_link_downed_total",
    "receive errors": "hpcobs_rdma_port_receive_errors_total",
    "transmit discards": "hpcobs_rdma_port_transmit_discards_total",
}
# Driver counters that point at congestion or loss on RoCE/IB (mlx5 hw_counters).
HW_COUNTERS = "out_of_sequence|packet_seq_err|local_ack_timeout_err|rnr_nak_retry_err|out_of_buffer"
SDIAG = "hpcobs_slurm_scheduler_cycle_seconds"
OST_LATENCY = "hpcobs_lustre_target_disk_io_duration_seconds_bucket"
NODE_LATENCY = "hpcobs_mpi_node_latency_seconds"


def node_heatmap(
    title: str,
    description: str,
    target: Target,
    *,
    unit: str,
    high_is_good: bool,
    maximum: float | None = None,
    width: int = 24,
) -> heatmap.Panel:
    """Node × time: one row per series (the query's legend is the node), coloured by value
    (Grafana's heatmap on time series, calculate off: each series is a row)."""
    color = (
        heatmap.HeatmapColorOptions()
        .mode(hm.HeatmapColorMode.SCHEME)
        .scheme("RdYlGn")  # red → green; reversed where a high value is bad
        .steps(64)
        .exponent(0.5)
        .fill("dark-orange")
        .reverse(not high_is_good)
        .min(0)
    )
    if maximum is not None:
        color = color.max(maximum)
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .cell_values(heatmap.CellValues().unit(unit))
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("short"))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.AUTO))
        .color(color)
        .show_value(cm.VisibilityMode.NEVER)
        .filter_values(heatmap.FilterValueRange().le(-1))
        .show_tooltip()
        .show_legend()
        .span(width)
        .height(10)
        .with_target(target)
    )


def gpu_heatmap() -> heatmap.Panel:
    return node_heatmap(
        "GPU utilization per node",
        "Mean GPU utilization of each node's GPUs (one row per node).",
        query(f"avg by (node) (hpcobs_gpu_utilization_ratio{{{NODE}}})", "{{node}}"),
        unit="percentunit",
        high_is_good=True,
        maximum=1,
    )


def gpm_heatmap(metric: str, title: str, what: str) -> heatmap.Panel:
    """A GPM activity ratio (NVML GPM: Hopper and later GPUs) per node over time."""
    return node_heatmap(
        title,
        f"Mean {what} of each node's GPUs (one row per node), over each scrape interval, from "
        "NVML GPM: Hopper and later GPUs only (rows of other nodes stay empty).",
        query(f"avg by (node) ({metric}{{{NODE}}})", "{{node}}"),
        unit="percentunit",
        high_is_good=True,
        maximum=1,
        width=12,
    )


def fabric_heatmap(stat: str, title: str, what: str) -> heatmap.Panel:
    """hpcobs_mpi_node_latency_seconds{stat} per node over time, from the probe's runs."""
    return node_heatmap(
        title,
        "hpcobs-mpi-probe's pairwise phase (one-way latency of 8-byte ping-pongs, corrected "
        f"for the timing loop's overhead), one row per node: {what}. Each probe run "
        "replaces the figures; a node missing from a run leaves its row empty.",
        query(
            f'max by (node) ({NODE_LATENCY}{{{PROBE}, stat="{stat}"}})',
            "{{node}}",
        ),
        unit="s",
        high_is_good=False,
        width=12,
    )


def checkpoint_panels(board: db.Dashboard) -> db.Dashboard:
    """Per job and checkpoint name, from hpcobs-checkpoint (textfile or Pushgateway)."""
    stream = "{{job_id}} {{name}}"
    board = board.with_panel(
        ts_panel(
            "Checkpoint duration per job",
            "hpcobs-checkpoint: wall time of each job's latest checkpoint of each name (the "
            "slowest node's); a step is a new checkpoint.",
            [
                query(
                    f"max by (job_id, name) (hpcobs_checkpoint_duration_seconds{{{NODE}}})",
                    stream,
                )
            ],
            unit="s",
        )
    )
    return board.with_panel(
        ts_panel(
            "Checkpoint share of run time per job",
            "Time spent checkpointing over the job's run time up to its latest checkpoint, "
            "per job and checkpoint name (the checkpoint-time SLO holds it under 5 %).",
            [
                query(
                    f"sum by (job_id, name) (hpcobs_checkpoint_seconds_total{{{NODE}}}) / "
                    "sum by (job_id, name) "
                    f"(hpcobs_checkpoint_run_seconds_total{{{NODE}}})",
                    stream,
                )
            ],
            unit="percentunit",
            minimum=0,
        )
    )


def scheduler_event_panels(board: db.Dashboard) -> db.Dashboard:
    """The scheduler's event stream (sdiag) and where pending time goes, by reason."""
    board = board.with_panel(
        ts_panel(
            "Scheduler events (per minute)",
            "Job events slurmctld counts (sdiag: submitted, started, completed, canceled, "
            "failed) per minute; sdiag's counters reset daily, rate() absorbs the reset.",
            [
                query(
                    "60 * sum by (cluster, event) (rate(hpcobs_slurm_scheduler_jobs_total{"
                    f"{CLUSTER}}}{RATE}))",
                    "{{cluster}} {{event}}",
                )
            ],
        )
    )
    return board.with_panel(
        ts_panel(
            "Pending seconds by reason",
            "Job-seconds spent pending per second, by Slurm's pending reason: the average "
            "number of jobs waiting for each reason (Priority, Resources, Licenses, "
            "Dependency, limits …).",
            [
                query(
                    f"sum by (reason) (rate(hpcobs_slurm_pending_seconds_total{{{SLURM}}}{RATE}))",
                    "{{reason}}",
                )
            ],
            stacked=True,
        )
    )


def build() -> db.Dashboard:
    op = (
        db.QueryVariable("op")
        .label("Collective")
        .datasource(DS)
        .query(f"label_values(hpcobs_mpi_collective_latency_seconds{{{PROBE}}}, op)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )
    board = dashboard(
        UID,
        "hpcobs / Debug",
        "Per node and per job detail: GPU utilization and SM activity, RDMA errors, Lustre per "
        "target, per-job GPU/IO attribution and checkpoints, collective latency by size, fabric "
        "latency per node, scheduler cycle times.",
        time_from="now-3h",
        refresh="30s",
        node_query=NODE_QUERY,
        extra_variables=[op],
    )
    board = board.with_row(db.Row("GPUs"))
    board = board.with_panel(gpu_heatmap())
    board = board.with_panel(
        gpm_heatmap(
            "hpcobs_gpu_sm_active_ratio",
            "SM activity per node",
            "SM activity (the fraction of time the SMs had warps resident; utilization counts "
            "a GPU busy while any kernel runs)",
        )
    )
    board = board.with_panel(
        gpm_heatmap(
            "hpcobs_gpu_tensor_active_ratio",
            "Tensor activity per node",
            "tensor core activity (any tensor pipe)",
        )
    )
    board = board.with_row(db.Row("RDMA fabric"))
    board = board.with_panel(
        ts_panel(
            "RDMA error counters",
            "Per port, error counters per second (IB port counters; zero lines hidden).",
            [
                query(
                    f"sum by (node, device, port) (rate({metric}{{{NODE}}}{RATE})) > 0",
                    f"{{{{node}}}} {{{{device}}}}/{{{{port}}}} {label}",
                )
                for label, metric in RDMA_ERRORS.items()
            ],
            unit="cps",
        )
    )
    board = board.with_panel(
        ts_panel(
            "RDMA driver counters",
            "Per port, hw_counters that signal loss or congestion (retransmissions, "
            "sequence errors, ACK time-outs, receive buffer exhaustion), per second.",
            [
                query(
                    "sum by (node, device, port, counter) (rate(hpcobs_rdma_hw_counters_total{"
                    f'{NODE}, counter=~"{HW_COUNTERS}"}}{RATE})) > 0',
                    "{{node}} {{device}}/{{port}} {{counter}}",
                )
            ],
            unit="cps",
        )
    )
    board = board.with_panel(
        ts_panel(
            "RDMA throughput",
            "Per port, bytes per second received (positive) and transmitted.",
            [
                query(
                    "sum by (node, device, port) (rate(hpcobs_rdma_port_receive_bytes_total{"
                    f"{NODE}}}{RATE}))",
                    "{{node}} {{device}}/{{port}} rx",
                ),
                query(
                    "sum by (node, device, port) (rate(hpcobs_rdma_port_transmit_bytes_total{"
                    f"{NODE}}}{RATE}))",
                    "{{node}} {{device}}/{{port}} tx",
                ),
            ],
            unit="Bps",
            width=24,
        )
    )
    board = board.with_row(db.Row("Lustre"))
    board = board.with_panel(
        ts_panel(
            "Lustre throughput per OST",
            "Bytes per second read and written per target, as the OSS/MDS report them (Lustre "
            "servers are usually not Slurm nodes: filtered by cluster only).",
            [
                query(
                    "sum by (fs, target) (rate(hpcobs_lustre_target_read_bytes_total{"
                    f"{CLUSTER}}}{RATE}))",
                    "{{target}} read",
                ),
                query(
                    "sum by (fs, target) (rate(hpcobs_lustre_target_write_bytes_total{"
                    f"{CLUSTER}}}{RATE}))",
                    "{{target}} write",
                ),
            ],
            unit="Bps",
        )
    )
    board = board.with_panel(
        ts_panel(
            "Lustre latency per OST (p99)",
            "99th percentile of the disk I/O time per target and direction (brw_stats), "
            "over the interval.",
            [
                query(
                    "histogram_quantile(0.99, sum by (fs, target, operation, le) (rate("
                    f"{OST_LATENCY}{{{CLUSTER}}}{RATE})))",
                    "{{target}} {{operation}}",
                )
            ],
            unit="s",
        )
    )
    board = board.with_row(db.Row("Jobs"))
    board = board.with_panel(
        table_panel(
            "Per-job GPU and I/O attribution",
            "For each job with processes or GPUs on the selected nodes: GPUs held, their mean "
            "utilization and memory, Lustre I/O, CPU and memory of its processes, and its GPUs' "
            "mean SM activity (Hopper and later).",
            [
                query(
                    f"count by (job_id) (hpcobs_gpu_job_info{{{NODE}}})",
                    instant=True,
                    table_format=True,
                ),
                query(
                    f"avg by (job_id) (hpcobs_gpu_job_info{{{NODE}}} * on (cluster, node, gpu, "
                    f"uuid) group_left () hpcobs_gpu_utilization_ratio{{{NODE}}})",
                    instant=True,
                    table_format=True,
                ),
                query(
                    f"sum by (job_id) (hpcobs_gpu_job_memory_used_bytes{{{NODE}}})",
                    instant=True,
                    table_format=True,
                ),
                query(
                    f"sum by (job_id) (rate(hpcobs_lustre_job_read_bytes_total{{{NODE}}}{RATE}))",
                    instant=True,
                    table_format=True,
                ),
                query(
                    f"sum by (job_id) (rate(hpcobs_lustre_job_write_bytes_total{{{NODE}}}{RATE}))",
                    instant=True,
                    table_format=True,
                ),
                query(
                    f"sum by (job_id) (rate(hpcobs_job_cpu_seconds_total{{{NODE}}}{RATE}))",
                    instant=True,
                    table_format=True,
                ),
                query(
                    f"sum by (job_id) (hpcobs_job_memory_bytes{{{NODE}}})",
                    instant=True,
                    table_format=True,
                ),
                query(
                    f"avg by (job_id) (hpcobs_gpu_job_info{{{NODE}}} * on (cluster, node, gpu, "
                    f"uuid) group_left () hpcobs_gpu_sm_active_ratio{{{NODE}}})",
                    instant=True,
                    table_format=True,
                ),
            ],
            hide=("Time",),
            rename={
                "job_id": "job",
                "Value #A": "GPUs",
                "Value #B": "GPU utilization",
                "Value #C": "GPU memory",
                "Value #D": "Lustre read B/s",
                "Value #E": "Lustre write B/s",
                "Value #F": "CPU cores",
                "Value #G": "memory",
                "Value #H": "GPU SM activity",
            },
            width=24,
        )
    )
    board = checkpoint_panels(board)
    board = board.with_row(db.Row("MPI probe"))
    for stat_name in ("p50", "p99"):
        board = board.with_panel(
            ts_panel(
                f"Collective latency by size ({stat_name})",
                f"hpcobs-mpi-probe: {stat_name} latency of each collective and message size, "
                "per run (corrected for the Python call overhead).",
                [
                    query(
                        "hpcobs_mpi_collective_latency_seconds{"
                        f'{PROBE}, op=~"$op", stat="{stat_name}"}}',
                        "{{op}} {{size_bytes}} B",
                    )
                ],
                unit="s",
            )
        )
    board = board.with_panel(
        fabric_heatmap(
            "p50",
            "Fabric latency per node (p50)",
            "the lower median over the node's pairs of their median latency, the node's "
            "typical latency (a slow node heats its whole row)",
        )
    )
    board = board.with_panel(
        fabric_heatmap(
            "max",
            "Fabric latency per node, worst link (max)",
            "the median latency of the node's slowest pair (a slow link heats the rows of "
            "both of its ends)",
        )
    )
    board = board.with_panel(
        table_panel(
            "Slowest nodes (pairwise)",
            "Nodes whose point-to-point latency is furthest above their peers' (1 = typical).",
            [
                query(
                    f"topk(10, hpcobs_mpi_node_slowness_ratio{{{PROBE}}})",
                    instant=True,
                    table_format=True,
                )
            ],
            hide=("Time", "__name__", "job", "instance"),
            rename={"Value": "slowness"},
            width=24,
        )
    )
    board = board.with_row(db.Row("Scheduler"))
    board = board.with_panel(
        ts_panel(
            "Scheduler cycle times",
            "slurmctld's main and backfill scheduling cycles (sdiag): the last cycle and the "
            "mean since sdiag's statistics were last reset.",
            [
                query(
                    f'max by (cluster, scheduler, stat) ({SDIAG}{{{CLUSTER}, stat=~"last|mean"}})',
                    "{{cluster}} {{scheduler}} {{stat}}",
                )
            ],
            unit="s",
            width=24,
        )
    )
    board = scheduler_event_panels(board)
    return board
