"""The memory planner against the buffer sizes llama.cpp itself reports for real contexts."""

from __future__ import annotations

import itertools
import re
from types import SimpleNamespace

import pytest

from kvsweep.cells import Cell
from kvsweep.orchestrator.memory_plan import (
    compute_bytes, fits, fits_nowhere, kv_bytes, padded, predict, read_shape,
)
from kvsweep.workers.generated_models import ModelRecipe, cached_model
from kvsweep.workers.llama_api import Context, ContextSettings, LogCapture, Model

MIB = 1024 * 1024
RECIPES = {
    "llama": ModelRecipe(),
    "llama-wide": ModelRecipe(n_embd=512, n_head=8, n_ff=2048),
    "llama-32k-vocab": ModelRecipe(n_vocab=32000),
    "qwen35-hybrid": ModelRecipe(arch="qwen35", n_layer=8),
}
CASES = [  # (K, V, n_ctx, flash attention, n_ubatch)
    ("f16", "f16", 4096, "on", 512), ("q8_0", "q4_0", 3000, "on", 512), ("q5_1", "iq4_nl", 16384, "on", 128),
    ("f32", "f32", 8192, "on", 512), ("f16", "f16", 2048, "off", 512), ("q8_0", "f16", 8192, "off", 128),
]


def reported(lines: list[str]) -> dict[str, float]:
    """llama.cpp's 'X buffer size = N MiB' lines, in bytes (2 decimals of MiB: ~0.5% at 1 MiB)."""
    out: dict[str, float] = {}
    for line in lines:
        m = re.search(r"(KV|RS|compute) buffer size =\s*([\d.]+) MiB", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2)) * MIB
    return out


@pytest.fixture(scope="module", params=list(RECIPES))
def model(request):
    path = str(cached_model(RECIPES[request.param]))
    m = Model(path)
    yield request.param, path, m
    m.close()


def test_predictions_match_what_llama_cpp_allocates(model):
    name, path, m = model
    shape = read_shape(path)
    log = LogCapture.install()
    for k, v, n_ctx, fa, ub in CASES:
        mark = log.mark()
        ctx = Context(m, ContextSettings(k, v, n_ctx, 2048, ub, fa, 2))
        got = reported(log.since(mark))
        ctx.close()
        what = f"{name} K={k} V={v} n_ctx={n_ctx} fa={fa} ubatch={ub}"
        # the KV cache and the recurrent state are exact (up to the log's rounding)
        assert kv_bytes(shape, k, v, n_ctx) == pytest.approx(got["KV"], rel=0.02), what
        if "RS" in got:
            assert shape.recurrent_bytes == pytest.approx(got["RS"], rel=0.02), what
        # the compute buffer is an estimate: within 12% on every calibration case (5% but for
        # the hybrid), and the context's whole prediction, which decides fits, within 10%
        compute = compute_bytes(shape, n_ctx, ub, fa == "on", "f32" in (k, v))
        assert compute == pytest.approx(got["compute"], rel=0.12), what
        total = kv_bytes(shape, k, v, n_ctx) + shape.recurrent_bytes + compute
        assert total == pytest.approx(got["KV"] + got.get("RS", 0) + got["compute"], rel=0.10), what


def test_hybrid_keeps_kv_only_in_full_attention_layers():
    shape = read_shape(str(cached_model(RECIPES["qwen35-hybrid"])))
    dense = read_shape(str(cached_model(RECIPES["llama"])))
    assert shape.kv_layers == 2 and shape.n_layer == 8  # every 4th layer
    assert dense.kv_layers == dense.n_layer and dense.recurrent_bytes == 0
    assert shape.recurrent_bytes > 0
    # the recurrent state does not grow with context; the KV cache does, linearly
    assert kv_bytes(shape, "f16", "f16", 8192) == 2 * kv_bytes(shape, "f16", "f16", 4096)


def test_cache_types_scale_by_bits_per_value():
    shape = read_shape(str(cached_model(RECIPES["llama"])))
    f16 = kv_bytes(shape, "f16", "f16", 4096)
    assert kv_bytes(shape, "q8_0", "q8_0", 4096) == f16 * 8.5 // 16
    assert kv_bytes(shape, "q4_0", "q4_0", 4096) == f16 * 4.5 // 16
    assert kv_bytes(shape, "f16", "f16", 3000) == kv_bytes(shape, "f16", "f16", 3072) == f16 * 3 // 4
    assert padded(1) == 256 and padded(256) == 256 and padded(257) == 512


def cell(**kw) -> Cell:
    base = dict(kind="tg", model_name="m", model_path=str(cached_model(RECIPES["llama"])),
                model_sha256="x" * 64, type_k="f16", type_v="f16", n_gen=32, n_depth=0,
                repetitions=1, host_class="a")
    return Cell(**{**base, **kw})


