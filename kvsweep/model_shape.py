"""A model's shape from its GGUF metadata, and the KV cache bytes that follow from it.

Shared by the driver (the memory planner, orchestrator/memory_plan.py) and the workers (the
check that a context's KV cache is the one the cell asked for, workers/config_check.py).

KV cache (exact): llama.cpp pads the context to 256 cells; each layer that has a KV cache
stores n_head_kv * head_dim values per cell for K and for V at the cache type's size (block
types; TurboQuant pads each head to 128 values). Hybrid models (Qwen3.5/3.6 `qwen35`/`qwen35moe`,
Qwen3 Next) keep a KV cache only in their full-attention layers, every
full_attention_interval-th; their other layers keep a constant-size recurrent state.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from kvsweep import cache_types

KV_PAD = 256  # llama.cpp pads the KV cache to a multiple of 256 cells


@dataclass(frozen=True)
class ModelShape:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_k: int
    head_v: int
    n_ff: int
    n_vocab: int
    kv_layers: int  # layers that keep a KV cache
    recurrent_bytes: int  # constant recurrent state per sequence (hybrid models)
    weights_bytes: int
    input_bytes: int  # token embeddings (stay in host memory on GPU backends)
    q_gate: bool = False  # qwen35's query projection also produces a gate (2x width)
    n_ctx_train: int = 0  # {arch}.context_length: the context the model was trained for
    # every KV layer stores n_head_kv x head_dim values per cell for K and V (no per-layer head
    # counts, no sliding-window cache, no MLA compression): the KV size formula is exact
    uniform_kv: bool = True


@lru_cache(maxsize=64)
def read_shape(path: str) -> ModelShape:
    """The parts of a GGUF's metadata that decide its memory use."""
    from kvsweep.gguf_header import read_header

    header = read_header(path)  # not gguf.GGUFReader: 28 s for a 248K-token vocabulary
    get = header.get

    arch = get("general.architecture")
    a = lambda key, default=None: get(f"{arch}.{key}", default)  # noqa: E731
    n_layer, n_embd = int(a("block_count")), int(a("embedding_length"))
    n_head = _scalar(a("attention.head_count"))
    n_head_kv = _scalar(a("attention.head_count_kv", n_head))
    head_k = int(a("attention.key_length", n_embd // n_head))
    head_v = int(a("attention.value_length", n_embd // n_head))
    n_ff = _scalar(a("feed_forward_length", 4 * n_embd))
    n_vocab = header.array_length("tokenizer.ggml.tokens")
    weights = sum(t.n_bytes for t in header.tensors)
    inputs = sum(t.n_bytes for t in header.tensors if t.name == "token_embd.weight")

    kv_layers, recurrent = n_layer, 0
    interval = a("full_attention_interval")
    if interval is not None or a("ssm.state_size") is not None:
        interval = int(interval or 4)
        kv_layers = sum(1 for i in range(n_layer) if (i + 1) % interval == 0)
        d_conv, d_state = int(a("ssm.conv_kernel", 4)), int(a("ssm.state_size", 0))
        groups, v_heads = int(a("ssm.group_count", 1)), int(a("ssm.time_step_rank", 1))
        conv_dim = 2 * d_state * groups + d_state * v_heads
        per_layer = 4 * ((d_conv - 1) * conv_dim + d_state * d_state * v_heads)
        recurrent = (n_layer - kv_layers) * per_layer
    return ModelShape(
        arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_k=head_k, head_v=head_v, n_ff=n_ff, n_vocab=n_vocab, kv_layers=kv_layers,
        recurrent_bytes=recurrent, weights_bytes=weights, input_bytes=inputs,
        q_gate=arch in ("qwen35", "qwen35moe", "qwen3next"),
        n_ctx_train=int(a("context_length", 0) or 0),
        uniform_kv=not isinstance(a("attention.head_count_kv"), list)
        and a("attention.sliding_window") is None and a("attention.kv_lora_rank") is None,
    )


def _scalar(value) -> int:
    """Per-layer arrays (e.g. head_count_kv) become their maximum."""
    if isinstance(value, list):
        return int(max(value))
    return int(value)


def padded(n_ctx: int) -> int:
    return -(-n_ctx // KV_PAD) * KV_PAD


def cell_bytes(shape: ModelShape, type_k: str, type_v: str) -> tuple[int, int]:
    """(K, V) bytes of one cache cell of one layer (heads padded as the type pads them)."""
    k = cache_types.get(type_k).row_bytes(shape.n_head_kv, shape.head_k)
    v = cache_types.get(type_v).row_bytes(shape.n_head_kv, shape.head_v)
    return k, v


def kv_bytes(shape: ModelShape, type_k: str, type_v: str, n_ctx: int) -> int:
    k, v = cell_bytes(shape, type_k, type_v)
    return shape.kv_layers * padded(n_ctx) * (k + v)
