"""Where the quality pass spends its time: inside llama_decode, or outside it (KL reduction,
copies, Parquet)?

    python bench/quality_overhead.py [--vocab 0 248320] [--reps 3]

Runs the real quality pass (workers/quality.run_quality_group, as a worker runs it) on the
demo's quality settings (matrices/demo.toml: baseline f32; f32, f16, bf16, q8_0, q4_0 and
q8_0/q4_0 caches; n_ctx 256, n_batch 256, 8 chunks; grouped into work units of at most
max_contexts = 4 compared caches by orchestrator/plan.make_units, as a sweep groups them) on a
generated model: the demo's own (`--vocab 0`: the built-in 414-token vocabulary) and the same
model with a 248,320-token vocabulary (Qwen3.5/3.6's). Each vocabulary in a fresh process.

Timed by wrapping functions (nothing in kvsweep changes):
- llama_decode: llama-cpp-python's binding of it, every call (on the CPU backend it computes
  synchronously; llama_get_logits, the synchronization point on a GPU, is timed with it);
- llama.cpp's other calls of the pass: context creation and freeing (llama_init_from_model,
  llama_free: KV cache and compute buffers), clearing the cache between chunks;
- KL reduction: kl_math.Reducer.base_rows and .compare;
- the rest of run_quality_group (Python bookkeeping, batch and per-token copies, the summary);
- what happens to the result after the pass: Ray's serialization of the Finished event with its
  per-token arrays (pickle, as Ray's serializer does for these objects), and the driver's
  Parquet write of the tokens (sink.tokens_table + the atomic Parquet write of a flush).
"Outside llama_decode" is everything but the first line, as a share of the whole (target:
at most 10% at the demo model's size); the share of kvsweep's own work (reduction, Python,
copies, serialization, Parquet: everything but llama.cpp's calls) is given too.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start  # noqa: E402  (bench/machine.py)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "matrices" / "demo.toml"


class Clock:
    def __init__(self):
        self.s: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        s, n = self.s, self.n

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                s[label] = s.get(label, 0.0) + time.perf_counter() - t0
                n[label] = n.get(label, 0) + 1

        setattr(owner, name, timed)


def one_run(vocab: int, threads: int) -> dict:
    """In its own process (main runs this through --one): the pass once, timed."""
    import llama_cpp

    from kvsweep.cells import Cell
    from kvsweep.hashing import file_sha256
    from kvsweep.orchestrator.matrix import load_matrix
    from kvsweep.orchestrator.plan import make_units
    from kvsweep.orchestrator.run_dir import atomic_write_parquet
    from kvsweep.orchestrator.scheduler import attempt_row
    from kvsweep.orchestrator.sink import tokens_table
    from kvsweep.workers import kl_math, llama_api
    from kvsweep.workers.generated_models import ModelRecipe, cached_model
    from kvsweep.workers.quality import run_quality_group
    from kvsweep.workers.runner import Finished

    matrix = load_matrix(DEMO)
    q = matrix.quality
    path = cached_model(ModelRecipe(n_vocab=vocab))
    model = llama_api.Model(str(path))
    text = q.corpus.read_text()
    tokens = model.tokenize_corpus(text)
    sha = file_sha256(path)
    configs = [(q.baseline, q.baseline), ("f16", "f16"), ("bf16", "bf16")] + [
        c for c in matrix.configs if c not in (("f16", "f16"), ("bf16", "bf16"))]
    cells = [Cell(kind="quality", model_name="tiny", model_path=str(path), model_sha256=sha, type_k=k, type_v=v,
                  n_ctx=q.n_ctx[0], max_chunks=q.max_chunks, corpus_sha256="c" * 64, baseline=q.baseline,
                  n_batch=q.n_batch, n_ubatch=q.n_ubatch, flash_attn=matrix.runtime.flash_attn)
             for k, v in configs]
    units = make_units(cells, q.max_contexts)
    reducer = kl_math.Reducer(model.info.n_vocab, threads=threads)

    clock = Clock()
    clock.wrap(llama_cpp, "llama_decode", "llama_decode")
    clock.wrap(llama_cpp, "llama_get_logits", "llama_decode")
    for name in ("llama_init_from_model", "llama_free", "llama_memory_clear", "llama_batch_init",
                 "llama_batch_free"):
        clock.wrap(llama_cpp, name, "llama.cpp: contexts, clear")
    clock.wrap(kl_math.Reducer, "base_rows", "KL reduction")
    clock.wrap(kl_math.Reducer, "compare", "KL reduction")

    outcomes = []
    t0 = time.perf_counter()
    for unit in units:
        group = run_quality_group(model, unit.cells, tokens, threads, reducer)
        while True:
            try:
                next(group)
            except StopIteration as stop:
                outcomes += stop.value
                break
    pass_s = time.perf_counter() - t0

    # what follows the pass: Ray ships each Finished event (pickle), the driver writes tokens
    t1 = time.perf_counter()
    shipped = [pickle.loads(pickle.dumps(Finished(o), protocol=5)) for o in outcomes]
    ship_s = time.perf_counter() - t1
    by_id = {c.cell_id: c for c in cells}
    with tempfile.TemporaryDirectory() as tmp:
        t2 = time.perf_counter()
        tables = [tokens_table(attempt_row(by_id[e.outcome.cell_id], e.outcome, None, "run", 1), e.outcome.tokens)
                  for e in shipped if e.outcome.tokens]
        import pyarrow as pa

        atomic_write_parquet(Path(tmp) / "part-x-000000.parquet", pa.concat_tables(tables))
        parquet_s = time.perf_counter() - t2
    bad = [o.status for o in outcomes if o.status != "ok"]
    assert not bad, bad
    n_scored = int(sum(o.metrics["n_tokens"] for o in outcomes if o.tokens is not None and o.cell_id != cells[0].cell_id))
    decode = clock.s.get("llama_decode", 0.0)
    ctx = clock.s.get("llama.cpp: contexts, clear", 0.0)
    kl = clock.s.get("KL reduction", 0.0)
    total = pass_s + ship_s + parquet_s
    return {
        "n_vocab": model.info.n_vocab, "units": len(units), "caches": len(cells), "threads": threads,
        "reducer_threads": reducer.threads, "scored_tokens_per_cache": int(outcomes[0].metrics["n_tokens"]),
        "llama_decode_calls": clock.n.get("llama_decode", 0),
        "pass_s": pass_s, "llama_decode_s": decode, "llama_other_s": ctx, "kl_s": kl,
        "python_s": pass_s - decode - ctx - kl, "ship_s": ship_s, "parquet_s": parquet_s, "total_s": total,
        "outside_share": (total - decode) / total, "kvsweep_share": (total - decode - ctx) / total,
        "compared_tokens": n_scored, "token_rows": int(sum(len(t) for t in tables)),
        "kld_q4_0": next(o.metrics["kld_mean"] for o in outcomes if by_id[o.cell_id].config == ("q4_0", "q4_0")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, nargs="+", default=[0, 248320])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="fresh processes per vocabulary (median reported)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        print(json.dumps(one_run(a.one, a.threads)))
        return
    print_start()
    print(f"`python bench/quality_overhead.py {' '.join(sys.argv[1:])}`\n")
    print("| n_vocab | pass s | llama_decode s | llama.cpp contexts/clear s | KL reduction s | Python, copies s "
          "| serialization s | Parquet s | outside llama_decode | kvsweep's own | runs (outside share each) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for vocab in a.vocab:
        runs = []
        for _ in range(a.reps):
            out = subprocess.run([sys.executable, __file__, "--one", str(vocab), "--threads", str(a.threads)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        runs.sort(key=lambda r: r["outside_share"])
        r = runs[len(runs) // 2]  # the median run by its share
        shares = ", ".join(f"{100 * x['outside_share']:.1f}%" for x in runs)
        print(f"| {r['n_vocab']} | {r['pass_s']:.2f} | {r['llama_decode_s']:.2f} | {r['llama_other_s']:.2f} "
              f"| {r['kl_s']:.2f} | {r['python_s']:.2f} | {r['ship_s']:.3f} | {r['parquet_s']:.3f} "
              f"| {100 * r['outside_share']:.1f}% | {100 * r['kvsweep_share']:.1f}% | {shares} |", flush=True)
        print(f"<!-- {json.dumps(r)} -->", file=sys.stderr)
    print_end()


if __name__ == "__main__":
    main()
