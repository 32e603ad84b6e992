"""kvsweep next to llama.cpp's own llama-perplexity and llama-bench, same build, same work.

    bench/build_reference_tools.sh            # once: builds the two tools (prints their folder)
    python bench/fidelity.py --tools DIR      # DIR: that folder

One quality cell (PPL, KL divergence, top-1 agreement of each cache type against an f16 cache)
and one speed cell (pp and tg at a depth) are measured by `kvsweep run` and by the reference
tools, with the same generated model file, corpus, context, batch sizes, threads, flash
attention and cache types; the figures are printed side by side (Markdown) and written to
OUT/fidelity.json. Flags are chosen so both tools do the same work: llama-perplexity runs
n_batch/n_ctx chunks as parallel sequences when n_batch > n_ctx, so -b is n_ctx (kvsweep
decodes one chunk at a time); llama-bench gets -ngl 999 as kvsweep does.

The speed cell runs `--rounds` times, alternating which tool goes first, so load drift on a
shared machine hits both alike; all samples are kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "matrices" / "corpora" / "demo.txt"
COMPARE = ROOT / "tests" / "data" / "llama_cpp" / "compare-llama-bench.py"


def sh(cmd: list, tries: int = 1, **kw) -> subprocess.CompletedProcess:
    for attempt in range(tries):
        print("$", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
        if out.returncode == 0:
            return out
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
    raise SystemExit(f"command failed ({out.returncode}): {cmd[0]}")


# -- llama-perplexity's printout ------------------------------------------------------------
_NUM = r"(-?[\d.]+(?:e[-+]?\d+)?|nan|inf)"
KLD_PATTERNS = {
    "ppl": rf"Mean PPL\(Q\)\s*:\s*{_NUM}\s*±\s*{_NUM}",
    "ppl_base": rf"Mean PPL\(base\)\s*:\s*{_NUM}\s*±\s*{_NUM}",
    "ln_ppl_cor": rf"Cor\(ln\(PPL\(Q\)\), ln\(PPL\(base\)\)\):\s*{_NUM}%",
    "ln_ppl_ratio": rf"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{_NUM}\s*±\s*{_NUM}",
    "kld_mean": rf"Mean\s+KLD:\s*{_NUM}\s*±\s*{_NUM}",
    "kld_max": rf"Maximum KLD:\s*{_NUM}",
    "kld_p99": rf"99\.0%\s+KLD:\s*{_NUM}",
    "kld_median": rf"Median\s+KLD:\s*{_NUM}",
    "kld_min": rf"Minimum KLD:\s*{_NUM}",
    "dp_mean": rf"Mean\s+Δp:\s*{_NUM}\s*±\s*{_NUM}\s*%",
    "dp_rms": rf"RMS Δp\s*:\s*{_NUM}\s*±\s*{_NUM}\s*%",
    "same_top_p": rf"Same top p:\s*{_NUM}\s*±\s*{_NUM}\s*%",
}
PERCENT = {"ln_ppl_cor", "dp_mean", "dp_rms", "same_top_p"}  # printed in %


def _decimals(printed: str, percent: bool) -> int:
    digits = len(printed.split(".")[1]) if "." in printed else 0
    return digits + (2 if percent else 0)


def parse_kld(text: str) -> dict:
    """Figures and, under "decimals", how many decimals the tool printed for each."""
    out, decimals = {}, {}
    for key, pattern in KLD_PATTERNS.items():
        m = re.search(pattern, text)
        if not m:
            continue
        scale = 0.01 if key in PERCENT else 1.0
        out[key] = float(m.group(1)) * scale
        decimals[key] = _decimals(m.group(1), key in PERCENT)
        if m.lastindex and m.lastindex > 1:
            out[f"{key}_unc"] = float(m.group(2)) * scale
            decimals[f"{key}_unc"] = _decimals(m.group(2), key in PERCENT)
    out["decimals"] = decimals
    return out


def parse_ppl(text: str) -> dict:
    m = re.search(rf"Final estimate: PPL = {_NUM} \+/- {_NUM}", text)
    return {"ppl": float(m.group(1)), "ppl_unc": float(m.group(2))} if m else {}


def emulated_quality(model_path: Path, a) -> dict:
    """kvsweep's own decoding (llama_api, as the quality pass decodes) with llama-perplexity's
    16-bit baseline arithmetic applied (bench/reference_arithmetic.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np
    import reference_arithmetic as ra

    from kvsweep.workers import llama_api

    model = llama_api.Model(str(model_path))
    tokens = model.tokenize_corpus(CORPUS.read_text())
    n_ctx, first = a.n_ctx, a.n_ctx // 2
    n_chunk = len(tokens) // n_ctx

    def scored_logits(cache: str):
        settings = llama_api.ContextSettings(cache, cache, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=a.ubatch,
                                             flash_attn="on", n_threads=a.threads)
        rows = []
        with llama_api.Context(model, settings) as ctx:
            for c in range(n_chunk):
                chunk = tokens[c * n_ctx:(c + 1) * n_ctx].copy()
                chunk[0] = model.info.bos
                ctx.clear()
                n_out = ctx.decode(chunk, 0, output_from=first)
                rows.append(ctx.logits(n_out)[: n_ctx - 1 - first].copy())
        return rows

    nxt = np.concatenate([tokens[c * n_ctx + first + 1:(c + 1) * n_ctx] for c in range(n_chunk)])
    base = [ra.store_base(x) for x in scored_logits(a.baseline)]
    out = {"base_file": compare_base_file(a.out / "base.kld", tokens, base)}
    for t in a.types:
        per = [ra.compare(b, x, nxt[i * (n_ctx - 1 - first):(i + 1) * (n_ctx - 1 - first)])
               for i, (b, x) in enumerate(zip(base, scored_logits(t)))]
        joined = ra.PerToken(*(np.concatenate([getattr(p, f) for p in per])
                               for f in ("nll", "nll_base", "kld", "dp", "same_top")))
        out[t] = ra.statistics(joined)
    model.close()
    return out


def compare_base_file(path: Path, tokens, base) -> dict:
    """llama-perplexity's --kl-divergence-base file against the same 16-bit encoding of
    kvsweep's baseline logits: same tokens? how many rows differ, by how many steps?"""
    import numpy as np

    raw = path.read_bytes()
    n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(raw[8:20], dtype=np.int32))
    start = 20 + 4 * n_ctx * n_chunk
    file_tokens = np.frombuffer(raw[20:start], dtype=np.int32)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = np.frombuffer(raw[start:], dtype=np.uint16).reshape(-1, nv)[:, 4:4 + n_vocab]
    mine = np.concatenate([b.q16 for b in base])
    steps = np.abs(rows.astype(np.int64) - mine.astype(np.int64))
    return {"tokens_equal": bool(np.array_equal(file_tokens, tokens[: n_ctx * n_chunk])),
            "rows": int(len(rows)), "rows_differing": int((steps.max(axis=1) > 0).sum()),
            "max_steps": int(steps.max())}


