"""Streams attempt records to Parquet as they arrive: batched, atomic, never rewritten, and
never lost when the driver is killed.

Two layers:
- a write-ahead log (results/wal/SESSION.wal): each attempt is appended the moment it
  arrives, in one write() call. A process killed with SIGKILL loses nothing the kernel already
  has, so every attempt the driver received survives kill -9; the log is fsynced at each flush.
  The scheduler hands over the events a worker has already sent in one go (`with
  sink.batch():`): their attempts go into the log as one record when the block ends, before
  the driver waits for more or hands out work (one Arrow IPC record costs about 0.5 ms
  whatever its row count, most of it the schema).
- Parquet parts: buffered attempts are written as one file per flush (at least every
  `flush_interval_s`, and at the end), so a sweep of thousands of quick cells makes a handful
  of files. A flush writes the tokens file first and the attempts file second (the attempt row
  is the commit record: token rows without one are ignored by views and resume), then empties
  the log. The next session (under the run directory's lock) replays any log a dead driver
  left, adding only attempts whose id is not yet in Parquet: nothing is lost, nothing written
  twice.
- Merging: cells slower than the flush interval make about one file per attempt, and a
  hundred thousand small files make every read slow (bench/scale_queries.py). So the sink
  merges its own attempts files, size-tiered: whenever the newest MERGE_FANIN files hold
  equally many flushes they become one file (kvsweep/parts.py names it and tells readers to
  skip what it replaces), and at the end, if the session has MERGE_FANIN files or more, they
  become one. A session of n flushes keeps at most (MERGE_FANIN - 1) x log16(n) files and
  rewrites each row about log16(n) times; a short one (fewer than MERGE_FANIN flushes) keeps
  its files as they are. Replaced files are deleted MERGE_GRACE_S later (a reader that listed them
  just before can still open them), at the end, or by the next session if this one is killed.
  Tokens files are not merged: only flushes with quality attempts write one, and they are few
  and large.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kvsweep.orchestrator.run_dir import RunDir
from kvsweep.run_layout import atomic_write_parquet, fsync_dir
from kvsweep.parts import part_name
from kvsweep.result_files import result_files
from kvsweep.records import ATTEMPTS_SCHEMA, TOKENS_SCHEMA

_MAGIC = b"KVW1"
_HEADER = struct.Struct("<4sQI")  # magic, payload length, crc32 of the payload


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def tokens_table(row: dict, tokens: dict[str, np.ndarray]) -> pa.Table:
    n = len(next(iter(tokens.values())))
    columns = {
        "cell_id": pa.array([row["cell_id"]] * n, pa.string()),
        "attempt_id": pa.array([row["attempt_id"]] * n, pa.string()),
    }
    for name in TOKENS_SCHEMA.names[2:]:
        columns[name] = pa.array(tokens[name], TOKENS_SCHEMA.field(name).type)
    return pa.table(columns, schema=TOKENS_SCHEMA)


class WriteAheadLog:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(path.parent)

    def append(self, attempts: pa.Table, tokens: pa.Table | None) -> None:
        a = _ipc(attempts)
        t = _ipc(tokens) if tokens is not None else b""
        payload = struct.pack("<Q", len(a)) + a + struct.pack("<Q", len(t)) + t
        record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
        end = os.lseek(self.fd, 0, os.SEEK_END)
        view = memoryview(record)
        try:
            while view:  # one write() in practice; loop only if the kernel takes less
                view = view[os.write(self.fd, view):]
        except OSError:
            # a full disk can take part of a record: cut it off, so that a later append (or
            # the replay) never meets a torn record in the middle of the log
            os.ftruncate(self.fd, end)
            raise

    def sync(self) -> None:
        os.fsync(self.fd)

    def truncate(self) -> None:
        os.ftruncate(self.fd, 0)
        os.fsync(self.fd)

    def close(self, remove: bool) -> None:
        os.close(self.fd)
        if remove:
            self.path.unlink(missing_ok=True)


def read_wal(path: Path) -> list[tuple[pa.Table, pa.Table | None]]:
    """Records of a log, up to the first incomplete one (a kill mid-write)."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, pos)
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        if magic != _MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        payload = data[start:end]
        (la,) = struct.unpack_from("<Q", payload, 0)
        attempts = _from_ipc(payload[8 : 8 + la])
        (lt,) = struct.unpack_from("<Q", payload, 8 + la)
        tokens = _from_ipc(payload[16 + la : 16 + la + lt]) if lt else None
        out.append((attempts, tokens))
        pos = end
    return out


