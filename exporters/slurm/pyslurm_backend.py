"""The pyslurm backend: pyslurm 25.11's API (`pyslurm.Jobs.load()`, `pyslurm.Nodes.load()`,
`pyslurm.slurmctld.diag()`, `pyslurm.licenses().get()`, `pyslurm.Reservations.load()`), in a
worker process.

pyslurm calls libslurm holding the GIL: a slow or unreachable slurmctld would freeze every
thread of the exporter, HTTP server included, for the client's whole retry time. So the calls
run in a child process (started with `spawn`), which converts pyslurm's objects into the same
dataclasses the portable backend parses and sends them back; a call that outlives the time
limit gets the child killed (a fresh one serves the next call).

The module is reached only through `importlib.import_module(module_name)` (the import
boundary): tests pass a fake module's name, or the module object itself for in-process use.
The attributes used here are listed in `tests/data/slurm/pyslurm_attributes.txt`, which a
test checks against pyslurm 25.11.2's source.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from types import ModuleType
from typing import Any

from hpcobs.exporters.slurm.backend import Backend, SlurmCallError
from hpcobs.exporters.slurm.model import (
    MIB,
    Job,
    License,
    Node,
    Reservation,
    SchedulerStats,
    gpu_count,
    job_state,
    make_job,
    make_reservation,
    node_state,
    requested_licenses,
)

# -- conversions (run where pyslurm is imported) ------------------------------------------


def _int(value: Any) -> int:
    """pyslurm answers None for unset (0, NO_VAL) values."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _gres_counts(gres: Mapping[str, Any] | None) -> dict[str, int]:
    """pyslurm GRES dicts: `{"gpu:a100": 4}`, `{"gpu": {"count": 2, "indexes": "0-1"}}`,
    `{"gpu": "1"}` (from a TRES string) → counts."""
    out: dict[str, int] = {}
    for name, value in (gres or {}).items():
        if isinstance(value, Mapping):
            value = value.get("count", 0)
        if isinstance(value, str):
            value = int(value) if value.isdigit() else 0
        out[str(name)] = _int(value)
    return out


def convert_job(job: Any) -> Job:
    array_id = job.array_id
    task = job.array_task_id
    waiting = job.array_tasks_waiting
    if array_id is None:
        tasks = ""
    elif waiting:
        tasks = str(waiting)
    elif task is not None:
        tasks = str(task)
    else:
        tasks = "0"  # pyslurm reports array task 0 as None (0 means "unset" to it)
    tres = job.allocated_tres or job.requested_tres
    memory = gpus = 0
    if tres is not None:
        if tres.mem is not None:
            memory = _int(tres.mem.count) * MIB
        gpus = gpu_count({str(name): _int(g.count) for name, g in (tres.gres or {}).items()})
    return make_job(
        job_id=_int(job.id),
        array_job_id=_int(array_id) or _int(job.id),
        array_tasks=tasks,
        partition=job.partition or "",
        state=job_state(job.state or ""),
        reason=job.state_reason or "",
        eligible_time=_int(job.eligible_time),
        start_time=_int(job.start_time),
        end_time=_int(job.end_time),
        cpus=_int(job.cpus),
        memory_bytes=memory,
        gpus=gpus,
        licenses=requested_licenses(job.licenses or ()),
        nodes=job.allocated_nodes or "",
        submit_time=_int(job.submit_time),
        user=job.user_name or "",
        account=job.account or "",
        # pyslurm gives exit statuses of 128 and more less 128 (its _get_exit_code).
        exit_code=f"{_int(job.exit_code)}:{_int(job.exit_code_signal)}",
        restarts=_int(job.requeue_count),
    )


def convert_jobs(pyslurm: Any) -> list[Job]:
    return [convert_job(job) for job in pyslurm.Jobs.load().values()]


def convert_node(node: Any) -> Node:
    state = node.state or ""
    return Node(
        name=node.name,
        partitions=tuple(node.partitions or ()),
        state=node_state(state),
        raw_state=state,
        cpus=_int(node.total_cpus),
        cpus_allocated=_int(node.allocated_cpus),
        memory_bytes=_int(node.real_memory) * MIB,
        memory_allocated_bytes=_int(node.allocated_memory) * MIB,
        gpus=gpu_count(_gres_counts(node.configured_gres)),
        gpus_allocated=gpu_count(_gres_counts(node.allocated_gres)),
        reason=node.reason or "",
    )


def convert_nodes(pyslurm: Any) -> list[Node]:
    return [convert_node(node) for node in pyslurm.Nodes.load().values()]


