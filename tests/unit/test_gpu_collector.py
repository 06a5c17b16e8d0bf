"""The `gpu` collector against the fake pynvml (tests/fakes/pynvml_fake.py).

The fake sits at the import boundary: `sys.modules["pynvml"]`, which the collector imports
when it initialises NVML. Expected values are computed here from the fake GPUs' raw NVML
numbers (milliwatts, millijoules, MHz, percent, KB/s), not by the code under test.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from hpcobs.exporters.attribution import JobAttributor
from hpcobs.exporters.collectors import gpu
from hpcobs.exporters.collectors.gpu import GpuCollector
from hpcobs.exporters.runtime.collector import Services
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
from hpcobs.exporters.sources.nvml import NvmlInitError, NvmlSource

from fakes.pynvml_fake import FakeGpu, FakeNvml, FakeProcess, _missing, fleet
from harness.collectors import wait_until
from harness.runtime import Running

pytestmark = pytest.mark.unit

# nvmlNvLinkErrorCounter_t values (nvml.h) and the label the collector gives them
NVLINK_COUNTERS = (
    ("replay", 0),
    ("recovery", 1),
    ("crc_flit", 2),
    ("crc_data", 3),
    ("ecc_data", 4),
)
Values = dict[tuple[str, frozenset[tuple[str, str]]], float]
MIB = 1 << 20
# The GPM activity metrics (percent in NVML, ratios here) and their NVML metric ids.
GPM_RATIOS = {
    "hpcobs_gpu_sm_active_ratio": pynvml.NVML_GPM_METRIC_SM_UTIL,
    "hpcobs_gpu_sm_occupancy_ratio": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
    "hpcobs_gpu_tensor_active_ratio": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    "hpcobs_gpu_dram_active_ratio": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    "hpcobs_gpu_fp64_active_ratio": pynvml.NVML_GPM_METRIC_FP64_UTIL,
    "hpcobs_gpu_fp32_active_ratio": pynvml.NVML_GPM_METRIC_FP32_UTIL,
    "hpcobs_gpu_fp16_active_ratio": pynvml.NVML_GPM_METRIC_FP16_UTIL,
}


def scrape(collector: GpuCollector) -> Values:
    out: Values = {}
    for family in collector.collect():
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def series(
    values: Values, metric: str, /, **labels: str
) -> dict[frozenset[tuple[str, str]], float]:
    """Samples of `metric` whose labels include `labels`."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in values.items() if n == metric and want <= set(lab)}


def one(values: Values, metric: str, /, **labels: str) -> float:
    found = series(values, metric, **labels)
    assert len(found) == 1, f"{metric}{labels}: {len(found)} series"
    return next(iter(found.values()))


def gpu_labels(fake_gpu: FakeGpu) -> dict[str, str]:
    return {"gpu": str(fake_gpu.index), "uuid": fake_gpu.uuid}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeNvml]:
    """Put a FakeNvml over `gpus` (default: 8 H100s) in sys.modules['pynvml']."""

    def make(gpus: list[FakeGpu] | None = None, **kw: Any) -> FakeNvml:
        fake = FakeNvml(fleet(8) if gpus is None else gpus, **kw)
        monkeypatch.setitem(sys.modules, "pynvml", fake.module)
        return fake

    return make