# -- runs -----------------------------------------------------------------------------------
def write_matrix(path: Path, model: Path, a, quality: bool, speed: bool) -> Path:
    types = ", ".join(f'"{t}"' for t in (a.types if quality else [a.speed_type]))
    text = f'''name = "fidelity"
[[models]]
name = "tiny"
path = "{model}"
[cache]
symmetric = [{types}]
[runtime]
flash_attn = "on"
n_threads = {a.threads}
n_gpu_layers = 999
'''
    if quality:
        text += f'''[quality]
corpus = "{CORPUS}"
n_ctx = [{a.n_ctx}]
baseline = "{a.baseline}"
n_batch = {a.n_ctx}
n_ubatch = {a.ubatch}
'''
    if speed:
        text += f'''[speed]
depths = [{a.depth}]
n_prompt = {a.n_prompt}
n_gen = {a.n_gen}
repetitions = {a.reps}
n_batch = {a.batch}
n_ubatch = {a.ubatch}
'''
    path.write_text(text)
    return path


def kvsweep(*args) -> subprocess.CompletedProcess:
    # a second try resumes the run: on a shared machine another user's `ray stop` can end
    # the embedded cluster mid-run
    return sh([sys.executable, "-m", "kvsweep", *args], tries=2, cwd=ROOT)


