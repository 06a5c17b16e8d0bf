"""The exporter's state file: the job ledger and the jobcomp read position, written atomically
by the shared mechanism of `hpcobs.exporters.runtime.statefile` (atomic replace; a corrupt file
moved aside with one line and the ledger started afresh; an unreadable one left alone)."""

from __future__ import annotations

import logging

from hpcobs.exporters.runtime.statefile import Restored, StateFile, StateFileError, move_aside

__all__ = [
    "FORMAT",
    "STATE",
    "Restored",
    "StateFileError",
    "load_state",
    "move_aside",
    "parse_state",
    "restore_state",
    "save_state",
]

FORMAT = "hpcobs-slurm-exporter-state"

STATE = StateFile(
    kind=FORMAT,
    what="an hpcobs-slurm-exporter state file",
    max_bytes=1 << 30,  # far above any ledger (it is as small as slurmctld's job table)
    log=logging.getLogger("hpcobs.slurm"),
    name="state file",
    unusable="counters in memory only, nothing saved",
    afresh="the job ledger starts afresh",
    restart="restart the exporter",
)
parse_state = STATE.parse
load_state = STATE.load
restore_state = STATE.restore
save_state = STATE.save
