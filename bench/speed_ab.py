"""Interleaved A/B of speed figures: kvsweep's speed cell against llama-bench, cell by cell.

    bench/build_reference_tools.sh                   # once: llama-bench from the same llama.cpp
    python bench/speed_ab.py --tools THAT_FOLDER [--rounds 3]

The 24 cells of bench/handmade.py's speed part (the demo's generated model; f16, bf16, q8_0,
q4_0 caches; depths 0, 1024, 4096; pp128 and tg32; 3 repetitions, n_batch 2048, n_ubatch 512,
flash attention on, 2 threads), each measured three ways, one right after the other, in an
order that rotates from cell to cell and round to round (so drift and warm-up hit all alike):

- ray:        a one-cell work unit on kvsweep's worker actor in an embedded Ray cluster, as
              `kvsweep run` measures it (workers/speed.py in a Ray worker process);
- in-process: workers/speed.run_speed_cell in this process (no Ray), same code;
- llama-bench: one `llama-bench -m MODEL -p 128 -n 0 -d D -r 3 -ctk T -ctv T ...` process.

Printed: per cell, the median t/s over rounds of each, the ratios to llama-bench, and over the
24 cells the median ratio and how many are below 1 (a sign test: 24 coin flips fall 18 or
more on one side with probability 1.1%), for ray and for in-process separately, so a bias can
be traced to the Ray worker's process or to the measuring code.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start, quiet_logs  # noqa: E402  (bench/machine.py)

TYPES = ("f16", "bf16", "q8_0", "q4_0")
DEPTHS = (0, 1024, 4096)
TESTS = (("pp", 128, 0), ("tg", 0, 32))


def cells(model: Path, sha: str, threads: int, reps: int):
    from kvsweep.cells import GENERATION, PROMPT, Cell

    out = []
    for t in TYPES:
        for d in DEPTHS:
            for kind, n_prompt, n_gen in TESTS:
                out.append(Cell(kind=PROMPT if kind == "pp" else GENERATION, model_name="ab", model_path=str(model),
                                model_sha256=sha, type_k=t, type_v=t, n_depth=d, n_prompt=n_prompt, n_gen=n_gen,
                                repetitions=reps, n_batch=2048, n_ubatch=512, n_threads=threads, host_class="ab"))
    return out


def llama_bench(tools: Path, model: Path, cell, threads: int) -> float:
    cmd = [tools / "llama-bench", "-m", model, "-p", cell.n_prompt, "-n", cell.n_gen, "-d", cell.n_depth,
           "-r", cell.repetitions, "-b", 2048, "-ub", 512, "-t", threads, "-fa", 1, "-ctk", cell.type_k,
           "-ctv", cell.type_v, "-ngl", 999, "-o", "jsonl"]
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return rows[-1]["avg_ts"]


def ray_cell(slot, cell) -> float:
    import ray

    from kvsweep.cells import WorkUnit
    from kvsweep.messages import Finished

    unit = WorkUnit(f"ab-{cell.cell_id}", [cell], cell.model_sha256, host_class=cell.host_class)
    for ref in slot.actor.run_unit.remote(unit, {}):
        event = ray.get(ref)
        if isinstance(event, Finished):
            assert event.outcome.status == "ok", event.outcome.error_message
            return event.outcome.metrics["avg_ts"]
    raise RuntimeError("the worker sent no result")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tools", type=Path, required=True, help="the folder with llama-bench")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    quiet_logs()
    import os

    os.environ["KVSWEEP_BUSY_LIMIT"] = "off"  # figures are compared here, not judged
    from kvsweep.hashing import file_sha256
    from kvsweep.orchestrator import fleet
    from kvsweep.workers import llama_api
    from kvsweep.workers.generated_models import ModelRecipe, cached_model
    from kvsweep.workers.speed import DepthStateCache, run_speed_cell

    model_path = cached_model(ModelRecipe())
    todo = cells(model_path, file_sha256(model_path), a.threads, a.reps)
    print_start()
    print(f"`python bench/speed_ab.py {' '.join(sys.argv[1:])}`\n")
    fleet.start_embedded(n_workers=1, num_cpus=2)
    slot = fleet.create_slots(n_threads=a.threads)[0]
    model = llama_api.Model(str(model_path))
    ways = ("ray", "in-process", "llama-bench")
    got: dict[tuple, dict[str, list[float]]] = {c.cell_id: {w: [] for w in ways} for c in todo}
    try:
        for r in range(a.rounds):
            for i, cell in enumerate(todo):
                k = (i + r) % 3
                for way in ways[k:] + ways[:k]:
                    if way == "ray":
                        ts = ray_cell(slot, cell)
                    elif way == "in-process":
                        ts = run_speed_cell(model, cell, a.threads, DepthStateCache(), busy_limit=None).metrics["avg_ts"]
                    else:
                        ts = llama_bench(a.tools, model_path, cell, a.threads)
                    got[cell.cell_id][way].append(ts)
            print(f"round {r + 1} of {a.rounds} done", file=sys.stderr)
    finally:
        model.close()
        fleet.shutdown()

    print("| cache | depth | test | ray t/s | in-process t/s | llama-bench t/s | ray / llama-bench | in-process / llama-bench |")
    print("|---|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {"ray": [], "in-process": []}
    for cell in todo:
        med = {w: statistics.median(got[cell.cell_id][w]) for w in ways}
        for w in ratios:
            ratios[w].append(med[w] / med["llama-bench"])
        print(f"| {cell.type_k} | {cell.n_depth} | {cell.test_name.split(' ')[0]} | {med['ray']:.1f} | "
              f"{med['in-process']:.1f} | {med['llama-bench']:.1f} | {med['ray'] / med['llama-bench']:.3f} | "
              f"{med['in-process'] / med['llama-bench']:.3f} |")
    print()
    for w, rs in ratios.items():
        below = sum(x < 1 for x in rs)
        n = len(rs)
        tail = min(below, n - below)
        p_two = min(1.0, 2 * sum(math.comb(n, j) for j in range(tail + 1)) / 2**n)
        print(f"{w} / llama-bench over {n} cells: median {statistics.median(rs):.3f}, "
              f"{below} below 1 (sign test, two-sided p = {p_two:.3f})")
    print_end()


if __name__ == "__main__":
    main()