def kvsweep_quality(out: Path, model: Path, a) -> dict:
    matrix = write_matrix(out / "quality.toml", model, a, quality=True, speed=False)
    kvsweep("run", matrix, "--run-dir", out / "run-quality", "--no-progress", "--no-report")
    from kvsweep.analysis.db import connect

    cur = connect(out / "run-quality").execute("SELECT * FROM quality")
    names = [d[0] for d in cur.description]
    return {row["type_k"]: row for row in (dict(zip(names, r)) for r in cur.fetchall())}


def kvsweep_speed(out: Path, model: Path, a, round_no: int) -> list[dict]:
    matrix = write_matrix(out / "speed.toml", model, a, quality=False, speed=True)
    run_dir = out / f"run-speed-{round_no}"
    kvsweep("run", matrix, "--run-dir", run_dir, "--no-progress", "--no-report")
    from kvsweep.analysis.export import speed_tests

    return speed_tests(run_dir)


def _complete(cmd: list, parse, wanted: set, log: Path, tries: int = 3) -> dict:
    """Run a llama.cpp tool until its printout has every wanted figure: its log goes through a
    background thread (common/log.cpp) and the last lines are now and then lost at exit."""
    for _ in range(tries):
        out = sh(cmd)
        log.write_text(out.stdout + out.stderr)
        parsed = parse(out.stdout + out.stderr)
        if wanted <= parsed.keys():
            return parsed
    return parsed


def reference_quality(out: Path, model: Path, tools: Path, a) -> dict:
    common = [tools / "llama-perplexity", "-m", model, "-f", CORPUS, "-c", a.n_ctx, "-b", a.n_ctx,
              "-ub", a.ubatch, "-t", a.threads, "-fa", "on", "-ngl", 999]
    base_file = out / "base.kld"
    base = ["-ctk", a.baseline, "-ctv", a.baseline]
    sh(common + base + ["--kl-divergence-base", base_file])  # writes the 16-bit baseline
    plain = _complete(common + base, parse_ppl, {"ppl"}, out / "llama-perplexity-plain.log")
    results = {a.baseline: {"baseline_run": plain}}
    for t in a.types:
        cmd = common + ["-ctk", t, "-ctv", t, "--kl-divergence", "--kl-divergence-base", base_file]
        parsed = _complete(cmd, parse_kld, set(KLD_PATTERNS), out / f"llama-perplexity-{t}.log")
        results.setdefault(t, {}).update(parsed)
    return results


def reference_speed(out: Path, model: Path, tools: Path, a) -> list[dict]:
    text = sh([tools / "llama-bench", "-m", model, "-p", a.n_prompt, "-n", a.n_gen, "-d", a.depth,
               "-r", a.reps, "-b", a.batch, "-ub", a.ubatch, "-t", a.threads, "-fa", 1,
               "-ctk", a.speed_type, "-ctv", a.speed_type, "-ngl", 999, "-o", "jsonl"])
    return [json.loads(line) for line in text.stdout.splitlines() if line.startswith("{")]


# -- report ---------------------------------------------------------------------------------
def sig(x: float | None, digits: int = 6) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def agree(kv: float | None, ref: float | None, decimals: int | None) -> str:
    """'yes' when both round to the same 4 significant digits; 'printed' when they agree to
    every decimal the reference printed (it prints fewer than 4 significant digits for small
    figures, e.g. 0.000036); otherwise no."""
    if kv is None or ref is None:
        return "n/a"
    if f"{kv + 0.0:.4g}" == f"{ref + 0.0:.4g}":
        return "yes"
    if decimals is not None and abs(kv - ref) <= 0.5 * 10.0 ** -decimals * (1 + 1e-9):
        return f"yes ({decimals} decimals printed)"
    return "**no**"


