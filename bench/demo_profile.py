"""Where `kvsweep run matrices/demo.toml` spends its wall time.

    python bench/demo_profile.py [--matrix matrices/demo.toml]

Runs the sweep in this process (the same code path as the CLI: orchestrator/sweep.run_sweep,
into a fresh run directory) with timers wrapped around its phases on the driver:

- Ray start (fleet.ensure_ray) and stop (fleet.shutdown), the worker actor's start and its
  host probe / capability check (fleet.create_slots);
- inputs (resolve_inputs: generated model, sha256 of files, corpus tokenized), planning
  (expand, history, memory predictions), the scheduler loop, the report (write_report).

The scheduler loop is split by what the worker reported: the cells' own durations (summed per
kind from the attempt rows: decoding, fills, the KL reduction) and the rest of the loop
(dispatch, events, Parquet writes, and the time the worker loads the model between units).
The KL reduction's share of the quality cells is timed separately: the quality pass is run once
more in this process on the demo's quality unit with the reducer's two calls timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start, quiet_logs  # noqa: E402  (bench/machine.py)

spans: dict[str, float] = defaultdict(float)


def timed(module, name: str, label: str) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kw):
        t0 = time.perf_counter()
        try:
            return original(*args, **kw)
        finally:
            spans[label] += time.perf_counter() - t0

    setattr(module, name, wrapper)


def reduction_share(matrix_path: Path) -> tuple[float, float]:
    """(seconds in the reducer, seconds of the whole quality pass) for the demo's quality cells,
    run here in one unit."""
    from kvsweep.orchestrator.inputs import resolve_inputs
    from kvsweep.orchestrator.matrix import load_matrix
    from kvsweep.orchestrator.plan import expand
    from kvsweep.workers import llama_api
    from kvsweep.workers.kl_math import Reducer
    from kvsweep.workers.quality import run_quality_group

    matrix = load_matrix(matrix_path)
    inputs = resolve_inputs(matrix)
    cells = [c for c in expand(matrix, inputs, ["x"]) if c.kind == "quality"]
    model = llama_api.Model(cells[0].model_path)
    tokens = model.tokenize_corpus(inputs.corpus_text)
    reducer = Reducer(model.info.n_vocab, threads=2)
    spent = [0.0]
    for name in ("base_rows", "compare"):
        original = getattr(reducer, name)

        def wrapper(*args, _o=original, **kw):
            t0 = time.perf_counter()
            try:
                return _o(*args, **kw)
            finally:
                spent[0] += time.perf_counter() - t0

        setattr(reducer, name, wrapper)
    t0 = time.perf_counter()
    group = run_quality_group(model, cells, tokens, 2, reducer)
    while True:
        try:
            next(group)
        except StopIteration:
            break
    total = time.perf_counter() - t0
    model.close()
    return spent[0], total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matrix", type=Path, default=ROOT / "matrices" / "demo.toml")
    a = p.parse_args()
    quiet_logs()
    from kvsweep.analysis import report
    from kvsweep.orchestrator import fleet, sweep
    from kvsweep.orchestrator.sweep import RunOptions, run_sweep

    timed(fleet, "ensure_ray", "Ray start")
    timed(fleet, "shutdown", "Ray stop")
    timed(fleet, "create_slots", "worker actor start (probe, capability check)")
    timed(sweep, "resolve_inputs", "inputs (model, sha256, corpus)")
    timed(sweep, "expand", "planning: expand")
    timed(sweep, "read_history", "planning: history")
    timed(sweep.memory_plan, "predictions", "planning: memory predictions")
    timed(sweep.Scheduler, "run", "scheduler loop")
    timed(report, "write_report", "report (SQL, charts, Markdown, HTML)")
    print_start()
    print(f"`python bench/demo_profile.py {' '.join(sys.argv[1:])}`\n")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_sweep(a.matrix, RunOptions(run_dir=Path(tmp) / "run", progress=False))
        wall = time.perf_counter() - t0
        from kvsweep.analysis.db import connect

        con = connect(result.run_dir)
        # the cells of a quality unit share its start and end: count each unit once
        cells = dict(con.execute(
            "SELECT kind, sum(d) FROM (SELECT kind, started_at, max(duration_s) AS d FROM attempts "
            "GROUP BY kind, started_at) GROUP BY kind").fetchall())
        con.close()
    reduce_s, quality_s = reduction_share(a.matrix)
    loop = spans.pop("scheduler loop")
    print("| phase | seconds | share of the run |\n|---|---|---|")
    quality, speed = cells.get("quality", 0.0), cells.get("pp", 0.0) + cells.get("tg", 0.0)
    order = ["Ray start", "worker actor start (probe, capability check)", "inputs (model, sha256, corpus)",
             "planning: expand", "planning: history", "planning: memory predictions"]
    rows = [(label, spans.get(label, 0.0)) for label in order]
    rows += [("scheduler loop: quality units (decoding and KL reduction)", quality),
             ("scheduler loop: speed cells (fills and timed repetitions)", speed),
             ("scheduler loop: the rest (dispatch, events, Parquet, model loads)", loop - quality - speed),
             ("report (SQL, charts, Markdown, HTML)", spans.get("report (SQL, charts, Markdown, HTML)", 0.0)),
             ("Ray stop", spans.get("Ray stop", 0.0))]
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} | {100 * seconds / wall:.1f}% |")
    other = wall - sum(spans.values()) - loop
    print(f"| other (lock, manifest, plan file, ...) | {other:.2f} | {100 * other / wall:.1f}% |")
    print(f"| **wall time** | **{wall:.2f}** | 100% |")
    print(f"\nThe KL reduction, timed in this process on the same quality unit: {reduce_s:.2f} s of its "
          f"{quality_s:.2f} s ({100 * reduce_s / quality_s:.1f}%).")
    print_end()


if __name__ == "__main__":
    main()
