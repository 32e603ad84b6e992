"""kvsweep against the hand-made workflow: the same matrix run both ways, wall time and figures.

    bench/build_reference_tools.sh                       # once: llama-perplexity, llama-bench
    python bench/handmade.py --tools THAT_FOLDER [--vocab 0] [--rounds 2]

The matrix: the demo's (matrices/demo.toml) four symmetric cache types f16, bf16, q8_0, q4_0
(without its q8_0/q4_0 pair: 4 configurations) at its three depths 0, 1024, 4096, quality and
speed: quality against an f32 cache at n_ctx 256 (n_batch 256, 8 chunks of
matrices/corpora/demo.txt; the f32 cache's own PPL too), speed pp128 and tg32, 3 repetitions,
n_batch 2048, n_ubatch 512; flash attention on, 2 threads, -ngl 999. The model: the demo's
generated model (`--vocab 0`, 414 tokens), or the same with a larger vocabulary (`--vocab
248320`: Qwen3.5/3.6's, where logits files are large).

The hand-made way, as people loop it today, one process per cell, the model loaded by each:
- llama-perplexity once with the f32 cache and --kl-divergence-base (writes the baseline's
  logits file; prints the f32 PPL), then once per cache type with --kl-divergence;
- llama-bench once per (cache type, depth): -p 128 -n 32 -d DEPTH -r 3 -ctk T -ctv T, JSONL out.
Built from the very llama.cpp source llama-cpp-python compiled (bench/build_reference_tools.sh).
Timed: the sum of the processes' wall times, run one after the other (as a shell loop runs
them). llama.cpp's tools now and then lose their last log lines at exit (their log runs on a
thread); a run whose printout misses a figure is run again and only its first run is timed.

kvsweep's way: `kvsweep run MATRIX --no-progress --no-report` in a fresh process, timed from
start to exit; the time of Ray's start (ray.init), of starting the worker actor(s) and of
Ray's stop are taken from timers wrapped around those calls, so the figure is also given
without them. (`--no-report`: the hand-made way has no report either.)

Rounds alternate which way goes first, so load drift on a shared machine hits both alike.
Printed: per round and in total, the wall times and the ratio kvsweep / hand-made (target:
<= 0.5), then the figures side by side: PPL, mean KLD and same-top-p (docs/fidelity.md says
why same-top-p and KL tails differ in the last digits: llama-perplexity's 16-bit baseline),
and pp/tg t/s per cell with every sample of every round pooled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "matrices" / "corpora" / "demo.txt"
sys.path.insert(0, str(Path(__file__).parent))
import fidelity  # noqa: E402  (bench/fidelity.py: the llama-perplexity printout parsers)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start  # noqa: E402  (bench/machine.py)


def run_timed(cmd: list, wanted: set | None = None, parse=None, tries: int = 3) -> tuple[float, str, int]:
    """(seconds of the first run, the printout that has every wanted figure, reruns needed)."""
    first = None
    for attempt in range(tries):
        t0 = time.perf_counter()
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        first = seconds if first is None else first
        if out.returncode != 0:
            raise SystemExit(f"failed ({out.returncode}): {' '.join(map(str, cmd))}\n{out.stderr[-3000:]}")
        text = out.stdout + out.stderr
        if wanted is None or wanted <= parse(text).keys():
            return first, text, attempt
    raise SystemExit(f"no complete printout after {tries} runs: {' '.join(map(str, cmd))}")


def handmade(model: Path, a, work: Path) -> dict:
    tools = a.tools
    common = [tools / "llama-perplexity", "-m", model, "-f", CORPUS, "-c", a.n_ctx, "-b", a.q_batch,
              "-ub", a.q_batch, "--chunks", a.chunks, "-t", a.threads, "-fa", "on", "-ngl", 999]
    base_file = work / "base.kld"
    seconds, reruns, quality, speed = 0.0, 0, {}, {}
    s, text, r = run_timed(common + ["-ctk", a.baseline, "-ctv", a.baseline, "--kl-divergence-base", base_file],
                           {"ppl"}, fidelity.parse_ppl)
    seconds, reruns = seconds + s, reruns + r
    quality[a.baseline] = fidelity.parse_ppl(text)
    base_bytes = base_file.stat().st_size
    for t in a.types:
        cmd = common + ["-ctk", t, "-ctv", t, "--kl-divergence", "--kl-divergence-base", base_file]
        s, text, r = run_timed(cmd, set(fidelity.KLD_PATTERNS), fidelity.parse_kld)
        seconds, reruns = seconds + s, reruns + r
        quality[t] = fidelity.parse_kld(text)
    base_file.unlink()
    for t in a.types:
        for d in a.depths:
            cmd = [tools / "llama-bench", "-m", model, "-p", a.n_prompt, "-n", a.n_gen, "-d", d, "-r", a.reps,
                   "-b", a.batch, "-ub", a.ubatch, "-t", a.threads, "-fa", 1, "-ctk", t, "-ctv", t, "-ngl", 999,
                   "-o", "jsonl"]
            s, text, _ = run_timed(cmd)
            seconds += s
            for line in text.splitlines():
                if line.startswith("{"):
                    test = json.loads(line)
                    kind = "pp" if test["n_prompt"] else "tg"
                    speed[(t, d, kind)] = test["samples_ts"]
    processes = 1 + len(a.types) + len(a.types) * len(a.depths)
    return {"seconds": seconds, "reruns": reruns, "processes": processes, "base_file_bytes": base_bytes,
            "quality": quality, "speed": speed}


def write_matrix(path: Path, model: Path, a) -> Path:
    types = ", ".join(f'"{t}"' for t in a.types)
    path.write_text(f'''name = "handmade"
[[models]]
name = "tiny"
path = "{model}"
[cache]
symmetric = [{types}]
[quality]
corpus = "{CORPUS}"
n_ctx = [{a.n_ctx}]
max_chunks = {a.chunks}
baseline = "{a.baseline}"
n_batch = {a.q_batch}
[speed]
depths = [{", ".join(map(str, a.depths))}]
n_prompt = {a.n_prompt}
n_gen = {a.n_gen}
repetitions = {a.reps}
n_batch = {a.batch}
n_ubatch = {a.ubatch}
[runtime]
flash_attn = "on"
n_threads = {a.threads}
n_gpu_layers = 999
''')
    return path


def kvsweep_run(matrix: Path, run_dir: Path, a) -> dict:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, __file__, "--kvsweep-timed", "run", matrix, "--run-dir", run_dir, "--no-progress",
           "--no-report"] + (["--workers", str(a.kv_workers)] if a.kv_workers > 1 else [])
    t0 = time.perf_counter()
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"kvsweep run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    timers = json.loads(next(line for line in out.stderr.splitlines()[::-1] if line.startswith("KVSWEEP_TIMERS "))[15:])
    from kvsweep.analysis.db import connect

    con = connect(run_dir)
    cur = con.execute("SELECT type_k, ppl, kld_mean, same_top_p FROM quality")
    quality = {k: {"ppl": p, "kld_mean": kl, "same_top_p": st} for k, p, kl, st in cur.fetchall()}
    speed = {(t, d, kind): samples for t, d, kind, samples in con.execute(
        "SELECT type_k, n_depth, kind, samples_ts FROM speed").fetchall()}
    statuses = dict(con.execute("SELECT status, count(*) FROM cell_status GROUP BY 1").fetchall())
    return {"seconds": seconds, "timers": timers, "quality": quality, "speed": speed, "statuses": statuses}


def timed_cli(argv: list[str]) -> None:
    """`kvsweep ARGV` with timers around Ray's start and stop and the worker actors' start."""
    from kvsweep.orchestrator import cli, fleet

    spans: dict[str, float] = {}
    for name in ("ensure_ray", "create_slots", "shutdown"):
        original = getattr(fleet, name)

        def timed(*args, _o=original, _n=name, **kw):
            t0 = time.perf_counter()
            try:
                return _o(*args, **kw)
            finally:
                spans[_n] = spans.get(_n, 0.0) + time.perf_counter() - t0

        setattr(fleet, name, timed)
    try:
        code = cli.main(argv)
    finally:
        print("KVSWEEP_TIMERS " + json.dumps(spans), file=sys.stderr, flush=True)
    sys.exit(code)


def pooled(rounds: list[dict], key) -> list[float]:
    return [x for r in rounds for x in r["speed"].get(key, [])]


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tools", type=Path, default=Path.home() / ".cache/kvsweep/llama-ref/build/bin")
    p.add_argument("--vocab", type=int, default=0, help="0: the demo model's own vocabulary")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("/tmp/kvsweep-bench-handmade"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--types", default="f16,bf16,q8_0,q4_0")
    p.add_argument("--depths", default="0,1024,4096")
    p.add_argument("--baseline", default="f32")
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--q-batch", type=int, default=256)
    p.add_argument("--n-prompt", type=int, default=128)
    p.add_argument("--n-gen", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--kv-workers", type=int, default=1, help="kvsweep run --workers (1: as the demo runs)")
    if len(sys.argv) > 1 and sys.argv[1] == "--kvsweep-timed":
        timed_cli(sys.argv[2:])
        return
    a = p.parse_args()
    a.types = a.types.split(",")
    a.depths = [int(d) for d in a.depths.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    from kvsweep.workers.generated_models import ModelRecipe, cached_model

    model = cached_model(ModelRecipe(n_vocab=a.vocab))
    matrix = write_matrix(a.out / "matrix.toml", model, a)
    print_start()
    print(f"`python bench/handmade.py {' '.join(sys.argv[1:])}`; model {model.name} "
          f"({model.stat().st_size / 2**20:.0f} MiB)\n")

    # what one more tool process costs the hand-made way: start, load the model, one token
    probe = [a.tools / "llama-bench", "-m", model, "-p", 1, "-n", 0, "-r", 1, "-t", a.threads, "-o", "jsonl"]
    per_process = statistics.median(run_timed(probe)[0] for _ in range(5))

    hand, kv = [], []
    for r in range(a.rounds):
        order = ("kv", "hand") if r % 2 == 0 else ("hand", "kv")
        for who in order:
            if who == "hand":
                hand.append(handmade(model, a, a.out))
            else:
                kv.append(kvsweep_run(matrix, a.out / f"run-{r}", a))

    print("## Wall time\n")
    print("| round | hand-made s (processes) | kvsweep s | of which Ray start + worker start + Ray stop s "
          "| kvsweep without those s | kvsweep / hand-made | without start/stop / hand-made |")
    print("|---|---|---|---|---|---|---|")
    for r, (h, k) in enumerate(zip(hand, kv)):
        t = k["timers"]
        fixed = t.get("ensure_ray", 0) + t.get("create_slots", 0) + t.get("shutdown", 0)
        print(f"| {r + 1} | {h['seconds']:.2f} ({h['processes']}) | {k['seconds']:.2f} | "
              f"{t.get('ensure_ray', 0):.2f} + {t.get('create_slots', 0):.2f} + {t.get('shutdown', 0):.2f} "
              f"| {k['seconds'] - fixed:.2f} | {k['seconds'] / h['seconds']:.3f} | {(k['seconds'] - fixed) / h['seconds']:.3f} |")
    hs, ks = statistics.fmean(x["seconds"] for x in hand), statistics.fmean(x["seconds"] for x in kv)
    fixed = statistics.fmean(sum(x["timers"].get(n, 0) for n in ("ensure_ray", "create_slots", "shutdown")) for x in kv)
    print(f"| mean | {hs:.2f} | {ks:.2f} | {fixed:.2f} | {ks - fixed:.2f} | **{ks / hs:.3f}** | {(ks - fixed) / hs:.3f} |")
    reruns = sum(h["reruns"] for h in hand)
    print(f"\nOne tool process that loads the model and decodes one token (`llama-bench -p 1 -n 0 -r 1`): "
          f"{per_process:.2f} s (median of 5); the hand-made way starts {hand[0]['processes']}, kvsweep loads "
          "the model once per worker.")
    print(f"The baseline's logits file (--kl-divergence-base) was {hand[0]['base_file_bytes'] / 2**20:.1f} MiB; "
          f"llama-perplexity runs rerun for a lost printout (not timed): {reruns}. "
          f"kvsweep cells: {kv[0]['statuses']}.")

    print("\n## Quality (the last round of each)\n")
    hq, kq = hand[-1]["quality"], kv[-1]["quality"]
    print("| cache | PPL kvsweep | PPL llama-perplexity | same 4 digits | mean KLD kvsweep | mean KLD llama-perplexity "
          "| agree | same top p kvsweep | same top p llama-perplexity |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in [a.baseline] + a.types:
        k, h = kq.get(t, {}), hq.get(t, {})
        dec = h.get("decimals", {})
        if t == a.baseline:
            print(f"| {t} (baseline) | {fidelity.sig(k.get('ppl'))} | {fidelity.sig(h.get('ppl'))} "
                  f"| {fidelity.agree(k.get('ppl'), h.get('ppl'), None)} | | | | | |")
            continue
        print(f"| {t} | {fidelity.sig(k.get('ppl'))} | {fidelity.sig(h.get('ppl'))} "
              f"| {fidelity.agree(k.get('ppl'), h.get('ppl'), dec.get('ppl'))} "
              f"| {fidelity.sig(k.get('kld_mean'))} | {fidelity.sig(h.get('kld_mean'))} "
              f"| {fidelity.agree(k.get('kld_mean'), h.get('kld_mean'), dec.get('kld_mean'))} "
              f"| {fidelity.sig(k.get('same_top_p'))} | {fidelity.sig(h.get('same_top_p'))} |")

    print(f"\n## Speed: t/s, every sample of the {a.rounds} rounds pooled (mean ± sd)\n")
    print("| cache | depth | test | kvsweep | llama-bench | kvsweep / llama-bench | within 2 sd of the difference |")
    print("|---|---|---|---|---|---|---|")
    inside = total = 0
    ratios = []
    for t in a.types:
        for d in a.depths:
            for kind in ("pp", "tg"):
                km, ksd = mean_sd(pooled(kv, (t, d, kind)))
                bm, bsd = mean_sd(pooled(hand, (t, d, kind)))
                ok = abs(km - bm) <= 2 * (ksd * ksd + bsd * bsd) ** 0.5
                inside, total = inside + ok, total + 1
                ratios.append(km / bm)
                name = f"pp{a.n_prompt}" if kind == "pp" else f"tg{a.n_gen}"
                print(f"| {t} | {d} | {name} | {km:.1f} ± {ksd:.1f} | {bm:.1f} ± {bsd:.1f} | {km / bm:.3f} "
                      f"| {'yes' if ok else 'no'} |")
    print(f"\n{inside} of {total} speed figures agree within 2 standard deviations of their difference; "
          f"median kvsweep / llama-bench {statistics.median(ratios):.3f}, {sum(r < 1 for r in ratios)} of "
          f"{total} below 1.")
    print_end()
    def plain(run: dict) -> dict:
        return {**run, "speed": {"/".join(map(str, key)): v for key, v in run["speed"].items()}}

    (a.out / "handmade.json").write_text(json.dumps(
        {"hand": [plain(h) for h in hand], "kvsweep": [plain(k) for k in kv]}, default=str, indent=1))


if __name__ == "__main__":
    main()