@pytest.fixture
def make_collector() -> Iterator[Callable[..., GpuCollector]]:
    made: list[GpuCollector] = []

    def make(
        procfs: str = "/nonexistent-procfs",
        job_mapping_dir: str = "",
        max_jobs: int = 64,
        **source: Any,
    ) -> GpuCollector:
        """A collector over an NvmlSource(**source) and a JobAttributor over `procfs`; the
        XID thread waits 50 ms at a time, so that close() ends it before the next test."""
        source.setdefault("xid_wait_ms", 50)
        collector = GpuCollector(
            NvmlSource(**source),
            attributor=JobAttributor(procfs),
            job_mapping_dir=job_mapping_dir,
            max_jobs=max_jobs,
        )
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def test_eight_gpus_every_metric(install: Callable[..., FakeNvml], make_collector: Any) -> None:
    gpus = fleet(8)
    gpus[4].nvlink_down = {3}
    gpus[6].clock_reasons = 0x1 | 0x800  # idle + an unknown bit
    fake = install(gpus)
    collector = make_collector(xid=False)
    first = scrape(collector)  # GPM needs a previous sample: none of its metrics yet
    assert not series(first, "hpcobs_gpu_sm_active_ratio")
    assert not series(first, "hpcobs_gpu_pcie_transmit_bytes_per_second")
    values = scrape(collector)
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 0  # NVML's 20 ms sample: not by default

    assert one(values, "hpcobs_gpu_driver_info") == 1
    assert series(values, "hpcobs_gpu_driver_info", driver_version="550.54.15", cuda_version="12.4")
    for g in gpus:
        lab = gpu_labels(g)
        assert one(values, "hpcobs_gpu_up", **lab) == 1
        assert (
            one(
                values,
                "hpcobs_gpu_info",
                **lab,
                name=g.name,
                pci_bus_id=g.pci_bus_id,
                driver_version=fake.driver_version,
            )
            == 1
        )
        assert one(values, "hpcobs_gpu_utilization_ratio", **lab) == g.utilization_gpu / 100
        assert (
            one(values, "hpcobs_gpu_memory_utilization_ratio", **lab) == g.utilization_memory / 100
        )
        assert one(values, "hpcobs_gpu_memory_used_bytes", **lab) == g.memory_used
        assert one(values, "hpcobs_gpu_memory_total_bytes", **lab) == g.memory_total
        assert one(values, "hpcobs_gpu_temperature_celsius", **lab) == g.temperature
        assert one(values, "hpcobs_gpu_power_watts", **lab) == pytest.approx(g.power_mw / 1000)
        assert one(values, "hpcobs_gpu_power_limit_watts", **lab) == g.power_limit_mw / 1000
        assert one(values, "hpcobs_gpu_energy_joules_total", **lab) == pytest.approx(
            g.energy_mj / 1000
        )
        for clock, nvml_clock in (("sm", 1), ("memory", 2), ("graphics", 0)):
            assert one(values, "hpcobs_gpu_clock_hertz", **lab, clock=clock) == (
                g.clocks_mhz[nvml_clock] * 1_000_000
            )
        for kind, code in (("corrected", 0), ("uncorrected", 1)):
            assert one(values, "hpcobs_gpu_ecc_errors_total", **lab, type=kind) == g.ecc[(code, 1)]
            assert (
                one(values, "hpcobs_gpu_ecc_volatile_errors_total", **lab, type=kind)
                == (g.ecc[(code, 0)])
            )
        assert one(values, "hpcobs_gpu_retired_pages", **lab, cause="multiple_single_bit_ecc") == 2
        assert one(values, "hpcobs_gpu_retired_pages", **lab, cause="double_bit_ecc") == 1
        assert one(values, "hpcobs_gpu_retired_pages_pending", **lab) == 0
        assert one(values, "hpcobs_gpu_remapped_rows", **lab, cause="correctable") == 2
        assert one(values, "hpcobs_gpu_remapped_rows", **lab, cause="uncorrectable") == 1
        assert one(values, "hpcobs_gpu_remapped_rows_pending", **lab) == 0
        assert one(values, "hpcobs_gpu_remapped_rows_failed", **lab) == 0
        assert one(values, "hpcobs_gpu_pcie_replay_total", **lab) == g.pcie_replay
        # GPM: MiB/s over the interval between the two scrapes (the fake's rates are constant)
        assert one(values, "hpcobs_gpu_pcie_transmit_bytes_per_second", **lab) == pytest.approx(
            g.gpm[pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC] * MIB
        )
        assert one(values, "hpcobs_gpu_pcie_receive_bytes_per_second", **lab) == pytest.approx(
            g.gpm[pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC] * MIB
        )
        for metric, metric_id in GPM_RATIOS.items():
            assert one(values, metric, **lab) == pytest.approx(g.gpm[metric_id] / 100)
        assert one(values, "hpcobs_gpu_nvlink_transmit_bytes_per_second", **lab) == pytest.approx(
            g.gpm[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC] * MIB
        )
        assert one(values, "hpcobs_gpu_nvlink_receive_bytes_per_second", **lab) == pytest.approx(
            g.gpm[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC] * MIB
        )
        links = series(values, "hpcobs_gpu_nvlink_state", **lab)
        assert len(links) == g.nvlinks
        for link in range(g.nvlinks):
            active = 0 if link in g.nvlink_down else 1
            assert one(values, "hpcobs_gpu_nvlink_state", **lab, link=str(link)) == active
            for counter, code in NVLINK_COUNTERS:
                assert (
                    one(
                        values,
                        "hpcobs_gpu_nvlink_errors_total",
                        **lab,
                        link=str(link),
                        counter=counter,
                    )
                    == g.nvlink_errors[code] + link
                )
        assert one(values, "hpcobs_gpu_fan_speed_ratio", **lab) == 0
        assert one(values, "hpcobs_gpu_performance_state", **lab) == 0
        assert one(values, "hpcobs_gpu_mig_enabled", **lab) == 0
        assert one(values, "hpcobs_gpu_processes", **lab) == 0
    # one series per active throttle reason, none for inactive ones
    reasons = {
        g.index: {
            dict(lab)["reason"]
            for lab in series(values, "hpcobs_gpu_clock_throttle_reason", **gpu_labels(g))
        }
        for g in gpus
    }
    assert reasons[0] == {"sw_power_cap", "sw_thermal_slowdown"}
    assert reasons[6] == {"gpu_idle", "bit_11"}


