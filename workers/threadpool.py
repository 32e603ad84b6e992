"""A persistent CPU threadpool for each speed-test context, as llama-bench attaches one.

Without a threadpool attached, ggml's CPU backend creates a disposable pool of threads for
every graph it computes and joins them afterwards (ggml-cpu.c, `ggml_graph_compute`).
llama-bench instead creates one pool per test with `ggml_threadpool_new` (poll 50, normal
priority, no strict placement: ggml's defaults and llama-bench's) and attaches it with
`llama_attach_threadpool`; kvsweep does the same per context, so that the CPU side of a timed
loop runs as llama-bench's does (speed contexts only: the quality pass, like llama-perplexity,
attaches none, since its contexts take turns and idle pools would poll for work while another
computes). The numbers a context computes do not change: the same
threads split the same work (tests/test_passes.py). On the 2-core VM of docs/benchmarks.md,
with llama-cpp-python's default OpenMP build, `python bench/threadpool_ab.py` showed no tg
difference beyond its noise: the point is parity with llama-bench, not a speed-up.

The functions are looked up through the CPU backend's registry entry, as llama-bench does, so
this also works when backends are loaded as modules. If the lookup fails (an unusual build),
contexts run without a pool, as before, and `available()` says so.
"""

from __future__ import annotations

import ctypes
import functools

from kvsweep.workers import probe

GGML_MAX_N_THREADS = 512
GGML_BACKEND_DEVICE_TYPE_CPU = 0
DEFAULT_POLL = 50  # ggml_threadpool_params_init's and llama-bench's --poll default


class ThreadpoolParams(ctypes.Structure):
    """struct ggml_threadpool_params (ggml.h)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),  # all false: the inherited affinity
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),  # enum ggml_sched_priority: 0 normal
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


@functools.cache
def _api():
    """(new, free, attach) C functions, or None when this build does not offer them."""
    try:
        ggml, base, llama = probe.bundled_lib("ggml"), probe.bundled_lib("ggml-base"), probe.bundled_lib("llama")
        ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        dev = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
        reg = base.ggml_backend_dev_backend_reg(dev) if dev else None
        new_at = base.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_new") if reg else None
        free_at = base.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_free") if reg else None
        if not (new_at and free_at):
            return None
        new = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(ThreadpoolParams))(new_at)
        free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(free_at)
        attach = llama.llama_attach_threadpool
        attach.restype = None
        attach.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        return new, free, attach
    except (OSError, AttributeError):
        return None


def available() -> bool:
    return _api() is not None


class Threadpool:
    """One ggml CPU threadpool attached to one context; free it after the context."""

    def __init__(self, ctx_ptr: int, n_threads: int, poll: int = DEFAULT_POLL, attach: bool = True):
        self.ptr = None
        api = _api() if attach else None
        if api is None:
            return
        new, _, attach = api
        params = ThreadpoolParams(n_threads=n_threads, prio=0, poll=poll, strict_cpu=False, paused=False)
        self.ptr = new(ctypes.byref(params))
        if self.ptr:
            attach(ctx_ptr, self.ptr, None)  # NULL batch pool: the same pool for batches

    def free(self) -> None:
        """Call after llama_free of the context it is attached to."""
        if self.ptr:
            _api()[1](self.ptr)
            self.ptr = None
