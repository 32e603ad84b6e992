"""One way to turn an exception into an attempt record, for every place a cell can fail."""

from __future__ import annotations

import time
import traceback

from kvsweep import records
from kvsweep.workers import llama_api
from kvsweep.workers.oom import requested_bytes

from kvsweep.messages import RETRYING_FLAG


class ExpectedFailure(Exception):
    """A failure whose message says it all (a wrong file, a short corpus): no traceback."""


def failure_outcome(cell, started: float, exc: BaseException, retrying: bool = False) -> records.CellOutcome:
    if isinstance(exc, llama_api.OutOfMemory):
        status = records.OOM
    elif isinstance(exc, FloatingPointError):
        status = records.INVALID
    else:
        status = records.ERROR
    message = str(exc)
    if status == records.ERROR and not isinstance(exc, (ExpectedFailure, FileNotFoundError, llama_api.LlamaError)):
        message = f"{exc}\n{''.join(traceback.format_exception(exc, limit=8))}"
    log_tail = getattr(exc, "log_tail", "")
    return records.CellOutcome(
        cell_id=cell.cell_id,
        status=status,
        started_at=started,
        finished_at=time.time(),
        error_class=type(exc).__name__,
        error_message=message,
        log_tail=log_tail,
        flags=[RETRYING_FLAG] if retrying else [],
        facts={"needed_bytes": requested_bytes(log_tail)} if status == records.OOM else {},
    )
