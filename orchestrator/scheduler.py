"""The driver loop: hand work units to workers, record every attempt, decide what happens next.

Ray does the distribution (actors, streaming generators, restarts); this is the policy on top:

- dispatch: an idle worker takes the first queued unit it may run (host class for speed
  units, backend for per-backend quality, exclusions from the OOM ladder), preferring units of
  the model it already has loaded; one unit per worker at a time, so timings never overlap.
- every Finished event becomes an attempt row at once (buffered, flushed at least every
  second); Progress events prove liveness.
- OOM ladder: the worker retried with backoff already; a final OOM is re-placed on a worker
  with more memory when the fleet has one (replace_on_oom), else recorded. Deeper depths of
  that series on that host class are then recorded as skipped (skip_deeper_after_oom).
- crash: the actor died (abort, segfault, kill). Speed: the running cell gets a crash row and
  is retried up to crash_retries; quality: every cell of the group gets one and is retried
  alone, so the culprit is isolated. Ray restarts the actor; the model is loaded again.
- timeout: no event for cell_timeout_s. The actor is killed (and restarted by Ray), the
  running cell(s) recorded as timeout, the rest of the unit queued again.
- node lost: its cells are recorded (flag node-lost, not counted as crashes) and run elsewhere.
- ceilings: a ceiling unit is held until no cell of its depth grid is queued or running, then
  handed the grid's outcome (deepest depth that ran, first that did not fit) to bisect from.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger

from kvsweep import defaults, records
from kvsweep.cells import CEILING, QUALITY, Cell, WorkUnit
from kvsweep.orchestrator.fleet import WorkerSlot, node_alive
from kvsweep.orchestrator.memory_plan import builds_run, eligible, fits, pack_quality, placeable
from kvsweep.orchestrator.plan import make_units
from kvsweep.orchestrator.sink import ResultSink
from kvsweep.messages import OOM_SPLIT, RETRYING_FLAG, Finished, Progress, Returned
from kvsweep.workers.worker_log import reason_line


@dataclass
class Policy:
    cell_timeout_s: float = 3600.0
    crash_retries: int = defaults.CRASH_RETRIES
    replace_on_oom: bool = True
    skip_deeper_after_oom: bool = True
    max_contexts: int = defaults.MAX_CONTEXTS
    fleet_refresh_s: float = 10.0  # how often hosts that joined mid-sweep are looked for


@dataclass
class InFlight:
    slot: WorkerSlot
    unit: WorkUnit
    gen: object
    started: float
    last_event: float
    pending: list[str]  # cell ids not yet finished or returned, in order
    killed_for_timeout: bool = False
    oom_replace: list[Cell] = field(default_factory=list)  # cells to re-place after final OOM
    oom_final: set[str] = field(default_factory=set)  # series heads whose OOM was final


@dataclass
class Summary:
    final: dict[str, str] = field(default_factory=dict)  # cell id -> status of its last final attempt
    stranded: list[Cell] = field(default_factory=list)  # no worker can ever run these
    interrupted: bool = False

    @property
    def by_status(self) -> Counter:
        return Counter(self.final.values())


class Scheduler:
    def __init__(
        self,
        cells: list[Cell],
        slots: list[WorkerSlot],
        sink: ResultSink,
        run_id: str,
        policy: Policy,
        corpora_refs: dict,
        attempts_so_far: dict[str, int] | None = None,
        on_event: Callable[[str, WorkerSlot | None, object], None] = lambda *a: None,
        refresh_fleet: Callable[[], list[WorkerSlot]] | None = None,
        predicted: dict | None = None,
        ceiling_grids: dict[str, list[tuple[int, str]]] | None = None,
        known_status: dict[str, str] | None = None,
    ):
        self.cells = {c.cell_id: c for c in cells}
        self.slots = slots
        self.sink = sink
        self.run_id = run_id
        self.policy = policy
        self.corpora_refs = corpora_refs
        self.attempts = Counter(attempts_so_far or {})
        self.crashes: Counter = Counter()
        self.oom_nodes: dict[str, set[str]] = {}
        units = make_units(cells, policy.max_contexts)
        self.queue: deque[WorkUnit] = deque(u for u in units if u.kind != CEILING)
        # ceiling units wait for their depth grid (_release_ceilings)
        self.held: list[WorkUnit] = [u for u in units if u.kind == CEILING]
        self.ceiling_grids = ceiling_grids or {}  # ceiling cell id -> [(depth, speed cell id)]
        self.known_status = known_status or {}  # cell id -> how it ended in earlier sessions
        self.in_flight: dict[str, InFlight] = {}
        self.summary = Summary()
        self.on_event = on_event
        self.refresh_fleet = refresh_fleet
        self._last_refresh = time.monotonic()
        self.predicted = predicted or {}  # cell id -> memory_plan.Prediction

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Summary:
        import ray

        try:
            while self.queue or self.in_flight or self.held:
                self._release_ceilings()
                self._dispatch()
                if not self.in_flight:
                    if self.held and not self.queue:
                        self._release_ceilings(force=True)  # what is left of their grids never runs
                        continue
                    if self.queue:
                        self._strand_queue()
                    break
                gens = [f.gen for f in self.in_flight.values()]
                ready, _ = ray.wait(gens, num_returns=1, timeout=0.25)
                for gen in ready:
                    flight = next(f for f in self.in_flight.values() if f.gen is gen)
                    # this event and those the worker has sent since: their attempts go into
                    # the write-ahead log as one record when the block ends
                    with self.sink.batch():
                        self._drain(flight)
                self._check_timeouts()
                self._maybe_refresh_fleet()
                self.sink.maybe_flush()
        except KeyboardInterrupt:
            self.summary.interrupted = True
            logger.warning("interrupted: recording what has finished; `kvsweep resume` continues")
        finally:
            self.sink.close()
        return self.summary

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not slot.alive or slot.busy or not self.queue:
                continue
            unit = self._take_unit_for(slot)
            if unit is None:
                continue
            unit.worker_memory, unit.worker_backend = slot.memory_total, slot.backend
            gen = slot.actor.run_unit.remote(unit, self.corpora_refs)
            now = time.monotonic()
            self.in_flight[slot.worker_id] = InFlight(slot, unit, gen, now, now, [c.cell_id for c in unit.cells])
            slot.busy = True
            slot.loaded_model = unit.model_sha256
            self.on_event("dispatched", slot, unit)

    def _release_ceilings(self, force: bool = False) -> None:
        """Queue the ceiling units whose depth grid is done (or all, with `force`), each with
        its grid's bounds: the deepest depth whose every speed cell ended ok, and the first
        deeper one that ran out of memory or that the planner refused (None: none did)."""
        if not self.held:
            return
        pending = {c.cell_id for u in self.queue for c in u.cells}
        pending.update(cid for f in self.in_flight.values() for cid in f.pending)
        for unit in list(self.held):
            cid = unit.cells[0].cell_id
            grid = self.ceiling_grids.get(cid, [])
            if not force and any(sid in pending for _, sid in grid):
                continue
            self.held.remove(unit)
            unit.ceiling_bounds[cid] = grid_bounds(
                [(d, self.summary.final.get(sid) or self.known_status.get(sid, "")) for d, sid in grid])
            self.queue.append(unit)

    def _take_unit_for(self, slot: WorkerSlot) -> WorkUnit | None:
        """The first queued unit this worker may run of the model it has loaded, else the
        first it may run at all. One pass that stops at the first unit of its model: units
        are queued grouped by model, so that is usually near the front."""
        unit = None
        for queued in self.queue:
            if not self._can_run(slot, queued):
                continue
            if queued.model_sha256 == slot.loaded_model:
                unit = queued
                break
            if unit is None:
                unit = queued
                if not slot.loaded_model:
                    break  # no model loaded: any first unit is as good
        if unit is None:
            return None
        self.queue.remove(unit)
        return self._split_by_memory(slot, self._split_by_support(slot, unit))

    def _split_by_memory(self, slot: WorkerSlot, unit: WorkUnit) -> WorkUnit | None:
        """Keep the cells predicted to fit this worker; the others wait for a bigger one."""
        too_big = [c for c in unit.cells if c.cell_id in self.predicted
                   and not fits(self.predicted[c.cell_id], slot.memory_total, slot.backend)]
        if too_big:
            need = max(self.predicted[c.cell_id].on_device(slot.backend) for c in too_big)
            for bigger in make_units(too_big, self.policy.max_contexts):
                bigger.min_free_memory = max(unit.min_free_memory, slot.memory_total + 1, int(need))
                bigger.exclude_nodes = unit.exclude_nodes
                self.queue.append(bigger)
        keep = [c for c in unit.cells if c not in too_big]
        if not keep:
            return None
        if unit.kind == QUALITY:
            # every compared context of a unit is alive at once: run as many as fit here
            keep, wait = pack_quality(keep, slot.memory_total, slot.backend)
            for later in reversed(make_units(wait, self.policy.max_contexts)):
                later.min_free_memory, later.exclude_nodes = unit.min_free_memory, unit.exclude_nodes
                self.queue.appendleft(later)
        unit.cells = keep
        return unit

    @staticmethod
    def _can_run(slot: WorkerSlot, unit: WorkUnit) -> bool:
        if unit.host_class and unit.host_class != slot.host_class:
            return False
        if unit.backend and unit.backend != slot.backend:
            return False
        if slot.node_id in unit.exclude_nodes:
            return False
        if slot.memory_total < unit.min_free_memory:
            return False
        return any(builds_run(c, slot) for c in unit.cells)

    def _split_by_support(self, slot: WorkerSlot, unit: WorkUnit) -> WorkUnit:
        """Keep the cells this worker's build runs; the others go back for another worker."""
        other = [c for c in unit.cells if not builds_run(c, slot)]
        if other:
            for rest in make_units(other, self.policy.max_contexts):
                rest.min_free_memory, rest.exclude_nodes = unit.min_free_memory, unit.exclude_nodes
                self.queue.append(rest)
            unit.cells = [c for c in unit.cells if c not in other]
        return unit

    def record_unsupported(self, cells: list[Cell]) -> None:
        """Cells no worker's build runs: recorded, not tried (docs/forks.md)."""
        for cell in cells:
            builds = sorted({f"{s.host_class} ({s.build}): {', '.join(sorted(s.kv_types or ()))}"
                             for s in self.slots if placeable(cell, s)})
            what = f"K={cell.type_k} V={cell.type_v}" + (f" with a {cell.baseline} baseline" if cell.baseline else "")
            self._record_synthetic(
                cell, records.UNSUPPORTED, "NoBuildRunsThisPair",
                f"no worker's llama.cpp build runs {what}; the builds that could take it: "
                + "; ".join(builds) + ". Join a host whose build has it (docs/forks.md); "
                "`kvsweep resume` runs it then")
        self.forget(cells)

    def forget(self, cells: list[Cell]) -> None:
        """Cells recorded without running: out of the plan of this session."""
        gone = {c.cell_id for c in cells}
        for cid in gone:
            self.cells.pop(cid, None)
        for unit in list(self.queue):
            unit.cells = [c for c in unit.cells if c.cell_id not in gone]
            if not unit.cells:
                self.queue.remove(unit)

    def record_predicted_oom(self, cells: list[Cell]) -> None:
        """Cells the planner says fit on no eligible worker: recorded, not tried."""
        for cell in cells:
            pred = self.predicted[cell.cell_id]
            biggest = max((s.memory_total for s in self.slots if eligible(cell, s)), default=0)
            self._record_synthetic(
                cell, records.PREDICTED_OOM, "PredictedOutOfMemory",
                f"predicted {pred.total / 2**30:.2f} GiB (weights {pred.weights / 2**30:.2f}, KV "
                f"{pred.kv / 2**30:.2f}, compute {pred.compute / 2**30:.2f}); the largest eligible "
                f"host has {biggest / 2**30:.2f} GiB (placement.try_predicted_oom tries anyway)")
        self.forget(cells)

    def _strand_queue(self) -> None:
        """Units no live worker may run (host class absent, every bigger host tried)."""
        for unit in list(self.queue):
            for cell in unit.cells:
                if unit.exclude_nodes:  # OOM everywhere we could try: the OOM stands
                    self._record_synthetic(cell, records.OOM, "OutOfMemory",
                                           "ran out of memory on every host it could be placed on")
                else:
                    self.summary.stranded.append(cell)
        self.queue.clear()

    # -- events ------------------------------------------------------------------------------
    DRAIN_MAX = 256  # events taken from one worker in a row before the others get a look

    def _drain(self, flight: InFlight) -> None:
        """Handle the event that is ready, then every further one the worker has already sent."""
        for _ in range(self.DRAIN_MAX):
            self._advance(flight)
            if self.in_flight.get(flight.slot.worker_id) is not flight or not _next_ready(flight.gen):
                return

    def _advance(self, flight: InFlight) -> None:
        import ray

        try:
            ref = next(flight.gen)
            event = ray.get(ref)
        except StopIteration:
            self._unit_done(flight)
            return
        except ray.exceptions.RayTaskError as exc:
            # the worker's code raised past the runner's own handling: a bug, record it
            for cid in flight.pending:
                self._record_synthetic(self.cells[cid], records.ERROR, type(exc).__name__, str(exc), flight.slot)
            flight.pending.clear()
            self._unit_done(flight)
            return
        except ray.exceptions.RayError as exc:
            # the worker or its node went away (actor died, unavailable, unschedulable because
            # its node is gone, killed by Ray's memory monitor, lost objects)
            self._unit_died(flight, exc)
            return
        flight.last_event = time.monotonic()
        if isinstance(event, Progress):
            self.on_event("progress", flight.slot, event)
        elif isinstance(event, Finished):
            self._finished(flight, event.outcome)
        elif isinstance(event, Returned):
            self._returned(flight, event)

    def _finished(self, flight: InFlight, outcome: records.CellOutcome) -> None:
        cell = self.cells[outcome.cell_id]
        self._record(cell, outcome, flight.slot)
        if RETRYING_FLAG in outcome.flags:
            return  # the worker tries again itself
        if outcome.cell_id in flight.pending:
            flight.pending.remove(outcome.cell_id)
        if outcome.status == records.OOM:
            self._after_oom(flight, cell)

    def _after_oom(self, flight: InFlight, cell: Cell) -> None:
        tried = self.oom_nodes.setdefault(cell.cell_id, set())
        tried.add(flight.slot.node_id)
        bigger = [
            s for s in self.slots
            if s.alive and s.node_id not in tried and s.memory_total > flight.slot.memory_total
            and (not cell.host_class or s.host_class == cell.host_class)
            and (not cell.quality_backend or s.backend == cell.quality_backend) and builds_run(cell, s)
        ]
        if self.policy.replace_on_oom and bigger:
            flight.oom_replace.append(cell)
        else:
            flight.oom_final.add(cell.cell_id)

    def _returned(self, flight: InFlight, event: Returned) -> None:
        cells = [self.cells[c] for c in event.cell_ids]
        for cid in event.cell_ids:
            if cid in flight.pending:
                flight.pending.remove(cid)
        if event.reason == OOM_SPLIT:
            # a quality unit ran out of memory with several compared contexts alive: run it
            # again as two halves (each split again if it must), as a crash isolates cells
            compared = sum(1 for c in cells if not (c.type_k == c.type_v == c.baseline))
            halves = make_units(cells, max(1, -(-compared // 2)))
            self.queue.extendleft(reversed(halves))
            return
        if flight.oom_replace:
            flight.oom_replace.extend(cells)  # the rest of the series follows its head
            return
        failed_depth = min((self.cells[c].n_depth for c in flight.oom_final), default=None)
        if not self.policy.skip_deeper_after_oom or failed_depth is None:
            self._requeue(cells)
            return
        deeper = [c for c in cells if c.n_depth > failed_depth]
        self._requeue([c for c in cells if c.n_depth <= failed_depth])  # e.g. tg at that depth
        for cell in deeper:
            self._record_synthetic(
                cell, records.SKIPPED, "SkippedAfterOOM",
                f"depth {failed_depth} of this configuration ran out of memory on this host class "
                "(retry.skip_deeper_after_oom)", flight.slot)

    def _unit_done(self, flight: InFlight) -> None:
        self._release(flight)
        self._replace_after_oom(flight)
        if flight.pending:  # the worker ended without reporting some cells: run them again
            self._requeue([self.cells[c] for c in flight.pending])

    def _replace_after_oom(self, flight: InFlight) -> None:
        """Queue cells that ran out of memory here for a worker with more memory."""
        if not flight.oom_replace:
            return
        tried = set().union(*(self.oom_nodes.get(c.cell_id, set()) for c in flight.oom_replace))
        for unit in make_units(flight.oom_replace, self.policy.max_contexts):
            unit.exclude_nodes = tuple(sorted(tried))
            unit.min_free_memory = flight.slot.memory_total + 1
            self.queue.appendleft(unit)
        flight.oom_replace = []

    def _unit_died(self, flight: InFlight, exc: BaseException) -> None:
        slot = flight.slot
        self._release(flight)
        slot.loaded_model = ""
        if flight.killed_for_timeout:
            self._requeue([self.cells[c] for c in flight.pending])
            return
        if _is_ray_oom(exc):
            self._killed_for_memory(flight, exc)
            return
        node_lost = not node_alive(slot.node_id)
        if node_lost:
            slot.alive = False
            logger.warning(f"worker {slot.worker_id} on {slot.host}: node lost; its cells go elsewhere")
        if not flight.pending:
            return
        running = flight.pending if flight.unit.kind == QUALITY else flight.pending[:1]
        rest = [c for c in flight.pending if c not in running]
        self.sink.write_log()  # what was received before the death is logged before we wait
        report = "" if node_lost else _crash_report(slot)
        message = _describe_death(exc)
        if reason_line(report):
            message = f"{message}\nlast words: {reason_line(report)}"
        again: list[Cell] = []
        for cid in running:
            cell = self.cells[cid]
            flags = ["node-lost"] if node_lost else []
            self._record_synthetic(cell, records.CRASH, "NodeLost" if node_lost else "WorkerDied",
                                   message, slot, flags, log_tail=report)
            if node_lost:
                again.append(cell)
                continue
            self.crashes[cid] += 1
            if self.crashes[cid] <= self.policy.crash_retries:
                again.append(cell)
        if flight.unit.kind == QUALITY and len(running) > 1 and not node_lost:
            for cell in again:  # isolate the culprit: each cell on its own next time
                self.queue.appendleft(make_units([cell], self.policy.max_contexts)[0])
            again = []
        self._requeue(again + [self.cells[c] for c in rest], front=True)

    def _killed_for_memory(self, flight: InFlight, exc: BaseException) -> None:
        """Ray's memory monitor killed the worker: an OOM of the running cell(s), not a crash."""
        running = flight.pending if flight.unit.kind == QUALITY else flight.pending[:1]
        for cid in running:
            cell = self.cells[cid]
            self._record_synthetic(cell, records.OOM, "RayOutOfMemoryError",
                                   "Ray's memory monitor killed the worker: " + str(exc).splitlines()[0],
                                   flight.slot)
            self._after_oom(flight, cell)
        rest = [self.cells[c] for c in flight.pending if c not in running]
        flight.pending = []
        if rest and flight.unit.kind != QUALITY:
            self._returned(flight, Returned([c.cell_id for c in rest], "after-oom"))
        else:
            self._requeue(rest)
        self._replace_after_oom(flight)

    def _check_timeouts(self) -> None:
        import ray

        now = time.monotonic()
        for flight in list(self.in_flight.values()):
            if flight.killed_for_timeout or now - flight.last_event < self.policy.cell_timeout_s:
                continue
            running = flight.pending if flight.unit.kind == QUALITY else flight.pending[:1]
            for cid in running:
                self._record_synthetic(
                    self.cells[cid], records.TIMEOUT, "CellTimeout",
                    f"no progress for {self.policy.cell_timeout_s:.0f} s (runtime.cell_timeout_s); "
                    "the worker was killed and replaced", flight.slot)
            flight.pending = [c for c in flight.pending if c not in running]
            flight.killed_for_timeout = True
            logger.warning(f"worker {flight.slot.worker_id}: cell timed out, killing the actor")
            ray.kill(flight.slot.actor, no_restart=False)

    def _maybe_refresh_fleet(self) -> None:
        if self.refresh_fleet is None or time.monotonic() - self._last_refresh < self.policy.fleet_refresh_s:
            return
        self._last_refresh = time.monotonic()
        new = self.refresh_fleet()
        if new:
            logger.info(f"{len(new)} worker(s) joined: {', '.join(s.worker_id for s in new)}")
            self.slots.extend(new)

    # -- helpers -----------------------------------------------------------------------------
    def _release(self, flight: InFlight) -> None:
        flight.slot.busy = False
        self.in_flight.pop(flight.slot.worker_id, None)
        self.on_event("idle", flight.slot, None)

    def _requeue(self, cells: list[Cell], front: bool = False) -> None:
        if not cells:
            return
        units = make_units(cells, self.policy.max_contexts)
        if front:
            self.queue.extendleft(reversed(units))
        else:
            self.queue.extend(units)

    def _record(self, cell: Cell, outcome: records.CellOutcome, slot: WorkerSlot | None) -> None:
        self.attempts[cell.cell_id] += 1
        row = attempt_row(cell, outcome, slot, self.run_id, self.attempts[cell.cell_id])
        if cell.cell_id in self.predicted:
            backend = slot.backend if slot is not None else "CPU"
            row["predicted_bytes"] = self.predicted[cell.cell_id].on_device(backend)
        self.sink.add(row, outcome.tokens)
        if RETRYING_FLAG not in outcome.flags:
            self.summary.final[cell.cell_id] = outcome.status
        self.on_event("finished", slot, (cell, outcome))

    def _record_synthetic(self, cell: Cell, status: str, error_class: str, message: str,
                          slot: WorkerSlot | None = None, flags: list[str] | None = None,
                          log_tail: str = "") -> None:
        now = time.time()
        outcome = records.CellOutcome(cell.cell_id, status, now, now, error_class=error_class,
                                      error_message=message, flags=flags or [], log_tail=log_tail)
        self._record(cell, outcome, slot)


def grid_bounds(statuses: list[tuple[int, str]]) -> tuple[int | None, int | None]:
    """(deepest depth at which every cell ended ok, first deeper depth that did not fit)."""
    by_depth: dict[int, list[str]] = {}
    for depth, status in statuses:
        by_depth.setdefault(depth, []).append(status)
    ok = [d for d, st in by_depth.items() if all(s == records.OK for s in st)]
    lo = max(ok) if ok else None
    failed = [d for d, st in by_depth.items() if d > (lo if lo is not None else -1)
              and any(s in (records.OOM, records.PREDICTED_OOM) for s in st)]
    return lo, (min(failed) if failed else None)


def _next_ready(gen) -> bool:
    """Whether the worker's next event is already here (False when unsure: the loop's
    ray.wait then picks the stream up again)."""
    try:
        return bool(gen.next_ready())
    except Exception:
        return False


def _is_ray_oom(exc: BaseException) -> bool:
    import ray

    return isinstance(exc, ray.exceptions.OutOfMemoryError) or "memory monitor" in str(exc).lower()


def _crash_report(slot: WorkerSlot, timeout_s: float = 30.0) -> str:
    """Ask the restarted worker what its dead predecessor wrote last ("" if it cannot say)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return ray.get(slot.actor.crash_report.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.2)  # Ray is restarting it: ask again
        except Exception:  # the worker may not come back (e.g. its node is going away)
            return ""
    return ""


def _describe_death(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return "the worker process died while running this cell: " + (text[0] if text else type(exc).__name__)


def _ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def attempt_row(cell: Cell, outcome: records.CellOutcome, slot: WorkerSlot | None, run_id: str,
                attempt: int) -> dict:
    """One attempt's row, composed from its producers in order (records.compose_row checks that
    each column is in the schema and set by one producer, or by two as records.OVERRIDES says)."""
    return records.compose_row(attempt_parts(cell, outcome, slot, run_id, attempt))


def attempt_parts(cell: Cell, outcome: records.CellOutcome, slot: WorkerSlot | None, run_id: str,
                  attempt: int) -> list[tuple[str, dict]]:
    """The producers of an attempt row and their columns, in the order they are composed:
    the attempt itself, the cell, the worker that ran it, what the worker found out about the
    run (facts: context, build, host load, model) and what it measured (metrics)."""
    attempt_columns = {
        "run_id": run_id,
        "cell_id": cell.cell_id,
        "attempt_id": uuid.uuid4().hex,
        "attempt": attempt,
        "kind": cell.kind,
        "test": cell.test_name,
        "status": outcome.status,
        "error_class": outcome.error_class,
        "error_message": outcome.error_message,
        "log_tail": outcome.log_tail,
        "flags": list(outcome.flags),
        "started_at": _ts(outcome.started_at),
        "finished_at": _ts(outcome.finished_at),
        "duration_s": outcome.finished_at - outcome.started_at,
    }
    cell_columns = {name: getattr(cell, name) for name in _CELL_COLUMNS}
    parts = [("attempt", attempt_columns), ("cell", cell_columns)]
    if slot is not None:
        placement = slot.row_fields()
        if cell.host_class:  # a speed cell's host class is the cell's (placement matched it)
            placement.pop("host_class")
        parts.append(("placement", placement))
    parts += [("facts", outcome.facts), ("metrics", outcome.metrics)]
    return parts


# the Cell fields an attempt row carries (the plan has the rest)
_CELL_COLUMNS = ("model_name", "model_sha256", "type_k", "type_v", "flash_attn", "n_gpu_layers",
                 "n_batch", "n_ubatch", "env", "n_ctx", "max_chunks", "corpus_sha256", "baseline",
                 "n_depth", "n_prompt", "n_gen", "repetitions", "host_class", "score", "gen_tokens",
                 "fill", "precision")