FIGURES = (("ppl", "PPL"), ("ppl_unc", "PPL uncertainty"), ("ppl_base", "PPL(base)"),
           ("ln_ppl_ratio", "mean ln(PPL(Q)/PPL(base))"), ("ln_ppl_cor", "Cor(ln PPL(Q), ln PPL(base))"),
           ("kld_mean", "mean KLD"), ("kld_mean_unc", "KLD uncertainty"), ("kld_median", "median KLD"),
           ("kld_p99", "99% KLD"), ("kld_max", "max KLD"), ("dp_mean", "mean Δp"), ("dp_rms", "RMS Δp"),
           ("same_top_p", "same top p"), ("same_top_p_unc", "same top p uncertainty"))
KV_NAMES = {"kld_mean_unc": "kld_unc", "same_top_p_unc": "same_top_unc"}


def quality_table(kv: dict, ref: dict, emu: dict, a) -> str:
    rows = ["| cache | figure | kvsweep (exact) | llama-perplexity | kvsweep = llama-perplexity | "
            "kvsweep's logits, llama-perplexity's 16-bit arithmetic | that = llama-perplexity |",
            "|---|---|---|---|---|---|---|"]
    for t in a.types:
        k, r, e = kv.get(t, {}), ref.get(t, {}), emu.get(t, {})
        dec = r.get("decimals", {})
        for key, label in FIGURES:
            kval, rval, ev = k.get(KV_NAMES.get(key, key)), r.get(key), e.get(key)
            rows.append(f"| {t} | {label} | {sig(kval)} | {sig(rval)} | {agree(kval, rval, dec.get(key))} "
                        f"| {sig(ev)} | {agree(ev, rval, dec.get(key))} |")
    base_run = ref.get(a.baseline, {}).get("baseline_run", {})
    kv_base = kv.get(a.baseline, {})
    rows.append(f"| {a.baseline} | PPL without --kl-divergence (llama-perplexity's plain run) "
                f"| {sig(kv_base.get('ppl'))} | {sig(base_run.get('ppl'))} "
                f"| {agree(kv_base.get('ppl'), base_run.get('ppl'), 4)} | | |")
    bf = emu.get("base_file")
    if bf:
        rows.append(f"\nThe baseline file llama-perplexity wrote (`--kl-divergence-base`) against the same "
                    f"16-bit encoding of kvsweep's {a.baseline} logits: tokens identical: {bf['tokens_equal']}; "
                    f"{bf['rows_differing']} of {bf['rows']} rows differ (largest difference "
                    f"{bf['max_steps']} steps of 1/65535).")
    return "\n".join(rows)


def pooled(tests: list[dict], n_prompt: int) -> list[float]:
    return [ts for t in tests if (t["n_prompt"] > 0) == (n_prompt > 0) for ts in t["samples_ts"]]


def speed_table(kv_rounds: list[list[dict]], ref_rounds: list[list[dict]], a) -> str:
    rows = ["| test | kvsweep t/s (mean ± sd, all samples) | llama-bench t/s | kvsweep / llama-bench | per-round means kvsweep | per-round means llama-bench |",
            "|---|---|---|---|---|---|"]
    for name, is_pp in ((f"pp{a.n_prompt} @ d{a.depth}", True), (f"tg{a.n_gen} @ d{a.depth}", False)):
        k = [ts for r in kv_rounds for ts in pooled(r, is_pp)]
        b = [ts for r in ref_rounds for ts in pooled(r, is_pp)]
        km, bm = statistics.fmean(k), statistics.fmean(b)
        per_k = ", ".join(f"{statistics.fmean(pooled(r, is_pp)):.1f}" for r in kv_rounds)
        per_b = ", ".join(f"{statistics.fmean(pooled(r, is_pp)):.1f}" for r in ref_rounds)
        rows.append(f"| {name} | {km:.1f} ± {statistics.stdev(k):.1f} | {bm:.1f} ± {statistics.stdev(b):.1f} "
                    f"| {km / bm:.3f} | {per_k} | {per_b} |")
    return "\n".join(rows)


