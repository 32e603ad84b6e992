"""Failures are results: every failure path, for real, on a local Ray cluster.

Faults are injected in the worker process (workers/faults.py): a real OutOfMemory raised where
a failed KV-cache allocation raises it, a real abort() and SIGSEGV killing the actor process, a
real hang, NaN logits upstream of the real check. The scheduler, Ray, the Parquet sink and the
DuckDB views are all the production code.
"""

from __future__ import annotations

import json

import pytest

from conftest import DEMO_CORPUS
from kvsweep.analysis.db import connect
from kvsweep.orchestrator.sweep import RunOptions, run_sweep

pytestmark = pytest.mark.ray

TIMEOUT_S = 15

MATRIX = """
name = "faulty"

[[models]]
name = "tiny"
generate = {{ arch = "llama", seed = 0 }}

[cache]
symmetric = ["f16", "q8_0", "q4_0"]

[quality]
corpus = "{corpus}"
n_ctx = [128]
max_chunks = 2
baseline = "f32"
n_batch = 128

[speed]
depths = [0, 256, 512]
n_prompt = 32
n_gen = 8
repetitions = 2

[runtime]
cell_timeout_s = {timeout}

[retry]
oom_retries = 1
oom_backoff_s = 0.1
crash_retries = 1

[testing]
faults = {faults}
"""

FAULTS = [
    # error: an ordinary exception, recorded with its traceback
    {"match": {"type_k": "q8_0", "kind": "tg", "n_depth": 0}, "fault": "error"},
    # crash once (abort, as GGML_ABORT does), then the retry succeeds
    {"match": {"type_k": "q4_0", "kind": "pp", "n_depth": 0}, "fault": "abort", "times": 1},
    # crash every time (SIGSEGV): retried once, then recorded as crash; the sweep goes on
    {"match": {"type_k": "q4_0", "kind": "tg", "n_depth": 256}, "fault": "segv"},
    # NaN logits in a quality cell: invalid
    {"match": {"type_k": "q8_0", "kind": "quality"}, "fault": "nan"},
    # out of memory at depth 256 for q8_0: retried in the worker, then recorded; deeper skipped
    {"match": {"type_k": "q8_0", "kind": "pp", "n_depth": 256}, "fault": "oom"},
    # a hang: no progress, the worker is killed and replaced, the cell recorded as timeout
    {"match": {"type_k": "f16", "kind": "tg", "n_depth": 512}, "fault": "hang", "times": 1},
]


