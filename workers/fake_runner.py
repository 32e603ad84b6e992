"""FakeRunner: a stand-in for UnitRunner that measures nothing, for scheduler-scale tests.

It runs no model: every cell "finishes" after `cell_seconds` (0: at once) with status ok and
the flag "fake-runner", so its rows can never pass for measurements. Benchmarks of the
orchestrator (dispatch rate, Parquet throughput, scaling over workers) and tests of placement
use it; everything around it (Ray, the scheduler, the sink, resume) is the real code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kvsweep import records
from kvsweep.cells import QUALITY, WorkUnit
from kvsweep.messages import Finished

FAKE_FLAG = "fake-runner"


class FakeRunner:
    def __init__(self, cell_seconds: float = 0.0):
        self.cell_seconds = cell_seconds

    def run(self, unit: WorkUnit, corpora: dict[str, str] | None = None) -> Iterator[object]:
        for cell in unit.cells:
            started = time.time()
            if self.cell_seconds:
                time.sleep(self.cell_seconds)
            metrics = {"ppl": 1.0, "ppl_base": 1.0, "kld_mean": 0.0, "n_tokens": 0} if cell.kind == QUALITY \
                else {"avg_ts": 0.0, "stddev_ts": 0.0, "samples_ns": [], "samples_ts": []}
            yield Finished(records.CellOutcome(
                cell_id=cell.cell_id, status=records.OK, started_at=started,
                finished_at=time.time(), flags=[FAKE_FLAG], metrics=metrics,
            ))

    def close(self) -> None:
        pass
