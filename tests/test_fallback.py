"""CPU-fallback detection: llama.cpp's own log lines, parsed, and the flagging rule.

This machine has no GPU, so the GPU-side lines are produced here from llama.cpp's format
strings (copied verbatim from the vendored source, file and function named) with the values a
CUDA host prints; the CPU-side facts come from real contexts.
"""

from __future__ import annotations

import pytest

from kvsweep.workers import llama_api
from kvsweep.workers.fallback import CPU_FALLBACK, FLASH_ATTN_DISABLED, FallbackCheck, fallback_flags
from kvsweep.workers.llama_api import LOG_DEBUG, LOG_INFO, LOG_WARN, LogCapture, _parse_facts

# src/llama-kv-cache.cpp, llama_kv_cache::llama_kv_cache (LLAMA_LOG_DEBUG)
KV_DEV = "%s: layer %3d: dev = %s\n"
# src/llama-context.cpp, llama_context::sched_reserve (LLAMA_LOG_INFO)
GRAPH = "%s: graph%s: nodes = %s, splits = %s, input objects = %s, input tensors = %s\n"
# src/llama-context.cpp, llama_context::resolve_fused_ops (LLAMA_LOG_WARN)
MISMATCH = "%s: layer %d is assigned to device %s but %s is assigned to device %s (usually due to missing support)\n"
NOT_SUPPORTED = "%s: %s not supported, set to disabled\n"


def cuda_context_log(splits_pp: int, splits_tg: int, fa_probe: bool = False) -> list[tuple[int, str]]:
    """(level, text) calls as a 2-layer CUDA context makes them."""
    calls = [(LOG_DEBUG, KV_DEV % ("llama_kv_cache", i, "CUDA0")) for i in range(2)]
    calls.append((LOG_DEBUG, "llama_graph_n_input_tensors: input tensor 'inp_pos' is used by node 'Qcur-0' (ROPE)\n"))
    if fa_probe:
        calls.append((LOG_WARN, MISMATCH % ("resolve_fused_ops", 0, "CUDA0", "Flash Attention", "CPU")))
        calls.append((LOG_WARN, NOT_SUPPORTED % ("resolve_fused_ops", "Flash Attention")))
    if splits_pp == splits_tg:
        graph = GRAPH % ("sched_reserve", "", "1100", str(splits_pp), "4", "8")
    else:
        graph = GRAPH % ("sched_reserve", " (pp bs=512, tg bs=1)", "1100 / 1090",
                         f"{splits_pp} / {splits_tg}", "4 / 4", "8 / 8")
    calls.append((LOG_INFO, graph))
    return calls


def capture(calls) -> list[str]:
    """What the worker's log capture keeps of these calls (not installed as llama's logger)."""
    log = LogCapture(install=False)
    for level, text in calls:
        log._feed(text, level)
    return list(log.lines)


def test_cuda_log_lines_are_parsed():
    lines = capture(cuda_context_log(splits_pp=9, splits_tg=5))
    assert not any("is used by node" in line for line in lines), "other DEBUG lines are dropped"
    facts = _parse_facts(lines)
    assert facts.kv_devices == ["CUDA0", "CUDA0"] and facts.offloaded
    assert (facts.graph_nodes, facts.graph_splits, facts.graph_splits_tg) == (1100, 9, 5)
    assert facts.fa_device_mismatch is None and not facts.flash_attn_auto_disabled


def test_older_builds_graph_lines():
    facts = _parse_facts(["llama_context: graph nodes  = 1030",
                          "llama_context: graph splits = 3 (with bs=512), 2 (with bs=1)"])
    assert (facts.graph_nodes, facts.graph_splits, facts.graph_splits_tg) == (1030, 3, 2)


def test_more_splits_than_f16_on_a_gpu_is_a_fallback():
    facts = _parse_facts(capture(cuda_context_log(splits_pp=34, splits_tg=34)))
    assert fallback_flags(facts, reference_splits=2) == [CPU_FALLBACK]
    assert fallback_flags(facts, reference_splits=34) == []
    assert fallback_flags(facts, reference_splits=None) == []  # no reference, no verdict


def test_flash_attn_probe_mismatch_is_a_fallback():
    facts = _parse_facts(capture(cuda_context_log(splits_pp=2, splits_tg=2, fa_probe=True)))
    assert facts.fa_device_mismatch == ("CUDA0", "CPU")
    assert fallback_flags(facts, reference_splits=2) == [CPU_FALLBACK, FLASH_ATTN_DISABLED]


def test_cpu_context_never_falls_back():
    lines = [KV_DEV % ("llama_kv_cache", i, "CPU") for i in range(2)]
    lines.append(GRAPH % ("sched_reserve", "", "178", "5", "4", "8"))
    facts = _parse_facts([line.rstrip("\n") for line in lines])
    assert not facts.offloaded
    assert fallback_flags(facts, reference_splits=1) == []


@pytest.fixture(scope="module")
def model(tiny_model):
    m = llama_api.Model(str(tiny_model))
    yield m
    m.close()


def test_real_cpu_contexts(model):
    """A real context reports its KV devices and graph; on CPU nothing is flagged and no
    reference context is made; the reference, when asked for, has the same splits."""
    settings = llama_api.ContextSettings("q8_0", "q4_0", n_ctx=512, n_batch=64, n_ubatch=64, n_threads=2)
    check = FallbackCheck()
    with llama_api.Context(model, settings) as ctx:
        assert ctx.facts.kv_devices == ["CPU"] * 4
        assert ctx.facts.graph_nodes > 0 and ctx.facts.graph_splits >= 1
        assert check.flags(ctx) == ([], None)
        assert check._splits == {}, "no reference context on a CPU-only context"
        assert check.reference_splits(model, settings) == ctx.facts.graph_splits


def test_a_kv_cache_left_on_the_cpu_of_a_gpu_host_is_config_not_applied():
    """Every layer offloaded on a CUDA host: a layer whose KV cache llama.cpp put on the CPU
    (the log's `layer N: dev = CPU`) means the cell did not run as asked."""
    from kvsweep.workers.config_check import config_problems

    on_gpu = _parse_facts(capture(cuda_context_log(2, 2)))
    assert config_problems(on_gpu, "f16", "f16", "auto", None, gpu_backend="CUDA") == []
    calls = [(LOG_DEBUG, KV_DEV % ("llama_kv_cache", 0, "CUDA0")), (LOG_DEBUG, KV_DEV % ("llama_kv_cache", 1, "CPU"))]
    half = _parse_facts(capture(calls))
    (problem,) = config_problems(half, "f16", "f16", "auto", None, gpu_backend="CUDA")
    assert problem == "1 of 2 layers keep their KV cache on the CPU; the cell offloads every layer to CUDA"
    # a CPU host (or a partial offload) expects nothing of the devices
    assert config_problems(half, "f16", "f16", "auto", None, gpu_backend="") == []
