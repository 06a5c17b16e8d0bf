"""Whole-output goldens of the node exporter, as node_exporter keeps its `e2e-output.txt`.

For each fixture case, the node daemon's full text exposition (`/metrics`, text format 0.0.4),
produced by the daemon's own code path: its flag parser, `build_collectors`, the scrape
coordinator with `hpcobs_build_info`, and the text encoder. Only what changes from run to run
is masked: durations, timestamps and the build information. A change to any metric name, label
or value shows up as a diff of `tests/golden/node/<case>.prom` in review.

Regenerate every golden (after an intended change), and review the diff:

    make golden          # = .venv/bin/python tests/harness/node_golden.py --write
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # run as a script: harness.* and fakes.* as in the tests
    sys.path.insert(0, str(TESTS))

from hpcobs.exporters.collectors import discover  # noqa: E402
from hpcobs.exporters.node import DEFAULT_LISTEN, PROGRAM  # noqa: E402
from hpcobs.exporters.runtime.app import build_collectors, build_parser  # noqa: E402
from hpcobs.exporters.runtime.cli import parse_args  # noqa: E402
from hpcobs.exporters.runtime.exposition import generate_text  # noqa: E402
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator  # noqa: E402
from hpcobs.exporters.version import build_info  # noqa: E402

from harness.lustre_trees import build_client_212, build_server_212  # noqa: E402

GOLDEN = TESTS / "golden" / "node"
FIXTURES = TESTS / "data" / "fixtures"
ONLY = ("--collector.disable-defaults",)
MASK = "<masked>"


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    # workdir → the daemon's flags (besides ONLY); may build a tree under workdir
    flags: Callable[[Path], list[str]]
    fake_gpus: int = 0


def _rdma(work: Path) -> list[str]:
    sysfs = FIXTURES / "sysfs-infiniband-procfs" / "sys"
    return ["--collector.rdma", "--no-collector.rdma.netlink", f"--path.sysfs={sysfs}"]


def _lustre_tree(root: Path) -> list[str]:
    return [
        "--collector.lustre",
        "--collector.lustre.lctl-path=",
        f"--path.procfs={root / 'proc'}",
        f"--path.sysfs={root / 'sys'}",
    ]


def _lustre_210(work: Path) -> list[str]:
    return _lustre_tree(FIXTURES / "lustre-2.10-hpe")


def _lustre_212_client(work: Path) -> list[str]:
    build_client_212(work)
    return _lustre_tree(work)


def _lustre_214_server(work: Path) -> list[str]:
    build_server_212(
        work,
        {
            "scratch-OST0000": {"1001": (4096, 8192), "1002": (0, 40960)},
            "scratch-OST0001": {"1001": (0, 4096)},
        },
    )
    return [*_lustre_tree(work), "--collector.lustre.job-io-operations"]


def _gpu(work: Path) -> list[str]:
    (work / "gpu-jobs").mkdir()  # dcgm-style job mapping: none held
    return ["--collector.gpu", f"--collector.gpu.job-mapping-dir={work / 'gpu-jobs'}"]


CASES = {
    case.name: case
    for case in (
        Case("rdma", "the Prometheus procfs InfiniBand sysfs tree (4 HCAs)", _rdma),
        Case("lustre-2.10", "HPE lustre_exporter's 2.10 client + MDS + OSS tree", _lustre_210),
        Case("lustre-2.12-client", "a 2.12+ client: /sys/fs/lustre + debugfs", _lustre_212_client),
        Case(
            "lustre-2.14-server",
            "a 2.12+ OSS/MDS with 2.14+ job_stats and per-job operations",
            _lustre_214_server,
        ),
        Case("gpu-fake-8", "a node of 8 fake H100s at the pynvml boundary", _gpu, fake_gpus=8),
    )
}

# Values that differ between runs: how long a collection took, when something happened, and
# which build and Python produced the output.
_DURATION = re.compile(r"^(hpcobs_collector_duration_seconds\{[^}]*\}) .*$", re.M)
_TIMESTAMP = re.compile(r"^(hpcobs_\w*timestamp_seconds(?:\{[^}]*\})?) .*$", re.M)
_BUILD = re.compile(r"^hpcobs_build_info\{.*\} 1\.0$", re.M)


def mask(text: str) -> str:
    text = _DURATION.sub(rf"\1 {MASK}", text)
    text = _TIMESTAMP.sub(rf"\1 {MASK}", text)
    return _BUILD.sub(f"hpcobs_build_info{{{MASK}}} 1.0", text)


@contextlib.contextmanager
def _fake_pynvml(gpus: int) -> Iterator[None]:
    if not gpus:
        yield
        return
    from fakes.pynvml_fake import FakeNvml, fleet

    saved = sys.modules.get("pynvml")
    sys.modules["pynvml"] = FakeNvml(fleet(gpus)).module  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = saved


def render(case: Case, work: Path) -> str:
    """The masked exposition of one scrape of the node daemon configured for `case`."""
    specs = discover()
    parser = build_parser(PROGRAM, "golden", DEFAULT_LISTEN, specs, paths=True)
    args = parse_args(parser, [*ONLY, *case.flags(work)])
    with _fake_pynvml(case.fake_gpus):
        collectors = build_collectors(args, specs)
        coordinator = ScrapeCoordinator(collectors, timeout=args.scrape_timeout)
        try:

            class _Registry:
                def collect(self) -> Iterator[object]:
                    yield from coordinator.scrape()
                    yield from build_info()

            body = generate_text(_Registry())  # type: ignore[arg-type]
        finally:
            coordinator.close()
    return mask(body.decode())


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.prom"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite tests/golden/node/*.prom")
    parser.add_argument("cases", nargs="*", default=sorted(CASES), help="cases (default: all)")
    args = parser.parse_args()
    differ = 0
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        with tempfile.TemporaryDirectory(prefix=f"golden-{name}-") as work:
            text = render(CASES[name], Path(work))
        path = golden_path(name)
        if args.write:
            path.write_text(text)
            print(f"wrote {path.relative_to(TESTS.parent)} ({text.count(chr(10))} lines)")
        elif not path.is_file() or path.read_text() != text:
            differ += 1
            print(f"differs: {path.relative_to(TESTS.parent)}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
