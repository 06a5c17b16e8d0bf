"""Every hpcobs metric that the dashboards (dashboards/board_*.py) and the alert rules
(alerts/hpcobs-alerts.yml) use, with where it comes from.

tests/unit/test_dashboards_metrics.py keeps this table honest: it must list exactly the
`hpcobs_*` names found in the generated dashboards and the alert rules, and every name must be
declared in the code (`hpcobs.exporters.runtime.catalog.catalog()`, i.e. some module's
`METRICS`). Histograms are listed by their base name (queries use `<name>_bucket`/`_count`).

Besides these, the rules and dashboards use Prometheus' own `up` and `ALERTS`, and the SLO
rules' `ALERTS{alertname=~"SLOBurnRate.*"}`.
"""

from __future__ import annotations

# Labels that Prometheus adds to every scraped series (the scrape config in docs/install.md):
# `cluster` on every target, `node` on node exporter targets, and `job`/`instance`.
TARGET_LABELS = frozenset({"cluster", "node", "job", "instance"})
# The probe pushes to the Pushgateway under the grouping key job/cluster/partition.
PUSHED_LABELS = frozenset({"partition"})

METRICS_USED: dict[str, str] = {
    # runtime (every daemon)
    "hpcobs_collector_up": "runtime: HpcobsCollectorFailing, the node variable",
    # gpu collector
    "hpcobs_gpu_up": "gpu (contract): GPULost, on-call",
    "hpcobs_gpu_utilization_ratio": "gpu (contract): JobGPUsIdle, debug heatmap, per-job table",
    "hpcobs_gpu_sm_active_ratio": "gpu (GPM): JobGPUsIdle, debug SM heatmap, per-job table",
    "hpcobs_gpu_tensor_active_ratio": "gpu (GPM): debug tensor heatmap",
    "hpcobs_gpu_ecc_errors_total": "gpu (contract): GPUECCUncorrected",
    "hpcobs_gpu_xid_errors_total": "gpu (contract): GPUXidStorm, on-call XIDs",
    "hpcobs_gpu_clock_throttle_reason": "gpu: GPUThermalThrottle",
    "hpcobs_gpu_job_info": "gpu (contract): JobGPUsIdle, per-job table",
    "hpcobs_gpu_job_memory_used_bytes": "gpu: per-job table",
    # jobs collector
    "hpcobs_job_cpu_seconds_total": "jobs: per-job table",
    "hpcobs_job_memory_bytes": "jobs: per-job table",
    # rdma collector
    "hpcobs_rdma_port_state": "rdma (contract): RDMAPortDown, on-call",
    "hpcobs_rdma_port_physical_state": "rdma (contract): RDMAPortDown (disabled ports)",
    "hpcobs_rdma_port_link_downed_total": "rdma (contract): RDMALinkFlapping, on-call, debug",
    "hpcobs_rdma_netdev_link_flaps_total": "rdma: RDMALinkFlapping, on-call",
    "hpcobs_rdma_port_symbol_errors_total": "rdma (contract): RDMASymbolErrorsRising, debug",
    "hpcobs_rdma_port_link_error_recovery_total": "rdma (contract): debug",
    "hpcobs_rdma_port_receive_errors_total": "rdma (contract): debug",
    "hpcobs_rdma_port_transmit_discards_total": "rdma (contract): debug",
    "hpcobs_rdma_hw_counters_total": "rdma (contract): debug",
    "hpcobs_rdma_port_receive_bytes_total": "rdma (contract): debug",
    "hpcobs_rdma_port_transmit_bytes_total": "rdma (contract): debug",
    # lustre collector
    "hpcobs_lustre_health_ok": "lustre (contract): LustreHealthNotOk, on-call",
    "hpcobs_lustre_client_import_state": "lustre: LustreTargetDisconnected, on-call",
    "hpcobs_lustre_target_read_bytes_total": "lustre (contract): debug",
    "hpcobs_lustre_target_write_bytes_total": "lustre (contract): debug",
    "hpcobs_lustre_target_disk_io_duration_seconds": "lustre (histogram): debug OST latency",
    "hpcobs_lustre_job_read_bytes_total": "lustre (contract): per-job table",
    "hpcobs_lustre_job_write_bytes_total": "lustre (contract): per-job table",
    # slurm exporter
    "hpcobs_slurm_up": "slurm (contract): SlurmctldUnreachable",
    "hpcobs_slurm_jobs": "slurm (contract): SlurmQueueStalled",
    "hpcobs_slurm_nodes": "slurm (contract): PartitionNodesUnavailable, QueueStalled, on-call",
    "hpcobs_slurm_node_reason_info": "slurm: NodeDown, NodeDrained, on-call nodes table",
    "hpcobs_slurm_jobs_finished_total": "slurm (contract): executive, on-call, PreemptionRateHigh",
    "hpcobs_slurm_job_queue_wait_seconds": "slurm (contract, histogram): executive, QueueStalled",
    "hpcobs_slurm_job_resource_seconds_total": "slurm (contract): executive GPU-hours, cost",
    "hpcobs_slurm_scheduler_cycle_seconds": "slurm (sdiag): BackfillCycleTooLong, debug",
    "hpcobs_slurm_scheduler_jobs_total": "slurm (sdiag): debug scheduler events",
    "hpcobs_slurm_jobs_pending": "slurm: on-call pending jobs by reason",
    "hpcobs_slurm_pending_seconds_total": "slurm: debug pending seconds by reason",
    "hpcobs_slurm_license_free": "slurm: SlurmLicenseStarved",
    "hpcobs_slurm_license_pending_jobs": "slurm: SlurmLicenseStarved",
    "hpcobs_slurm_job_requeues_total": "slurm: on-call preemptions and requeues",
    "hpcobs_slurm_job_failed_info": "slurm: on-call recent failed jobs (log link)",
    "hpcobs_slurm_node_maintenance": "slurm: maintenance suppression of node alerts, on-call",
    "hpcobs_slurm_reservation_info": "slurm: on-call maintenance reservations",
    "hpcobs_slurm_reservation_start_timestamp_seconds": "slurm: on-call maintenance reservations",
    "hpcobs_slurm_reservation_end_timestamp_seconds": "slurm: on-call maintenance reservations",
    "hpcobs_slurm_job_time_to_result_seconds": "slurm (histogram): executive time to result",
    "hpcobs_slurm_job_run_seconds": "slurm (histogram): executive make-span",
    "hpcobs_slurm_account_resource_seconds_total": "slurm: executive spend by account",
    # SLO daemon
    "hpcobs_slo_error_budget_remaining_ratio": "slo (contract): executive",
    # hpcobs-checkpoint (textfile or Pushgateway)
    "hpcobs_checkpoint_duration_seconds": "checkpoint: debug duration per job",
    "hpcobs_checkpoint_seconds_total": "checkpoint: debug share of run time per job",
    "hpcobs_checkpoint_run_seconds_total": "checkpoint: debug share of run time per job",
    # MPI probe (Pushgateway)
    "hpcobs_mpi_collective_latency_seconds": "probe (contract): debug, op variable",
    "hpcobs_mpi_probe_last_success_timestamp_seconds": "probe (contract): ProbeStale, on-call",
    "hpcobs_mpi_probe_regressions": "probe: ProbeRegression, on-call verdict",
    "hpcobs_mpi_node_slowness_ratio": "probe: debug slowest nodes",
    "hpcobs_mpi_node_latency_seconds": "probe: debug heatmaps, probe alerts' nodes (maintenance)",
}
