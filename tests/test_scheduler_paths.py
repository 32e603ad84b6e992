"""The scheduler's hot path at fleet scale (issue 7): which unit an idle worker takes, events a
worker has already sent handled in one pass with one write-ahead-log record, the progress
view's counters and redraws. The timings live in bench/throughput.py; these are the
guarantees the speed-ups must keep."""

from __future__ import annotations

import time

import pytest

from kvsweep import records
from kvsweep.cells import Cell
from kvsweep.orchestrator.fleet import WorkerSlot
from kvsweep.orchestrator.progress import ProgressView
from kvsweep.orchestrator.run_dir import RunDir, atomic_write_parquet
from kvsweep.orchestrator.scheduler import Policy, Scheduler
from kvsweep.orchestrator.sink import ResultSink, read_wal, recorded_attempt_ids, recover
from kvsweep.records import ATTEMPTS_SCHEMA


def slot(worker: str = "w0", host_class: str = "hc", loaded: str = "") -> WorkerSlot:
    return WorkerSlot(worker, None, "node-" + worker, "host", host_class, "CPU", "cpu", 2**34, 2**34,
                      loaded_model=loaded)


def speed_cell(model: str, type_k: str, depth: int = 0, host_class: str = "hc") -> Cell:
    return Cell(kind="tg", model_name=model, model_path="/nowhere", model_sha256=model * 8, type_k=type_k,
                type_v=type_k, n_depth=depth, n_gen=4, repetitions=1, host_class=host_class)


def scheduler(tmp_path, cells) -> Scheduler:
    sink = ResultSink(RunDir(tmp_path), "s", flush_interval_s=3600)
    return Scheduler(cells, [], sink, "run", Policy(), {})


# -- which unit an idle worker takes -----------------------------------------------------------


def test_a_worker_takes_the_first_unit_of_its_loaded_model_else_the_first_it_may_run(tmp_path):
    cells = [speed_cell(m, t) for m in "abc" for t in ("f16", "q8_0")]
    cells.append(speed_cell("d", "f16", host_class="other"))
    s = scheduler(tmp_path, cells)
    order = [(u.model_sha256[0], u.cells[0].type_k) for u in s.queue]
    assert order[:2] == [("a", "f16"), ("a", "q8_0")]

    unit = s._take_unit_for(slot(loaded="b" * 8))
    assert (unit.model_sha256, unit.cells[0].type_k) == ("b" * 8, "f16")  # not the queue's head
    assert s._take_unit_for(slot(loaded="b" * 8)).cells[0].type_k == "q8_0"
    # no unit of its model left (or none loaded): the first unit it may run, in queue order
    assert s._take_unit_for(slot(loaded="b" * 8)).model_sha256 == "a" * 8
    assert s._take_unit_for(slot(loaded="")).model_sha256 == "a" * 8
    # a unit of another host class is never taken, even when it is the only one of its model
    assert s._take_unit_for(slot(loaded="d" * 8)).model_sha256 == "c" * 8
    assert s._take_unit_for(slot(loaded="d" * 8)).model_sha256 == "c" * 8
    assert s._take_unit_for(slot(loaded="d" * 8)) is None
    assert s._take_unit_for(slot(host_class="other")).model_sha256 == "d" * 8
    assert not s.queue
    s.sink.close()


# -- the write-ahead log in batches --------------------------------------------------------------


def row(i: int) -> dict:
    return {"run_id": "r", "cell_id": f"cell{i}", "attempt_id": f"a{i}", "attempt": 1, "kind": "quality",
            "status": "ok", "flags": []}


def tokens(i: int) -> dict:
    return {"chunk": [0, 0], "pos": [1, 2], "token": [i, i], "nll": [1.0, 2.0], "nll_base": [1.0, 2.0],
            "kld": [0.0, 0.1], "dp": [0.0, 0.0], "same_top": [True, False]}


def wal(tmp_path) -> list:
    return read_wal(tmp_path / "results" / "wal" / "s.wal")


def test_attempts_added_in_a_batch_are_one_log_record_written_when_it_ends(tmp_path):
    sink = ResultSink(RunDir(tmp_path), "s", flush_interval_s=3600)
    sink.add(row(0))  # outside a batch: in the log at once
    assert len(wal(tmp_path)) == 1
    with sink.batch():
        for i in (1, 2, 3):
            sink.add(row(i), tokens(i))
        assert len(wal(tmp_path)) == 1, "inside the batch nothing more is written yet"
    records_ = wal(tmp_path)
    assert len(records_) == 2
    attempts, toks = records_[1]
    assert attempts.column("attempt_id").to_pylist() == ["a1", "a2", "a3"]
    assert toks.column("attempt_id").to_pylist() == ["a1", "a1", "a2", "a2", "a3", "a3"]
    # a batch that ends by an exception still logs what it received
    with pytest.raises(KeyboardInterrupt):
        with sink.batch():
            sink.add(row(4))
            raise KeyboardInterrupt
    assert wal(tmp_path)[-1][0].column("attempt_id").to_pylist() == ["a4"]
    assert sink.pending == 5


