"""Tiny GGUF models that kvsweep writes itself, so demos and tests never download weights.

A model is fully described by its `ModelRecipe`: the same recipe gives the same bytes (fixed
seed, fixed write order), so every host of a fleet can make the file locally and the sha256
still matches. Files are cached under the kvsweep cache directory and made once.

Weights are random but scaled so that attention is sharp enough for K/V cache quantization to
show: with an f32 baseline, mean KL orders f16 < q8_0 < q4_0 clearly. Head size is 64 so
llama.cpp's Hadamard rotation of quantized K/V (`attn_rot_k/v`, on for head sizes divisible by
64) is exercised as on real models.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from kvsweep.model_recipe import ARCHITECTURES, ModelRecipe  # noqa: F401  (the recipe: kvsweep/model_recipe.py)
from kvsweep.paths import cache_dir


# A few hundred frequent English words, so ordinary text tokenizes into words as well as bytes.
_WORDS = """the of and to a in is that for it as was with be by on not he this are or his from at
which but have an they you were her she there been one all we their has would when if so no will
more can what about up out who into its some them other than then only time could these two may
first new like our over such also after most made well where years through very just any how
me my now being those people because even many between under while must same each cache model
token tokens memory context depth speed quality type types value values key keys layer layers
attention quantized quantization precision bits sweep host hosts machine machines result results
run runs table tables report reports figure figures perplexity divergence baseline generation
prompt batch thread threads device devices backend backends long short deep fast slow large small
""".split()


def vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a SentencePiece-style ("llama") vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, control, byte
    words = ["\u2581" + w for w in dict.fromkeys(_WORDS)]
    tokens += words
    types += [1] * len(words)
    if n_vocab:
        if n_vocab < len(tokens):
            raise ValueError(f"n_vocab must be 0 or at least {len(tokens)}")
        extra = n_vocab - len(tokens)
        tokens += [f"\u2581w{i}" for i in range(extra)]
        types += [1] * extra
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def generate_model(recipe: ModelRecipe, out_path: Path) -> Path:
    """Write the GGUF file for `recipe` to `out_path` (atomically) and return the path."""
    import gguf  # imported here: only hosts that make models need it

    if recipe.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {recipe.arch!r}; known: {', '.join(ARCHITECTURES)}")
    rng = np.random.default_rng(recipe.seed)
    tokens, scores, types = vocabulary(recipe.n_vocab)
    n_vocab, d, hd = len(tokens), recipe.n_embd, recipe.head_dim

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name, suffix=".tmp")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, recipe.arch)
        w.add_name(f"kvsweep-tiny-{recipe.arch}-{recipe.digest()}")
        w.add_context_length(recipe.context_length)
        w.add_embedding_length(d)
        w.add_block_count(recipe.n_layer)
        w.add_feed_forward_length(recipe.n_ff)
        w.add_head_count(recipe.n_head)
        w.add_head_count_kv(recipe.n_head_kv)
        w.add_rope_dimension_count(hd)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_file_type(1)  # mostly F16
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)

        def mat(name: str, rows: int, cols: int, scale: float) -> None:
            w.add_tensor(name, (rng.standard_normal((rows, cols)) * scale).astype(np.float16))

        def ones(name: str, n: int) -> None:
            w.add_tensor(name, np.ones(n, np.float32))

        mat("token_embd.weight", n_vocab, d, 1.0)
        if recipe.arch == "llama":
            _llama_layers(recipe, mat, ones)
        else:
            _qwen35_layers(w, recipe, rng, mat, ones)
        ones("output_norm.weight", d)
        mat("output.weight", n_vocab, d, 3 / np.sqrt(d))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def _llama_layers(recipe: ModelRecipe, mat, ones) -> None:
    d, hd, ff = recipe.n_embd, recipe.head_dim, recipe.n_ff
    for i in range(recipe.n_layer):
        ones(f"blk.{i}.attn_norm.weight", d)
        mat(f"blk.{i}.attn_q.weight", d, d, 2 / np.sqrt(d))
        mat(f"blk.{i}.attn_k.weight", recipe.n_head_kv * hd, d, 2 / np.sqrt(d))
        mat(f"blk.{i}.attn_v.weight", recipe.n_head_kv * hd, d, 1 / np.sqrt(d))
        mat(f"blk.{i}.attn_output.weight", d, d, 1 / np.sqrt(d))
        ones(f"blk.{i}.ffn_norm.weight", d)
        mat(f"blk.{i}.ffn_gate.weight", ff, d, 1 / np.sqrt(d))
        mat(f"blk.{i}.ffn_up.weight", ff, d, 1 / np.sqrt(d))
        mat(f"blk.{i}.ffn_down.weight", d, ff, 1 / np.sqrt(ff))


# qwen35's gated delta-net (linear attention) sizes for the tiny model: head size 32 for both
# keys and values, 2 key heads and 4 value heads, a 4-tap causal convolution.
_SSM_STATE, _SSM_GROUPS, _SSM_V_HEADS, _SSM_CONV = 32, 2, 4, 4


def _qwen35_layers(w, recipe: ModelRecipe, rng, mat, ones) -> None:
    """Qwen3.5-style hybrid (llama.cpp `qwen35`, src/models/qwen35.cpp): every
    full_attention_interval-th layer is gated full attention with a KV cache; the others are
    gated delta-net layers whose recurrent state has a constant size."""
    d, hd, ff = recipe.n_embd, recipe.head_dim, recipe.n_ff
    key_dim, value_dim = _SSM_STATE * _SSM_GROUPS, _SSM_STATE * _SSM_V_HEADS
    conv_dim = 2 * key_dim + value_dim
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_sections([hd // 4, hd // 8, hd // 8, 0])
    w.add_ssm_conv_kernel(_SSM_CONV)
    w.add_ssm_inner_size(value_dim)
    w.add_ssm_state_size(_SSM_STATE)
    w.add_ssm_time_step_rank(_SSM_V_HEADS)
    w.add_ssm_group_count(_SSM_GROUPS)
    w.add_full_attention_interval(recipe.full_attention_interval)
    for i in range(recipe.n_layer):
        ones(f"blk.{i}.attn_norm.weight", d)
        ones(f"blk.{i}.post_attention_norm.weight", d)
        if (i + 1) % recipe.full_attention_interval == 0:  # full attention: the KV cache
            mat(f"blk.{i}.attn_q.weight", 2 * recipe.n_head * hd, d, 2 / np.sqrt(d))  # query + gate
            mat(f"blk.{i}.attn_k.weight", recipe.n_head_kv * hd, d, 2 / np.sqrt(d))
            mat(f"blk.{i}.attn_v.weight", recipe.n_head_kv * hd, d, 1 / np.sqrt(d))
            mat(f"blk.{i}.attn_output.weight", d, recipe.n_head * hd, 1 / np.sqrt(d))
            ones(f"blk.{i}.attn_q_norm.weight", hd)
            ones(f"blk.{i}.attn_k_norm.weight", hd)
        else:  # gated delta net: recurrent state, no KV cache
            mat(f"blk.{i}.attn_qkv.weight", conv_dim, d, 1 / np.sqrt(d))
            mat(f"blk.{i}.attn_gate.weight", value_dim, d, 1 / np.sqrt(d))
            # llama.cpp's ssm_conv kernel reads its weight as float32 (converters keep it so)
            w.add_tensor(f"blk.{i}.ssm_conv1d.weight",
                         (rng.standard_normal((conv_dim, _SSM_CONV)) * 0.5).astype(np.float32))
            w.add_tensor(f"blk.{i}.ssm_dt.bias", np.zeros(_SSM_V_HEADS, np.float32))
            w.add_tensor(f"blk.{i}.ssm_a", -np.ones(_SSM_V_HEADS, np.float32))
            mat(f"blk.{i}.ssm_beta.weight", _SSM_V_HEADS, d, 1 / np.sqrt(d))
            mat(f"blk.{i}.ssm_alpha.weight", _SSM_V_HEADS, d, 1 / np.sqrt(d))
            ones(f"blk.{i}.ssm_norm.weight", _SSM_STATE)
            mat(f"blk.{i}.ssm_out.weight", d, value_dim, 1 / np.sqrt(value_dim))
        mat(f"blk.{i}.ffn_gate.weight", ff, d, 1 / np.sqrt(d))
        mat(f"blk.{i}.ffn_up.weight", ff, d, 1 / np.sqrt(d))
        mat(f"blk.{i}.ffn_down.weight", d, ff, 1 / np.sqrt(ff))


def cached_model(recipe: ModelRecipe) -> Path:
    """Path of the model file for `recipe`, generating it the first time."""
    path = cache_dir() / "models" / f"tiny-{recipe.arch}-{recipe.digest()}.gguf"
    if not path.exists():
        generate_model(recipe, path)
    return path
