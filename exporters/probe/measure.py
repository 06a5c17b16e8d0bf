"""The timed part of the probe: calibration, collectives, pairwise ping-pong (runs on every rank).

Timing. Every iteration is timed on its own: one MPI call on numpy buffers between two clock
reads (no pickling in timed loops), by the compiled loop or by the Python loop (`timedloop`,
`--timer`). Each (op, size) cell gets a warm-up, an iteration count fitted to its share of
`--budget-seconds` (the warm-up's per-iteration time, agreed across ranks with an Allreduce
MAX so every rank runs the same count), a barrier, and the timed loop. Rank 0 gathers every
rank's samples and keeps, per iteration, the slowest rank's time: a collective is as fast
as its slowest rank.

Calibration. Right before each cell's timed loop, the same timed loop runs around the same
MPI function on a duplicate of `MPI_COMM_SELF` with zero-length buffers: MPI returns from
those at once, so the loop measures everything but the communication (clock reads, and in
the Python loop the interpreter and mpi4py's argument handling: 0.3–0.5 µs per call; in the
compiled loop a few tens of ns). The median of that no-op loop (the lowest of three batches
of 500) is the rank's overhead for the cell; corrected samples are the raw ones minus the
rank's overhead, floored at zero. Calibrating per cell, not once per run, keeps the
correction in step with the machine (clock frequency, neighbours).

Pairwise. The node leaders (see `topology`) meet in round-robin rounds; in each round every
pair runs an 8-byte ping-pong (latency: half the round trip) and a `--pairwise.bytes`
ping-pong (bandwidth), with the lower rank deciding the iteration count and telling its
partner. The ping-pongs run in the same timing loop as the collectives (compiled where built:
nothing between the calls but the clock reads on the timing side, and nothing at all on the
answering side). The lower rank times each round trip and, right before the timed loop,
calibrates the same loop around the same Send and Recv to `MPI_PROC_NULL` (MPI returns at
once); corrected round trips are the raw ones minus that overhead, floored at zero, and the
one-way latency is half of that. Ranks without a partner wait in a non-blocking barrier that
sleeps between tests, so they do not steal CPU from the pairs being measured. Per node, the
pairs' figures are summarised by `stats.node_latencies` (the fabric heatmap's metric).

numpy and mpi4py are imported inside the functions: this module is importable (for the
metrics catalogue) without the `probe` extra and without initialising MPI.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcobs.exporters.probe.model import CollectiveResult, PairResult, ProbeResult
from hpcobs.exporters.probe.stats import (
    PairLatency,
    PairSummary,
    median,
    node_latencies,
    node_scores,
    plan_iterations,
    slowness_ratios,
    summarize,
    worst_pairs,
)
from hpcobs.exporters.probe.timedloop import Call, PythonTimer, Timer, choose
from hpcobs.exporters.probe.topology import (
    Identities,
    IdentityMode,
    identities,
    partner_in,
    round_robin,
)
from hpcobs.exporters.probe.watchdog import Watchdog

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from mpi4py import MPI

    FloatArray = npt.NDArray[np.float64]

log = logging.getLogger("hpcobs.probe")

TAG_LATENCY, TAG_BANDWIDTH, TAG_CONTROL = 7101, 7102, 7103
NODE_NAME_ENV = "HPCOBS_PROBE_NODE_NAME"


@dataclass(frozen=True)
class Plan:
    ops: tuple[str, ...]
    sizes: tuple[int, ...]
    budget_seconds: float
    iterations_min: int = 5
    iterations_max: int = 10000
    pairwise: bool = True
    pairwise_bytes: int = 1 << 20
    pairwise_top_k: int = 5
    identity_mode: IdentityMode = "auto"
    max_buffer_bytes: int = 256 << 20
    pairwise_share: float = 0.2  # of the budget, when there are pairs to measure


@dataclass(frozen=True)
class Hooks:
    """Fault injection for tests, from the environment (never set in production).

    HPCOBS_PROBE_TEST_SLOW_RANK=r      rank r sleeps in every pairwise ping-pong (timed in
                                       Python: the sleep runs between the MPI calls)
    HPCOBS_PROBE_TEST_SLOW_SECONDS=s   … for s seconds (default 0.001)
    HPCOBS_PROBE_TEST_EXIT_RANK=r      rank r leaves the probe when the pairwise phase starts
    HPCOBS_PROBE_TEST_STALL_RANK=r     rank r stops responding when the pairwise phase starts
    """

    slow_rank: int | None = None
    slow_seconds: float = 0.001
    exit_rank: int | None = None
    stall_rank: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Hooks:
        def rank(name: str) -> int | None:
            value = env.get(name, "").strip()
            return int(value) if value.lstrip("-").isdigit() else None

        try:
            slow_seconds = float(env.get("HPCOBS_PROBE_TEST_SLOW_SECONDS", "0.001"))
        except ValueError:
            slow_seconds = 0.001
        return cls(
            slow_rank=rank("HPCOBS_PROBE_TEST_SLOW_RANK"),
            slow_seconds=slow_seconds if math.isfinite(slow_seconds) else 0.001,
            exit_rank=rank("HPCOBS_PROBE_TEST_EXIT_RANK"),
            stall_rank=rank("HPCOBS_PROBE_TEST_STALL_RANK"),
        )


class EarlyExit(Exception):
    """Raised on the rank told to leave early (test hook): main returns without aborting."""


def node_name(env: Mapping[str, str]) -> str:
    return env.get(NODE_NAME_ENV, "").strip() or socket.gethostname()


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return " ".join(lines[0].split()) if lines else ""


def split_counts(count: int, parts: int) -> list[int]:
    """`count` elements over `parts` ranks, as evenly as possible (first ranks get more)."""
    return [count // parts + (1 if r < count % parts else 0) for r in range(parts)]


def buffer_bytes(op: str, size: int, ranks: int) -> int:
    """Bytes of the larger of an op's send/receive buffers at this size."""
    if op in ("allgather", "alltoall"):
        return size * ranks
    return size


