"""hpcobs-job report: findings (pure: figures → sentences) and the number formats."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.slo.jobreport import findings as f
from hpcobs.slo.jobreport.model import (
    Alert,
    CheckpointStream,
    Fact,
    GpuUsage,
    JobReport,
    LustreUsage,
    NodeUsage,
    Slurm,
    Window,
)
from hpcobs.slo.jobreport.units import fmt_bytes, fmt_duration, fmt_pct

pytestmark = pytest.mark.unit

ratios = st.floats(0, 1, allow_nan=False)
maybe_ratio = st.none() | ratios
sizes = st.floats(0, 2**60, allow_nan=False)
maybe_size = st.none() | sizes
seconds = st.floats(0, 10 * 86400, allow_nan=False)


def unknown(why: str = "x") -> Fact[str]:
    return Fact(None, why)


def report(**changes: object) -> JobReport:
    base = JobReport(
        job_id="42",
        cluster="c",
        as_of=1000.0,
        prometheus="http://p",
        window=Window(0.0, 100.0, live=False),
        nodes=("n1",),
        slurm=Slurm(unknown(), unknown(), unknown(), unknown(), Fact(None, "x")),
        node_usage=(),
        gpus=(),
        lustre=(),
        checkpoints=(),
        alerts=(),
        queries=(),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def gpu(mean: float | None, peak: float | None = None, mem: float | None = None) -> GpuUsage:
    return GpuUsage("n1", "0", "GPU-0", mean, mean if peak is None else peak, mem, 80 * 2**30)


# -- the sentences the issue names --------------------------------------------------------
def test_gpus_idle_62_percent_of_the_run() -> None:
    found = f.gpu_idle([gpu(0.30), gpu(0.46)])
    assert found is not None
    assert found.text == "GPUs idle 62% of the run (mean utilisation 38% over 2 GPUs)"
    assert found.level == "warn" and found.value == pytest.approx(0.62)


def test_checkpoints_took_9_percent_of_the_run() -> None:
    streams = [
        CheckpointStream("n1", "model", {"success": 3}, 6.0, 2.5, 2.0),
        CheckpointStream("n1", "optim", {"success": 3}, 3.0, 1.0, 1.0),
        CheckpointStream("n2", "model", {"success": 3}, 5.0, 2.0, 2.0),
    ]
    found = f.checkpoint_share(streams, 100.0)
    assert found is not None
    # the busiest node: n1, 6 + 3 s of 100 s
    assert found.text == "checkpoints took 9.0% of the run, above the 5.0% target"
    assert found.level == "warn"


@given(st.lists(ratios, min_size=1, max_size=16))
def test_gpu_idle_is_one_minus_the_mean_utilisation(utils: list[float]) -> None:
    found = f.gpu_idle([gpu(u) for u in utils])
    assert found is not None and found.value is not None
    mean = sum(utils) / len(utils)
    assert found.value == pytest.approx(1 - mean)
    assert f"GPUs idle {fmt_pct(1 - mean)} of the run" in found.text
    assert (found.level == "warn") == (found.value >= f.GPU_IDLE_WARN)


@given(st.lists(st.tuples(st.sampled_from("abc"), seconds), max_size=8), seconds)
def test_checkpoint_share_is_the_busiest_nodes_sum_over_the_run(
    streams: list[tuple[str, float]], run: float
) -> None:
    found = f.checkpoint_share(
        [CheckpointStream(node, "m", {}, s, None, None) for node, s in streams], run
    )
    if not streams or run == 0:
        assert found is None
        return
    per_node: dict[str, float] = {}
    for node, s in streams:
        per_node[node] = per_node.get(node, 0.0) + s
    assert found is not None
    assert found.value == pytest.approx(max(per_node.values()) / run)
    assert (found.level == "warn") == (found.value > f.CHECKPOINT_TARGET)


def test_cpu_efficiency_needs_the_allocation_else_cores() -> None:
    nodes = [NodeUsage("n1", 30.0, None), NodeUsage("n2", 10.0, None)]
    eff = f.cpu(nodes, 100.0, 400.0)
    assert eff is not None and eff.key == "cpu_efficiency" and eff.value == pytest.approx(0.1)
    assert eff.text.startswith("CPU efficiency 10%")
    cores = f.cpu(nodes, 100.0, None)
    assert cores is not None and cores.key == "cpu_cores" and cores.value == pytest.approx(0.2)
    assert "allocation unknown" in cores.text
    assert f.cpu([NodeUsage("n1", None, 5.0)], 100.0, 400.0) is None


def test_unused_gpus_and_low_memory() -> None:
    gpus = [gpu(0.0, 0.0, 2**30), gpu(0.5, 0.9, 4 * 2**30)]
    unused = f.gpus_unused(gpus)
    assert unused is not None and unused.text.startswith("1 of 2 GPUs never ran a kernel")
    memory = f.gpu_memory(gpus)
    assert memory is not None and "5.0%" in memory.text  # 4 GiB of 80 GiB
    assert f.gpu_memory([gpu(0.5, None, 60 * 2**30)]) is None  # 75%: nothing to say


def test_outcome_says_whose_fault_it_was() -> None:
    system = f.outcome("node_fail", "system")
    assert system is not None and "system failure" in system.text
    user = f.outcome("failed", "user")
    assert user is not None and "see its output" in user.text
    assert f.outcome("completed", "none") is None
    assert f.outcome("running", None) is None
    assert f.outcome(None, None) is None


def test_lustre_rate_and_lower_bound_after_a_reset() -> None:
    fs = [LustreUsage("scratch", 2**30, 3 * 2**30, {}, 0)]
    found = f.lustre(fs, 1024.0)
    assert found is not None
    assert found.text == "Lustre: 1.00 GiB read and 3.00 GiB written (4.00 MiB/s on average)"
    reset = f.lustre([dataclasses.replace(fs[0], resets=1)], None)
    assert reset is not None and reset.text.startswith("Lustre: at least")
    assert f.lustre([LustreUsage("scratch", 0, 0, {}, 0)], 10.0) is None


def test_queue_wait_longer_than_the_run() -> None:
    found = f.queue(7200.0, 600.0)
    assert found is not None
    assert found.text == "waited 2 h 00 m in the queue, longer than it ran (10 m 00 s)"
    assert f.queue(60.0, 600.0) is None
    assert f.queue(None, 600.0) is None


def test_nothing_known_nothing_found() -> None:
    assert f.findings(report()) == ()
    assert f.findings(report(window=None)) == ()


# -- any report: findings never raise and never print a missing value ----------------------
gpus = st.builds(
    GpuUsage,
    st.just("n1"),
    st.sampled_from(["0", "1", "x"]),
    st.just("GPU-0"),
    maybe_ratio,
    maybe_ratio,
    maybe_size,
    st.none() | st.floats(0, 2**40, allow_nan=False),
)
streams = st.builds(
    CheckpointStream,
    st.sampled_from(["n1", "n2"]),
    st.sampled_from(["a", "b"]),
    st.dictionaries(st.sampled_from(["success", "failure"]), st.integers(0, 9).map(float)),
    st.none() | seconds,
    st.none() | seconds,
    st.none() | seconds,
)
any_report = st.builds(
    report,
    window=st.none() | st.builds(lambda a, b: Window(a, a + b, live=False), seconds, seconds),
    node_usage=st.lists(
        st.builds(NodeUsage, st.sampled_from(["n1", "n2"]), st.none() | seconds, maybe_size),
        max_size=3,
    ).map(tuple),
    gpus=st.lists(gpus, max_size=4).map(tuple),
    lustre=st.lists(
        st.builds(
            LustreUsage,
            st.just("fs"),
            maybe_size,
            maybe_size,
            st.just({}),
            st.integers(0, 2),
        ),
        max_size=2,
    ).map(tuple),
    checkpoints=st.lists(streams, max_size=4).map(tuple),
    alerts=st.lists(
        st.builds(Alert, st.just("A"), st.just("page"), st.just({}), st.none(), st.none()),
        max_size=2,
    ).map(tuple),
)


@given(any_report)
def test_findings_on_any_figures(r: JobReport) -> None:
    out = f.findings(r)
    assert len({x.key for x in out}) == len(out)
    for x in out:
        assert x.text and "None" not in x.text and "nan" not in x.text.lower()
        assert x.value is None or math.isfinite(x.value)
    assert f.findings(r) == out  # pure


# -- number formats -------------------------------------------------------------------------
_BYTES = re.compile(r"(-?[0-9.]+) (B|KiB|MiB|GiB|TiB|PiB|EiB)")


@given(sizes)
def test_fmt_bytes_is_within_its_precision(value: float) -> None:
    text = fmt_bytes(value)
    m = _BYTES.fullmatch(text)
    assert m, text
    back = float(m.group(1)) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"].index(
        m.group(2)
    )
    assert back == pytest.approx(value, rel=0.006, abs=0.5)
    assert float(m.group(1)) < 1024


@given(seconds)
def test_fmt_duration_reads_back(value: float) -> None:
    text = fmt_duration(value)
    m = re.fullmatch(r"([0-9.]+) s|(\d+) m (\d\d) s|(\d+) h (\d\d) m|(\d+) d (\d\d) h", text)
    assert m, text
    if m.group(1):
        back, unit = float(m.group(1)), 0.01
    elif m.group(2):
        back, unit = int(m.group(2)) * 60 + int(m.group(3)), 1.0
    elif m.group(4):
        back, unit = int(m.group(4)) * 3600 + int(m.group(5)) * 60, 60.0
    else:
        back, unit = int(m.group(6)) * 86400 + int(m.group(7)) * 3600, 3600.0
    assert abs(back - value) <= max(unit, value * 0.006)


def test_missing_values_print_a_dash() -> None:
    assert fmt_bytes(None) == fmt_duration(None) == fmt_pct(None) == "-"
    assert fmt_bytes(math.nan) == "-"
