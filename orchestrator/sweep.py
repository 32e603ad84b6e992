"""One sweep, start to end: what `kvsweep run` and `kvsweep resume` do.

    load + validate the matrix -> check and fingerprint its files -> lock the run directory ->
    start or join Ray, one worker actor per device -> expand the plan for this fleet ->
    skip what the run directory already holds -> schedule -> flush -> report

The CLI, the tests and the benchmarks all call `run_sweep`, so there is one code path.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from kvsweep import defaults, records
from kvsweep.cells import Cell
from kvsweep.orchestrator import fleet as fleet_mod
from kvsweep.orchestrator import memory_plan
from kvsweep.orchestrator.history import cells_to_run, read_history
from kvsweep.orchestrator.inputs import resolve_inputs
from kvsweep.orchestrator.matrix import BuildTypes, Matrix, MatrixError, load_matrix, type_problems
from kvsweep.orchestrator.plan import ceiling_grids, expand, make_units
from kvsweep.orchestrator.progress import ProgressView
from kvsweep.orchestrator.run_dir import RunDir, new_session_id
from kvsweep.orchestrator.scheduler import Policy, Scheduler, Summary
from kvsweep.orchestrator.sink import ResultSink, recover
from kvsweep.messages import RetryPolicy


class SweepError(RuntimeError):
    """The sweep cannot start or go on for a reason the message explains (no workers, no
    cluster at the address)."""


class InputProblems(RuntimeError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class SweepResult:
    run_dir: Path
    planned: int
    to_run: int
    summary: Summary = field(default_factory=Summary)
    report: Path | None = None


def default_run_dir(matrix: Matrix) -> Path:
    return Path("runs") / matrix.name


@dataclass
class RunOptions:
    run_dir: Path | None = None
    address: str | None = None  # None: an embedded local Ray
    redo: str = "failed"
    runner: str = "llama"  # "fake": FakeRunner, for scheduler tests and benchmarks only
    fake_cell_seconds: float = 0.0
    n_workers: int = 1  # embedded cluster only: worker actors on this host
    progress: bool | None = None  # None: live display when stderr is a terminal
    report: bool = True
    flush_interval_s: float = 1.0
    fleet_refresh_s: float = 10.0  # with --address: how often to look for hosts that joined
    memory_limit: int = 0  # embedded cluster only: memory kvsweep may assume (0: all)


def run_sweep(matrix_path: str | Path, opts: RunOptions | None = None,
              matrix: Matrix | None = None) -> SweepResult:
    opts = opts or RunOptions()
    if matrix is None:
        # an embedded cluster is this host: its build's cache types are known before Ray starts,
        # so they are checked with every other problem of the file at once
        embedded = opts.address is None and opts.runner == "llama"
        matrix = load_matrix(matrix_path, local_builds() if embedded else None)
    inputs = resolve_inputs(matrix)
    if inputs.problems:
        raise InputProblems(inputs.problems)
    for warning in inputs.warnings:
        logger.warning(warning)
    run_dir = RunDir(Path(opts.run_dir) if opts.run_dir else default_run_dir(matrix))
    run_dir.path.mkdir(parents=True, exist_ok=True)
    with run_dir.acquire_lock() as lock:
        if lock.took_over:
            logger.warning(f"took over the lock of a driver that is gone ({lock.took_over})")
        return _run_locked(matrix, inputs, run_dir, opts)


def _run_locked(matrix: Matrix, inputs, run_dir: RunDir, opts: RunOptions) -> SweepResult:
    started_ray = fleet_mod.ensure_ray(opts.address, opts.n_workers, opts.memory_limit)
    import ray

    slots = []
    try:
        retry = RetryPolicy(matrix.retry.oom_retries, matrix.retry.oom_backoff_s)
        slot_args = dict(runner=opts.runner, fake_cell_seconds=opts.fake_cell_seconds,
                         n_threads=matrix.runtime.n_threads, retry=retry,
                         fault_plan=list(matrix.faults), env=dict(matrix.runtime.env))
        slots = fleet_mod.create_slots(**slot_args)
        if not slots:
            raise SweepError("no kvsweep workers in the Ray cluster: start some with "
                             "`kvsweep worker join --address HEAD:PORT` (see docs/fleet.md)")
        problems = cache_type_problems(matrix, builds_of(slots))
        if problems:
            raise MatrixError(problems)
        cells = expand(matrix, inputs, {s.host_class for s in slots}, {s.backend for s in slots})
        session = new_session_id()
        recovered = recover(run_dir, session)
        if recovered:
            logger.info(f"recovered {recovered} attempt(s) from the log of a driver that stopped early")
        history = read_history(run_dir)
        todo = cells_to_run(cells, history, opts.redo)
        manifest = run_dir.start_session(matrix.source, session, sys.argv, len(cells))
        run_dir.write_plan(cells)
        logger.info(f"{run_dir.path}: {len(cells)} cells planned, {len(cells) - len(todo)} already "
                    f"done, {len(todo)} to run on {len(slots)} worker(s)")
        result = SweepResult(run_dir.path, len(cells), len(todo))
        if todo:
            corpora = {inputs.corpus_sha256: ray.put(inputs.corpus_text)} if inputs.corpus_text else {}
            if inputs.fill_sha256 and inputs.fill_sha256 not in corpora:  # speed.fill = "corpus"
                corpora[inputs.fill_sha256] = ray.put(Path(inputs.fill_path).read_text(encoding="utf-8"))
            progress = ProgressView(len(cells), len(cells) - len(todo), live=opts.progress)
            sink = ResultSink(run_dir, session, opts.flush_interval_s)
            known = {s.worker_id for s in slots}

            def refresh():
                new = fleet_mod.create_slots(known=known, **slot_args) if opts.address else []
                known.update(s.worker_id for s in new)
                return new

            predicted = memory_plan.predictions(cells)
            scheduler = Scheduler(
                todo, slots, sink, manifest["run_id"], _policy(matrix, opts), corpora,
                attempts_so_far={k: h.attempts for k, h in history.items()},
                on_event=progress.on_event, refresh_fleet=refresh, predicted=predicted,
                ceiling_grids=ceiling_grids(cells),
                known_status={k: (records.OK if h.ok else h.last_status) for k, h in history.items()},
            )
            nowhere = memory_plan.unsupported(todo, slots)
            if nowhere:
                again = [c for c in nowhere if history.get(c.cell_id) is not None
                         and history[c.cell_id].last_status == records.UNSUPPORTED]
                fresh = [c for c in nowhere if c not in again]
                logger.info(f"{len(nowhere)} cell(s) need a K/V pair no worker's build runs: "
                            f"{len(fresh)} recorded as unsupported, {len(again)} were already")
                scheduler.record_unsupported(fresh)
                scheduler.forget(again)
            if not matrix.placement.try_predicted_oom:
                too_big = memory_plan.fits_nowhere(todo, predicted, slots)
                if too_big:
                    logger.info(f"{len(too_big)} cell(s) fit on no host (memory planner): recorded as "
                                "predicted-oom, not tried")
                    scheduler.record_predicted_oom(too_big)
            progress.start()
            try:
                result.summary = scheduler.run()
            finally:
                progress.stop()
            if result.summary.stranded:
                classes = sorted({c.host_class or c.quality_backend or "?" for c in result.summary.stranded})
                logger.warning(f"{len(result.summary.stranded)} cells wait for a host the fleet does not "
                               f"have ({', '.join(classes)}); `kvsweep resume` runs them once it does")
        loads = _model_loads(slots) if todo else {}
        if loads:
            logger.info("model loads per worker: " + ", ".join(f"{w} {n}" for w, n in loads.items()))
            manifest = run_dir.manifest()
            manifest["sessions"][-1]["model_loads"] = loads
            run_dir.write_manifest(manifest)
        if opts.report:
            from kvsweep.analysis.report import write_report

            result.report = write_report(run_dir.path)
        return result
    finally:
        for slot in slots:
            try:
                ray.kill(slot.actor)
            except Exception:
                pass
        if started_ray:
            fleet_mod.shutdown()


def local_builds() -> list[BuildTypes]:
    """This host's build and the K/V cache types it runs (the capability check, cached)."""
    from kvsweep.workers.capabilities import host_capabilities
    from kvsweep.workers.probe import probe_host

    probe, caps = probe_host(), host_capabilities()
    return [BuildTypes(f"this host ({probe.build_name} {probe.build_commit})",
                       frozenset(caps.get("cache_types", ())))]


