"""Scaling over workers: sweep wall time against total cell time / N, for N = 1, 2, 4.

    python bench/scaling.py [--workers 1 2 4] [--cell-seconds 0.2] [--depths 25]

For each N, a new multi-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head
with no CPUs and N worker nodes, each advertising one device as the `kvsweep_worker` resource,
as tests/test_fleet.py builds it; bound to 127.0.0.1, token authentication), and `run_sweep`
against it (as `kvsweep run --address` does) with the FAKE runner (workers/fake_runner.py):
every cell sleeps `--cell-seconds` and is recorded ok with the flag "fake-runner"; it
measures nothing. So the workers cost no CPU and N of them can run side by side on a 2-core
machine; what is measured is kvsweep's distribution: dispatch, streaming, recording.

The matrix: one generated model, 16 K/V configurations (4 K x 4 V), `--depths` depths, pp and
tg: 16 speed series (work units) of 2 x depths cells, so the units divide evenly over 1, 2
and 4 workers (a unit runs on one worker, in order: it is the unit of balance).

Reported per N:
- ideal = total cell time / N, where total cell time is the sum of every attempt's recorded
  duration (finished_at - started_at, the fake's sleep) and, for comparison, cells x
  --cell-seconds;
- scheduler: Scheduler.run from its start until every attempt is in Parquet, and its ratio to
  the ideal (target: within 10%, i.e. <= 1.10);
- run_sweep: the whole call (joining the cluster, starting the N worker actors, planning,
  scheduling, leaving), and its ratio to the ideal. Starting the cluster itself is not in it
  (a fleet is up before a sweep starts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from kvsweep.orchestrator.fleet import WORKER_RESOURCE, prepare_loopback_env
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start, quiet_logs  # noqa: E402  (bench/machine.py)

os.environ.setdefault("RAY_AUTH_MODE", "token")  # as kvsweep fleets (and tests/test_fleet.py) run
prepare_loopback_env()  # before Ray is imported: every port on 127.0.0.1

TYPES = ["f16", "q8_0", "q4_1", "q4_0"]


def matrix_text(depths: int) -> str:
    types = ", ".join(f'"{t}"' for t in TYPES)
    depth_list = ", ".join(str(64 * d) for d in range(depths))
    return (f'name = "scaling"\n[[models]]\nname = "tiny"\ngenerate = {{ arch = "llama", seed = 0 }}\n'
            f"[cache]\nk = [{types}]\nv = [{types}]\n"
            f"[speed]\ndepths = [{depth_list}]\nn_prompt = 16\nn_gen = 4\nrepetitions = 1\n"
            '[runtime]\nflash_attn = "on"\ncell_timeout_s = 600\n')


def one(n: int, args) -> dict:
    from ray.cluster_utils import Cluster

    from kvsweep.analysis.db import connect
    from kvsweep.orchestrator import scheduler
    from kvsweep.orchestrator.sweep import RunOptions, run_sweep

    out = args.out / f"n{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    matrix = out / "matrix.toml"
    matrix.write_text(matrix_text(args.depths))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(n):
            cluster.add_node(num_cpus=1, resources={WORKER_RESOURCE: 1})
        cluster.wait_for_nodes()
        spans = {}
        original = scheduler.Scheduler.run

        def timed_run(self):
            t0 = time.perf_counter()
            try:
                return original(self)
            finally:
                spans["scheduler"] = time.perf_counter() - t0

        scheduler.Scheduler.run = timed_run
        t0 = time.perf_counter()
        try:
            result = run_sweep(matrix, RunOptions(run_dir=out / "run", address=cluster.address, runner="fake",
                                                  fake_cell_seconds=args.cell_seconds, progress=False,
                                                  report=False))
        finally:
            scheduler.Scheduler.run = original
        wall = time.perf_counter() - t0
    finally:
        cluster.shutdown()
    con = connect(result.run_dir)
    cells, durations, workers, fake = con.execute(
        "SELECT count(*), sum(duration_s), count(DISTINCT worker_id), "
        "count(*) FILTER (WHERE list_contains(flags, 'fake-runner')) FROM attempts").fetchone()
    per_worker = con.execute("SELECT worker_id, count(*), sum(duration_s) FROM attempts GROUP BY 1 ORDER BY 1").fetchall()
    assert cells == result.planned == fake and result.summary.by_status == {"ok": cells}, "not accounted for"
    ideal = durations / n
    return {"n": n, "cells": cells, "workers_used": workers, "total_cell_s": durations,
            "nominal_cell_s": cells * args.cell_seconds, "ideal_s": ideal,
            "scheduler_s": spans["scheduler"], "wall_s": wall,
            "per_worker": per_worker}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--cell-seconds", type=float, default=0.2)
    p.add_argument("--depths", type=int, default=25)
    p.add_argument("--out", type=Path, default=Path("/tmp/kvsweep-bench-scaling"))
    args = p.parse_args()
    quiet_logs()
    print_start()
    print(f"`python bench/scaling.py {' '.join(sys.argv[1:])}` (FAKE runner: sleeps, measures nothing)\n")
    print("| workers N | cells | total cell time s (nominal) | ideal = total / N s | scheduler s | scheduler / ideal "
          "| run_sweep s | run_sweep / ideal | cells per worker |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.workers:
        r = one(n, args)
        spread = ", ".join(str(c) for _, c, _ in r["per_worker"])
        print(f"| {n} | {r['cells']} | {r['total_cell_s']:.1f} ({r['nominal_cell_s']:.1f}) | {r['ideal_s']:.2f} "
              f"| {r['scheduler_s']:.2f} | {r['scheduler_s'] / r['ideal_s']:.3f} | {r['wall_s']:.2f} "
              f"| {r['wall_s'] / r['ideal_s']:.3f} | {spread} |", flush=True)
    print_end()


if __name__ == "__main__":
    main()