def toml_inline(value) -> str:
    """A value as inline TOML (tables, lists, strings, numbers)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    return json.dumps(value)


def matrix_text(faults) -> str:
    return MATRIX.format(corpus=DEMO_CORPUS, timeout=TIMEOUT_S, faults=toml_inline(faults))


@pytest.fixture(scope="module")
def faulty_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    path = tmp / "faulty.toml"
    path.write_text(matrix_text(FAULTS))
    result = run_sweep(path, RunOptions(run_dir=tmp / "run", progress=False))
    return tmp, path, result


def cell_rows(run_dir, where: str) -> list[dict]:
    con = connect(run_dir)
    cur = con.execute(f"SELECT * FROM attempts WHERE {where} ORDER BY attempt")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def final(run_dir, where: str) -> dict:
    con = connect(run_dir)
    cur = con.execute(f"SELECT * FROM results WHERE {where}")
    cols = [d[0] for d in cur.description]
    (row,) = cur.fetchall()
    return dict(zip(cols, row))


def test_the_matrix_text_is_valid_toml():
    import tomllib

    assert tomllib.loads(matrix_text(FAULTS))["testing"]["faults"] == FAULTS


def test_error_is_recorded_with_traceback(faulty_run):
    _, _, result = faulty_run
    (row,) = cell_rows(result.run_dir, "type_k = 'q8_0' AND kind = 'tg' AND n_depth = 0")
    assert row["status"] == "error" and row["error_class"] == "InjectedError"
    assert "Traceback" in row["error_message"]
    assert row["host"] and row["worker_id"] and row["duration_s"] >= 0 and row["finished_at"]


def test_crash_once_then_retry_succeeds(faulty_run):
    _, _, result = faulty_run
    rows = cell_rows(result.run_dir, "type_k = 'q4_0' AND kind = 'pp' AND n_depth = 0")
    assert [r["status"] for r in rows] == ["crash", "ok"]
    assert rows[0]["error_class"] == "WorkerDied" and "died" in rows[0]["error_message"]
    # the dead process's last words come back from its log file: faulthandler saw the abort
    assert "Fatal Python error: Aborted" in rows[0]["log_tail"]
    assert "last words: Fatal Python error: Aborted" in rows[0]["error_message"]
    assert final(result.run_dir, "type_k = 'q4_0' AND kind = 'pp' AND n_depth = 0")["status"] == "ok"


def test_repeated_crash_is_recorded_and_the_sweep_goes_on(faulty_run):
    _, _, result = faulty_run
    rows = cell_rows(result.run_dir, "type_k = 'q4_0' AND kind = 'tg' AND n_depth = 256")
    assert [r["status"] for r in rows] == ["crash", "crash"]  # first try + crash_retries = 1
    assert all("Segmentation fault" in r["log_tail"] for r in rows)
    # the q4_0 series went on after the crash: the deeper depth ran
    assert final(result.run_dir, "type_k = 'q4_0' AND kind = 'tg' AND n_depth = 512")["status"] == "ok"


def test_nan_logits_are_invalid(faulty_run):
    _, _, result = faulty_run
    row = final(result.run_dir, "type_k = 'q8_0' AND kind = 'quality'")
    assert row["status"] == "invalid" and "nonfinite" in row["flags"]
    # the other caches of the same quality group are unaffected
    assert final(result.run_dir, "type_k = 'q4_0' AND kind = 'quality'")["status"] == "ok"


def test_oom_is_retried_in_the_worker_then_recorded(faulty_run):
    _, _, result = faulty_run
    rows = cell_rows(result.run_dir, "type_k = 'q8_0' AND kind = 'pp' AND n_depth = 256")
    assert [r["status"] for r in rows] == ["oom", "oom"]  # first try + oom_retries = 1
    assert "oom-retrying" in rows[0]["flags"] and "oom-retrying" not in rows[1]["flags"]
    assert "failed to allocate" in rows[1]["log_tail"]
    assert rows[1]["needed_bytes"] == 123456789  # read from llama.cpp's log line
    assert rows[1]["device_memory_total"] > 0


def test_deeper_depths_are_skipped_after_oom_but_not_the_same_depth(faulty_run):
    _, _, result = faulty_run
    assert final(result.run_dir, "type_k = 'q8_0' AND kind = 'tg' AND n_depth = 256")["status"] == "ok"
    for kind in ("pp", "tg"):
        row = final(result.run_dir, f"type_k = 'q8_0' AND kind = '{kind}' AND n_depth = 512")
        assert row["status"] == "skipped" and row["error_class"] == "SkippedAfterOOM"


def test_hang_times_out_and_the_worker_is_replaced(faulty_run):
    _, _, result = faulty_run
    rows = cell_rows(result.run_dir, "type_k = 'f16' AND kind = 'tg' AND n_depth = 512")
    assert [r["status"] for r in rows] == ["timeout"]
    assert str(TIMEOUT_S) in rows[0]["error_message"]
    # the worker came back: every cell other than the injected ones is ok
    con = connect(result.run_dir)
    bad = con.execute("SELECT count(*) FROM cell_status WHERE status NOT IN ('ok')").fetchone()[0]
    assert bad == 7  # error, crash, invalid, oom, 2 skipped, timeout


def test_every_planned_cell_is_accounted_for(faulty_run):
    _, _, result = faulty_run
    con = connect(result.run_dir)
    assert con.execute("SELECT count(*) FROM cell_status WHERE status = 'missing'").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM results").fetchone()[0] == result.planned


def test_resume_redoes_what_the_mode_says(faulty_run):
    tmp, path, result = faulty_run
    clean = tmp / "clean.toml"
    clean.write_text(matrix_text([]))  # same cells (faults are not part of a cell's id)

    only_missing = run_sweep(clean, RunOptions(run_dir=result.run_dir, redo="missing", progress=False, report=False))
    assert only_missing.to_run == 0

    failed = run_sweep(clean, RunOptions(run_dir=result.run_dir, redo="failed", progress=False, report=False))
    assert failed.to_run == 4  # error, crash, invalid, timeout
    assert failed.summary.by_status == {"ok": 4}

    oom = run_sweep(clean, RunOptions(run_dir=result.run_dir, redo="oom", progress=False, report=False))
    assert oom.to_run == 3  # the oom cell and the two skipped after it
    con = connect(result.run_dir)
    assert con.execute("SELECT count(*) FROM cell_status WHERE status <> 'ok'").fetchone()[0] == 0
    # earlier attempts are kept: the history of a cell is data too
    assert con.execute("SELECT count(*) FROM attempts").fetchone()[0] > result.planned


SPLIT_MATRIX = """
name = "split"
[[models]]
generate = {{ arch = "llama" }}
[cache]
symmetric = ["f16", "q8_0", "q5_0", "q4_0"]
[quality]
corpus = "{corpus}"
n_ctx = [128]
max_chunks = 2
baseline = "f32"
n_batch = 128
max_contexts = 4
[retry]
oom_backoff_s = 0.1
[testing]
# any context of a unit that keeps 3 or more alive runs out of memory: the unit fits only split
faults = [{{ match = {{ kind = "quality" }}, fault = "oom", min_contexts = 3 }}]
"""


def test_a_quality_unit_that_only_fits_when_split(ray_local, tmp_path):
    path = tmp_path / "split.toml"
    path.write_text(SPLIT_MATRIX.format(corpus=DEMO_CORPUS))
    result = run_sweep(path, RunOptions(run_dir=tmp_path / "run", progress=False, report=False))
    con = connect(result.run_dir)
    # against f32, bf16 joins: 5 compared caches, units of the baseline's own cell + 4, and of 1
    assert con.execute("SELECT count(*) FROM cell_status WHERE status <> 'ok'").fetchone()[0] == 0
    ok = con.execute("SELECT DISTINCT unit_contexts FROM results WHERE type_k <> 'f32'").fetchall()
    assert ok == [(2,)]  # halved until one compared cache ran next to the baseline
    splits = con.execute("SELECT count(*) FROM attempts WHERE list_contains(flags, 'oom-split') "
                         "AND list_contains(flags, 'oom-retrying') AND status = 'oom'").fetchone()[0]
    # the unit of own + 4 (5 rows), then its halves own + 2 (3 rows) and 2 (2 rows); the unit of
    # one compared cache fits at once
    assert splits == 5 + 3 + 2
    # the tries were rows, but never the cell's result
    assert con.execute("SELECT count(*) FROM results WHERE status = 'oom'").fetchone()[0] == 0


WRONG_TYPE_MATRIX = """
name = "wrong"
[[models]]
generate = {{ arch = "llama" }}
[cache]
symmetric = ["f16", "q8_0"]
[quality]
corpus = "{corpus}"
n_ctx = [128]
max_chunks = 2
baseline = "f16"
n_batch = 128
[speed]
depths = [0]
n_prompt = 16
n_gen = 4
repetitions = 2
[testing]
# q8_0's contexts are made with a q4_0 K cache, silently: a setting that did not take effect
faults = [{{ match = {{ type_k = "q8_0" }}, fault = "wrong-type", type = "q4_0" }}]
"""


def test_a_context_made_with_another_type_than_planned_is_flagged(ray_local, tmp_path):
    path = tmp_path / "wrong.toml"
    path.write_text(WRONG_TYPE_MATRIX.format(corpus=DEMO_CORPUS))
    result = run_sweep(path, RunOptions(run_dir=tmp_path / "run", progress=False))
    con = connect(result.run_dir)
    flagged = con.execute("SELECT kind, kv_type_k, config_check FROM results WHERE "
                          "list_contains(flags, 'config-not-applied') ORDER BY kind").fetchall()
    assert [k for k, _, _ in flagged] == ["pp", "quality", "tg"]  # every q8_0 cell, no other
    for _, kv_type_k, check in flagged:
        assert kv_type_k == "q4_0" and "the K cache is q4_0, the cell asked for q8_0" in check
    assert con.execute("SELECT count(*) FROM untrusted WHERE config = 'q8_0'").fetchone()[0] == 3
    assert "config-not-applied" in (result.run_dir / "report" / "report.md").read_text()