def test_exposition_parses_and_matches_declared_metrics(
    install: Callable[..., FakeNvml], make_collector: Any
) -> None:
    gpus = fleet(8)
    gpus[7].enable_mig()
    install(gpus)
    collector = make_collector()
    registry = CollectorRegistry()
    registry.register(collector)
    generate_latest(registry)  # the first GPM sample
    text = generate_latest(registry).decode()
    declared = {m.name.removesuffix("_total"): m for m in gpu.METRICS}
    seen = set()
    for family in text_string_to_metric_families(text):
        metric = declared[family.name]
        assert family.type == metric.kind
        for sample in family.samples:
            assert set(sample.labels) == set(metric.labels), sample
        seen.add(family.name)
    assert "hpcobs_gpu_xid_watcher" in seen or "hpcobs_gpu_xid_watcher_up" in seen
    assert {"hpcobs_gpu_sm_active_ratio", "hpcobs_gpu_mig_sm_active_ratio"} <= seen


def test_mig(install: Callable[..., FakeNvml], make_collector: Any) -> None:
    gpus = fleet(2)
    gpus[1].enable_mig(instances=3, slots=7)
    install(gpus)
    values = scrape(make_collector(xid=False))
    assert one(values, "hpcobs_gpu_mig_enabled", **gpu_labels(gpus[0])) == 0
    assert one(values, "hpcobs_gpu_mig_enabled", **gpu_labels(gpus[1])) == 1
    infos = series(values, "hpcobs_gpu_mig_info", **gpu_labels(gpus[1]))
    assert {(dict(lab)["gpu_instance"], dict(lab)["mig_uuid"]) for lab in infos} == {
        (str(m.gpu_instance_id), m.uuid) for m in gpus[1].mig if m is not None
    }
    for mig in gpus[1].mig:
        if mig is None:
            continue
        ids = {"gpu_instance": str(mig.gpu_instance_id), "compute_instance": "0"}
        assert one(values, "hpcobs_gpu_mig_memory_used_bytes", **gpu_labels(gpus[1]), **ids) == (
            mig.memory_used
        )
        assert one(values, "hpcobs_gpu_mig_memory_total_bytes", **gpu_labels(gpus[1]), **ids) == (
            mig.memory_total
        )
    # utilization is not supported on MIG devices by the driver: omitted, parent's still there
    assert not series(values, "hpcobs_gpu_mig_utilization_ratio")
    assert one(values, "hpcobs_gpu_utilization_ratio", **gpu_labels(gpus[1])) == 0.87
    assert not series(values, "hpcobs_gpu_mig_info", **gpu_labels(gpus[0]))


def test_gpu_lost_mid_scrape(
    install: Callable[..., FakeNvml], make_collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gpus = fleet(8)
    fake = install(gpus)
    collector = make_collector(xid=False)
    scrape(collector)  # the first GPM sample
    healthy = scrape(collector)
    per_gpu = len([k for k in healthy if dict(k[1]).get("gpu") == "0"])
    gpus[3].lose_after = 6  # answers 6 more calls, then NVML_ERROR_GPU_IS_LOST
    with caplog.at_level(logging.WARNING, logger="hpcobs.gpu"):
        lost = scrape(collector)
        again = scrape(collector)
    assert fake.gpu_calls[(3, "nvmlDeviceGetUtilizationRates")] == 4  # it was read, and retried
    for values in (lost, again):
        assert one(values, "hpcobs_gpu_up", **gpu_labels(gpus[3])) == 0
        assert [k for k in values if dict(k[1]).get("gpu") == "3"] == [
            ("hpcobs_gpu_up", frozenset(gpu_labels(gpus[3]).items()))
        ]
        for g in gpus:
            if g.index != 3:
                assert len([k for k in values if dict(k[1]).get("gpu") == str(g.index)]) == per_gpu
    warnings = [r for r in caplog.records if r.getMessage() == "GPU not answering"]
    assert len(warnings) == 1 and "GpuIsLost" in warnings[0].__dict__["err"]
    gpus[3].lost = False  # back (e.g. after a reset)
    with caplog.at_level(logging.INFO, logger="hpcobs.gpu"):
        back = scrape(collector)
    assert one(back, "hpcobs_gpu_up", **gpu_labels(gpus[3])) == 1
    assert any(r.getMessage() == "GPU answering again" for r in caplog.records)


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_UNKNOWN, pynvml.NVML_ERROR_TIMEOUT, pynvml.NVML_ERROR_GPU_IS_LOST]
)
def test_lost_kinds_mark_only_that_gpu_down(
    install: Callable[..., FakeNvml], make_collector: Any, code: int
) -> None:
    gpus = fleet(3)
    gpus[1].errors = {"nvmlDeviceGetPowerUsage": code}
    install(gpus)
    values = scrape(make_collector(xid=False))
    assert [one(values, "hpcobs_gpu_up", **gpu_labels(g)) for g in gpus] == [1, 0, 1]


