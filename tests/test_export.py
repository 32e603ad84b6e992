"""`kvsweep export`: llama-bench's jsonl and sql shapes, read by llama.cpp's own
compare-llama-bench.py (tests/data/llama_cpp, unchanged). Speed cells run for real on a
generated model; rows are built by the scheduler's attempt_row with a worker slot made from
the real host probe, and written by the Parquet sink."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from conftest import ROOT
from kvsweep.analysis.export import FIELDS, export, speed_tests
from kvsweep.cells import Cell
from kvsweep.hashing import file_sha256
from kvsweep.orchestrator.fleet import _slot
from kvsweep.orchestrator.run_dir import RunDir
from kvsweep.orchestrator.scheduler import attempt_row
from kvsweep.orchestrator.sink import ResultSink
from kvsweep.workers.llama_api import Model
from kvsweep.workers.probe import probe_host
from kvsweep.workers.speed import DepthStateCache, run_speed_cell

COMPARE = ROOT / "tests" / "data" / "llama_cpp" / "compare-llama-bench.py"


@pytest.fixture(scope="module")
def speed_run(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "run"
    path.mkdir()
    rd = RunDir(path)
    rd.write_manifest({"run_id": "export-test"})
    common = dict(model_name="tiny", model_path=str(tiny_model), model_sha256=file_sha256(tiny_model),
                  repetitions=2, n_batch=64, n_ubatch=64, host_class="h")
    cells = [Cell(kind=kind, type_k=t, type_v=t, n_depth=depth, **common, **sizes)
             for t in ("f16", "q8_0") for depth in (0, 64)
             for kind, sizes in (("pp", {"n_prompt": 32}), ("tg", {"n_gen": 8}))]
    rd.write_plan(cells)
    slot = _slot(None, {}, {"worker_id": "w0", "device_index": 0, "node_id": "n0",
                            "probe": probe_host().to_dict()})
    model = Model(str(tiny_model))
    sink = ResultSink(rd, "s")
    cache = DepthStateCache()
    outcomes = {}
    for cell in cells:
        outcome = run_speed_cell(model, cell, 2, cache)
        outcomes[cell.cell_id] = outcome
        row = attempt_row(cell, outcome, slot, "export-test", 1)
        row["model_filename"] = model.info.model_filename  # what runner.py adds
        row["model_type"], row["model_size"] = model.info.model_type, model.info.model_size
        row["model_n_params"] = model.info.model_n_params
        sink.add(row)
    sink.flush()
    model.close()
    return path, cells, outcomes


def test_jsonl_has_llama_benchs_fields_and_types(speed_run):
    path, cells, outcomes = speed_run
    lines = export(path, "jsonl").splitlines()
    assert len(lines) == len(cells)
    for line in lines:
        test = json.loads(line)
        assert list(test) == [*FIELDS, "samples_ns", "samples_ts"]
        assert isinstance(test["avg_ns"], int) and isinstance(test["avg_ts"], float)
        assert isinstance(test["cpu_strict"], bool) and isinstance(test["n_depth"], int)
        assert isinstance(test["build_commit"], str) and test["build_commit"]
        assert test["flash_attn"] == 1 and test["n_gpu_layers"] == 999
        assert test["type_k"] in ("f16", "q8_0") and test["model_type"].startswith("llama")
        assert (test["n_prompt"], test["n_gen"]) in ((32, 0), (0, 8))
        assert len(test["samples_ns"]) == 2
    # the figures are the measured ones
    by_key = {(t["type_k"], t["n_depth"], t["n_prompt"], t["n_gen"]): t for t in map(json.loads, lines)}
    for cell in cells:
        got = by_key[(cell.type_k, cell.n_depth, cell.n_prompt, cell.n_gen)]
        m = outcomes[cell.cell_id].metrics
        assert got["samples_ns"] == m["samples_ns"]
        assert got["avg_ts"] == pytest.approx(m["avg_ts"]) and got["avg_ns"] == m["avg_ns"]


def test_sql_loads_into_sqlite(speed_run, tmp_path):
    path, cells, _ = speed_run
    db = sqlite3.connect(tmp_path / "bench.sqlite")
    db.executescript(export(path, "sql"))
    cols = [r[1] for r in db.execute("PRAGMA table_info(llama_bench)")]
    assert cols == list(FIELDS)
    rows = db.execute("SELECT type_k, n_depth, avg_ts, typeof(avg_ts), typeof(n_prompt), flash_attn "
                      "FROM llama_bench").fetchall()
    assert len(rows) == len(cells)
    assert all(r[3] == "real" and r[4] == "integer" and r[5] == 1 for r in rows)


def compare(*args, cwd):
    return subprocess.run([sys.executable, str(COMPARE), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_compare_llama_bench_reads_jsonl(speed_run, tmp_path):
    """Two labelled exports of the same run side by side: every test pairs up, speedup 1."""
    path, cells, _ = speed_run
    data = tmp_path / "both.jsonl"
    data.write_text(export(path, "jsonl", build_commit="aaaaaaa") + export(path, "jsonl", build_commit="bbbbbbb"))
    out = compare("-t", "llama-bench", "-i", data, "-b", "aaaaaaa", "-c", "bbbbbbb", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    table = [line for line in out.stdout.splitlines() if line.startswith("|")][2:]
    names = {line.split("|")[-5].strip() for line in table}
    assert names == {"pp32", "tg8", "pp32@d64", "tg8@d64"}
    assert len(table) == len(cells)
    assert all(line.rstrip(" |").endswith("1.00") for line in table)


def test_compare_llama_bench_reads_sqlite(speed_run, tmp_path):
    path, cells, _ = speed_run
    db = tmp_path / "llama-bench.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript(export(path, "sql", build_commit="ccccccc"))
    out = compare("-i", db, "-b", "ccccccc", "-c", "ccccccc", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sum(line.startswith("|") for line in out.stdout.splitlines()) == 2 + len(cells)


def test_export_command(speed_run, tmp_path):
    from test_cli import kvsweep

    path, cells, _ = speed_run
    out = kvsweep("export", path, "--format", "jsonl", "-o", tmp_path / "x.jsonl")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x.jsonl").read_text() == export(path, "jsonl")
    assert len(speed_tests(path)) == len(cells)
