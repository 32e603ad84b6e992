"""A thin, honest layer over llama-cpp-python's low-level (ctypes) API.

One `Model` is loaded once per worker; many `Context`s with different K/V cache types are
created from it, as llama-bench does. Only what the quality and speed passes need is here:
tokenize, decode a batch, read the logits without copying, clear / save / restore the cache.

llama.cpp explains failures only in its C log (e.g. why a KV cache could not be allocated),
so a process-wide log capture keeps the recent lines: errors carry them, and context creation
reads its facts (KV buffer size, flash attention, rotation) from them.
"""

from __future__ import annotations

import collections
import ctypes
import re
import threading
from dataclasses import dataclass, field

import numpy as np

from kvsweep.workers import ggml_types
from kvsweep.workers.threadpool import Threadpool

FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


class LlamaError(RuntimeError):
    """llama.cpp refused or failed; `log_tail` holds its last log lines."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


class OutOfMemory(LlamaError):
    """A buffer (KV cache, compute, output) could not be allocated."""


class DecodeError(LlamaError):
    def __init__(self, message: str, code: int, log_tail: str = ""):
        super().__init__(message, log_tail)
        self.code = code


# llama_decode return codes (llama.h)
DECODE_CODES = {
    1: "no KV slot for the batch (context full)",
    2: "aborted",
    -1: "invalid batch",
    -2: "allocation failed",
    -3: "compute failed",
}


# ggml_log_level
LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_CONT = 1, 2, 3, 5
# DEBUG lines worth keeping: where each layer's KV cache lives (llama-kv-cache.cpp logs it at
# debug level). Every other DEBUG line is dropped: a context of a 40-layer model logs thousands
# of them (graph input tensors), which would push the facts out of the ring buffer.
_KEEP_DEBUG = re.compile(r"layer\s+\d+: dev = ")


class LogCapture:
    """Keeps llama.cpp's recent log lines (process-wide: llama_log_set is global)."""

    _instance: LogCapture | None = None
    _lock = threading.Lock()

    def __init__(self, keep: int = 400, install: bool = True):
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.mirror = None  # a callable(line) the worker sets: lines also go to its log file
        self._partial = ""
        self._level = 0  # level of the line being assembled (CONT continues it)
        self.count = 0  # lines seen so far, to read "lines since" a mark
        if install:
            self._install()

    def _install(self) -> None:
        import llama_cpp

        @llama_cpp.llama_log_callback
        def _callback(level, text, user_data):  # noqa: ARG001 - ctypes signature
            self._feed(text.decode("utf-8", errors="replace"), level)

        self._callback = _callback  # keep a reference: ctypes must not free it
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    @classmethod
    def install(cls) -> LogCapture:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _feed(self, text: str, level: int = 0) -> None:
        if level != LOG_CONT:
            self._level = level
        text = self._partial + text
        *complete, self._partial = text.split("\n")
        for line in complete:
            if not line.strip():
                continue
            if self._level == LOG_DEBUG and not _KEEP_DEBUG.search(line):
                continue
            self.lines.append(line)
            self.count += 1
            if self.mirror is not None:
                self.mirror(line)

    def mark(self) -> int:
        return self.count

    def since(self, mark: int) -> list[str]:
        n = min(self.count - mark, len(self.lines))
        return list(self.lines)[-n:] if n > 0 else []

    def tail(self, n: int = 30) -> str:
        return "\n".join(list(self.lines)[-n:])


_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        import llama_cpp

        LogCapture.install()
        llama_cpp.llama_backend_init()
        _backend_ready = True


@dataclass
class ModelInfo:
    """What llama-bench reports about a model (its field names)."""

    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    n_vocab: int
    add_bos: bool
    bos: int
    n_ctx_train: int


