"""Adaptive precision and the measured context ceiling (issue 15): the statistics, the stopping
rules on real llama.cpp runs, and real sweeps (Ray, Parquet, DuckDB) on a worker with a memory
limit whose bisected ceiling is checked against the deepest depth that fits."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from conftest import DEMO_CORPUS, write_matrix
from kvsweep import precision, records
from kvsweep.cells import CEILING, Cell
from kvsweep.hashing import file_sha256
from kvsweep.memory_model import HEADROOM, fits, predict
from kvsweep.orchestrator.matrix import MatrixError, load_matrix
from kvsweep.workers import llama_api
from kvsweep.workers.ceiling import _test_at, run_ceiling_cell
from kvsweep.workers.generated_models import ModelRecipe, cached_model
from kvsweep.workers.kl_math import Reducer
from kvsweep.workers.quality import chunk_count, run_quality_group

N_CTX = 64
MiB = 2**20
LIMIT = 64 * MiB  # the worker's memory in the sweeps below: the tiny model's ceiling is ~16K-31K
COMPARED = [("f16", "f16"), ("bf16", "bf16"), ("q8_0", "q8_0"), ("q5_0", "q5_0"), ("q4_0", "q4_0"),
            ("q8_0", "q4_0")]


# -- the statistics ------------------------------------------------------------------------

@pytest.mark.parametrize("p, df, expected", [(0.975, 5, 2.5706), (0.995, 10, 3.1693), (0.975, 1, 12.7062),
                                             (0.9995, 30, 3.6460), (0.95, 1000, 1.6464)])
def test_t_quantile_matches_the_tables(p, df, expected):
    assert precision.t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


def test_the_error_spent_over_all_looks_is_at_most_alpha():
    alpha = 0.05
    assert sum(precision.look_alpha(alpha, n, 3) * 3 for n in range(1, 100_000)) <= alpha
    assert precision.look_alpha(alpha, 10, 1) < precision.look_alpha(alpha, 5, 1)


def test_relative_se_and_pairs():
    assert precision.relative_se([1.0, 1.0, 1.0]) == 0
    assert precision.relative_se([0.0, 0.0]) == 0  # exactly zero in every chunk: known exactly
    assert math.isinf(precision.relative_se([1.0]))
    v = [1.0, 2.0, 3.0, 4.0]
    assert precision.relative_se(v) == pytest.approx(np.std(v, ddof=1) / 2 / 2.5)
    # identical samples are a tie, and nothing will split them
    assert precision.pair_resolved([1.0, 2.0], [1.0, 2.0], 0.01)
    # a consistent difference is resolved, noise around zero is not
    rng = np.random.default_rng(0)
    a = list(rng.normal(1, 0.1, 20))
    assert precision.pair_resolved(a, [x + 0.5 for x in a], 1e-4)
    assert not precision.pair_resolved(a, [x + rng.normal(0, 0.1) for x in a], 1e-4)


def test_quality_target_rules():
    loose = precision.QualityPrecision(kl_rel_se=0.5, min_chunks=3)
    steady = {"a": [1.0, 1.1, 0.9], "b": [2.0, 2.1, 1.9]}
    assert precision.quality_target_met(steady, loose)
    assert not precision.quality_target_met({k: v[:2] for k, v in steady.items()}, loose)  # below min_chunks
    assert not precision.quality_target_met(steady, precision.QualityPrecision(kl_rel_se=0.01, min_chunks=3))
    rank = precision.QualityPrecision(rank_confidence=0.95, min_chunks=3)
    # one cache has no ranking to resolve: the rule is not met, the unit runs to its end
    assert not precision.quality_target_met({"a": [1.0] * 10}, rank)
    far = {"a": [1.0 + 0.01 * i for i in range(12)], "b": [5.0 + 0.01 * i for i in range(12)]}
    assert precision.quality_target_met(far, rank)
    both = precision.QualityPrecision(kl_rel_se=1e-9, rank_confidence=0.95, min_chunks=3)
    assert not precision.quality_target_met(far, both)  # every rule that is set must be met


# -- the rules on real runs (llama.cpp, generated models, the demo corpus) -------------------

def _cells(model_path, target: precision.QualityPrecision | None, configs=COMPARED):
    sha = file_sha256(model_path)
    return [Cell(kind="quality", model_name="tiny", model_path=str(model_path), model_sha256=sha,
                 type_k=k, type_v=v, n_ctx=N_CTX, corpus_path=str(DEMO_CORPUS), corpus_sha256="c" * 64,
                 baseline="f32", n_batch=N_CTX, n_ubatch=N_CTX,
                 precision=target.to_json() if target else "")
            for k, v in [("f32", "f32")] + configs]


def _run(model, cells, tokens):
    gen = run_quality_group(model, cells, tokens, 2, Reducer(model.info.n_vocab))
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return {(c.type_k, c.type_v): o for c, o in zip(cells, stop.value)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ranking_rule_never_stops_with_an_order_the_full_corpus_reverses(seed):
    path = cached_model(ModelRecipe(arch="llama", seed=seed))
    model = llama_api.Model(str(path))
    try:
        tokens = model.tokenize(DEMO_CORPUS.read_text())
        every = _run(model, _cells(path, None), tokens)
        target = precision.QualityPrecision(rank_confidence=0.95, min_chunks=4)
        early = _run(model, _cells(path, target), tokens)
    finally:
        model.close()
    n_all = chunk_count(len(tokens), N_CTX, 0)
    assert all(o.status == records.OK for o in every.values())
    assert {o.metrics["stop_reason"] for o in every.values()} == {precision.STOP_CORPUS_END}
    assert {o.metrics["n_chunks"] for o in every.values()} == {n_all}
    stopped = {o.metrics["n_chunks"] for o in early.values()}
    assert len(stopped) == 1  # the unit stops as one
    n = stopped.pop()
    assert n < n_all and {o.metrics["stop_reason"] for o in early.values()} == {precision.STOP_TARGET}
    # the early chunks are the full run's first chunks: the same figures, fewer of them
    first = every[("q4_0", "q4_0")].tokens
    np.testing.assert_array_equal(early[("q4_0", "q4_0")].tokens["kld"], first["kld"][first["chunk"] < n])
    # no pair the early stop ordered is ordered the other way by the whole corpus
    full_kl = {c: every[c].metrics["kld_mean"] for c in COMPARED}
    early_kl = {c: early[c].metrics["kld_mean"] for c in COMPARED}
    for a in COMPARED:
        for b in COMPARED:
            if early_kl[a] < early_kl[b]:
                assert full_kl[a] <= full_kl[b], (seed, a, b, early_kl, full_kl)


# -- real sweeps on a worker with a memory limit ----------------------------------------------

@pytest.fixture(scope="module")
def limited_ray():
    """A real embedded Ray cluster whose one worker may assume LIMIT bytes (--memory-limit)."""
    from kvsweep.orchestrator import fleet

    fleet.start_embedded(n_workers=1, num_cpus=2, memory_limit=LIMIT)
    yield
    fleet.shutdown()


ADAPTIVE = """
    name = "adaptive"
    [[models]]
    name = "tiny"
    generate = {{ arch = "llama", seed = 0 }}
    [cache]
    symmetric = ["f16", "q8_0", "q4_0"]
    [quality]
    corpus = "@CORPUS@"
    n_ctx = [{n_ctx}]
    baseline = "f32"
    n_batch = {n_ctx}
    precision = {{ kl_rel_se = {kl_rel_se}, min_chunks = 4 }}
    max_contexts = 6
    [speed]
    depths = [0, 4096, 65536]
    n_prompt = 64
    n_gen = 8
    repetitions = 8
    precision = {{ rel_se = 0.05, min_repetitions = 3 }}
    ceiling = {{ resolution = 256 }}
