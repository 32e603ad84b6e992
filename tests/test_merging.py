"""Attempts files merged as a session goes (orchestrator/sink.py, kvsweep/parts.py): a sweep of
slow cells flushes about once per attempt, and the files must stay few without a row being
lost or counted twice, also when the driver dies between a merge and the deletion of what it
replaced."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from kvsweep.analysis.db import connect
from kvsweep.orchestrator import sink as sink_mod
from kvsweep.orchestrator.history import read_history
from kvsweep.orchestrator.run_dir import RunDir
from kvsweep.orchestrator.sink import ResultSink, recorded_attempt_ids, recover
from kvsweep.parts import live_parts, part_name, span, split_parts
from kvsweep.records import ATTEMPTS_SCHEMA


def row(i: int) -> dict:
    return {"run_id": "r", "cell_id": f"cell{i % 7}", "attempt_id": f"a{i}", "attempt": 1 + i // 7,
            "kind": "tg", "status": "ok", "flags": []}


def run_dir(tmp_path) -> RunDir:
    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": "r", "sessions": []}))
    return RunDir(tmp_path)


def parquet_names(rd: RunDir) -> list[str]:
    return sorted(p.name for p in rd.attempts_dir.glob("part-*.parquet"))


def flushed_sink(rd: RunDir, session: str, n: int, fanin: int = 4) -> ResultSink:
    """A sink that has flushed attempts a0..a(n-1), one per flush."""
    sink = ResultSink(rd, session, merge_fanin=fanin)
    for i in range(n):
        sink.add(row(i))
        sink.flush()
    return sink


def counted(rd: RunDir) -> list[str]:
    """attempt ids as the views, resume and recovery see them"""
    ids = [r[0] for r in connect(rd.path).execute("SELECT attempt_id FROM attempts ORDER BY attempt_id").fetchall()]
    assert sorted(recorded_attempt_ids(rd)) == sorted(set(ids))
    assert sum(h.attempts for h in read_history(rd).values()) == len(ids)
    return ids


@pytest.mark.parametrize("session", ["s", "20261122T063158Z-123456"])  # a session id ending in digits too
def test_names_tell_flushes_and_merged_files_apart(session):
    assert span(part_name(session, 7)) == (session, 7, 7, False)
    assert span(part_name(session, 16, 31)) == (session, 16, 31, True)
    assert span(f"part-{session}-recovered.parquet") is None


def test_many_flushes_keep_few_files_and_every_row_once(tmp_path, monkeypatch):
    monkeypatch.setattr(sink_mod, "MERGE_GRACE_S", 0.0)  # delete replaced files at once
    rd = run_dir(tmp_path)
    sink = ResultSink(rd, "s", merge_fanin=4)
    most = 0
    for i in range(300):  # one attempt per flush: what cells slower than the interval give
        sink.add(row(i))
        sink.flush()
        most = max(most, len(parquet_names(rd)))
        assert sink.attempts_files == len(live_parts(rd.attempts_dir))
    # 300 flushes in base 4: 1,0,2,3,0 -> 6 files live; never more than 3 per tier (+1 mid-merge)
    assert sink.attempts_files == 6 and most <= 3 * 5 + 1
    assert counted(rd) == sorted(f"a{i}" for i in range(300))
    sink.close()
    assert parquet_names(rd) == [part_name("s", 0, 299)]
    assert counted(rd) == sorted(f"a{i}" for i in range(300))


def test_a_file_a_merge_replaced_is_read_by_nobody(tmp_path):
    rd = run_dir(tmp_path)
    sink = flushed_sink(rd, "s", 5)
    # within the grace period the four replaced files are still on disk, and skipped
    live, superseded = split_parts(rd.attempts_dir)
    assert [p.name for p in superseded] == [part_name("s", i) for i in range(4)]
    assert [p.name for p in live] == [part_name("s", 0, 3), part_name("s", 4)]
    assert counted(rd) == [f"a{i}" for i in range(5)]
    sink.close()  # fewer files than the fan-in: left as they are
    assert parquet_names(rd) == [part_name("s", 0, 3), part_name("s", 4)]
    assert counted(rd) == [f"a{i}" for i in range(5)]


def test_a_driver_killed_between_a_merge_and_the_deletion(tmp_path):
    rd = run_dir(tmp_path)
    sink = flushed_sink(rd, "dead", 9)
    # the kill: the merged files are in place, the files they replaced are not deleted yet,
    # and the last attempt is only in the log
    sink.add(row(9))
    assert len(parquet_names(rd)) == 9 + 2  # 9 flushes, merged 0-3 and 4-7
    assert counted(rd) == sorted(f"a{i}" for i in range(9))
    # the next session (under the lock) replays the log and deletes what a merge replaced
    assert recover(rd, "next") == 1
    assert parquet_names(rd) == sorted([part_name("dead", 0, 3), part_name("dead", 4, 7), part_name("dead", 8),
                                       "part-next-recovered.parquet"])
    assert counted(rd) == sorted(f"a{i}" for i in range(10))


def test_a_merged_file_holds_exactly_the_rows_it_replaces(tmp_path):
    rd = run_dir(tmp_path)
    sink = ResultSink(rd, "s", merge_fanin=2)
    sink.add(row(1))
    sink.add(row(2))
    sink.flush()
    sink.add(row(3))
    sink.flush()
    merged = pq.read_table(rd.attempts_dir / part_name("s", 0, 1))
    assert merged.schema == ATTEMPTS_SCHEMA
    assert merged.column("attempt_id").to_pylist() == ["a1", "a2", "a3"]
    sink.close()


def test_a_driver_killed_between_the_tokens_file_and_the_attempts_file(tmp_path, monkeypatch):
    """The tokens file of a flush is written first; a kill before its attempts file leaves an
    orphan whose rows the next session replays from the log: they must count once."""
    rd = run_dir(tmp_path)
    sink = ResultSink(rd, "dead", flush_interval_s=3600)
    tokens = {"chunk": [0, 0, 0], "pos": [1, 2, 3], "token": [5, 6, 7], "nll": [1.0, 2.0, 3.0],
              "nll_base": [1.0, 2.0, 3.0], "kld": [0.0, 0.1, 0.2], "dp": [0.0, 0.0, 0.0],
              "same_top": [True, False, True]}
    quality = {**row(0), "kind": "quality"}
    sink.add(quality, tokens)
    real_write = sink_mod.atomic_write_parquet

    def killed_at_the_attempts_file(path, table):
        if path.parent == rd.attempts_dir:
            raise KeyboardInterrupt("kill -9")
        real_write(path, table)

    monkeypatch.setattr(sink_mod, "atomic_write_parquet", killed_at_the_attempts_file)
    with pytest.raises(KeyboardInterrupt):
        sink.flush()
    monkeypatch.setattr(sink_mod, "atomic_write_parquet", real_write)
    orphan = rd.tokens_dir / part_name("dead", 0)
    assert orphan.exists() and not parquet_names(rd)
    rd.attempts_dir.mkdir(parents=True, exist_ok=True)
    (rd.attempts_dir / ".part-dead-000001.parquet.x.tmp").write_bytes(b"half")  # an interrupted write

    def token_rows() -> int:
        return connect(rd.path).execute("SELECT count(*) FROM tokens_raw").fetchone()[0]

    assert recover(rd, "next") == 1
    assert token_rows() == 3
    assert not orphan.exists() and not list(rd.attempts_dir.glob(".part-*.tmp"))
    # readers skip an orphan even where nobody removed it (e.g. a copy taken before recovery)
    orphan.write_bytes((rd.tokens_dir / "part-next-recovered.parquet").read_bytes())
    assert token_rows() == 3
