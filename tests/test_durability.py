"""Durability: the driver lock, the write-ahead log, and kill -9 of a real `kvsweep run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from kvsweep.analysis.db import connect
from kvsweep.orchestrator.run_dir import DriverLock, RunDir, RunDirLocked
from kvsweep.orchestrator.sink import ResultSink, read_wal, recorded_attempt_ids, recover
from kvsweep.records import ATTEMPTS_SCHEMA


def row(i: int, cell: str | None = None) -> dict:
    return {"run_id": "r", "cell_id": cell or f"cell{i}", "attempt_id": f"a{i}", "attempt": 1,
            "kind": "tg", "status": "ok", "flags": []}


# -- the lock ---------------------------------------------------------------------------------


def test_second_driver_is_refused_and_named(tmp_path):
    with DriverLock.acquire(tmp_path / "driver.lock"):
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
            DriverLock.acquire(tmp_path / "driver.lock")
    with DriverLock.acquire(tmp_path / "driver.lock") as lock:  # released: free again
        assert lock.took_over == ""


def test_stale_lock_of_a_dead_driver_is_taken_over(tmp_path):
    lock_file = tmp_path / "driver.lock"
    # what a driver killed with -9 leaves: its record, but no flock (the kernel dropped it)
    lock_file.write_text(json.dumps({"pid": 999999, "host": "gone", "since": "2026-01-01"}))
    with DriverLock.acquire(lock_file) as lock:
        assert "pid 999999 on gone" in lock.took_over
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()


# -- the write-ahead log ----------------------------------------------------------------------


def test_attempts_survive_a_driver_that_never_flushed(tmp_path):
    rd = RunDir(tmp_path)
    sink = ResultSink(rd, "s1", flush_interval_s=3600)
    for i in range(3):
        sink.add(row(i), {"chunk": [0, 0], "pos": [1, 2], "token": [5, 6], "nll": [1.0, 2.0],
                          "nll_base": [1.0, 2.0], "kld": [0.0, 0.1], "dp": [0.0, 0.0],
                          "same_top": [True, False]})
    # the driver dies here: no flush, no close (the log's records are in the kernel already)
    assert recorded_attempt_ids(rd) == set()
    assert recover(rd, "s2") == 3
    assert recorded_attempt_ids(rd) == {"a0", "a1", "a2"}
    assert not list((tmp_path / "results" / "wal").glob("*.wal")), "a replayed log is removed"
    con = duckdb_memory()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(tmp_path / "results/tokens/*.parquet")]).fetchone()[0] == 6
    assert recover(rd, "s3") == 0  # nothing twice


def test_log_already_in_parquet_is_not_written_twice(tmp_path):
    rd = RunDir(tmp_path)
    sink = ResultSink(rd, "s1", flush_interval_s=3600)
    sink.add(row(1))
    sink.add(row(2))
    # a kill between the Parquet rename and the log truncation: both hold the attempts
    table = pa.Table.from_pylist([row(1)], schema=ATTEMPTS_SCHEMA)
    from kvsweep.orchestrator.run_dir import atomic_write_parquet

    atomic_write_parquet(rd.attempts_dir / "part-s1-000000.parquet", table)
    assert recover(rd, "s2") == 1
    ids = duckdb_memory().execute(
        "SELECT attempt_id FROM read_parquet(?) ORDER BY 1", [str(rd.attempts_dir / "*.parquet")]).fetchall()
    assert ids == [("a1",), ("a2",)]


def test_a_record_cut_short_by_the_kill_is_ignored(tmp_path):
    rd = RunDir(tmp_path)
    sink = ResultSink(rd, "s1", flush_interval_s=3600)
    sink.add(row(1))
    sink.add(row(2))
    wal = next((tmp_path / "results" / "wal").glob("*.wal"))
    data = wal.read_bytes()
    wal.write_bytes(data[:-7])  # the last write() was cut short
    assert [t.column("attempt_id")[0].as_py() for t, _ in read_wal(wal)] == ["a1"]
    assert recover(rd, "s2") == 1


def test_flush_truncates_the_log_and_close_removes_it(tmp_path):
    rd = RunDir(tmp_path)
    sink = ResultSink(rd, "s1")
    sink.add(row(1))
    sink.flush()
    wal = tmp_path / "results" / "wal" / "s1.wal"
    assert wal.stat().st_size == 0 and recorded_attempt_ids(rd) == {"a1"}
    sink.add(row(2))
    sink.close()
    assert not wal.exists() and recorded_attempt_ids(rd) == {"a1", "a2"}


def duckdb_memory():
    import duckdb

    return duckdb.connect()


# -- kill -9 of a real driver -----------------------------------------------------------------
# The driver is held at known cells by `wait` faults (the worker blocks until a file exists), so
# the kill lands where the test means it to on any machine, however fast cells run.

MATRIX = """
name = "k9"
[[models]]
generate = { arch = "llama" }
[cache]
symmetric = ["f16", "q8_0", "q4_0", "q5_0"]
[speed]
depths = [0, 128, 256, 512]
n_prompt = 32
n_gen = 8
repetitions = 2
[testing]
faults = [
  { match = { type_k = "q8_0", kind = "pp", n_depth = 0 }, fault = "wait", path = "@GATE1@" },
  { match = { type_k = "q4_0", kind = "pp", n_depth = 0 }, fault = "wait", path = "@GATE2@" },
]
"""
PER_SERIES = 8  # 4 depths x (pp, tg): the cells one configuration's series runs before the next


def write_k9(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The matrix and its two gates: the 1st held before q8_0's series, the 2nd before q4_0's."""
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace("@GATE1@", str(gate1)).replace("@GATE2@", str(gate2)))
    return matrix, gate1, gate2