def recorded_attempt_ids(run_dir: RunDir) -> set[str]:
    files = [str(p) for p in result_files(run_dir.results_dir).attempts]
    if not files:
        return set()
    return set(ds.dataset(files, format="parquet").to_table(columns=["attempt_id"]).column(0).to_pylist())


def recover(run_dir: RunDir, session_id: str) -> int:
    """Move attempts from logs that dead drivers left into Parquet; returns how many.

    Call with the run directory's lock held, before reading history. Also deletes what a
    killed driver left behind and nobody reads: attempts files a merged file replaced, tokens
    files without their attempts file (their rows are in the log, replayed below) and
    half-written temporary files."""
    remove_leftovers(run_dir)
    wal_dir = run_dir.wal_dir
    logs = sorted(wal_dir.glob("*.wal")) if wal_dir.exists() else []
    if not logs:
        return 0
    known = recorded_attempt_ids(run_dir)
    attempts, tokens = [], []
    for log in logs:
        for a, t in read_wal(log):  # a record holds one attempt or several (a batch)
            ids = a.column("attempt_id").to_pylist()
            keep = [i for i, aid in enumerate(ids) if aid not in known]
            if not keep:
                continue
            known.update(ids[i] for i in keep)
            if len(keep) < len(ids):
                a = a.take(keep)
                if t is not None:
                    kept = pa.array([ids[i] for i in keep], pa.string())
                    t = t.filter(pc.is_in(t.column("attempt_id"), value_set=kept))
            attempts.append(a.cast(ATTEMPTS_SCHEMA))
            if t is not None and t.num_rows:
                tokens.append(t.cast(TOKENS_SCHEMA))
    if attempts:
        name = f"part-{session_id}-recovered.parquet"
        if tokens:
            atomic_write_parquet(run_dir.tokens_dir / name, pa.concat_tables(tokens))
        atomic_write_parquet(run_dir.attempts_dir / name, pa.concat_tables(attempts))
    for log in logs:
        log.unlink()
    fsync_dir(wal_dir)
    return sum(t.num_rows for t in attempts)


def remove_leftovers(run_dir: RunDir) -> int:
    """Delete what nobody reads and a killed driver may have left (call with the lock held):
    attempts files a merged file replaces, tokens files without their attempts file, and
    temporary files of interrupted writes. Returns how many."""
    files = result_files(run_dir.results_dir)  # also sets damaged files aside
    superseded, orphaned = files.superseded, files.orphaned
    temporary = [p for d in (run_dir.attempts_dir, run_dir.tokens_dir) if d.exists()
                 for p in d.glob(".part-*.tmp")]
    doomed = superseded + orphaned + temporary
    for path in doomed:
        path.unlink(missing_ok=True)
    for d in {p.parent for p in doomed}:
        fsync_dir(d)
    return len(doomed)


MERGE_FANIN = 16  # this many attempts files of one size become one
# Replaced files are deleted this long after the merge: `kvsweep status` and reports read the
# files they listed within seconds; an interactive `kvsweep sql` shell open for longer during a
# sweep can find some gone (reopen it). At one flush a second at most (the default interval)
# this leaves at most about this many replaced files on disk.
MERGE_GRACE_S = 120.0


