"""Collector `gpu`: NVIDIA GPUs (NVML), XID errors, and the Slurm jobs holding each GPU.

Source → model → metrics: `NvmlSource` (`exporters/sources/nvml.py`) reads every GPU under
the time budget and counts XID events, returning a `Snapshot` of plain `Reading`s; the
daemon's shared `JobAttributor` (`exporters/attribution.py`) names the Slurm job of each
process on a GPU, and a dcgm-exporter style mapping directory
(`--collector.gpu.job-mapping-dir`: one file per GPU index or UUID, job ids one per line)
adds jobs a Slurm prolog wrote. This module holds the metric definitions and maps that model
to metric families.

A GPU that is down (lost, or no answer within `--collector.gpu.timeout`) has only
`hpcobs_gpu_up 0` (and its XID counters); a value the GPU lacks has no series. No NVML or no
GPU: no series, collector up. Profiling metrics (GPM, Hopper and later) cover the interval
between two scrapes: none at the first. See docs/gpu.md.

The NVML source is imported when the collector is made, not with this module: a daemon
without the gpu collector (rdma or lustre only) reads these definitions for its flags and docs
and does not load it.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from hpcobs.exporters import attribution
from hpcobs.exporters.attribution import JobAttributor, JobMappingDir
from hpcobs.exporters.runtime.cli import int_at_least, parse_duration
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, Services
from hpcobs.exporters.runtime.families import Families
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.runtime.once import OnceLog

if TYPE_CHECKING:
    from hpcobs.exporters.sources.nvml import NvmlSource, Profile, Reading, Snapshot

G = ("gpu", "uuid")

INFO = MetricDef(
    "hpcobs_gpu_info",
    "gauge",
    "1 for each GPU NVML enumerates.",
    ("gpu", "uuid", "name", "pci_bus_id", "driver_version"),
)
DRIVER_INFO = MetricDef(
    "hpcobs_gpu_driver_info",
    "gauge",
    "1, labelled with the NVIDIA driver, CUDA driver API and NVML versions.",
    ("driver_version", "cuda_version", "nvml_version"),
)
UP = MetricDef(
    "hpcobs_gpu_up",
    "gauge",
    "1 when the GPU answered this scrape, 0 when it is lost or did not answer in time.",
    G,
)
UTILIZATION = MetricDef(
    "hpcobs_gpu_utilization_ratio",
    "gauge",
    "Fraction of the last sample period in which a kernel ran on the GPU.",
    G,
)
MEMORY_UTILIZATION = MetricDef(
    "hpcobs_gpu_memory_utilization_ratio",
    "gauge",
    "Fraction of the last sample period in which device memory was read or written.",
    G,
)
MEMORY_USED = MetricDef("hpcobs_gpu_memory_used_bytes", "gauge", "Device memory in use.", G)
MEMORY_TOTAL = MetricDef("hpcobs_gpu_memory_total_bytes", "gauge", "Device memory size.", G)
TEMPERATURE = MetricDef("hpcobs_gpu_temperature_celsius", "gauge", "GPU core temperature.", G)
POWER = MetricDef("hpcobs_gpu_power_watts", "gauge", "Power draw of the GPU board.", G)
POWER_LIMIT = MetricDef(
    "hpcobs_gpu_power_limit_watts", "gauge", "Power limit the driver enforces.", G
)
ENERGY = MetricDef(
    "hpcobs_gpu_energy_joules_total",
    "counter",
    "Energy used by the GPU since the driver was last loaded.",
    G,
)
CLOCK = MetricDef(
    "hpcobs_gpu_clock_hertz",
    "gauge",
    "Current clock frequency (clock = sm, memory, graphics).",
    (*G, "clock"),
)
CLOCK_EVENT = MetricDef(
    "hpcobs_gpu_clock_throttle_reason",
    "gauge",
    "1 for each reason currently holding the clocks down (NVML clocks event reasons); "
    "inactive reasons have no series.",
    (*G, "reason"),
)
ECC = MetricDef(
    "hpcobs_gpu_ecc_errors_total",
    "counter",
    "ECC errors over the GPU's lifetime (NVML aggregate counter; type = corrected, uncorrected).",
    (*G, "type"),
)
ECC_VOLATILE = MetricDef(
    "hpcobs_gpu_ecc_volatile_errors_total",
    "counter",
    "ECC errors since the driver was last loaded (NVML volatile counter).",
    (*G, "type"),
)
RETIRED_PAGES = MetricDef(
    "hpcobs_gpu_retired_pages",
    "gauge",
    "Memory pages retired (cause = multiple_single_bit_ecc, double_bit_ecc); pre-Ampere GPUs.",
    (*G, "cause"),
)
RETIRED_PENDING = MetricDef(
    "hpcobs_gpu_retired_pages_pending",
    "gauge",
    "1 when a page retirement waits for the next driver reload.",
    G,
)
REMAPPED_ROWS = MetricDef(
    "hpcobs_gpu_remapped_rows",
    "gauge",
    "Memory rows remapped (cause = correctable, uncorrectable); Ampere and later.",
    (*G, "cause"),
)
REMAP_PENDING = MetricDef(
    "hpcobs_gpu_remapped_rows_pending",
    "gauge",
    "1 when a row remapping waits for a GPU reset.",
    G,
)
REMAP_FAILED = MetricDef(
    "hpcobs_gpu_remapped_rows_failed",
    "gauge",
    "1 when a row remapping failed (the GPU needs service).",
    G,
)
PCIE_REPLAY = MetricDef(
    "hpcobs_gpu_pcie_replay_total", "counter", "PCIe replays (link-level retransmissions).", G
)
PCIE_TX = MetricDef(
    "hpcobs_gpu_pcie_transmit_bytes_per_second",
    "gauge",
    "PCIe transmit throughput: GPM, over the interval between the last two scrapes; on GPUs "
    "without GPM with --collector.gpu.pcie-throughput, NVML's 20 ms sample.",
    G,
)
PCIE_RX = MetricDef(
    "hpcobs_gpu_pcie_receive_bytes_per_second",
    "gauge",
    "PCIe receive throughput: GPM, over the interval between the last two scrapes; on GPUs "
    "without GPM with --collector.gpu.pcie-throughput, NVML's 20 ms sample.",
    G,
)
# GPM (NVML GPU performance monitoring, Hopper and later): each an average over the interval
# between the previous scrape and this one (DCGM's profiling field in brackets).
_OVER = "over the interval between the last two scrapes (NVML GPM)"
SM_ACTIVE = MetricDef(
    "hpcobs_gpu_sm_active_ratio",
    "gauge",
    f"Fraction of time the SMs had at least one warp resident, averaged over all SMs, {_OVER} "
    "[DCGM_FI_PROF_SM_ACTIVE].",
    G,
)
SM_OCCUPANCY = MetricDef(
    "hpcobs_gpu_sm_occupancy_ratio",
    "gauge",
    f"Resident warps as a fraction of the most the SMs can hold, {_OVER} "
    "[DCGM_FI_PROF_SM_OCCUPANCY].",
    G,
)
TENSOR_ACTIVE = MetricDef(
    "hpcobs_gpu_tensor_active_ratio",
    "gauge",
    f"Fraction of time any tensor core pipe was active, {_OVER} [DCGM_FI_PROF_PIPE_TENSOR_ACTIVE].",
    G,
)
DRAM_ACTIVE = MetricDef(
    "hpcobs_gpu_dram_active_ratio",
    "gauge",
    f"Device memory bandwidth used as a fraction of its theoretical maximum, {_OVER} "
    "[DCGM_FI_PROF_DRAM_ACTIVE].",
    G,
)
FP64_ACTIVE = MetricDef(
    "hpcobs_gpu_fp64_active_ratio",
    "gauge",
    f"Fraction of time the SMs ran non-tensor FP64 math, {_OVER} [DCGM_FI_PROF_PIPE_FP64_ACTIVE].",
    G,
)
FP32_ACTIVE = MetricDef(
    "hpcobs_gpu_fp32_active_ratio",
    "gauge",
    f"Fraction of time the SMs ran non-tensor FP32 math, {_OVER} [DCGM_FI_PROF_PIPE_FP32_ACTIVE].",
    G,
)
FP16_ACTIVE = MetricDef(
    "hpcobs_gpu_fp16_active_ratio",
    "gauge",
    f"Fraction of time the SMs ran non-tensor FP16 math, {_OVER} [DCGM_FI_PROF_PIPE_FP16_ACTIVE].",
    G,
)
NVLINK_TX = MetricDef(
    "hpcobs_gpu_nvlink_transmit_bytes_per_second",
    "gauge",
    f"NVLink transmit throughput, all links together, {_OVER} [DCGM_FI_PROF_NVLINK_TX_BYTES].",
    G,
)
NVLINK_RX = MetricDef(
    "hpcobs_gpu_nvlink_receive_bytes_per_second",
    "gauge",
    f"NVLink receive throughput, all links together, {_OVER} [DCGM_FI_PROF_NVLINK_RX_BYTES].",
    G,
)
NVLINK_STATE = MetricDef(
    "hpcobs_gpu_nvlink_state",
    "gauge",
    "1 when the NVLink link is active, 0 when it is not; links the GPU lacks have no series.",
    (*G, "link"),
)
NVLINK_ERRORS = MetricDef(
    "hpcobs_gpu_nvlink_errors_total",
    "counter",
    "NVLink data-link errors (counter = replay, recovery, crc_flit, crc_data, ecc_data).",
    (*G, "link", "counter"),
)
FAN = MetricDef(
    "hpcobs_gpu_fan_speed_ratio",
    "gauge",
    "Fan speed as a fraction of its maximum (boards with fans only).",
    G,
)
PSTATE = MetricDef(
    "hpcobs_gpu_performance_state",
    "gauge",
    "Performance state: 0 (P0, maximum) to 15 (P15, minimum).",
    G,
)
MIG_ENABLED = MetricDef(
    "hpcobs_gpu_mig_enabled", "gauge", "1 when MIG mode is enabled on the GPU.", G
)
M = (*G, "gpu_instance", "compute_instance")
MIG_INFO = MetricDef(
    "hpcobs_gpu_mig_info",
    "gauge",
    "1 for each MIG device (gpu and uuid are the parent GPU's).",
    (*M, "mig_uuid", "name"),
)
MIG_MEMORY_USED = MetricDef(
    "hpcobs_gpu_mig_memory_used_bytes", "gauge", "Memory in use on the MIG device.", M
)
MIG_MEMORY_TOTAL = MetricDef(
    "hpcobs_gpu_mig_memory_total_bytes", "gauge", "Memory size of the MIG device.", M
)
MIG_UTILIZATION = MetricDef(
    "hpcobs_gpu_mig_utilization_ratio",
    "gauge",
    "Fraction of time a kernel ran on the MIG device (where the driver reports it).",
    M,
)
GI = (*G, "gpu_instance")  # GPM counts per MIG GPU instance (all its compute instances)
_MIG_OVER = "of the MIG GPU instance, over the interval between the last two scrapes (NVML GPM)"
MIG_SM_ACTIVE = MetricDef(
    "hpcobs_gpu_mig_sm_active_ratio",
    "gauge",
    f"Fraction of time its SMs had at least one warp resident, {_MIG_OVER}.",
    GI,
)
MIG_SM_OCCUPANCY = MetricDef(
    "hpcobs_gpu_mig_sm_occupancy_ratio",
    "gauge",
    f"Resident warps as a fraction of the most its SMs can hold, {_MIG_OVER}.",
    GI,
)
MIG_TENSOR_ACTIVE = MetricDef(
    "hpcobs_gpu_mig_tensor_active_ratio",
    "gauge",
    f"Fraction of time any tensor core pipe was active, {_MIG_OVER}.",
    GI,
)
MIG_DRAM_ACTIVE = MetricDef(
    "hpcobs_gpu_mig_dram_active_ratio",
    "gauge",
    f"Memory bandwidth used as a fraction of its share of the maximum, {_MIG_OVER}.",
    GI,
)
MIG_FP64_ACTIVE = MetricDef(
    "hpcobs_gpu_mig_fp64_active_ratio",
    "gauge",
    f"Fraction of time its SMs ran non-tensor FP64 math, {_MIG_OVER}.",
    GI,
)
MIG_FP32_ACTIVE = MetricDef(
    "hpcobs_gpu_mig_fp32_active_ratio",
    "gauge",
    f"Fraction of time its SMs ran non-tensor FP32 math, {_MIG_OVER}.",
    GI,
)
MIG_FP16_ACTIVE = MetricDef(
    "hpcobs_gpu_mig_fp16_active_ratio",
    "gauge",
    f"Fraction of time its SMs ran non-tensor FP16 math, {_MIG_OVER}.",
    GI,
)
PROCESSES = MetricDef("hpcobs_gpu_processes", "gauge", "Compute processes running on the GPU.", G)
JOB_INFO = MetricDef(
    "hpcobs_gpu_job_info",
    "gauge",
    "1 while a Slurm job holds the GPU (a process of the job runs on it, or the job "
    "mapping directory names it).",
    (*G, "job_id"),
)
JOB_MEMORY = MetricDef(
    "hpcobs_gpu_job_memory_used_bytes",
    "gauge",
    "GPU memory used by the job's processes on the GPU.",
    (*G, "job_id"),
)
XID = MetricDef(
    "hpcobs_gpu_xid_errors_total",
    "counter",
    "XID errors reported by the driver since the exporter started, by XID code.",
    (*G, "xid"),
)
XID_WATCHER_UP = MetricDef(
    "hpcobs_gpu_xid_watcher_up",
    "gauge",
    "1 while the XID event thread is running with at least one GPU registered.",
)
METRICS = (
    INFO,
    DRIVER_INFO,
    UP,
    UTILIZATION,
    MEMORY_UTILIZATION,
    MEMORY_USED,
    MEMORY_TOTAL,
    TEMPERATURE,
    POWER,
    POWER_LIMIT,
    ENERGY,
    CLOCK,
    CLOCK_EVENT,
    ECC,
    ECC_VOLATILE,
    RETIRED_PAGES,
    RETIRED_PENDING,
    REMAPPED_ROWS,
    REMAP_PENDING,
    REMAP_FAILED,
    PCIE_REPLAY,
    PCIE_TX,
    PCIE_RX,
    SM_ACTIVE,
    SM_OCCUPANCY,
    TENSOR_ACTIVE,
    DRAM_ACTIVE,
    FP64_ACTIVE,
    FP32_ACTIVE,
    FP16_ACTIVE,
    NVLINK_TX,
    NVLINK_RX,
    NVLINK_STATE,
    NVLINK_ERRORS,
    FAN,
    PSTATE,
    MIG_ENABLED,
    MIG_INFO,
    MIG_MEMORY_USED,
    MIG_MEMORY_TOTAL,
    MIG_UTILIZATION,
    MIG_SM_ACTIVE,
    MIG_SM_OCCUPANCY,
    MIG_TENSOR_ACTIVE,
    MIG_DRAM_ACTIVE,
    MIG_FP64_ACTIVE,
    MIG_FP32_ACTIVE,
    MIG_FP16_ACTIVE,
    PROCESSES,
    JOB_INFO,
    JOB_MEMORY,
    XID,
    XID_WATCHER_UP,
)


log = logging.getLogger("hpcobs.gpu")

Labels = dict[str, str]


class GpuCollector(Collector):
    name = "gpu"

    def __init__(
        self,
        source: NvmlSource | None = None,
        *,
        attributor: JobAttributor | None = None,
        job_mapping_dir: str = "",
        max_jobs: int = 64,
    ) -> None:
        """`attributor`: the daemon's shared one (default: a private one over /proc)."""
        if source is None:
            from hpcobs.exporters.sources.nvml import NvmlSource

            source = NvmlSource()
        self.source = source
        self.attributor = attributor if attributor is not None else JobAttributor()
        self.job_mapping_dir = job_mapping_dir
        self.mapping = JobMappingDir(job_mapping_dir, log) if job_mapping_dir else None
        self.max_jobs = max_jobs
        self._once = OnceLog(log)

    def close(self) -> None:
        self.source.close()

    def collect(self) -> list[Metric]:
        snapshot = self.source.read()
        if snapshot is None:
            return []
        return list(self._families(snapshot, self._jobs(snapshot.readings)))

    # -- jobs ------------------------------------------------------------------------
    def _jobs(self, readings: list[Reading]) -> dict[int, dict[str, float | None]]:
        """Per GPU index: job id → GPU memory its processes use (None: only from the
        mapping directory, or the driver does not say)."""
        out: dict[int, dict[str, float | None]] = defaultdict(dict)
        pids = {p.pid for r in readings if r.up and r.processes for p in r.processes}
        attributions = self.attributor.attribute(pids) if pids else {}
        for reading in readings:
            if not reading.up or not reading.processes:
                continue
            jobs = out[reading.device.index]
            for proc in reading.processes:
                found = attributions.get(proc.pid)
                if found is None:
                    continue
                used = proc.used_memory_bytes
                before = jobs.get(found.job_id)
                if used is None:
                    jobs.setdefault(found.job_id, before)
                else:
                    jobs[found.job_id] = (before or 0.0) + used
        if self.mapping is not None:
            for index, job_ids in self._mapping_dir_jobs(readings).items():
                for job in job_ids:
                    out[index].setdefault(job, None)
        return out

    def _mapping_dir_jobs(self, readings: list[Reading]) -> dict[int, list[str]]:
        """The mapping directory's jobs per GPU index (a MIG device's file counts for its
        GPU)."""
        assert self.mapping is not None
        by_name: dict[str, int] = {}
        for reading in readings:
            device = reading.device
            by_name[device.label] = device.index
            if device.uuid:
                by_name[device.uuid] = device.index
        mig_parent = {m.uuid: r.device.index for r in readings for m in r.mig if m.uuid}
        out: dict[int, list[str]] = defaultdict(list)
        for name, job_ids in self.mapping.read(by_name.keys() | mig_parent.keys()).items():
            index = by_name.get(name, mig_parent.get(name))
            if index is not None:
                out[index].extend(j for j in job_ids if j not in out[index])
        return out

    # -- families --------------------------------------------------------------------
    def _families(self, snapshot: Snapshot, jobs: dict[int, dict[str, float | None]]) -> Families:
        out = Families(METRICS)
        driver = snapshot.driver_version
        out.add(
            DRIVER_INFO,
            {
                "driver_version": driver,
                "cuda_version": snapshot.cuda_version,
                "nvml_version": snapshot.nvml_version,
            },
            1.0,
        )
        for reading in snapshot.readings:
            device = reading.device
            ids = {"gpu": device.label, "uuid": device.uuid}  # shared by the GPU's samples
            out.add(UP, ids, 1.0 if reading.up else 0.0)
            if not reading.up:
                continue
            info = {**ids, "name": device.name, "pci_bus_id": device.pci_bus_id}
            out.add(INFO, {**info, "driver_version": driver}, 1.0)
            _gpu(out, reading, ids)
            if reading.processes is not None:
                out.add(PROCESSES, ids, float(len(reading.processes)))
            per_gpu = jobs.get(device.index, {})
            kept = sorted(per_gpu, key=int)[: self.max_jobs]
            if len(per_gpu) > len(kept):
                self._once.warning(
                    ("max-jobs", device.uuid),
                    "more jobs on a GPU than --collector.gpu.max-jobs; some left out",
                    gpu=device.label,
                    jobs=len(per_gpu),
                )
            for job in kept:
                job_labels = {**ids, "job_id": job}
                out.add(JOB_INFO, job_labels, 1.0)
                used = per_gpu[job]
                if used is not None:
                    out.add(JOB_MEMORY, job_labels, used)
        for (gpu, uuid, xid), count in sorted(snapshot.xid_counts.items()):
            out.add(XID, {"gpu": gpu, "uuid": uuid, "xid": str(xid)}, float(count))
        out.add(XID_WATCHER_UP, {}, 1.0 if snapshot.xid_watcher_up else 0.0)
        return out