class Model:
    def __init__(self, path: str, n_gpu_layers: int = 999, vocab_only: bool = False):
        import llama_cpp

        _init_backend()
        self._L = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        log = LogCapture.install()
        mark = log.mark()
        self.ptr = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not self.ptr:
            tail = "\n".join(log.since(mark)[-30:])
            if _mentions_allocation_failure(tail):
                raise OutOfMemory(f"could not allocate memory to load {path}", tail)
            raise LlamaError(f"llama.cpp failed to load model {path}", tail)
        self.path = path
        self.n_gpu_layers = n_gpu_layers
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.ptr, buf, len(buf))
        self.info = ModelInfo(
            model_filename=path,
            model_type=buf.value.decode(errors="replace"),
            model_size=int(llama_cpp.llama_model_size(self.ptr)),
            model_n_params=int(llama_cpp.llama_model_n_params(self.ptr)),
            n_vocab=int(llama_cpp.llama_vocab_n_tokens(self.vocab)),
            add_bos=bool(llama_cpp.llama_vocab_get_add_bos(self.vocab)),
            bos=int(llama_cpp.llama_vocab_bos(self.vocab)),
            n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(self.ptr)),
        )
        self.load_log = log.since(mark)
        self._shape = False  # read when first asked for

    @property
    def shape(self):
        """The model's shape from its GGUF metadata (kvsweep/model_shape.py), None when the
        file cannot be read that way."""
        if self._shape is False:
            from kvsweep.model_shape import read_shape

            try:
                self._shape = read_shape(self.path)
            except Exception:  # a GGUF the gguf package cannot parse: no size check then
                self._shape = None
        return self._shape

    def tokenize(self, text: str, add_special: bool = True) -> np.ndarray:
        """Tokens of `text` as llama-perplexity gets them (common_tokenize(ctx, text, true))."""
        data = text.encode("utf-8")
        n_max = len(data) + 16
        out = (self._L.llama_token * n_max)()
        n = self._L.llama_tokenize(self.vocab, data, len(data), out, n_max, add_special, False)
        if n < 0:  # buffer too small: -n is the size needed
            out = (self._L.llama_token * -n)()
            n = self._L.llama_tokenize(self.vocab, data, len(data), out, -n, add_special, False)
        return np.frombuffer(out, dtype=np.int32, count=n).copy()

    def tokenize_corpus(self, text: str) -> np.ndarray:
        """A corpus file's tokens exactly as `llama-perplexity -f FILE` gets them: common/arg.cpp
        drops one trailing newline from the file's text before common_tokenize(..., true)."""
        return self.tokenize(text[:-1] if text.endswith("\n") else text, add_special=True)

    def close(self) -> None:
        if self.ptr:
            self._L.llama_model_free(self.ptr)
            self.ptr = None


@dataclass
class ContextSettings:
    type_k: str
    type_v: str
    n_ctx: int
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: str = "on"
    n_threads: int = 1
    n_seq_max: int = 1
    # a persistent CPU threadpool, as llama-bench attaches one to its one context; off for the
    # quality pass, whose contexts take turns (as llama-perplexity, which attaches none):
    # several pools would poll for work while another computes (workers/threadpool.py)
    cpu_threadpool: bool = False


@dataclass(frozen=True)
class KvSummary:
    """llama_kv_cache's summary line: "size = 8.00 MiB (256 cells, 4 layers, 1/1 seqs),
    K (f16): 4.00 MiB, V (f16): 4.00 MiB" (one per cache: a SWA model makes two)."""

    cells: int
    layers: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float


@dataclass
class ContextFacts:
    """What llama.cpp said when it made the context (from its log)."""

    kv_bytes: int = 0
    # the other buffers llama.cpp reported allocating for the context (all devices together)
    compute_bytes: int = 0
    output_bytes: int = 0
    recurrent_bytes: int = 0  # a hybrid's recurrent state ("RS buffer")
    flash_attn_enabled: bool | None = None
    attn_rot_k: bool | None = None
    attn_rot_v: bool | None = None
    # the scheduler's worst-case graphs (prompt: n_ubatch tokens; generation: 1 token). More
    # splits than an f16/f16 context of the same shape means some op left the GPU.
    graph_nodes: int | None = None
    graph_splits: int | None = None  # prompt-processing graph
    graph_splits_tg: int | None = None  # single-token graph
    kv_devices: list[str] = field(default_factory=list)  # device of each layer's KV cache
    # "layer N is assigned to device A but Flash Attention is assigned to device B": llama.cpp's
    # own check (flash_attn auto) that the FA kernel is missing on the layer's device
    fa_device_mismatch: tuple[str, str] | None = None
    flash_attn_auto_disabled: bool = False
    kv_summaries: list[KvSummary] = field(default_factory=list)
    # lines in which llama.cpp (or a fork) says it stores the cache otherwise than asked:
    # TurboQuant's layer-adaptive modes and its automatic K upgrade
    kv_notes: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def offloaded(self) -> bool:
        """Whether this context keeps any KV layer on a non-CPU device."""
        return any(not d.upper().startswith("CPU") for d in self.kv_devices)


_ALLOC_FAILURE = re.compile(
    r"failed to allocate|unable to allocate|out of memory|cudaMalloc failed|"
    r"ErrorOutOfDeviceMemory|insufficient memory|failed to create.*buffer",
    re.IGNORECASE,
)


def _mentions_allocation_failure(text: str) -> bool:
    return bool(_ALLOC_FAILURE.search(text))