def test_not_supported_omits_metric_logs_once_and_is_not_repeated(
    install: Callable[..., FakeNvml], make_collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gpus = fleet(4)
    unsupported = {
        "nvmlDeviceGetFanSpeed",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRetiredPages",
        "nvmlDeviceGetNvLinkState",
        "nvmlDeviceGetPcieThroughput",
    }
    gpus[2].not_supported = set(unsupported)
    fake = install(gpus)
    # NVML's own PCIe sample (as on GPUs without GPM): asked for, and then not supported
    collector = make_collector(xid=False, gpm=False, pcie_throughput=True)
    with caplog.at_level(logging.DEBUG, logger="hpcobs.gpu"):
        first = scrape(collector)
        asked = {name: fake.gpu_calls[(2, name)] for name in unsupported}
        power = fake.gpu_calls[(2, "nvmlDeviceGetPowerUsage")]
        second = scrape(collector)
    # asked in the first scrape, remembered as unsupported, not asked again
    assert all(n >= 1 for n in asked.values())
    assert {name: fake.gpu_calls[(2, name)] for name in unsupported} == asked
    assert fake.gpu_calls[(2, "nvmlDeviceGetPowerUsage")] == power + 1
    omitted = [
        "hpcobs_gpu_fan_speed_ratio",
        "hpcobs_gpu_energy_joules_total",
        "hpcobs_gpu_ecc_errors_total",
        "hpcobs_gpu_ecc_volatile_errors_total",
        "hpcobs_gpu_retired_pages",
        "hpcobs_gpu_nvlink_state",
        "hpcobs_gpu_nvlink_errors_total",
        "hpcobs_gpu_pcie_transmit_bytes_per_second",
    ]
    for values in (first, second):
        assert one(values, "hpcobs_gpu_up", **gpu_labels(gpus[2])) == 1
        for name in omitted:
            assert not series(values, name, **gpu_labels(gpus[2])), name
            assert series(values, name, **gpu_labels(gpus[0])), name
        assert one(values, "hpcobs_gpu_power_watts", **gpu_labels(gpus[2])) > 0
    debug = [
        r
        for r in caplog.records
        if r.levelno == logging.DEBUG and r.getMessage().startswith("not supported")
    ]
    calls_logged = [
        (r.__dict__["gpu"], r.__dict__["call"]) for r in debug if r.__dict__["gpu"] == "2"
    ]
    assert len(calls_logged) == len(set(calls_logged))  # once per GPU and call
    assert {c for _, c in calls_logged} >= {"fan", "energy", "pcie_tx", "nvlink_state"}


def test_old_driver_fallbacks(install: Callable[..., FakeNvml], make_collector: Any) -> None:
    """A driver without nvmlDeviceGetCurrentClocksEventReasons / nvmlDeviceGetMemoryInfo_v2."""
    gpus = fleet(1)
    fake = install(gpus)
    fake.module.nvmlDeviceGetCurrentClocksEventReasons = _missing(
        "nvmlDeviceGetCurrentClocksEventReasons"
    )
    v2_capable = fake.module.nvmlDeviceGetMemoryInfo

    def memory_v1_only(handle: Any, version: int | None = None) -> Any:
        if version:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return v2_capable(handle)

    fake.module.nvmlDeviceGetMemoryInfo = memory_v1_only
    values = scrape(make_collector(xid=False))
    lab = gpu_labels(gpus[0])
    assert {
        dict(k)["reason"] for k in series(values, "hpcobs_gpu_clock_throttle_reason", **lab)
    } == {
        "sw_power_cap",
        "sw_thermal_slowdown",
    }
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1
    # v1 counts driver-reserved memory as used
    assert one(values, "hpcobs_gpu_memory_used_bytes", **lab) == (
        gpus[0].memory_used + gpus[0].memory_reserved
    )


def test_no_nvml_library_is_up_without_series_and_logs_once(
    install: Callable[..., FakeNvml], make_collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = install()
    fake.library_missing = True
    clock = FakeClock()
    collector = make_collector(clock=clock, backoff_initial=5.0)
    with caplog.at_level(logging.DEBUG, logger="hpcobs.gpu"):
        assert scrape(collector) == {}
        assert scrape(collector) == {}  # within the backoff: NVML not asked again
        assert fake.calls["nvmlInitWithFlags"] == 1
        clock.now += 6
        assert scrape(collector) == {}  # retried, still absent
        assert fake.calls["nvmlInitWithFlags"] == 2
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "no NVIDIA GPU" in infos[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    coordinator = ScrapeCoordinator([collector], timeout=5)
    up = [s for f in coordinator.scrape() for s in f.samples if s.name == "hpcobs_collector_up"]
    assert [s.value for s in up] == [1.0]


def test_no_pynvml_installed_is_like_no_library(
    monkeypatch: pytest.MonkeyPatch, make_collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with caplog.at_level(logging.INFO, logger="hpcobs.gpu"):
        assert scrape(make_collector()) == {}
    assert [r.getMessage() for r in caplog.records] == [
        "no NVIDIA GPU here; the gpu collector exports nothing"
    ]


def test_no_gpu(install: Callable[..., FakeNvml], make_collector: Any) -> None:
    fake = install([])
    assert scrape(make_collector()) == {}
    assert fake.refcount == 0  # initialised, found nothing, shut down again


def test_init_failure_is_retried_with_backoff(
    install: Callable[..., FakeNvml], make_collector: Any
) -> None:
    fake = install(fleet(2))
    fake.init_errors = [pynvml.NVML_ERROR_UNKNOWN, pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH]
    clock = FakeClock()
    collector = make_collector(clock=clock, backoff_initial=5.0, backoff_max=60.0, xid=False)
    coordinator = ScrapeCoordinator([collector], timeout=5)

    def collector_up() -> float:
        samples = [s for f in coordinator.scrape() for s in f.samples]
        return float(next(s.value for s in samples if s.name == "hpcobs_collector_up"))

    with pytest.raises(NvmlInitError, match="Unknown"):
        scrape(collector)
    assert collector_up() == 0  # still in backoff: the scrape goes on, collector down
    assert fake.calls["nvmlInitWithFlags"] == 1
    clock.now += 5
    assert collector_up() == 0  # second attempt fails; backoff doubles to 10 s
    assert fake.calls["nvmlInitWithFlags"] == 2
    clock.now += 9
    assert collector_up() == 0
    assert fake.calls["nvmlInitWithFlags"] == 2
    clock.now += 1.5
    values = scrape(collector)
    assert fake.calls["nvmlInitWithFlags"] == 3
    assert [one(values, "hpcobs_gpu_up", gpu=str(i)) for i in range(2)] == [1, 1]


def test_init_that_hangs_does_not_hang_the_scrape(
    install: Callable[..., FakeNvml], make_collector: Any
) -> None:
    fake = install(fleet(1))
    fake.init_hang = threading.Event()
    collector = make_collector(timeout=0.5, xid=False)
    started = time.monotonic()
    with pytest.raises(NvmlInitError):
        scrape(collector)
    assert time.monotonic() - started < 2.0
    fake.init_hang.set()


def test_wedged_gpu_is_down_within_budget_and_not_piled_up(
    install: Callable[..., FakeNvml], make_collector: Any
) -> None:
    gpus = fleet(8)
    fake = install(gpus)
    collector = make_collector(timeout=1.0, xid=False)
    scrape(collector)
    gpus[5].hang = threading.Event()
    try:
        started = time.monotonic()
        values = scrape(collector)
        took = time.monotonic() - started
        assert took < 2.5
        assert one(values, "hpcobs_gpu_up", **gpu_labels(gpus[5])) == 0
        assert [one(values, "hpcobs_gpu_up", gpu=str(i)) for i in range(8) if i != 5] == [1] * 7
        calls = sum(n for (index, _), n in fake.gpu_calls.items() if index == 5)
        values = scrape(collector)  # the stuck read is not started again
        assert one(values, "hpcobs_gpu_up", **gpu_labels(gpus[5])) == 0
        assert sum(n for (index, _), n in fake.gpu_calls.items() if index == 5) == calls
        # one persistent worker per GPU: the wedged GPU holds its one thread, and scrapes
        # start none
        assert len([t for t in threading.enumerate() if t.name == "nvml-gpu5"]) == 1
        threads = threading.active_count()
        scrape(collector)
        assert threading.active_count() <= threads
    finally:
        gpus[5].hang.set()
        gpus[5].hang = None
    wait_until(lambda: not collector.source.flights.running("gpu5"))
    assert one(scrape(collector), "hpcobs_gpu_up", **gpu_labels(gpus[5])) == 1


def test_wedged_device_count_marks_all_gpus_down(
    install: Callable[..., FakeNvml], make_collector: Any
) -> None:
    gpus = fleet(3)
    fake = install(gpus)
    collector = make_collector(timeout=1.0, xid=False)
    scrape(collector)
    release = threading.Event()
    real_count = fake.module.nvmlDeviceGetCount

    def stuck() -> int:
        release.wait()
        return int(real_count())

    fake.module.nvmlDeviceGetCount = stuck
    try:
        started = time.monotonic()
        values = scrape(collector)
        assert time.monotonic() - started < 2.5
        assert [one(values, "hpcobs_gpu_up", gpu=str(i)) for i in range(3)] == [0, 0, 0]
        assert not series(values, "hpcobs_gpu_power_watts")
    finally:
        release.set()


def test_flags_reach_the_collector(tmp_path: Any) -> None:
    from hpcobs.exporters.collectors import jobs
    from hpcobs.exporters.runtime.app import build_parser
    from hpcobs.exporters.runtime.cli import parse_args

    parser = build_parser("test", "test", ":0", [gpu.SPEC, jobs.SPEC], paths=True)
    args = parse_args(
        parser,
        [
            "--collector.gpu.timeout=1500ms",
            f"--collector.gpu.job-mapping-dir={tmp_path}",
            "--no-collector.gpu.xid",
            "--no-collector.gpu.pcie-throughput",
            "--collector.gpu.max-jobs=9",
            "--no-attribution.environ-fallback",
        ],
    )
    collector = gpu.SPEC.factory(args, Services(args))
    assert isinstance(collector, GpuCollector)
    assert collector.source.timeout == 1.5 and collector.source.xid_enabled is False
    assert collector.source.pcie_throughput is False and collector.max_jobs == 9
    assert collector.job_mapping_dir == str(tmp_path)
    assert collector.attributor.environ_fallback is False
    defaults = gpu.SPEC.factory(ns := parse_args(parser, []), Services(ns))
    assert isinstance(defaults, GpuCollector)
    source = defaults.source
    assert source.xid_enabled and source.processes_enabled and source.timeout == 4.0
    assert source.gpm_enabled is True and source.pcie_throughput is False
    ns = parse_args(parser, ["--no-collector.gpu.gpm", "--collector.gpu.pcie-throughput"])
    legacy = gpu.SPEC.factory(ns, Services(ns))
    assert isinstance(legacy, GpuCollector)
    assert legacy.source.gpm_enabled is False and legacy.source.pcie_throughput is True
    assert defaults.attributor.environ_fallback is True
    with pytest.raises(SystemExit):
        parse_args(parser, ["--collector.gpu.max-jobs=0"])


def test_gpu_alone_has_the_attribution_flags() -> None:
    """The attribution service's flags come with every collector that uses it."""
    from hpcobs.exporters.runtime.app import build_parser
    from hpcobs.exporters.runtime.cli import parse_args

    parser = build_parser("test", "test", ":0", [gpu.SPEC], paths=True)
    for flag, want in (
        ("--no-attribution.environ-fallback", False),
        ("--no-collector.jobs.environ-fallback", False),  # the older spelling still works
        ("--attribution.environ-fallback", True),
    ):
        args = parse_args(parser, [flag])
        collector = gpu.SPEC.factory(args, Services(args))
        assert isinstance(collector, GpuCollector)
        assert collector.attributor.environ_fallback is want, flag


def test_gpu_lost_at_start_is_enumerated_later(
    install: Callable[..., FakeNvml], make_collector: Any
) -> None:
    gpus = fleet(3)
    gpus[2].lost = True
    install(gpus)
    collector = make_collector(xid=False)
    values = scrape(collector)
    assert [one(values, "hpcobs_gpu_up", gpu=str(i)) for i in range(3)] == [1, 1, 0]
    assert one(values, "hpcobs_gpu_up", gpu="2", uuid="") == 0  # its UUID is not known yet
    gpus[2].lost = False
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_up", **gpu_labels(gpus[2])) == 1
    assert one(values, "hpcobs_gpu_info", **gpu_labels(gpus[2]), name=gpus[2].name) == 1


# -- XID events ------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    if not wait_until(predicate, timeout):
        raise AssertionError("condition not met in time")


XidThreads = Callable[[], list[threading.Thread]]


@pytest.fixture
def xid_threads() -> XidThreads:
    """The XID threads started during this test (an earlier test's may still be finishing its
    last NVML wait: close() does not wait for it)."""
    before = set(threading.enumerate())

    def started() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "nvml-xid-events" and t not in before]

    return started


def test_xid_event_stream(
    install: Callable[..., FakeNvml], make_collector: Any, xid_threads: XidThreads
) -> None:
    gpus = fleet(8)
    gpus[6].enable_mig()
    fake = install(gpus)
    collector = make_collector(xid_wait_ms=50)
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_xid_watcher_up") == 1
    assert not series(values, "hpcobs_gpu_xid_errors_total")

    fake.xid(0, 79)
    fake.xid(0, 79)
    fake.xid(2, 48)
    fake.event_error(pynvml.NVML_ERROR_GPU_IS_LOST)  # the wait itself fails: keep listening
    fake.event_error(pynvml.NVML_ERROR_UNKNOWN)
    fake.xid(7, 13)
    fake.xid(6, 94, gpu_instance=8)  # from a MIG instance: counted on its GPU
    expected = {
        (str(g), gpus[g].uuid, xid): n
        for g, xid, n in [(0, 79, 2), (2, 48, 1), (7, 13, 1), (6, 94, 1)]
    }
    wait_for(lambda: collector.source.xid_counts() == expected)
    values = scrape(collector)
    for (g, uuid, xid), n in expected.items():
        assert one(values, "hpcobs_gpu_xid_errors_total", gpu=g, uuid=uuid, xid=str(xid)) == n

    # GPU 0 falls off the bus: it is down, but its XID counters stay (they explain why)
    gpus[0].lost = True
    fake.xid(0, 79)
    wait_for(lambda: collector.source.xid_counts()[("0", gpus[0].uuid, 79)] == 3)
    values = scrape(collector)
    assert one(values, "hpcobs_gpu_up", **gpu_labels(gpus[0])) == 0
    assert not series(values, "hpcobs_gpu_power_watts", **gpu_labels(gpus[0]))
    assert one(values, "hpcobs_gpu_xid_errors_total", **gpu_labels(gpus[0]), xid="79") == 3
    assert one(values, "hpcobs_gpu_xid_watcher_up") == 1
    assert len(xid_threads()) == 1

    started = time.monotonic()
    collector.close()
    assert time.monotonic() - started < 2.0
    assert xid_threads() == []
    assert fake.event_sets_open() == 0 and fake.refcount == 0


def test_xid_registration_not_supported(
    install: Callable[..., FakeNvml], make_collector: Any
) -> None:
    gpus = fleet(3)
    gpus[1].not_supported = {"nvmlDeviceRegisterEvents"}
    fake = install(gpus)
    collector = make_collector(xid_wait_ms=50)
    assert one(scrape(collector), "hpcobs_gpu_xid_watcher_up") == 1
    fake.xid(1, 31)  # not registered: never delivered
    fake.xid(2, 31)
    wait_for(lambda: bool(collector.source.xid_counts()))
    time.sleep(0.1)
    assert collector.source.xid_counts() == {("2", gpus[2].uuid, 31): 1}


def test_close_does_not_wait_for_a_long_xid_wait(
    install: Callable[..., FakeNvml], make_collector: Any, xid_threads: XidThreads
) -> None:
    """nvmlEventSetWait cannot be interrupted: close() asks the thread to stop and returns;
    the thread frees its event set and shuts NVML down once its wait ends."""
    fake = install(fleet(2))
    collector = make_collector(xid_wait_ms=1500)
    scrape(collector)
    scrape(collector)
    wait_for(lambda: fake.calls["nvmlEventSetWait_v2"] >= 1)
    started = time.monotonic()
    collector.close()
    assert time.monotonic() - started < 1.0
    assert fake.gpm_samples_open() == 0  # freed before, on each GPU's worker
    wait_for(lambda: xid_threads() == [] and fake.refcount == 0 and fake.event_sets_open() == 0)


def test_no_xid_thread_when_no_gpu_supports_events(
    install: Callable[..., FakeNvml], make_collector: Any, xid_threads: XidThreads
) -> None:
    fake = install(fleet(2, not_supported={"nvmlDeviceRegisterEvents"}))
    values = scrape(make_collector())
    assert one(values, "hpcobs_gpu_xid_watcher_up") == 0
    assert xid_threads() == [] and fake.event_sets_open() == 0


def test_xid_disabled(
    install: Callable[..., FakeNvml], make_collector: Any, xid_threads: XidThreads
) -> None:
    fake = install(fleet(2))
    values = scrape(make_collector(xid=False))
    assert one(values, "hpcobs_gpu_xid_watcher_up") == 0
    assert fake.calls["nvmlEventSetCreate"] == 0 and xid_threads() == []


# -- GPU → Slurm job -------------------------------------------------------------------------

LINUXPROC = Path(__file__).resolve().parent.parent / "data" / "jobs" / "linuxproc" / "proc"
GIB = 1 << 30


def test_gpu_processes_attributed_to_jobs(
    install: Callable[..., FakeNvml], make_collector: Any
) -> None:
    """PIDs from nvmlDeviceGetComputeRunningProcesses → jobs, on the linuxproc fixture tree
    (tests/data/jobs/linuxproc/expected-jobs.txt: 3003, 3004 → 3001; 3102 → 3002; 3201 → 3003)."""
    gpus = fleet(3)
    gpus[0].processes = [
        FakeProcess(3003, 1 * GIB),
        FakeProcess(3004, 2 * GIB),
        FakeProcess(3102, None),  # the driver does not say how much memory
        FakeProcess(3301, 5 * GIB),  # not a Slurm job's process
        FakeProcess(424242, GIB),  # exited since NVML listed it
    ]
    gpus[1].processes = [FakeProcess(3201, 4 * GIB)]
    install(gpus)
    values = scrape(make_collector(xid=False, procfs=str(LINUXPROC)))
    jobs_on = {
        g.index: {dict(k)["job_id"] for k in series(values, "hpcobs_gpu_job_info", **gpu_labels(g))}
        for g in gpus
    }
    assert jobs_on == {0: {"3001", "3002"}, 1: {"3003"}, 2: set()}
    memory = series(values, "hpcobs_gpu_job_memory_used_bytes")
    assert {(dict(k)["gpu"], dict(k)["job_id"]): v for k, v in memory.items()} == {
        ("0", "3001"): 3 * GIB,
        ("1", "3003"): 4 * GIB,
    }
    assert one(values, "hpcobs_gpu_processes", **gpu_labels(gpus[0])) == 5
    assert one(values, "hpcobs_gpu_processes", **gpu_labels(gpus[2])) == 0


def test_max_jobs_per_gpu(install: Callable[..., FakeNvml], make_collector: Any) -> None:
    gpus = fleet(1)
    gpus[0].processes = [FakeProcess(3003, GIB), FakeProcess(3102, GIB), FakeProcess(3201, GIB)]
    install(gpus)
    values = scrape(make_collector(xid=False, procfs=str(LINUXPROC), max_jobs=2))
    assert {dict(k)["job_id"] for k in series(values, "hpcobs_gpu_job_info")} == {"3001", "3002"}


def test_job_mapping_dir(
    install: Callable[..., FakeNvml], make_collector: Any, tmp_path: Path
) -> None:
    """dcgm-exporter's --hpc-job-mapping-dir convention: one file per GPU, job ids inside."""
    gpus = fleet(4)
    gpus[2].enable_mig()
    install(gpus)
    mapping = tmp_path / "job-map"
    mapping.mkdir()
    (mapping / "0").write_text("1234\n1235\n")
    (mapping / gpus[1].uuid).write_text("777 1000\n")  # jobstats style: "<job> <uid>"
    mig = gpus[2].mig[1]
    assert mig is not None
    (mapping / mig.uuid).write_text("555\n")  # a MIG device: counted on its GPU
    (mapping / "3").write_text("999\n")
    (mapping / "9").write_text("42\n")  # no such GPU
    (mapping / "README").write_text("not a GPU\n")
    collector = make_collector(xid=False, job_mapping_dir=str(mapping))
    assert series(scrape(collector), "hpcobs_gpu_job_info", **gpu_labels(gpus[3]))
    gpus[3].lost = True  # GPU 3 is lost: no job series for it either
    values = scrape(collector)
    jobs_on = {
        g.index: {dict(k)["job_id"] for k in series(values, "hpcobs_gpu_job_info", **gpu_labels(g))}
        for g in gpus
    }
    assert jobs_on == {0: {"1234", "1235"}, 1: {"777"}, 2: {"555"}, 3: set()}
    assert not series(values, "hpcobs_gpu_job_memory_used_bytes")  # the files say no memory
    (mapping / "0").unlink()  # the epilog removed it: the job no longer holds GPU 0
    assert not series(scrape(collector), "hpcobs_gpu_job_info", gpu="0")


def test_unreadable_mapping_dir_is_reported_once(
    install: Callable[..., FakeNvml], make_collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    install(fleet(1))
    collector = make_collector(xid=False, job_mapping_dir="/nonexistent/job-map")
    with caplog.at_level(logging.WARNING, logger="hpcobs.gpu"):
        scrape(collector)
        values = scrape(collector)
    assert one(values, "hpcobs_gpu_up", gpu="0") == 1
    assert len([r for r in caplog.records if "mapping directory" in r.getMessage()]) == 1


# -- through the HTTP server -----------------------------------------------------------------


def test_served_over_http(install: Callable[..., FakeNvml], make_collector: Any) -> None:
    gpus = fleet(8)
    gpus[3].lose_after = 10
    install(gpus)
    running = Running([make_collector(xid_wait_ms=50)], timeout=5.0)
    try:
        status, _, body = running.get("/metrics")
    finally:
        running.stop()
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    up = {s.labels["gpu"]: s.value for s in families["hpcobs_gpu_up"].samples}
    assert up == {str(i): (0.0 if i == 3 else 1.0) for i in range(8)}
    collector_up = {s.labels["collector"]: s.value for s in families["hpcobs_collector_up"].samples}
    assert collector_up == {"gpu": 1.0}


# -- import cost -----------------------------------------------------------------------------

IMPORTS = """
import sys
from hpcobs.exporters.collectors import discover
from hpcobs.exporters.node import DEFAULT_LISTEN, PROGRAM
from hpcobs.exporters.runtime.app import build_collectors, build_parser
from hpcobs.exporters.runtime.cli import parse_args
specs = discover()
parser = build_parser(PROGRAM, "test", DEFAULT_LISTEN, specs, paths=True)
args = parse_args(parser, ["--collector.disable-defaults", *sys.argv[1:]])
for collector in build_collectors(args, specs):
    collector.close()
print("hpcobs.exporters.sources.nvml" in sys.modules)
"""


@pytest.mark.parametrize(
    ("flags", "loaded"), [(["--collector.rdma"], "False"), (["--collector.gpu"], "True")]
)
def test_nvml_source_is_not_imported_without_the_gpu_collector(
    flags: list[str], loaded: str
) -> None:
    """A daemon without the gpu collector reads gpu.py for its flags and metric docs, but does
    not load the NVML source (~0.4 MiB of RSS)."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", IMPORTS, *flags], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == loaded
