"""Per-token quality figures from two sets of logits, with llama-perplexity's definitions.

For each scored position (the logits that predict `next_token`):
    nll      = logsumexp(q) - q[next]                       (llama-perplexity's per-token NLL)
    KLD      = sum_i p_base_i * (log p_base_i - log q_i)
    dp       = p_q(next) - p_base(next)
    same_top = argmax q == argmax base

Precision: exponentials are float32 (as llama.cpp's expf), every sum is float64. KLD uses an
exact identity that keeps *relative* precision even for tiny divergences (an f16 cache against
f32 can give 1e-6): with d = q - b and c = E_pbase[d],
    KLD = log E_pbase[exp(d - c)] = log1p(E_pbase[g(d - c)]),   g(x) = expm1(x) - x
(E_pbase[d - c] = 0, so the first-order terms that would cancel are never summed; g is taken
from its series where |x| < 0.1, so no digits cancel there either). Unlike
llama-perplexity, whose baseline is stored as 16-bit log-probs and skips entries with
log p_base <= -16, every vocabulary entry counts.

Memory: rows are reduced in blocks whose float32 temporaries stay under `budget_bytes` per
thread, so a 248K-token vocabulary needs tens of MB beyond the logits llama.cpp already holds.

Two implementations of the same definitions: the fused one (workers/_kl_fused.c, compiled at
install: two passes over a row instead of about twenty numpy passes, AVX2 or AVX-512) where it
was built and the CPU runs it, else numpy's. KVSWEEP_REDUCER=numpy forces numpy (tests compare
both). The fused one uses g's series up to |x| < 0.5 (a longer series) and sums 8 terms per
lane in float before adding them in double; both stay within the tests' float64 / long double
references (tests/test_kl_math.py).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

REDUCER_ENV = "KVSWEEP_REDUCER"  # "numpy": never the fused reduction

DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
# Below this many logits a call is split over no threads: with a small vocabulary (the demo
# model's 414 tokens) handing blocks to the pool costs more than it saves (bench/quality_overhead.py).
PARALLEL_MIN_VALUES = 1 << 18
_TEMPORARIES = 6  # float32 (rows, vocab) arrays alive at once in `_compare_block`


@dataclass
class BaseRows:
    """Baseline facts per output row, computed once and reused for every compared cache."""

    max: np.ndarray  # float32 row max
    sumexp: np.ndarray  # float64 sum(exp(b - max))
    lse: np.ndarray  # float64 logsumexp
    argmax: np.ndarray  # int64
    nll: np.ndarray  # float64


@dataclass
class TokenScores:
    nll: np.ndarray  # float64
    kld: np.ndarray  # float64
    dp: np.ndarray  # float64
    same_top: np.ndarray  # bool


class Reducer:
    """Reduces logits rows in memory-bounded blocks, in parallel over a small thread pool.

    numpy's ufuncs release the GIL on large arrays, so threads scale across cores.
    """

    def __init__(self, n_vocab: int, threads: int = 0, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 fused: bool | None = None):
        self.n_vocab = n_vocab
        self.threads = threads or max(1, min(8, os.cpu_count() or 1))
        self.block_rows = max(1, budget_bytes // (_TEMPORARIES * 4 * n_vocab))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        # None: the fused reduction where it is available (and not turned off)
        self._fused = fused_library() if fused is not False else None
        if fused and self._fused is None:
            raise RuntimeError("the fused KL reduction is not built or this CPU lacks AVX2: "
                               "reinstall kvsweep with a C compiler (pip install -e .)")

    @property
    def implementation(self) -> str:
        return f"fused-{_SIMD_NAMES.get(self._fused.kvs_simd(), '?')}" if self._fused else "numpy"

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()

    def _blocks(self, n_rows: int) -> list[slice]:
        step = self.block_rows
        if self._pool and n_rows > 1 and n_rows * self.n_vocab >= PARALLEL_MIN_VALUES:
            # give every thread work even when rows are few
            step = max(1, min(step, -(-n_rows // self.threads)))
        return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]

    def _map(self, fn, blocks):
        if self._pool and len(blocks) > 1:
            return list(self._pool.map(fn, blocks))
        return [fn(b) for b in blocks]

    def base_rows(self, base: np.ndarray, next_tokens: np.ndarray) -> BaseRows:
        n = base.shape[0]
        out = BaseRows(
            max=np.empty(n, np.float32),
            sumexp=np.empty(n, np.float64),
            lse=np.empty(n, np.float64),
            argmax=np.empty(n, np.int64),
            nll=np.empty(n, np.float64),
        )
        if self._fused is not None:
            base = np.ascontiguousarray(base, np.float32)
            nxt = np.ascontiguousarray(next_tokens, np.int64)

            def fused(s: slice) -> None:  # ctypes releases the GIL: blocks run in parallel
                self._fused.kvs_base_rows(
                    _at(base, s.start), s.stop - s.start, self.n_vocab, _at(nxt, s.start),
                    _at(out.max, s.start), _at(out.sumexp, s.start), _at(out.lse, s.start),
                    _at(out.argmax, s.start), _at(out.nll, s.start))

            self._map(fused, self._blocks(n))
            return out

        def work(s: slice) -> None:
            b = base[s]
            m = b.max(axis=1)
            e = np.exp(b - m[:, None])
            out.max[s] = m
            out.sumexp[s] = e.sum(axis=1, dtype=np.float64)
            out.lse[s] = m + np.log(out.sumexp[s])
            out.argmax[s] = b.argmax(axis=1)
            out.nll[s] = out.lse[s] - b[np.arange(b.shape[0]), next_tokens[s]]

        self._map(work, self._blocks(n))
        return out

    def nll_only(self, logits: np.ndarray, next_tokens: np.ndarray) -> np.ndarray:
        return self.base_rows(logits, next_tokens).nll

    def compare(
        self, base: np.ndarray, rows: BaseRows, q: np.ndarray, next_tokens: np.ndarray
    ) -> TokenScores:
        n = q.shape[0]
        out = TokenScores(
            nll=np.empty(n, np.float64),
            kld=np.empty(n, np.float64),
            dp=np.empty(n, np.float64),
            same_top=np.empty(n, bool),
        )
        if self._fused is not None:
            base = np.ascontiguousarray(base, np.float32)
            q = np.ascontiguousarray(q, np.float32)
            nxt = np.ascontiguousarray(next_tokens, np.int64)

            def fused(s: slice) -> None:
                rc = self._fused.kvs_compare(
                    _at(base, s.start), _at(q, s.start), s.stop - s.start, self.n_vocab,
                    _at(nxt, s.start), _at(rows.max, s.start), _at(rows.sumexp, s.start),
                    _at(rows.argmax, s.start), _at(rows.nll, s.start), _at(out.nll, s.start),
                    _at(out.kld, s.start), _at(out.dp, s.start), _at(out.same_top, s.start))  # bool: 1 byte, 0/1
                if rc != 0:
                    raise MemoryError("the fused KL reduction could not allocate its row buffer")

            self._map(fused, self._blocks(n))
            return out

        def work(s: slice) -> None:
            b, qq, idx = base[s], q[s], np.arange(s.stop - s.start)
            nxt = next_tokens[s]
            # quantized run: logsumexp, nll, top token
            m_q = qq.max(axis=1)
            e = np.exp(qq - m_q[:, None])
            lse_q = m_q + np.log(e.sum(axis=1, dtype=np.float64))
            out.nll[s] = lse_q - qq[idx, nxt]
            out.same_top[s] = qq.argmax(axis=1) == rows.argmax[s]
            # baseline probabilities, reusing the buffer
            np.subtract(b, rows.max[s][:, None], out=e)
            np.exp(e, out=e)
            e /= rows.sumexp[s][:, None].astype(np.float32)
            p_base = e
            d = qq - b  # exact: Sterbenz, q and b are close where it matters
            p_sum = p_base.sum(axis=1, dtype=np.float64)
            c = np.einsum("ij,ij->i", p_base, d, dtype=np.float64) / p_sum
            d -= c[:, None].astype(np.float32)
            inner = np.einsum("ij,ij->i", p_base, _expm1_minus_x(d), dtype=np.float64)
            out.kld[s] = np.log1p(inner / p_sum)
            out.dp[s] = np.exp(-out.nll[s]) - np.exp(-rows.nll[s])

        self._map(work, self._blocks(n))
        return out


_SIMD_NAMES = {2: "avx2", 3: "avx512"}
_LIBRARY: list = []  # [the loaded library or None], once per process


def fused_library():
    """The fused reduction's library (ctypes), or None: not built, not x86-64 with AVX2, or
    turned off with KVSWEEP_REDUCER=numpy."""
    if os.environ.get(REDUCER_ENV, "") == "numpy":
        return None
    if not _LIBRARY:
        _LIBRARY.append(_load())
    return _LIBRARY[0]


def _load():
    spec = importlib.util.find_spec("kvsweep.workers._kl_fused")
    if spec is None or not spec.origin:
        return None
    lib = ctypes.CDLL(spec.origin)
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.kvs_simd.restype = ctypes.c_int
    lib.kvs_set_simd.argtypes = [ctypes.c_int]
    lib.kvs_base_rows.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.kvs_base_rows.restype = None
    lib.kvs_compare.argtypes = [ptr, ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.kvs_compare.restype = ctypes.c_int
    return lib if lib.kvs_simd() > 0 else None


def _at(a: np.ndarray, row: int) -> int:
    """The address of row `row` of a C-contiguous array (what the C functions take)."""
    return a.ctypes.data + row * a.strides[0]


_SERIES_LIMIT = np.float32(0.1)
# x^2 (1/2 + x/6 + x^2/24 + x^3/120 + x^4/720): the next term is below 4e-9 relative for |x| < 0.1
_SERIES = tuple(np.float32(c) for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2))
_FEW = 8  # at most 1/_FEW of the entries outside the series' range: fix them up one by one


def _expm1_minus_x(x: np.ndarray) -> np.ndarray:
    """expm1(x) - x in float32 without cancellation: Taylor series for |x| < 0.1, where its
    truncation error is below 4e-9 relative; directly elsewhere.

    This runs over every vocabulary entry of every scored token, and memory passes are its
    cost: the series is evaluated everywhere in place; the entries outside its range are then
    overwritten with the direct form, one by one where they are few (close caches, the common
    case: no full-size expm1 or masked copy), by a masked copy where they are many."""
    out = np.multiply(x, _SERIES[0])
    for coeff in _SERIES[1:]:
        out += coeff
        out *= x
    out *= x
    flat = x.reshape(-1)
    outside = np.abs(flat) >= _SERIES_LIMIT
    n = np.count_nonzero(outside)
    if n * _FEW > flat.size:
        direct = np.expm1(x)
        direct -= x
        np.copyto(out, direct, where=outside.reshape(x.shape))
    elif n:
        idx = np.flatnonzero(outside)
        xs = flat[idx]
        direct = np.expm1(xs)
        direct -= xs
        out.reshape(-1)[idx] = direct
    return out
