"""Attempt rows are composed from declared producers (kvsweep/records.py compose_row): every
column is in the schema and set by one producer (or by two as OVERRIDES declares), checked on a
real speed outcome and a real quality outcome passed through the sink into Parquet."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from conftest import DEMO_CORPUS
from kvsweep import records
from kvsweep.cells import Cell, WorkUnit
from kvsweep.hashing import file_sha256
from kvsweep.messages import Finished
from kvsweep.orchestrator import fleet
from kvsweep.orchestrator.run_dir import RunDir
from kvsweep.orchestrator.scheduler import attempt_parts, attempt_row
from kvsweep.orchestrator.sink import ResultSink
from kvsweep.result_files import result_files
from kvsweep.workers.probe import probe_host
from kvsweep.workers.runner import UnitRunner


def this_worker() -> fleet.WorkerSlot:
    """The slot the driver would make for a worker on this host (fleet._slot from describe())."""
    info = {"probe": probe_host().to_dict(), "device_index": 0, "worker_id": "w-0", "node_id": "n" * 8,
            "capabilities": {}}
    return fleet._slot(None, {}, info)


def outcomes(tiny_model) -> list[tuple[Cell, records.CellOutcome]]:
    sha = file_sha256(tiny_model)
    who = dict(model_name="tiny", model_path=str(tiny_model), model_sha256=sha)
    speed = Cell(kind="tg", type_k="q8_0", type_v="q8_0", n_depth=256, n_gen=8, repetitions=2,
                 n_batch=256, n_ubatch=64, host_class="here", **who)
    corpus_sha = file_sha256(DEMO_CORPUS)
    quality = [Cell(kind="quality", type_k=k, type_v=k, n_ctx=128, max_chunks=2, corpus_path=str(DEMO_CORPUS),
                    corpus_sha256=corpus_sha, baseline="f16", n_batch=256, n_ubatch=64, **who)
               for k in ("f16", "q4_0")]
    runner = UnitRunner(n_threads=2)
    out = []
    for unit in (WorkUnit("s", [speed], sha, host_class="here"), WorkUnit("q", quality, sha)):
        for event in runner.run(unit, {corpus_sha: DEMO_CORPUS.read_text()}):
            if isinstance(event, Finished):
                cell = next(c for c in unit.cells if c.cell_id == event.outcome.cell_id)
                out.append((cell, event.outcome))
    runner.close()
    return out


def test_every_column_of_real_rows_has_one_producer_and_reaches_parquet(tmp_path, tiny_model):
    slot = this_worker()
    run_dir = RunDir(tmp_path)
    sink = ResultSink(run_dir, "session")
    made = outcomes(tiny_model)
    assert {c.kind for c, _ in made} == {"tg", "quality"} and all(o.status == "ok" for _, o in made)
    rows = []
    for cell, outcome in made:
        parts = attempt_parts(cell, outcome, slot, "run", 1)
        counts = Counter(key for _, columns in parts for key in columns)
        twice = {k for k, n in counts.items() if n > 1}
        # only the declared overrides are set twice, and only by their declared producers
        assert twice <= set(records.OVERRIDES), twice - set(records.OVERRIDES)
        for key in twice:
            setters = [name for name, columns in parts if key in columns]
            assert tuple(setters) == records.OVERRIDES[key][:2]
        unknown = set(counts) - set(records.ATTEMPTS_SCHEMA.names)
        assert not unknown
        row = attempt_row(cell, outcome, slot, "run", 1)
        rows.append(row)
        sink.add(row, outcome.tokens)
    sink.close()
    table = pq.read_table(result_files(tmp_path / "results").attempts[0]).to_pylist()
    assert len(table) == len(rows)
    for row, written in zip(sorted(rows, key=lambda r: r["cell_id"]), sorted(table, key=lambda r: r["cell_id"])):
        for key, value in row.items():
            if key in ("started_at", "finished_at"):
                continue
            assert written[key] == pytest.approx(value) if isinstance(value, float) else written[key] == value, key
        # what no producer set is NULL, never a value from somewhere else
        assert all(written[k] is None for k in set(records.ATTEMPTS_SCHEMA.names) - set(row))


def test_an_unknown_or_doubly_set_column_fails_loudly():
    with pytest.raises(records.RowError, match="'kv_bytez'"):
        records.compose_row([("attempt", {"cell_id": "x"}), ("facts", {"kv_bytez": 1})])
    with pytest.raises(records.RowError, match="'status' is set by attempt and by metrics"):
        records.compose_row([("attempt", {"status": "ok"}), ("metrics", {"status": "oom"})])
    # a declared override, in its declared order, is fine; the other way round is not
    assert records.compose_row([("cell", {"n_batch": 512}), ("facts", {"n_batch": 128})])["n_batch"] == 128
    with pytest.raises(records.RowError):
        records.compose_row([("facts", {"n_batch": 128}), ("cell", {"n_batch": 512})])
