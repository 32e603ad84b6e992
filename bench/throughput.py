"""Orchestration throughput: cells dispatched, recorded to Parquet and accounted for, per second.

    python bench/throughput.py [--shape speed|quality|both] [--workers 4] [--out DIR]

Runs `run_sweep` (the code `kvsweep run` runs) on an embedded local Ray with the FAKE runner
(workers/fake_runner.py: every cell "finishes" at once with status ok and the flag
"fake-runner"; it measures nothing), so what is timed is kvsweep's own machinery: Ray actor
calls and streaming generators, the scheduler, the write-ahead log, the Parquet flushes.

Two matrices of exactly 10,000 cells (checked against the plan), on generated tiny models:
- speed:   10 models x 25 K/V configurations (5 K x 5 V) x 20 depths x (pp, tg):
           250 work units (a speed series per model and configuration) of 40 cells each;
- quality: 10 models x 25 configurations x 40 n_ctx values, max_contexts 4:
           2,400 work units of 4 or 5 cells (a baseline pass shared by up to 4 caches).
A third shape, `trickle`, is about the number of files rather than the rate: cells slower
than the flush interval, so that nearly every flush writes a file of a few attempts, as a
real sweep of cells taking seconds to minutes does. Time is scaled down 50 times so that it
runs in minutes: the speed matrix with every fake cell taking 0.05 s, a flush interval of
0.02 s, and the sink's grace before deleting files a merge replaced scaled alike (120 s ->
2.4 s; orchestrator/sink.MERGE_GRACE_S): as many flushes happen within a grace period as at
the defaults. Reported: flushes that wrote a file, the most attempts files on disk at once and
the most that readers count (kvsweep/parts.live_parts), sampled every 0.1 s, and the files left.

Reported per shape, from timers wrapped around run_sweep's own phases:
- scheduler: Scheduler.run from its start until its sink is closed (every attempt in Parquet):
  the dispatched -> recorded rate, the figure the target is about (>= 300 cells/s);
- end to end: the whole run_sweep call (Ray start, inputs, plan, history, scheduler, Ray stop),
  and the same without Ray's own start and stop;
- Parquet files written (attempts + tokens), and flushes per second of scheduler time;
- accounting: attempts in Parquet = 10,000, one per planned cell, every one ok and flagged
  fake-runner, no attempt id twice, no write-ahead log left.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start, quiet_logs  # noqa: E402  (bench/machine.py)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "matrices" / "corpora" / "demo.txt"
K_TYPES = ["f16", "q8_0", "q5_0", "q4_1", "q4_0"]
TRICKLE_SCALE = 0.02  # the trickle shape's time scale: 1 s of a real sweep is 0.02 s here


def matrix_text(shape: str, models: int) -> str:
    types = ", ".join(f'"{t}"' for t in K_TYPES)
    text = f'name = "throughput-{shape}"\n'
    for seed in range(models):
        text += f'[[models]]\nname = "m{seed}"\ngenerate = {{ arch = "llama", seed = {seed} }}\n'
    text += f"[cache]\nk = [{types}]\nv = [{types}]\n"
    if shape in ("speed", "trickle"):
        depths = ", ".join(str(64 * i) for i in range(20))
        text += f"[speed]\ndepths = [{depths}]\nn_prompt = 16\nn_gen = 4\nrepetitions = 1\n"
    else:
        n_ctx = ", ".join(str(64 * (i + 1)) for i in range(40))
        text += (f'[quality]\ncorpus = "{CORPUS}"\nn_ctx = [{n_ctx}]\nbaseline = "f16"\n'
                 "max_chunks = 1\nn_batch = 64\nmax_contexts = 4\n")
    text += '[runtime]\nflash_attn = "on"\ncell_timeout_s = 600\n'
    return text


class Timers:
    """Wraps functions of run_sweep's modules to time its phases (nothing else changes)."""

    def __init__(self):
        self.spans: dict[str, float] = {}
        self.extra: dict[str, object] = {}
        self._undo = []

    def wrap(self, owner, name: str, label: str, keep=None) -> None:
        original = getattr(owner, name)

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                out = original(*args, **kw)
            finally:
                self.spans[label] = self.spans.get(label, 0.0) + time.perf_counter() - t0
            if keep:
                keep(self, args, out)
            return out

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def wrap_value(self, owner, name: str, value) -> None:
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def one_shape(shape: str, args) -> dict:
    from kvsweep.analysis.db import connect
    from kvsweep.orchestrator import fleet, scheduler, sweep
    from kvsweep.orchestrator import sink as sink_mod
    from kvsweep.orchestrator.sweep import RunOptions, run_sweep

    out = args.out / shape
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    matrix = out / "matrix.toml"
    matrix.write_text(matrix_text(shape, args.models))
    run_dir = out / "run"

    timers = Timers()
    timers.wrap(fleet, "ensure_ray", "ray_start")
    timers.wrap(fleet, "shutdown", "ray_stop")
    timers.wrap(scheduler.Scheduler, "run", "scheduler")
    timers.wrap(sink_mod.ResultSink, "close", "sink_close", keep=lambda t, a, _: t.extra.update(sink=a[0]))
    trickle = shape == "trickle"
    if trickle and hasattr(sink_mod, "MERGE_GRACE_S"):  # (a kvsweep before merging has none)
        timers.wrap_value(sink_mod, "MERGE_GRACE_S", sink_mod.MERGE_GRACE_S * TRICKLE_SCALE)
    most_files = [0, 0]
    stop = threading.Event()

    def sample():  # the most attempts files on disk at once, and the most that count
        try:
            from kvsweep.parts import live_parts
        except ImportError:  # a kvsweep before merging: every file counts
            def live_parts(folder):
                return list(folder.glob("part-*.parquet"))

        folder = run_dir / "results" / "attempts"
        while not stop.wait(0.1):
            if folder.exists():
                most_files[0] = max(most_files[0], len(list(folder.glob("part-*.parquet"))))
                most_files[1] = max(most_files[1], len(live_parts(folder)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    try:
        result = run_sweep(matrix, RunOptions(
            run_dir=run_dir, runner="fake", n_workers=args.workers, progress=args.live, report=False,
            flush_interval_s=1.0 * TRICKLE_SCALE if trickle else args.flush_every,
            fake_cell_seconds=2.5 * TRICKLE_SCALE if trickle else 0.0))
    finally:
        timers.restore()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()

    con = connect(run_dir)
    one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    plan = one("SELECT count(*) FROM plan")
    attempts = one("SELECT count(*) FROM attempts")
    check = {
        "planned": plan,
        "attempts": attempts,
        "distinct_attempt_ids": one("SELECT count(DISTINCT attempt_id) FROM attempts"),
        "cells_with_one_attempt": one("SELECT count(*) FROM (SELECT cell_id FROM attempts GROUP BY cell_id HAVING count(*) = 1)"),
        "planned_cells_recorded": one("SELECT count(*) FROM plan WHERE cell_id IN (SELECT cell_id FROM attempts)"),
        "ok_and_fake": one("SELECT count(*) FROM attempts WHERE status = 'ok' AND list_contains(flags, 'fake-runner')"),
    }
    files = {
        "attempts": len(list((run_dir / "results" / "attempts").glob("part-*.parquet"))),
        "tokens": len(list((run_dir / "results" / "tokens").glob("part-*.parquet"))),
    }
    wal_left = list((run_dir / "results" / "wal").glob("*.wal")) if (run_dir / "results" / "wal").exists() else []
    ok = (plan == attempts == check["distinct_attempt_ids"] == check["cells_with_one_attempt"]
          == check["planned_cells_recorded"] == check["ok_and_fake"] == args.cells) and not wal_left
    sched = timers.spans["scheduler"]
    ray_overhead = timers.spans.get("ray_start", 0) + timers.spans.get("ray_stop", 0)
    units = len(sweep.units_of(_plan_cells(run_dir), _matrix(matrix)))
    return {
        "shape": shape, "cells": plan, "units": units, "workers": args.workers,
        "scheduler_s": sched, "cells_per_s_scheduler": plan / sched,
        "wall_s": wall, "cells_per_s_wall": plan / wall,
        "ray_start_stop_s": ray_overhead, "cells_per_s_wall_without_ray": plan / (wall - ray_overhead),
        "parquet_files": files, "most_attempts_files": most_files[0], "most_live_files": most_files[1],
        # a flush writes an attempts file, and a tokens file when it has token rows
        "flushes_writing": timers.extra["sink"].files_written - files["tokens"],
        "accounting": check, "wal_left": len(wal_left), "accounted_for": ok,
        "summary": dict(result.summary.by_status),
        "load_before": load0, "load_after": load1,
    }


def _plan_cells(run_dir: Path):
    from kvsweep.orchestrator.run_dir import RunDir

    return RunDir(run_dir).read_plan()


def _matrix(path: Path):
    from kvsweep.orchestrator.matrix import load_matrix

    return load_matrix(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=("speed", "quality", "both", "trickle"), default="both")
    p.add_argument("--workers", type=int, default=4, help="fake worker actors on the embedded cluster")
    p.add_argument("--models", type=int, default=10)
    p.add_argument("--cells", type=int, default=10_000, help="the cell count the matrices must plan (checked)")
    p.add_argument("--flush-every", type=float, default=1.0)
    p.add_argument("--live", action="store_true",
                   help="with the live progress table (as on a terminal; it is drawn on stderr)")
    p.add_argument("--out", type=Path, default=Path("/tmp/kvsweep-bench-throughput"))
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    quiet_logs()
    print_start()
    print(f"`python bench/throughput.py {' '.join(sys.argv[1:])}` (FAKE runner: measures nothing)\n")
    print("| shape | cells | units | workers | scheduler s | cells/s (scheduler) | run_sweep s | cells/s (run_sweep) "
          "| Ray start+stop s | cells/s (run_sweep without Ray start/stop) | flushes that wrote | "
          "most attempts files on disk (counted by readers) | Parquet files at the end (attempts + tokens) "
          "| accounted for |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    shapes = ("speed", "quality") if args.shape == "both" else (args.shape,)
    results = []
    for shape in shapes:
        r = one_shape(shape, args)
        results.append(r)
        f = r["parquet_files"]
        print(f"| {shape} | {r['cells']} | {r['units']} | {r['workers']} | {r['scheduler_s']:.2f} "
              f"| {r['cells_per_s_scheduler']:.0f} | {r['wall_s']:.2f} | {r['cells_per_s_wall']:.0f} "
              f"| {r['ray_start_stop_s']:.2f} | {r['cells_per_s_wall_without_ray']:.0f} "
              f"| {r['flushes_writing']} | {r['most_attempts_files']} ({r['most_live_files']}) "
              f"| {f['attempts']} + {f['tokens']} | {'yes' if r['accounted_for'] else 'NO: ' + json.dumps(r['accounting'])} |",
              flush=True)
    print_end()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if not all(r["accounted_for"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
