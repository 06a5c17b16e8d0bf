"""Collector `gpu`: NVIDIA GPUs through NVML (nvidia-ml-py), XID events, GPU → Slurm job.

Each scrape reads every GPU on its own thread under one time budget
(`--collector.gpu.timeout`): a GPU that answers `GpuIsLost`/`Unknown`, or does not answer in
time, is reported `hpcobs_gpu_up 0` with its other series dropped, and the other GPUs are
unaffected. A GPU whose previous read is still stuck in the driver is not read again until
that read returns (one thread per wedged GPU, not one per scrape).

A call a GPU does not support (`NotSupported`, `FunctionNotFound`, a missing NVLink) omits
that metric for that GPU, logged once per GPU and call at debug level, and is not repeated.

No `pynvml`, no NVML library, no driver, or no GPU: no GPU series, collector up, one info
line. Other init failures mark the collector down; init is retried with exponential backoff.

XID errors are counted by a background thread (`nvmlEventSetCreate`,
`nvmlDeviceRegisterEvents` with the XID-critical mask, `nvmlEventSetWait`), per GPU and XID;
it outlives GPUs that stop answering and stops in `close()`. Its counters are kept for a
lost GPU (XID 79, "fallen off the bus", is what explains the loss).

GPU processes (`nvmlDeviceGetComputeRunningProcesses`) are attributed to Slurm jobs by the
`jobs` module's `JobAttributor`; a dcgm-exporter style mapping directory
(`--collector.gpu.job-mapping-dir`: one file per GPU index or UUID, job ids one per line)
adds jobs a Slurm prolog wrote.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.collectors.jobs import JobAttributor, positive_int
from hpcobs.exporters.nvml import (
    EVENT_XID_CRITICAL,
    NVLINK_ERROR_COUNTERS,
    ErrorKind,
    GpuProcess,
    Nvml,
    NvmlTimeout,
    TimedRunner,
    classify,
    error_name,
    is_stable_unsupported,
    load_pynvml,
)
from hpcobs.exporters.parse.cgroup import parse_job_mapping_file
from hpcobs.exporters.runtime.cli import parse_duration
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, Services
from hpcobs.exporters.runtime.metricdef import MetricDef
from hpcobs.exporters.runtime.once import OnceLog

T = TypeVar("T")
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
    "PCIe transmit throughput over NVML's 20 ms sample.",
    G,
)
PCIE_RX = MetricDef(
    "hpcobs_gpu_pcie_receive_bytes_per_second",
    "gauge",
    "PCIe receive throughput over NVML's 20 ms sample.",
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
    NVLINK_STATE,
    NVLINK_ERRORS,
    FAN,
    PSTATE,
    MIG_ENABLED,
    MIG_INFO,
    MIG_MEMORY_USED,
    MIG_MEMORY_TOTAL,
    MIG_UTILIZATION,
    PROCESSES,
    JOB_INFO,
    JOB_MEMORY,
    XID,
    XID_WATCHER_UP,
)

# nvmlClocksEventReason* bits (nvml.h).
CLOCK_EVENT_REASONS = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
CLOCKS = ("sm", "memory", "graphics")

log = logging.getLogger("hpcobs.gpu")

Sample = tuple[MetricDef, tuple[str, ...], float]


class GpuLost(Exception):
    """A GPU stopped answering in the middle of its read."""


class NvmlInitError(Exception):
    """NVML is present but could not be initialised; retried with backoff."""


@dataclass
class Device:
    """One GPU as enumerated at init. `handle` is None when it failed to enumerate."""

    index: int
    handle: Any
    uuid: str = ""
    name: str = ""
    pci_bus_id: str = ""
    key: int = 0
    skip: set[str] = field(default_factory=set)  # calls that answered "not supported"

    @property
    def label(self) -> str:
        return str(self.index)


@dataclass
class Reading:
    """What one scrape read from one GPU."""

    device: Device
    up: bool = True
    error: str = ""
    samples: list[Sample] = field(default_factory=list)
    processes: list[GpuProcess] | None = None

    def add(self, metric: MetricDef, value: float | None, *extra: str) -> None:
        if value is not None:
            self.samples.append((metric, extra, float(value)))


@dataclass
class _Session:
    """One successful nvmlInit and what it found."""

    nv: Nvml
    driver_version: str
    cuda_version: str
    nvml_version: str
    devices: list[Device]
    watcher: XidWatcher | None = None


class XidWatcher:
    """A thread that waits on an NVML event set and reports XID events."""

    def __init__(
        self,
        nv: Nvml,
        devices: list[Device],
        on_xid: Callable[[int, int], None],
        wait_ms: int = 500,
    ) -> None:
        self.nv = nv
        self.on_xid = on_xid
        self.wait_ms = wait_ms
        self.registered = 0
        self.errors = 0
        self._stop = threading.Event()
        self._once = OnceLog(log)
        self.event_set = nv.event_set_create()
        for device in devices:
            if device.handle is None:
                continue
            try:
                nv.register_events(device.handle, self.event_set, EVENT_XID_CRITICAL)
            except Exception as exc:
                self._once.debug(
                    (device.uuid, "xid"),
                    "XID events not available for this GPU",
                    gpu=device.label,
                    uuid=device.uuid,
                    err=error_name(exc),
                )
                continue
            self.registered += 1
        self._thread = threading.Thread(target=self._run, name="nvml-xid-events", daemon=True)
        if self.registered:
            self._thread.start()
        else:
            self._free()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                event = self.nv.event_wait(self.event_set, self.wait_ms)
            except Exception as exc:  # a lost GPU, a driver hiccup: keep listening
                self.errors += 1
                self._once.warning(
                    ("xid-wait", error_name(exc)),
                    "waiting for NVML events failed; retrying",
                    err=f"{error_name(exc)}: {exc}",
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if event is not None and event.event_type & EVENT_XID_CRITICAL:
                try:
                    self.on_xid(event.device_key, event.data)
                except Exception:  # never let one event end the thread
                    log.exception("counting an XID event failed")
        self._free()

    def _free(self) -> None:
        try:
            self.nv.event_set_free(self.event_set)
        except Exception as exc:
            log.debug("freeing the NVML event set failed", extra={"err": error_name(exc)})

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the thread; False when it did not end within `timeout` (a wedged wait)."""
        self._stop.set()
        if not self._thread.is_alive():
            return True
        self._thread.join(self.wait_ms / 1000.0 + 1.0 if timeout is None else timeout)
        return not self._thread.is_alive()


