"""The speed pass: llama-bench's method (tools/llama-bench/llama-bench.cpp), test by test.

A test gets a new context of n_ctx = n_prompt + n_gen + n_depth (the model is reused). One
warm-up run is not counted: the prompt (pp tests) or one generated token (tg tests). Each
repetition clears the cache; at depth > 0 it fills `n_depth` random tokens untimed (after
the first fill the sequence state is saved and later restored instead; a deeper depth of the
same series restores the last saved state and fills only the tokens it lacks, see
DepthStateCache); then it times either
the prompt (n_prompt random tokens, the first one BOS when the vocabulary adds it, decoded in
n_batch pieces) or generation (n_gen single-token decodes of random tokens, no sampling),
synchronizing before the clock stops. Per repetition t/s = (n_prompt + n_gen) / seconds;
reported are the mean of those and their sample standard deviation, with every sample kept.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time

import numpy as np

from kvsweep import precision, records
from kvsweep.cells import GENERATION, PROMPT, Cell
from kvsweep.workers import faults, host_load, llama_api, probe
from kvsweep.workers.fallback import FallbackCheck, context_columns, shared_check


class DepthStateCache:
    """llama-bench's `cstate`: the sequence state after the last depth fill, for reuse.

    Keyed by everything that makes the state valid except the depth (model, configuration,
    batch sizes), and holding the depth it was filled to. The pp and tg tests of one depth
    restore it; a deeper test of the same series restores it and fills only the tokens it
    lacks. The cache then holds n_depth random tokens either way, which is all a timing at
    that depth depends on, and a series of depths fills max(depth) tokens instead of their
    sum (llama-bench refills every depth from empty: with doubling depths up to 512K, that
    is twice the decoding, and filling dominates a deep sweep).
    """

    def __init__(self):
        self.key: tuple | None = None
        self.depth = 0
        self.state: bytes = b""

    def get(self, key: tuple, depth: int) -> tuple[bytes, int] | None:
        """(state, the depth it holds) for a test at `depth`: the same or a shallower fill."""
        if key == self.key and self.depth <= depth:
            return self.state, self.depth
        return None

    def put(self, key: tuple, depth: int, state: bytes) -> None:
        self.key, self.depth, self.state = key, depth, state


def fill_depth(ctx: llama_api.Context, n_depth: int, n_batch: int, rand: RandomTokens | CorpusTokens,
               cache: DepthStateCache, key: tuple) -> None:
    """Bring the (cleared) cache to n_depth random (or corpus) tokens, untimed, reusing a saved fill."""
    have = 0
    saved = cache.get(key, n_depth)
    if saved is not None:
        if ctx.restore_state(saved[0]):
            have = saved[1]
        else:
            ctx.clear(data=False)
    if have < n_depth:
        if have and isinstance(rand, CorpusTokens):
            rand.take(have)  # a corpus fill extends the text the restored state holds
        # a fill starts with BOS as llama-bench's does; an extension continues the sequence
        test_prompt(ctx, n_depth - have, n_batch, rand, first_bos=have == 0)
        cache.put(key, n_depth, ctx.save_state())


class CorpusTokens:
    """Consecutive corpus tokens, for `speed.fill = "corpus"`: attention over real text, which
    kernels whose work depends on the attention pattern (a fork's sparse-V decode) see
    differently from random tokens. Wraps around at the corpus's end."""

    def __init__(self, tokens: np.ndarray):
        if len(tokens) == 0:
            raise ValueError("the fill corpus tokenizes to no tokens")
        self.tokens = np.asarray(tokens, np.int32)
        self.at = 0

    def take(self, n: int) -> np.ndarray:
        reps = -(-(self.at + n) // len(self.tokens))
        out = np.tile(self.tokens, reps)[self.at : self.at + n] if reps > 1 else self.tokens[self.at : self.at + n]
        self.at = (self.at + n) % len(self.tokens)
        return out.copy()


class RandomTokens:
    """Random token ids as llama-bench draws them (std::rand() % n_vocab), seeded."""

    def __init__(self, n_vocab: int, seed: int = 1234):
        self.n_vocab = n_vocab
        self.rng = np.random.default_rng(seed)

    def take(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.n_vocab, size=n, dtype=np.int32)


def test_prompt(ctx: llama_api.Context, n_prompt: int, n_batch: int, rand: RandomTokens | CorpusTokens,
                first_bos: bool = True) -> None:
    """llama-bench's test_prompt: decode n_prompt random tokens in n_batch pieces."""
    info = ctx.model.info
    done = 0
    pos = ctx.pos_max() + 1
    while done < n_prompt:
        n = min(n_prompt - done, n_batch)
        batch = rand.take(n)
        if done == 0 and first_bos and info.add_bos:
            batch[0] = info.bos
        ctx.decode(batch, pos)
        pos += n
        done += n
    ctx.synchronize()


def test_gen(ctx: llama_api.Context, n_gen: int, rand: RandomTokens) -> None:
    """llama-bench's test_gen: n_gen single-token decodes, synchronizing after each."""
    info = ctx.model.info
    token = info.bos if info.add_bos else int(rand.take(1)[0])
    pos = ctx.pos_max() + 1
    upcoming = rand.take(n_gen)
    for i in range(n_gen):
        ctx.decode_one(token, pos)
        ctx.synchronize()
        pos += 1
        token = int(upcoming[i])


def _repetitions(ctx, cell: Cell, n_prompt: int, n_gen: int, rand: RandomTokens, filler,
                 depth_cache: DepthStateCache, key: tuple, meter: host_load.Meter
                 ) -> tuple[list[int], list[float], bool, str]:
    """The timed repetitions (llama-bench's loop): (nanoseconds of each, t/s of each, all logits
    finite, why they stopped). With `[speed] precision`, they stop once the t/s figure is known to its
    relative standard error (kvsweep/precision.py); `cell.repetitions` is then the most."""
    samples_ns: list[int] = []
    samples_ts: list[float] = []
    finite = True
    target = precision.SpeedPrecision.from_json(cell.precision)
    for _ in range(cell.repetitions):
        ctx.clear(data=False)  # llama-bench: llama_memory_clear(mem, false)
        if cell.n_depth:
            fill_depth(ctx, cell.n_depth, cell.n_batch, filler(), depth_cache, key)
        meter.start()
        t0 = time.perf_counter_ns()
        if n_prompt:
            test_prompt(ctx, n_prompt, cell.n_batch, rand)
        if n_gen:
            test_gen(ctx, n_gen, rand)
        samples_ns.append(time.perf_counter_ns() - t0)
        meter.stop()
        samples_ts.append(1e9 * (n_prompt + n_gen) / samples_ns[-1])
        finite = finite and bool(np.isfinite(ctx.logits(1)).all())  # untimed: last row
        if target is not None and precision.speed_target_met(samples_ts, target):
            return samples_ns, samples_ts, finite, precision.STOP_TARGET
    return samples_ns, samples_ts, finite, precision.STOP_REPETITIONS


def run_speed_cell(
    model: llama_api.Model,
    cell: Cell,
    n_threads: int,
    depth_cache: DepthStateCache,
    fallback: FallbackCheck | None = None,
    fill_tokens: np.ndarray | None = None,
    busy_limit: float | None | str = "env",
) -> records.CellOutcome:
    """One pp or tg cell. `fill_tokens`: the corpus's tokens when the cell fills its depth with
    text (cell.fill == "corpus"); the timed tokens stay random, as llama-bench's. `busy_limit`:
    the CPU-pressure share above which the cell is flagged host-busy (workers/host_load.py;
    "env": KVSWEEP_BUSY_LIMIT or the default; None: never)."""
    started = time.time()
    fallback = fallback or shared_check()
    n_prompt = cell.n_prompt if cell.kind == PROMPT else 0
    n_gen = cell.n_gen if cell.kind == GENERATION else 0
    type_k, type_v = faults.context_types(cell)
    settings = llama_api.ContextSettings(
        type_k=type_k,
        type_v=type_v,
        n_ctx=n_prompt + n_gen + cell.n_depth,
        n_batch=cell.n_batch,
        n_ubatch=cell.n_ubatch,
        flash_attn=cell.flash_attn,
        n_threads=n_threads,
        cpu_threadpool=True,  # as llama-bench attaches one to each test's context
    )
    rand = RandomTokens(model.info.n_vocab)
    test_time = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with llama_api.Context(model, settings) as ctx:
        # warm-up, not counted
        if n_prompt:
            test_prompt(ctx, n_prompt, cell.n_batch, rand)
        if n_gen:
            test_gen(ctx, 1, rand)
        key = (model.path, cell.type_k, cell.type_v, cell.flash_attn, cell.n_batch, cell.n_ubatch,
               cell.fill, cell.corpus_sha256)
        # the same text at every depth and repetition: a deeper fill extends the shallower one
        filler = (lambda: CorpusTokens(fill_tokens)) if fill_tokens is not None else (lambda: rand)
        meter = host_load.Meter()  # what else ran during the timed parts (read outside them)
        with faults.busy_host(cell):
            samples_ns, samples_ts, finite, stop_reason = _repetitions(ctx, cell, n_prompt, n_gen, rand, filler, depth_cache, key, meter)
        columns, flags = context_columns(ctx, fallback, cell)

    if not finite:
        flags.append("nonfinite")
    load = meter.read()
    if load.busy(host_load.busy_limit() if busy_limit == "env" else busy_limit):
        flags.append(host_load.HOST_BUSY)
    return records.CellOutcome(
        cell_id=cell.cell_id,
        # garbage logits (e.g. a Metal command buffer that failed silently) void the timing
        status=records.OK if finite else records.INVALID,
        started_at=started,
        finished_at=time.time(),
        error_class="" if finite else "NonFiniteLogits",
        error_message="" if finite else "NaN or infinite values in the logits",
        flags=flags,
        metrics={
            "test_time": test_time,
            "avg_ns": int(statistics.fmean(samples_ns)),
            "stddev_ns": int(statistics.stdev(samples_ns)) if len(samples_ns) > 1 else 0,
            "avg_ts": statistics.fmean(samples_ts),
            "stddev_ts": statistics.stdev(samples_ts) if len(samples_ts) > 1 else 0.0,
            "samples_ns": samples_ns,
            "samples_ts": samples_ts,
            "stop_reason": stop_reason,
            "ts_rel_se": precision.relative_se(samples_ts) if len(samples_ts) > 1 else None,
        },
        facts={**columns, **probe.run_facts(model.path), **load.columns()},
    )
