"""Will this cell fit on that host? Placement by kvsweep/memory_model.py's predictions, made
from GGUF metadata before anything runs: which worker takes a cell, how many compared caches a
quality unit packs, which cells fit nowhere.
"""

from __future__ import annotations

from pathlib import Path

from kvsweep.cells import Cell
from kvsweep.memory_model import (HEADROOM, Prediction, _is_own, compute_bytes, fits,  # noqa: F401 (re-exported)
                                  predict, predict_group)
from kvsweep.model_shape import KV_PAD, ModelShape, kv_bytes, padded, read_shape  # noqa: F401 (re-exported)


def pack_quality(cells: list[Cell], memory_total: int, backend: str) -> tuple[list[Cell], list[Cell]]:
    """(what runs together on this worker, what waits for another unit): the baseline's own
    cells and as many compared caches, in order, as fit next to one baseline pass. Unknown
    shapes (the file is not here) keep the unit whole."""
    shape = shape_if_readable(cells[0].model_path) if cells else None
    if shape is None:
        return cells, []
    own = [c for c in cells if _is_own(c)]
    compared = [c for c in cells if not _is_own(c)]
    keep = []
    for c in compared:
        if keep and not fits(predict_group(own + keep + [c], shape), memory_total, backend):
            break
        keep.append(c)
    return own + keep, compared[len(keep):]


def placeable(cell: Cell, slot) -> bool:
    """Is this worker of the cell's kind of host (host class for speed, backend for quality)?"""
    if cell.host_class and cell.host_class != slot.host_class:
        return False
    return not cell.quality_backend or cell.quality_backend == slot.backend


def builds_run(cell: Cell, slot) -> bool:
    """Does this worker's llama.cpp build run the cell's K/V pair (and its baseline's)? Workers
    whose build is not known (no `runs`, or the fake runner's) are taken to run everything."""
    runs = getattr(slot, "runs", None)
    if runs is None:
        return True
    return runs(cell.type_k, cell.type_v) and (not cell.baseline or runs(cell.baseline, cell.baseline))


def eligible(cell: Cell, slot) -> bool:
    """May this worker run this cell at all (its kind of host, and a build that runs it)?"""
    return placeable(cell, slot) and builds_run(cell, slot)


def unsupported(cells: list[Cell], slots) -> list[Cell]:
    """Cells the fleet has hosts of their kind for, but none whose build runs their K/V pair."""
    return [c for c in cells if any(placeable(c, s) for s in slots) and not any(eligible(c, s) for s in slots)]


def shape_if_readable(path: str) -> ModelShape | None:
    """The model's shape, or None when its file is not here or not a readable GGUF (the
    matrix checks report why: orchestrator/inputs.py)."""
    if not Path(path).is_file():
        return None
    try:
        return read_shape(path)
    except Exception:  # the gguf reader's ValueError / KeyError / IndexError on a bad file
        return None


def predictions(cells: list[Cell]) -> dict[str, Prediction]:
    """Predictions for every cell whose model file is readable here (others: unknown)."""
    out = {}
    for cell in cells:
        shape = shape_if_readable(cell.model_path)
        if shape is not None:
            out[cell.cell_id] = predict(cell, shape)
    return out


def fits_nowhere(cells: list[Cell], preds: dict[str, Prediction], slots) -> list[Cell]:
    """Cells some eligible worker exists for, but none with enough memory."""
    out = []
    for cell in cells:
        pred = preds.get(cell.cell_id)
        if pred is None:
            continue
        candidates = [s for s in slots if eligible(cell, s)]
        if candidates and not any(fits(pred, s.memory_total, s.backend) for s in candidates):
            out.append(cell)
    return out
