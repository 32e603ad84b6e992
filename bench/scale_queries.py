"""Resume planning over 100,000 recorded attempts, and the report's queries over 1,000,000
per-token rows.

    python bench/scale_queries.py [--files 100 10000] [--reps 3] [--out DIR]

Generates a synthetic run directory with the real layout and schemas (kvsweep/records.py's
ATTEMPTS_SCHEMA and TOKENS_SCHEMA, plan.parquet written by RunDir.write_plan, a manifest by
RunDir.start_session): 90,250 planned cells, expanded from a matrix by orchestrator/plan.expand
(10 models x 25 K/V configurations: a quality cell each at one n_ctx, and pp + tg at 45 depths on
4 host classes) and 100,000 attempts: every cell
once, 9,750 of them also an earlier attempt that did not count (oom-retrying, crash, timeout);
the deepest depths of 5 configurations end in oom, and the depths after that are skipped.
Each of the 250 quality attempts has 4,000 per-token rows: 1,000,000 in all. The figures are
random; their shape is a real run's.

The attempts are written as `--files` Parquet files each (split evenly), the tokens as one
file per quality attempt (250), as flushes of a sweep of slow cells write them. The driver
merges its attempts files as a session goes (orchestrator/sink.py): a session's files are one
after it ends, and about 75 at most while it runs (15 per size tier, 5 tiers at 100,000
flushes); 10,000 is where a sweep of slow cells would be a tenth of the way without merging.

Timed, each `--reps` times (median and largest reported), on a warm page cache:
- resume planning: orchestrator/history.read_history(run_dir) + cells_to_run(plan, history)
  (what `kvsweep resume` does with what is recorded); expanding the matrix into the plan and
  writing plan.parquet, which scale with the plan rather than the results, once each;
- analysis/db.connect(run_dir) (views over every file);
- every query `kvsweep report` runs (analysis/report.py, the same SQL), by name, plus
  `SELECT * FROM quality` (the quality view over the per-token rows) and `kvsweep status`'s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kvsweep.records import ATTEMPTS_SCHEMA, TOKENS_SCHEMA
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_end, print_start  # noqa: E402  (bench/machine.py)

N_MODELS, N_CONFIGS, N_HOSTS, N_DEPTHS = 10, 25, 4, 45
TOKENS_PER_QUALITY = 4000
TYPES = ["f16", "q8_0", "q5_0", "q4_1", "q4_0"]

# The report's queries (analysis/report.py, analysis/status.py), by the name used in the docs.
QUERIES = {
    "quality (view, all columns)": "SELECT * FROM quality",
    "report: status_counts.sql": "@status_counts",
    "report: builds": "SELECT DISTINCT build_commit, llama_cpp_python_version, backends FROM results WHERE build_commit IS NOT NULL",
    "report: hosts": "SELECT DISTINCT host, host_class, device_name, device_memory_total FROM results WHERE host IS NOT NULL ORDER BY host",
    "report: config order": "SELECT config, min(rowid) AS first FROM (SELECT config, row_number() OVER () AS rowid FROM plan) GROUP BY config ORDER BY first",
    "report: tests": "SELECT DISTINCT model_name, kind, CASE WHEN kind = 'pp' THEN 'pp' || n_prompt ELSE 'tg' || n_gen END FROM plan WHERE kind IN ('pp', 'tg')",
    "report: failed quality": "SELECT cell_id, model_name, config, n_ctx, status FROM cell_status WHERE kind = 'quality' AND status <> 'ok'",
    "report: recommend_fastest": "SELECT * FROM recommend_fastest",
    "report: recommend_context": "SELECT * FROM recommend_context",
    "report: config_quality": "SELECT * FROM config_quality",
    "report: untrusted": "SELECT * FROM untrusted ORDER BY kind, model_name, config, n_ctx, n_depth",
    "report: speed configs": "SELECT DISTINCT model_name, host_class, config FROM plan WHERE kind IN ('pp', 'tg')",
    "report: quality_table.sql": "@quality_table",
    "report: kl_vs_bits": "SELECT * FROM kl_vs_bits",
    "report: speed_by_depth.sql": "@speed_by_depth",
    "report: depth_status": "SELECT * FROM depth_status",
    "report: context_ceiling": "SELECT * FROM context_ceiling",
    "report: host_memory": "SELECT * FROM host_memory ORDER BY host",
    "report: failures.sql": "@failures",
    "export: export_llama_bench.sql": "@export_llama_bench",
    "status: by host": "SELECT coalesce(host, '(not run)'), status, count(*) FROM cell_status GROUP BY ALL ORDER BY 1, 3 DESC",
}


ROOT = Path(__file__).resolve().parent.parent


def matrix_text() -> str:
    """The synthetic sweep as a matrix: models only on the (imaginary) worker hosts (path and
    sha256), 5 K x 5 V types, one n_ctx, 45 depths; 4 host classes come from the fleet."""
    types = ", ".join(f'"{t}"' for t in TYPES)
    text = 'name = "synthetic"\n'
    for m in range(N_MODELS):
        text += f'[[models]]\nname = "model-{m}"\npath = "/nonexistent/model-{m}.gguf"\nsha256 = "{m:064x}"\n'
    depths = ", ".join(str(1024 * d) for d in range(N_DEPTHS))
    text += (f"[cache]\nk = [{types}]\nv = [{types}]\n"
             f'[quality]\ncorpus = "{ROOT / "matrices" / "corpora" / "demo.txt"}"\nn_ctx = [4096]\n'
             'baseline = "f16"\nn_batch = 512\n'
             f"[speed]\ndepths = [{depths}]\nn_prompt = 512\nn_gen = 128\nrepetitions = 5\n")
    return text


def make_plan(matrix_path: Path):
    """The plan as `kvsweep run` expands it (orchestrator/plan.expand), timed."""
    from kvsweep.orchestrator.inputs import resolve_inputs
    from kvsweep.orchestrator.matrix import load_matrix
    from kvsweep.orchestrator.plan import expand

    matrix_path.write_text(matrix_text())
    matrix = load_matrix(matrix_path)
    inputs = resolve_inputs(matrix)
    t0 = time.perf_counter()
    cells = expand(matrix, inputs, [f"host-class-{h}" for h in range(N_HOSTS)], ["CUDA"])
    return cells, time.perf_counter() - t0


def make_attempts(cells, run_id: str, extra: int, rng):
    """Attempt columns (numpy/lists) and per-token columns; one attempt per cell plus `extra`."""
    n_cells = len(cells)
    failing = {("q4_0", "q4_0"), ("q4_1", "q4_1"), ("q5_0", "q4_0"), ("q4_0", "q5_0"), ("q8_0", "q4_0")}
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp()
    status = []
    for c in cells:
        if c.kind != "quality" and (c.type_k, c.type_v) in failing and c.n_depth >= 40 * 1024:
            status.append("oom" if c.n_depth == 40 * 1024 else "skipped")
        else:
            status.append("ok")
    earlier = rng.choice(n_cells, size=extra, replace=False)  # cells with an earlier attempt
    order = list(range(n_cells)) + [int(i) for i in earlier]
    n = len(order)
    idx = np.array(order)
    finished = t0 + np.arange(n, dtype=np.float64) * 3.0
    is_extra = np.zeros(n, bool)
    is_extra[n_cells:] = True
    # the earlier attempt finished before the counted one
    finished[n_cells:] = finished[idx[n_cells:]] - 60.0
    extra_status = rng.choice(["oom", "crash", "timeout"], size=extra, p=[0.6, 0.3, 0.1])
    st = np.array(status + list(extra_status), dtype=object)
    flags = [[] for _ in range(n)]
    for i in range(n_cells, n):
        if st[i] == "oom":
            flags[i] = ["oom-retrying"]
    kinds = np.array([cells[i].kind for i in idx], dtype=object)
    ok_speed = (st == "ok") & (kinds != "quality")
    avg_ts = np.where(ok_speed, rng.uniform(50, 5000, n), np.nan)
    samples = [list(rng.uniform(50, 5000, 5)) if ok else None for ok in ok_speed]
    host_of = lambda c: c.host_class or "host-class-0"  # noqa: E731
    cols = {
        "run_id": [run_id] * n,
        "cell_id": [cells[i].cell_id for i in idx],
        "attempt_id": [f"{j:032x}" for j in range(n)],
        "attempt": np.where(is_extra, 1, 1 + np.isin(np.arange(n), earlier)).astype(np.int32),
        "kind": list(kinds),
        "test": [cells[i].test_name for i in idx],
        "status": list(st),
        "error_class": ["" if s == "ok" else {"oom": "OutOfMemory", "crash": "WorkerDied", "timeout": "CellTimeout",
                                                 "skipped": "SkippedAfterOOM"}[s] for s in st],
        "error_message": ["" if s == "ok" else f"synthetic {s}" for s in st],
        "log_tail": [""] * n,
        "flags": flags,
        "host": [host_of(cells[i]) + "-a" for i in idx],
        "node_id": ["n" * 40] * n,
        "worker_id": ["w-0"] * n,
        "host_class": [host_of(cells[i]) for i in idx],
        "backend": ["CUDA"] * n,
        "device_name": ["GPU"] * n,
        "device_memory_total": np.full(n, 24 * 2**30, np.int64),
        "device_memory_free": np.full(n, 20 * 2**30, np.int64),
        "started_at": pa.array((finished - 2.0) * 1e6, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "finished_at": pa.array(finished * 1e6, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "duration_s": np.full(n, 2.0),
        "build_commit": ["0c1e570"] * n,
        "llama_cpp_python_version": ["0.3.36"] * n,
        "backends": ["CUDA"] * n,
        "avg_ts": avg_ts,
        "stddev_ts": np.where(ok_speed, avg_ts * 0.02, np.nan),
        "samples_ts": samples,
        "kv_bytes": np.where(ok_speed, 2**20 * (1 + np.array([cells[i].n_depth for i in idx]) // 1024), 0).astype(np.int64),
        "ppl": np.where((kinds == "quality") & (st == "ok"), rng.uniform(5, 7, n), np.nan),
    }
    for name in ("model_name", "model_sha256", "type_k", "type_v", "flash_attn", "n_gpu_layers", "n_batch",
                 "n_ubatch", "env", "n_ctx", "max_chunks", "corpus_sha256", "baseline", "n_depth", "n_prompt",
                 "n_gen", "repetitions"):
        cols[name] = [getattr(cells[i], name) for i in idx]
    table = pa.table({name: _array(values, ATTEMPTS_SCHEMA.field(name).type) for name, values in cols.items()})
    table = _conform(table, ATTEMPTS_SCHEMA)

    quality_rows = [j for j in range(n) if kinds[j] == "quality" and st[j] == "ok"]
    per = TOKENS_PER_QUALITY
    k = len(quality_rows)
    tok = {
        "cell_id": np.repeat(np.array([cols["cell_id"][j] for j in quality_rows], dtype=object), per),
        "attempt_id": np.repeat(np.array([cols["attempt_id"][j] for j in quality_rows], dtype=object), per),
        "chunk": np.tile(np.arange(per) // 2048, k).astype(np.int32),
        "pos": np.tile(2048 + np.arange(per) % 2048, k).astype(np.int32),
        "token": rng.integers(0, 248320, k * per).astype(np.int32),
        "nll": rng.gamma(2.0, 1.0, k * per),
        "nll_base": rng.gamma(2.0, 1.0, k * per),
        "kld": rng.exponential(0.01, k * per),
        "dp": rng.normal(0, 0.01, k * per),
        "same_top": rng.random(k * per) < 0.95,
    }
    tokens = pa.table({name: _array(v, TOKENS_SCHEMA.field(name).type) for name, v in tok.items()})
    return table, tokens, quality_rows


def _array(values, type_):
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(type_)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return pa.array(values, type_, mask=np.isnan(values))
    return pa.array(values if not isinstance(values, np.ndarray) or values.dtype != object else list(values), type_)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.table(cols, schema=schema)


def write_run_dir(path: Path, n_files: int, cells, attempts: pa.Table, tokens: pa.Table, quality_rows) -> None:
    """`n_files` attempts files; a tokens file per quality attempt, named as the sink names
    them (kvsweep/parts.py): attempt row r is taken to be flush r of one session, so an
    attempts file holding rows lo..hi is the merged file of flushes lo..hi, and the tokens of
    the quality attempt in row r are flush r's tokens file (committed: its flush is covered)."""
    from kvsweep.orchestrator.run_dir import RunDir
    from kvsweep.parts import part_name

    session = "20261101T000000Z-bench"
    shutil.rmtree(path, ignore_errors=True)
    rd = RunDir(path)
    path.mkdir(parents=True)
    matrix = path.parent / "synthetic.toml"
    rd.start_session(matrix, session, ["bench/scale_queries.py"], len(cells))
    rd.write_plan(cells)
    rd.attempts_dir.mkdir(parents=True)
    rd.tokens_dir.mkdir(parents=True)
    n = attempts.num_rows
    bounds = np.linspace(0, n, n_files + 1).astype(int)
    per = TOKENS_PER_QUALITY
    for f in range(n_files):
        lo, hi = int(bounds[f]), int(bounds[f + 1])
        name = part_name(session, lo, hi - 1 if hi - 1 > lo else None)
        pq.write_table(attempts.slice(lo, hi - lo), rd.attempts_dir / name, compression="zstd")
    for q, row in enumerate(quality_rows):
        pq.write_table(tokens.slice(q * per, per), rd.tokens_dir / part_name(session, int(row)), compression="zstd")


