"""Quality by position, generation agreement and corpus fills, on a real generated model
(workers/quality.py, generation.py, speed.py), checked against independent computations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import DEMO_CORPUS
from kvsweep import records
from kvsweep.cells import Cell
from kvsweep.hashing import file_sha256
from kvsweep.workers import generation, llama_api
from kvsweep.workers.kl_math import Reducer
from kvsweep.workers.quality import run_quality_group
from kvsweep.workers.speed import CorpusTokens, DepthStateCache, fill_depth

N_CTX = 128


@pytest.fixture(scope="module")
def tokens(model):
    return model.tokenize(DEMO_CORPUS.read_text())


def cells_for(tiny_model, configs, **extra):
    sha = file_sha256(tiny_model)
    return [Cell(kind="quality", model_name="tiny", model_path=str(tiny_model), model_sha256=sha,
                 type_k=k, type_v=v, n_ctx=N_CTX, max_chunks=2, corpus_path=str(DEMO_CORPUS),
                 corpus_sha256="c" * 64, baseline="f32", n_batch=64, n_ubatch=64, **extra)
            for k, v in configs]


def run(model, cells, tokens):
    gen = run_quality_group(model, cells, tokens, 2, Reducer(model.info.n_vocab))
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            return progress, {o.cell_id: o for o in stop.value}


def test_score_all_scores_every_position_and_keeps_the_second_half_unchanged(model, tiny_model, tokens):
    configs = [("f32", "f32"), ("q4_0", "q4_0")]
    _, half = run(model, cells_for(tiny_model, configs), tokens)
    all_cells = cells_for(tiny_model, configs, score="all")
    _, every = run(model, all_cells, tokens)
    for c_half, c_all in zip(cells_for(tiny_model, configs), all_cells):
        h, a = half[c_half.cell_id], every[c_all.cell_id]
        assert a.status == records.OK and a.metrics["n_tokens"] == 2 * (N_CTX - 1)
        assert a.tokens["pos"].min() == 1 and a.tokens["pos"].max() == N_CTX - 1
        # asking for the first half's logits too changes no figure of the second half
        second = a.tokens["pos"] > N_CTX // 2
        np.testing.assert_array_equal(a.tokens["pos"][second], h.tokens["pos"])
        np.testing.assert_allclose(a.tokens["nll"][second], h.tokens["nll"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.tokens["kld"][second], h.tokens["kld"], rtol=1e-5, atol=1e-9)
    assert c_all.cell_id != c_half.cell_id  # the scoring is part of the cell's identity


def test_new_fields_at_their_defaults_keep_old_cell_ids():
    """Runs made before score/generation/fill existed keep their ids (and resume)."""
    cell = Cell(kind="pp", model_name="m", model_path="/m", model_sha256="s", type_k="f16",
                type_v="f16", n_prompt=512, repetitions=5)
    # the id this cell had before the fields were added (cells.py at commit 535e046)
    assert cell.cell_id == "3d2056dce20fda5d29c9"
    assert dataclasses.replace(cell, fill="corpus", cell_id="").cell_id != cell.cell_id


def test_generation_agreement_follows_the_baselines_own_greedy_path(model, tiny_model, tokens):
    configs = [("f32", "f32"), ("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
    cells = cells_for(tiny_model, configs, gen_tokens=16, gen_depths="16,64", gen_prompts=2)
    progress, out = run(model, cells, tokens)
    assert progress[-1] == (2 + 4, 2 + 4)  # 2 chunks, then 2 depths x 2 prompts
    base, f16, q8, q4 = (out[c.cell_id].metrics for c in cells)
    for m in (base, f16, q8, q4):
        assert m["gen_depth"] == [16, 16, 64, 64]
        assert all(0 <= d <= 16 for d in m["gen_first_diff"]) and all(0 <= e <= 1 for e in m["gen_equal"])
    assert base["gen_first_diff"] == [16] * 4 and base["gen_equal"] == [1.0] * 4
    # on the CPU backend with flash attention an f16 cache computes exactly as f32's
    assert f16["gen_first_diff"] == [16] * 4
    assert np.mean(q4["gen_equal"]) < np.mean(q8["gen_equal"])

    # independently: decode prompt + continuation in one batch on a fresh f32 context; each
    # generated token is the argmax of the logits before it (teacher forcing reproduces greedy)
    settings = llama_api.ContextSettings(type_k="f32", type_v="f32", n_ctx=N_CTX, n_batch=N_CTX,
                                         n_ubatch=64, flash_attn="on", n_threads=2)
    with llama_api.Context(model, settings) as ctx:
        for p in generation.prompts(cells[0], tokens, 2, model.info.add_bos, model.info.bos):
            cont = generation.greedy(ctx, p.tokens, 16)
            ctx.clear()
            seq = np.concatenate([p.tokens, cont])
            n_out = ctx.decode(seq, 0, output_from=len(p.tokens) - 1)
            rows = ctx.logits(n_out)
            np.testing.assert_array_equal(rows[:16].argmax(axis=1), cont)


def test_bit_identical_results_share_a_digest(model, tiny_model, tokens):
    configs = [("f32", "f32"), ("f16", "f16"), ("q8_0", "q8_0")]
    cells = cells_for(tiny_model, configs)
    _, out = run(model, cells, tokens)
    base, f16, q8 = (out[c.cell_id].metrics["tokens_digest"] for c in cells)
    assert base == f16 != q8 and len(q8) == 64


def test_agreement_figures():
    a = generation.Agreement()
    a.add(8, np.array([1, 2, 3, 4]), np.array([1, 2, 9, 4]))
    a.add(8, np.array([1, 2]), np.array([1, 2]))
    assert a.metrics() == {"gen_depth": [8, 8], "gen_first_diff": [2, 2], "gen_equal": [0.75, 1.0]}


def test_corpus_tokens_wrap_and_continue():
    src = CorpusTokens(np.arange(5))
    assert src.take(3).tolist() == [0, 1, 2]
    assert src.take(4).tolist() == [3, 4, 0, 1]
    assert src.take(12).tolist() == [2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3]


def test_a_corpus_fill_holds_the_corpus_text(model, tokens):
    """fill_depth with corpus tokens leaves the cache as decoding the corpus's first n_depth
    tokens (BOS first) would: the next logits are the same."""
    settings = llama_api.ContextSettings(type_k="f32", type_v="f32", n_ctx=256, n_batch=64,
                                         n_ubatch=64, flash_attn="on", n_threads=2)
    depth = 200
    with llama_api.Context(model, settings) as ctx:
        fill_depth(ctx, depth, 64, CorpusTokens(tokens), DepthStateCache(), ("k",))
        probe_token = int(tokens[depth])
        ctx.decode(np.array([probe_token], np.int32), depth)
        filled = ctx.logits(1)[0].copy()
        ctx.clear()
        direct = tokens[:depth].copy()
        if model.info.add_bos:
            direct[0] = model.info.bos
        for pos0 in range(0, depth, 64):
            ctx.decode(direct[pos0 : pos0 + 64], pos0)
        ctx.decode(np.array([probe_token], np.int32), depth)
        np.testing.assert_allclose(ctx.logits(1)[0], filled, rtol=1e-5, atol=1e-5)
        # and it is not what random tokens would leave
        ctx.clear()
        ctx.decode(np.random.default_rng(0).integers(0, model.info.n_vocab, 64).astype(np.int32), 0)
        ctx.decode(np.array([probe_token], np.int32), 64)
        assert not np.allclose(ctx.logits(1)[0], filled, rtol=1e-3, atol=1e-3)
