"""Source: NVIDIA GPUs through NVML. The session, the reading of each GPU under a time budget,
MIG devices and the XID event thread; plain data classes out (`Snapshot`, `Reading`).

`pynvml` (nvidia-ml-py) is imported here and nowhere else, at call time, so tests can put a
fake module with the same function names in `sys.modules["pynvml"]` (or hand one to
`load_pynvml`'s caller). Every method of `Nvml` is one NVML call turned into plain Python
values in base units (bytes, watts, joules, hertz, ratios 0-1).

Errors are sorted into the few kinds the source acts on (`classify`):

| kind | NVML errors | what `NvmlSource` does |
|---|---|---|
| `ABSENT` | LibraryNotFound, DriverNotLoaded, no `pynvml` | a CPU-only node: `read()` is None |
| `UNSUPPORTED` | NotSupported, FunctionNotFound, InvalidArgument, NotFound, ... | leave the value out |
| `LOST` | GpuIsLost, Unknown, Timeout, ResetRequired, IrqIssue, our own time budget | GPU down |
| `GLOBAL` | Uninitialized, LibRmVersionMismatch | re-initialise NVML |
| `OTHER` | NoPermission, CorruptedInforom, Memory, ... | leave the value out, warn once |

A wedged driver blocks inside the C call, and a thread blocked there cannot be interrupted.
NVML work therefore runs on the runtime's single-flight workers (one persistent daemon thread
per key: a GPU, "count", "init", ...) and the scrape waits at most its budget; work for a key
that is still stuck is not started again (the GPU is reported down), so a wedged GPU costs
one thread, not one per scrape.

Each scrape reads every GPU on its own worker under one time budget
(`--collector.gpu.timeout`): a GPU that answers `GpuIsLost`/`Unknown`, or does not answer in
time, is down (`Reading.up` False) and the other GPUs are unaffected. A call a GPU does not
support (`NotSupported`, `FunctionNotFound`, a missing NVLink) leaves that value out for that
GPU, logged once per GPU and call at debug level, and is not repeated. No `pynvml`, no NVML
library, no driver, or no GPU: `read()` returns None (one info line). Other init failures
raise `NvmlInitError`; init is retried with exponential backoff.

Profiling metrics come from GPM (GPU performance monitoring, Hopper and later:
`nvmlGpmSampleGet`, `nvmlGpmMigSampleGet` per MIG GPU instance, `nvmlGpmMetricsGet`). Taking a
sample is one quick call; the metrics are computed over the interval between the previous
scrape's sample and this scrape's (two buffers per GPU and GPU instance, swapped each scrape), so
nothing waits for a sampling window and the first scrape after start (or after a GPU came back)
has none. A GPU without GPM has none, with one info line saying why; its PCIe throughput is then
read the old way (`nvmlDeviceGetPcieThroughput`, a 20 ms sample per direction that the scrape
waits for) only when `pcie_throughput` asks for it.

XID errors are counted by a background thread (`XidWatcher`: `nvmlEventSetCreate`,
`nvmlDeviceRegisterEvents` with the XID-critical mask, `nvmlEventSetWait` 5 s at a time), per
GPU and XID; it outlives GPUs that stop answering and stops in `close()`, which does not wait
for the NVML wait to end: the thread frees its event set and shuts NVML down when it returns.
Its counts are kept for a lost GPU (XID 79, "fallen off the bus", is what explains the loss).
"""

from __future__ import annotations

import ctypes
import enum
import functools
import importlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any, NamedTuple, TypeVar

from hpcobs.exporters.runtime.once import OnceLog
from hpcobs.exporters.runtime.singleflight import SingleFlight

T = TypeVar("T")
log = logging.getLogger("hpcobs.gpu")

# NVML return codes (nvml.h; stable ABI), so that classification works before pynvml loads.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_NO_DATA = 21
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_UNKNOWN = 999

# Event type (nvmlEventTypeXidCriticalError) and the few enum values used below.
EVENT_XID_CRITICAL = 0x0000000000000008
_CLOCKS = {"graphics": 0, "sm": 1, "memory": 2, "video": 3}
_ECC_TYPES = {"corrected": 0, "uncorrected": 1}
_ECC_COUNTERS = {"volatile": 0, "aggregate": 1}
_RETIREMENT_CAUSES = {"multiple_single_bit_ecc": 0, "double_bit_ecc": 1}
_PCIE = {"transmit": 0, "receive": 1}
NVLINK_ERROR_COUNTERS = {"replay": 0, "recovery": 1, "crc_flit": 2, "crc_data": 3, "ecc_data": 4}
PSTATE_UNKNOWN = 32
# The version word NVML expects for nvmlMemory_v2_t (sizeof | 2 << 24).
_MEMORY_V2 = 0x02000028
NVML_GPM_METRICS_GET_VERSION = 1  # c_nvmlGpmMetricsGet_t.version

# GPM metrics read (nvmlGpmMetricId_t, nvml.h): `Profile` field -> (metric id, factor to base
# units), in the order of Profile's fields. NVML gives activities in percent and PCIe/NVLink
# throughput in MiB/s (nvml.h: "PCIe traffic from this GPU in MiB/sec"): 1,048,576 bytes/s.
_PERCENT = 0.01
_MIB = float(1 << 20)
GPM_METRICS: dict[str, tuple[int, float]] = {
    "sm_active": (2, _PERCENT),  # NVML_GPM_METRIC_SM_UTIL
    "sm_occupancy": (3, _PERCENT),  # NVML_GPM_METRIC_SM_OCCUPANCY
    "tensor_active": (5, _PERCENT),  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
    "dram_active": (10, _PERCENT),  # NVML_GPM_METRIC_DRAM_BW_UTIL
    "fp64_active": (11, _PERCENT),  # NVML_GPM_METRIC_FP64_UTIL
    "fp32_active": (12, _PERCENT),  # NVML_GPM_METRIC_FP32_UTIL
    "fp16_active": (13, _PERCENT),  # NVML_GPM_METRIC_FP16_UTIL
    "pcie_transmit_bytes_per_second": (20, _MIB),  # NVML_GPM_METRIC_PCIE_TX_PER_SEC
    "pcie_receive_bytes_per_second": (21, _MIB),  # NVML_GPM_METRIC_PCIE_RX_PER_SEC
    "nvlink_transmit_bytes_per_second": (61, _MIB),  # NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC
    "nvlink_receive_bytes_per_second": (60, _MIB),  # NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC
}
# A MIG GPU instance: its share of the SMs and memory; PCIe and NVLink belong to the GPU.
MIG_GPM_METRICS = {k: v for k, v in GPM_METRICS.items() if v[1] == _PERCENT}


