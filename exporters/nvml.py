"""The NVML boundary: load `pynvml`, give its calls types, classify its errors, bound their time.

`pynvml` (nvidia-ml-py) is imported here and nowhere else, at call time, so tests can put a
fake module with the same function names in `sys.modules["pynvml"]` (or hand one to
`load_pynvml`'s caller). Every method of `Nvml` is one NVML call turned into plain Python
values in base units (bytes, watts, joules, hertz, ratios 0-1).

Errors are sorted into the few kinds a collector acts on (`classify`):

| kind | NVML errors | what the GPU collector does |
|---|---|---|
| `ABSENT` | LibraryNotFound, DriverNotLoaded, no `pynvml` | a CPU-only node: no GPU series, up = 1 |
| `UNSUPPORTED` | NotSupported, FunctionNotFound, InvalidArgument, NotFound, ... | omit that metric |
| `LOST` | GpuIsLost, Unknown, Timeout, ResetRequired, IrqIssue, our own time budget | GPU up = 0 |
| `GLOBAL` | Uninitialized, LibRmVersionMismatch | re-initialise NVML |
| `OTHER` | NoPermission, CorruptedInforom, Memory, ... | omit that metric, warn once |

A wedged driver blocks inside the C call, and a thread blocked there cannot be interrupted.
`TimedRunner` therefore runs NVML work on daemon threads and waits at most a budget; work
for a key (one GPU, "system") that is still stuck is not started again, so a wedged GPU
costs one thread, not one per scrape.
"""

from __future__ import annotations

import ctypes
import enum
import importlib
import threading
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

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


# -- time budget ---------------------------------------------------------------------------


class TimedRunner:
    """Runs callables on daemon threads; at most one in flight per key."""

    def __init__(self, thread_prefix: str = "nvml") -> None:
        self._prefix = thread_prefix
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, Future[Any]] = {}

    def start(self, key: Hashable, fn: Callable[[], T]) -> Future[T] | None:
        """Run `fn` on a new daemon thread; None if work for `key` is still running."""
        with self._lock:
            running = self._inflight.get(key)
            if running is not None and not running.done():
                return None
            future: Future[T] = Future()
            self._inflight[key] = future

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=run, name=f"{self._prefix}-{key}", daemon=True).start()
        return future

    def call(self, key: Hashable, fn: Callable[[], T], timeout: float) -> T:
        """Run `fn` under `timeout` seconds; raises NvmlTimeout, or what `fn` raised."""
        future = self.start(key, fn)
        if future is None:
            raise NvmlTimeout(f"{key}: an earlier NVML call has not returned yet")
        wait_futures([future], timeout=timeout)
        if not future.done():
            raise NvmlTimeout(f"{key}: NVML call took longer than {timeout:g}s")
        return future.result()

    @staticmethod
    def wait(futures: Iterable[Future[Any]], timeout: float) -> None:
        wait_futures(list(futures), timeout=max(0.0, timeout))


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
