"""How much memory a cell takes: predicted from GGUF metadata, before anything runs.

In the core because both sides use it: the driver places cells by it
(orchestrator/memory_plan.py), and a worker bisecting a context ceiling checks each probe
against it before it allocates anything (workers/ceiling.py).

    total = weights + KV cache + recurrent state + output buffer + compute buffer

- weights: the tensors' bytes as stored in the file (what llama.cpp loads onto the device;
  on a GPU the token embeddings stay in host memory, as llama.cpp keeps the input layer there).
- KV cache (exact, kvsweep/model_shape.py): llama.cpp pads the context to 256 cells; each
  layer that has a KV cache stores n_head_kv * head_dim values per cell for K and for V at the
  cache type's size (kvsweep/cache_types.py; TurboQuant pads heads to 128 values). Hybrid
  models keep a KV cache only in their full-attention layers.
- recurrent state (exact): the other layers of a hybrid keep a constant-size f32 state per
  sequence: a convolution window (d_conv - 1) x conv_dim and an SSM state d_state^2 x heads.
- output buffer: logits rows the context may return (1 for speed tests; one decode piece for
  quality) x n_vocab x 4 bytes.
- compute buffer (an estimate): llama.cpp reserves the largest phase of its graph for a full
  ubatch: the output projection (n_ubatch x n_vocab x 4), attention (the f16 mask, and without
  flash attention the n_ubatch x n_ctx x n_head f32 score matrix), or the feed-forward block.
  Calibrated on generated models against what llama.cpp reports (tests/test_memory_plan.py
  states the error it allows).
A quality work unit holds the baseline context and every compared context at once
(`predict_group`: the scheduler packs compared caches into units that fit the chosen worker);
a quality cell alone is the least of that, its context and the baseline's; a speed cell has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsweep.cells import QUALITY, Cell
from kvsweep.model_shape import ModelShape, kv_bytes, padded

HEADROOM = 0.05  # a host is full at 95% of its memory: drivers and fragmentation take the rest


def compute_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int, flash_attn: bool,
                  f32_cache: bool = False) -> int:
    """llama.cpp's compute buffer: the peak of its graph's phases for one full ubatch."""
    ub, ctx = n_ubatch, padded(n_ctx)
    base = ub * shape.n_embd * 4  # the residual stream
    mask = ub * ctx * 2  # the f16 attention mask, an input live through the graph
    q_width = shape.n_head * shape.head_k * (2 if shape.q_gate else 1)
    qkv = ub * (q_width + shape.n_head_kv * (shape.head_k + shape.head_v) + shape.n_head * shape.head_v) * 4
    ffn = ub * shape.n_ff * 4 * 3
    output = base + ub * shape.n_vocab * 4  # the logits of a full ubatch
    if flash_attn:
        # an f32 cache is converted to f16 for the kernel, one layer's K and V at a time
        convert = 2 * ctx * shape.n_head_kv * shape.head_k * 2 if f32_cache else 0
        return max(base + mask + qkv + max(ffn, convert), output)
    scores = ub * ctx * shape.n_head * 4  # KQ, f32
    return max(base + 2 * mask + scores + qkv, base + mask + qkv + ffn, output)


@dataclass
class Prediction:
    weights: int
    kv: int
    recurrent: int
    output: int
    compute: int
    contexts: int = 1
    input_bytes: int = 0  # part of the weights a GPU backend keeps in host memory

    @property
    def total(self) -> int:
        """Bytes on a CPU host (where everything lives in RAM)."""
        return self.weights + self.contexts * (self.recurrent + self.output + self.compute) + self.kv

    def on_device(self, backend: str) -> int:
        """Bytes on the device of a host with this backend."""
        return self.total - (self.input_bytes if backend not in ("", "CPU") else 0)


def _is_own(cell: Cell) -> bool:
    """A quality cell of the baseline configuration itself: scored from the baseline context."""
    return cell.type_k == cell.type_v == cell.baseline


def predict_group(cells: list[Cell], shape: ModelShape) -> Prediction:
    """A quality work unit as it runs: the weights, the baseline context and every compared
    context alive at once (quality.py keeps them side by side), each with its KV cache, its
    logits buffer (one decode piece of n_vocab floats) and its compute buffer."""
    head = cells[0]
    piece = min(head.n_batch, head.n_ctx)
    compared = [c for c in cells if not _is_own(c)]
    kv = kv_bytes(shape, head.baseline, head.baseline, head.n_ctx)
    kv += sum(kv_bytes(shape, c.type_k, c.type_v, c.n_ctx) for c in compared)
    f32 = any("f32" in (c.type_k, c.type_v, c.baseline) for c in cells)
    return Prediction(shape.weights_bytes, kv, shape.recurrent_bytes, piece * shape.n_vocab * 4,
                      compute_bytes(shape, head.n_ctx, min(head.n_ubatch, piece), head.flash_attn != "off", f32),
                      1 + len(compared), shape.input_bytes)


def predict(cell: Cell, shape: ModelShape) -> Prediction:
    """One cell: a quality cell with its baseline (the least its unit can be), a speed cell's
    one context."""
    if cell.kind == QUALITY:
        return predict_group([cell], shape)
    fa = cell.flash_attn != "off"
    n_ctx = cell.n_prompt + cell.n_gen + cell.n_depth
    return Prediction(shape.weights_bytes, kv_bytes(shape, cell.type_k, cell.type_v, n_ctx), shape.recurrent_bytes,
                      shape.n_vocab * 4,
                      compute_bytes(shape, n_ctx, cell.n_ubatch, fa, "f32" in (cell.type_k, cell.type_v)),
                      input_bytes=shape.input_bytes)


def fits(prediction: Prediction, memory_total: int, backend: str = "CPU") -> bool:
    return prediction.on_device(backend) <= memory_total * (1 - HEADROOM)