def timed(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def measure(path: Path, reps: int, cells) -> list[tuple[str, list[float], str]]:
    from kvsweep.analysis.db import connect, sql_text
    from kvsweep.orchestrator.history import cells_to_run, read_history
    from kvsweep.orchestrator.run_dir import RunDir

    rd = RunDir(path)
    rows = []
    plan = cells

    def resume():
        history = read_history(rd)
        return history, cells_to_run(plan, history, "failed")

    t, (history, todo) = timed(resume, reps)
    rows.append(("resume planning: read_history + cells_to_run", t,
                 f"{sum(h.attempts for h in history.values())} attempts, {len(history)} cells, {len(todo)} to run"))
    t, con = timed(lambda: connect(path), reps)
    rows.append(("analysis/db.connect (views over every file)", t, ""))
    for name, sql in QUERIES.items():
        text = sql_text(sql[1:]) if sql.startswith("@") else sql
        t, out = timed(lambda: con.execute(text).fetchall(), reps)
        rows.append((name, t, f"{len(out)} rows"))
    n_tokens = con.execute("SELECT count(*) FROM tokens_raw").fetchone()[0]
    n_attempts = con.execute("SELECT count(*) FROM attempts").fetchone()[0]
    rows.append(("(check) rows in the run directory", [0.0], f"{n_attempts} attempts, {n_tokens} token rows"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, nargs="+", default=[1, 75, 10000])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--attempts", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=Path("/tmp/kvsweep-bench-scale"))
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    print_start()
    print(f"`python bench/scale_queries.py {' '.join(sys.argv[1:])}`\n")
    rng = np.random.default_rng(0)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cells, expand_s = make_plan(a.out / "synthetic.toml")
    from kvsweep.orchestrator.run_dir import RunDir

    (a.out / "plan-timing").mkdir(exist_ok=True)
    write_plan_s = timed(lambda: RunDir(a.out / "plan-timing").write_plan(cells), 1)[0][0]
    extra = a.attempts - len(cells)
    attempts, tokens, quality_rows = make_attempts(cells, "synthetic-run", extra, rng)
    print(f"generated {len(cells)} planned cells, {attempts.num_rows} attempts, {tokens.num_rows} token rows "
          f"in {time.perf_counter() - t0:.0f} s\n")
    results = {}
    for n_files in a.files:
        path = a.out / f"files-{n_files}"
        t0 = time.perf_counter()
        write_run_dir(path, n_files, cells, attempts, tokens, quality_rows)
        n_tok_files = len(list((path / "results" / "tokens").glob("*.parquet")))
        print(f"{n_files} attempts files + {n_tok_files} tokens files written in {time.perf_counter() - t0:.0f} s")
        results[n_files] = measure(path, a.reps, cells)
    print(f"\nplanning a sweep of this size: orchestrator/plan.expand {expand_s:.2f} s, "
          f"RunDir.write_plan {write_plan_s:.2f} s (both scale with the plan, not with what is recorded)")
    names = [r[0] for r in results[a.files[0]]]
    header = " | ".join(f"{f} files: median (max) s" for f in a.files)
    print(f"\n| what | {header} | result |")
    print("|---|" + "---|" * len(a.files) + "---|")
    for i, name in enumerate(names):
        cells_ = " | ".join(f"{statistics.median(results[f][i][1]):.3f} ({max(results[f][i][1]):.3f})"
                            for f in a.files)
        print(f"| {name} | {cells_} | {results[a.files[0]][i][2]} |")
    print_end()
    if a.json:
        a.json.write_text(json.dumps({str(f): r for f, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
