"""kvsweep's own overhead: its pp/tg loop against a bare llama_decode loop, and the KL reduction.

    python bench/overhead.py [--reps 20] [--threads 2] [--vocab 248320]

1. Speed: on one context, repetitions alternate between kvsweep's timed code (speed.py's
   test_prompt / test_gen, exactly what a speed cell times) and a bare loop: one llama_batch
   filled once, llama_decode + llama_synchronize and nothing else. Each repetition clears
   the cache (and restores the same depth state) first, as a speed cell does. Reported: mean
   t/s of each and the ratio (target: kvsweep >= 0.98 x bare).
2. KL reduction: kl_math's Reducer on random float32 logits of `--vocab` entries: the
   baseline pass (once per piece, shared by every compared cache) and the pass per compared
   cache, in ms per scored token. (What that costs relative to decoding depends on the model,
   so it is not guessed here: compare with the model's own prompt t/s.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from kvsweep.workers import llama_api
from kvsweep.workers.generated_models import ModelRecipe, cached_model
from kvsweep.workers.kl_math import Reducer
from kvsweep.workers.speed import RandomTokens, test_gen, test_prompt
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start  # noqa: E402  (bench/machine.py)


class BareLoop:
    """The least Python can do per llama_decode: a prebuilt batch, positions bumped in place."""

    def __init__(self, ctx: llama_api.Context):
        self.ctx, self.L = ctx, ctx._L
        self.batch = ctx._batch  # the same llama_batch memory; only fields are written here

    def prompt(self, tokens: np.ndarray, n_batch: int) -> None:
        L, ctx, b = self.L, self.ctx.ptr, self.batch
        pos = self.ctx.pos_max() + 1
        for start in range(0, len(tokens), n_batch):
            n = min(n_batch, len(tokens) - start)
            for i in range(n):
                b.token[i] = int(tokens[start + i])
                b.pos[i] = pos + i
                b.logits[i] = 0
            b.logits[n - 1] = 1
            b.n_tokens = n
            if L.llama_decode(ctx, b) != 0:
                raise RuntimeError("decode failed")
            pos += n
        L.llama_synchronize(ctx)

    def gen(self, tokens: np.ndarray) -> None:
        L, ctx, b = self.L, self.ctx.ptr, self.batch
        pos = self.ctx.pos_max() + 1
        b.n_tokens = 1
        b.logits[0] = 1
        for t in tokens:
            b.token[0] = int(t)
            b.pos[0] = pos
            if L.llama_decode(ctx, b) != 0:
                raise RuntimeError("decode failed")
            L.llama_synchronize(ctx)
            pos += 1


def speed_overhead(args) -> list[str]:
    model = llama_api.Model(str(cached_model(ModelRecipe())))
    lines = []
    for kind, n in (("pp", args.n_prompt), ("tg", args.n_gen)):
        settings = llama_api.ContextSettings(
            args.type, args.type, n_ctx=args.depth + n, n_batch=args.batch, n_ubatch=args.ubatch,
            flash_attn="on", n_threads=args.threads, cpu_threadpool=True)  # as a speed cell's
        with llama_api.Context(model, settings) as ctx:
            rand = RandomTokens(model.info.n_vocab)
            bare = BareLoop(ctx)
            state = None
            if args.depth:
                test_prompt(ctx, args.depth, args.batch, rand)
                state = ctx.save_state()
            kv_ns, bare_ns = [], []
            fixed = rand.take(n)
            # warm-up of both paths
            for timed in range(args.reps + 1):
                for who in (("kv", "bare") if timed % 2 else ("bare", "kv")):
                    ctx.clear(data=False)
                    if state is not None:
                        ctx.restore_state(state)
                    t0 = time.perf_counter_ns()
                    if who == "kv":
                        test_prompt(ctx, n, args.batch, rand) if kind == "pp" else test_gen(ctx, n, rand)
                    else:
                        bare.prompt(fixed, args.batch) if kind == "pp" else bare.gen(fixed)
                    dt_ns = time.perf_counter_ns() - t0
                    if timed:
                        (kv_ns if who == "kv" else bare_ns).append(dt_ns)
        kv_ts = [1e9 * n / t for t in kv_ns]
        bare_ts = [1e9 * n / t for t in bare_ns]
        km, bm = statistics.fmean(kv_ts), statistics.fmean(bare_ts)
        kmed, bmed = statistics.median(kv_ts), statistics.median(bare_ts)
        lines.append(
            f"| {kind}{n} @ d{args.depth} | {km:.1f} ± {statistics.stdev(kv_ts):.1f} | "
            f"{bm:.1f} ± {statistics.stdev(bare_ts):.1f} | {km / bm:.3f} | {kmed / bmed:.3f} |")
    model.close()
    return lines


def kl_cost(args) -> list[str]:
    rng = np.random.default_rng(0)
    rows, vocab = args.kl_rows, args.vocab
    base = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    q = base + (rng.standard_normal((rows, vocab)) * 0.05).astype(np.float32)
    nxt = rng.integers(0, vocab, rows)
    lines = []
    for threads in sorted({1, args.threads}):
        reducer = Reducer(vocab, threads=threads)
        reducer.compare(base, reducer.base_rows(base, nxt), q, nxt)  # warm-up
        tb, tc = [], []
        for _ in range(args.kl_reps):
            t0 = time.perf_counter()
            rows_b = reducer.base_rows(base, nxt)
            t1 = time.perf_counter()
            reducer.compare(base, rows_b, q, nxt)
            t2 = time.perf_counter()
            tb.append(t1 - t0)
            tc.append(t2 - t1)
        reducer.close()
        per_b, per_c = 1e3 * statistics.median(tb) / rows, 1e3 * statistics.median(tc) / rows
        lines.append(f"| {vocab} | {threads} | {per_b:.3f} | {per_c:.3f} | "
                     f"{1e3 / (per_b + per_c):.0f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--type", default="f16")
    p.add_argument("--depth", type=int, default=512)
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=128)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--vocab", type=int, default=248320)
    p.add_argument("--kl-rows", type=int, default=256)
    p.add_argument("--kl-reps", type=int, default=5)
    args = p.parse_args()

    print_start()
    print(f"## Speed loop: kvsweep vs bare llama_decode (generated tiny model, {args.type} cache, "
          f"{args.threads} threads, {args.reps} alternating repetitions each)\n")
    print("| test | kvsweep t/s | bare loop t/s | ratio of means | ratio of medians |")
    print("|---|---|---|---|---|")
    for line in speed_overhead(args):
        print(line, flush=True)
    print(f"\n## KL reduction cost ({args.kl_rows} rows of random float32 logits, median of {args.kl_reps})\n")
    print("| vocabulary | threads | baseline pass ms/token | per compared cache ms/token | tokens/s (one compared cache) |")
    print("|---|---|---|---|---|")
    for line in kl_cost(args):
        print(line, flush=True)
    print_end()


if __name__ == "__main__":
    main()
