"""The fake pynvml keeps nvidia-ml-py's names, parameters, return types and exception classes;
and the real nvidia-ml-py on this GPU-less machine behaves as the collector expects."""

from __future__ import annotations

import ctypes
import inspect
import itertools
import sys
from typing import Any

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


def gpm_request(first: Any, second: Any, *metric_ids: int) -> Any:
    """A c_nvmlGpmMetricsGet_t as the real binding's callers fill it."""
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(metric_ids)
    request.sample1, request.sample2 = first, second
    for slot, metric_id in enumerate(metric_ids):
        request.metrics[slot].metricId = metric_id
    return request


def test_gpm_like_the_real_binding() -> None:
    gpus = fleet(3)
    gpus[1].gpm_supported = False  # e.g. an A100
    gpus[2].enable_mig(instances=2)
    fake = FakeNvml(gpus)
    ticks = itertools.count(1)
    fake.gpm_clock = lambda: float(next(ticks))  # each read of the counters a second later
    m = fake.module
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        m.nvmlGpmSampleAlloc()
    m.nvmlInit()
    h0, h1, h2 = (m.nvmlDeviceGetHandleByIndex(i) for i in range(3))
    support = m.nvmlGpmQueryDeviceSupport(h0)
    assert isinstance(support, pynvml.c_nvmlGpmSupport_t) and support.isSupportedDevice == 1
    assert m.nvmlGpmQueryDeviceSupport(h1).isSupportedDevice == 0
    a, b = m.nvmlGpmSampleAlloc(), m.nvmlGpmSampleAlloc()
    assert isinstance(a, pynvml.c_nvmlGpmSample_t)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # pre-Hopper
        m.nvmlGpmSampleGet(h1, a)
    assert m.nvmlGpmSampleGet(h0, a) is a  # returns the buffer, as the binding does
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # b holds no sample yet
        m.nvmlGpmMetricsGet(gpm_request(a, b, pynvml.NVML_GPM_METRIC_SM_UTIL))
    m.nvmlGpmSampleGet(h0, b)
    # C2C total TX (100 in nvml.h): a metric this GPU does not count; older nvidia-ml-py
    # releases (the floor, 12.550, among them) have no name for it
    c2c_tx = getattr(pynvml, "NVML_GPM_METRIC_C2C_TOTAL_TX_PER_SEC", 100)
    request = m.nvmlGpmMetricsGet(gpm_request(a, b, pynvml.NVML_GPM_METRIC_SM_UTIL, c2c_tx))
    assert isinstance(request, pynvml.c_nvmlGpmMetricsGet_t)
    sm, c2c = request.metrics[0], request.metrics[1]
    assert sm.nvmlReturn == pynvml.NVML_SUCCESS and sm.value == pytest.approx(62.0)
    # not counted by this GPU; a binding that does not know the metric at all (as the fake
    # knows metrics: by the binding's names) refuses its id instead
    named = hasattr(pynvml, "NVML_GPM_METRIC_C2C_TOTAL_TX_PER_SEC")
    assert c2c.nvmlReturn == (
        pynvml.NVML_ERROR_NOT_SUPPORTED if named else pynvml.NVML_ERROR_INVALID_ARGUMENT
    )
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # not in time order
        m.nvmlGpmMetricsGet(gpm_request(b, a, pynvml.NVML_GPM_METRIC_SM_UTIL))
    wrong = gpm_request(a, b, pynvml.NVML_GPM_METRIC_SM_UTIL)
    wrong.version = 2
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        m.nvmlGpmMetricsGet(wrong)

    # MIG: the parent GPU's handle and the GPU instance id
    mig = m.nvmlDeviceGetMigDeviceHandleByIndex(h2, 0)
    gi = m.nvmlDeviceGetGpuInstanceId(mig)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        m.nvmlGpmMigSampleGet(mig, gi, a)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # not a MIG GPU
        m.nvmlGpmMigSampleGet(h0, gi, a)
    with pytest.raises(pynvml.NVMLError_NotFound):
        m.nvmlGpmMigSampleGet(h2, 99, a)
    m.nvmlGpmMigSampleGet(h2, gi, a)
    m.nvmlGpmMigSampleGet(h2, gi, b)
    (metric,) = m.nvmlGpmMetricsGet(gpm_request(a, b, pynvml.NVML_GPM_METRIC_SM_UTIL)).metrics[:1]
    assert metric.value == pytest.approx(10.0)
    c = m.nvmlGpmSampleAlloc()
    m.nvmlGpmSampleGet(h0, c)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # samples of different devices
        m.nvmlGpmMetricsGet(gpm_request(b, c, pynvml.NVML_GPM_METRIC_SM_UTIL))

    # a sample freed twice, or used after it was freed: the documented InvalidArgument
    assert fake.gpm_samples_open() == 3
    m.nvmlGpmSampleFree(a)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        m.nvmlGpmSampleFree(a)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        m.nvmlGpmSampleGet(h0, a)
    m.nvmlGpmSampleFree(b)
    m.nvmlGpmSampleFree(c)
    assert fake.gpm_samples_open() == 0

    # a lost GPU answers GpuIsLost, and its counters restart from 0 when it is back
    d, e = m.nvmlGpmSampleAlloc(), m.nvmlGpmSampleAlloc()
    m.nvmlGpmSampleGet(h0, d)
    gpus[0].lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        m.nvmlGpmSampleGet(h0, e)
    gpus[0].lost = False
    m.nvmlGpmSampleGet(h0, e)
    (metric,) = m.nvmlGpmMetricsGet(gpm_request(d, e, pynvml.NVML_GPM_METRIC_SM_UTIL)).metrics[:1]
    assert metric.value < 0  # what a reader that kept its sample across the loss would see


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