def builds_of(slots) -> list[BuildTypes]:
    """The fleet's builds and their cache types, from its workers (unknown ones left out)."""
    seen: dict[tuple[str, str], frozenset[str]] = {}
    for s in slots:
        if getattr(s, "kv_types", None) is not None:
            seen.setdefault((s.host_class, s.build), s.kv_types)
    return [BuildTypes(f"{host_class} ({build})", types) for (host_class, build), types in seen.items()]


def _model_loads(slots) -> dict[str, int]:
    """How often each worker loaded a model this session (grouping by model keeps it low)."""
    import ray

    out = {}
    for slot in slots:
        try:
            out[slot.worker_id] = ray.get(slot.actor.describe.remote(), timeout=30)["model_loads"]
        except Exception:  # a worker that died or whose node left: nothing to report
            continue
    return out


def _policy(matrix: Matrix, opts: RunOptions) -> Policy:
    return Policy(
        fleet_refresh_s=opts.fleet_refresh_s,
        cell_timeout_s=matrix.runtime.cell_timeout_s,
        crash_retries=matrix.retry.crash_retries,
        replace_on_oom=matrix.retry.replace_on_oom,
        skip_deeper_after_oom=matrix.retry.skip_deeper_after_oom,
        max_contexts=matrix.quality.max_contexts if matrix.quality else defaults.MAX_CONTEXTS,
    )


