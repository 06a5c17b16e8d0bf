"""A fake `pynvml` module: the nvidia-ml-py API over simulated GPUs, for tests and benchmarks.

`FakeNvml(gpus).module` is a module object to put in `sys.modules["pynvml"]` (the import
boundary the GPU collector loads through). It has:

- every public name of the installed nvidia-ml-py: its constants, its structures and its
  real exception classes (`pynvml.NVMLError_GpuIsLost` is the real class, raised through
  the real `NVMLError(code)` factory);
- for each `nvml*` function the fake implements, a function with the same name and
  parameters returning the same types as the real one (ctypes structures such as
  `c_nvmlUtilization_t`, `c_nvmlMemory_v2_t`, `nvmlPciInfo_t`, `c_nvmlEventData_t`, device
  handles of type `c_nvmlDevice_t`, `nvmlFriendlyObject` process records, plain ints/strs);
- for every other `nvml*` function, a stub raising `NVMLError_FunctionNotFound`, as the
  real binding does when the driver's library lacks the symbol.

Faults: per GPU `not_supported` (function names answering NotSupported), `errors`
(function name → NVML error code), `lost` (every call answers GpuIsLost), `lose_after`
(becomes lost after that many more calls: a GPU lost mid-scrape), `hang` (calls block until
the event is set: a wedged driver); for the library `init_errors` (codes successive
`nvmlInit` calls raise), `library_missing`; events through `xid()` and `event_error()`.

GPM (GPU performance monitoring), as nvidia-ml-py exposes it: `nvmlGpmSampleAlloc` returns an
opaque `c_nvmlGpmSample_t` buffer; `nvmlGpmSampleGet(device, sample)` and
`nvmlGpmMigSampleGet(parent device, gpu instance id, sample)` read a GPU's (GPU instance's)
cumulative counters into it; `nvmlGpmMetricsGet(c_nvmlGpmMetricsGet_t)` fills each requested
`metrics[i]` with the average over the interval between `sample1` and `sample2` (percent, or
MiB/s for PCIe and NVLink) and a per-metric `nvmlReturn` (NotSupported for a metric the device
does not count); `nvmlGpmQueryDeviceSupport` answers `isSupportedDevice` 0 on a GPU without
GPM (pre-Hopper: `FakeGpu.gpm_supported = False`), where the sample calls answer NotSupported.
The counters integrate each GPU's `gpm` rates (metric id → value) over `gpm_clock` time, so a
metric is the time-weighted mean of the rates over the interval; a GPU that is lost (or
`reset_gpu()`) restarts its counters from zero, as a reset GPU does. Freeing a sample twice
(or using a freed one) answers InvalidArgument, the documented return for an invalid sample
("NVML_ERROR_INVALID_ARGUMENT if an invalid pointer is provided"); the real C library is not
guaranteed to notice. The fake's own choices where nvml.h says nothing: InvalidArgument for
`nvmlGpmSampleGet` on a MIG device handle, for `nvmlGpmMigSampleGet` outside MIG mode, for two
samples of different devices or not in time order, and for an unknown metric id; NotFound for
a GPU instance id that does not exist; MIG GPU instances count the SM and DRAM metrics only.
"""

from __future__ import annotations

import ctypes
import inspect
import queue
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pynvml as real

NVMLError = real.NVMLError

# Pure helpers of the real module that the fake keeps as they are.
_PASS_THROUGH = {"nvmlStructToFriendlyObject", "nvmlExceptionClass"}


def nvml_error(code: int) -> Exception:
    """The real pynvml exception for an NVML return code (e.g. NVMLError_GpuIsLost)."""
    return NVMLError(code)  # type: ignore[no-any-return]


# GPM metric ids (pynvml.NVML_GPM_METRIC_*) the fake counts
GPM_GRAPHICS = real.NVML_GPM_METRIC_GRAPHICS_UTIL
GPM_SM = real.NVML_GPM_METRIC_SM_UTIL
GPM_OCCUPANCY = real.NVML_GPM_METRIC_SM_OCCUPANCY
GPM_TENSOR = real.NVML_GPM_METRIC_ANY_TENSOR_UTIL
GPM_DRAM = real.NVML_GPM_METRIC_DRAM_BW_UTIL
GPM_FP64 = real.NVML_GPM_METRIC_FP64_UTIL
GPM_FP32 = real.NVML_GPM_METRIC_FP32_UTIL
GPM_FP16 = real.NVML_GPM_METRIC_FP16_UTIL
GPM_PCIE_TX = real.NVML_GPM_METRIC_PCIE_TX_PER_SEC
GPM_PCIE_RX = real.NVML_GPM_METRIC_PCIE_RX_PER_SEC
GPM_NVLINK_RX = real.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC
GPM_NVLINK_TX = real.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC


def _gpu_gpm() -> dict[int, float]:
    """An H100 at work: percent, and MiB/s for PCIe (the same bytes as `pcie_kbps`) and NVLink."""
    return {
        GPM_GRAPHICS: 87.0,
        GPM_SM: 62.0,
        GPM_OCCUPANCY: 31.0,
        GPM_TENSOR: 45.0,
        GPM_DRAM: 38.0,
        GPM_FP64: 0.5,
        GPM_FP32: 12.0,
        GPM_FP16: 3.0,
        GPM_PCIE_TX: 1_500_000 / 1024,
        GPM_PCIE_RX: 2_500_000 / 1024,
        GPM_NVLINK_RX: 20_000.0,
        GPM_NVLINK_TX: 18_000.0,
    }


@dataclass
class FakeMig:
    """One MIG device (GPU instance + compute instance) of a FakeGpu."""

    gpu_instance_id: int
    compute_instance_id: int
    uuid: str
    name: str
    memory_total: int
    memory_used: int
    gpm: dict[int, float] = field(default_factory=dict)  # the GPU instance's GPM rates


@dataclass
class FakeProcess:
    pid: int
    used_memory: int | None  # None: NVML_VALUE_NOT_AVAILABLE
    gpu_instance_id: int = 0xFFFFFFFF
    compute_instance_id: int = 0xFFFFFFFF


@dataclass
class FakeGpu:
    """A simulated GPU; defaults look like an H100 SXM5 at work."""

    index: int
    uuid: str = ""
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = ""
    utilization_gpu: int = 87  # percent
    utilization_memory: int = 41
    memory_total: int = 85_520_809_984
    memory_reserved: int = 566_755_328
    memory_used: int = 42_949_672_960
    temperature: int = 63  # celsius
    power_mw: int = 512_345
    power_limit_mw: int = 700_000
    energy_mj: int = 123_456_789_012
    clocks_mhz: dict[int, int] = field(
        default_factory=lambda: {0: 1980, 1: 1980, 2: 2619, 3: 1755}
    )  # NVML_CLOCK_GRAPHICS, _SM, _MEM, _VIDEO
    clock_reasons: int = 0x4 | 0x20  # sw power cap + sw thermal slowdown
    ecc: dict[tuple[int, int], int] = field(
        default_factory=lambda: {(0, 0): 3, (1, 0): 0, (0, 1): 17, (1, 1): 1}
    )  # (error type, counter type) -> count
    retired_pages: dict[int, list[int]] = field(
        default_factory=lambda: {0: [0x1000, 0x2000], 1: [0x3000]}
    )
    retired_pending: int = 0
    remapped_rows: tuple[int, int, int, int] = (2, 1, 0, 0)
    pcie_replay: int = 5
    pcie_kbps: dict[int, int] = field(default_factory=lambda: {0: 1_500_000, 1: 2_500_000})
    nvlinks: int = 18
    nvlink_down: set[int] = field(default_factory=set)
    nvlink_errors: dict[int, int] = field(
        default_factory=lambda: {0: 4, 1: 1, 2: 0, 3: 2, 4: 0}
    )  # per counter, the same on each link plus the link number
    fan_percent: int = 0
    pstate: int = 0
    mig_mode: int = 0
    mig: list[FakeMig | None] = field(default_factory=list)  # slots; None: empty
    processes: list[FakeProcess] = field(default_factory=list)
    gpm_supported: bool = True  # Hopper and later
    gpm: dict[int, float] = field(default_factory=_gpu_gpm)  # GPM metric id -> rate
    # faults
    not_supported: set[str] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)
    lost: bool = False
    lose_after: int | None = None
    hang: threading.Event | None = None

    def __post_init__(self) -> None:
        if not self.uuid:
            self.uuid = f"GPU-{self.index:08x}-1111-2222-3333-{self.index:012x}"
        if not self.pci_bus_id:
            self.pci_bus_id = f"00000000:{0x18 + 0x10 * self.index:02X}:00.0"

    def enable_mig(self, instances: int = 3, slots: int = 7) -> None:
        """MIG mode with `instances` 1g.10gb devices in the first slots of `slots`."""
        self.mig_mode = 1
        self.mig = [
            FakeMig(
                gpu_instance_id=7 + i,
                compute_instance_id=0,
                uuid=f"MIG-{self.index:02x}{i:02x}aaaa-bbbb-cccc-dddd-{i:012x}",
                name="NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                memory_total=10_200_547_328,
                memory_used=1_000_000_000 * (i + 1),
                gpm={
                    GPM_SM: 10.0 * (i + 1),
                    GPM_OCCUPANCY: 5.0 * (i + 1),
                    GPM_TENSOR: 4.0 * (i + 1),
                    GPM_DRAM: 3.0 * (i + 1),
                    GPM_FP64: 0.0,
                    GPM_FP32: 2.0 * (i + 1),
                    GPM_FP16: 1.0,
                },
            )
            if i < instances
            else None
            for i in range(slots)
        ]
        self.not_supported |= {"nvmlDeviceGetUtilizationRates@mig"}