def _add(out: Families, metric: MetricDef, labels: Labels, value: float | None) -> None:
    if value is not None:
        out.add(metric, labels, float(value))


def _gpu(out: Families, r: Reading, ids: Labels) -> None:
    """One GPU's readings (each family's samples in the order the collector has always
    written them: the goldens are byte for byte)."""
    if r.utilization is not None:
        out.add(UTILIZATION, ids, r.utilization[0])
        out.add(MEMORY_UTILIZATION, ids, r.utilization[1])
    if r.memory is not None:
        out.add(MEMORY_USED, ids, float(r.memory[0]))
        out.add(MEMORY_TOTAL, ids, float(r.memory[1]))
    _add(out, TEMPERATURE, ids, r.temperature_celsius)
    _add(out, POWER, ids, r.power_watts)
    _add(out, POWER_LIMIT, ids, r.power_limit_watts)
    _add(out, ENERGY, ids, r.energy_joules)
    for clock, hertz in r.clocks_hertz.items():
        out.add(CLOCK, {**ids, "clock": clock}, hertz)
    for reason in r.clock_event_reasons or ():
        out.add(CLOCK_EVENT, {**ids, "reason": reason}, 1.0)
    for kind, count in r.ecc_aggregate.items():
        out.add(ECC, {**ids, "type": kind}, float(count))
    for kind, count in r.ecc_volatile.items():
        out.add(ECC_VOLATILE, {**ids, "type": kind}, float(count))
    for cause, pages in r.retired_pages.items():
        out.add(RETIRED_PAGES, {**ids, "cause": cause}, float(pages))
    _add(out, RETIRED_PENDING, ids, r.retired_pages_pending)
    rows = r.remapped_rows
    if rows is not None:
        out.add(REMAPPED_ROWS, {**ids, "cause": "correctable"}, float(rows.correctable))
        out.add(REMAPPED_ROWS, {**ids, "cause": "uncorrectable"}, float(rows.uncorrectable))
        out.add(REMAP_PENDING, ids, float(rows.pending))
        out.add(REMAP_FAILED, ids, float(rows.failed))
    _add(out, PCIE_REPLAY, ids, r.pcie_replay)
    _add(out, PCIE_TX, ids, r.pcie_transmit_bytes_per_second)
    _add(out, PCIE_RX, ids, r.pcie_receive_bytes_per_second)
    if r.profile is not None:
        _profile(out, _GPU_PROFILE, r.profile, ids)
        _add(out, NVLINK_TX, ids, r.profile.nvlink_transmit_bytes_per_second)
        _add(out, NVLINK_RX, ids, r.profile.nvlink_receive_bytes_per_second)
    if r.nvlinks:
        # 18 links x 6 series per GPU, two thirds of the collector's series: appended to the
        # two families here rather than through `Families.add` per sample (what `add` does,
        # without its two calls a sample: 2 % of the 8-GPU bench's collection)
        states = out.family(NVLINK_STATE).samples
        counters = out.family(NVLINK_ERRORS).samples
        for link_number, active, errors in r.nvlinks:
            link = {**ids, "link": str(link_number)}
            states.append(Sample(NVLINK_STATE.name, link, 1.0 if active else 0.0))
            for counter, count in errors.items():
                labels = {**link, "counter": counter}
                counters.append(Sample(NVLINK_ERRORS.name, labels, float(count)))
    _add(out, FAN, ids, r.fan_ratio)
    _add(out, PSTATE, ids, r.performance_state)
    _add(out, MIG_ENABLED, ids, r.mig_enabled)
    for mig in r.mig:
        instance = {
            **ids,
            "gpu_instance": str(mig.gpu_instance),
            "compute_instance": str(mig.compute_instance),
        }
        out.add(MIG_INFO, {**instance, "mig_uuid": mig.uuid, "name": mig.name}, 1.0)
        if mig.memory is not None:
            out.add(MIG_MEMORY_USED, instance, float(mig.memory[0]))
            out.add(MIG_MEMORY_TOTAL, instance, float(mig.memory[1]))
        _add(out, MIG_UTILIZATION, instance, mig.utilization)
    for gpu_instance, profile in r.mig_profiles.items():
        _profile(out, _MIG_PROFILE, profile, {**ids, "gpu_instance": str(gpu_instance)})


