"""The quality and speed passes on a real generated model, checked against independent paths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import DEMO_CORPUS
from kvsweep import records
from kvsweep.cells import Cell, WorkUnit
from kvsweep.hashing import file_sha256
from kvsweep.workers.kl_math import Reducer
from kvsweep.workers.llama_api import Model
from kvsweep.workers.quality import CorpusTooShort, chunk_count, run_quality_group
from kvsweep.workers.runner import Finished, Progress, UnitRunner
from kvsweep.workers.speed import DepthStateCache, run_speed_cell

N_CTX = 128


@pytest.fixture(scope="module")
def model(tiny_model):
    m = Model(str(tiny_model))
    yield m
    m.close()


def quality_cells(tiny_model, configs, baseline="f32", n_ctx=N_CTX, max_chunks=3):
    sha = file_sha256(tiny_model)
    return [Cell(kind="quality", model_name="tiny", model_path=str(tiny_model), model_sha256=sha,
                 type_k=k, type_v=v, n_ctx=n_ctx, max_chunks=max_chunks, corpus_path=str(DEMO_CORPUS),
                 corpus_sha256="c" * 64, baseline=baseline, n_batch=64, n_ubatch=64)
            for k, v in configs]


def drain(gen):
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            return progress, stop.value


def test_chunking_follows_llama_perplexity():
    assert chunk_count(1000, 128, 0) == 7
    assert chunk_count(1000, 128, 3) == 3
    with pytest.raises(CorpusTooShort, match="2 x n_ctx"):
        chunk_count(255, 128, 0)


def test_perplexity_matches_an_independent_computation(model, tiny_model):
    """PPL from the quality pass equals the textbook computation on llama-cpp-python's
    high-level API (its own batching and logits buffer), chunk by chunk."""
    import llama_cpp

    tokens = model.tokenize(DEMO_CORPUS.read_text())
    cells = quality_cells(tiny_model, [("f32", "f32")], max_chunks=2)
    _, (outcome,) = drain(run_quality_group(model, cells, tokens, 2, Reducer(model.info.n_vocab)))
    assert outcome.status == records.OK

    llm = llama_cpp.Llama(str(tiny_model), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True,
                          type_k=0, type_v=0, flash_attn=True, verbose=False, n_threads=2)
    nlls = []
    first = N_CTX // 2
    for chunk in range(2):
        seq = tokens[chunk * N_CTX:(chunk + 1) * N_CTX].tolist()
        seq[0] = model.info.bos  # llama-perplexity replaces the first token with BOS
        llm.reset()
        llm.eval(seq)
        logits = np.array(llm.scores[:N_CTX], dtype=np.float64)
        for pos in range(first, N_CTX - 1):
            row = logits[pos]
            lse = row.max() + np.log(np.exp(row - row.max()).sum())
            nlls.append(lse - row[seq[pos + 1]])
    expected = np.exp(np.mean(nlls))
    assert len(nlls) == outcome.metrics["n_tokens"] == 2 * (N_CTX - 1 - first)
    assert outcome.metrics["ppl"] == pytest.approx(expected, rel=1e-5)
    assert outcome.tokens["nll"] == pytest.approx(np.array(nlls), rel=1e-4, abs=1e-4)


def test_group_scores_each_cache_against_the_baseline(model, tiny_model):
    tokens = model.tokenize(DEMO_CORPUS.read_text())
    configs = [("f32", "f32"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
    cells = quality_cells(tiny_model, configs)
    progress, outcomes = drain(run_quality_group(model, cells, tokens, 2, Reducer(model.info.n_vocab)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    by = {o.cell_id: o for o in outcomes}
    base, q8, q4 = (by[c.cell_id] for c in cells)
    assert all(o.status == records.OK for o in outcomes)
    # the baseline configuration is scored from the baseline itself: exactly zero divergence
    assert base.metrics["kld_mean"] == 0 and base.metrics["same_top_p"] == 1
    assert 0 < q8.metrics["kld_mean"] < q4.metrics["kld_mean"]
    assert q4.metrics["same_top_p"] < q8.metrics["same_top_p"] <= 1
    # every cell saw the same tokens and the same baseline
    np.testing.assert_array_equal(q8.tokens["token"], base.tokens["token"])
    np.testing.assert_array_equal(q4.tokens["nll_base"], base.tokens["nll"])
    assert q8.metrics["ppl_base"] == pytest.approx(base.metrics["ppl"])
    # llama.cpp rotates quantized K/V for head size 64: recorded, not assumed
    assert q4.facts["attn_rot_k"] is True and base.facts["attn_rot_k"] is False
    assert q4.facts["kv_bytes"] < q8.facts["kv_bytes"] < base.facts["kv_bytes"]


def test_speed_cell_follows_llama_bench(model, tiny_model):
    sha = file_sha256(tiny_model)
    cache = DepthStateCache()
    common = dict(model_name="tiny", model_path=str(tiny_model), model_sha256=sha, type_k="q8_0",
                  type_v="q8_0", n_depth=256, repetitions=3, n_batch=64, n_ubatch=64, host_class="x")
    pp = run_speed_cell(model, Cell(kind="pp", n_prompt=32, **common), 2, cache)
    assert cache.key is not None and cache.depth == 256  # the depth fill was saved...
    state = cache.state
    tg = run_speed_cell(model, Cell(kind="tg", n_gen=8, **common), 2, cache)
    assert cache.state is state  # ...and the tg test at the same depth reused it
    for outcome, n in ((pp, 32), (tg, 8)):
        m = outcome.metrics
        assert outcome.status == records.OK
        assert len(m["samples_ns"]) == 3 and all(t > 0 for t in m["samples_ns"])
        assert m["samples_ts"] == pytest.approx([1e9 * n / t for t in m["samples_ns"]])
        assert m["avg_ts"] == pytest.approx(np.mean(m["samples_ts"]))
        assert m["stddev_ts"] == pytest.approx(np.std(m["samples_ts"], ddof=1))
        assert m["avg_ns"] == int(np.mean(m["samples_ns"]))


def test_runner_reports_a_model_file_that_differs(tiny_model):
    cells = quality_cells(tiny_model, [("f16", "f16")])
    wrong = [Cell.from_row({**c.to_row(), "model_sha256": "0" * 64, "cell_id": ""}) for c in cells]
    events = list(UnitRunner(n_threads=2).run(WorkUnit("u", wrong, "0" * 64), {}))
    (finished,) = [e for e in events if isinstance(e, Finished)]
    assert finished.outcome.status == records.ERROR
    assert finished.outcome.error_class == "ModelMismatch" and "sha256" in finished.outcome.error_message


def test_runner_streams_progress_then_results(tiny_model):
    cells = quality_cells(tiny_model, [("f32", "f32"), ("q8_0", "q8_0")], max_chunks=2)
    events = list(UnitRunner(n_threads=2).run(WorkUnit("u", cells, cells[0].model_sha256), {}))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Progress", "Progress", "Finished", "Finished"]
    assert all(isinstance(e, Progress) for e in events[:2])
    assert events[2].outcome.facts["model_type"].startswith("llama")


@pytest.fixture(scope="module")
def hybrid(_private_cache):
    from kvsweep.workers.generated_models import ModelRecipe, cached_model

    path = cached_model(ModelRecipe(arch="qwen35", n_layer=8))
    m = Model(str(path))
    yield path, m
    m.close()


def test_qwen35_hybrid_quality_orders_cache_types(hybrid):
    """The architecture of the seeds (Qwen3.5/3.6: gated delta-net + full attention every 4th
    layer): only 2 of 8 layers keep a KV cache, and cache types still separate."""
    path, m = hybrid
    tokens = m.tokenize(DEMO_CORPUS.read_text())
    cells = quality_cells(path, [("f32", "f32"), ("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")])
    _, outcomes = drain(run_quality_group(m, cells, tokens, 2, Reducer(m.info.n_vocab)))
    kld = {o.cell_id: o.metrics["kld_mean"] for o in outcomes}
    f32, f16, q8, q4 = (kld[c.cell_id] for c in cells)
    assert f32 == 0 and f16 <= q8 < q4
    assert all(o.status == records.OK for o in outcomes)
    # KV for 2 layers only: a quarter of what a dense 8-layer model of this width would hold
    q8_outcome = next(o for o in outcomes if o.cell_id == cells[2].cell_id)
    # (llama.cpp logs the size in MiB with 2 decimals: 0.13 MiB here)
    assert q8_outcome.facts["kv_bytes"] == pytest.approx(2 * 2 * 256 * (2 * 64) * 8.5 / 8, rel=0.05)


def test_qwen35_hybrid_speed_reuses_the_saved_state(hybrid):
    path, m = hybrid
    sha = file_sha256(path)
    cache = DepthStateCache()
    common = dict(model_name="q35", model_path=str(path), model_sha256=sha, type_k="q8_0",
                  type_v="q8_0", n_depth=256, repetitions=2, n_batch=64, n_ubatch=64, host_class="x")
    pp = run_speed_cell(m, Cell(kind="pp", n_prompt=32, **common), 2, cache)
    tg = run_speed_cell(m, Cell(kind="tg", n_gen=8, **common), 2, cache)
    assert pp.status == tg.status == records.OK
    assert len(cache.state) > 0 and all(t > 0 for t in tg.metrics["samples_ns"])


def test_contexts_run_on_a_persistent_threadpool_that_changes_no_number(model, monkeypatch):
    """llama-bench attaches one CPU threadpool per test; kvsweep attaches one per context
    (workers/threadpool.py). The logits must be the very same as without one."""
    from kvsweep.workers import llama_api, threadpool

    assert threadpool.available()
    settings = llama_api.ContextSettings(type_k="q8_0", type_v="q8_0", n_ctx=128, n_batch=64, n_ubatch=64,
                                         flash_attn="on", n_threads=2, cpu_threadpool=True)
    tokens = np.random.default_rng(5).integers(0, model.info.n_vocab, 64).astype(np.int32)

    def logits() -> tuple[np.ndarray, bool]:
        with llama_api.Context(model, settings) as ctx:
            n = ctx.decode(tokens, 0, output_from=0)
            return ctx.logits(n).copy(), ctx._threadpool.ptr is not None

    with_pool, attached = logits()
    monkeypatch.setattr(threadpool, "_api", lambda: None)  # a build without the functions
    without_pool, attached_without = logits()
    assert attached and not attached_without
    assert np.array_equal(with_pool, without_pool)
    monkeypatch.undo()
    settings = dataclasses.replace(settings, cpu_threadpool=False)  # what the quality pass asks
    unasked, attached_unasked = logits()
    assert not attached_unasked and np.array_equal(with_pool, unasked)


def test_a_deeper_depth_extends_the_saved_fill(model, tiny_model, monkeypatch):
    """A series fills max(depth) tokens, not their sum: depth 512 after 256 restores the
    256-token state and decodes 256 more; the cache then holds 512 tokens, as a fresh fill's."""
    from kvsweep.workers import llama_api, speed

    fills = []
    real = speed.test_prompt

    def spy(ctx, n, n_batch, rand, first_bos=True):
        fills.append((ctx.pos_max() + 1, n, first_bos))
        real(ctx, n, n_batch, rand, first_bos)

    sha = file_sha256(tiny_model)
    cache = DepthStateCache()
    common = dict(model_name="tiny", model_path=str(tiny_model), model_sha256=sha, type_k="q4_0",
                  type_v="q4_0", repetitions=2, n_batch=64, n_ubatch=64, host_class="x")
    monkeypatch.setattr(speed, "test_prompt", spy)
    for depth in (256, 512):
        fills.clear()
        out = run_speed_cell(model, Cell(kind="tg", n_gen=8, n_depth=depth, **common), 2, cache)
        assert out.status == records.OK
        # (the tg warm-up decodes no prompt; the only test_prompt calls are fills)
        assert fills == [(0, 256, True)] if depth == 256 else fills == [(256, 256, False)]
    assert cache.depth == 512
    settings = llama_api.ContextSettings(type_k="q4_0", type_v="q4_0", n_ctx=600, n_batch=64, n_ubatch=64,
                                         flash_attn="on", n_threads=2)
    with llama_api.Context(model, settings) as ctx:
        assert ctx.restore_state(cache.state) and ctx.pos_max() == 511
    # a shallower depth than the saved one fills from empty again
    fills.clear()
    run_speed_cell(model, Cell(kind="tg", n_gen=8, n_depth=128, **common), 2, cache)
    assert fills == [(0, 128, True)] and cache.depth == 128