# sched_reserve's summary: "graph: nodes = 178, splits = 1, ..." or, when the prompt and
# generation graphs differ, "graph (pp bs=512, tg bs=1): nodes = 1100 / 1090, splits = 3 / 2, ...";
# older builds: "graph nodes  = 1100" and "graph splits = 3 (with bs=512), 2 (with bs=1)".
_GRAPH = re.compile(
    r"graph(?: \(pp bs=\d+, tg bs=\d+\))?: nodes = (\d+)(?: / \d+)?, splits = (\d+)(?: / (\d+))?"
)
_GRAPH_OLD_SPLITS = re.compile(r"graph splits\s*=\s*(\d+)(?: \(with bs=\d+\), (\d+))?")
_GRAPH_OLD_NODES = re.compile(r"graph nodes\s*=\s*(\d+)")
_KV_DEVICE = re.compile(r"layer\s+(\d+): dev = (\S+)")
_KV_SUMMARY = re.compile(r"size =\s*[\d.]+ MiB \(\s*(\d+) cells,\s*(\d+) layers,.*?K \((\w+)\):\s*([\d.]+) MiB, "
                         r"V \((\w+)\):\s*([\d.]+) MiB")
# what a fork logs when it changes this context's cache (TurboQuant: a layer-adaptive mode
# applied to its layers, an automatic K upgrade). Not the notices that a mode is on for the
# process ("layer-adaptive mode 7 enabled", "Boundary V auto-enabled"): they come with the
# first context whatever its types; modes that log nothing per context show in the sizes.
_KV_NOTE = re.compile(r"Boundary V mode|V-only LA mode|auto-asymmetric")
_FA_MISMATCH = re.compile(
    r"layer \d+ is assigned to device (\S+) but Flash Attention is assigned to device (\S+)"
)


def _parse_facts(lines: list[str]) -> ContextFacts:
    facts = ContextFacts(log=lines)
    for line in lines:
        m = _GRAPH.search(line)
        if m:
            facts.graph_nodes, facts.graph_splits = int(m.group(1)), int(m.group(2))
            facts.graph_splits_tg = int(m.group(3) or m.group(2))
        m = _GRAPH_OLD_SPLITS.search(line)
        if m:
            facts.graph_splits = int(m.group(1))
            facts.graph_splits_tg = int(m.group(2) or m.group(1))
        m = _GRAPH_OLD_NODES.search(line)
        if m:
            facts.graph_nodes = int(m.group(1))
        m = _KV_DEVICE.search(line)
        if m and "kv_cache" in line:
            facts.kv_devices.append(m.group(2))
        m = _FA_MISMATCH.search(line)
        if m:
            facts.fa_device_mismatch = (m.group(1), m.group(2))
        m = _KV_SUMMARY.search(line)
        if m and "kv_cache" in line:
            facts.kv_summaries.append(KvSummary(int(m.group(1)), int(m.group(2)), m.group(3),
                                                float(m.group(4)), m.group(5), float(m.group(6))))
        if _KV_NOTE.search(line):
            facts.kv_notes.append(line.strip())
        if "Flash Attention not supported, set to disabled" in line:
            facts.flash_attn_auto_disabled = True
        m = re.search(r"(KV|RS|compute|output) buffer size\s*=\s*([\d.]+)\s*MiB", line)
        if m:
            size = int(float(m.group(2)) * 1024 * 1024)
            if m.group(1) == "KV":
                facts.kv_bytes += size
            elif m.group(1) == "RS":
                facts.recurrent_bytes += size
            elif m.group(1) == "compute":
                facts.compute_bytes += size
            else:
                facts.output_bytes += size
        m = re.search(r"flash_attn\s*=\s*(\w+)", line)
        if m and "llama_context" in line:
            facts.flash_attn_enabled = m.group(1) == "enabled" or m.group(1) == "1"
        elif re.search(r"Flash Attention (?:was auto, set to )?enabled", line):
            facts.flash_attn_enabled = True  # "auto" resolved (mainline, and forks' wording)
        elif "Flash Attention" in line and "set to disabled" in line:
            facts.flash_attn_enabled = False
        m = re.search(r"attn_rot_k\s*=\s*(\d)", line)
        if m:
            facts.attn_rot_k = m.group(1) == "1"
        m = re.search(r"attn_rot_v\s*=\s*(\d)", line)
        if m:
            facts.attn_rot_v = m.group(1) == "1"
    return facts


