"""The fake pynvml keeps nvidia-ml-py's names, parameters, return types and exception classes;
and the real nvidia-ml-py on this GPU-less machine behaves as the collector expects."""

from __future__ import annotations

import ctypes
import inspect
import sys

import pynvml
import pytest

from hpcobs.exporters.attribution import JobAttributor
from hpcobs.exporters.collectors.gpu import GpuCollector
from hpcobs.exporters.sources.nvml import ErrorKind, Nvml, classify

from fakes.pynvml_fake import FakeNvml, fleet, implemented

pytestmark = pytest.mark.unit


def real_functions() -> list[str]:
    return sorted(
        n
        for n in dir(pynvml)
        if n.startswith(("nvml", "c_nvml")) and inspect.isfunction(getattr(pynvml, n))
    )


def test_every_real_function_name_exists_in_the_fake() -> None:
    fake = FakeNvml(fleet(1)).module
    missing = [n for n in real_functions() if not callable(getattr(fake, n, None))]
    assert missing == []


@pytest.mark.parametrize("name", implemented())
def test_implemented_functions_have_the_real_parameters(name: str) -> None:
    real = getattr(pynvml, name)
    fake = getattr(FakeNvml(fleet(1)).module, name)
    assert list(inspect.signature(fake).parameters) == list(inspect.signature(real).parameters)


def test_exception_classes_and_constants_are_the_real_ones() -> None:
    fake = FakeNvml(fleet(1)).module
    for name in dir(pynvml):
        if name.startswith(("NVMLError", "NVML_", "c_nvml")) and not inspect.isfunction(
            getattr(pynvml, name)
        ):
            assert getattr(fake, name) is getattr(pynvml, name), name


def test_errors_before_init_and_for_missing_functions() -> None:
    fake = FakeNvml(fleet(1))
    m = fake.module
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        m.nvmlDeviceGetCount()
    m.nvmlInit()
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        m.nvmlDeviceGetBAR1MemoryInfo(m.nvmlDeviceGetHandleByIndex(0))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        m.nvmlDeviceGetHandleByIndex(5)
    fake.gpus[0].lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        m.nvmlDeviceGetPowerUsage(fake.handle(0))


def test_return_types_are_the_real_ones() -> None:
    gpus = fleet(2)
    gpus[1].enable_mig()
    fake = FakeNvml(gpus)
    m = fake.module
    m.nvmlInit()
    h = m.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(h, pynvml.c_nvmlDevice_t)
    assert isinstance(m.nvmlDeviceGetUtilizationRates(h), pynvml.c_nvmlUtilization_t)
    assert isinstance(m.nvmlDeviceGetMemoryInfo(h), pynvml.c_nvmlMemory_t)
    assert isinstance(
        m.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2), pynvml.c_nvmlMemory_v2_t
    )
    assert isinstance(m.nvmlDeviceGetPciInfo(h), pynvml.nvmlPciInfo_t)
    assert isinstance(m.nvmlDeviceGetUUID(h), str) and isinstance(m.nvmlDeviceGetName(h), str)
    assert isinstance(m.nvmlSystemGetDriverVersion(), str)
    assert m.nvmlDeviceGetMigMode(h) == [0, 0]
    mig = m.nvmlDeviceGetMigDeviceHandleByIndex(m.nvmlDeviceGetHandleByIndex(1), 0)
    assert isinstance(m.nvmlDeviceIsMigDeviceHandle(mig), ctypes.c_uint)
    gpus[0].processes = []
    assert m.nvmlDeviceGetComputeRunningProcesses(h) == []
    from fakes.pynvml_fake import FakeProcess

    gpus[0].processes = [FakeProcess(10, None), FakeProcess(11, 5)]
    procs = m.nvmlDeviceGetComputeRunningProcesses(h)
    assert all(isinstance(p, pynvml.nvmlFriendlyObject) for p in procs)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(10, None), (11, 5)]
    es = m.nvmlEventSetCreate()
    assert isinstance(es, pynvml.c_nvmlEventSet_t)
    m.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
    fake.xid(0, 79)
    data = m.nvmlEventSetWait(es, 1000)
    assert isinstance(data, pynvml.c_nvmlEventData_t) and data.eventData == 79
    assert Nvml.handle_key(data.device) == Nvml.handle_key(h)
    with pytest.raises(pynvml.NVMLError_Timeout):
        m.nvmlEventSetWait(es, 10)
    m.nvmlEventSetFree(es)


def test_real_nvidia_ml_py_without_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has nvidia-ml-py but no libnvidia-ml: init fails as on a CPU-only node."""
    monkeypatch.setitem(sys.modules, "pynvml", pynvml)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        assert classify(exc) is ErrorKind.ABSENT
    else:  # pragma: no cover - a machine with a driver
        pynvml.nvmlShutdown()
        pytest.fail("this test expects a machine without the NVIDIA driver")
    collector = GpuCollector(attributor=JobAttributor("/nonexistent"))
    try:
        assert list(collector.collect()) == []
    finally:
        collector.close()
