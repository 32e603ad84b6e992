"""A/B: tg t/s with a persistent CPU threadpool attached to the context (what kvsweep and
llama-bench do, workers/threadpool.py) against none (ggml then starts threads per graph).

    python bench/threadpool_ab.py [--reps 40] [--n-gen 32] [--type f16]

Alternates the two, repetition by repetition, on the demo's generated model at depth 0 (where
a token is shortest, so a per-graph cost shows most); prints median and sd of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

from kvsweep.workers import llama_api, threadpool
from kvsweep.workers.generated_models import ModelRecipe, cached_model
from kvsweep.workers.speed import RandomTokens, test_gen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--n-gen", type=int, default=32)
    p.add_argument("--type", default="f16")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    model = llama_api.Model(str(cached_model(ModelRecipe())))
    settings = llama_api.ContextSettings(type_k=a.type, type_v=a.type, n_ctx=a.n_gen + 8, n_batch=64,
                                         n_ubatch=64, flash_attn="on", n_threads=a.threads,
                                         cpu_threadpool=True)
    real = threadpool._api
    ts: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(a.reps):
        for pool in (True, False):
            threadpool._api = real if pool else (lambda: None)
            with llama_api.Context(model, settings) as ctx:
                rand = RandomTokens(model.info.n_vocab)
                test_gen(ctx, 1, rand)  # warm-up
                ctx.clear(data=False)
                t0 = time.perf_counter()
                test_gen(ctx, a.n_gen, rand)
                ts[pool].append(a.n_gen / (time.perf_counter() - t0))
    print(f"`python bench/threadpool_ab.py --reps {a.reps} --n-gen {a.n_gen} --type {a.type}`\n")
    print("| context | tg t/s median | sd |\n|---|---|---|")
    for pool in (True, False):
        print(f"| {'threadpool attached' if pool else 'no threadpool'} | {statistics.median(ts[pool]):.1f} "
              f"| {statistics.stdev(ts[pool]):.1f} |")
    print(f"\nratio of medians {statistics.median(ts[True]) / statistics.median(ts[False]):.3f}")


if __name__ == "__main__":
    main()
