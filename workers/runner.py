"""Runs a work unit on this host and reports what happened, cell by cell.

Independent of Ray, so tests can drive it directly; the Ray actor (actor.py) only wraps it.
`UnitRunner.run` is a generator of events (kvsweep/messages.py), yielded as they happen:
Progress (the unit is alive), Finished (one attempt of one cell, any status), Returned (cells
handed back unattempted: a speed series stops at its first final OOM so the orchestrator
decides: re-place on a host with more memory, or skip deeper).

OOM is retried here first, with backoff (tenacity): memory another process held may free up.
Every try is reported; tries that will be retried carry the flag "oom-retrying".
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from kvsweep.cells import CEILING, QUALITY, Cell, WorkUnit
from kvsweep.hashing import file_sha256
from kvsweep.workers import faults, llama_api
from kvsweep.workers.generated_models import ModelRecipe, cached_model
from kvsweep.workers.ceiling import run_ceiling_cell
from kvsweep.workers.kl_math import Reducer
from kvsweep.messages import OOM_SPLIT, RETRYING_FLAG, Finished, Progress, Returned, RetryPolicy  # noqa: F401
from kvsweep.workers.failures import ExpectedFailure, failure_outcome
from kvsweep.workers.quality import run_quality_group
from kvsweep.workers.speed import DepthStateCache, run_speed_cell



class ModelMismatch(ExpectedFailure, RuntimeError):
    pass


class ModelCache:
    """Keeps one model loaded (weights are the largest thing in memory) and counts loads."""

    def __init__(self):
        self.model: llama_api.Model | None = None
        self.sha256 = ""
        self.loads = 0
        self._verified: dict[str, str] = {}

    def get(self, cell: Cell) -> llama_api.Model:
        if self.model is not None and self.sha256 == cell.model_sha256:
            return self.model
        self.close()
        path = resolve_model_path(cell)
        if path not in self._verified:
            self._verified[path] = file_sha256(path)
        if self._verified[path] != cell.model_sha256:
            raise ModelMismatch(
                f"model file {path} on this host has sha256 {self._verified[path][:16]}..., "
                f"the plan expects {cell.model_sha256[:16]}...: put the same file here"
            )
        self.model = llama_api.Model(path, n_gpu_layers=cell.n_gpu_layers)
        self.sha256 = cell.model_sha256
        self.loads += 1
        return self.model

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
        self.model, self.sha256 = None, ""


def resolve_model_path(cell: Cell) -> str:
    """The model file on this host; a generated model is made here when missing."""
    if os.path.exists(cell.model_path):
        return cell.model_path
    if cell.model_recipe:
        return str(cached_model(ModelRecipe.from_json(cell.model_recipe)))
    raise FileNotFoundError(f"model file {cell.model_path} is not on this host")


class UnitRunner:
    """Runs work units with llama.cpp. One per worker process."""

    def __init__(self, n_threads: int = 0, retry: RetryPolicy | None = None,
                 speed_flags: tuple[str, ...] = ()):
        self.n_threads = n_threads or _physical_cores()
        # flags every speed cell of this worker carries: its device is not what it seems
        # (CPU_TYPE_DEVICE: a Vulkan device that computes on the CPU)
        self.speed_flags = list(speed_flags)
        self.retry = retry or RetryPolicy()
        self.models = ModelCache()
        self.depth_cache = DepthStateCache()
        self._tokens: dict[tuple[str, str], np.ndarray] = {}
        self._reducers: dict[int, Reducer] = {}

    def run(self, unit: WorkUnit, corpora: dict[str, str] | None = None) -> Iterator[object]:
        env = _apply_env(unit.cells[0].env) if unit.cells else {}
        try:
            if unit.kind == QUALITY:
                inner = self._run_quality(unit, corpora or {})
            elif unit.kind == CEILING:
                inner = self._run_ceiling(unit)
            else:
                inner = self._run_speed(unit, corpora or {})
            for event in inner:
                if isinstance(event, Finished) and self.models.model is not None:
                    info = self.models.model.info
                    event.outcome.facts.setdefault("model_filename", info.model_filename)
                    event.outcome.facts.setdefault("model_type", info.model_type)
                    event.outcome.facts.setdefault("model_size", info.model_size)
                    event.outcome.facts.setdefault("model_n_params", info.model_n_params)
                yield event
        finally:
            _restore_env(env)

    # -- quality ---------------------------------------------------------------------------
    def _run_quality(self, unit: WorkUnit, corpora: dict[str, str]) -> Iterator[object]:
        cells = unit.cells
        started = time.time()
        compared = sum(1 for c in cells if not (c.type_k == c.type_v == c.baseline))
        try:
            model = self.models.get(cells[0])
            tokens = self._corpus_tokens(model, cells[0], corpora)
            reducer = self._reducer(model.info.n_vocab)
            if compared > 1:
                # several compared contexts at once: an OOM means the unit is too big for this
                # worker, not that any one cache is; the driver splits it (no retry in place)
                try:
                    group = run_quality_group(model, cells, tokens, self._threads(cells[0]), reducer,
                                              split_on_oom=True)
                    outcomes = yield from _relay_progress(unit.unit_id, group)
                except llama_api.OutOfMemory as exc:
                    for cell in cells:
                        outcome = failure_outcome(cell, started, exc, retrying=True)
                        outcome.flags.append(OOM_SPLIT)
                        yield Finished(outcome)
                    yield Returned([c.cell_id for c in cells], OOM_SPLIT)
                    return
                for outcome in outcomes:
                    yield Finished(outcome)
                return
            for attempt in self._oom_retrying():
                with attempt:
                    try:
                        group = run_quality_group(
                            model, cells, tokens, self._threads(cells[0]), reducer
                        )
                        outcomes = yield from _relay_progress(unit.unit_id, group)
                    except llama_api.OutOfMemory as exc:
                        retrying = attempt.retry_state.attempt_number <= self.retry.oom_retries
                        for cell in cells:
                            yield Finished(failure_outcome(cell, started, exc, retrying))
                        started = time.time()
                        raise
            for outcome in outcomes:
                yield Finished(outcome)
        except llama_api.OutOfMemory:
            return  # every try was reported above
        except Exception as exc:  # the whole group failed the same way
            for cell in cells:
                yield Finished(failure_outcome(cell, started, exc))

    def _corpus_tokens(self, model, cell: Cell, corpora: dict[str, str]) -> np.ndarray:
        key = (cell.model_sha256, cell.corpus_sha256)
        if key not in self._tokens:
            text = corpora.get(cell.corpus_sha256)
            if text is None:
                with open(cell.corpus_path, encoding="utf-8") as f:
                    text = f.read()
            self._tokens[key] = model.tokenize_corpus(text)
        return self._tokens[key]

    def _reducer(self, n_vocab: int) -> Reducer:
        if n_vocab not in self._reducers:
            self._reducers[n_vocab] = Reducer(n_vocab, threads=self.n_threads)
        return self._reducers[n_vocab]

    # -- speed -----------------------------------------------------------------------------
    def _run_speed(self, unit: WorkUnit, corpora: dict[str, str]) -> Iterator[object]:
        for i, cell in enumerate(unit.cells):
            started = time.time()
            try:
                model = self.models.get(cell)
                fill = self._corpus_tokens(model, cell, corpora) if cell.fill == "corpus" else None
                for attempt in self._oom_retrying():
                    with attempt:
                        try:
                            faults.maybe_inject(cell)
                            outcome = run_speed_cell(
                                model, cell, self._threads(cell), self.depth_cache, fill_tokens=fill
                            )
                        except llama_api.OutOfMemory as exc:
                            retrying = attempt.retry_state.attempt_number <= self.retry.oom_retries
                            yield Finished(failure_outcome(cell, started, exc, retrying))
                            started = time.time()
                            raise
                outcome.flags += [f for f in self.speed_flags if f not in outcome.flags]
                yield Finished(outcome)
            except llama_api.OutOfMemory:
                rest = [c.cell_id for c in unit.cells[i + 1 :]]
                if rest:
                    yield Returned(rest, "after-oom")
                return
            except Exception as exc:
                yield Finished(failure_outcome(cell, started, exc))

    # -- ceiling ---------------------------------------------------------------------------
    def _run_ceiling(self, unit: WorkUnit) -> Iterator[object]:
        for cell in unit.cells:
            started = time.time()
            try:
                model = self.models.get(cell)
                lo, hi = unit.ceiling_bounds.get(cell.cell_id, (None, None))
                yield Finished(run_ceiling_cell(model, cell, lo, hi, unit.worker_memory,
                                                unit.worker_backend, self._threads(cell)))
            except Exception as exc:
                yield Finished(failure_outcome(cell, started, exc))

    # -- helpers ---------------------------------------------------------------------------
    def _threads(self, cell: Cell) -> int:
        return cell.n_threads or self.n_threads

    def _oom_retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(llama_api.OutOfMemory),
            stop=stop_after_attempt(self.retry.oom_retries + 1),
            wait=wait_exponential(multiplier=self.retry.oom_backoff_s, max=60),
            reraise=True,
        )

    def close(self) -> None:
        self.models.close()
        for r in self._reducers.values():
            r.close()


def _apply_env(env_json: str) -> dict[str, str | None]:
    """Set the cell's environment knobs (read by llama.cpp at context creation, e.g.
    LLAMA_ATTN_ROT_DISABLE); returns what to restore."""
    import json

    saved = {}
    for key, value in json.loads(env_json or "{}").items():
        saved[key] = os.environ.get(key)
        os.environ[key] = str(value)
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _relay_progress(unit_id: str, group):
    """Turn the quality group's (done, total) yields into Progress events; return its result."""
    while True:
        try:
            done, total = next(group)
        except StopIteration as stop:
            return stop.value
        yield Progress(unit_id, done, total)


def _physical_cores() -> int:
    from kvsweep.workers.probe import _physical_cores as cores

    return cores()