class ErrorKind(enum.Enum):
    ABSENT = "absent"
    UNSUPPORTED = "unsupported"
    LOST = "lost"
    GLOBAL = "global"
    OTHER = "other"


_KINDS: dict[int, ErrorKind] = {
    NVML_ERROR_LIBRARY_NOT_FOUND: ErrorKind.ABSENT,
    NVML_ERROR_DRIVER_NOT_LOADED: ErrorKind.ABSENT,
    NVML_ERROR_NOT_SUPPORTED: ErrorKind.UNSUPPORTED,
    NVML_ERROR_FUNCTION_NOT_FOUND: ErrorKind.UNSUPPORTED,
    NVML_ERROR_INVALID_ARGUMENT: ErrorKind.UNSUPPORTED,
    NVML_ERROR_NOT_FOUND: ErrorKind.UNSUPPORTED,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: ErrorKind.UNSUPPORTED,
    NVML_ERROR_DEPRECATED: ErrorKind.UNSUPPORTED,
    NVML_ERROR_NO_DATA: ErrorKind.UNSUPPORTED,
    NVML_ERROR_GPU_IS_LOST: ErrorKind.LOST,
    NVML_ERROR_UNKNOWN: ErrorKind.LOST,
    NVML_ERROR_TIMEOUT: ErrorKind.LOST,
    NVML_ERROR_RESET_REQUIRED: ErrorKind.LOST,
    NVML_ERROR_IRQ_ISSUE: ErrorKind.LOST,
    NVML_ERROR_GPU_NOT_FOUND: ErrorKind.LOST,
    NVML_ERROR_NOT_READY: ErrorKind.LOST,
    NVML_ERROR_UNINITIALIZED: ErrorKind.GLOBAL,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: ErrorKind.GLOBAL,
}

# Kinds of UNSUPPORTED errors that cannot change while NVML stays initialised, so the call
# need not be repeated (NotFound can: an empty MIG slot gets an instance).
STABLE_UNSUPPORTED = frozenset(
    {
        NVML_ERROR_NOT_SUPPORTED,
        NVML_ERROR_FUNCTION_NOT_FOUND,
        NVML_ERROR_INVALID_ARGUMENT,
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
        NVML_ERROR_DEPRECATED,
    }
)


class NvmlTimeout(Exception):
    """An NVML call did not return within its time budget (or is still stuck from before)."""


class MissingFunction(Exception):
    """The loaded pynvml has no such function (an old nvidia-ml-py)."""


