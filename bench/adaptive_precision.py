"""A demo-sized sweep with and without precision targets: wall time and the answers side by side.

    python bench/adaptive_precision.py [--rounds 1]

The matrix: the demo's (matrices/demo.toml) model, cache types (f16, bf16, q8_0, q4_0 and the
q8_0/q4_0 pair against an f32 baseline) and speed tests (pp128, tg32 at depths 0, 1024, 4096),
with two changes that make the fixed budget the posts' kind of budget: quality runs every
chunk of matrices/corpora/demo.txt at n_ctx 256 (no max_chunks: 27 chunks), and speed runs 10
repetitions. `max_contexts = 5` keeps the five compared caches in one unit, so the ranking
rule ranks all of them.

- fixed:    that matrix as it is (every chunk, 10 repetitions);
- adaptive: the same with `[quality] precision = { rank_confidence = 0.95, min_chunks = 4 }`
            and `[speed] precision = { rel_se = 0.02 }` (3 to 10 repetitions).

Each runs as `kvsweep run MATRIX --no-progress` in a fresh process (Ray's start and stop and
the report included), rounds alternating which goes first. Printed: wall times and their
ratio, chunks and repetitions run, the quality ranking by mean KL of both (the same?), and the
recommendations table of both reports (the same picks?).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start  # noqa: E402  (bench/machine.py)

MATRIX = """
name = "{name}"
[[models]]
name = "tiny-llama"
generate = {{ arch = "llama", seed = 0 }}
[cache]
symmetric = ["f16", "bf16", "q8_0", "q4_0"]
pairs = [["q8_0", "q4_0"]]
[quality]
corpus = "{corpus}"
n_ctx = [256]
baseline = "f32"
n_batch = 256
max_contexts = 5
{quality_precision}
[speed]
depths = [0, 1024, 4096]
n_prompt = 128
n_gen = 32
repetitions = 10
{speed_precision}
[runtime]
flash_attn = "on"
"""

VARIANTS = {
    "fixed": ("", ""),
    "adaptive": ("precision = { rank_confidence = 0.95, min_chunks = 4 }", "precision = { rel_se = 0.02 }"),
}


def run(name: str, work: Path) -> tuple[float, Path]:
    qp, sp = VARIANTS[name]
    matrix = work / f"{name}.toml"
    matrix.write_text(MATRIX.format(name=name, corpus=ROOT / "matrices" / "corpora" / "demo.txt",
                                    quality_precision=qp, speed_precision=sp))
    run_dir = work / f"run-{name}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kvsweep", "run", str(matrix), "--run-dir", str(run_dir),
                    "--no-progress"], check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, run_dir


def answers(run_dir: Path) -> dict:
    from kvsweep.analysis.db import connect

    con = connect(run_dir)
    try:
        ranking = [r[0] for r in con.execute(
            "SELECT config FROM quality WHERE config <> baseline ORDER BY kld_mean, config").fetchall()]
        chunks = sorted({r[0] for r in con.execute("SELECT n_chunks FROM quality").fetchall()})
        reps = [r[0] for r in con.execute("SELECT repetitions_run FROM speed").fetchall()]
        stop = con.execute("SELECT list(DISTINCT stop_reason ORDER BY stop_reason) FROM results "
                           "WHERE kind = 'quality'").fetchone()[0]
    finally:
        con.close()
    text = (run_dir / "report" / "report.md").read_text()
    table = re.search(r"\| Quality budget .*?\n\n", text, re.S).group(0)
    # the picks only: the configuration named in bold in each cell of the recommendations
    picks = [re.findall(r"\*\*([^*]+)\*\*", line) for line in table.splitlines()[2:]]
    return {"ranking": ranking, "chunks": chunks, "reps": reps, "stop": stop, "table": table, "picks": picks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    print_start()
    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    results: dict[str, list[dict]] = {n: [] for n in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = list(VARIANTS) if i % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                work = Path(tmp) / f"round{i}"
                work.mkdir(exist_ok=True)
                seconds, run_dir = run(name, work)
                times[name].append(seconds)
                results[name].append(answers(run_dir))
                print(f"round {i + 1}, {name}: {seconds:.1f} s")
    print("\n| | fixed | adaptive |\n|---|---|---|")
    f, a = sum(times["fixed"]), sum(times["adaptive"])
    print(f"| wall time, s ({args.rounds} round(s)) | {f:.1f} | {a:.1f} ({a / f:.2f} x) |")
    for key, label in (("chunks", "quality chunks per cell"), ("stop", "quality stop reasons")):
        print(f"| {label} | {results['fixed'][0][key]} | {results['adaptive'][0][key]} |")
    for name in VARIANTS:
        reps = [r for res in results[name] for r in res["reps"]]
        results[name][0]["rep_text"] = f"{min(reps)}-{max(reps)}, {sum(reps)} in all ({len(reps)} cells)"
    print(f"| speed repetitions per cell | {results['fixed'][0]['rep_text']} | {results['adaptive'][0]['rep_text']} |")
    for i in range(args.rounds):
        fr, ar = results["fixed"][i]["ranking"], results["adaptive"][i]["ranking"]
        print(f"| ranking by mean KL, round {i + 1} | {' < '.join(fr)} | {' < '.join(ar)} "
              f"({'same' if fr == ar else 'DIFFERENT'}) |")
        fp, ap = results["fixed"][i]["picks"], results["adaptive"][i]["picks"]
        print(f"| recommendation picks, round {i + 1} | {fp} | {ap} ({'same' if fp == ap else 'DIFFERENT'}) |")
    for name in VARIANTS:
        print(f"\n{name}, round 1 recommendations:\n\n{results[name][0]['table']}")
    print_end()


if __name__ == "__main__":
    main()
