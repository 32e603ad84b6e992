"""Fault injection: a testing aid that makes chosen cells fail in a chosen way, for real.

Tests use it against a real Ray cluster to prove every failure path (docs/failures.md). Never
set it for a real sweep. A fault plan is a JSON list, from the environment variable
KVSWEEP_FAULTS or the matrix's `[testing] faults`:

    [{"match": {"type_k": "q4_0", "kind": "tg", "n_depth": 1024}, "fault": "oom", "times": 1}]

`match` compares cell fields for equality (any subset; {} matches every cell). Faults:
    oom     raise the same OutOfMemory a failed KV-cache allocation raises
    abort   abort() the worker process, as GGML_ABORT / GGML_ASSERT do
    segv    read address 0: the worker process dies of SIGSEGV
    exit    the worker process exits at once (like being killed)
    hang    sleep far past any time limit, without progress
    slow    sleep `seconds` (default 1), then run the cell normally: stretches a sweep
    wait    block until the file `path` exists (at most `seconds`, default 3600), then run the
            cell normally: a test holds a sweep at a known cell, acts (kills the driver, adds
            or removes a node, fills the disk), then lets it go on, however fast cells are
    nan     the cell's logits turn into NaN (quality cells), as a broken kernel would give
    wrong-type  the cell's context is made with the K type `type` (default q4_0) instead of
            its own, silently, as a setting that does not take effect: the config check must
            flag it (workers/config_check.py)
    busy    a speed cell's timed repetitions run beside a busy loop on every CPU (real
            processes, killed afterwards): a busy host, for the host-busy check
            (workers/host_load.py)
    error   raise an ordinary exception
`times` (default: always) limits how often a fault fires per cell; the count survives the
worker's death, in KVSWEEP_FAULTS_STATE (a directory; default: the system temp directory).
`seconds` is the slow fault's delay (the wait fault's limit). `min_contexts` makes a fault fire
only in a work unit holding at least that many contexts (a unit too big for a worker). `needs_bytes` makes a fault fire only on workers with less memory than that, as if the cell
needed that much: how tests build fleets where a cell fits on some hosts and not others.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvsweep.cells import Cell
from kvsweep.fault_plan import FAULTS, validate  # noqa: F401  (the plan's keys: kvsweep/fault_plan.py)

ENV = "KVSWEEP_FAULTS"
STATE_ENV = "KVSWEEP_FAULTS_STATE"

_plan_from_unit: list[dict] = []
_worker_memory: int = 0


class InjectedError(RuntimeError):
    pass


def set_plan(plan: list[dict] | None, worker_memory: int = 0) -> None:
    """Faults from the matrix (the environment's add to them) and this worker's memory."""
    global _plan_from_unit, _worker_memory
    _plan_from_unit = list(plan or [])
    _worker_memory = worker_memory


def _memory() -> int:
    if _worker_memory:
        return _worker_memory
    from kvsweep.workers.probe import probe_host

    probe = probe_host()
    gpus = probe.gpu_devices
    return gpus[0].memory_total if gpus else probe.ram_total


def _plan() -> list[dict]:
    plan = list(_plan_from_unit)
    raw = os.environ.get(ENV)
    if raw:
        plan += json.loads(raw)
    return plan


def _fires(cell: Cell, fault: str, contexts: int = 1) -> bool:
    return _firing_entry(cell, fault, contexts) is not None


def _firing_entry(cell: Cell, fault: str, contexts: int = 1) -> dict | None:
    """The plan entry of this fault that fires for this cell now (counting it), or None."""
    for i, entry in enumerate(_plan()):
        if entry.get("fault") != fault:
            continue
        if any(getattr(cell, k, None) != v for k, v in entry.get("match", {}).items()):
            continue
        if "needs_bytes" in entry and _memory() >= entry["needs_bytes"]:
            continue
        if contexts < entry.get("min_contexts", 0):
            continue
        times = entry.get("times")
        if times is None:
            return entry
        state = Path(os.environ.get(STATE_ENV) or tempfile.gettempdir()) / "kvsweep-faults"
        state.mkdir(parents=True, exist_ok=True)
        counter = state / f"{cell.cell_id}-{i}-{fault}"
        fired = int(counter.read_text()) if counter.exists() else 0
        if fired < times:
            counter.write_text(str(fired + 1))
            return entry
    return None


def maybe_inject(cell: Cell, contexts: int = 1) -> None:
    """Called by the runner before a cell runs; `contexts`: how many llama.cpp contexts its
    work unit keeps alive (a quality unit: the baseline's and every compared cache's)."""
    from kvsweep.workers.llama_api import OutOfMemory

    _nan_decided.pop((cell.cell_id, "nan"), None)  # a new attempt decides afresh
    if _fires(cell, "oom", contexts):
        raise OutOfMemory(
            "injected fault: oom",
            "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 123456789\n"
            "llama_kv_cache: failed to allocate buffer for kv cache (injected fault)",
        )
    if _fires(cell, "error"):
        raise InjectedError("injected fault: error")
    if _fires(cell, "hang"):
        time.sleep(10**6)
    slow = _firing_entry(cell, "slow")
    if slow is not None:
        time.sleep(float(slow.get("seconds", 1.0)))
    wait = _firing_entry(cell, "wait")
    if wait is not None:
        deadline = time.monotonic() + float(wait.get("seconds", 3600.0))
        while not os.path.exists(wait["path"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    if _fires(cell, "abort"):
        os.abort()
    if _fires(cell, "segv"):
        ctypes.string_at(0)
    if _fires(cell, "exit"):
        os._exit(137)


@contextlib.contextmanager
def busy_host(cell: Cell):
    """While it is open, a busy loop per CPU runs beside the cell when a busy fault fires."""
    if _firing_entry(cell, "busy") is None:
        yield
        return
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        # every loop running (it has used CPU time) before the cell is timed, however slow the host
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(_cpu_ticks(p.pid) for p in loops):
            time.sleep(0.02)
        yield
    finally:
        for p in loops:
            p.kill()
            p.wait()


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])
    except OSError:  # no /proc (macOS): count the loop as running
        return 1


def context_types(cell: Cell) -> tuple[str, str]:
    """The K and V types to make the cell's context with: its own, unless a wrong-type fault
    fires."""
    entry = _firing_entry(cell, "wrong-type")
    if entry is None:
        return cell.type_k, cell.type_v
    return entry.get("type", "q4_0"), cell.type_v


def poison_scores(cell: Cell, scores) -> None:
    """Replace a quality cell's figures with NaN, upstream of the real NaN check."""
    import numpy as np

    if _fires_quietly(cell, "nan"):
        scores.nll = np.full_like(scores.nll, np.nan)
        scores.kld = np.full_like(scores.kld, np.nan)


def _fires_quietly(cell: Cell, fault: str) -> bool:
    # "nan" is checked on every scored piece: consume a `times` count once per cell only
    key = (cell.cell_id, fault)
    if key in _nan_decided:
        return _nan_decided[key]
    _nan_decided[key] = _fires(cell, fault)
    return _nan_decided[key]


_nan_decided: dict[tuple[str, str], bool] = {}

