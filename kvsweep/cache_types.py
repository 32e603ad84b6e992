"""The K/V cache types kvsweep knows, by name.

Names are the source of truth everywhere (matrix files, Parquet, reports): forks such as the
TurboQuant one reuse GGML enum numbers for their own types, so an int alone means nothing
across builds. The GGML numbers here are mainline's and are used only at the moment a
llama.cpp context is created.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheType:
    name: str
    ggml_type: int  # mainline GGML enum value; only valid for mainline builds
    bits_per_value: float  # storage cost including block scales (block size 32)
    quantized: bool  # a quantized V cache needs flash attention


# Mainline llama.cpp's accepted K/V cache types (common/arg.cpp `kv_cache_types`).
MAINLINE: dict[str, CacheType] = {
    t.name: t
    for t in (
        CacheType("f32", 0, 32.0, False),
        CacheType("f16", 1, 16.0, False),
        CacheType("bf16", 30, 16.0, False),
        CacheType("q8_0", 8, 8.5, True),
        CacheType("q5_1", 7, 6.0, True),
        CacheType("q5_0", 6, 5.5, True),
        CacheType("q4_1", 3, 5.0, True),
        CacheType("q4_0", 2, 4.5, True),
        CacheType("iq4_nl", 20, 4.5, True),
    )
}

# Types a baseline (the reference cache for KL divergence) may use: unquantized only.
BASELINE_TYPES = ("f16", "bf16", "f32")


def get(name: str) -> CacheType:
    """Return the cache type called `name`; KeyError lists the valid names."""
    try:
        return MAINLINE[name]
    except KeyError:
        raise KeyError(f"unknown cache type {name!r}; valid: {', '.join(MAINLINE)}") from None


def bytes_per_value(name: str) -> float:
    return MAINLINE[name].bits_per_value / 8.0


def config_label(type_k: str, type_v: str) -> str:
    """How reports name a K/V configuration: 'q8_0' when symmetric, 'q8_0/q4_0' otherwise."""
    return type_k if type_k == type_v else f"{type_k}/{type_v}"