def field_differences(reference: list[dict], ours: list[dict]) -> str:
    """Every llama-bench field (but the timings) where kvsweep's export of a test differs from
    llama-bench's own JSONL of the same test."""
    timing = {"test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts"}
    lines = []
    for ref in reference:
        mine = next(t for t in ours if (t["n_prompt"], t["n_gen"], t["n_depth"])
                    == (ref["n_prompt"], ref["n_gen"], ref["n_depth"]))
        if list(mine) != list(ref):
            lines.append(f"field order differs: {list(mine)} vs {list(ref)}")
        diff = [f"`{k}` {mine.get(k)!r} (llama-bench {ref[k]!r})" for k in ref
                if k not in timing and mine.get(k) != ref[k]]
        lines.append(f"{ref['n_prompt'] and 'pp' or 'tg'}: same fields in the same order; values differ only in "
                     + (", ".join(diff) or "nothing"))
    return "\n".join(f"- {line}" for line in lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tools", type=Path, default=Path.home() / ".cache/kvsweep/llama-ref/build/bin")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "fidelity")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--baseline", default="f16")
    p.add_argument("--types", default="f16,q8_0,q4_0", help="compared caches (the baseline type too: KL 0)")
    p.add_argument("--speed-type", default="q8_0")
    p.add_argument("--depth", type=int, default=512)
    p.add_argument("--n-prompt", type=int, default=128)
    p.add_argument("--n-gen", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="0: quality only")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--ubatch", type=int, default=512)
    a = p.parse_args()
    a.types = a.types.split(",")
    a.out.mkdir(parents=True, exist_ok=True)

    from kvsweep.workers.generated_models import ModelRecipe, generate_model

    model = a.out / "model.gguf"  # the bytes `kvsweep make-model` writes
    if not model.exists():
        generate_model(ModelRecipe(), model)

    kv_q = kvsweep_quality(a.out, model, a)
    ref_q = reference_quality(a.out, model, a.tools, a)
    emu_q = emulated_quality(model, a)
    kv_s, ref_s = [], []
    for i in range(a.rounds):
        first_kv = i % 2 == 0
        if first_kv:
            kv_s.append(kvsweep_speed(a.out, model, a, i))
        ref_s.append(reference_speed(a.out, model, a.tools, a))
        if not first_kv:
            kv_s.append(kvsweep_speed(a.out, model, a, i))

    sections = []
    if a.rounds:
        # llama.cpp's compare script on both tools' speed rows, kvsweep's labelled "kvsweep"
        from kvsweep.analysis.export import speed_tests, to_jsonl

        both = a.out / "speed-both.jsonl"
        both.write_text(to_jsonl([t for r in ref_s for t in r])
                        + to_jsonl([t for i in range(a.rounds)
                                    for t in speed_tests(a.out / f"run-speed-{i}", build_commit="kvsweep")]))
        ref_commit = ref_s[0][0]["build_commit"]
        compare = subprocess.run([sys.executable, COMPARE, "-t", "llama-bench", "-i", both,
                                  "-b", ref_commit, "-c", "kvsweep"], capture_output=True, text=True)
        sections = [
            f"## Speed: {a.speed_type}, {a.rounds} rounds x {a.reps} repetitions\n\n" + speed_table(kv_s, ref_s, a),
            "## `kvsweep export` against llama-bench's own JSONL, field by field\n\n"
            + field_differences(ref_s[0], speed_tests(a.out / "run-speed-0")),
            "## llama.cpp's compare-llama-bench.py on both (every round; kvsweep's rows via "
            "`kvsweep export --build-commit kvsweep`)\n\n" + (compare.stdout.strip() or compare.stderr.strip()),
        ]

    load = os.getloadavg()
    header = (f"{dt.date.today().isoformat()}, {platform.node()}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    report = "\n\n".join([
        f"# kvsweep vs llama.cpp's tools\n\n{header}\n\n`python bench/fidelity.py {' '.join(sys.argv[1:])}`",
        f"## Quality: n_ctx {a.n_ctx}, KL against {a.baseline}\n\n" + quality_table(kv_q, ref_q, emu_q, a),
        *sections,
    ])
    print(report)
    (a.out / "fidelity.md").write_text(report + "\n")
    (a.out / "fidelity.json").write_text(json.dumps(
        {"kvsweep_quality": kv_q, "reference_quality": ref_q, "emulated_quality": emu_q, "kvsweep_speed": kv_s,
         "reference_speed": ref_s, "args": {k: str(v) for k, v in vars(a).items()}},
        indent=1, default=str))


if __name__ == "__main__":
    main()
