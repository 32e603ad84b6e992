"""The fault plan's vocabulary and its check: what a matrix's `[testing] faults` may say.
Workers carry the faults out (workers/faults.py, which documents each); the matrix checks a
plan before anything runs. A testing aid: never set it for a real sweep."""

from __future__ import annotations

from dataclasses import asdict

from kvsweep.cells import Cell

FAULTS = ("oom", "abort", "segv", "exit", "hang", "slow", "wait", "nan", "error", "wrong-type", "busy")
_ENTRY_KEYS = {"match", "fault", "times", "needs_bytes", "seconds", "path", "min_contexts", "type"}


def validate(plan: list[dict]) -> list[str]:
    """Problems with a fault plan, as messages (empty when it is valid)."""
    problems = []
    fields = set(asdict(_example_cell()))
    for i, entry in enumerate(plan):
        for key in set(entry) - _ENTRY_KEYS:
            problems.append(f"faults[{i}].{key} is not a fault key (use {', '.join(sorted(_ENTRY_KEYS))})")
        if entry.get("fault") not in FAULTS:
            problems.append(f"faults[{i}].fault must be one of {', '.join(FAULTS)}")
        for key in entry.get("match", {}):
            if key not in fields:
                problems.append(f"faults[{i}].match.{key} is not a cell field")
        if entry.get("fault") == "wait" and not isinstance(entry.get("path"), str):
            problems.append(f"faults[{i}].path must name the file the wait fault waits for")
    return problems


def _example_cell() -> Cell:
    return Cell(kind="pp", model_name="", model_path="", model_sha256="", type_k="f16", type_v="f16")
