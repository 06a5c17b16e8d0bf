"""GPU profiling metrics from NVML GPM (GPU performance monitoring), against the fake pynvml.

A GPM sample is one quick call; the metrics cover the interval between the previous scrape's
sample and this scrape's. Expected values come from the fake GPUs' GPM rates (percent, MiB/s),
which the fake integrates over its clock as the GPU's counters do.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pynvml
import pytest

from hpcobs.exporters.attribution import JobAttributor
from hpcobs.exporters.collectors.gpu import GpuCollector

from fakes.pynvml_fake import (
    GPM_DRAM,
    GPM_FP16,
    GPM_FP32,
    GPM_FP64,
    GPM_NVLINK_RX,
    GPM_NVLINK_TX,
    GPM_OCCUPANCY,
    GPM_PCIE_RX,
    GPM_PCIE_TX,
    GPM_SM,
    GPM_TENSOR,
    FakeGpu,
    FakeNvml,
    _missing,
    fleet,
)

pytestmark = pytest.mark.unit

MIB = 1 << 20
Values = dict[tuple[str, frozenset[tuple[str, str]]], float]
RATIOS = {
    "sm_active": GPM_SM,
    "sm_occupancy": GPM_OCCUPANCY,
    "tensor_active": GPM_TENSOR,
    "dram_active": GPM_DRAM,
    "fp64_active": GPM_FP64,
    "fp32_active": GPM_FP32,
    "fp16_active": GPM_FP16,
}
THROUGHPUT = {
    "hpcobs_gpu_pcie_transmit_bytes_per_second": GPM_PCIE_TX,
    "hpcobs_gpu_pcie_receive_bytes_per_second": GPM_PCIE_RX,
    "hpcobs_gpu_nvlink_transmit_bytes_per_second": GPM_NVLINK_TX,
    "hpcobs_gpu_nvlink_receive_bytes_per_second": GPM_NVLINK_RX,
}
GPM_FAMILIES = {f"hpcobs_gpu_{name}_ratio" for name in RATIOS} | set(THROUGHPUT)


def scrape(collector: GpuCollector) -> Values:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in collector.collect()
        for s in family.samples
    }


def of(values: Values, metric: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    want = set(labels.items())
    return {lab: v for (n, lab), v in values.items() if n == metric and want <= set(lab)}


def one(values: Values, metric: str, **labels: str) -> float:
    found = of(values, metric, **labels)
    assert len(found) == 1, f"{metric}{labels}: {len(found)} series"
    return next(iter(found.values()))


def gpm_series(values: Values, gpu: str) -> set[str]:
    """The GPM families with a series of `gpu` (its own or its MIG GPU instances')."""
    mig = {f"hpcobs_gpu_mig_{name}_ratio" for name in RATIOS}
    return {n for (n, lab) in values if dict(lab).get("gpu") == gpu and n in GPM_FAMILIES | mig}


class Clock:
    """The fake's GPM clock: time moves only when the test says."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[FakeNvml, Any]]]:
    """node(gpus, **source) -> (fake NVML in sys.modules['pynvml'], collector)."""
    made: list[GpuCollector] = []

    def make(gpus: list[FakeGpu] | None = None, **source: Any) -> tuple[FakeNvml, Any]:
        from hpcobs.exporters.sources.nvml import NvmlSource

        fake = FakeNvml(fleet(2) if gpus is None else gpus)
        monkeypatch.setitem(sys.modules, "pynvml", fake.module)
        source.setdefault("xid", False)
        collector = GpuCollector(NvmlSource(**source), attributor=JobAttributor("/nonexistent"))
        made.append(collector)
        return fake, collector

    yield make
    for collector in made:
        collector.close()


def test_first_scrape_has_none_then_the_interval_since_the_last(node: Any) -> None:
    gpus = fleet(2)
    fake, collector = node(gpus)
    clock = fake.gpm_clock = Clock()
    first = scrape(collector)
    assert not gpm_series(first, "0") and not gpm_series(first, "1")
    assert one(first, "hpcobs_gpu_up", gpu="0") == 1

    clock.now += 15
    values = scrape(collector)
    for g in gpus:
        lab = {"gpu": str(g.index), "uuid": g.uuid}
        for name, metric_id in RATIOS.items():
            assert one(values, f"hpcobs_gpu_{name}_ratio", **lab) == pytest.approx(
                g.gpm[metric_id] / 100
            )
        for metric, metric_id in THROUGHPUT.items():  # NVML gives MiB/s
            assert one(values, metric, **lab) == pytest.approx(g.gpm[metric_id] * MIB)
    # the same bytes as NVML's own PCIe sample would give (KB/s): the unit is MiB/s
    assert one(values, "hpcobs_gpu_pcie_transmit_bytes_per_second", gpu="0") == pytest.approx(
        gpus[0].pcie_kbps[0] * 1024
    )

    # the next interval: GPU 0 went idle
    gpus[0].gpm[GPM_SM] = 0.0
    clock.now += 15
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_sm_active_ratio", gpu="0") == 0.0
    assert one(values, "hpcobs_gpu_sm_active_ratio", gpu="1") == pytest.approx(0.62)


def test_metrics_are_the_time_weighted_mean_between_two_scrapes(node: Any) -> None:
    gpus = fleet(1)
    fake, collector = node(gpus)
    clock = fake.gpm_clock = Clock()
    scrape(collector)
    # a read of the counters in the middle (as another GPM user would cause) changes nothing:
    # the collector's interval still runs from its own previous sample to its new one
    clock.now += 30  # 30 s at 62 %
    spare = fake.module.nvmlGpmSampleAlloc()
    fake.module.nvmlGpmSampleGet(fake.handle(0), spare)
    gpus[0].gpm[GPM_SM] = 2.0
    clock.now += 10  # 10 s at 2 %
    values = scrape(collector)
    expected = (30 * 0.62 + 10 * 0.02) / 40
    assert one(values, "hpcobs_gpu_sm_active_ratio") == pytest.approx(expected)
    fake.module.nvmlGpmSampleFree(spare)


def test_no_blocking_pcie_sample_on_gpm_gpus(node: Any) -> None:
    """nvmlDeviceGetPcieThroughput samples 20 ms per direction: never asked where GPM gives
    PCIe throughput, even with --collector.gpu.pcie-throughput."""
    fake, collector = node(fleet(4), pcie_throughput=True)
    for _ in range(3):
        values = scrape(collector)
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert len(of(values, "hpcobs_gpu_pcie_transmit_bytes_per_second")) == 4
    # two calls per GPU and scrape: one sample, one computation (buffers reused, not allocated)
    assert fake.calls["nvmlGpmSampleGet"] == 12
    assert fake.calls["nvmlGpmMetricsGet"] == 8
    assert fake.calls["nvmlGpmSampleAlloc"] == 8
    assert fake.gpm_samples_open() == 8


def test_pre_hopper_gpu_has_none_and_says_why_once(
    node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gpus = fleet(4)
    for g in gpus[1:]:
        g.name, g.gpm_supported = "NVIDIA A100-SXM4-80GB", False
    fake, collector = node(gpus)
    with caplog.at_level(logging.INFO, logger="hpcobs.gpu"):
        for _ in range(3):
            values = scrape(collector)
    assert gpm_series(values, "0")
    for g in gpus[1:]:
        assert not gpm_series(values, str(g.index))
        assert one(values, "hpcobs_gpu_utilization_ratio", gpu=str(g.index)) == 0.87
        assert fake.gpu_calls[(g.index, "nvmlGpmQueryDeviceSupport")] == 1  # asked once
        assert fake.gpu_calls[(g.index, "nvmlGpmSampleGet")] == 0
    lines = [r for r in caplog.records if "GPM" in r.getMessage()]
    assert len(lines) == 1  # one line for the three GPUs of that model
    assert lines[0].levelno == logging.INFO
    assert lines[0].__dict__["model"] == "NVIDIA A100-SXM4-80GB"
    assert "Hopper" in lines[0].__dict__["reason"]
    assert "--collector.gpu.pcie-throughput" in lines[0].__dict__["pcie_throughput"]
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert not of(values, "hpcobs_gpu_pcie_transmit_bytes_per_second", gpu="1")


def test_pre_hopper_pcie_throughput_only_when_the_flag_asks(node: Any) -> None:
    gpus = fleet(2)
    gpus[1].gpm_supported = False
    fake, collector = node(gpus, pcie_throughput=True)
    values = scrape(collector)
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_pcie_transmit_bytes_per_second", gpu="1") == 1_500_000 * 1024
    assert one(values, "hpcobs_gpu_pcie_receive_bytes_per_second", gpu="1") == 2_500_000 * 1024
    assert fake.gpu_calls[(1, "nvmlDeviceGetPcieThroughput")] == 4  # 2 directions x 2 scrapes
    assert fake.gpu_calls[(0, "nvmlDeviceGetPcieThroughput")] == 0  # GPM's on GPU 0


@pytest.mark.parametrize("how", ["driver", "nvidia-ml-py"])
def test_no_gpm_in_the_driver_or_binding(
    node: Any, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    fake, collector = node(fleet(2))
    for name in ("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleGet", "nvmlGpmMetricsGet"):
        if how == "driver":  # the real binding raises FunctionNotFound for a missing symbol
            setattr(fake.module, name, _missing(name))
        else:  # an nvidia-ml-py from before GPM
            delattr(fake.module, name)
    with caplog.at_level(logging.INFO, logger="hpcobs.gpu"):
        scrape(collector)
        values = scrape(collector)
    assert one(values, "hpcobs_gpu_up", gpu="0") == 1
    assert not gpm_series(values, "0")
    (line,) = [r for r in caplog.records if "GPM" in r.getMessage()]
    assert "no GPM" in line.__dict__["reason"]


def test_gpm_off(node: Any) -> None:
    fake, collector = node(fleet(2), gpm=False)
    scrape(collector)
    values = scrape(collector)
    assert not [n for n in fake.calls if n.startswith("nvmlGpm")]
    assert not gpm_series(values, "0")


def test_mig_gpu_instances(node: Any) -> None:
    gpus = fleet(2)
    gpus[1].enable_mig(instances=3, slots=7)
    fake, collector = node(gpus)
    assert not of(scrape(collector), "hpcobs_gpu_mig_sm_active_ratio")
    values = scrape(collector)
    lab = {"gpu": "1", "uuid": gpus[1].uuid}
    instances = [m for m in gpus[1].mig if m is not None]
    for mig in instances:
        gi = {"gpu_instance": str(mig.gpu_instance_id)}
        for name, metric_id in RATIOS.items():
            assert one(values, f"hpcobs_gpu_mig_{name}_ratio", **lab, **gi) == pytest.approx(
                mig.gpm[metric_id] / 100
            )
    assert len(of(values, "hpcobs_gpu_mig_sm_active_ratio")) == 3
    # labels: the parent GPU and the GPU instance (GPM counts per GPU instance)
    assert {frozenset(dict(k)) for k in of(values, "hpcobs_gpu_mig_tensor_active_ratio")} == {
        frozenset({"gpu", "uuid", "gpu_instance"})
    }
    assert one(values, "hpcobs_gpu_sm_active_ratio", **lab) == pytest.approx(0.62)

    # a GPU instance destroyed: its series go and its samples are freed; a new one starts
    # with a first sample, no metrics
    open_before = fake.gpm_samples_open()
    gone = gpus[1].mig[2]
    assert gone is not None
    gpus[1].mig[2] = None
    values = scrape(collector)
    assert not of(values, "hpcobs_gpu_mig_sm_active_ratio", gpu_instance=str(gone.gpu_instance_id))
    assert fake.gpm_samples_open() == open_before - 2
    gone.gpu_instance_id = 12
    gpus[1].mig[4] = gone
    values = scrape(collector)
    assert not of(values, "hpcobs_gpu_mig_sm_active_ratio", gpu_instance="12")
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_mig_sm_active_ratio", gpu_instance="12") == pytest.approx(0.3)


def test_gpu_lost_between_two_samples(node: Any) -> None:
    """The GPU's last sample predates the loss (and the reset that brings it back restarts its
    counters): no interval spans the loss; the first scrape after it has none."""
    gpus = fleet(3)
    fake, collector = node(gpus)
    scrape(collector)
    scrape(collector)
    held = fake.gpm_samples_open()
    gpus[1].lost = True
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_up", gpu="1") == 0
    assert fake.gpm_samples_open() == held - 2  # GPU 1's two buffers freed
    assert gpm_series(values, "0") and gpm_series(values, "2")
    gpus[1].lost = False  # back after a reset: its counters start again from 0
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_up", gpu="1") == 1
    assert not gpm_series(values, "1")
    values = scrape(collector)
    for name, metric_id in RATIOS.items():
        assert one(values, f"hpcobs_gpu_{name}_ratio", gpu="1") == pytest.approx(
            gpus[1].gpm[metric_id] / 100
        )
    assert fake.gpm_samples_open() == held


def test_gpu_lost_after_its_sample_in_the_same_read(node: Any) -> None:
    gpus = fleet(2)
    fake, collector = node(gpus)
    scrape(collector)
    scrape(collector)
    # the sample of this scrape is taken, then the process list answers GpuIsLost
    gpus[0].errors = {"nvmlDeviceGetComputeRunningProcesses_v3": pynvml.NVML_ERROR_GPU_IS_LOST}
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_up", gpu="0") == 0
    assert fake.gpm_samples_open() == 2  # GPU 1's only
    gpus[0].errors = {}
    fake.reset_gpu(0)
    assert not gpm_series(scrape(collector), "0")
    assert one(scrape(collector), "hpcobs_gpu_sm_active_ratio", gpu="0") == pytest.approx(0.62)


def test_metric_a_gpu_does_not_count_is_left_out_and_not_asked_again(
    node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gpus = fleet(2)
    for metric_id in (GPM_NVLINK_RX, GPM_NVLINK_TX):  # an H100 PCIe card: no NVLink
        del gpus[1].gpm[metric_id]
    fake, collector = node(gpus)
    original = fake.module.nvmlGpmMetricsGet
    asked: list[list[int]] = []

    def recording(metricsGet: Any) -> Any:
        asked.append([metricsGet.metrics[i].metricId for i in range(metricsGet.numMetrics)])
        return original(metricsGet)

    fake.module.nvmlGpmMetricsGet = recording
    with caplog.at_level(logging.DEBUG, logger="hpcobs.gpu"):
        for _ in range(4):
            values = scrape(collector)
    assert not of(values, "hpcobs_gpu_nvlink_receive_bytes_per_second", gpu="1")
    assert of(values, "hpcobs_gpu_nvlink_receive_bytes_per_second", gpu="0")
    assert one(values, "hpcobs_gpu_sm_active_ratio", gpu="1") == pytest.approx(0.62)
    full = len(asked[0])
    assert sorted(len(ids) for ids in asked) == [full - 2] * 2 + [full] * 4
    logged = [r for r in caplog.records if r.getMessage().startswith("GPM metric")]
    assert len(logged) == 2  # once per metric


def test_metrics_call_failing_drops_that_interval_only(node: Any) -> None:
    fake, collector = node(fleet(1))
    scrape(collector)
    original = fake.module.nvmlGpmMetricsGet

    def refuse(metricsGet: Any) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    fake.module.nvmlGpmMetricsGet = refuse
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_up") == 1 and not gpm_series(values, "0")
    fake.module.nvmlGpmMetricsGet = original
    assert one(scrape(collector), "hpcobs_gpu_sm_active_ratio") == pytest.approx(0.62)


def test_samples_freed_at_close_and_at_reinit(node: Any) -> None:
    gpus = fleet(3)
    gpus[1].enable_mig(instances=2)
    fake, collector = node(gpus)
    scrape(collector)
    scrape(collector)
    assert fake.gpm_samples_open() == 2 * (3 + 2)  # two per GPU and per GPU instance
    fake.gpus.pop()  # the GPU count changed: NVML is re-initialised
    scrape(collector)
    assert fake.gpm_samples_open() == 0 and fake.refcount == 0
    collector.source._next_init = 0.0  # skip the backoff
    scrape(collector)
    scrape(collector)
    assert fake.gpm_samples_open() == 2 * (2 + 2)
    collector.close()
    assert fake.gpm_samples_open() == 0 and fake.refcount == 0
    assert fake.calls["nvmlGpmSampleFree"] == fake.calls["nvmlGpmSampleAlloc"]


def test_metric_table_matches_the_profile_and_nvidia_ml_py() -> None:
    """GPM_METRICS lists Profile's fields in order, with nvidia-ml-py's metric ids."""
    from hpcobs.exporters.sources.nvml import GPM_METRICS, MIG_GPM_METRICS, Profile

    assert tuple(GPM_METRICS) == Profile._fields
    assert tuple(MIG_GPM_METRICS) == Profile._fields[: len(RATIOS)] == tuple(RATIOS)
    ids = {name: metric_id for name, (metric_id, _) in GPM_METRICS.items()}
    assert {name: ids[name] for name in RATIOS} == RATIOS
    assert ids["pcie_transmit_bytes_per_second"] == pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC
    assert ids["pcie_receive_bytes_per_second"] == pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC
    assert ids["nvlink_transmit_bytes_per_second"] == GPM_NVLINK_TX
    assert ids["nvlink_receive_bytes_per_second"] == GPM_NVLINK_RX
    assert pynvml.NVML_GPM_METRICS_GET_VERSION == 1
