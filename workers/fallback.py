"""Detect K/V pairs whose attention silently ran on the CPU of a GPU host.

On CUDA, only some K/V type pairs have flash-attention kernels unless llama.cpp was built with
GGML_CUDA_FA_ALL_QUANTS=ON; for the others ggml's scheduler places FLASH_ATTN_EXT on the CPU,
which works, gives correct numbers, and runs many times slower. Nothing fails, so a sweep has
to look for it. The signals, all from what llama.cpp itself reports when it makes a context:

1. where each layer's KV cache lives ("llama_kv_cache: layer 0: dev = CUDA0"): only a context
   with KV on a non-CPU device can fall back at all;
2. graph splits ("sched_reserve: graph: nodes = N, splits = S"): every change of backend in the
   graph is a split, so an attention op moved to the CPU adds splits. The reference is an
   f16/f16 context of the same shape (n_batch, n_ubatch, flash attention) on the same worker,
   the pair every backend supports;
3. with flash_attn "auto", llama.cpp's own probe: "layer N is assigned to device CUDA0 but
   Flash Attention is assigned to device CPU (usually due to missing support)", after which
   it turns flash attention off ("Flash Attention not supported, set to disabled").

A cell is flagged `cpu-fallback` on signal 3, or on 1 and 2 together; `flash-attn-disabled`
when auto turned flash attention off (the cell ran, without the kernel the user asked about).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsweep.workers import llama_api

CPU_FALLBACK = "cpu-fallback"
FLASH_ATTN_DISABLED = "flash-attn-disabled"
REFERENCE_PAIR = ("f16", "f16")


def fallback_flags(facts: llama_api.ContextFacts, reference_splits: int | None) -> list[str]:
    """Flags for a context from its facts and the splits of an f16/f16 context of its shape
    (None when no reference was made, e.g. on a CPU-only context)."""
    flags = []
    if facts.fa_device_mismatch and facts.fa_device_mismatch[1].upper().startswith("CPU"):
        flags.append(CPU_FALLBACK)
    elif (
        facts.offloaded
        and reference_splits is not None
        and facts.graph_splits is not None
        and facts.graph_splits > reference_splits
    ):
        flags.append(CPU_FALLBACK)
    if facts.flash_attn_auto_disabled:
        flags.append(FLASH_ATTN_DISABLED)
    return flags


@dataclass
class FallbackCheck:
    """Makes (once per shape) the f16/f16 reference context and flags contexts against it.

    Only contexts with KV on a GPU are checked, so CPU hosts never pay for the reference.
    The reference uses a small n_ctx: splits depend on the graph's ops and where they run,
    not on the cache length.
    """

    reference_n_ctx: int = 256

    def __post_init__(self):
        self._splits: dict[tuple, int | None] = {}

    def reference_splits(self, model: llama_api.Model, s: llama_api.ContextSettings) -> int | None:
        key = (model.path, model.n_gpu_layers, s.n_batch, s.n_ubatch, s.flash_attn, s.n_seq_max)
        if key not in self._splits:
            n_ctx = min(s.n_ctx, max(self.reference_n_ctx, s.n_batch))
            ref = llama_api.ContextSettings(
                *REFERENCE_PAIR, n_ctx=n_ctx, n_batch=s.n_batch, n_ubatch=s.n_ubatch,
                flash_attn=s.flash_attn, n_threads=s.n_threads, n_seq_max=s.n_seq_max,
            )
            try:
                with llama_api.Context(model, ref) as ctx:
                    self._splits[key] = ctx.facts.graph_splits
            except llama_api.LlamaError:
                self._splits[key] = None  # no reference: no splits verdict, other signals stand
        return self._splits[key]

    def flags(self, ctx: llama_api.Context) -> tuple[list[str], int | None]:
        """(flags, reference splits) for a live context."""
        if not ctx.facts.offloaded and not ctx.facts.fa_device_mismatch:
            return fallback_flags(ctx.facts, None), None
        if (ctx.settings.type_k, ctx.settings.type_v) == REFERENCE_PAIR:
            ref = ctx.facts.graph_splits
        else:
            ref = self.reference_splits(ctx.model, ctx.settings)
        return fallback_flags(ctx.facts, ref), ref


_shared: FallbackCheck | None = None


def shared_check() -> FallbackCheck:
    """One per worker process, so each shape's reference context is made once per worker."""
    global _shared
    if _shared is None:
        _shared = FallbackCheck()
    return _shared


def _expected_gpu(ctx: llama_api.Context) -> str:
    """The GPU backend a fully offloaded context's KV cache belongs on ('' when none is expected)."""
    from kvsweep.workers import probe

    shape = ctx.model.shape
    n_layer = shape.n_layer if shape is not None else 999
    primary = probe.probe_host().primary_backend
    return primary if primary != "CPU" and ctx.model.n_gpu_layers >= n_layer else ""


def context_columns(ctx: llama_api.Context, check: FallbackCheck, cell=None) -> tuple[dict, list[str]]:
    """Attempt columns describing how a context ran, and its flags: fallback, and whether the
    KV cache is the one `cell` asked for (workers/config_check.py; default: the context's own
    settings)."""
    from kvsweep.workers import ggml_types
    from kvsweep.workers.config_check import CONFIG_NOT_APPLIED, config_problems

    facts = ctx.facts
    flags, ref = check.flags(ctx)
    type_k, type_v = (cell.type_k, cell.type_v) if cell is not None else (ctx.settings.type_k, ctx.settings.type_v)
    flash_attn = cell.flash_attn if cell is not None else ctx.settings.flash_attn
    problems = config_problems(facts, type_k, type_v, flash_attn, ctx.model.shape, _expected_gpu(ctx))
    if problems:
        flags.append(CONFIG_NOT_APPLIED)
    types = ggml_types.build_types()
    columns = {
        "kv_bytes": facts.kv_bytes,
        "flash_attn_enabled": facts.flash_attn_enabled and not facts.flash_attn_auto_disabled,
        "attn_rot_k": facts.attn_rot_k,
        "attn_rot_v": facts.attn_rot_v,
        "n_threads": ctx.settings.n_threads,
        "n_batch": ctx.settings.n_batch,
        "n_ubatch": ctx.settings.n_ubatch,
        "graph_nodes": facts.graph_nodes,
        "graph_splits": facts.graph_splits,
        "graph_splits_tg": facts.graph_splits_tg,
        "graph_splits_ref": ref,
        "kv_devices": ",".join(dict.fromkeys(facts.kv_devices)),
        "kv_type_k": ",".join(dict.fromkeys(s.type_k for s in facts.kv_summaries)),
        "kv_type_v": ",".join(dict.fromkeys(s.type_v for s in facts.kv_summaries)),
        "bits_k": types[type_k].bits_per_value if type_k in types else None,
        "bits_v": types[type_v].bits_per_value if type_v in types else None,
        "config_check": "; ".join(problems),
    }
    return columns, flags
