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

XID errors are counted by a background thread (`XidWatcher`: `nvmlEventSetCreate`,
`nvmlDeviceRegisterEvents` with the XID-critical mask, `nvmlEventSetWait`), per GPU and XID;
it outlives GPUs that stop answering and stops in `close()`. Its counts are kept for a lost
GPU (XID 79, "fallen off the bus", is what explains the loss).
"""

from __future__ import annotations

import ctypes
import enum
import importlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

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

    def nvlink_errors(self, handle: Any, link: int, counter: str) -> int:
        return int(
            self._fn("nvmlDeviceGetNvLinkErrorCounter")(
                handle, link, NVLINK_ERROR_COUNTERS[counter]
            )
        )

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

    @property
    def label(self) -> str:
        return str(self.index)


@dataclass(frozen=True)
class NvLink:
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
    pcie_transmit_bytes_per_second: float | None = None
    pcie_receive_bytes_per_second: float | None = None
    nvlinks: list[NvLink] = field(default_factory=list)
    fan_ratio: float | None = None
    performance_state: int | None = None
    mig_enabled: bool | None = None
    mig: list[MigDevice] = field(default_factory=list)
    processes: list[GpuProcess] | None = None


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


class NvmlSource:
    """The GPUs of this node: `read()` once per scrape, `close()` at shutdown."""

    def __init__(
        self,
        *,
        loader: Callable[[], ModuleType] = load_pynvml,
        timeout: float = 4.0,
        xid: bool = True,
        processes: bool = True,
        pcie_throughput: bool = True,
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
        if session.watcher is not None:
            session.watcher.stop()
        try:
            self._call("shutdown", session.nv.shutdown, min(self.timeout, 1.0))
        except Exception as exc:
            log.debug("nvmlShutdown failed", extra={"err": _describe(exc)})
        self._next_init = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)
        self._init_error = f"NVML re-initialising after: {reason}"

    def close(self) -> None:
        """Stop the XID thread, shut NVML down, and let the workers exit."""
        session, self._session = self._session, None
        if session is not None:
            if session.watcher is not None and not session.watcher.stop():
                log.warning("XID event thread did not stop (NVML wait stuck)")
            try:
                self._call("shutdown", session.nv.shutdown, min(self.timeout, 1.0))
            except Exception as exc:
                log.debug("nvmlShutdown failed", extra={"err": _describe(exc)})
        self.flights.close()

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
        for clock in CLOCKS:
            _put(r.clocks_hertz, clock, q(device, f"clock_{clock}", nv.clock_hertz, h, clock))
        reasons = q(device, "clock_event_reasons", nv.clock_event_reasons, h)
        r.clock_event_reasons = None if reasons is None else reason_names(reasons)
        for kind in ECC_TYPES:
            aggregate = q(device, f"ecc_{kind}_aggregate", nv.ecc_errors, h, kind, "aggregate")
            volatile = q(device, f"ecc_{kind}_volatile", nv.ecc_errors, h, kind, "volatile")
            _put(r.ecc_aggregate, kind, aggregate)
            _put(r.ecc_volatile, kind, volatile)
        for cause in RETIREMENT_CAUSES:
            pages = q(device, f"retired_{cause}", nv.retired_pages, h, cause)
            _put(r.retired_pages, cause, pages)
        r.retired_pages_pending = q(device, "retired_pending", nv.retired_pages_pending, h)
        r.remapped_rows = q(device, "remapped_rows", nv.remapped_rows, h)
        r.pcie_replay = q(device, "pcie_replay", nv.pcie_replay, h)
        if self.pcie_throughput:
            tx = q(device, "pcie_tx", nv.pcie_throughput_bytes, h, "transmit")
            r.pcie_transmit_bytes_per_second = tx
            rx = q(device, "pcie_rx", nv.pcie_throughput_bytes, h, "receive")
            r.pcie_receive_bytes_per_second = rx
        for link in range(nv.nvlink_max_links()):
            active = q(device, f"nvlink_state_{link}", nv.nvlink_active, h, link)
            if active is None:
                continue
            errors: dict[str, int] = {}
            for counter in NVLINK_ERROR_COUNTERS:
                value = q(device, f"nvlink_{counter}_{link}", nv.nvlink_errors, h, link, counter)
                _put(errors, counter, value)
            r.nvlinks.append(NvLink(link, active, errors))
        r.fan_ratio = q(device, "fan", nv.fan_ratio, h)
        r.performance_state = q(device, "pstate", nv.performance_state, h)
        r.mig_enabled = q(device, "mig_mode", nv.mig_enabled, h)
        if r.mig_enabled:
            r.mig = self._read_mig(nv, device)
        if self.processes_enabled:
            r.processes = q(device, "processes", nv.compute_processes, h, cache=False)
        return r

    def _read_mig(self, nv: Nvml, device: Device) -> list[MigDevice]:
        q = self._query
        out = []
        slots = q(device, "mig_max_devices", nv.max_mig_devices, device.handle) or 0
        for slot in range(slots):
            mh = q(device, f"mig_handle_{slot}", nv.mig_handle, device.handle, slot, cache=False)
            if mh is None:
                continue  # an empty slot answers NotFound
            gi = q(device, f"mig_gi_{slot}", nv.gpu_instance_id, mh, cache=False)
            ci = q(device, f"mig_ci_{slot}", nv.compute_instance_id, mh, cache=False)
            if gi is None or ci is None:
                continue
            mig_uuid = q(device, f"mig_uuid_{slot}", nv.uuid, mh, cache=False) or ""
            name = q(device, f"mig_name_{slot}", nv.name, mh, cache=False) or ""
            memory = q(device, f"mig_memory_{slot}", nv.memory, mh, cache=False)
            util = q(device, f"mig_utilization_{slot}", nv.utilization, mh, cache=False)
            utilization = None if util is None else util[0]
            out.append(MigDevice(gi, ci, mig_uuid, name, memory, utilization))
        return out


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
