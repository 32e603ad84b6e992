"""Did llama.cpp make the KV cache the cell asked for? Checked on every context it makes.

A setting that does not take effect leaves no error: a published sweep had its asymmetric K/V
results equal to the symmetric ones to six decimals, and nothing noticed. So after each context
is made, what llama.cpp reports about its KV cache is compared with the cell:

- the K and V types of each cache's summary line ("K (q8_0): ... MiB, V (q4_0): ... MiB"):
  the TurboQuant fork upgrades a turbo K to q8_0 on its own for GQA ratios >= 6
  (TURBO_AUTO_ASYMMETRIC);
- what llama.cpp says it does otherwise than asked: the fork's layer-adaptive modes store some
  layers' V (or K) in another type, decided once per process (TURBO_LAYER_ADAPTIVE);
- the sizes of K and V against what the types need for this model (kvsweep/model_shape.py, the
  heads padded as the type pads them), when the model's KV layout is uniform and there is one
  cache; a size off by more than 1% means some layers hold another type;
- flash attention on or off as asked (the fork turns it on for turbo types whatever was asked);
- the device of each layer's KV cache: with every layer offloaded (n_gpu_layers at least the
  model's layer count) on a host whose primary backend is a GPU, no layer's cache may be on the
  CPU (a build without the GPU backend, or offload_kqv off, would put it there).

Any difference flags the cell `config-not-applied` (reports leave it out of recommendations)
and is written out in the attempt's `config_check`.
"""

from __future__ import annotations

from kvsweep import cache_types
from kvsweep.model_shape import ModelShape, cell_bytes
from kvsweep.workers.llama_api import ContextFacts

CONFIG_NOT_APPLIED = "config-not-applied"
MIB = 2**20


def config_problems(facts: ContextFacts, type_k: str, type_v: str, flash_attn: str,
                    shape: ModelShape | None, gpu_backend: str = "") -> list[str]:
    """What differs between the context llama.cpp made and the one the cell asked for.
    `gpu_backend`: the GPU backend every KV layer should be on ('' = no expectation)."""
    problems = []
    on_cpu = [d for d in facts.kv_devices if d.upper().startswith("CPU")]
    if gpu_backend and on_cpu:
        problems.append(f"{len(on_cpu)} of {len(facts.kv_devices)} layers keep their KV cache on the CPU; "
                        f"the cell offloads every layer to {gpu_backend}")
    for s in facts.kv_summaries:
        if s.type_k != type_k:
            problems.append(f"the K cache is {s.type_k}, the cell asked for {type_k}")
        if s.type_v != type_v:
            problems.append(f"the V cache is {s.type_v}, the cell asked for {type_v}")
    problems += [f"llama.cpp said: {note}" for note in facts.kv_notes]
    if (not problems and shape is not None and shape.uniform_kv and len(facts.kv_summaries) == 1
            and cache_types.lookup(type_k) and cache_types.lookup(type_v)):
        s = facts.kv_summaries[0]
        k_cell, v_cell = cell_bytes(shape, type_k, type_v)
        for side, name, logged, per_cell in (("K", type_k, s.k_mib, k_cell), ("V", type_v, s.v_mib, v_cell)):
            want = s.layers * s.cells * per_cell / MIB
            # the log prints MiB to 2 decimals
            if abs(logged - want) > 0.005 + 0.01 * want:
                problems.append(f"the {side} cache holds {logged:.2f} MiB; {name} needs {want:.2f} MiB "
                                f"for {s.layers} layers x {s.cells} cells")
    if flash_attn in ("on", "off") and facts.flash_attn_enabled is not None \
            and facts.flash_attn_enabled != (flash_attn == "on"):
        problems.append(f"flash attention is {'on' if facts.flash_attn_enabled else 'off'}, "
                        f"the cell asked for {flash_attn}")
    return problems
