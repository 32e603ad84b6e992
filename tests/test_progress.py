"""The progress display of `kvsweep run`: cells done / failed / running per host and an ETA,
as a live table on a terminal and as log lines elsewhere. Driven with the events the scheduler
sends (real cells, units and outcomes); no Ray needed."""

from __future__ import annotations

import time
from dataclasses import dataclass

from loguru import logger
from rich.console import Console

from kvsweep import records
from kvsweep.cells import Cell, WorkUnit
from kvsweep.orchestrator.progress import ProgressView


@dataclass
class Slot:  # what ProgressView reads of a worker slot
    worker_id: str
    host: str


def _cell(depth: int) -> Cell:
    return Cell(kind="tg", model_name="m", model_path="", model_sha256="x", type_k="q8_0",
                type_v="q8_0", n_depth=depth, n_gen=16, host_class="hc")


def _outcome(cell: Cell, status: str) -> records.CellOutcome:
    now = time.time()
    return records.CellOutcome(cell.cell_id, status, now, now,
                               error_class="OutOfMemory" if status == "oom" else "",
                               error_message="failed to allocate" if status == "oom" else "")


def _drive(view: ProgressView) -> None:
    a, b = Slot("w-a", "host-a"), Slot("w-b", "host-b")
    cells = [_cell(d) for d in (0, 1024, 4096)]
    view.on_event("dispatched", a, WorkUnit("u1", cells[:2], "x"))
    view.on_event("dispatched", b, WorkUnit("u2", cells[2:], "x"))
    view.on_event("finished", a, (cells[0], _outcome(cells[0], "ok")))
    view.on_event("finished", b, (cells[2], _outcome(cells[2], "oom")))
    view.on_event("idle", b, None)


def test_counts_per_host_running_workers_and_eta():
    view = ProgressView(total=6, already_done=1, live=False)
    _drive(view)
    line = view.line()
    assert line.startswith("3/6 cells (1 ok, 1 not ok this session), 1 running,")
    assert "ETA" in line and view.eta_s() is not None and view.eta_s() >= 0
    console = Console(record=True, width=120)
    console.print(view._table())
    text = console.export_text()
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in text.splitlines() if line.startswith("│")}
    assert rows["host-a"] == ["1", "0", "0", "1 worker(s)"]
    assert rows["host-b"] == ["0", "1", "0", ""]
    assert rows["w-a"][-1] == "tg x2 (m)"  # what the running worker does
    assert "w-b" not in rows  # idle again


def test_not_a_terminal_logs_lines_instead():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["level"].name + " " + m.record["message"]), level="INFO")
    try:
        view = ProgressView(total=6, already_done=1, live=False)
        view.start()
        _drive(view)
        view.stop()
    finally:
        logger.remove(sink)
    assert view._live is None
    assert lines[0].startswith("INFO 1/6 cells")
    assert any(line.startswith("WARNING host-b: m tg16 @ d4096 K=q8_0 V=q8_0: oom") for line in lines)
    assert lines[-1].startswith("INFO 3/6 cells (1 ok, 1 not ok this session)")
