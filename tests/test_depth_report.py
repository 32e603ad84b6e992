"""A real sweep (local Ray, llama-cpp-python, Parquet, DuckDB) with quality by position,
generation agreement, a corpus fill, and a setting that silently does not take effect."""

from __future__ import annotations

import pytest

from conftest import write_matrix
from kvsweep.analysis.db import connect
from kvsweep.orchestrator.sweep import RunOptions, run_sweep

pytestmark = pytest.mark.ray

MATRIX = """
    name = "depth"

    [[models]]
    name = "tiny"
    generate = { arch = "llama", seed = 0 }

    [cache]
    symmetric = ["f16", "q8_0", "q4_0"]
    pairs = [["q8_0", "q4_0"]]

    [quality]
    corpus = "@CORPUS@"
    n_ctx = [128]
    max_chunks = 6
    baseline = "f32"
    n_batch = 128
    score = "all"
    generation = { tokens = 12, depths = [16, 64], prompts = 3 }

    [speed]
    depths = [0, 256]
    n_prompt = 32
    n_gen = 8
    repetitions = 2
    fill = "corpus"

    [testing]
    # the pair's quality context is made with a q4_0 K cache, silently: q8_0/q4_0 then measures
    # q4_0/q4_0, and its per-token results equal the q4_0 cell's bit for bit
    faults = [{ match = { kind = "quality", type_k = "q8_0", type_v = "q4_0" }, fault = "wrong-type", type = "q4_0" }]
"""


@pytest.fixture(scope="module")
def depth_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("depth")
    result = run_sweep(write_matrix(tmp / "depth.toml", MATRIX), RunOptions(run_dir=tmp / "run", progress=False))
    return result.run_dir, connect(result.run_dir)


def test_every_cell_ran(depth_run):
    _, con = depth_run
    assert con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'ok') FROM cell_status").fetchone() == (
        6 + 4 * 2 * 2, 6 + 4 * 2 * 2)


def test_q4_0_is_further_from_the_baseline_than_q8_0_at_every_position(depth_run):
    _, con = depth_run
    rows = con.execute("""
        SELECT a.bucket_lo, a.kld_mean, b.kld_mean, a.n_tokens
        FROM quality_by_position a JOIN quality_by_position b USING (bucket_lo)
        WHERE a.config = 'q4_0' AND b.config = 'q8_0' ORDER BY bucket_lo""").fetchall()
    assert [r[0] for r in rows] == [1, 2, 4, 8, 16, 32, 64]
    assert [r[3] for r in rows] == [6 * n for n in (1, 2, 4, 8, 16, 32, 64)]
    for lo, q4, q8, n in rows:
        if n >= 24:
            assert q4 > q8 > 0, (lo, q4, q8)
    # buckets partition the scored tokens: their counts add up to the cell's
    total = con.execute("SELECT sum(n_tokens) FROM quality_by_position WHERE config = 'q8_0'").fetchone()[0]
    assert total == con.execute("SELECT n_tokens FROM quality WHERE config = 'q8_0'").fetchone()[0] == 6 * 127


def test_a_setting_that_did_not_take_effect_is_flagged_twice(depth_run):
    _, con = depth_run
    flags = {c: (f, i) for c, f, i in con.execute(
        "SELECT config, flags, identical_to FROM results WHERE kind = 'quality'").fetchall()}
    pair_flags, pair_twins = flags["q8_0/q4_0"]
    assert "config-not-applied" in pair_flags and "identical-results" in pair_flags
    assert pair_twins == ["q4_0"]
    assert "identical-results" in flags["q4_0"][0] and flags["q4_0"][1] == ["q8_0/q4_0"]
    # f16 equals f32 bit for bit on the CPU backend's flash attention: known, not flagged
    for config in ("f32", "f16", "q8_0", "bf16"):
        assert flags[config][0] == [] and flags[config][1] is None, config
    untrusted = {c for (c,) in con.execute("SELECT DISTINCT config FROM untrusted WHERE kind = 'quality'").fetchall()}
    assert untrusted == {"q4_0", "q8_0/q4_0"}


def test_generation_agreement_is_recorded_per_prompt(depth_run):
    _, con = depth_run
    rows = dict(con.execute("SELECT config, gen_first_diff FROM results WHERE kind = 'quality'").fetchall())
    assert all(len(v) == 2 * 3 for v in rows.values())
    assert rows["f32"] == rows["f16"] == [12] * 6
    share = dict(con.execute("SELECT config, avg(equal_mean) FROM generation_agreement GROUP BY config").fetchall())
    assert share["q4_0"] < share["q8_0"] <= share["f16"] == 1.0


def test_speed_rows_record_the_corpus_fill(depth_run):
    _, con = depth_run
    assert con.execute("SELECT DISTINCT fill FROM results WHERE kind IN ('pp', 'tg')").fetchall() == [("corpus",)]
    assert con.execute("SELECT DISTINCT score FROM results WHERE kind = 'quality'").fetchall() == [("all",)]


def test_the_report_shows_positions_agreement_and_flags(depth_run):
    run_dir, _ = depth_run
    md = (run_dir / "report" / "report.md").read_text()
    html = (run_dir / "report" / "report.html").read_text()
    for text in ("Quality by position in the chunk", "Generation agreement"):
        assert text in md and text in html
    assert "| Cache | 1 | 2-3 | 4-7 | 8-15 | 16-31 | 32-63 | 64-127 |" in md
    assert "bit-identical to q4_0's" in md and "identical-results" in md
    assert "f16 and f32 gave bit-identical results: expected" in md
    chart = run_dir / "report" / "charts" / "kl-by-position-tiny-128-f32.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
