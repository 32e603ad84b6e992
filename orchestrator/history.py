"""What a run directory already holds: per cell, its attempts and where they ended.

Resume decides from this alone (the run directory is the source of truth): a cell with an ok
attempt is done; otherwise its latest final attempt (one not flagged "oom-retrying") says how
it ended, and the redo mode says whether to run it again:

    missing  cells with no final attempt (never ran, or the driver died mid-way)
    failed   also crash, timeout, error, invalid                      (the default)
    oom      also oom, skipped after oom, predicted-oom
    busy     as failed, and also ok cells whose every ok attempt was flagged host-busy (timed
             while other work competed for the CPU): they are measured again

Cells recorded `unsupported` (no worker's build ran their K/V pair) are looked at again in every
mode: they run once the fleet has a build for them, and are not recorded again otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow.dataset as ds

from kvsweep import records
from kvsweep.cells import Cell
from kvsweep.result_files import result_files
from kvsweep.orchestrator.run_dir import RunDir
from kvsweep.messages import RETRYING_FLAG

REDO_MODES = ("missing", "failed", "oom", "busy")
HOST_BUSY = "host-busy"  # workers/host_load.py
_REDO_STATUSES = {
    "missing": {records.UNSUPPORTED},
    "failed": set(records.FAILED) | {records.UNSUPPORTED},
    "oom": set(records.FAILED) | {records.OOM, records.SKIPPED, records.PREDICTED_OOM, records.UNSUPPORTED},
    "busy": set(records.FAILED) | {records.UNSUPPORTED},
}


@dataclass
class CellHistory:
    attempts: int = 0
    ok: bool = False
    clean_ok: bool = False  # an ok attempt not flagged host-busy
    last_status: str = ""  # of the latest final attempt; "" when none is final
    last_time: int = 0


def read_history(run_dir: RunDir) -> dict[str, CellHistory]:
    """Per cell, its attempts. Damaged results files go to quarantine first (their cells are
    then missing), and quality attempts whose per-token rows did count as never made."""
    files = result_files(run_dir.path / "results")
    if not files.attempts:
        return {}
    table = ds.dataset([str(p) for p in files.attempts], format="parquet").to_table(
        columns=["cell_id", "attempt_id", "status", "flags", "finished_at"]
    )
    if files.lost_tokens:
        import pyarrow as pa
        import pyarrow.compute as pc

        lost = pa.array(sorted(files.lost_tokens), pa.string())
        table = table.filter(pc.invert(pc.is_in(table.column("attempt_id"), value_set=lost)))
    cell_ids = table.column("cell_id").to_pylist()
    statuses = table.column("status").to_pylist()
    flags = table.column("flags").to_pylist()
    times = table.column("finished_at").cast("int64").to_pylist()
    out: dict[str, CellHistory] = {}
    for cid, status, fl, t in zip(cell_ids, statuses, flags, times):
        h = out.setdefault(cid, CellHistory())
        h.attempts += 1
        if status == records.OK:
            h.ok = True
            h.clean_ok = h.clean_ok or not (fl and HOST_BUSY in fl)
        if fl and RETRYING_FLAG in fl:
            continue
        if t is not None and t >= h.last_time:
            h.last_time, h.last_status = t, status
    return out


def cells_to_run(plan: Iterable[Cell], history: dict[str, CellHistory], redo: str = "failed") -> list[Cell]:
    if redo not in REDO_MODES:
        raise ValueError(f"redo must be one of {', '.join(REDO_MODES)}")
    again = _REDO_STATUSES[redo]
    todo = []
    for cell in plan:
        h = history.get(cell.cell_id)
        if h is None or h.ok is False and (not h.last_status or h.last_status in again):
            todo.append(cell)
        elif redo == "busy" and h.ok and not h.clean_ok:
            todo.append(cell)
    return todo
