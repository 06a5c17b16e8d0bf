"""The incidents' state file (`--incidents.state-file`): open incidents and the counts, written
atomically by the shared mechanism of `hpcobs.exporters.runtime.statefile`, as the Slurm
exporter's (a corrupt file moved aside with one line and the incidents started afresh; an
unreadable one left alone and nothing saved)."""

from __future__ import annotations

import logging

from hpcobs.exporters.runtime.statefile import Restored, StateFile, StateFileError

__all__ = [
    "KIND",
    "STATE",
    "Restored",
    "StateFileError",
    "load_state",
    "restore_state",
    "save_state",
]

KIND = "hpcobs-slo-incidents"

STATE = StateFile(
    kind=KIND,
    what="an incidents state file",
    max_bytes=256 << 20,  # far above any state within the daemon's caps
    log=logging.getLogger("hpcobs.slo"),
    name="incidents state file",
    unusable="nothing saved",
    afresh="open incidents and counts start afresh",
    restart="restart",
)
load_state = STATE.load
restore_state = STATE.restore
save_state = STATE.save
