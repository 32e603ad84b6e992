"""Resident memory of the quality pass at a 248K-token vocabulary, n_ctx 4096.

    python bench/quality_memory.py [--chunks 2 4] [--vocab 248320] [--n-ctx 4096] [--n-batch 512]

For each chunk count, in a fresh process: load a generated model with `--vocab` tokens, run
the real quality pass (workers/quality.py: a baseline context and one compared context, both
decoding each chunk in n_batch pieces, reduced at once by kl_math) and read the kernel's
peak-RSS counter (VmHWM; reset after the model is loaded through /proc/self/clear_refs).

Reported per run, in MiB:
- model: RSS after loading the model (weights are mmapped and counted as they are touched);
- llama.cpp buffers: what llama.cpp itself says it allocated for the two contexts (KV cache,
  compute buffers, from its log) plus their logits buffers (n_batch rows x n_vocab x 4 bytes
  each, allocated on the first decode);
- peak extra: peak RSS minus the model's RSS;
- kvsweep's own: peak extra minus llama.cpp's buffers: the reduction's temporaries, the
  per-token results, Python.
The corpus is matrices/corpora/demo.txt repeated until it holds the chunks asked for (the
generated vocabulary's extra tokens never occur in text, so it tokenizes as with the tiny one).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_start  # noqa: E402  (bench/machine.py)

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def one_run(chunks: int, vocab: int, n_ctx: int, n_batch: int, threads: int) -> dict:
    """Runs in its own process (see main), so peaks do not mix."""
    from kvsweep.cells import Cell
    from kvsweep.hashing import file_sha256
    from kvsweep.workers import llama_api
    from kvsweep.workers.generated_models import ModelRecipe, cached_model
    from kvsweep.workers.kl_math import Reducer
    from kvsweep.workers.quality import run_quality_group

    path = cached_model(ModelRecipe(n_vocab=vocab))
    model = llama_api.Model(str(path))
    text = (ROOT / "matrices" / "corpora" / "demo.txt").read_text()
    tokens = model.tokenize_corpus(text)
    reps = -(-(max(chunks, 2) * n_ctx + 1) // len(tokens))  # llama-perplexity needs 2 x n_ctx
    tokens = model.tokenize_corpus("\n".join([text] * max(reps, 1)))
    sha = file_sha256(path)
    cells = [Cell(kind="quality", model_name="big-vocab", model_path=str(path), model_sha256=sha,
                  type_k=t, type_v=t, n_ctx=n_ctx, max_chunks=chunks, corpus_sha256="c" * 64,
                  baseline="f16", n_batch=n_batch, n_ubatch=min(512, n_batch))
             for t in ("q8_0",)]
    reducer = Reducer(model.info.n_vocab, threads=threads)
    log = llama_api.LogCapture.install()
    rss_model = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    mark = log.mark()
    t0 = time.perf_counter()
    group = run_quality_group(model, cells, tokens, threads, reducer)
    while True:
        try:
            next(group)
        except StopIteration as stop:
            (outcome,) = stop.value
            break
    seconds = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    lines = log.since(mark)
    buffers = sum(float(m.group(1)) for line in lines
                  for m in [re.search(r"(?:KV|compute) buffer size\s*=\s*([\d.]+) MiB", line)] if m)
    logits = 2 * n_batch * model.info.n_vocab * 4 / MIB
    return {
        "chunks": chunks, "n_vocab": model.info.n_vocab, "n_ctx": n_ctx, "n_batch": n_batch,
        "scored_tokens": int(outcome.metrics["n_tokens"]), "status": outcome.status,
        "model_mib": rss_model / 1024, "llama_buffers_mib": buffers + logits,
        "peak_extra_mib": (peak - rss_model) / 1024,
        "kvsweep_own_mib": (peak - rss_model) / 1024 - buffers - logits,
        "seconds": seconds, "reducer_threads": reducer.threads, "kld_mean": outcome.metrics["kld_mean"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--vocab", type=int, default=248320)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--n-batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: a single run, JSON out
    a = p.parse_args()
    if a.one is not None:
        print(json.dumps(one_run(a.one, a.vocab, a.n_ctx, a.n_batch, a.threads)))
        return
    print_start()
    print(f"`python bench/quality_memory.py {' '.join(sys.argv[1:])}`\n")
    print("| chunks | scored tokens | n_vocab | n_ctx | n_batch | model RSS | llama.cpp buffers (2 contexts) "
          "| peak extra RSS | of which kvsweep's own | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for chunks in a.chunks:
        out = subprocess.run([sys.executable, __file__, "--one", str(chunks), "--vocab", str(a.vocab),
                              "--n-ctx", str(a.n_ctx), "--n-batch", str(a.n_batch), "--threads", str(a.threads)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['chunks']} | {r['scored_tokens']} | {r['n_vocab']} | {r['n_ctx']} | {r['n_batch']} "
              f"| {r['model_mib']:.0f} MiB | {r['llama_buffers_mib']:.0f} MiB | {r['peak_extra_mib']:.0f} MiB "
              f"| {r['kvsweep_own_mib']:.0f} MiB | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