class Context:
    """One llama_context with a given K/V cache configuration."""

    def __init__(self, model: Model, settings: ContextSettings):
        L = model._L
        self._L = L
        self.model = model
        self.settings = settings
        params = L.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = settings.n_batch
        params.n_ubatch = settings.n_ubatch
        params.n_seq_max = settings.n_seq_max
        params.n_threads = settings.n_threads
        params.n_threads_batch = settings.n_threads
        try:  # this build's enum numbers (a fork's differ from mainline's)
            params.type_k = ggml_types.type_id(settings.type_k)
            params.type_v = ggml_types.type_id(settings.type_v)
        except ggml_types.UnknownType as exc:
            raise LlamaError(str(exc.args[0])) from None
        params.flash_attn_type = FLASH_ATTN[settings.flash_attn]
        params.no_perf = True
        log = LogCapture.install()
        mark = log.mark()
        self.ptr = L.llama_init_from_model(model.ptr, params)
        lines = log.since(mark)
        if not self.ptr:
            tail = "\n".join(lines[-30:])
            label = f"K={settings.type_k} V={settings.type_v} n_ctx={settings.n_ctx}"
            if _mentions_allocation_failure(tail):
                raise OutOfMemory(f"could not allocate the context ({label})", tail)
            raise LlamaError(f"llama.cpp refused the context ({label})", tail)
        self.facts = _parse_facts(lines)
        # speed tests: one pool of CPU threads for the context's life, as llama-bench attaches
        # one (else ggml starts and joins threads for every graph: workers/threadpool.py)
        self._threadpool = Threadpool(self.ptr, settings.n_threads, attach=settings.cpu_threadpool)
        self.n_vocab = model.info.n_vocab
        self.memory = L.llama_get_memory(self.ptr)
        self._batch = L.llama_batch_init(settings.n_batch, 0, 1)
        n = settings.n_batch
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(n,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n,))
        self._nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n,))
        self._out = np.ctypeslib.as_array(self._batch.logits, shape=(n,))
        for i in range(n):
            self._batch.seq_id[i][0] = 0
        self._nseq[:] = 1

    # -- cache state ---------------------------------------------------------------------
    def clear(self, data: bool = True) -> None:
        """Empty the cache. data=False resets only its bookkeeping, as llama-bench does
        between repetitions; data=True also zeroes the buffers, as llama-perplexity does."""
        self._L.llama_memory_clear(self.memory, data)

    def pos_max(self) -> int:
        return int(self._L.llama_memory_seq_pos_max(self.memory, 0))

    def save_state(self) -> bytes:
        size = self._L.llama_state_seq_get_size(self.ptr, 0)
        buf = (ctypes.c_uint8 * size)()
        written = self._L.llama_state_seq_get_data(self.ptr, buf, size, 0)
        return bytes(buf[:written])

    def restore_state(self, state: bytes) -> bool:
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return self._L.llama_state_seq_set_data(self.ptr, buf, len(state), 0) != 0

    # -- decoding ------------------------------------------------------------------------
    def decode(self, tokens: np.ndarray, pos0: int, output_from: int | None = None) -> int:
        """Decode `tokens` at positions pos0.. in sequence 0.

        Logits are requested for positions >= output_from (None: only the last token).
        Returns the number of output rows, readable with `logits()` until the next decode.
        """
        n = len(tokens)
        if n > self.settings.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds n_batch {self.settings.n_batch}")
        self._tok[:n] = tokens
        positions = np.arange(pos0, pos0 + n, dtype=np.int32)
        self._pos[:n] = positions
        if output_from is None:
            self._out[:n] = 0
            self._out[n - 1] = 1
        else:
            self._out[:n] = positions >= output_from
        self._batch.n_tokens = n
        self._check(self._L.llama_decode(self.ptr, self._batch))
        return int(self._out[:n].sum())

    def decode_one(self, token: int, pos: int) -> None:
        """One generated token (llama-bench's test_gen step), logits for it."""
        self._tok[0] = token
        self._pos[0] = pos
        self._out[0] = 1
        self._batch.n_tokens = 1
        self._check(self._L.llama_decode(self.ptr, self._batch))

    def _check(self, rc: int) -> None:
        if rc == 0:
            return
        what = DECODE_CODES.get(rc, "unknown failure")
        tail = LogCapture.install().tail(30)
        if rc == -2:
            raise OutOfMemory(f"llama_decode: {what} (code {rc})", tail)
        raise DecodeError(f"llama_decode: {what} (code {rc})", rc, tail)

    def logits(self, n_rows: int) -> np.ndarray:
        """The output rows of the last decode as a (n_rows, n_vocab) float32 view (no copy)."""
        ptr = self._L.llama_get_logits(self.ptr)
        return np.ctypeslib.as_array(ptr, shape=(n_rows, self.n_vocab))

    def synchronize(self) -> None:
        self._L.llama_synchronize(self.ptr)

    def close(self) -> None:
        if self.ptr:
            self._L.llama_batch_free(self._batch)
            self._L.llama_free(self.ptr)
            self._threadpool.free()  # after the context that uses it
            self.ptr = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