class GpuCollector(Collector):
    name = "gpu"

    def __init__(
        self,
        *,
        loader: Callable[[], ModuleType] = load_pynvml,
        timeout: float = 4.0,
        xid: bool = True,
        processes: bool = True,
        pcie_throughput: bool = True,
        job_mapping_dir: str = "",
        max_jobs: int = 64,
        procfs: str = "/proc",
        environ_fallback: bool = True,
        backoff_initial: float = 5.0,
        backoff_max: float = 300.0,
        xid_wait_ms: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("--collector.gpu.timeout must be positive")
        self.loader = loader
        self.timeout = timeout
        self.xid_enabled = xid
        self.processes_enabled = processes
        self.pcie_throughput = pcie_throughput
        self.job_mapping_dir = job_mapping_dir
        self.max_jobs = max_jobs
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.xid_wait_ms = xid_wait_ms
        self.clock = clock
        self.attributor = JobAttributor(procfs, environ_fallback)
        self._runner = TimedRunner("nvml")
        self._once = OnceLog(log)
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._absent = False
        self._init_error: str = ""
        self._next_init = 0.0
        self._backoff = backoff_initial
        self._xid_counts: dict[tuple[str, str, int], int] = {}
        self._devices_by_key: dict[int, Device] = {}
        self._up: dict[int, bool] = {}

    # -- init and teardown -------------------------------------------------------------
    def _ensure_session(self) -> _Session | None:
        """The NVML session, or None on a node without NVML/GPUs; raises while init fails."""
        if self._session is not None:
            return self._session
        now = self.clock()
        if now < self._next_init:
            if self._absent:
                return None
            raise NvmlInitError(self._init_error)
        try:
            session = self._runner.call("init", self._open, self.timeout)
        except Exception as exc:
            self._next_init = now + self._backoff
            self._backoff = min(self._backoff * 2, self.backoff_max)
            if classify(exc) is ErrorKind.ABSENT or isinstance(exc, _NoGpu):
                self._absent = True
                self._once.info(
                    "absent",
                    "no NVIDIA GPU here; the gpu collector exports nothing",
                    reason=_describe(exc),
                )
                return None
            self._absent = False
            self._init_error = f"NVML init failed: {_describe(exc)}"
            self._once.clear("absent")
            log.warning(
                "NVML init failed; retrying with backoff",
                extra={"err": _describe(exc), "retry_in_seconds": self._next_init - now},
            )
            raise NvmlInitError(self._init_error) from exc
        self._session = session
        self._absent = False
        self._backoff = self.backoff_initial
        self._once.clear("absent")
        self._devices_by_key = {d.key: d for d in session.devices if d.handle is not None}
        log.info(
            "NVML initialised",
            extra={
                "gpus": len(session.devices),
                "driver_version": session.driver_version,
                "cuda_version": session.cuda_version,
            },
        )
        if self.xid_enabled:
            try:  # event set creation and registration are NVML calls too: under the budget
                session.watcher = self._runner.call(
                    "xid-setup",
                    partial(
                        XidWatcher, session.nv, session.devices, self._count_xid, self.xid_wait_ms
                    ),
                    self.timeout,
                )
            except Exception as exc:
                log.warning("XID event thread not started", extra={"err": _describe(exc)})
        return session

    def _open(self) -> _Session:
        nv = Nvml(self.loader())
        nv.init()
        try:
            count = nv.device_count()
            if count == 0:
                raise _NoGpu("NVML found no GPU")
            devices = [self._enumerate(nv, index) for index in range(count)]
            return _Session(
                nv=nv,
                driver_version=_optional(nv.driver_version, ""),
                cuda_version=_optional(nv.cuda_driver_version, ""),
                nvml_version=_optional(nv.nvml_version, ""),
                devices=devices,
            )
        except BaseException:
            _optional(nv.shutdown, None)
            raise

    @staticmethod
    def _enumerate(nv: Nvml, index: int) -> Device:
        try:
            handle = nv.handle_by_index(index)
            uuid = nv.uuid(handle)
        except Exception as exc:
            log.warning("GPU did not enumerate", extra={"gpu": index, "err": _describe(exc)})
            return Device(index, None)
        return Device(
            index=index,
            handle=handle,
            uuid=uuid,
            name=_optional(lambda: nv.name(handle), ""),
            pci_bus_id=_optional(lambda: nv.pci_bus_id(handle), ""),
            key=nv.handle_key(handle),
        )

    def _reset(self, reason: str) -> None:
        """Drop the NVML session (re-initialised on a later scrape, with backoff)."""
        session, self._session = self._session, None
        if session is None:
            return
        log.warning("re-initialising NVML", extra={"reason": reason})
        if session.watcher is not None:
            session.watcher.stop()
        try:
            self._runner.call("shutdown", session.nv.shutdown, min(self.timeout, 1.0))
        except Exception as exc:
            log.debug("nvmlShutdown failed", extra={"err": _describe(exc)})
        self._next_init = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)
        self._init_error = f"NVML re-initialising after: {reason}"

    def close(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if session.watcher is not None and not session.watcher.stop():
            log.warning("XID event thread did not stop (NVML wait stuck)")
        try:
            self._runner.call("shutdown", session.nv.shutdown, min(self.timeout, 1.0))
        except Exception as exc:
            log.debug("nvmlShutdown failed", extra={"err": _describe(exc)})

    # -- XID events ------------------------------------------------------------------
    def _count_xid(self, device_key: int, xid: int) -> None:
        device = self._devices_by_key.get(device_key)
        if device is None:
            self._once.warning(("xid-unknown", xid), "XID event from an unknown device", xid=xid)
            return
        key = (device.label, device.uuid, xid)
        with self._lock:
            self._xid_counts[key] = self._xid_counts.get(key, 0) + 1
        fields = {"gpu": device.label, "uuid": device.uuid, "xid": xid}
        # the first of each XID per GPU at warning, repeats (an XID storm) at debug
        if not self._once.warning(("xid", key), "GPU XID error", **fields):
            log.debug("GPU XID error", extra=fields)

    def xid_counts(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return dict(self._xid_counts)

    # -- one scrape ------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        session = self._ensure_session()
        if session is None:
            return
        readings = self._read_all(session, time.monotonic() + self.timeout)
        yield from self._families(session, readings)

    def _read_all(self, session: _Session, deadline: float) -> list[Reading]:
        nv = session.nv
        try:
            count = self._runner.call("count", nv.device_count, deadline - time.monotonic())
        except Exception as exc:
            kind = classify(exc)
            readings = [Reading(d, up=False, error=_describe(exc)) for d in session.devices]
            if kind in (ErrorKind.GLOBAL, ErrorKind.ABSENT):
                self._reset(_describe(exc))
            self._note_states(readings)
            return readings
        if count != len(session.devices):
            log.info(
                "GPU count changed; re-initialising NVML",
                extra={"before": len(session.devices), "now": count},
            )
            self._reset("GPU count changed")
            readings = [Reading(d, up=False, error="re-enumerating") for d in session.devices]
            self._note_states(readings)
            return readings

        futures = {
            device.index: self._runner.start(f"gpu{device.index}", partial(self._read, nv, device))
            for device in session.devices
        }
        TimedRunner.wait(
            [f for f in futures.values() if f is not None], deadline - time.monotonic()
        )
        readings = []
        for device in session.devices:
            future = futures[device.index]
            if future is None:
                readings.append(Reading(device, up=False, error="previous read still stuck"))
            elif not future.done():
                readings.append(
                    Reading(device, up=False, error=f"no answer within {self.timeout:g}s")
                )
            elif future.exception() is not None:
                readings.append(Reading(device, up=False, error=_describe(future.exception())))
            else:
                readings.append(future.result())
        self._note_states(readings)
        return readings

    def _note_states(self, readings: list[Reading]) -> None:
        for reading in readings:
            device = reading.device
            before = self._up.get(device.index)
            self._up[device.index] = reading.up
            if not reading.up and before is not False:
                log.warning(
                    "GPU not answering",
                    extra={"gpu": device.label, "uuid": device.uuid, "err": reading.error},
                )
            elif reading.up and before is False:
                log.info("GPU answering again", extra={"gpu": device.label, "uuid": device.uuid})

    def _query(
        self, device: Device, key: str, fn: Callable[..., T], *args: Any, cache: bool = True
    ) -> T | None:
        """One NVML call for `device`: its value, or None when the GPU lacks it.

        Raises GpuLost when the GPU stopped answering."""
        if key in device.skip:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            kind = classify(exc)
            if kind in (ErrorKind.LOST, ErrorKind.GLOBAL, ErrorKind.ABSENT):
                raise GpuLost(f"{key}: {_describe(exc)}") from exc
            log_key = key.rstrip("0123456789_")
            if kind is ErrorKind.UNSUPPORTED:
                if cache and is_stable_unsupported(exc):
                    device.skip.add(key)
                self._once.debug(
                    (device.uuid, log_key),
                    "not supported by this GPU; metric omitted",
                    gpu=device.label,
                    uuid=device.uuid,
                    call=log_key,
                    err=error_name(exc),
                )
            else:
                self._once.warning(
                    (device.uuid, log_key),
                    "NVML call failed; metric omitted",
                    gpu=device.label,
                    uuid=device.uuid,
                    call=log_key,
                    err=_describe(exc),
                )
            return None

    def _read(self, nv: Nvml, device: Device) -> Reading:
        """Everything about one GPU (runs on its own thread)."""
        if device.handle is None:
            fresh = self._enumerate(nv, device.index)
            if fresh.handle is None:
                return Reading(device, up=False, error="GPU did not enumerate")
            device.handle, device.uuid, device.name = fresh.handle, fresh.uuid, fresh.name
            device.pci_bus_id, device.key = fresh.pci_bus_id, fresh.key
            self._devices_by_key[device.key] = device
        try:
            return self._read_device(nv, device)
        except GpuLost as exc:
            return Reading(device, up=False, error=str(exc))

    def _read_device(self, nv: Nvml, device: Device) -> Reading:
        h = device.handle
        r = Reading(device)
        q = self._query
        util = q(device, "utilization", nv.utilization, h)
        if util is not None:
            r.add(UTILIZATION, util[0])
            r.add(MEMORY_UTILIZATION, util[1])
        memory = q(device, "memory", nv.memory, h)
        if memory is not None:
            r.add(MEMORY_USED, memory[0])
            r.add(MEMORY_TOTAL, memory[1])
        r.add(TEMPERATURE, q(device, "temperature", nv.temperature_celsius, h))
        r.add(POWER, q(device, "power", nv.power_watts, h))
        r.add(POWER_LIMIT, q(device, "power_limit", nv.power_limit_watts, h))
        r.add(ENERGY, q(device, "energy", nv.energy_joules, h))
        for clock in CLOCKS:
            r.add(CLOCK, q(device, f"clock_{clock}", nv.clock_hertz, h, clock), clock)
        reasons = q(device, "clock_event_reasons", nv.clock_event_reasons, h)
        if reasons is not None:
            for reason in reason_names(reasons):
                r.add(CLOCK_EVENT, 1.0, reason)
        for kind in ("corrected", "uncorrected"):
            aggregate = q(device, f"ecc_{kind}_aggregate", nv.ecc_errors, h, kind, "aggregate")
            volatile = q(device, f"ecc_{kind}_volatile", nv.ecc_errors, h, kind, "volatile")
            r.add(ECC, aggregate, kind)
            r.add(ECC_VOLATILE, volatile, kind)
        for cause in ("multiple_single_bit_ecc", "double_bit_ecc"):
            r.add(RETIRED_PAGES, q(device, f"retired_{cause}", nv.retired_pages, h, cause), cause)
        r.add(RETIRED_PENDING, q(device, "retired_pending", nv.retired_pages_pending, h))
        rows = q(device, "remapped_rows", nv.remapped_rows, h)
        if rows is not None:
            r.add(REMAPPED_ROWS, rows.correctable, "correctable")
            r.add(REMAPPED_ROWS, rows.uncorrectable, "uncorrectable")
            r.add(REMAP_PENDING, rows.pending)
            r.add(REMAP_FAILED, rows.failed)
        r.add(PCIE_REPLAY, q(device, "pcie_replay", nv.pcie_replay, h))
        if self.pcie_throughput:
            r.add(PCIE_TX, q(device, "pcie_tx", nv.pcie_throughput_bytes, h, "transmit"))
            r.add(PCIE_RX, q(device, "pcie_rx", nv.pcie_throughput_bytes, h, "receive"))
        for link in range(nv.nvlink_max_links()):
            active = q(device, f"nvlink_state_{link}", nv.nvlink_active, h, link)
            if active is None:
                continue
            r.add(NVLINK_STATE, active, str(link))
            for counter in NVLINK_ERROR_COUNTERS:
                value = q(device, f"nvlink_{counter}_{link}", nv.nvlink_errors, h, link, counter)
                r.add(NVLINK_ERRORS, value, str(link), counter)
        r.add(FAN, q(device, "fan", nv.fan_ratio, h))
        r.add(PSTATE, q(device, "pstate", nv.performance_state, h))
        mig = q(device, "mig_mode", nv.mig_enabled, h)
        r.add(MIG_ENABLED, mig)
        if mig:
            self._read_mig(nv, device, r)
        if self.processes_enabled:
            r.processes = q(device, "processes", nv.compute_processes, h, cache=False)
        return r

    def _read_mig(self, nv: Nvml, device: Device, r: Reading) -> None:
        q = self._query
        slots = q(device, "mig_max_devices", nv.max_mig_devices, device.handle) or 0
        for slot in range(slots):
            mh = q(device, f"mig_handle_{slot}", nv.mig_handle, device.handle, slot, cache=False)
            if mh is None:
                continue  # an empty slot answers NotFound
            gi = q(device, f"mig_gi_{slot}", nv.gpu_instance_id, mh, cache=False)
            ci = q(device, f"mig_ci_{slot}", nv.compute_instance_id, mh, cache=False)
            if gi is None or ci is None:
                continue
            ids = (str(gi), str(ci))
            mig_uuid = q(device, f"mig_uuid_{slot}", nv.uuid, mh, cache=False) or ""
            name = q(device, f"mig_name_{slot}", nv.name, mh, cache=False) or ""
            r.add(MIG_INFO, 1.0, *ids, mig_uuid, name)
            memory = q(device, f"mig_memory_{slot}", nv.memory, mh, cache=False)
            if memory is not None:
                r.add(MIG_MEMORY_USED, memory[0], *ids)
                r.add(MIG_MEMORY_TOTAL, memory[1], *ids)
            util = q(device, f"mig_utilization_{slot}", nv.utilization, mh, cache=False)
            if util is not None:
                r.add(MIG_UTILIZATION, util[0], *ids)

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
                attribution = attributions.get(proc.pid)
                if attribution is None:
                    continue
                used = proc.used_memory_bytes
                before = jobs.get(attribution.job_id)
                if used is None:
                    jobs.setdefault(attribution.job_id, before)
                else:
                    jobs[attribution.job_id] = (before or 0.0) + used
        if self.job_mapping_dir:
            for index, job_ids in self._mapping_dir_jobs(readings).items():
                for job in job_ids:
                    out[index].setdefault(job, None)
        return out

    def _mapping_dir_jobs(self, readings: list[Reading]) -> dict[int, list[str]]:
        by_name: dict[str, int] = {}
        for reading in readings:
            device = reading.device
            by_name[device.label] = device.index
            if device.uuid:
                by_name[device.uuid] = device.index
        mig_parent = {
            s[1][2]: reading.device.index
            for reading in readings
            for s in reading.samples
            if s[0] is MIG_INFO and s[1][2]
        }
        out: dict[int, list[str]] = defaultdict(list)
        try:
            names = sorted(os.listdir(self.job_mapping_dir))
        except OSError as exc:
            self._once.warning(
                "mapping-dir",
                "cannot read the GPU job mapping directory",
                path=self.job_mapping_dir,
                err=str(exc),
            )
            return out
        self._once.clear("mapping-dir")
        for name in names:
            index = by_name.get(name, mig_parent.get(name))
            if index is None:
                continue
            path = os.path.join(self.job_mapping_dir, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read(65536)
            except OSError as exc:
                self._once.warning(path, "cannot read GPU job mapping file", err=str(exc))
                continue
            self._once.clear(path)
            out[index].extend(j for j in parse_job_mapping_file(text) if j not in out[index])
        return out

    # -- families --------------------------------------------------------------------
    def _families(self, session: _Session, readings: list[Reading]) -> Iterator[Metric]:
        samples: dict[MetricDef, list[tuple[tuple[str, ...], float]]] = defaultdict(list)
        driver = session.driver_version
        samples[DRIVER_INFO].append(((driver, session.cuda_version, session.nvml_version), 1.0))
        for reading in readings:
            device = reading.device
            ids = (device.label, device.uuid)
            samples[UP].append((ids, 1.0 if reading.up else 0.0))
            if not reading.up:
                continue
            samples[INFO].append(((*ids, device.name, device.pci_bus_id, driver), 1.0))
            for metric, extra, value in reading.samples:
                samples[metric].append(((*ids, *extra), value))
            if reading.processes is not None:
                samples[PROCESSES].append((ids, float(len(reading.processes))))
        jobs = self._jobs(readings)
        for reading in readings:
            device = reading.device
            if not reading.up:
                continue
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
                job_ids = (device.label, device.uuid, job)
                samples[JOB_INFO].append((job_ids, 1.0))
                used = per_gpu[job]
                if used is not None:
                    samples[JOB_MEMORY].append((job_ids, used))
        for (gpu, uuid, xid), count in sorted(self.xid_counts().items()):
            samples[XID].append(((gpu, uuid, str(xid)), float(count)))
        watcher = session.watcher
        samples[XID_WATCHER_UP].append(
            ((), 1.0 if watcher is not None and watcher.running else 0.0)
        )
        for metric in METRICS:
            rows = samples.get(metric)
            if not rows:
                continue
            family = metric.counter() if metric.kind == "counter" else metric.gauge()
            for labels, value in rows:
                family.add_metric(list(labels), value)
            yield family


class _NoGpu(Exception):
    """NVML initialised but enumerates no GPU."""


def reason_names(mask: int) -> list[str]:
    """Names of the set bits of an nvmlClocksEventReason mask (`bit_<n>` for unknown bits)."""
    names = []
    for bit in range(64):
        flag = 1 << bit
        if mask & flag:
            names.append(CLOCK_EVENT_REASONS.get(flag, f"bit_{bit}"))
    return names


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    if isinstance(exc, NvmlTimeout | GpuLost | NvmlInitError | _NoGpu):
        return str(exc)
    return f"{error_name(exc)}: {exc}"


def _optional(fn: Callable[[], T], default: T) -> T:
    try:
        return fn()
    except Exception:
        return default


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
        "--collector.gpu.pcie-throughput",
        dest="gpu_pcie_throughput",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read PCIe throughput (NVML samples 20 ms per direction and GPU; default: on)",
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
        type=positive_int,
        default=64,
        metavar="N",
        help="export at most N jobs per GPU (lowest job ids kept; default 64)",
    )


def _factory(args: argparse.Namespace, services: Services) -> GpuCollector:
    return GpuCollector(
        timeout=args.gpu_timeout,
        xid=args.gpu_xid,
        processes=args.gpu_processes,
        pcie_throughput=args.gpu_pcie_throughput,
        job_mapping_dir=args.gpu_job_mapping_dir,
        max_jobs=args.gpu_max_jobs,
        procfs=getattr(args, "path_procfs", "/proc"),
        environ_fallback=getattr(args, "jobs_environ_fallback", True),
    )


SPEC = CollectorSpec(
    name="gpu",
    help="NVIDIA GPUs through NVML: utilization, memory, power, ECC, NVLink, XID, jobs",
    default_enabled=True,
    add_arguments=_options,
    factory=_factory,
)
