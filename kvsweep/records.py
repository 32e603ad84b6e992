"""What a cell attempt produces, and the Parquet schemas it is stored under.

Two tables, both append-only:
- attempts: one row per attempt of a cell, whatever its status (failures are results);
- tokens:   per scored token of a quality attempt, so DuckDB computes exact statistics
            (PPL, KLD percentiles, same-top p) over any grouping of chunks.
Column names follow llama-bench's where the quantity is the same (build_commit, cpu_info,
gpu_info, backends, model_filename, model_type, model_size, model_n_params, n_batch, n_ubatch,
n_threads, type_k, type_v, n_gpu_layers, flash_attn, n_prompt, n_gen, n_depth, test_time,
avg_ns, stddev_ns, avg_ts, stddev_ts, samples_ns, samples_ts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

# Statuses of an attempt. See docs/failures.md for what each means and what kvsweep does next.
OK = "ok"
OOM = "oom"  # an allocation failed (context, KV cache, compute buffer, decode -2)
CRASH = "crash"  # the worker process died while running the cell (abort, segfault, kill)
TIMEOUT = "timeout"  # no progress within the per-cell limit; the worker was replaced
ERROR = "error"  # anything else; the message and traceback are kept
INVALID = "invalid"  # ran, but the numbers cannot be trusted (NaN / inf logits)
SKIPPED = "skipped"  # not attempted: a shallower depth already ran out of memory here
PREDICTED_OOM = "predicted-oom"  # not attempted: the memory planner says it fits nowhere
UNSUPPORTED = "unsupported"  # not attempted: no worker's llama.cpp build runs its K/V pair
STATUSES = (OK, OOM, CRASH, TIMEOUT, ERROR, INVALID, SKIPPED, PREDICTED_OOM, UNSUPPORTED)
FAILED = (CRASH, TIMEOUT, ERROR, INVALID)  # what `resume --redo failed` (the default) redoes

# Per-token columns of a quality attempt, in order.
TOKEN_COLUMNS = ("chunk", "pos", "token", "nll", "nll_base", "kld", "dp", "same_top")


@dataclass
class CellOutcome:
    """One attempt of one cell, as the worker reports it."""

    cell_id: str
    status: str
    started_at: float  # unix seconds
    finished_at: float
    error_class: str = ""
    error_message: str = ""
    log_tail: str = ""
    flags: list[str] = field(default_factory=list)
    # measurement summary; keys are attempt columns (ppl, avg_ts, samples_ns, ...)
    metrics: dict = field(default_factory=dict)
    # facts about how it ran; keys are attempt columns (kv_bytes, n_threads, attn_rot_k, ...)
    facts: dict = field(default_factory=dict)
    tokens: dict[str, np.ndarray] | None = None  # TOKEN_COLUMNS -> arrays (quality only)


ATTEMPTS_SCHEMA = pa.schema(
    [
        # identity
        ("run_id", pa.string()),
        ("cell_id", pa.string()),
        ("attempt_id", pa.string()),
        ("attempt", pa.int32()),
        ("kind", pa.string()),
        ("test", pa.string()),
        # outcome
        ("status", pa.string()),
        ("error_class", pa.string()),
        ("error_message", pa.string()),
        ("log_tail", pa.string()),
        ("flags", pa.list_(pa.string())),
        # where and when
        ("host", pa.string()),
        ("node_id", pa.string()),
        ("worker_id", pa.string()),
        ("host_class", pa.string()),
        ("backend", pa.string()),
        ("device_name", pa.string()),
        ("device_memory_total", pa.int64()),
        ("device_memory_free", pa.int64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("duration_s", pa.float64()),
        # the cell
        ("model_name", pa.string()),
        ("model_sha256", pa.string()),
        ("type_k", pa.string()),
        ("type_v", pa.string()),
        ("flash_attn", pa.string()),
        ("n_gpu_layers", pa.int32()),
        ("n_batch", pa.int32()),
        ("n_ubatch", pa.int32()),
        ("env", pa.string()),
        ("n_ctx", pa.int32()),
        ("max_chunks", pa.int32()),
        ("corpus_sha256", pa.string()),
        ("baseline", pa.string()),
        ("n_depth", pa.int32()),
        ("n_prompt", pa.int32()),
        ("n_gen", pa.int32()),
        ("repetitions", pa.int32()),
        ("score", pa.string()),  # '' = second half of each chunk (llama-perplexity), 'all'
        ("gen_tokens", pa.int32()),  # generation agreement: tokens decoded per prompt
        ("fill", pa.string()),  # speed: '' = random tokens fill the depth, 'corpus' = corpus text
        ("precision", pa.string()),  # the cell's precision target (JSON, kvsweep/precision.py), '' = none
        # provenance
        ("kvsweep_version", pa.string()),
        ("llama_cpp_python_version", pa.string()),
        ("build_commit", pa.string()),
        ("build_name", pa.string()),  # mainline, or the fork / build label (scripts/build_worker.py)
        ("ggml_version", pa.string()),
        ("backends", pa.string()),
        ("cpu_info", pa.string()),
        ("gpu_info", pa.string()),
        ("n_threads", pa.int32()),
        ("flash_attn_enabled", pa.bool_()),
        ("attn_rot_k", pa.bool_()),
        ("attn_rot_v", pa.bool_()),
        ("model_filename", pa.string()),
        ("model_type", pa.string()),
        ("model_size", pa.int64()),
        ("model_n_params", pa.int64()),
        ("kv_bytes", pa.int64()),
        ("predicted_bytes", pa.int64()),
        # provenance added for measurement fidelity (docs/measurement.md)
        ("driver_version", pa.string()),  # GPU driver where the OS tells it
        ("env_effective", pa.string()),  # JSON: result-changing env knobs set in the worker
        ("llama_attn_rot_disable", pa.string()),  # its LLAMA_ATTN_ROT_DISABLE ('' = unset)
        ("model_file_bytes", pa.int64()),  # the GGUF file's size on disk
        ("graph_nodes", pa.int32()),  # llama.cpp's worst-case graph for the context
        ("graph_splits", pa.int32()),  # prompt graph splits (backend changes)
        ("graph_splits_tg", pa.int32()),  # single-token graph splits
        ("graph_splits_ref", pa.int32()),  # splits of an f16/f16 context of the same shape (GPU only)
        ("kv_devices", pa.string()),  # device(s) holding the KV cache, e.g. "CUDA0" or "CPU"
        ("worker_niceness", pa.int32()),
        # what else ran on the host during a speed cell's timed repetitions (workers/host_load.py)
        ("host_load_window_s", pa.float64()),  # seconds measured: the timed parts together
        ("host_cpu_pressure", pa.float64()),  # share of them some task waited for a CPU (PSI)
        ("host_other_cores", pa.float64()),  # CPU time of other processes, in cores
        ("host_steal_cores", pa.float64()),  # the hypervisor's steal time, in cores
        ("unit_contexts", pa.int32()),  # llama.cpp contexts its quality unit kept alive at once
        # the KV cache as llama.cpp reported making it, and whether that is what the cell asked
        ("kv_type_k", pa.string()),  # K type of the KV cache's summary line ('' if not logged)
        ("kv_type_v", pa.string()),
        ("bits_k", pa.float64()),  # storage per value of type_k in this build (block size, bytes)
        ("bits_v", pa.float64()),
        ("config_check", pa.string()),  # '' when the context is the cell's; else what differs
        # quality summary (exact statistics come from the tokens table)
        ("n_chunks", pa.int32()),  # chunks run (fewer than planned when a precision target was met)
        # why the cell stopped measuring: target | corpus-end | max-chunks (quality),
        # target | repetitions (speed); kvsweep/precision.py
        ("stop_reason", pa.string()),
        ("kld_rel_se_chunks", pa.float64()),  # relative standard error of kld_mean over chunks
        ("n_tokens", pa.int64()),
        ("ppl", pa.float64()),
        ("ppl_base", pa.float64()),
        ("kld_mean", pa.float64()),
        ("same_top_p", pa.float64()),
        # sha256 of the per-token nll and kld values, to find configurations whose results are
        # bit-identical (a setting that did not take effect); NULL when there are no tokens
        ("tokens_digest", pa.string()),
        # generation agreement, one entry per prompt: its depth (prompt length), the index of
        # the first generated token that differs from the baseline's (gen_tokens = none), and
        # the share of generated positions whose token equals the baseline's
        ("gen_depth", pa.list_(pa.int32())),
        ("gen_first_diff", pa.list_(pa.int32())),
        ("gen_equal", pa.list_(pa.float64())),
        # speed (llama-bench)
        ("test_time", pa.string()),
        ("avg_ns", pa.int64()),
        ("stddev_ns", pa.int64()),
        ("avg_ts", pa.float64()),
        ("stddev_ts", pa.float64()),
        ("samples_ns", pa.list_(pa.int64())),
        ("samples_ts", pa.list_(pa.float64())),
        ("ts_rel_se", pa.float64()),  # relative standard error of avg_ts over the repetitions
        # context ceiling (kind 'ceiling', workers/ceiling.py): the deepest depth that fits, the
        # shallowest found not to, the resolution bisected to, the memory at the ceiling, what
        # bounded the search from above, and every probe as 'depth:outcome:bytes'
        ("ceiling_depth", pa.int64()),
        ("ceiling_fail_depth", pa.int64()),
        ("ceiling_resolution", pa.int64()),
        ("ceiling_bytes", pa.int64()),
        ("ceiling_bound", pa.string()),
        ("ceiling_probes", pa.list_(pa.string())),
        # out of memory: the failed allocation's size, from llama.cpp's log
        ("needed_bytes", pa.int64()),
    ]
)

# -- composing an attempt row from its producers -------------------------------------------

# Columns two producers both set, and which one the row keeps (the later in compose_row's
# order wins; anything else set twice is an error). The cell says what was asked, the context
# what ran: a quality unit decodes in pieces of min(n_batch, n_ctx), and a worker picks the
# thread count when the cell leaves it at 0.
OVERRIDES = {
    "n_batch": ("cell", "facts", "the context's: a quality unit decodes pieces of min(n_batch, n_ctx)"),
    "n_ubatch": ("cell", "facts", "the context's: at most its n_batch"),
    "host_class": ("cell", "placement", "the worker's where the cell names none (quality cells)"),
}
STRICT_ROWS_ENV = "KVSWEEP_STRICT_ROWS"  # "1": an unknown or doubly set column raises (the tests set it)


class RowError(ValueError):
    pass


def compose_row(parts: list[tuple[str, dict]], owners: dict[str, str] | None = None) -> dict:
    """One attempt row from its producers' columns, in order (name, columns): every column must
    be in ATTEMPTS_SCHEMA, and one set by two producers must be declared in OVERRIDES (the later
    one wins). With KVSWEEP_STRICT_ROWS=1 a violation raises RowError; otherwise the row is
    written as composed, unknown columns dropped by the schema, and the problem logged once.
    `owners`, when given, receives column -> the producer whose value the row keeps."""
    row: dict = {}
    owner: dict[str, str] = {} if owners is None else owners
    problems = []
    for name, columns in parts:
        for key, value in columns.items():
            if key not in _SCHEMA_NAMES:
                problems.append(f"{name} sets {key!r}, which the attempts schema lacks")
            elif key in owner:
                declared = OVERRIDES.get(key)
                if declared is None or declared[:2] != (owner[key], name):
                    problems.append(f"{key!r} is set by {owner[key]} and by {name}")
            row[key] = value
            owner[key] = name
    if problems:
        _report(problems)
    return row


_SCHEMA_NAMES: frozenset[str] = frozenset()  # set below, once the schema exists
_reported: set[str] = set()


def _report(problems: list[str]) -> None:
    import os

    text = "; ".join(problems)
    if os.environ.get(STRICT_ROWS_ENV) == "1":
        raise RowError(f"attempt row: {text} (kvsweep/records.py: declare the column in "
                       "ATTEMPTS_SCHEMA, or the override in OVERRIDES)")
    if text not in _reported:  # a bug of kvsweep's, not of the user's input: say it once
        _reported.add(text)
        from loguru import logger

        logger.warning(f"attempt row: {text}")


TOKENS_SCHEMA = pa.schema(
    [
        ("cell_id", pa.string()),
        ("attempt_id", pa.string()),
        ("chunk", pa.int32()),
        ("pos", pa.int32()),
        ("token", pa.int32()),
        ("nll", pa.float64()),
        ("nll_base", pa.float64()),
        ("kld", pa.float64()),
        ("dp", pa.float64()),
        ("same_top", pa.bool_()),
    ]
)

_SCHEMA_NAMES = frozenset(ATTEMPTS_SCHEMA.names)
