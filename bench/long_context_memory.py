"""Resident memory of one quality cell at long context: kvsweep's quality unit next to
llama-perplexity's KL mode, at a 248,320-token vocabulary.

    python bench/long_context_memory.py [--n-ctx 4096 16384 32768 65536] [--vocab 248320]
        [--tools ~/.cache/kvsweep/llama-ref/build/bin] [--n-batch 512] [--threads 2]

Per n_ctx, one chunk (the first n_ctx tokens of matrices/corpora/demo.txt repeated), an f16
baseline and a q8_0 compared cache, flash attention on:
- kvsweep: the real quality pass (workers/quality.py, as bench/quality_memory.py runs it: a
  baseline and a compared context side by side, each decoding n_batch pieces reduced at once),
  in a fresh process; peak RSS above the loaded model (VmHWM, reset after loading).
- llama-perplexity (bench/build_reference_tools.sh builds it from the same llama.cpp): its two
  runs, `--kl-divergence-base FILE` with the f16 cache (writes the baseline's 16-bit log-probs)
  and `--kl-divergence` with q8_0 (reads them); the peak RSS of each (wait4's ru_maxrss) and the
  file's size. A run whose memory its own source (tools/perplexity/perplexity.cpp: it reserves
  n_ctx x n_vocab floats of logits per chunk, plus, for the second run, a 16-bit copy of the
  scored half) puts above this host's available memory is not started: the table gives that
  arithmetic instead, marked as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start  # noqa: E402  (bench/machine.py)

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
GIB = 1024 * MIB


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def corpus_file(model_path: str, n_tokens: int, out: Path) -> Path:
    """The demo corpus repeated until it tokenizes to at least n_tokens."""
    from kvsweep.workers import llama_api

    text = (ROOT / "matrices" / "corpora" / "demo.txt").read_text()
    vocab = llama_api.Model(model_path, vocab_only=True)
    per = len(vocab.tokenize_corpus(text))
    vocab.close()
    out.write_text("\n".join([text] * (n_tokens // per + 2)))
    return out


def run_measured(cmd: list[str]) -> tuple[int, int, str]:
    """(exit status, peak RSS in bytes, last lines of output) of one child process."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        log.seek(0)
        tail = "".join(log.readlines()[-5:])
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, tail


def perplexity_needs(n_ctx: int, n_vocab: int, compare: bool) -> int:
    """Bytes llama-perplexity's KL mode holds per its source, beyond the model and contexts:
    the chunk's logits (n_ctx x n_vocab floats, reserved when n_batch < n_ctx) and, in the
    --kl-divergence run, the baseline's 16-bit log-probs of the scored half."""
    logits = n_ctx * n_vocab * 4
    nv = 2 * ((n_vocab + 1) // 2) + 4
    return logits + ((n_ctx - 1 - n_ctx // 2) * nv * 2 if compare else 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-ctx", type=int, nargs="+", default=[4096, 16384, 32768, 65536])
    p.add_argument("--vocab", type=int, default=248320)
    p.add_argument("--n-batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tools", type=Path, default=Path.home() / ".cache/kvsweep/llama-ref/build/bin")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kvsweep-long-context")
    a = p.parse_args()

    from kvsweep.workers.generated_models import ModelRecipe, cached_model

    model = str(cached_model(ModelRecipe(n_vocab=a.vocab)))
    a.work.mkdir(parents=True, exist_ok=True)
    print_start()
    print(f"`python bench/long_context_memory.py {' '.join(sys.argv[1:])}`\n")
    print("| n_ctx | scored tokens | kvsweep: llama.cpp buffers (2 contexts) | kvsweep: peak RSS above the model "
          "| of which kvsweep's own | kvsweep seconds | llama-perplexity base file | llama-perplexity RSS "
          "(base run / KL run) |")
    print("|---|---|---|---|---|---|---|---|")
    for n_ctx in a.n_ctx:
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "quality_memory.py"), "--one", "1",
                              "--vocab", str(a.vocab), "--n-ctx", str(n_ctx), "--n-batch", str(a.n_batch),
                              "--threads", str(a.threads)], capture_output=True, text=True, check=True)
        k = json.loads(out.stdout.strip().splitlines()[-1])

        corpus = corpus_file(model, 2 * n_ctx + 16, a.work / f"corpus-{n_ctx}.txt")
        base_file = a.work / f"base-{n_ctx}.kld"
        common = [a.tools / "llama-perplexity", "-m", model, "-f", corpus, "-c", n_ctx, "-b", a.n_batch,
                  "-ub", min(512, a.n_batch), "-t", a.threads, "-fa", "on", "--chunks", 1]
        cells = []
        for compare in (False, True):
            need = perplexity_needs(n_ctx, a.vocab, compare)
            if need > 0.8 * available_bytes():
                cells.append(f"not run: needs ≥ {need / GIB:.1f} GiB by its source "
                             f"(this host has {available_bytes() / GIB:.1f} GiB available)")
                if not compare:
                    break
                continue
            extra = (["-ctk", "q8_0", "-ctv", "q8_0", "--kl-divergence", "--kl-divergence-base", base_file]
                     if compare else ["-ctk", "f16", "-ctv", "f16", "--kl-divergence-base", base_file])
            code, rss, tail = run_measured(common + extra)
            cells.append(f"{rss / GIB:.2f} GiB" if code == 0 else f"failed ({code}): {tail.strip()[-120:]}")
        file_size = (f"{base_file.stat().st_size / GIB:.2f} GiB" if base_file.exists()
                     else f"({(n_ctx - 1 - n_ctx // 2) * (2 * ((a.vocab + 1) // 2) + 4) * 2 / GIB:.2f} GiB "
                          "by its format)")
        print(f"| {n_ctx} | {k['scored_tokens']} | {k['llama_buffers_mib']:.0f} MiB | {k['peak_extra_mib']:.0f} MiB "
              f"| {k['kvsweep_own_mib']:.0f} MiB | {k['seconds']:.0f} | {file_size} | {' / '.join(cells)} |",
              flush=True)
        base_file.unlink(missing_ok=True)
    print_end()


if __name__ == "__main__":
    main()
