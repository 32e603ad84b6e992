"""K/V cache types, by name: what kvsweep knows of their storage, and which builds have them.

Names are the identity everywhere (matrix files, cell ids, Parquet, reports). Which names exist
and which GGML enum number each has depends on the llama.cpp build: forks reuse numbers
(TurboQuant's turbo2 is 42, mainline's q2_0 is 42 too), so a worker looks its own build's
number up by name at the moment it makes a context (workers/ggml_types.py) and the driver
never handles one. What a build accepts as a K or V cache is checked for real on each host
(workers/capabilities.py); the matrix may name any type some host of the fleet has.

The catalogue below holds the storage facts the memory planner and the report's bits axis
need for the types users sweep (llama.cpp's `kv_cache_types` and the TurboQuant fork's);
another fork's type is described from its build (block size and bytes per block), see
`from_build`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAINLINE = "mainline"
TURBOQUANT = "turboquant"  # https://github.com/TheTom/llama-cpp-turboquant (docs/forks.md)


@dataclass(frozen=True)
class CacheType:
    name: str
    bits_per_value: float  # storage per value, block scales included
    block_size: int  # values per block; a cache row is a whole number of blocks
    quantized: bool  # a quantized V cache needs flash attention
    # the cache pads each head's row to a multiple of this many values (TurboQuant: its
    # Walsh-Hadamard groups are 128 wide, so a head_dim 64 model stores twice its bytes)
    pad_head_to: int = 0
    origin: str = MAINLINE  # the llama.cpp that has it: mainline, or the fork that adds it

    def row_bytes(self, n_heads: int, head_dim: int) -> int:
        """Bytes of one cache cell of one layer: n_heads rows of head_dim values (padded)."""
        if self.pad_head_to and head_dim % self.pad_head_to:
            head_dim = -(-head_dim // self.pad_head_to) * self.pad_head_to
        return int(n_heads * head_dim * self.bits_per_value / 8)


def _q(name: str, bits: float, block: int = 32, **kw) -> CacheType:
    return CacheType(name, bits, block, True, **kw)


CATALOGUE: dict[str, CacheType] = {
    t.name: t
    for t in (
        # mainline llama.cpp's accepted K/V cache types (common/arg.cpp `kv_cache_types`)
        CacheType("f32", 32.0, 1, False),
        CacheType("f16", 16.0, 1, False),
        CacheType("bf16", 16.0, 1, False),
        _q("q8_0", 8.5),
        _q("q5_1", 6.0),
        _q("q5_0", 5.5),
        _q("q4_1", 5.0),
        _q("q4_0", 4.5),
        _q("iq4_nl", 4.5),
        # the TurboQuant fork (ggml/src/ggml-common.h: block_turbo{2,3,4}_0, 128 values a block)
        _q("turbo4", 4.25, 128, pad_head_to=128, origin=TURBOQUANT),
        _q("turbo3", 3.125, 128, pad_head_to=128, origin=TURBOQUANT),
        _q("turbo2", 2.125, 128, pad_head_to=128, origin=TURBOQUANT),
    )
}

# Mainline's nine, in llama.cpp's order: what a mainline build is expected to accept.
MAINLINE_TYPES = tuple(n for n, t in CATALOGUE.items() if t.origin == MAINLINE)

# Types a baseline (the reference cache for KL divergence) may use: unquantized only.
BASELINE_TYPES = ("f16", "bf16", "f32")

# GGML types that are weight formats, never K/V caches: a build's other names (a fork's
# additions) are candidates the capability check tries for real.
WEIGHT_ONLY = frozenset({
    "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs",
    "iq1_s", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64", "iq1_m", "tq1_0",
    "tq2_0", "mxfp4", "nvfp4", "q1_0", "q2_0",
})

NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# What a build adds beyond the catalogue, learned from the workers' builds during a sweep (the
# driver's memory planner needs bits per value for a fork's type it has no entry for).
_learned: dict[str, CacheType] = {}


def from_build(name: str, block_size: int, type_size: int) -> CacheType:
    """A type known only from a build: its block size and bytes per block (ggml_blck_size,
    ggml_type_size)."""
    return CacheType(name, 8.0 * type_size / block_size, block_size, name not in ("f32", "f16", "bf16"),
                     origin="build")


def learn(cache_type: CacheType) -> None:
    if cache_type.name not in CATALOGUE:
        _learned[cache_type.name] = cache_type


def lookup(name: str) -> CacheType | None:
    return CATALOGUE.get(name) or _learned.get(name)


def get(name: str) -> CacheType:
    """The type called `name`; KeyError when kvsweep knows nothing of its storage."""
    found = lookup(name)
    if found is None:
        raise KeyError(f"kvsweep knows no storage facts for the cache type {name!r} (no worker's "
                       "build has described it yet)")
    return found


def is_quantized(name: str) -> bool:
    found = lookup(name)
    return found.quantized if found is not None else name not in BASELINE_TYPES


def bytes_per_value(name: str) -> float:
    return get(name).bits_per_value / 8.0


def config_label(type_k: str, type_v: str) -> str:
    """How reports name a K/V configuration: 'q8_0' when symmetric, 'q8_0/q4_0' otherwise."""
    return type_k if type_k == type_v else f"{type_k}/{type_v}"
