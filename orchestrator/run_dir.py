"""The run directory: everything about one sweep, and its source of truth (Ray's state is not).

Its layout and atomic writes are kvsweep/run_layout.py's (the analysis reads the same layout);
this module is the driver's side: the manifest and sessions, the plan, the lock.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import kvsweep
from kvsweep.cells import Cell
from kvsweep.run_layout import RunLayout, atomic_write_bytes, atomic_write_parquet


class RunDirLocked(RuntimeError):
    pass


def new_session_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class RunDir(RunLayout):
    """A run directory the driver works on (its layout: kvsweep/run_layout.py)."""

    def exists(self) -> bool:
        return self.manifest_file.exists()

    # -- manifest and plan -----------------------------------------------------------------
    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_file.read_text())
        except FileNotFoundError:
            return {}

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_bytes(self.manifest_file, json.dumps(manifest, indent=2).encode())

    def start_session(self, matrix_source: Path, session_id: str, argv: list[str], n_cells: int) -> dict:
        """Freeze the matrix and record a new session; returns the manifest."""
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.manifest() or {
            "run_id": uuid.uuid4().hex,
            "created": _now(),
            "kvsweep_version": kvsweep.__version__,
            "sessions": [],
        }
        if self.matrix_file.exists() and matrix_source.resolve() != self.matrix_file.resolve():
            old = self.matrix_file.read_bytes()
            if old != matrix_source.read_bytes():
                history = self.path / "history"
                history.mkdir(exist_ok=True)
                shutil.copy2(self.matrix_file, history / f"matrix-{session_id}.toml")
        if matrix_source.resolve() != self.matrix_file.resolve():
            atomic_write_bytes(self.matrix_file, matrix_source.read_bytes())
            manifest["matrix_source"] = str(matrix_source.resolve())
        manifest["sessions"].append({
            "session_id": session_id,
            "started": _now(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "argv": argv,
            "planned_cells": n_cells,
            "kvsweep_version": kvsweep.__version__,
        })
        self.write_manifest(manifest)
        return manifest

    def write_plan(self, cells: list[Cell]) -> None:
        table = pa.Table.from_pylist([c.to_row() for c in cells]) if cells else pa.table({})
        atomic_write_parquet(self.plan_file, table)

    def read_plan(self) -> list[Cell]:
        if not self.plan_file.exists():
            return []
        return [Cell.from_row(r) for r in pq.read_table(self.plan_file).to_pylist()]

    # -- the lock ----------------------------------------------------------------------------
    def acquire_lock(self) -> DriverLock:
        return DriverLock.acquire(self.lock_file)


class DriverLock:
    """An flock on driver.lock: the kernel drops it when the driver dies, even by kill -9, so
    a lock left by a dead driver is detected (its pid is gone) and taken over."""

    def __init__(self, path: Path, fd: int, took_over: str):
        self.path = path
        self.fd = fd
        self.took_over = took_over  # description of a dead driver's lock we replaced, or ""

    @classmethod
    def acquire(cls, path: Path) -> DriverLock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = _read_holder(path)
                raise RunDirLocked(
                    f"another kvsweep driver is working on {path.parent} ({holder}); wait for it "
                    "to finish or stop it: two drivers on one run directory would duplicate work"
                ) from None
            raise
        previous = _read_holder(path)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}).encode())
        os.fsync(fd)
        return cls(path, fd, previous)

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return ""
    if not info:
        return ""
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
