"""The per-token KL reduction at a real vocabulary: ms per token per compared cache.

    python bench/kl_reduction.py [--vocab 248320] [--rows 128] [--repeats 5]

workers/kl_math.Reducer as the quality pass calls it: `base_rows` once per piece of `rows`
tokens (the baseline's logits), `compare` once per compared cache, on random logits shaped like
a model's (baseline N(0, 3), the compared cache the baseline plus N(0, 0.05) noise: a close
cache, the common case). Every implementation this host has: numpy, and the fused reduction
(workers/_kl_fused.c) in AVX2 and AVX-512; on 1 and 2 threads. The best of `repeats` runs is
printed (the machine is shared: the minimum is the least disturbed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start  # noqa: E402  (bench/machine.py)

from kvsweep.workers import kl_math  # noqa: E402
from kvsweep.workers.kl_math import Reducer  # noqa: E402


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=248_320)
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print_start()
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((args.rows, args.vocab)) * 3).astype(np.float32)
    q = (base + rng.standard_normal((args.rows, args.vocab)).astype(np.float32) * 0.05).astype(np.float32)
    nxt = rng.integers(0, args.vocab, args.rows)
    lib = kl_math.fused_library()
    impls = [("numpy", None)]
    if lib is not None:
        impls += [(f"fused-{name}", level) for level, name in ((2, "avx2"), (3, "avx512")) if lib.kvs_simd() >= level]
    best = lib.kvs_simd() if lib is not None else 0
    print(f"vocabulary {args.vocab:,}, {args.rows} rows per call, best of {args.repeats}\n")
    print("| implementation | threads | base_rows, ms/token | compare, ms/token per compared cache |")
    print("|---|---|---|---|")
    for name, level in impls:
        if level is not None:
            lib.kvs_set_simd(level)
        for threads in (1, 2):
            r = Reducer(args.vocab, threads=threads, fused=level is not None)
            rows = r.base_rows(base, nxt)
            b_ms = best_ms(lambda: r.base_rows(base, nxt), args.repeats) / args.rows
            c_ms = best_ms(lambda: r.compare(base, rows, q, nxt), args.repeats) / args.rows
            print(f"| {name} | {threads} | {b_ms:.3f} | {c_ms:.3f} |")
            r.close()
    if lib is not None:
        lib.kvs_set_simd(best)
    print_end()


if __name__ == "__main__":
    main()