class ResultSink:
    def __init__(self, run_dir: RunDir, session_id: str, flush_interval_s: float = 1.0,
                 merge_fanin: int = MERGE_FANIN):
        self.run_dir = run_dir
        self.session_id = session_id
        self.flush_interval_s = flush_interval_s
        self._rows: list[dict] = []
        self._tokens: list[pa.Table] = []
        self._unlogged: list[tuple[dict, pa.Table | None]] = []  # added in a batch, not yet in the log
        self._batching = 0
        self._seq = 0
        self._last_flush = time.monotonic()
        self.rows_written = 0
        self.files_written = 0
        self.log_records = 0
        self.merge_fanin = merge_fanin
        self.merges = 0
        self._live: list[tuple[int, int]] = []  # flush ranges of this session's attempts files
        self._replaced: list[tuple[float, list[Path]]] = []  # (when, files a merge replaced)
        self.wal = WriteAheadLog(run_dir.wal_dir / f"{session_id}.wal")

    def add(self, row: dict, tokens: dict[str, np.ndarray] | None = None) -> None:
        """Record an attempt: in the write-ahead log at once, or when the enclosing batch() ends."""
        table = tokens_table(row, tokens) if tokens else None
        self._unlogged.append((row, table))
        self._rows.append(row)
        if table is not None:
            self._tokens.append(table)
        if not self._batching:
            self.write_log()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Attempts added inside go into the log as one record when the block ends (also when it
        ends by an exception)."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching:
                self.write_log()

    def write_log(self) -> None:
        """Append every attempt not yet in the write-ahead log, as one record."""
        if not self._unlogged:
            return
        rows = [r for r, _ in self._unlogged]
        tables = [t for _, t in self._unlogged if t is not None]
        self.wal.append(pa.Table.from_pylist(rows, schema=ATTEMPTS_SCHEMA),
                        pa.concat_tables(tables) if tables else None)
        self._unlogged = []
        self.log_records += 1

    @property
    def pending(self) -> int:
        return len(self._rows)

    def maybe_flush(self) -> bool:
        if self._rows and time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        self.write_log()  # nothing reaches Parquet that the log does not hold
        self.wal.sync()
        name = part_name(self.session_id, self._seq)
        if self._tokens:
            atomic_write_parquet(self.run_dir.tokens_dir / name, pa.concat_tables(self._tokens))
            self.files_written += 1
        table = pa.Table.from_pylist(self._rows, schema=ATTEMPTS_SCHEMA)
        atomic_write_parquet(self.run_dir.attempts_dir / name, table)
        self.files_written += 1
        self.rows_written += len(self._rows)
        self._live.append((self._seq, self._seq))
        self._seq += 1
        self._rows, self._tokens = [], []
        self.wal.truncate()  # everything in it is in Parquet now
        while len(self._live) >= self.merge_fanin and \
                len({b - a for a, b in self._live[-self.merge_fanin:]}) == 1:
            self._merge(self.merge_fanin)
        self._delete_replaced(time.monotonic() - MERGE_GRACE_S)

    def _merge(self, n: int) -> None:
        """The newest n attempts files of this session become one; readers skip the n at once."""
        ranges = self._live[-n:]
        files = [self.run_dir.attempts_dir / part_name(self.session_id, a, None if a == b else b)
                 for a, b in ranges]
        table = pa.concat_tables([pq.read_table(f, schema=ATTEMPTS_SCHEMA) for f in files])
        first, last = ranges[0][0], ranges[-1][1]
        atomic_write_parquet(self.run_dir.attempts_dir / part_name(self.session_id, first, last), table)
        self._live[-n:] = [(first, last)]
        self._replaced.append((time.monotonic(), files))
        self.merges += 1

    def _delete_replaced(self, before: float | None) -> None:
        keep = []
        for when, files in self._replaced:
            if before is None or when <= before:
                for f in files:
                    f.unlink(missing_ok=True)
            else:
                keep.append((when, files))
        if len(keep) < len(self._replaced):
            fsync_dir(self.run_dir.attempts_dir)
        self._replaced = keep

    @property
    def attempts_files(self) -> int:
        """This session's attempts files that count (merged ones replace what they hold)."""
        return len(self._live)

    def close(self) -> None:
        self.flush()
        if len(self._live) >= self.merge_fanin:
            self._merge(len(self._live))  # a long session's attempts: one file
        self._delete_replaced(None)
        self.wal.close(remove=True)
