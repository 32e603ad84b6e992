"""Damaged run directories keep working: truncated and foreign results files go to quarantine
and resume re-runs exactly what they held; a disk that fills up mid-sweep ends the run with one
clear message and loses nothing the write-ahead log has. Real `kvsweep` processes, real Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_matrix
from kvsweep.analysis.db import connect
from kvsweep.orchestrator.sink import read_wal

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MATRIX = """
    name = "damage"
    [[models]]
    generate = { arch = "llama" }
    [cache]
    symmetric = ["q8_0", "q4_0"]
    [quality]
    corpus = "@CORPUS@"
    n_ctx = [128]
    max_chunks = 3
    n_batch = 128
    max_contexts = 1
    [speed]
    depths = [0, 128]
    n_prompt = 16
    n_gen = 4
    repetitions = 2
"""


def kvsweep(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvsweep", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def cells_by_file(folder: Path) -> dict[str, set[str]]:
    return {p.name: set(pq.read_table(p, columns=["cell_id"]).column(0).to_pylist())
            for p in sorted(folder.glob("part-*.parquet"))}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_damaged_files_go_to_quarantine_and_resume_reruns_exactly_their_cells(tmp_path):
    matrix = write_matrix(tmp_path / "m.toml", MATRIX)
    run = tmp_path / "run"
    # a flush per event: many small files, so that one of them is a part of the results
    first = kvsweep("run", matrix, "--run-dir", run, "--no-progress", "--no-report", "--flush-every", "0")
    assert first.returncode == 0, first.stdout + first.stderr
    attempts, tokens = run / "results" / "attempts", run / "results" / "tokens"
    by_attempts, by_tokens = cells_by_file(attempts), cells_by_file(tokens)
    assert len(by_attempts) >= 3 and len(by_tokens) >= 2
    # damage: half of one attempts file (the middle one), half of one tokens file (the last)
    hit_attempts = sorted(by_attempts)[len(by_attempts) // 2]
    hit_tokens = sorted(by_tokens)[-1]
    assert hit_tokens != hit_attempts
    truncate(attempts / hit_attempts)
    truncate(tokens / hit_tokens)
    # and foreign files: Parquet under a kvsweep name with other columns, and plain notes
    pq.write_table(pa.table({"x": [1, 2]}), attempts / "part-foreign.parquet")
    (run / "results" / "notes.txt").write_text("my notes\n")
    others = set().union(*(ids for name, ids in by_attempts.items() if name != hit_attempts))
    expected = (by_attempts[hit_attempts] - others) | by_tokens[hit_tokens]

    status = kvsweep("status", run)
    assert status.returncode == 0, status.stderr
    assert hit_attempts in status.stderr and hit_tokens in status.stderr and "part-foreign.parquet" in status.stderr
    assert "Traceback" not in status.stderr
    quarantine = run / "results" / "quarantine"
    assert (quarantine / "attempts" / hit_attempts).exists() and (quarantine / "tokens" / hit_tokens).exists()
    assert (quarantine / "attempts" / "part-foreign.parquet").exists()
    con = connect(run)
    missing = {r[0] for r in con.execute("SELECT cell_id FROM cell_status WHERE status = 'missing'").fetchall()}
    assert missing == expected
    assert kvsweep("sql", run, "SELECT count(*) FROM attempts").returncode == 0
    assert kvsweep("report", run).returncode == 0
    assert (run / "results" / "notes.txt").exists(), "a file that is not a results part is left alone"

    resumed = kvsweep("resume", run, "--no-progress", "--no-report")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(expected)} run now: {len(expected)} ok" in resumed.stdout
    con = connect(run)
    assert con.execute("SELECT count(*) FROM cell_status WHERE status <> 'ok'").fetchone()[0] == 0
    # every quality cell counts its tokens once: 3 chunks x 63 scored tokens
    assert {r[0] for r in con.execute("SELECT n_tokens FROM quality").fetchall()} == {3 * 63}


HELD = """
    name = "full"
    [[models]]
    generate = { arch = "llama" }
    [cache]
    symmetric = ["f16", "q8_0"]
    [speed]
    depths = [0, 128]
    n_prompt = 16
    n_gen = 4
    repetitions = 2
    [testing]
    faults = [{ match = { type_k = "q8_0", kind = "pp", n_depth = 0 }, fault = "wait", path = "@GATE@" }]
"""


def mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    return done.returncode == 0


def fill(path: Path) -> None:
    """Write zeros until the file system takes no more, in ever smaller pieces."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)


def wal_ids(run: Path) -> set[str]:
    return {a for log in (run / "results" / "wal").glob("*.wal") for t, _ in read_wal(log)
            for a in t.column("attempt_id").to_pylist()}


def test_a_disk_that_fills_up_mid_sweep_loses_nothing_the_log_has(tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case is not tested")
    try:
        gate = tmp_path / "gate"
        matrix = write_matrix(tmp_path / "m.toml", HELD.replace("@GATE@", str(gate)))
        run = disk / "run"
        proc = subprocess.Popen([sys.executable, "-m", "kvsweep", "run", str(matrix), "--run-dir", str(run),
                                 "--no-progress", "--no-report", "--flush-every", "3600"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while len(wal_ids(run) if (run / "results" / "wal").exists() else ()) < 4:  # f16's series
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = wal_ids(run)
        fill(disk / "ballast")  # held at the gate: fill the disk to the last byte
        gate.touch()
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, out + err
        assert "the disk is full" in err and "kvsweep resume" in err
        assert "Traceback" not in err
        assert len([line for line in err.splitlines() if line.startswith("kvsweep:")]) == 1, err
        kept = wal_ids(run)
        assert before <= kept, "every attempt the log had is still there"
        # room again (as after freeing space, or on another disk), then resume
        (disk / "ballast").unlink()
        elsewhere = tmp_path / "run-moved"
        shutil.copytree(run, elsewhere)
        resumed = kvsweep("resume", elsewhere, "--no-progress", "--no-report")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        con = connect(elsewhere)
        assert con.execute("SELECT count(*) FROM cell_status WHERE status <> 'ok'").fetchone()[0] == 0
        ids = {r[0] for r in con.execute("SELECT attempt_id FROM attempts").fetchall()}
        assert kept <= ids
        assert con.execute("SELECT max(n) FROM (SELECT count(*) n FROM attempts WHERE status = 'ok' "
                           "GROUP BY cell_id)").fetchone()[0] == 1
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
