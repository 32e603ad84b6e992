"""Streams attempt records to Parquet as they arrive: batched, atomic, never rewritten.

Finished attempts are buffered in memory and written as one file per flush (at least every
`flush_interval_s`, and at the end), so a sweep of thousands of cells makes a handful of files
rather than thousands. A flush writes the tokens file first and the attempts file second: an
attempt row is the commit record, and token rows without one (a kill between the two renames)
are ignored by the views and by resume.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from kvsweep.records import ATTEMPTS_SCHEMA, TOKENS_SCHEMA
from kvsweep.orchestrator.run_dir import RunDir, atomic_write_parquet


class ResultSink:
    def __init__(self, run_dir: RunDir, session_id: str, flush_interval_s: float = 1.0):
        self.run_dir = run_dir
        self.session_id = session_id
        self.flush_interval_s = flush_interval_s
        self._rows: list[dict] = []
        self._tokens: list[pa.Table] = []
        self._seq = 0
        self._last_flush = time.monotonic()
        self.rows_written = 0
        self.files_written = 0

    def add(self, row: dict, tokens: dict[str, np.ndarray] | None = None) -> None:
        self._rows.append(row)
        if tokens:
            n = len(next(iter(tokens.values())))
            columns = {
                "cell_id": pa.array([row["cell_id"]] * n, pa.string()),
                "attempt_id": pa.array([row["attempt_id"]] * n, pa.string()),
            }
            for name in TOKENS_SCHEMA.names[2:]:
                columns[name] = pa.array(tokens[name], TOKENS_SCHEMA.field(name).type)
            self._tokens.append(pa.table(columns, schema=TOKENS_SCHEMA))

    @property
    def pending(self) -> int:
        return len(self._rows)

    def maybe_flush(self) -> bool:
        if self._rows and time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        if not self._rows:
            self._last_flush = time.monotonic()
            return
        name = f"part-{self.session_id}-{self._seq:06d}.parquet"
        if self._tokens:
            atomic_write_parquet(self.run_dir.tokens_dir / name, pa.concat_tables(self._tokens))
            self.files_written += 1
        table = pa.Table.from_pylist(self._rows, schema=ATTEMPTS_SCHEMA)
        atomic_write_parquet(self.run_dir.attempts_dir / name, table)
        self.files_written += 1
        self.rows_written += len(self._rows)
        self._seq += 1
        self._rows, self._tokens = [], []
        self._last_flush = time.monotonic()
