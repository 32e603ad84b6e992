"""End to end on the real components: a local Ray cluster, llama-cpp-python on a generated
model, Parquet results, DuckDB views and the report. Nothing here is mocked."""

from __future__ import annotations

import pytest

from conftest import SMALL_MATRIX, write_matrix
from kvsweep.analysis.db import connect
from kvsweep.orchestrator.sweep import RunOptions, run_sweep

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def small_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    matrix = write_matrix(tmp / "small.toml", SMALL_MATRIX)
    result = run_sweep(matrix, RunOptions(run_dir=tmp / "run", progress=False))
    return matrix, result


def test_every_planned_cell_has_a_result(small_run):
    _, result = small_run
    con = connect(result.run_dir)
    plan = {r[0] for r in con.execute("SELECT cell_id FROM plan").fetchall()}
    # quality: f32 (the baseline) and bf16 (always shown against f32) + 3 configs;
    # speed: 3 configs x 2 depths x (pp, tg)
    assert len(plan) == result.planned == 5 + 3 * 2 * 2
    rows = con.execute("SELECT cell_id, status FROM results").fetchall()
    assert {cid for cid, _ in rows} == plan
    assert len(rows) == len(plan), "one counted result per cell"
    assert {s for _, s in rows} == {"ok"}
    assert con.execute("SELECT count(*) FROM cell_status WHERE status = 'missing'").fetchone()[0] == 0


def test_kl_orders_cache_types_against_f32(small_run):
    _, result = small_run
    con = connect(result.run_dir)
    kld = dict(con.execute("SELECT config, kld_mean FROM quality").fetchall())
    assert kld["f32"] == 0
    assert kld["f16"] < kld["q8_0"] < kld["q4_0"]
    same = dict(con.execute("SELECT config, same_top_p FROM quality").fetchall())
    assert same["q4_0"] < same["q8_0"] <= same["f16"] <= 1


def test_rows_carry_provenance(small_run):
    _, result = small_run
    con = connect(result.run_dir)
    row = con.execute("""
        SELECT llama_cpp_python_version, build_commit, backends, host, model_sha256, type_k,
               flash_attn, flash_attn_enabled, kvsweep_version, n_threads, model_n_params
        FROM results WHERE kind = 'tg' LIMIT 1""").fetchone()
    assert all(v not in (None, "") for v in row), row
    speed = con.execute("SELECT count(*), min(len(samples_ns)) FROM speed").fetchone()
    assert speed == (12, 2)


def test_report_has_the_three_tables(small_run):
    _, result = small_run
    text = result.report.read_text()
    assert "| Cache | PPL | KL vs f32 | Top-1 token agreement |" in text
    assert "Generation tok/s (tg8) by depth" in text and "| Depth | f16 | q8_0 | q4_0 |" in text
    assert "At depth 256" in text and "| Cache | pp32 | tg8 |" in text
    for config in ("f16", "q8_0", "q4_0"):
        assert f"\n| {config} | " in text


def test_second_run_has_nothing_to_do(small_run, tmp_path):
    matrix, result = small_run
    again = run_sweep(matrix, RunOptions(run_dir=result.run_dir, progress=False, report=False))
    assert again.to_run == 0 and again.planned == result.planned


def test_changed_matrix_runs_only_new_cells(small_run):
    matrix, result = small_run
    grown = matrix.parent / "grown.toml"
    grown.write_text(matrix.read_text().replace('["f16", "q8_0", "q4_0"]', '["f16", "q8_0", "q4_0", "bf16"]'))
    more = run_sweep(grown, RunOptions(run_dir=result.run_dir, progress=False, report=False))
    # bf16's quality cell was already planned (f32 baseline): only its 2 depths x pp/tg are new
    assert more.planned == result.planned + 2 * 2
    assert more.to_run == 4
    con = connect(result.run_dir)
    assert con.execute("SELECT count(*) FROM attempts").fetchone()[0] == more.planned
    assert con.execute("SELECT count(DISTINCT cell_id) FROM results").fetchone()[0] == more.planned


def test_sql_and_status_commands(small_run):
    from test_cli import kvsweep

    _, result = small_run
    out = kvsweep("sql", result.run_dir, "SELECT config, round(kld_mean, 6) AS kld FROM quality ORDER BY kld")
    assert out.returncode == 0, out.stderr
    assert "q4_0" in out.stdout and "kld" in out.stdout
    status = kvsweep("status", result.run_dir)
    assert status.returncode == 0 and "by status:" in status.stdout and "ok" in status.stdout
    # one model, one worker: loaded once (quality and speed units of it ran back to back)
    assert "model loads per worker" in status.stdout
    from kvsweep.analysis.status import model_loads

    assert list(model_loads(result.run_dir).values()) == [1]


def test_the_embedded_cluster_listens_on_loopback_only(ray_local):
    import subprocess

    import ray

    node = ray.nodes()[0]
    gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    ports = {str(node["NodeManagerPort"]), str(node["ObjectManagerPort"]), gcs_port}
    ss = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    ours = [line.split()[3] for line in ss.splitlines()[1:] if line.split()[3].rsplit(":", 1)[1] in ports]
    assert len(ours) >= 3, ss
    loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
    assert [a for a in ours if not a.startswith(loopback)] == []
    assert node["NodeManagerAddress"] == "127.0.0.1"
