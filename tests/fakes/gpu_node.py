"""Run `hpcobs-node-exporter` on a simulated 8-GPU node: the fake pynvml replaces the real one at
the import boundary, nothing deeper. For the end-to-end test and `make demo` on machines
without GPUs.

    python tests/fakes/gpu_node.py [--xid GPU:XID:AFTER_SECONDS ...] -- <hpcobs-node-exporter flags>

`--xid 3:79:5` delivers XID 79 from GPU 3 five seconds after start (the event thread counts it);
`--xid-burst 3:79:10` delivers ten of them each time the process receives SIGUSR1;
`--lose-on-signal 7` makes GPU 7 fall off the bus (GpuIsLost) on SIGUSR2;
`--processes-file F` (lines `GPU PID BYTES`, re-read every half second) sets the compute
processes NVML reports, e.g. the PIDs of running Slurm jobs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pynvml_fake import FakeNvml, FakeProcess, fleet


def watch_processes(nvml: FakeNvml, path: Path) -> None:
    while True:
        table: dict[int, list[FakeProcess]] = {}
        try:
            for line in path.read_text().splitlines():
                gpu, pid, used = (int(x) for x in line.split())
                table.setdefault(gpu, []).append(FakeProcess(pid=pid, used_memory=used))
        except (OSError, ValueError):
            pass
        for fake in nvml.gpus:
            fake.processes = table.get(fake.index, [])
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--xid", action="append", default=[], metavar="GPU:XID:AFTER")
    parser.add_argument("--xid-burst", default="", metavar="GPU:XID:COUNT")
    parser.add_argument("--lose-on-signal", type=int, default=None, metavar="GPU")
    parser.add_argument("--processes-file", type=Path, default=None)
    parser.add_argument("exporter_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    nvml = FakeNvml(fleet(args.gpus))
    sys.modules["pynvml"] = nvml.module

    for spec in args.xid:
        gpu, xid, after = spec.split(":")

        def deliver(gpu: int = int(gpu), xid: int = int(xid), after: float = float(after)) -> None:
            time.sleep(after)
            nvml.xid(gpu, xid)

        threading.Thread(target=deliver, daemon=True).start()

    if args.xid_burst:
        burst_gpu, burst_xid, count = (int(x) for x in args.xid_burst.split(":"))

        def burst(signum: int, frame: object) -> None:
            for _ in range(count):
                nvml.xid(burst_gpu, burst_xid)

        signal.signal(signal.SIGUSR1, burst)

    if args.lose_on_signal is not None:
        lost = nvml.gpus[args.lose_on_signal]

        def lose(signum: int, frame: object) -> None:
            lost.lost = True

        signal.signal(signal.SIGUSR2, lose)
    if args.processes_file is not None:
        threading.Thread(
            target=watch_processes, args=(nvml, args.processes_file), daemon=True
        ).start()

    from hpcobs.exporters.node import main as node_main

    rest = args.exporter_args[1:] if args.exporter_args[:1] == ["--"] else args.exporter_args
    return node_main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