def test_a_batched_record_is_recovered_row_by_row_when_part_of_it_is_in_parquet(tmp_path):
    rd = RunDir(tmp_path)
    sink = ResultSink(rd, "s", flush_interval_s=3600)
    with sink.batch():
        for i in (1, 2, 3):
            sink.add(row(i), tokens(i))
    # the driver dies after a Parquet file with a2 was renamed into place, before the log was
    # truncated (the situation recover's dedup exists for), here with a2 alone in it
    import pyarrow as pa

    atomic_write_parquet(rd.attempts_dir / "part-s-000000.parquet", pa.Table.from_pylist([row(2)], schema=ATTEMPTS_SCHEMA))
    assert recover(rd, "s2") == 2
    assert recorded_attempt_ids(rd) == {"a1", "a2", "a3"}
    import duckdb

    got = duckdb.connect().execute("SELECT attempt_id, count(*) FROM read_parquet(?) GROUP BY 1 ORDER BY 1",
                                   [str(rd.tokens_dir / "*.parquet")]).fetchall()
    assert got == [("a1", 2), ("a3", 2)]  # a2's tokens are not written a second time


def test_flush_logs_what_a_batch_holds_before_parquet(tmp_path):
    rd = RunDir(tmp_path)
    sink = ResultSink(rd, "s", flush_interval_s=3600)
    with sink.batch():
        sink.add(row(1))
        sink.flush()  # e.g. the interval elapsed mid-batch: the log gets the row first
        assert recorded_attempt_ids(rd) == {"a1"}
        sink.add(row(2))
    assert [t.column("attempt_id").to_pylist() for t, _ in wal(tmp_path)] == [["a2"]]
    sink.close()
    assert recorded_attempt_ids(rd) == {"a1", "a2"}


# -- progress ---------------------------------------------------------------------------------


class _Slot:
    def __init__(self, worker_id, host):
        self.worker_id, self.host = worker_id, host


def _outcome(cell: Cell, status: str) -> records.CellOutcome:
    now = time.time()
    return records.CellOutcome(cell.cell_id, status, now, now)


def test_progress_counts_a_cell_run_again_once_with_its_latest_status():
    view = ProgressView(total=3, live=False)
    a, b = _Slot("w-a", "host-a"), _Slot("w-b", "host-b")
    c1, c2 = speed_cell("m", "f16", 0), speed_cell("m", "f16", 512)
    view.on_event("finished", a, (c1, _outcome(c1, "crash")))
    view.on_event("finished", a, (c2, _outcome(c2, "ok")))
    view.on_event("finished", b, (c1, _outcome(c1, "ok")))  # retried on another host
    assert view.done == {"ok": 2}
    assert view.per_host == {"host-a": {"ok": 1}, "host-b": {"ok": 1}}
    assert view.line().startswith("2/3 cells (2 ok, 0 not ok this session)")


def test_live_table_is_redrawn_at_most_every_quarter_second_and_once_at_the_end():
    class Live:
        def __init__(self):
            self.tables = []

        def update(self, table):
            self.tables.append(table)

        def stop(self):
            pass

    view = ProgressView(total=2000, live=False)
    view._live = live = Live()
    s = _Slot("w", "host")
    t0 = time.monotonic()
    cells = [speed_cell("m", "f16", d) for d in range(2000)]
    for cell in cells:
        view.on_event("finished", s, (cell, _outcome(cell, "ok")))
    elapsed = time.monotonic() - t0
    assert len(live.tables) <= 1 + elapsed / ProgressView.REDRAW_S
    view.stop()
    assert live.tables[-1].title.startswith("2000/2000 cells (2000 ok")


# -- events a worker already sent: one pass, one log record (real Ray, the fake runner) ----------


@pytest.mark.ray
def test_events_already_sent_are_handled_in_one_pass_and_all_logged_first(ray_local, tmp_path):
    from kvsweep.orchestrator.fleet import create_slots

    (worker,) = create_slots(runner="fake")  # FAKE runner: every cell "finishes" at once
    cells = [speed_cell("m", "f16", d, host_class=worker.host_class) for d in range(0, 40 * 64, 64)]
    sink = ResultSink(RunDir(tmp_path), "s", flush_interval_s=3600)
    logged = []
    close = sink.close

    def close_and_look():  # what the log holds before the end flushes it into Parquet
        logged.extend(read_wal(sink.wal.path))
        close()

    sink.close = close_and_look
    s = Scheduler(cells, [worker], sink, "run", Policy(), {})
    import ray

    s._dispatch()
    # the actor runs one call at a time: this returns once run_unit has sent all its events
    ray.get(worker.actor.describe.remote(), timeout=60)
    summary = s.run()
    ray.kill(worker.actor)
    assert summary.by_status == {"ok": 40}
    ids = [aid for t, _ in logged for aid in t.column("attempt_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 40  # every attempt was in the log before the end
    assert len(logged) == 1  # and the 40 that were already there went in as one record
    assert recorded_attempt_ids(RunDir(tmp_path)) == set(ids)