"""


def _sweep(tmp_path, name, **values):
    from kvsweep.orchestrator.sweep import RunOptions, run_sweep

    path = write_matrix(tmp_path / f"{name}.toml", ADAPTIVE.format(**values))
    return run_sweep(path, RunOptions(run_dir=tmp_path / name, progress=False))


def _rows(run_dir, sql):
    from kvsweep.analysis.db import connect

    con = connect(run_dir)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


@pytest.mark.ray
def test_a_sweep_with_targets_stops_early_bisects_its_ceiling_and_reports_both(limited_ray, tmp_path, tiny_model):
    result = _sweep(tmp_path, "loose", n_ctx=N_CTX, kl_rel_se=0.3)
    run = result.run_dir
    # quality: a loose KL target stops the unit early on the demo corpus, and says why
    model = llama_api.Model(str(tiny_model))
    n_all = chunk_count(len(model.tokenize(DEMO_CORPUS.read_text())), N_CTX, 0)
    quality = _rows(run, "SELECT config, status, n_chunks, stop_reason, kld_rel_se_chunks FROM results "
                         "WHERE kind = 'quality'")
    assert len(quality) == 5 and all(r["status"] == "ok" for r in quality)
    assert {r["stop_reason"] for r in quality} == {"target"}
    assert all(4 <= r["n_chunks"] < n_all for r in quality)
    assert all(r["kld_rel_se_chunks"] <= 0.3 for r in quality)
    # the SQL's precision (from the per-token rows) agrees with the worker's
    sql = {r["config"]: r["kld_rel_se"] for r in _rows(run, "SELECT config, kld_rel_se FROM quality")}
    for r in quality:
        assert sql[r["config"]] == pytest.approx(r["kld_rel_se_chunks"], rel=1e-9, abs=1e-12)

    # speed: repetitions stop at the target or at the most, and say which
    speed = _rows(run, "SELECT repetitions_run, stop_reason, ts_rel_se FROM speed")
    assert speed and all(3 <= r["repetitions_run"] <= 8 for r in speed)
    for r in speed:
        if r["stop_reason"] == "target":
            assert r["ts_rel_se"] <= 0.05
        else:
            assert r["stop_reason"] == "repetitions" and r["repetitions_run"] == 8

    # the ceiling: bisected between the grid's 4096 (ran) and 65536 (predicted-oom)
    ceilings = _rows(run, "SELECT * FROM measured_ceiling")
    assert sorted(r["config"] for r in ceilings) == ["f16", "q4_0", "q8_0"]
    for c in ceilings:
        assert c["status"] == "ok" and c["ceiling_bound"] == "grid"
        assert 4096 < c["ceiling_depth"] < c["ceiling_fail_depth"] <= 65536
        assert c["ceiling_fail_depth"] - c["ceiling_depth"] <= c["ceiling_resolution"] == 256
        assert c["ceiling_bytes"] <= LIMIT * (1 - HEADROOM)
        deepest = _deepest_fit(model, c["config"], c["ceiling_depth"] - 512, c["ceiling_fail_depth"] + 512)
        assert c["ceiling_depth"] <= deepest < c["ceiling_fail_depth"], (c, deepest)
    by = {c["config"]: c["ceiling_depth"] for c in ceilings}
    assert by["f16"] < by["q8_0"] < by["q4_0"]  # smaller caches reach deeper
    model.close()

    # the report: precision per row, the measured ceiling in its table and in the recommendations
    text = (run / "report" / "report.md").read_text()
    assert "Chunks: precision reached" in text and "(target met, KL ±" in text
    assert "Measured ceiling" in text and f"{by['q4_0']:,} tokens (measured ceiling)" in text


def _deepest_fit(model, config: str, lo: int, hi: int) -> int:
    """The deepest depth in [lo, hi] at which a pp64 test's context fits LIMIT, found by trying
    every 16th depth directly with llama.cpp (the memory model first, as the worker must not
    allocate past its limit, then what llama.cpp reports allocating)."""
    type_k, type_v = (config.split("/") * 2)[:2]
    cell = Cell(kind=CEILING, model_name="tiny", model_path=model.path, model_sha256="x", type_k=type_k,
                type_v=type_v, n_prompt=64, n_gen=8, n_batch=2048, n_ubatch=512)
    shape = model.shape
    fit = []
    for d in range(max(0, lo), hi + 1, 16):
        test = _test_at(cell, d)
        ok = fits(predict(test, shape), LIMIT, "CPU")
        if ok:
            s = llama_api.ContextSettings(type_k=type_k, type_v=type_v, n_ctx=d + 64, n_batch=2048,
                                          n_ubatch=512, flash_attn="on", n_threads=2)
            with llama_api.Context(model, s) as ctx:
                f = ctx.facts
                used = shape.weights_bytes + f.kv_bytes + f.recurrent_bytes + f.compute_bytes + f.output_bytes
            ok = used <= LIMIT * (1 - HEADROOM)
        fit.append((d, ok))
    fitting = [d for d, ok in fit if ok]
    assert fitting, "nothing in the range fits"
    assert all(ok for d, ok in fit if d <= max(fitting)), "fitting is not monotone in depth"
    return max(fitting)


@pytest.mark.ray
def test_a_tight_target_runs_to_the_corpus_end(limited_ray, tmp_path, tiny_model):
    result = _sweep(tmp_path, "tight", n_ctx=256, kl_rel_se=0.0001)
    model = llama_api.Model(str(tiny_model))
    n_all = chunk_count(len(model.tokenize(DEMO_CORPUS.read_text())), 256, 0)
    model.close()
    quality = _rows(result.run_dir, "SELECT n_chunks, stop_reason FROM results WHERE kind = 'quality'")
    assert len(quality) == 5
    assert {(r["n_chunks"], r["stop_reason"]) for r in quality} == {(n_all, "corpus-end")}


def test_without_a_grid_failure_the_planner_bounds_the_bisection(model, tiny_model):
    cell = Cell(kind=CEILING, model_name="tiny", model_path=str(tiny_model), model_sha256="x",
                type_k="q8_0", type_v="q8_0", n_prompt=64, n_gen=8, n_batch=2048, n_ubatch=512,
                ceiling=json.dumps({"depths": [0, 1024], "resolution": "1/64"}))
    out = run_ceiling_cell(model, cell, 1024, None, LIMIT, "CPU", 2)
    m = out.metrics
    assert out.status == records.OK and m["ceiling_bound"] == "planner"
    assert m["ceiling_fail_depth"] - m["ceiling_depth"] <= m["ceiling_resolution"]
    # the bound is one past the largest depth the memory model fits: nothing beyond it was tried
    assert not fits(predict(_test_at(cell, m["ceiling_fail_depth"]), model.shape), LIMIT, "CPU") or \
        any(p.startswith(f"{m['ceiling_fail_depth']}:") for p in m["ceiling_probes"])
    probed = [int(p.split(":")[0]) for p in m["ceiling_probes"]]
    assert probed[0] == 1024 and max(probed) < m["ceiling_fail_depth"] + 1
    deepest = _deepest_fit(model, "q8_0", m["ceiling_depth"] - 512, m["ceiling_fail_depth"])
    assert m["ceiling_depth"] <= deepest < m["ceiling_fail_depth"]
    # a worker with less memory than depth 0 needs: nothing fits, recorded as out of memory
    tiny = run_ceiling_cell(model, cell, None, None, 4 * MiB, "CPU", 2)
    assert tiny.status == records.OOM and tiny.metrics["ceiling_depth"] is None


# -- the matrix ---------------------------------------------------------------------------

BASE = """
    name = "m"
    [[models]]
    name = "tiny"
    generate = { arch = "llama", seed = 0 }
    [cache]
    symmetric = ["q8_0"]
