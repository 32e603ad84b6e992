"""The context ceiling, measured: the deepest depth at which a configuration's pp and tg tests fit
on this worker, bisected after the depth grid (`[speed] ceiling`).

The driver hands the cell its grid's outcome (orchestrator/scheduler.py, once every speed cell
of the series is final): `lo`, the deepest depth whose pp and tg cells ran, and `hi`, the first
deeper depth that ran out of memory or that the planner refused. Without a failure in the grid,
`hi` is one past the largest depth the memory model (kvsweep/memory_model.py) says fits this
worker. The worker then bisects [lo, hi) down to the matrix's resolution.

A probe at depth d makes the context a test at that depth makes (n_ctx = d + max(n_prompt,
n_gen), the cell's K/V types, batch sizes and flash attention) and decodes one ubatch in it.
llama.cpp allocates the whole KV cache and reserves the worst-case compute graph when it makes
the context, so that is where a deeper test would run out of memory, without filling d tokens.
A probe fits when:
  1. the memory model's prediction is within the worker's memory (checked first: nothing is
     allocated that the worker's memory limit would not hold, so on a CPU host with
     `--memory-limit` the host is never pushed into swap or the OOM killer), and
  2. llama.cpp makes the context and decodes the ubatch (a GPU's allocation failure is an OOM), and
  3. what llama.cpp reports allocating (weights + KV + recurrent state + compute + output
     buffers) is within the worker's memory less the planner's headroom.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace

import numpy as np

from kvsweep import records
from kvsweep.cells import GENERATION, PROMPT, Cell
from kvsweep.memory_model import HEADROOM, fits, predict
from kvsweep.workers import faults, llama_api, probe

MAX_DEPTH = 1 << 24  # the matrix's bound on depths (orchestrator/matrix.py MAX_TOKENS)

FITS = "fits"
OOM = "oom"  # llama.cpp could not allocate it
OVER_LIMIT = "over-limit"  # allocated, but more than the worker's memory allows
PREDICTED_OOM = "predicted-oom"  # not tried: the memory model says it does not fit


@dataclass
class Probe:
    depth: int
    outcome: str
    bytes: int  # measured when allocated; else the prediction

    def text(self) -> str:
        return f"{self.depth}:{self.outcome}:{self.bytes}"


def resolution_tokens(resolution: str, lo: int, hi: int) -> int:
    """"256" -> 256 tokens; "1/16" -> a sixteenth of the first interval (at least 1)."""
    if "/" in resolution:
        return max(1, math.ceil((hi - lo) / int(resolution.split("/")[1])))
    return max(1, int(resolution))


def run_ceiling_cell(model: llama_api.Model, cell: Cell, lo: int | None, hi: int | None,
                     memory_total: int, backend: str, n_threads: int) -> records.CellOutcome:
    started = time.time()
    spec = json.loads(cell.ceiling)
    shape = model.shape
    if shape is None:
        raise ValueError(f"{model.path}: its GGUF metadata cannot be read, so no probe can be "
                         "checked against the memory model")
    probes: list[Probe] = []  # every probe, in the order made (the row keeps them)

    def probe_at(depth: int) -> Probe:
        probes.append(_probe(model, cell, depth, shape, memory_total, backend, n_threads))
        return probes[-1]

    bound = "grid"
    low = lo if lo is not None else 0
    at_low = probe_at(low)
    if at_low.outcome != FITS:
        # the grid's deepest fit does not fit now (or nothing in the grid did): look below it
        hi, low = low, 0
        if low != hi:
            at_low = probe_at(0)
        if at_low.outcome != FITS:
            return _outcome(model, cell, started, probes, None, low, 0, at_low, "grid", records.OOM)
    if hi is None:
        hi, bound = _planner_bound(cell, low, shape, memory_total, backend)
    step = resolution_tokens(spec["resolution"], low, hi)
    best = at_low
    while hi - low > step:
        mid = (low + hi) // 2
        p = probe_at(mid)
        if p.outcome == FITS:
            low, best = mid, p
        else:
            hi = mid
    return _outcome(model, cell, started, probes, low, hi, step, best, bound, records.OK)


def _probe(model, cell: Cell, depth: int, shape, memory_total: int, backend: str, n_threads: int) -> Probe:
    test = _test_at(cell, depth)
    prediction = predict(test, shape)
    predicted = prediction.on_device(backend)
    if memory_total and not fits(prediction, memory_total, backend):
        return Probe(depth, PREDICTED_OOM, predicted)
    type_k, type_v = faults.context_types(cell)
    n_ctx = test.n_prompt + test.n_gen + depth
    settings = llama_api.ContextSettings(type_k=type_k, type_v=type_v, n_ctx=n_ctx,
                                         n_batch=cell.n_batch, n_ubatch=cell.n_ubatch,
                                         flash_attn=cell.flash_attn, n_threads=n_threads)
    try:
        with llama_api.Context(model, settings) as ctx:
            f = ctx.facts
            measured = (shape.weights_bytes + f.kv_bytes + f.recurrent_bytes + f.compute_bytes
                        + f.output_bytes)
            if memory_total and measured > memory_total * (1 - HEADROOM):
                return Probe(depth, OVER_LIMIT, measured)
            n = min(cell.n_ubatch, cell.n_batch, n_ctx)
            tokens = np.random.default_rng(depth).integers(0, model.info.n_vocab, size=n, dtype=np.int32)
            ctx.decode(tokens, 0)
            ctx.synchronize()
            return Probe(depth, FITS, measured)
    except llama_api.OutOfMemory:
        return Probe(depth, OOM, predicted)


def _test_at(cell: Cell, depth: int) -> Cell:
    """The bigger of the cell's pp and tg tests at `depth` (the one that needs more memory)."""
    if cell.n_prompt >= cell.n_gen:
        return replace(cell, kind=PROMPT, n_depth=depth, n_gen=0, ceiling="", cell_id="x")
    return replace(cell, kind=GENERATION, n_depth=depth, n_prompt=0, ceiling="", cell_id="x")


def _planner_bound(cell: Cell, low: int, shape, memory_total: int, backend: str) -> tuple[int, str]:
    """One past the largest depth the memory model says fits (no grid depth failed)."""
    def ok(d: int) -> bool:
        return fits(predict(_test_at(cell, d), shape), memory_total, backend)

    if not memory_total:
        return MAX_DEPTH + 1, "max-tokens"
    top = max(256, low)
    while ok(top):
        if top >= MAX_DEPTH:
            return MAX_DEPTH + 1, "max-tokens"
        top = min(2 * top, MAX_DEPTH)
    good = low
    while top - good > 1:  # the planner is arithmetic: bisect it to the token
        mid = (good + top) // 2
        good, top = (mid, top) if ok(mid) else (good, mid)
    return top, "planner"


def _outcome(model, cell: Cell, started: float, probes: list[Probe], depth: int | None, fail: int,
             step: int, best: Probe, bound: str, status: str) -> records.CellOutcome:
    return records.CellOutcome(
        cell_id=cell.cell_id,
        status=status,
        started_at=started,
        finished_at=time.time(),
        error_class="" if status == records.OK else "OutOfMemory",
        error_message="" if status == records.OK else "not even depth 0 fits this worker",
        metrics={
            "ceiling_depth": depth,
            "ceiling_fail_depth": fail,
            "ceiling_resolution": step,
            "ceiling_bytes": best.bytes if depth is not None else None,
            "ceiling_bound": bound,
            "ceiling_probes": [p.text() for p in probes],
        },
        facts=probe.run_facts(model.path),
    )