def start_driver(matrix: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kvsweep", "run", str(matrix), "--run-dir", str(run_dir),
         "--no-progress", "--no-report", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    """Until predicate() holds. The driver is held at a gate, so it cannot finish first; the
    limit only catches a hung test (generous, for slow hosts)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended before the kill:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the driver")
        time.sleep(0.1)


def wal_records(run_dir: Path) -> list:
    logs = list((run_dir / "results" / "wal").glob("*.wal"))
    return [r for log in logs for r in read_wal(log)]


def wal_attempt_ids(run_dir: Path) -> set[str]:
    return {aid for t, _ in wal_records(run_dir) for aid in t.column("attempt_id").to_pylist()}


def flushed_attempt_ids(run_dir: Path) -> set[str]:
    return recorded_attempt_ids(RunDir(run_dir)) if (run_dir / "results" / "attempts").exists() else set()


def resume_and_check(run_dir: Path, recovered_ids: set[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "kvsweep", "resume", str(run_dir), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    con = connect(run_dir)
    plan = {r[0] for r in con.execute("SELECT cell_id FROM plan").fetchall()}
    assert len(plan) == 32
    assert {r[0] for r in con.execute("SELECT cell_id FROM results").fetchall()} == plan
    assert con.execute("SELECT count(*) FROM results").fetchone()[0] == len(plan)
    # no cell was measured twice: one ok attempt per cell, and every attempt id is unique
    ok_per_cell = con.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM attempts WHERE status = 'ok' GROUP BY cell_id)").fetchone()[0]
    assert ok_per_cell == 1
    assert con.execute("SELECT count(*) = count(DISTINCT attempt_id) FROM attempts").fetchone()[0]
    # what the killed driver had received survived, and was not run again
    ids = {r[0] for r in con.execute("SELECT attempt_id FROM attempts").fetchall()}
    assert recovered_ids <= ids


@pytest.mark.ray
@pytest.mark.slow
def test_kill_9_while_results_are_only_in_the_log(tmp_path):
    matrix, gate1, gate2 = write_k9(tmp_path)
    run_dir = tmp_path / "run"
    proc = start_driver(matrix, run_dir, "--flush-every", "3600")
    # f16's series is done and held at the first gate: its attempts are in the log only
    wait_for(lambda: len(wal_attempt_ids(run_dir)) >= PER_SERIES, proc)
    # a second driver on the same run directory is refused while the first one lives
    second = subprocess.run([sys.executable, "-m", "kvsweep", "run", str(matrix), "--run-dir", str(run_dir)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 3 and "another kvsweep driver" in second.stderr
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    received = wal_attempt_ids(run_dir)
    assert len(received) == PER_SERIES
    assert not list((run_dir / "results" / "attempts").glob("*.parquet")), "nothing was flushed yet"
    gate1.touch(), gate2.touch()
    resume_and_check(run_dir, received)


@pytest.mark.ray
@pytest.mark.slow
def test_kill_9_after_some_flushes(tmp_path):
    matrix, gate1, gate2 = write_k9(tmp_path)
    run_dir = tmp_path / "run"
    proc = start_driver(matrix, run_dir)
    # held at gate 1, the driver flushes what it has within its 1 s interval: flush one ...
    wait_for(lambda: len(flushed_attempt_ids(run_dir)) >= PER_SERIES, proc)
    gate1.touch()
    # ... and held at gate 2, flush two (q8_0's series)
    wait_for(lambda: len(flushed_attempt_ids(run_dir)) >= 2 * PER_SERIES, proc)
    assert len(list((run_dir / "results" / "attempts").glob("part-*.parquet"))) >= 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    received = flushed_attempt_ids(run_dir) | wal_attempt_ids(run_dir)
    assert len(received) == 2 * PER_SERIES
    gate2.touch()
    resume_and_check(run_dir, received)