@dataclass
class FleetView:
    """What a dry run knows of the fleet: host classes, backends, memory (no actors started)."""

    host_classes: list[str]
    backends: list[str]
    slots: list  # _ViewSlot: host class, backend, memory, build and what it runs


def fleet_view(address: str | None, memory_limit: int = 0) -> FleetView:
    """`memory_limit`: without an address, the embedded cluster's `--memory-limit`."""
    from kvsweep.orchestrator.fleet_nodes import list_workers

    rows = list_workers(address)
    limit = memory_limit if not address else 0
    slots = [_ViewSlot(r.host_class, r.backend, min(r.memory, limit) if limit else r.memory, f"{r.build}",
                       r.cache_types, r.kv_pairs)
             for r in rows for _ in range(r.devices)]
    return FleetView(sorted({r.host_class for r in rows}), sorted({r.backend for r in rows}), slots)


@dataclass
class _ViewSlot:
    """A worker as a dry run knows it (no actor): what the planner and placement look at."""

    host_class: str
    backend: str
    memory_total: int
    build: str
    kv_types: frozenset[str] | None
    kv_pairs: frozenset[str] | None

    def runs(self, type_k: str, type_v: str) -> bool:
        return self.kv_pairs is None or f"{type_k}/{type_v}" in self.kv_pairs


@dataclass
class DryRun:
    """The plan without running it, and what stands in its way."""

    matrix: Matrix
    cells: list[Cell]
    view: FleetView
    predictions: dict
    problems: list[str]  # the matrix cannot run as it is (`--dry-run` exits 2)
    warnings: list[str]  # it runs, but probably not as meant


def dry_run(matrix_path: str | Path, address: str | None = None, memory_limit: int = 0) -> DryRun:
    view = fleet_view(address, memory_limit)
    matrix = load_matrix(matrix_path)
    inputs = resolve_inputs(matrix)
    cells = expand(matrix, inputs, view.host_classes, view.backends)
    # a type no build of the fleet has is a problem like a missing file: the plan is still shown
    problems = cache_type_problems(matrix, builds_of(view.slots)) + inputs.problems
    return DryRun(matrix, cells, view, memory_plan.predictions(cells), problems, inputs.warnings)


def cache_type_problems(matrix: Matrix, builds: list[BuildTypes]) -> list[str]:
    """The matrix's cache types (and baseline) that no build of the fleet has."""
    if not builds:
        return []
    wanted = list(matrix.configs) + ([(matrix.quality.baseline,) * 2] if matrix.quality else [])
    return [f"{matrix.source}: [cache] {msg} -> {fix}" for _, msg, fix in type_problems(wanted, builds)]


def units_of(cells: list[Cell], matrix: Matrix):
    return make_units(cells, matrix.quality.max_contexts if matrix.quality else defaults.MAX_CONTEXTS)