def test_fits_nowhere_only_when_every_eligible_host_is_too_small():
    deep = cell(n_depth=1 << 20)  # 1M tokens of f16 KV: ~2 GiB on the tiny model
    shallow = cell(n_depth=0)
    shape = read_shape(deep.model_path)
    preds = {c.cell_id: predict(c, shape) for c in (deep, shallow)}
    assert preds[deep.cell_id].total > 2**30 > preds[shallow.cell_id].total
    small = SimpleNamespace(host_class="a", backend="CPU", memory_total=512 * MIB)
    big = SimpleNamespace(host_class="a", backend="CPU", memory_total=8 * 2**30)
    other_class = SimpleNamespace(host_class="b", backend="CPU", memory_total=64 * 2**30)
    assert fits_nowhere([deep, shallow], preds, [small, other_class]) == [deep]
    assert fits_nowhere([deep, shallow], preds, [small, big]) == []
    assert fits(preds[shallow.cell_id], small.memory_total)


def test_gpu_hosts_keep_the_input_layer_in_host_memory():
    shape = read_shape(str(cached_model(RECIPES["llama-32k-vocab"])))
    pred = predict(cell(model_path=str(cached_model(RECIPES["llama-32k-vocab"]))), shape)
    assert pred.on_device("CUDA") == pred.total - shape.input_bytes
    assert pred.on_device("CPU") == pred.total
    assert shape.input_bytes == 32000 * 256 * 2  # token_embd, f16


@pytest.mark.parametrize("k,v", list(itertools.product(["f16", "q4_0"], ["f16", "q8_0"])))
def test_quality_cells_hold_two_contexts(k, v):
    path = str(cached_model(RECIPES["llama"]))
    shape = read_shape(path)
    q = Cell(kind="quality", model_name="m", model_path=path, model_sha256="x" * 64, type_k=k,
             type_v=v, n_ctx=4096, baseline="f32", n_batch=512, n_ubatch=512)
    pred = predict(q, shape)
    assert pred.kv == kv_bytes(shape, k, v, 4096) + kv_bytes(shape, "f32", "f32", 4096)
    assert pred.contexts == 2


def test_turbo_types_pad_each_head_to_128_values():
    """TurboQuant stores 128-value blocks and pads a head_dim 64 model's heads to 128: twice the
    bytes of its nominal bits (the fork logs "turbo zero-padding K head_dim 64 -> 128"; the
    sizes it then reports match this, checked on every context by workers/config_check.py)."""
    shape = read_shape(str(cached_model(ModelRecipe())))  # head_dim 64, 2 KV heads, 4 layers
    assert shape.head_k == 64 and shape.n_head_kv == 2
    cells = padded(256)
    nominal = {"turbo2": 2.125, "turbo3": 3.125, "turbo4": 4.25}
    for name, bits in nominal.items():
        per_layer = 2 * cells * (2 * 128 * bits / 8)  # K and V, two heads padded to 128 values
        assert kv_bytes(shape, name, name, 256) == shape.kv_layers * per_layer
    # a mainline type is not padded: q8_0 at 8.5 bits stores exactly 64 values a head
    assert kv_bytes(shape, "q8_0", "q8_0", 256) == shape.kv_layers * 2 * cells * 2 * 64 * 8.5 / 8


def test_a_type_known_only_from_a_build_is_described_by_it():
    from kvsweep import cache_types

    t = cache_types.from_build("xq3", block_size=64, type_size=26)
    assert t.bits_per_value == 3.25 and t.quantized and t.origin == "build"
    assert cache_types.lookup("xq3") is None
    cache_types.learn(t)
    assert cache_types.get("xq3") is t


@pytest.mark.parametrize("recipe", [dict(), dict(arch="qwen35"), dict(n_vocab=5000)])
def test_the_fast_header_reader_agrees_with_the_gguf_package(recipe):
    """kvsweep/gguf_header.py (skips long arrays) reads what gguf.GGUFReader reads."""
    import gguf

    from kvsweep.gguf_header import ArrayLength, read_header
    from kvsweep.workers.generated_models import ModelRecipe, cached_model

    path = str(cached_model(ModelRecipe(**recipe)))
    ours, theirs = read_header(path), gguf.GGUFReader(path)
    for key, f in theirs.fields.items():
        if key.startswith("GGUF."):
            continue  # the reader's own pseudo-fields (version, counts)
        got = ours.fields[key]
        if isinstance(got, ArrayLength):
            assert got.length == len(f.data) > 4096, key
        else:
            assert got == f.contents(), key
    assert [(t.name, t.n_bytes, t.offset) for t in ours.tensors] == \
        [(t.name, int(t.n_bytes), int(t.data_offset) - theirs.data_offset) for t in theirs.tensors]
    assert ours.array_length("tokenizer.ggml.tokens") == len(theirs.get_field("tokenizer.ggml.tokens").data)