ALIGN = 2 << 20  # buffers start on a 2 MiB (huge page) boundary, like the C reference's


def data_buffer(nbytes: int) -> Any:
    """A byte buffer filled with 1.0 doubles, starting on a 2 MiB boundary.

    Every page is written (not the kernel's shared zero page, which would flatter large
    copies), there are no denormals to slow reductions, and the alignment does not depend on
    where malloc happened to put the array (numpy itself asks for huge pages from 4 MiB on).
    """
    import numpy as np

    size = max(8, -(-nbytes // 8) * 8)
    raw = np.empty(size + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    buf = raw[start : start + size]
    buf.view(np.float64)[:] = 1.0
    return buf


def slowest(matrix: FloatArray, overheads: FloatArray) -> tuple[FloatArray, FloatArray, int]:
    """(raw slowest per iteration, corrected slowest per iteration, most often slowest rank).

    The numpy form of `stats.slowest_per_iteration` and `stats.subtract_overhead`.
    """
    import numpy as np

    corrected = np.maximum(matrix - overheads[:, None], 0.0)
    counts = np.bincount(np.argmax(matrix, axis=0), minlength=matrix.shape[0])
    return matrix.max(axis=0), corrected.max(axis=0), int(np.argmax(counts))


@dataclass
class _Cell:
    op: str
    size: int
    iterations: int
    samples: FloatArray | None  # ranks × iterations on rank 0, None elsewhere
    overheads: FloatArray | None  # each rank's calibrated no-op time, on rank 0


class Prober:
    def __init__(
        self,
        comm: MPI.Intracomm,
        plan: Plan,
        hooks: Hooks,
        watchdog: Watchdog | None = None,
        timer: Timer | None = None,
    ) -> None:
        import numpy as np
        from mpi4py import MPI as mpi

        self.np = np
        self.MPI = mpi
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.plan = plan
        self.hooks = hooks
        self.watchdog = watchdog
        self.self_comm = mpi.COMM_SELF.Dup()
        self.timer = timer if timer is not None else choose("auto", mpi, comm)
        wanted = [
            (op, size)
            for op in plan.ops
            for size in ((0,) if op == "barrier" else plan.sizes)
            if op == "barrier" or buffer_bytes(op, size, self.size) <= plan.max_buffer_bytes
        ]
        self.skipped: list[tuple[str, int]] = [
            (op, size)
            for op in plan.ops
            if op != "barrier"
            for size in plan.sizes
            if (op, size) not in wanted
        ]
        self.cells = wanted
        largest = max((buffer_bytes(op, s, self.size) for op, s in wanted), default=8)
        self.send = data_buffer(largest)
        self.recv = data_buffer(largest)

    # -- helpers -------------------------------------------------------------------------
    def _phase(self, name: str) -> None:
        if self.watchdog is not None:
            self.watchdog.enter(name)

    def _agree_max(self, value: float) -> float:
        buf = self.np.array([value], dtype=self.np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return float(buf[0])

    def _quiet_barrier(self) -> None:
        """A barrier that sleeps between tests instead of spinning on the CPU."""
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(0.0002)

    def call(self, op: str, size: int) -> Call:
        counts = split_counts(size // 8, self.size) if op == "reduce_scatter" else ()
        return self.timer.collective(self.comm, op, self.send, self.recv, size, counts)

    def noop_call(self, op: str) -> Call:
        """The same MPI function, same message form, on MPI_COMM_SELF with zero-length
        buffers: MPI returns at once, nothing is communicated."""
        return self.timer.collective(self.self_comm, op, self.send, self.recv, 0, [0])

    # -- phases --------------------------------------------------------------------------
    def calibrate(self, op: str, iterations: int = 500, batches: int = 3) -> float:
        """This rank's per-call overhead for `op` now: the lowest median of a few batches of
        the no-op loop. Run right before each cell's timed loop, so the correction follows
        the machine's state (frequency, noisy neighbours) through the run."""
        return self._overhead(self.noop_call(op), iterations, batches)

    @staticmethod
    def _overhead(call: Call, iterations: int = 500, batches: int = 3) -> float:
        """The lowest median of a few batches of a no-op call's timed loop (after a warm-up)."""
        call.run(iterations // 5)
        return min(median(call.run(iterations)) for _ in range(batches))

    def measure_cell(self, op: str, size: int, budget: float) -> _Cell:
        np = self.np
        self._phase(f"{op} {size} B")
        call = self.call(op, size)
        call.run(1)  # first touch of the buffers, connection set-up
        estimate = self._agree_max(median(call.run(3)))
        warm = 100 if estimate <= 0 else int(min(100.0, 0.1 * budget / estimate))
        if warm >= 3:
            estimate = self._agree_max(median(call.run(warm)))
        iterations = plan_iterations(
            estimate, 0.9 * budget, self.plan.iterations_min, self.plan.iterations_max
        )
        overhead = self.calibrate(op)
        self.comm.Barrier()
        timed = np.asarray([*call.run(iterations), overhead], dtype=np.float64)
        matrix = None
        if self.rank == 0:
            matrix = np.empty((self.size, iterations + 1), dtype=np.float64)
        self.comm.Gather(timed, matrix, root=0)
        if matrix is None:
            return _Cell(op, size, iterations, None, None)
        return _Cell(op, size, iterations, matrix[:, :-1], matrix[:, -1].copy())

    def collectives(self, budget: float) -> list[_Cell]:
        per_cell = budget / max(1, len(self.cells))
        return [self.measure_cell(op, size, per_cell) for op, size in self.cells]

    def _pair_timer(self, delay: float) -> Timer:
        """The run's timer; Python's where the slow-rank test hook must sleep between calls."""
        return PythonTimer(self.MPI) if delay else self.timer

    def _initiate_pair(
        self, peer: int, budget: float, small: Any, big: Any
    ) -> tuple[list[float], list[float], float, float, int]:
        """Lower rank of a pair: decide counts, calibrate, time both ping-pongs.

        Returns the raw and corrected one-way latencies (half of each round trip), the
        calibrated overhead of one round trip, the bandwidth and the latency iterations.
        """
        delay = self.hooks.slow_seconds if self.hooks.slow_rank == self.rank else 0.0
        timer = self._pair_timer(delay)
        control = self.np.zeros(1, dtype=self.np.int64)
        ping = timer.pingpong(self.comm, small, small.nbytes, peer, TAG_LATENCY, delay=delay)
        ping.run(5)
        probe = ping.run(5)
        n = plan_iterations(median(probe), 0.4 * budget, 5, self.plan.iterations_max)
        control[0] = n
        self.comm.Send(control, peer, TAG_CONTROL)
        noop = timer.pingpong(self.comm, small, small.nbytes, self.MPI.PROC_NULL, TAG_LATENCY)
        overhead = self._overhead(noop)
        rtts = ping.run(n)
        raw = [rtt / 2 for rtt in rtts]
        corrected = [max(0.0, rtt - overhead) / 2 for rtt in rtts]

        ping = timer.pingpong(self.comm, big, big.nbytes, peer, TAG_BANDWIDTH, delay=delay)
        ping.run(1)
        probe = ping.run(2)
        nb = plan_iterations(median(probe), 0.4 * budget, 3, 1000)
        control[0] = nb
        self.comm.Send(control, peer, TAG_CONTROL)
        one_way = max(0.0, median(ping.run(nb)) - overhead) / 2
        bandwidth = big.nbytes / one_way if one_way > 0 else math.inf
        return raw, corrected, overhead, bandwidth, n

    def _answer_pair(self, peer: int, small: Any, big: Any) -> None:
        delay = self.hooks.slow_seconds if self.hooks.slow_rank == self.rank else 0.0
        timer = self._pair_timer(delay)
        control = self.np.zeros(1, dtype=self.np.int64)
        pong = timer.pingpong(
            self.comm, small, small.nbytes, peer, TAG_LATENCY, answer=True, delay=delay
        )
        pong.run(10)
        self.comm.Recv(control, peer, TAG_CONTROL)
        pong.run(int(control[0]))
        pong = timer.pingpong(
            self.comm, big, big.nbytes, peer, TAG_BANDWIDTH, answer=True, delay=delay
        )
        pong.run(3)
        self.comm.Recv(control, peer, TAG_CONTROL)
        pong.run(int(control[0]))

    def pairwise(self, ident: Identities, budget: float) -> tuple[list[PairResult], int]:
        """Every pair of node leaders once, round by round; results on rank 0."""
        leaders = list(ident.leaders)
        me = leaders.index(self.rank) if self.rank in leaders else None
        rounds = round_robin(len(leaders))
        per_round = budget / max(1, len(rounds))
        small = data_buffer(8)
        big = data_buffer(self.plan.pairwise_bytes)
        mine: list[PairResult] = []
        self._phase("pairwise start")
        if self.hooks.exit_rank == self.rank:
            raise EarlyExit(f"rank {self.rank} leaves early (HPCOBS_PROBE_TEST_EXIT_RANK)")
        if self.hooks.stall_rank == self.rank:
            log.warning("test hook: this rank stalls", extra={"rank": self.rank})
            while True:
                time.sleep(3600)
        for number, pairs in enumerate(rounds, start=1):
            self._phase(f"pairwise round {number}/{len(rounds)}")
            other = None if me is None else partner_in(pairs, me)
            if other is not None:
                peer = leaders[other]
                if self.rank < peer:
                    raw, corrected, overhead, bandwidth, n = self._initiate_pair(
                        peer, per_round, small, big
                    )
                    mine.append(
                        PairResult(
                            node_a=ident.rank_nodes[self.rank],
                            node_b=ident.rank_nodes[peer],
                            rank_a=self.rank,
                            rank_b=peer,
                            latency=summarize(corrected),
                            bandwidth_bytes_per_second=bandwidth,
                            message_bytes=self.plan.pairwise_bytes,
                            iterations=n,
                            latency_raw=summarize(raw),
                            overhead_seconds=overhead,
                        )
                    )
                else:
                    self._answer_pair(peer, small, big)
            self._quiet_barrier()
        gathered = self.comm.gather(mine, root=0)
        pairs_out = [p for chunk in gathered or [] for p in chunk]
        return sorted(pairs_out, key=lambda p: (p.rank_a, p.rank_b)), len(rounds)

    # -- the whole run ---------------------------------------------------------------------
    def run(self, env: Mapping[str, str] | None = None) -> ProbeResult | None:
        """Measure everything; rank 0 gets the result, the other ranks None."""
        np = self.np
        env = os.environ if env is None else env
        started = time.time()
        t0 = time.monotonic()
        self._phase("identify nodes")
        names = self.comm.allgather(node_name(env))
        ident = identities(names, self.plan.identity_mode)

        use_pairs = self.plan.pairwise and len(ident.leaders) >= 2
        pair_budget = self.plan.budget_seconds * self.plan.pairwise_share if use_pairs else 0.0
        spent = self._agree_max(time.monotonic() - t0)
        coll_budget = max(0.0, self.plan.budget_seconds - pair_budget - spent)
        cells = self.collectives(coll_budget)

        pairs: list[PairResult] = []
        rounds = 0
        if use_pairs:
            pairs, rounds = self.pairwise(ident, pair_budget)
        self._phase("results")
        finished = time.time()
        if self.rank != 0:
            return None
        by_op: dict[str, list[FloatArray]] = {}
        results: list[CollectiveResult] = []
        for cell in cells:
            assert cell.samples is not None and cell.overheads is not None
            by_op.setdefault(cell.op, []).append(cell.overheads)
            raw, corrected, who = slowest(cell.samples, cell.overheads)
            results.append(
                CollectiveResult(
                    cell.op,
                    cell.size,
                    cell.iterations,
                    summarize(raw.tolist()),
                    summarize(corrected.tolist()),
                    slowest_rank=who,
                )
            )
        # per rank, the median of its per-cell calibrations
        per_rank = {
            op: [median(col) for col in np.vstack(rows).T.tolist()] for op, rows in by_op.items()
        }
        latencies = [PairLatency(p.node_a, p.node_b, p.latency.p50) for p in pairs]
        worst = {(w.node_a, w.node_b) for w in worst_pairs(latencies, self.plan.pairwise_top_k)}
        worst_results = sorted(
            (p for p in pairs if (p.node_a, p.node_b) in worst),
            key=lambda p: (-p.latency.p50, p.node_a, p.node_b),
        )
        result = ProbeResult(
            ranks=self.size,
            identity_mode=ident.mode,
            rank_nodes=list(ident.rank_nodes),
            nodes=list(ident.nodes),
            started_unix=started,
            finished_unix=finished,
            budget_seconds=self.plan.budget_seconds,
            overhead_seconds={op: median(v) for op, v in per_rank.items() if v},
            overhead_per_rank=per_rank,
            collectives=results,
            pairs=pairs,
            node_slowness=slowness_ratios(node_scores(latencies)),
            node_latency=node_latencies(PairSummary(p.node_a, p.node_b, p.latency) for p in pairs),
            worst_pairs=worst_results,
            pairwise_rounds=rounds,
            skipped_cells=list(self.skipped),
            timer=self.timer.name,
            mpi_library=first_line(self.MPI.Get_library_version()),
        )
        return result