def error_code(exc: BaseException) -> int | None:
    """The NVML return code carried by a pynvml `NVMLError`, if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) and type(exc).__name__.startswith("NVMLError") else None


def _no_such_function(exc: BaseException) -> bool:
    """The loaded pynvml (or the driver's library under it) lacks the function called."""
    return isinstance(exc, MissingFunction) or type(exc).__name__ == "NVMLLibraryMismatchError"


def classify(exc: BaseException) -> ErrorKind:
    """Sort an exception from an NVML call into the kinds the collector acts on."""
    if isinstance(exc, ImportError):
        return ErrorKind.ABSENT
    if isinstance(exc, NvmlTimeout):
        return ErrorKind.LOST
    if _no_such_function(exc):
        return ErrorKind.UNSUPPORTED
    code = error_code(exc)
    if code is None:
        return ErrorKind.OTHER
    return _KINDS.get(code, ErrorKind.OTHER)


def is_stable_unsupported(exc: BaseException) -> bool:
    """An UNSUPPORTED error that will not go away without re-initialising NVML."""
    if _no_such_function(exc):
        return True
    return error_code(exc) in STABLE_UNSUPPORTED


def error_name(exc: BaseException) -> str:
    """`NVMLError_GpuIsLost`, `NvmlTimeout`, ...: stable for logs."""
    return type(exc).__name__


def load_pynvml() -> ModuleType:
    """Import `pynvml` (whatever `sys.modules` holds: the real one or a test fake)."""
    return importlib.import_module("pynvml")


# -- typed calls ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RemappedRows:
    correctable: int
    uncorrectable: int
    pending: bool
    failed: bool


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None  # None: not available (e.g. no permission, WDDM)
    gpu_instance_id: int | None
    compute_instance_id: int | None


@dataclass(frozen=True)
class Event:
    """One event from nvmlEventSetWait."""

    device_key: int  # `Nvml.handle_key` of the device it came from
    event_type: int
    data: int  # the XID for XID events
    gpu_instance_id: int | None
    compute_instance_id: int | None


_NOT_AVAILABLE_U32 = 0xFFFFFFFF
_NOT_AVAILABLE_U64 = 0xFFFFFFFFFFFFFFFF


# nvidia-ml-py's structures run Python code on each field access (to decode strings); the
# numbers of a GPM request (~40 fields a call) are read and written past it: a `gpm_metrics`
# call against the fake went from 140 µs to about 25 µs.
_get_field = object.__getattribute__
_set_field = object.__setattr__


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _instance_id(value: Any) -> int | None:
    if value is None:
        return None
    number = int(value)
    return None if number == _NOT_AVAILABLE_U32 else number


class Nvml:
    """Typed calls into one loaded pynvml module (the real one or a fake)."""

    def __init__(self, module: ModuleType) -> None:
        self.m = module

    def _fn(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.m, name, None)
        if fn is None:
            raise MissingFunction(name)
        return fn  # type: ignore[no-any-return]

    # library / system
    def init(self) -> None:
        self._fn("nvmlInit")()

    def shutdown(self) -> None:
        self._fn("nvmlShutdown")()

    def driver_version(self) -> str:
        return _text(self._fn("nvmlSystemGetDriverVersion")())

    def nvml_version(self) -> str:
        return _text(self._fn("nvmlSystemGetNVMLVersion")())

    def cuda_driver_version(self) -> str:
        """`12.4` from NVML's 12040."""
        raw = int(self._fn("nvmlSystemGetCudaDriverVersion")())
        return f"{raw // 1000}.{raw % 1000 // 10}"

    def device_count(self) -> int:
        return int(self._fn("nvmlDeviceGetCount")())

    def handle_by_index(self, index: int) -> Any:
        return self._fn("nvmlDeviceGetHandleByIndex")(index)

    @staticmethod
    def handle_key(handle: Any) -> int:
        """A stable integer for a device handle (its pointer value): maps events to GPUs."""
        try:
            value = ctypes.cast(handle, ctypes.c_void_p).value
        except (ctypes.ArgumentError, TypeError):
            return id(handle)
        return int(value or 0)

    # identity
    def uuid(self, handle: Any) -> str:
        return _text(self._fn("nvmlDeviceGetUUID")(handle))

    def name(self, handle: Any) -> str:
        return _text(self._fn("nvmlDeviceGetName")(handle))

    def pci_bus_id(self, handle: Any) -> str:
        info = self._fn("nvmlDeviceGetPciInfo")(handle)
        return _text(info.busId)

    # readings
    def utilization(self, handle: Any) -> tuple[float, float]:
        """(GPU busy, memory controller busy) as ratios over NVML's last sample period."""
        rates = self._fn("nvmlDeviceGetUtilizationRates")(handle)
        return int(rates.gpu) / 100.0, int(rates.memory) / 100.0

    def memory(self, handle: Any) -> tuple[int, int]:
        """(used, total) bytes; the v2 call (without driver-reserved memory) when available."""
        fn = self._fn("nvmlDeviceGetMemoryInfo")
        try:
            info = fn(handle, version=_MEMORY_V2)
        except TypeError:  # an nvidia-ml-py without the `version` argument
            info = fn(handle)
        except Exception as exc:
            if classify(exc) is not ErrorKind.UNSUPPORTED:
                raise
            info = fn(handle)
        return int(info.used), int(info.total)

    def temperature_celsius(self, handle: Any) -> float:
        return float(self._fn("nvmlDeviceGetTemperature")(handle, 0))  # NVML_TEMPERATURE_GPU

    def power_watts(self, handle: Any) -> float:
        return int(self._fn("nvmlDeviceGetPowerUsage")(handle)) / 1000.0

    def power_limit_watts(self, handle: Any) -> float:
        return int(self._fn("nvmlDeviceGetEnforcedPowerLimit")(handle)) / 1000.0

    def energy_joules(self, handle: Any) -> float:
        return int(self._fn("nvmlDeviceGetTotalEnergyConsumption")(handle)) / 1000.0

    def clock_hertz(self, handle: Any, clock: str) -> float:
        return int(self._fn("nvmlDeviceGetClockInfo")(handle, _CLOCKS[clock])) * 1e6

    def clock_event_reasons(self, handle: Any) -> int:
        """The active clock event (throttle) reasons bit mask."""
        try:
            return int(self._fn("nvmlDeviceGetCurrentClocksEventReasons")(handle))
        except Exception as exc:  # drivers before 535 only have the old name
            if not is_stable_unsupported(exc):
                raise
        return int(self._fn("nvmlDeviceGetCurrentClocksThrottleReasons")(handle))

    def ecc_errors(self, handle: Any, error_type: str, counter: str) -> int:
        return int(
            self._fn("nvmlDeviceGetTotalEccErrors")(
                handle, _ECC_TYPES[error_type], _ECC_COUNTERS[counter]
            )
        )

    def retired_pages(self, handle: Any, cause: str) -> int:
        return len(self._fn("nvmlDeviceGetRetiredPages")(handle, _RETIREMENT_CAUSES[cause]))

    def retired_pages_pending(self, handle: Any) -> bool:
        return bool(int(self._fn("nvmlDeviceGetRetiredPagesPendingStatus")(handle)))

    def remapped_rows(self, handle: Any) -> RemappedRows:
        corr, unc, pending, failed = self._fn("nvmlDeviceGetRemappedRows")(handle)
        return RemappedRows(int(corr), int(unc), bool(pending), bool(failed))

    def pcie_replay(self, handle: Any) -> int:
        return int(self._fn("nvmlDeviceGetPcieReplayCounter")(handle))

    def pcie_throughput_bytes(self, handle: Any, direction: str) -> float:
        """Bytes/s over NVML's 20 ms window (NVML reports KB/s)."""
        return int(self._fn("nvmlDeviceGetPcieThroughput")(handle, _PCIE[direction])) * 1024.0

    def nvlink_max_links(self) -> int:
        return int(getattr(self.m, "NVML_NVLINK_MAX_LINKS", 18))

    def nvlink_active(self, handle: Any, link: int) -> bool:
        return bool(int(self._fn("nvmlDeviceGetNvLinkState")(handle, link)))

    def nvlink_error_counter(self) -> Callable[[Any, int, int], int]:
        """nvmlDeviceGetNvLinkErrorCounter(handle, link, counter) itself (it answers an int):
        a GPU's read calls it 90 times (18 links x 5 counters), without a wrapper each (4 %
        of bench/bench_gpu.py's collection, in instructions under callgrind)."""
        return self._fn("nvmlDeviceGetNvLinkErrorCounter")

    def fan_ratio(self, handle: Any) -> float:
        return int(self._fn("nvmlDeviceGetFanSpeed")(handle)) / 100.0

    def performance_state(self, handle: Any) -> int | None:
        state = int(self._fn("nvmlDeviceGetPerformanceState")(handle))
        return None if state == PSTATE_UNKNOWN else state

    # MIG
    def mig_enabled(self, handle: Any) -> bool:
        current, _pending = self._fn("nvmlDeviceGetMigMode")(handle)
        return int(current) == 1

    def max_mig_devices(self, handle: Any) -> int:
        return int(self._fn("nvmlDeviceGetMaxMigDeviceCount")(handle))

    def mig_handle(self, handle: Any, index: int) -> Any:
        return self._fn("nvmlDeviceGetMigDeviceHandleByIndex")(handle, index)

    def gpu_instance_id(self, handle: Any) -> int:
        return int(self._fn("nvmlDeviceGetGpuInstanceId")(handle))

    def compute_instance_id(self, handle: Any) -> int:
        return int(self._fn("nvmlDeviceGetComputeInstanceId")(handle))

    # GPM (GPU performance monitoring: Hopper and later, drivers R520 and later)
    def gpm_supported(self, handle: Any) -> bool:
        return bool(int(self._fn("nvmlGpmQueryDeviceSupport")(handle).isSupportedDevice))

    def gpm_sample_alloc(self) -> Any:
        return self._fn("nvmlGpmSampleAlloc")()

    def gpm_sample_free(self, sample: Any) -> None:
        self._fn("nvmlGpmSampleFree")(sample)

    def gpm_sample(self, handle: Any, sample: Any) -> Any:
        """Read the GPU's counters into `sample` (a `gpm_sample_alloc` buffer); returns it."""
        return self._fn("nvmlGpmSampleGet")(handle, sample)

    def gpm_mig_sample(self, handle: Any, gpu_instance: int, sample: Any) -> Any:
        """Read one MIG GPU instance's counters (`handle`: its parent GPU) into `sample`."""
        return self._fn("nvmlGpmMigSampleGet")(handle, gpu_instance, sample)

    def gpm_metrics(
        self, earlier: Any, later: Any, metric_ids: Sequence[int]
    ) -> tuple[dict[int, float], dict[int, int]]:
        """The metrics over the interval between two samples of one GPU or GPU instance:
        (metric id -> value as NVML gives it, metric id -> NVML error of those it could not
        compute). The request (c_nvmlGpmMetricsGet_t, room for every metric NVML knows: 19 KB)
        is made per call rather than kept per GPU and GPU instance."""
        request_type = getattr(self.m, "c_nvmlGpmMetricsGet_t", None)
        if request_type is None:
            raise MissingFunction("c_nvmlGpmMetricsGet_t")
        request = request_type()
        _set_field(request, "version", NVML_GPM_METRICS_GET_VERSION)
        _set_field(request, "numMetrics", len(metric_ids))
        _set_field(request, "sample1", earlier)
        _set_field(request, "sample2", later)
        metrics = _get_field(request, "metrics")
        for slot, metric_id in enumerate(metric_ids):
            _set_field(metrics[slot], "metricId", metric_id)
        self._fn("nvmlGpmMetricsGet")(request)
        values: dict[int, float] = {}
        errors: dict[int, int] = {}
        for slot, metric_id in enumerate(metric_ids):
            metric = metrics[slot]
            code = _get_field(metric, "nvmlReturn")
            if code:
                errors[metric_id] = code
            else:
                values[metric_id] = _get_field(metric, "value")
        return values, errors

    # processes
    def compute_processes(self, handle: Any) -> list[GpuProcess]:
        try:
            procs = self._fn("nvmlDeviceGetComputeRunningProcesses")(handle)
        except Exception as exc:  # an older driver without the _v3 call
            if not is_stable_unsupported(exc):
                raise
            procs = self._fn("nvmlDeviceGetComputeRunningProcesses_v2")(handle)
        out = []
        for proc in procs:
            used = getattr(proc, "usedGpuMemory", None)
            out.append(
                GpuProcess(
                    pid=int(proc.pid),
                    used_memory_bytes=(
                        None if used is None or int(used) == _NOT_AVAILABLE_U64 else int(used)
                    ),
                    gpu_instance_id=_instance_id(getattr(proc, "gpuInstanceId", None)),
                    compute_instance_id=_instance_id(getattr(proc, "computeInstanceId", None)),
                )
            )
        return out

    # events
    def event_set_create(self) -> Any:
        return self._fn("nvmlEventSetCreate")()

    def register_events(self, handle: Any, event_set: Any, mask: int) -> None:
        self._fn("nvmlDeviceRegisterEvents")(handle, mask, event_set)

    def event_wait(self, event_set: Any, timeout_ms: int) -> Event | None:
        """The next event, or None when none came within `timeout_ms`."""
        try:
            data = self._fn("nvmlEventSetWait")(event_set, timeout_ms)
        except Exception as exc:
            if error_code(exc) == NVML_ERROR_TIMEOUT:
                return None
            raise
        return Event(
            device_key=self.handle_key(data.device),
            event_type=int(data.eventType),
            data=int(data.eventData),
            gpu_instance_id=_instance_id(getattr(data, "gpuInstanceId", None)),
            compute_instance_id=_instance_id(getattr(data, "computeInstanceId", None)),
        )

    def event_set_free(self, event_set: Any) -> None:
        self._fn("nvmlEventSetFree")(event_set)


# -- what one scrape reads -----------------------------------------------------------------

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
ECC_TYPES = ("corrected", "uncorrected")
RETIREMENT_CAUSES = ("multiple_single_bit_ecc", "double_bit_ecc")


def reason_names(mask: int) -> list[str]:
    """Names of the set bits of an nvmlClocksEventReason mask (`bit_<n>` for unknown bits)."""
    names = []
    for bit in range(64):
        flag = 1 << bit
        if mask & flag:
            names.append(CLOCK_EVENT_REASONS.get(flag, f"bit_{bit}"))
    return names


class GpuLost(Exception):
    """A GPU stopped answering in the middle of its read."""


class NvmlInitError(Exception):
    """NVML is present but could not be initialised; retried with backoff."""


class _NoGpu(Exception):
    """NVML initialised but enumerates no GPU."""


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
    gpm_supported: bool | None = None  # None: not asked yet
    # GPM sample buffers of the GPU (key None) and of each MIG GPU instance (its id); only
    # the GPU's worker touches them
    gpm: dict[int | None, GpmSeries] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return str(self.index)


@dataclass
class GpmSeries:
    """The GPM samples of one GPU or MIG GPU instance: the last scrape's (`previous`) and a
    buffer to read the next one into (`spare`); the two swap every scrape."""

    metric_ids: tuple[int, ...]  # asked of nvmlGpmMetricsGet (less those it does not support)
    previous: Any = None  # None until the first sample
    spare: Any = None

    def buffers(self) -> list[Any]:
        return [b for b in (self.previous, self.spare) if b is not None]


class NvLink(NamedTuple):  # a tuple: 18 a GPU and scrape
    link: int
    active: bool
    errors: dict[str, int]  # NVLINK_ERROR_COUNTERS name → count, those the GPU answered


@dataclass(frozen=True)
class MigDevice:
    gpu_instance: int
    compute_instance: int
    uuid: str
    name: str
    memory: tuple[int, int] | None  # (used, total) bytes
    utilization: float | None  # where the driver reports it


class Profile(NamedTuple):
    """GPM metrics of a GPU or MIG GPU instance, each averaged over the interval between the
    previous scrape's sample and this scrape's: ratios 0-1 and bytes per second; None where
    NVML did not give the metric (the GPU lacks it, e.g. NVLink on a PCIe card). Fields in
    the order of GPM_METRICS."""

    sm_active: float | None = None  # SMs with at least one warp resident, over all SMs
    sm_occupancy: float | None = None  # resident warps / the maximum the SMs hold
    tensor_active: float | None = None  # any tensor core pipe active
    dram_active: float | None = None  # DRAM bandwidth used / its theoretical maximum
    fp64_active: float | None = None  # non-tensor FP64 pipe active
    fp32_active: float | None = None
    fp16_active: float | None = None
    pcie_transmit_bytes_per_second: float | None = None
    pcie_receive_bytes_per_second: float | None = None
    nvlink_transmit_bytes_per_second: float | None = None  # all links together
    nvlink_receive_bytes_per_second: float | None = None


@dataclass
class Reading:
    """What one scrape read from one GPU: None (or absent from a dict) where the GPU lacks it.
    A GPU that is down (`up` False, `error` says why) has no values."""

    device: Device
    up: bool = True
    error: str = ""
    utilization: tuple[float, float] | None = None  # (GPU, memory controller) busy ratios
    memory: tuple[int, int] | None = None  # (used, total) bytes
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    clocks_hertz: dict[str, float] = field(default_factory=dict)  # CLOCKS name → Hz
    clock_event_reasons: list[str] | None = None  # active reasons (`reason_names`)
    ecc_aggregate: dict[str, int] = field(default_factory=dict)  # ECC_TYPES name → count
    ecc_volatile: dict[str, int] = field(default_factory=dict)
    retired_pages: dict[str, int] = field(default_factory=dict)  # RETIREMENT_CAUSES → pages
    retired_pages_pending: bool | None = None
    remapped_rows: RemappedRows | None = None
    pcie_replay: int | None = None
    # from GPM over the interval since the last scrape, or NVML's 20 ms sample (legacy)
    pcie_transmit_bytes_per_second: float | None = None
    pcie_receive_bytes_per_second: float | None = None
    nvlinks: list[NvLink] = field(default_factory=list)
    fan_ratio: float | None = None
    performance_state: int | None = None
    mig_enabled: bool | None = None
    mig: list[MigDevice] = field(default_factory=list)
    processes: list[GpuProcess] | None = None
    profile: Profile | None = None  # GPM; None: no GPM, or the first sample
    mig_profiles: dict[int, Profile] = field(default_factory=dict)  # by GPU instance id


@dataclass(frozen=True)
class Snapshot:
    """One scrape of every GPU."""

    driver_version: str
    cuda_version: str
    nvml_version: str
    readings: list[Reading]  # in NVML index order
    xid_counts: dict[tuple[str, str, int], int]  # (gpu index, uuid, xid) → XIDs seen
    xid_watcher_up: bool  # the event thread runs with at least one GPU registered


@dataclass
class _Session:
    """One successful nvmlInit and what it found."""

    nv: Nvml
    driver_version: str
    cuda_version: str
    nvml_version: str
    devices: list[Device]
    watcher: XidWatcher | None = None


# How long one nvmlEventSetWait waits: the XID thread's only periodic wake-up (an event ends
# the wait at once). A wait inside NVML cannot be interrupted, so stopping the thread takes up
# to this long; `XidWatcher.stop` does not wait that long (it hands the rest of the teardown to
# the thread), so a long wait costs neither shutdown nor re-initialisation any time.
XID_WAIT_MS = 5000
# How long `XidWatcher.stop` waits for the thread before handing the teardown to it.
XID_STOP_GRACE_SECONDS = 0.25


class XidWatcher:
    """A thread that waits on an NVML event set and reports XID events."""

    def __init__(
        self,
        nv: Nvml,
        devices: list[Device],
        on_xid: Callable[[int, int], None],
        wait_ms: int = XID_WAIT_MS,
    ) -> None:
        self.nv = nv
        self.on_xid = on_xid
        self.wait_ms = wait_ms
        self.registered = 0
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ended = False  # the thread has freed the event set (or never started)
        self._then: Callable[[], None] | None = None  # run by the thread once it has ended
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
            self._ended = True

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
        with self._lock:
            self._ended = True
            then, self._then = self._then, None
        if then is not None:
            then()

    def _free(self) -> None:
        try:
            self.nv.event_set_free(self.event_set)
        except Exception as exc:
            log.debug("freeing the NVML event set failed", extra={"err": error_name(exc)})

    def stop(
        self, then: Callable[[], None] | None = None, timeout: float = XID_STOP_GRACE_SECONDS
    ) -> bool:
        """Ask the thread to stop and wait up to `timeout` for it. True when it has ended (the
        event set is freed). False when it is still inside nvmlEventSetWait (up to `wait_ms`,
        or stuck in a wedged driver): then `then` runs on the thread once the wait returns and
        the set is freed, which is where an nvmlShutdown that must not overlap the wait goes."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            if self._ended:
                return True
            self._then = then
            return False


class NvmlSource:
    """The GPUs of this node: `read()` once per scrape, `close()` at shutdown."""

    def __init__(
        self,
        *,
        loader: Callable[[], ModuleType] = load_pynvml,
        timeout: float = 4.0,
        xid: bool = True,
        processes: bool = True,
        gpm: bool = True,
        pcie_throughput: bool = False,
        backoff_initial: float = 5.0,
        backoff_max: float = 300.0,
        xid_wait_ms: int = XID_WAIT_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`gpm`: profiling metrics where the GPU has GPM. `pcie_throughput`: on GPUs without
        GPM (or with `gpm` off), PCIe throughput from nvmlDeviceGetPcieThroughput, whose 20 ms
        sample per direction the GPU's read waits for."""
        if timeout <= 0:
            raise ValueError("--collector.gpu.timeout must be positive")
        self.loader = loader
        self.timeout = timeout
        self.xid_enabled = xid
        self.processes_enabled = processes
        self.gpm_enabled = gpm
        self.pcie_throughput = pcie_throughput
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.xid_wait_ms = xid_wait_ms
        self.clock = clock
        # NVML work runs on persistent per-key workers (thread names nvml-<key>: nvml-gpu0,
        # nvml-count, nvml-init) rather than a new thread per GPU and scrape. Measured on
        # bench/bench_gpu.py's scenario under callgrind: 48.2 M instructions per collection
        # against 49.1 M with a thread per read; the rest of the saving, thread creation in
        # the kernel, is not counted there (runtime/singleflight.py: about 70 µs a thread).
        self.flights = SingleFlight("nvml")
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

    def _call(self, key: Hashable, fn: Callable[[], T], timeout: float) -> T:
        """Run `fn` on `key`'s worker within `timeout` seconds; raises NvmlTimeout (also when
        an earlier call for `key` is still stuck: that one is not joined), or what `fn`
        raised."""
        flight = self.flights.submit(key, fn)
        if flight.joined:
            raise NvmlTimeout(f"{key}: an earlier NVML call has not returned yet")
        wait_futures([flight.future], timeout=max(0.0, timeout))
        if not flight.future.done():
            raise NvmlTimeout(f"{key}: NVML call took longer than {timeout:g}s")
        return flight.future.result()

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
            session = self._call("init", self._open, self.timeout)
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
                session.watcher = self._call(
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
        self._teardown(session)
        self._next_init = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)
        self._init_error = f"NVML re-initialising after: {reason}"

    def close(self) -> None:
        """Free the GPM samples, stop the XID thread, shut NVML down, let the workers exit."""
        session, self._session = self._session, None
        if session is not None:
            self._teardown(session)
        self.flights.close()

    def _teardown(self, session: _Session) -> None:
        """End a session. nvmlShutdown must not run while the XID thread waits inside NVML:
        when the thread does not stop within its grace, it shuts NVML down itself once its
        wait returns (NVML counts nvmlInit/nvmlShutdown pairs, so a new session may start
        meanwhile). Neither shutdown nor a re-initialisation waits for the XID wait."""
        self._free_gpm_samples(session)
        watcher = session.watcher
        if watcher is not None and not watcher.stop(then=partial(_shutdown_quietly, session.nv)):
            log.debug("XID event thread in its NVML wait; it shuts NVML down when that returns")
            return
        try:
            self._call("shutdown", session.nv.shutdown, min(self.timeout, 1.0))
        except Exception as exc:
            log.debug("nvmlShutdown failed", extra={"err": _describe(exc)})

    def _free_gpm_samples(self, session: _Session) -> None:
        """Free every GPU's GPM buffers on its own worker (the one thread that uses them). A
        GPU whose read is still in flight (a wedged driver) keeps its buffers: freeing one
        under a running call would be worse than the few KiB left behind."""
        flights = [
            self.flights.submit(f"gpu{d.index}", partial(self._drop_gpm, session.nv, d))
            for d in session.devices
            if d.gpm
        ]
        wait_futures([f.future for f in flights if not f.joined], timeout=min(self.timeout, 1.0))

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
        """XIDs seen since start, by (gpu index, uuid, xid)."""
        with self._lock:
            return dict(self._xid_counts)

    # -- one scrape ------------------------------------------------------------------
    def read(self) -> Snapshot | None:
        """Every GPU, read within the time budget; None on a node without NVML or GPUs.
        Raises NvmlInitError while NVML fails to initialise (retried with backoff)."""
        session = self._ensure_session()
        if session is None:
            return None
        readings = self._read_all(session, time.monotonic() + self.timeout)
        watcher = session.watcher
        return Snapshot(
            driver_version=session.driver_version,
            cuda_version=session.cuda_version,
            nvml_version=session.nvml_version,
            readings=readings,
            xid_counts=self.xid_counts(),
            xid_watcher_up=watcher is not None and watcher.running,
        )

    def _read_all(self, session: _Session, deadline: float) -> list[Reading]:
        nv = session.nv
        try:
            count = self._call("count", nv.device_count, deadline - time.monotonic())
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

        flights = [
            self.flights.submit(f"gpu{device.index}", partial(self._read, nv, device))
            for device in session.devices
        ]
        wait_futures(
            [f.future for f in flights if not f.joined],
            timeout=max(0.0, deadline - time.monotonic()),
        )
        readings = []
        for device, flight in zip(session.devices, flights, strict=True):
            future = flight.future
            if flight.joined:  # the read of an earlier scrape is still stuck: not joined
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

        Raises GpuLost when the GPU stopped answering. A call that answers a stable "not
        supported" is remembered in `device.skip` and not made again while the session lasts.
        Measured (bench/bench_gpu.py's 8 fake GPUs, here without NVLink, fan or retired
        pages, instructions per collection under callgrind): 14.0 M with the memo, 34.6 M
        without it (253 instead of 565 NVML calls; a real driver adds an ioctl per call)."""
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
        """Everything about one GPU (runs on its worker)."""
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
            # its GPM samples predate the loss: the interval to the next one would span it
            self._drop_gpm(nv, device)
            return Reading(device, up=False, error=str(exc))

    def _read_device(self, nv: Nvml, device: Device) -> Reading:
        """The calls in a fixed order (a GPU lost part-way answers the first ones)."""
        h = device.handle
        r = Reading(device)
        q = self._query
        r.utilization = q(device, "utilization", nv.utilization, h)
        r.memory = q(device, "memory", nv.memory, h)
        r.temperature_celsius = q(device, "temperature", nv.temperature_celsius, h)
        r.power_watts = q(device, "power", nv.power_watts, h)
        r.power_limit_watts = q(device, "power_limit", nv.power_limit_watts, h)
        r.energy_joules = q(device, "energy", nv.energy_joules, h)
        for clock, key in _CLOCK_KEYS:
            _put(r.clocks_hertz, clock, q(device, key, nv.clock_hertz, h, clock))
        reasons = q(device, "clock_event_reasons", nv.clock_event_reasons, h)
        r.clock_event_reasons = None if reasons is None else reason_names(reasons)
        for kind, aggregate_key, volatile_key in _ECC_KEYS:
            aggregate = q(device, aggregate_key, nv.ecc_errors, h, kind, "aggregate")
            volatile = q(device, volatile_key, nv.ecc_errors, h, kind, "volatile")
            _put(r.ecc_aggregate, kind, aggregate)
            _put(r.ecc_volatile, kind, volatile)
        for cause, key in _RETIRED_KEYS:
            _put(r.retired_pages, cause, q(device, key, nv.retired_pages, h, cause))
        r.retired_pages_pending = q(device, "retired_pending", nv.retired_pages_pending, h)
        r.remapped_rows = q(device, "remapped_rows", nv.remapped_rows, h)
        r.pcie_replay = q(device, "pcie_replay", nv.pcie_replay, h)
        gpm = self.gpm_enabled and self._gpm_available(nv, device)
        if self.pcie_throughput and not gpm:  # waits 20 ms per direction: only when asked
            tx = q(device, "pcie_tx", nv.pcie_throughput_bytes, h, "transmit")
            r.pcie_transmit_bytes_per_second = tx
            rx = q(device, "pcie_rx", nv.pcie_throughput_bytes, h, "receive")
            r.pcie_receive_bytes_per_second = rx
        error_count = q(device, "nvlink_error_counter", nv.nvlink_error_counter)
        for link, state_key, counters in _nvlink_calls(nv.nvlink_max_links()):
            if state_key in device.skip:  # a link this GPU lacks
                continue
            active = q(device, state_key, nv.nvlink_active, h, link)
            if active is None:
                continue
            errors: dict[str, int] = {}
            if error_count is not None:
                for counter, code, key in counters:
                    value = q(device, key, error_count, h, link, code)
                    if value is not None:
                        errors[counter] = value
            r.nvlinks.append(NvLink(link, active, errors))
        r.fan_ratio = q(device, "fan", nv.fan_ratio, h)
        r.performance_state = q(device, "pstate", nv.performance_state, h)
        r.mig_enabled = q(device, "mig_mode", nv.mig_enabled, h)
        if r.mig_enabled:
            r.mig = self._read_mig(nv, device)
        if gpm:
            self._read_profiles(nv, device, r)
        if self.processes_enabled:
            r.processes = q(device, "processes", nv.compute_processes, h, cache=False)
        return r

    def _read_mig(self, nv: Nvml, device: Device) -> list[MigDevice]:
        q = self._query
        out = []
        slots = q(device, "mig_max_devices", nv.max_mig_devices, device.handle) or 0
        for slot in range(slots):
            keys = _mig_keys(slot)
            mh = q(device, keys.handle, nv.mig_handle, device.handle, slot, cache=False)
            if mh is None:
                continue  # an empty slot answers NotFound
            gi = q(device, keys.gi, nv.gpu_instance_id, mh, cache=False)
            ci = q(device, keys.ci, nv.compute_instance_id, mh, cache=False)
            if gi is None or ci is None:
                continue
            mig_uuid = q(device, keys.uuid, nv.uuid, mh, cache=False) or ""
            name = q(device, keys.name, nv.name, mh, cache=False) or ""
            memory = q(device, keys.memory, nv.memory, mh, cache=False)
            util = q(device, keys.utilization, nv.utilization, mh, cache=False)
            utilization = None if util is None else util[0]
            out.append(MigDevice(gi, ci, mig_uuid, name, memory, utilization))
        return out

    # -- GPM ----------------------------------------------------------------------------
    def _gpm_available(self, nv: Nvml, device: Device) -> bool:
        """Whether the GPU has GPM; asked once per session. A GPU without it is logged once
        per model and reason (at info: a normal state of pre-Hopper GPUs)."""
        if device.gpm_supported is not None:
            return device.gpm_supported
        try:
            supported = nv.gpm_supported(device.handle)
            reason = "the GPU has no GPM (Hopper and later have it)"
        except Exception as exc:
            kind = classify(exc)
            if kind in (ErrorKind.LOST, ErrorKind.GLOBAL, ErrorKind.ABSENT):
                raise GpuLost(f"gpm_support: {_describe(exc)}") from exc
            if not is_stable_unsupported(exc):  # passing: asked again next scrape
                self._once.warning(
                    (device.uuid, "gpm_support"),
                    "NVML call failed; metric omitted",
                    gpu=device.label,
                    uuid=device.uuid,
                    call="gpm_support",
                    err=_describe(exc),
                )
                return False
            supported = False
            reason = f"the driver or nvidia-ml-py has no GPM ({error_name(exc)})"
        device.gpm_supported = supported
        if not supported:
            self._once.info(
                ("gpm", device.name, reason),
                "GPU profiling metrics (GPM) not available; omitted",
                gpu=device.label,
                model=device.name,
                reason=reason,
                pcie_throughput="NVML's 20 ms sample"
                if self.pcie_throughput
                else "omitted (--collector.gpu.pcie-throughput reads NVML's 20 ms sample)",
            )
        return supported

    def _read_profiles(self, nv: Nvml, device: Device, r: Reading) -> None:
        """This scrape's GPM samples of the GPU and of each MIG GPU instance, and each one's
        metrics since the previous scrape's sample (none at the first)."""
        h = device.handle
        r.profile = self._profile(nv, device, None, partial(nv.gpm_sample, h), GPM_METRICS)
        if r.profile is not None:
            r.pcie_transmit_bytes_per_second = r.profile.pcie_transmit_bytes_per_second
            r.pcie_receive_bytes_per_second = r.profile.pcie_receive_bytes_per_second
        instances = sorted({m.gpu_instance for m in r.mig})
        for gi in instances:
            sample = partial(nv.gpm_mig_sample, h, gi)
            profile = self._profile(nv, device, gi, sample, MIG_GPM_METRICS)
            if profile is not None:
                r.mig_profiles[gi] = profile
        for gone in set(device.gpm) - {None, *instances}:  # a GPU instance was destroyed
            self._free_series(nv, device, device.gpm.pop(gone))

    def _profile(
        self,
        nv: Nvml,
        device: Device,
        key: int | None,
        sample: Callable[[Any], Any],
        fields: dict[str, tuple[int, float]],
    ) -> Profile | None:
        """Sample one GPU (`key` None) or GPU instance into its spare buffer and compute the
        metrics against the previous sample; the new sample becomes the previous one."""
        series = device.gpm.get(key)
        if series is None:
            ids = tuple(metric_id for metric_id, _ in fields.values())
            series = device.gpm[key] = GpmSeries(ids)
        q = self._query
        if series.spare is None:
            series.spare = q(device, "gpm_alloc", nv.gpm_sample_alloc, cache=False)
            if series.spare is None:
                return None
        call = "gpm_sample" if key is None else f"gpm_mig_sample_{key}"
        # the GPU's own sample answers the same all session; a GPU instance may come and go
        if q(device, call, sample, series.spare, cache=key is None) is None:
            return None
        earlier, series.previous, series.spare = series.previous, series.spare, series.previous
        if earlier is None or not series.metric_ids:
            return None  # the first sample: the next scrape has an interval
        # a failed computation loses that one interval; the next has the samples it needs
        ids, later = series.metric_ids, series.previous
        got = q(device, "gpm_metrics", nv.gpm_metrics, earlier, later, ids, cache=False)
        if got is None:
            return None
        values, errors = got
        for metric_id, code in errors.items():
            self._once.debug(
                (device.uuid, "gpm_metric", key, metric_id),
                "GPM metric not given by this GPU; omitted",
                gpu=device.label,
                uuid=device.uuid,
                gpu_instance=key,
                metric_id=metric_id,
                err=code,
            )
            if code in STABLE_UNSUPPORTED:  # not asked again this session
                series.metric_ids = tuple(i for i in series.metric_ids if i != metric_id)
        return Profile(
            *(
                None if (value := values.get(metric_id)) is None else value * factor
                for metric_id, factor in fields.values()
            )
        )

    def _drop_gpm(self, nv: Nvml, device: Device) -> None:
        """Free the GPU's GPM buffers (on its worker): the next sample starts afresh."""
        while device.gpm:
            self._free_series(nv, device, device.gpm.popitem()[1])

    def _free_series(self, nv: Nvml, device: Device, series: GpmSeries) -> None:
        for buffer in series.buffers():
            try:
                nv.gpm_sample_free(buffer)
            except Exception as exc:
                log.debug(
                    "freeing a GPM sample failed",
                    extra={"gpu": device.label, "err": _describe(exc)},
                )
        series.previous = series.spare = None


# The memo keys of `_query` (device.skip, the once-logs) of calls made per clock, ECC type,
# link or MIG slot, made once rather than formatted for each call of each scrape (3 % of
# bench/bench_gpu.py's collection, in instructions under callgrind).
_CLOCK_KEYS = tuple((clock, f"clock_{clock}") for clock in CLOCKS)
_ECC_KEYS = tuple((kind, f"ecc_{kind}_aggregate", f"ecc_{kind}_volatile") for kind in ECC_TYPES)
_RETIRED_KEYS = tuple((cause, f"retired_{cause}") for cause in RETIREMENT_CAUSES)


class _MigKeys(NamedTuple):
    handle: str
    gi: str
    ci: str
    uuid: str
    name: str
    memory: str
    utilization: str


@functools.cache
def _mig_keys(slot: int) -> _MigKeys:
    return _MigKeys(*(f"mig_{call}_{slot}" for call in _MigKeys._fields))


@functools.cache
def _nvlink_calls(links: int) -> list[tuple[int, str, list[tuple[str, int, str]]]]:
    """Per link: (link, memo key of its state call, [(counter, NVML counter, memo key)])."""
    return [
        (
            link,
            f"nvlink_state_{link}",
            [(name, code, f"nvlink_{name}_{link}") for name, code in NVLINK_ERROR_COUNTERS.items()],
        )
        for link in range(links)
    ]


def _shutdown_quietly(nv: Nvml) -> None:
    try:
        nv.shutdown()
    except Exception as exc:
        log.debug("nvmlShutdown failed", extra={"err": _describe(exc)})


def _put(into: dict[str, T], key: str, value: T | None) -> None:
    if value is not None:
        into[key] = value


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
