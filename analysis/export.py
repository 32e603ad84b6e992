"""`kvsweep export`: speed results in llama-bench's output formats.

`-o jsonl` is llama-bench's jsonl_printer (one object per test: the fields of test::get_fields()
in order, typed as get_field_type() says, then samples_ns and samples_ts); `-o sql` is its
sql_printer (CREATE TABLE llama_bench + one INSERT per test, every value quoted, SQLite's
column affinity types them). Both are what llama.cpp's scripts/compare-llama-bench.py reads:

    kvsweep export runs/demo --format sql | sqlite3 llama-bench.sqlite
    kvsweep export runs/demo --format jsonl > kvsweep.jsonl
    python scripts/compare-llama-bench.py -t llama-bench -i kvsweep.jsonl -b BASE -c COMPARE

(the script needs `-t llama-bench` for JSONL input; it tells the tool from an SQLite file.)

The field values come from analysis/sql/export_llama_bench.sql.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from kvsweep.analysis.db import connect, sql_text

FORMATS = ("jsonl", "sql")

# test::get_fields() of tools/llama-bench/llama-bench.cpp, in order
FIELDS = (
    "build_commit", "build_number", "cpu_info", "gpu_info", "backends",
    "model_filename", "model_type", "model_size", "model_n_params", "n_batch",
    "n_ubatch", "n_threads", "cpu_mask", "cpu_strict", "poll",
    "type_k", "type_v", "n_gpu_layers", "n_cpu_moe", "split_mode",
    "main_gpu", "no_kv_offload", "flash_attn", "devices", "tensor_split",
    "tensor_buft_overrides", "load_mode", "lazy_mode",
    "embeddings",
    "no_op_offload", "no_host", "repack", "fit_target", "fit_min_ctx",
    "n_prompt", "n_gen", "n_depth",
    "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
)
# test::get_field_type()
INT_FIELDS = {
    "build_number", "n_batch", "n_ubatch", "n_threads", "poll", "model_size", "model_n_params",
    "n_gpu_layers", "main_gpu", "n_prompt", "n_gen", "n_depth", "avg_ns", "stddev_ns",
    "no_op_offload", "n_cpu_moe", "fit_target", "fit_min_ctx", "flash_attn",
}
BOOL_FIELDS = {"no_kv_offload", "cpu_strict", "embeddings", "no_host", "repack"}
FLOAT_FIELDS = {"avg_ts", "stddev_ts"}


def field_type(name: str) -> str:
    if name in INT_FIELDS:
        return "int"
    if name in BOOL_FIELDS:
        return "bool"
    if name in FLOAT_FIELDS:
        return "float"
    return "str"


def _typed(name: str, value):
    kind = field_type(name)
    if kind == "int":
        return int(value or 0)
    if kind == "bool":
        return bool(value)
    if kind == "float":
        return float(value or 0.0)
    return "" if value is None else str(value)


def speed_tests(run_dir: str | Path, build_commit: str | None = None) -> list[dict]:
    """One dict per counted speed test, llama-bench's fields and types in its order.

    build_commit overrides the recorded commit: compare-llama-bench.py tells data sets apart
    by build_commit, so giving kvsweep's figures their own label puts them side by side with
    llama-bench's own from the same build.
    """
    con = connect(run_dir)
    cur = con.execute(sql_text("export_llama_bench"))
    names = [d[0] for d in cur.description]
    tests = []
    for values in cur.fetchall():
        row = dict(zip(names, values))
        if build_commit is not None:
            row["build_commit"] = build_commit
        test = {f: _typed(f, row[f]) for f in FIELDS}
        test["samples_ns"] = [int(x) for x in row["samples_ns"] or []]
        test["samples_ts"] = [float(x) for x in row["samples_ts"] or []]
        tests.append(test)
    return tests


def to_jsonl(tests: Iterable[dict]) -> str:
    return "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tests)


def _sql_type(name: str) -> str:
    return {"str": "TEXT", "float": "REAL"}.get(field_type(name), "INTEGER")


def _sql_value(name: str, value) -> str:
    if field_type(name) == "bool":
        value = int(value)  # std::to_string(bool): "0" / "1"
    return "'" + str(value).replace("'", "''") + "'"


def to_sql(tests: Iterable[dict]) -> str:
    lines = ["CREATE TABLE IF NOT EXISTS llama_bench ("]
    lines += [f"  {f} {_sql_type(f)}{',' if i < len(FIELDS) - 1 else ''}" for i, f in enumerate(FIELDS)]
    lines += [");", ""]
    columns = ", ".join(FIELDS)
    for t in tests:
        values = ", ".join(_sql_value(f, t[f]) for f in FIELDS)
        lines.append(f"INSERT INTO llama_bench ({columns}) VALUES ({values});")
    return "\n".join(lines) + "\n"


def export(run_dir: str | Path, fmt: str, build_commit: str | None = None) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    tests = speed_tests(run_dir, build_commit)
    return to_jsonl(tests) if fmt == "jsonl" else to_sql(tests)