# The activity ratios of a `Profile`, per GPU and per MIG GPU instance.
_GPU_PROFILE = (
    SM_ACTIVE,
    SM_OCCUPANCY,
    TENSOR_ACTIVE,
    DRAM_ACTIVE,
    FP64_ACTIVE,
    FP32_ACTIVE,
    FP16_ACTIVE,
)
_MIG_PROFILE = (
    MIG_SM_ACTIVE,
    MIG_SM_OCCUPANCY,
    MIG_TENSOR_ACTIVE,
    MIG_DRAM_ACTIVE,
    MIG_FP64_ACTIVE,
    MIG_FP32_ACTIVE,
    MIG_FP16_ACTIVE,
)


def _profile(out: Families, metrics: tuple[MetricDef, ...], p: Profile, labels: Labels) -> None:
    """The activity ratios: the first fields of a `Profile`, in the order of `metrics`."""
    for metric, value in zip(metrics, p, strict=False):
        if value is not None:
            out.add(metric, labels, value)


def _options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--collector.gpu.timeout",
        dest="gpu_timeout",
        type=parse_duration,
        default=4.0,
        metavar="DURATION",
        help="time budget for all NVML calls of one scrape; a GPU that has not answered by "
        "then is reported down (default 4s)",
    )
    group.add_argument(
        "--collector.gpu.xid",
        dest="gpu_xid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count XID errors with an NVML event thread (default: on)",
    )
    group.add_argument(
        "--collector.gpu.processes",
        dest="gpu_processes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="list GPU processes and attribute them to Slurm jobs (default: on)",
    )
    group.add_argument(
        "--collector.gpu.gpm",
        dest="gpu_gpm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profiling metrics from NVML GPM on GPUs that have it (Hopper and later): SM "
        "activity and occupancy, tensor, DRAM, FP64/32/16 activity, PCIe and NVLink "
        "throughput, over the interval between two scrapes (default: on)",
    )
    group.add_argument(
        "--collector.gpu.pcie-throughput",
        dest="gpu_pcie_throughput",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="on GPUs without GPM, read PCIe throughput with nvmlDeviceGetPcieThroughput: a "
        "20 ms sample per direction that each scrape waits for (default: off)",
    )
    group.add_argument(
        "--collector.gpu.job-mapping-dir",
        dest="gpu_job_mapping_dir",
        default="",
        metavar="DIR",
        help="directory with one file per GPU index (or UUID) listing the Slurm job ids "
        "holding it, one per line (dcgm-exporter's --hpc-job-mapping-dir convention)",
    )
    group.add_argument(
        "--collector.gpu.max-jobs",
        dest="gpu_max_jobs",
        type=int_at_least(1),
        default=64,
        metavar="N",
        help="export at most N jobs per GPU (lowest job ids kept; default 64)",
    )
    attribution.add_arguments(group)  # the shared attribution service's flags


def _factory(args: argparse.Namespace, services: Services) -> GpuCollector:
    from hpcobs.exporters.sources.nvml import NvmlSource

    source = NvmlSource(
        timeout=args.gpu_timeout,
        xid=args.gpu_xid,
        processes=args.gpu_processes,
        gpm=args.gpu_gpm,
        pcie_throughput=args.gpu_pcie_throughput,
    )
    return GpuCollector(
        source,
        attributor=services.get(attribution.from_args),
        job_mapping_dir=args.gpu_job_mapping_dir,
        max_jobs=args.gpu_max_jobs,
    )


SPEC = CollectorSpec(
    name="gpu",
    help="NVIDIA GPUs through NVML: utilization, profiling (GPM), memory, power, ECC, NVLink, "
    "XID, jobs",
    default_enabled=True,
    add_arguments=_options,
    factory=_factory,
)
