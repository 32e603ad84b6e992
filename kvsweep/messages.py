"""What a worker tells the driver while it runs a work unit, and the retry policy the driver
gives it: the contract between workers/runner.py (which yields these) and the orchestrator's
scheduler, history and progress display (which read them). Imports nothing of either side.

    Progress   the unit is alive (a quality chunk finished); resets the hang watchdog
    Finished   one attempt of one cell, any status: failures are results
    Returned   cells handed back unattempted (a speed series stops at its first final OOM, a
               quality unit too big for the worker is split), so the driver decides
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsweep import defaults, records

RETRYING_FLAG = "oom-retrying"  # an OOM the worker tries again itself: not a final attempt
# a quality unit ran out of memory with several compared contexts alive: the driver runs its
# cells again in halves (with RETRYING_FLAG: the attempt does not count)
OOM_SPLIT = "oom-split"


@dataclass
class Progress:
    unit_id: str
    done: int
    total: int


@dataclass
class Finished:
    outcome: records.CellOutcome


@dataclass
class Returned:
    cell_ids: list[str]
    reason: str


@dataclass
class RetryPolicy:
    oom_retries: int = defaults.OOM_RETRIES  # in-worker retries after the first OOM
    oom_backoff_s: float = defaults.OOM_BACKOFF_S  # first wait; doubles each time (at most 60 s)