class FakeNvml:
    """Simulated NVML: `module` is the fake `pynvml`."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        driver_version: str = "550.54.15",
        cuda_version: int = 12040,
        nvml_version: str = "12.550.54.15",
    ) -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.nvml_version = nvml_version
        self.library_missing = False
        self.init_errors: list[int] = []
        self.init_hang: threading.Event | None = None
        self.refcount = 0
        self.calls: Counter[str] = Counter()
        self.gpu_calls: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()
        self._keep: list[Any] = []  # buffers behind handles, kept alive
        self._handles: dict[int, Any] = {}  # pointer value -> FakeGpu | (FakeGpu, slot)
        self._gpu_handle: dict[int, Any] = {}
        self._mig_handle: dict[tuple[int, int], Any] = {}
        self._event_sets: dict[int, dict[int, int]] = {}  # set -> {gpu index: mask}
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.gpm_clock: Callable[[], float] = time.monotonic
        self._gpm_samples: dict[int, _GpmSample | None] = {}  # allocated; None: not read yet
        # (gpu index, gpu instance or None) -> (time, cumulative counters) at the last read
        self._gpm_counters: dict[tuple[int, int | None], tuple[float, dict[int, float]]] = {}
        for gpu in gpus:
            self._gpu_handle[gpu.index] = self._new_handle(real.c_nvmlDevice_t, gpu)
        self.module = self._build_module()

    # -- test controls -------------------------------------------------------------------
    def xid(self, gpu_index: int, xid: int, gpu_instance: int = 0xFFFFFFFF) -> None:
        """Queue an XID event from a GPU (delivered to event sets it is registered in)."""
        self._events.put(("xid", (gpu_index, xid, gpu_instance)))

    def event_error(self, code: int) -> None:
        """Make the next nvmlEventSetWait raise this NVML error."""
        self._events.put(("error", code))

    def handle(self, gpu_index: int) -> Any:
        return self._gpu_handle[gpu_index]

    def event_sets_open(self) -> int:
        with self._lock:
            return len(self._event_sets)

    def gpm_samples_open(self) -> int:
        """GPM sample buffers allocated and not freed."""
        with self._lock:
            return len(self._gpm_samples)

    def reset_gpu(self, gpu_index: int) -> None:
        """The GPU was reset: its GPM counters (and its GPU instances') start again from 0."""
        with self._lock:
            for key in [k for k in self._gpm_counters if k[0] == gpu_index]:
                del self._gpm_counters[key]

    # -- plumbing ----------------------------------------------------------------------
    def _new_handle(self, ctype: Any, target: Any) -> Any:
        buffer = ctypes.create_string_buffer(8)
        self._keep.append(buffer)
        handle = ctypes.cast(buffer, ctype)
        self._handles[ctypes.addressof(buffer)] = target
        return handle

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def _initialised(self) -> None:
        if self.refcount <= 0:
            raise nvml_error(real.NVML_ERROR_UNINITIALIZED)

    def _resolve(self, handle: Any) -> tuple[FakeGpu, int | None]:
        try:
            address = ctypes.cast(handle, ctypes.c_void_p).value
        except (ctypes.ArgumentError, TypeError):
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT) from None
        target = self._handles.get(address or 0)
        if target is None:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        if isinstance(target, tuple):
            return target[0], target[1]
        return target, None

    def _device(self, name: str, handle: Any) -> tuple[FakeGpu, FakeMig | None]:
        """Common checks of every device call; returns the GPU (and MIG device)."""
        self._count(name)
        self._initialised()
        gpu, slot = self._resolve(handle)
        with self._lock:
            self.gpu_calls[(gpu.index, name)] += 1
            if gpu.lose_after is not None:
                if gpu.lose_after <= 0:
                    gpu.lost = True
                    gpu.lose_after = None
                else:
                    gpu.lose_after -= 1
        if gpu.hang is not None:
            gpu.hang.wait()
        if gpu.lost:
            raise nvml_error(real.NVML_ERROR_GPU_IS_LOST)
        qualified = f"{name}@mig" if slot is not None else name
        if name in gpu.not_supported or qualified in gpu.not_supported:
            raise nvml_error(real.NVML_ERROR_NOT_SUPPORTED)
        if name in gpu.errors:
            raise nvml_error(gpu.errors[name])
        mig = None
        if slot is not None:
            mig = gpu.mig[slot] if slot < len(gpu.mig) else None
            if mig is None or not gpu.mig_mode:
                raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu, mig

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType("pynvml", "fake nvidia-ml-py (tests/fakes/pynvml_fake.py)")
        for name in dir(real):
            if name.startswith("__"):
                continue
            value = getattr(real, name)
            if isinstance(value, types.ModuleType):
                continue
            if isinstance(value, types.FunctionType) or inspect.isbuiltin(value):
                if name in _PASS_THROUGH:
                    setattr(module, name, value)
                elif name.startswith(("nvml", "c_nvml")):  # C calls: absent from the "driver"
                    setattr(module, name, _missing(name))
                continue
            setattr(module, name, value)  # constants, structures, exception classes
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(module, name, getattr(self, name))
        return module

    # -- library -------------------------------------------------------------------------
    def nvmlInitWithFlags(self, flags: int) -> None:
        self._count("nvmlInitWithFlags")
        if self.library_missing:
            raise nvml_error(real.NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.init_hang is not None:
            self.init_hang.wait()
        with self._lock:
            if self.init_errors:
                raise nvml_error(self.init_errors.pop(0))
            self.refcount += 1

    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        self._initialised()
        with self._lock:
            self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._count("nvmlSystemGetDriverVersion")
        self._initialised()
        return self.driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._count("nvmlSystemGetNVMLVersion")
        self._initialised()
        return self.nvml_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._count("nvmlSystemGetCudaDriverVersion")
        self._initialised()
        return self.cuda_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.nvmlSystemGetCudaDriverVersion()

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        self._initialised()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._count("nvmlDeviceGetHandleByIndex")
        self._initialised()
        if not 0 <= index < len(self.gpus):
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:
            raise nvml_error(real.NVML_ERROR_GPU_IS_LOST)
        return self._gpu_handle[gpu.index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        self._count("nvmlDeviceGetHandleByUUID")
        self._initialised()
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return self._gpu_handle[gpu.index]
        raise nvml_error(real.NVML_ERROR_NOT_FOUND)

    # -- identity ------------------------------------------------------------------------
    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetIndex", handle)
        return gpu.index

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        gpu, mig = self._device("nvmlDeviceGetUUID", handle)
        return mig.uuid if mig is not None else gpu.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        gpu, mig = self._device("nvmlDeviceGetName", handle)
        return mig.name if mig is not None else gpu.name

    def nvmlDeviceGetPciInfo_v3(self, handle: Any) -> Any:
        gpu, _ = self._device("nvmlDeviceGetPciInfo_v3", handle)
        info = real.nvmlPciInfo_t()
        info.busId = gpu.pci_bus_id.encode()
        info.busIdLegacy = gpu.pci_bus_id[4:].encode()
        info.domain = 0
        info.bus = int(gpu.pci_bus_id.split(":")[1], 16)
        info.device = 0
        info.pciDeviceId = 0x233010DE
        return info

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        return self.nvmlDeviceGetPciInfo_v3(handle)

    # -- readings ------------------------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu, _ = self._device("nvmlDeviceGetUtilizationRates", handle)
        util = real.c_nvmlUtilization_t()
        util.gpu = gpu.utilization_gpu
        util.memory = gpu.utilization_memory
        return util

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        gpu, mig = self._device("nvmlDeviceGetMemoryInfo", handle)
        total = mig.memory_total if mig is not None else gpu.memory_total
        used = mig.memory_used if mig is not None else gpu.memory_used
        reserved = 0 if mig is not None else gpu.memory_reserved
        if not version:
            memory = real.c_nvmlMemory_t()
            memory.total = total
            memory.used = used + reserved  # v1 counts driver-reserved memory as used
            memory.free = total - used - reserved
            return memory
        if version != real.nvmlMemory_v2:
            raise nvml_error(real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        memory2 = real.c_nvmlMemory_v2_t()
        memory2.version = version
        memory2.total = total
        memory2.reserved = reserved
        memory2.used = used
        memory2.free = total - used - reserved
        return memory2

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        gpu, _ = self._device("nvmlDeviceGetTemperature", handle)
        if sensor != real.NVML_TEMPERATURE_GPU:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetPowerUsage", handle)
        return gpu.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetEnforcedPowerLimit", handle)
        return gpu.power_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetPowerManagementLimit", handle)
        return gpu.power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetTotalEnergyConsumption", handle)
        return gpu.energy_mj

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        gpu, _ = self._device("nvmlDeviceGetClockInfo", handle)
        if type not in gpu.clocks_mhz:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.clocks_mhz[type]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return gpu.clock_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return gpu.clock_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        gpu, _ = self._device("nvmlDeviceGetTotalEccErrors", handle)
        if (errorType, counterType) not in gpu.ecc:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.ecc[(errorType, counterType)]

    def nvmlDeviceGetRetiredPages(self, device: Any, sourceFilter: int) -> list[int]:
        gpu, _ = self._device("nvmlDeviceGetRetiredPages", device)
        if sourceFilter not in gpu.retired_pages:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return list(gpu.retired_pages[sourceFilter])

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetRetiredPagesPendingStatus", device)
        return gpu.retired_pending

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        gpu, _ = self._device("nvmlDeviceGetRemappedRows", device)
        return gpu.remapped_rows

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetPcieReplayCounter", handle)
        return gpu.pcie_replay

    def nvmlDeviceGetPcieThroughput(self, device: Any, counter: int) -> int:
        gpu, _ = self._device("nvmlDeviceGetPcieThroughput", device)
        if counter not in gpu.pcie_kbps:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.pcie_kbps[counter]

    def _link(self, name: str, device: Any, link: int) -> FakeGpu:
        gpu, _ = self._device(name, device)
        if not 0 <= link < real.NVML_NVLINK_MAX_LINKS:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        if link >= gpu.nvlinks:
            raise nvml_error(real.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def nvmlDeviceGetNvLinkState(self, device: Any, link: int) -> int:
        gpu = self._link("nvmlDeviceGetNvLinkState", device, link)
        return 0 if link in gpu.nvlink_down else 1

    def nvmlDeviceGetNvLinkErrorCounter(self, device: Any, link: int, counter: int) -> int:
        gpu = self._link("nvmlDeviceGetNvLinkErrorCounter", device, link)
        if counter not in gpu.nvlink_errors:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.nvlink_errors[counter] + link

    def nvmlDeviceGetFanSpeed(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetFanSpeed", handle)
        return gpu.fan_percent

    def nvmlDeviceGetPerformanceState(self, handle: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetPerformanceState", handle)
        return gpu.pstate

    # -- MIG -----------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        gpu, _ = self._device("nvmlDeviceGetMigMode", device)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        gpu, _ = self._device("nvmlDeviceGetMaxMigDeviceCount", device)
        return len(gpu.mig)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        gpu, mig = self._device("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if mig is not None or not gpu.mig_mode:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= index < len(gpu.mig):
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        if gpu.mig[index] is None:
            raise nvml_error(real.NVML_ERROR_NOT_FOUND)
        key = (gpu.index, index)
        with self._lock:
            if key not in self._mig_handle:
                self._mig_handle[key] = self._new_handle(real.c_nvmlDevice_t, (gpu, index))
            return self._mig_handle[key]

    def nvmlDeviceIsMigDeviceHandle(self, device: Any) -> Any:
        _, mig = self._device("nvmlDeviceIsMigDeviceHandle", device)
        return ctypes.c_uint(1 if mig is not None else 0)  # the real binding returns the c_uint

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: Any) -> Any:
        gpu, mig = self._device("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice)
        if mig is None:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu_handle[gpu.index]

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        _, mig = self._device("nvmlDeviceGetGpuInstanceId", device)
        if mig is None:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        _, mig = self._device("nvmlDeviceGetComputeInstanceId", device)
        if mig is None:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return mig.compute_instance_id

    # -- processes -----------------------------------------------------------------------
    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any) -> list[Any]:
        gpu, mig = self._device("nvmlDeviceGetComputeRunningProcesses_v3", handle)
        procs = []
        for proc in gpu.processes:
            if mig is not None and proc.gpu_instance_id != mig.gpu_instance_id:
                continue
            info = real.c_nvmlProcessInfo_v3_t()
            info.pid = proc.pid
            info.usedGpuMemory = (
                real.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
                if proc.used_memory is None
                else proc.used_memory
            )
            info.gpuInstanceId = proc.gpu_instance_id
            info.computeInstanceId = proc.compute_instance_id
            obj = real.nvmlStructToFriendlyObject(info)
            if obj.usedGpuMemory == real.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
                obj.usedGpuMemory = None  # as the real binding does
            procs.append(obj)
        return procs

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        return self.nvmlDeviceGetComputeRunningProcesses_v3(handle)

    # -- GPM -----------------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, device: Any) -> Any:
        gpu, _ = self._device("nvmlGpmQueryDeviceSupport", device)
        support = real.c_nvmlGpmSupport_t()
        support.version = real.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if gpu.gpm_supported else 0
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._count("nvmlGpmSampleAlloc")
        self._initialised()
        buffer = ctypes.create_string_buffer(16)
        sample = ctypes.cast(buffer, real.c_nvmlGpmSample_t)
        with self._lock:
            self._keep.append(buffer)  # never reused: a stale pointer stays invalid
            self._gpm_samples[ctypes.addressof(buffer)] = None
        return sample

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        self._count("nvmlGpmSampleFree")
        self._initialised()
        with self._lock:
            if self._gpm_samples.pop(_address(gpmSample), _FREED) is _FREED:
                raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)

    def _gpm_read(self, key: tuple[int, int | None], rates: dict[int, float], sample: Any) -> Any:
        """Advance the counters of `key` by its rates to now and copy them into `sample`."""
        address = _address(sample)
        now = self.gpm_clock()
        with self._lock:
            if address not in self._gpm_samples:
                raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
            then, counters = self._gpm_counters.get(key, (now, {}))
            elapsed = now - then
            counters = {m: counters.get(m, 0.0) + rate * elapsed for m, rate in rates.items()}
            self._gpm_counters[key] = (now, counters)
            self._gpm_samples[address] = _GpmSample(key, now, counters)
        return sample

    def _gpm_device(self, name: str, device: Any) -> tuple[FakeGpu, FakeMig | None]:
        try:
            gpu, mig = self._device(name, device)
        except NVMLError as exc:
            if exc.value == real.NVML_ERROR_GPU_IS_LOST:  # type: ignore[attr-defined]
                self.reset_gpu(self._resolve(device)[0].index)
            raise
        if not gpu.gpm_supported:
            raise nvml_error(real.NVML_ERROR_NOT_SUPPORTED)
        return gpu, mig

    def nvmlGpmSampleGet(self, device: Any, gpmSample: Any) -> Any:
        gpu, mig = self._gpm_device("nvmlGpmSampleGet", device)
        if mig is not None:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpm_read((gpu.index, None), gpu.gpm, gpmSample)

    def nvmlGpmMigSampleGet(self, device: Any, gpuInstanceId: int, gpmSample: Any) -> Any:
        gpu, mig = self._gpm_device("nvmlGpmMigSampleGet", device)
        if mig is not None or not gpu.mig_mode:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        for instance in gpu.mig:
            if instance is not None and instance.gpu_instance_id == gpuInstanceId:
                return self._gpm_read((gpu.index, gpuInstanceId), instance.gpm, gpmSample)
        raise nvml_error(real.NVML_ERROR_NOT_FOUND)

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        self._count("nvmlGpmMetricsGet")
        self._initialised()
        # numbers only: read and written past _PrintableStructure's per-field Python code
        get, put = object.__getattribute__, object.__setattr__
        if get(metricsGet, "version") != real.NVML_GPM_METRICS_GET_VERSION:
            raise nvml_error(real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        count = get(metricsGet, "numMetrics")
        with self._lock:
            first = self._gpm_samples.get(_address(get(metricsGet, "sample1")))
            second = self._gpm_samples.get(_address(get(metricsGet, "sample2")))
        if (
            first is None
            or second is None
            or first.key != second.key
            or second.at <= first.at
            or count > real.NVML_GPM_METRIC_MAX
        ):
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        elapsed = second.at - first.at
        before, after = first.counters, second.counters
        metrics = get(metricsGet, "metrics")
        for slot in range(count):
            metric = metrics[slot]
            metric_id = get(metric, "metricId")
            if metric_id in before and metric_id in after:
                put(metric, "value", (after[metric_id] - before[metric_id]) / elapsed)
                put(metric, "nvmlReturn", real.NVML_SUCCESS)
            elif 0 < metric_id < real.NVML_GPM_METRIC_MAX:
                put(metric, "value", 0.0)
                put(metric, "nvmlReturn", real.NVML_ERROR_NOT_SUPPORTED)
            else:
                put(metric, "nvmlReturn", real.NVML_ERROR_INVALID_ARGUMENT)
        return metricsGet

    # -- events --------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> Any:
        self._count("nvmlEventSetCreate")
        self._initialised()
        handle = self._new_handle(real.c_nvmlEventSet_t, "event-set")
        with self._lock:
            self._event_sets[_address(handle)] = {}
        return handle

    def _event_set(self, event_set: Any) -> dict[int, int]:
        with self._lock:
            registered = self._event_sets.get(_address(event_set))
        if registered is None:
            raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)
        return registered

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        self._device("nvmlDeviceGetSupportedEventTypes", handle)
        return int(real.nvmlEventTypeAll)

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        gpu, mig = self._device("nvmlDeviceRegisterEvents", handle)
        if mig is not None:
            raise nvml_error(real.NVML_ERROR_NOT_SUPPORTED)
        registered = self._event_set(eventSet)
        with self._lock:
            registered[gpu.index] = registered.get(gpu.index, 0) | int(eventTypes)

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any:
        self._count("nvmlEventSetWait_v2")
        self._initialised()
        registered = self._event_set(eventSet)
        deadline = time.monotonic() + timeoutms / 1000.0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise nvml_error(real.NVML_ERROR_TIMEOUT)
            try:
                kind, payload = self._events.get(timeout=remaining)
            except queue.Empty:
                raise nvml_error(real.NVML_ERROR_TIMEOUT) from None
            if kind == "error":
                raise nvml_error(payload)
            index, xid, gpu_instance = payload
            if not registered.get(index, 0) & real.nvmlEventTypeXidCriticalError:
                continue  # not registered in this set: NVML would not deliver it
            data = real.c_nvmlEventData_t()
            data.device = self._gpu_handle[index]
            data.eventType = real.nvmlEventTypeXidCriticalError
            data.eventData = xid
            data.gpuInstanceId = gpu_instance
            data.computeInstanceId = 0xFFFFFFFF
            return data

    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> Any:
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._count("nvmlEventSetFree")
        with self._lock:
            if self._event_sets.pop(_address(eventSet), None) is None:
                raise nvml_error(real.NVML_ERROR_INVALID_ARGUMENT)


class _GpmSample(NamedTuple):
    key: tuple[int, int | None]  # (gpu index, gpu instance or None)
    at: float
    counters: dict[int, float]


_FREED = _GpmSample((-1, None), 0.0, {})  # marks "no such sample" in a dict lookup


def _address(handle: Any) -> int:
    """The pointer value behind a ctypes handle (what the fake keys its objects by)."""
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _missing(name: str) -> Callable[..., Any]:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise nvml_error(real.NVML_ERROR_FUNCTION_NOT_FOUND)

    missing.__name__ = name
    return missing


def implemented() -> list[str]:
    """Names of the nvml* functions the fake implements (the rest raise FunctionNotFound)."""
    return sorted(n for n in dir(FakeNvml) if n.startswith("nvml"))


def fleet(count: int = 8, **overrides: Any) -> list[FakeGpu]:
    """`count` fake GPUs with the defaults (and `overrides` applied to each)."""
    return [FakeGpu(index=i, **overrides) for i in range(count)]
