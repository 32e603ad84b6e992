"""A run directory's layout and how its files are written: what the driver (orchestrator/
run_dir.py), the results sink and the analysis (analysis/db.py, the report) all rely on.

    RUN_DIR/
      matrix.toml                 the matrix of the latest session (older ones in history/)
      manifest.json               run id, sessions (who ran what, when, with which plan)
      plan.parquet                the cells of the current plan
      results/attempts/*.parquet  one row per attempt, any status (written once, never changed)
      results/tokens/*.parquet    per-token quality figures of those attempts
      results/wal/                the driver's write-ahead log of attempts not yet in Parquet
      results/quarantine/         results files that could not be read (kvsweep/result_files.py)
      report/                     what `kvsweep report` writes
      driver.lock                 held (flock) by the one driver working on this directory

Part files' names are kvsweep/parts.py's. Every file is written under a temporary name,
flushed to disk and renamed, so a crash or a kill -9 leaves either the whole file or none of it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class RunLayout:
    path: Path

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    @property
    def wal_dir(self) -> Path:
        return self.path / "results" / "wal"

    # -- layout ----------------------------------------------------------------------------
    @property
    def attempts_dir(self) -> Path:
        return self.path / "results" / "attempts"

    @property
    def tokens_dir(self) -> Path:
        return self.path / "results" / "tokens"

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.parquet"

    @property
    def matrix_file(self) -> Path:
        return self.path / "matrix.toml"

    @property
    def manifest_file(self) -> Path:
        return self.path / "manifest.json"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def lock_file(self) -> Path:
        return self.path / "driver.lock"


def _file_mode() -> int:
    """0666 less the umask, as open() would give: mkstemp alone makes files 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write) -> None:
    """write(tmp_path) fills a temporary file next to `path`; it is fsynced and renamed over
    `path`, and the directory fsynced: readers see the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _file_mode())
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