"""


@pytest.mark.parametrize("section, problem", [
    ('[quality]\ncorpus = "@CORPUS@"\nprecision = { min_chunks = 4 }', "[quality.precision] sets no target"),
    ('[quality]\ncorpus = "@CORPUS@"\nprecision = { kl_rel_se = 2.0 }', "[quality.precision.kl_rel_se] must be between 0 and 1"),
    ('[quality]\ncorpus = "@CORPUS@"\nprecision = { rank_confidence = 0.3 }', "[quality.precision.rank_confidence] must be above 0.5"),
    ('[quality]\ncorpus = "@CORPUS@"\nmax_chunks = 3\nprecision = { kl_rel_se = 0.1, min_chunks = 5 }',
     "[quality.precision.min_chunks] 5 is more than quality.max_chunks = 3"),
    ('[quality]\ncorpus = "@CORPUS@"\nprecision = { kl_rel = 0.1 }', "[quality.precision.kl_rel] unknown key"),
    ('[speed]\nrepetitions = 2\nprecision = { rel_se = 0.01 }', "[speed.precision.min_repetitions] 3 is more than speed.repetitions = 2"),
    ('[speed]\nprecision = { min_repetitions = 3 }', "[speed.precision.rel_se] is needed"),
    ('[speed]\nceiling = { resolution = "half" }', "[speed.ceiling.resolution] must be a token count or a share"),
    ('[speed]\nceiling = { resolution = 0 }', "[speed.ceiling.resolution] must be 1 to"),
])
def test_bad_precision_and_ceiling_settings_name_the_key(tmp_path, section, problem):
    path = write_matrix(tmp_path / "m.toml", BASE + section)
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    assert problem in str(err.value)
    assert str(path) in str(err.value)


def test_precision_enters_the_cell_id_only_when_set(tmp_path):
    path = write_matrix(tmp_path / "m.toml", BASE + '[quality]\ncorpus = "@CORPUS@"\n'
                        'precision = { rank_confidence = 0.95 }\n[speed]\nceiling = { resolution = "1/16" }')
    m = load_matrix(path)
    assert m.quality.precision == precision.QualityPrecision(rank_confidence=0.95, min_chunks=4)
    assert m.speed.ceiling.resolution == "1/16"
    cell = Cell(kind="pp", model_name="a", model_path="b", model_sha256="c", type_k="f16", type_v="f16")
    assert dataclasses.replace(cell, precision="", cell_id="").cell_id == cell.cell_id
    assert dataclasses.replace(cell, precision='{"rel_se":0.01}', cell_id="").cell_id != cell.cell_id


GRID = """
    name = "grid"
    [[models]]
    name = "tiny"
    generate = { arch = "llama", seed = 0 }
    [cache]
    symmetric = ["f16", "q8_0", "q4_0"]
    [speed]
    depths = [0, 4096, 65536]
    n_prompt = 64
    n_gen = 8
    repetitions = 3
"""


@pytest.mark.ray
def test_a_ceiling_added_later_bisects_from_the_grid_already_measured(limited_ray, tmp_path):
    """Resume: the grid's cells are done in the run directory; only the ceilings run, and they
    take their bounds from the recorded grid (scheduler known_status)."""
    from kvsweep.orchestrator.sweep import RunOptions, run_sweep

    path = write_matrix(tmp_path / "grid.toml", GRID)
    first = run_sweep(path, RunOptions(run_dir=tmp_path / "run", progress=False, report=False))
    assert first.to_run == 18  # 3 configurations x 3 depths x pp, tg
    with_ceiling = write_matrix(tmp_path / "grid.toml", GRID + "    ceiling = { resolution = 256 }\n")
    second = run_sweep(with_ceiling, RunOptions(run_dir=tmp_path / "run", progress=False, report=False))
    assert second.planned == 21 and second.to_run == 3
    ceilings = _rows(second.run_dir, "SELECT * FROM measured_ceiling")
    assert len(ceilings) == 3
    for c in ceilings:
        assert c["ceiling_bound"] == "grid" and c["ceiling_probes"][0].startswith("4096:fits")
        assert 4096 < c["ceiling_depth"] < c["ceiling_fail_depth"] <= 65536