def convert_stats(pyslurm: Any) -> SchedulerStats:
    s = pyslurm.slurmctld.diag()
    rpcs = s.rpcs_by_type or {}
    return SchedulerStats(
        server_thread_count=_int(s.server_thread_count),
        agent_queue_size=_int(s.agent_queue_size),
        dbd_agent_queue_size=_int(s.dbd_agent_queue_size),
        jobs_submitted=_int(s.jobs_submitted),
        jobs_started=_int(s.jobs_started),
        jobs_completed=_int(s.jobs_completed),
        jobs_canceled=_int(s.jobs_canceled),
        jobs_failed=_int(s.jobs_failed),
        main_last_cycle_us=_int(s.schedule_cycle_last),
        main_max_cycle_us=_int(s.schedule_cycle_max),
        main_mean_cycle_us=_int(s.schedule_cycle_mean),
        main_total_cycles=_int(s.schedule_cycle_counter),
        main_last_queue_length=_int(s.schedule_queue_length),
        main_mean_depth=_int(s.schedule_cycle_mean_depth),
        backfill_total_jobs=_int(s.backfilled_jobs),
        backfill_total_cycles=_int(s.backfill_cycle_counter),
        backfill_last_cycle_us=_int(s.backfill_cycle_last),
        backfill_max_cycle_us=_int(s.backfill_cycle_max),
        backfill_mean_cycle_us=_int(s.backfill_cycle_mean),
        backfill_last_depth=_int(s.backfill_last_depth),
        backfill_last_queue_length=_int(s.backfill_queue_length),
        rpc_count={str(name): _int(r.count) for name, r in rpcs.items()},
        rpc_time_us={str(name): _int(r.time) for name, r in rpcs.items()},
    )


def convert_licenses(pyslurm: Any) -> list[License]:
    out = []
    for name, lic in sorted((pyslurm.licenses().get() or {}).items()):
        total, used = _int(lic.get("total")), _int(lic.get("in_use"))
        free = lic.get("available")
        out.append(
            License(str(name), total, used, _int(free) if free is not None else total - used)
        )
    return out


def convert_reservation(resv: Any) -> Reservation:
    flags = resv.flags
    names = [member.name for member in type(flags) if member in flags]
    recurring = resv.reoccurrence
    if recurring is not None and recurring.name != "NO":
        names.append(recurring.name)  # scontrol lists DAILY, WEEKLY, … among the flags
    return make_reservation(
        name=resv.name or "",
        start_time=_int(resv.start_time),
        end_time=_int(resv.end_time),
        nodes=resv.nodes or "",
        partition=resv.partition or "",
        flags=names,
    )


def convert_reservations(pyslurm: Any) -> list[Reservation]:
    return [convert_reservation(r) for r in pyslurm.Reservations.load().values()]


def version_info(pyslurm: Any) -> tuple[str, tuple[int, ...]]:
    return str(pyslurm.__version__), tuple(int(x) for x in pyslurm.slurm_api_version())


FETCH: dict[str, Callable[[Any], Any]] = {
    "jobs": convert_jobs,
    "nodes": convert_nodes,
    "scheduler": convert_stats,
    "licenses": convert_licenses,
    "reservations": convert_reservations,
    "version": version_info,
}

# -- the worker process --------------------------------------------------------------------


def worker_main(conn: Connection, module_name: str, env: dict[str, str]) -> None:
    """The child's loop: import the module, answer one request at a time."""
    os.environ.update(env)
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # report any import failure (ImportError, a crash in init)
        conn.send(("error", f"cannot import {module_name}: {type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            what = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", FETCH[what](module)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class PyslurmBackend(Backend):
    name = "pyslurm"

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        slurm_conf: str = "",
        module_name: str = "pyslurm",
        module: ModuleType | None = None,
    ) -> None:
        """In a worker process importing `module_name`, or in this process with `module`."""
        super().__init__()
        self.timeout = timeout
        self.module_name = module_name
        self.module = module
        self.env = {"SLURM_CONF": slurm_conf} if slurm_conf else {}
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self.worker_starts = 0

    # -- calls ---------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        result: list[Job] = self._call("jobs")
        return result

    def nodes(self) -> list[Node]:
        result: list[Node] = self._call("nodes")
        return result

    def scheduler(self) -> SchedulerStats:
        result: SchedulerStats = self._call("scheduler")
        return result

    def licenses(self) -> list[License]:
        result: list[License] = self._call("licenses")
        return result

    def reservations(self) -> list[Reservation]:
        result: list[Reservation] = self._call("reservations")
        return result

    def version(self) -> tuple[str, tuple[int, ...]]:
        result: tuple[str, tuple[int, ...]] = self._call("version")
        return result

    def _call(self, what: str) -> Any:
        if self.module is not None:
            try:
                return FETCH[what](self.module)
            except Exception as exc:
                raise SlurmCallError(what, f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            conn = self._worker()
            try:
                conn.send(what)
                if not conn.poll(self.timeout):
                    self._stop_worker()
                    raise SlurmCallError(what, f"no answer within {self.timeout:g}s")
                status, payload = conn.recv()
            except (EOFError, OSError) as exc:
                self._stop_worker()
                raise SlurmCallError(what, f"pyslurm worker died: {exc}") from exc
        if status != "ok":
            if str(payload).startswith("cannot import"):
                self._stop_worker()
            raise SlurmCallError(what, str(payload))
        return payload

    # -- worker lifecycle ------------------------------------------------------------------

    def _worker(self) -> Connection:
        if self._proc is not None and self._proc.is_alive() and self._conn is not None:
            return self._conn
        self._stop_worker()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=worker_main,
            args=(child, self.module_name, self.env),
            name="hpcobs-pyslurm-worker",
            daemon=True,
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.worker_starts += 1
        return parent

    def _stop_worker(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5)

    def close(self) -> None:
        with self._lock:
            self._stop_worker()
