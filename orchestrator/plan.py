"""From a matrix to cells (what to measure) and work units (how to hand them to workers).

Cells: every model x cache configuration gets a quality cell per n_ctx (plus the baseline
configuration itself, so reports show its PPL) and a pp and a tg cell per depth per host class.
Units: quality cells sharing model, corpus, n_ctx and baseline run together (one baseline pass
for up to `max_contexts` compared caches); speed cells of one model, configuration and host
class form a series in increasing depth, so the depth fill is shared by pp and tg and a series
can stop at its first out-of-memory depth.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable

from kvsweep import defaults
from kvsweep.cells import CEILING, GENERATION, PROMPT, QUALITY, Cell, WorkUnit
from kvsweep.orchestrator.inputs import ResolvedInputs
from kvsweep.orchestrator.matrix import Matrix


def expand(
    matrix: Matrix, inputs: ResolvedInputs, host_classes: Iterable[str], backends: Iterable[str] = ()
) -> list[Cell]:
    rt = matrix.runtime
    common = dict(
        flash_attn=rt.flash_attn,
        n_gpu_layers=rt.n_gpu_layers,
        n_threads=rt.n_threads,
        env=json.dumps(dict(rt.env), sort_keys=True),
    )
    speed_classes = list(matrix.placement.speed_host_classes) or sorted(set(host_classes))
    quality_backends = [""]
    if matrix.placement.quality_on == "every-backend":
        quality_backends = sorted(set(backends)) or [""]
    cells: list[Cell] = []
    for model in inputs.models:
        who = dict(
            model_name=model.spec.name,
            model_path=model.path,
            model_sha256=model.sha256 or f"unknown:{model.path}",
            model_recipe=model.recipe_json,
        )
        q = matrix.quality
        if q is not None:
            g = q.generation
            generation = dict(gen_tokens=g.tokens, gen_depths=",".join(map(str, g.depths)),
                              gen_prompts=g.prompts) if g else {}
            configs = list(matrix.configs)
            # the reference's own row; against f32 also f16 and bf16, which is where a 16-bit
            # cache's own loss shows (the Qwen3.5 f16-vs-bf16 finding, shared/seeds/000)
            own = [(q.baseline, q.baseline)]
            if q.baseline == "f32":
                own += [("f16", "f16"), ("bf16", "bf16")]
            configs = [c for c in own if c not in configs] + configs
            for n_ctx in q.n_ctx:
                for backend in quality_backends:
                    for k, v in configs:
                        cells.append(Cell(
                            kind=QUALITY, type_k=k, type_v=v, n_ctx=n_ctx, max_chunks=q.max_chunks,
                            corpus_path=inputs.corpus_path, corpus_sha256=inputs.corpus_sha256,
                            baseline=q.baseline, n_batch=q.n_batch, n_ubatch=q.n_ubatch,
                            quality_backend=backend, score=q.score,
                            precision=q.precision.to_json() if q.precision else "",
                            **generation, **who, **common,
                        ))
        s = matrix.speed
        if s is not None:
            fill = dict(fill="corpus", corpus_path=inputs.fill_path,
                        corpus_sha256=inputs.fill_sha256) if s.fill == "corpus" else {}
            tests = [(PROMPT, s.n_prompt, 0)] if s.n_prompt else []
            tests += [(GENERATION, 0, s.n_gen)] if s.n_gen else []
            for host_class in speed_classes:
                for k, v in matrix.configs:
                    for depth in s.depths:
                        for kind, n_prompt, n_gen in tests:
                            cells.append(Cell(
                                kind=kind, type_k=k, type_v=v, n_depth=depth, n_prompt=n_prompt,
                                n_gen=n_gen, repetitions=s.repetitions, n_batch=s.n_batch,
                                n_ubatch=s.n_ubatch, host_class=host_class,
                                precision=s.precision.to_json() if s.precision else "",
                                **fill, **who, **common,
                            ))
                    if s.ceiling is not None:
                        # after the grid: the ceiling between its deepest fit and first failure
                        cells.append(Cell(
                            kind=CEILING, type_k=k, type_v=v, n_prompt=s.n_prompt, n_gen=s.n_gen,
                            n_batch=s.n_batch, n_ubatch=s.n_ubatch, host_class=host_class,
                            ceiling=json.dumps({"depths": list(s.depths), "resolution": s.ceiling.resolution},
                                               separators=(",", ":")),
                            **who, **common,
                        ))
    return cells


def _unit_id(cells: list[Cell]) -> str:
    return hashlib.sha256("".join(c.cell_id for c in cells).encode()).hexdigest()[:16]


def quality_group_key(c: Cell) -> tuple:
    return (c.model_sha256, c.corpus_sha256, c.n_ctx, c.max_chunks, c.baseline, c.n_batch,
            c.n_ubatch, c.flash_attn, c.n_threads, c.env, c.n_gpu_layers, c.quality_backend,
            c.score, c.gen_tokens, c.gen_depths, c.gen_prompts, c.precision)


def _grid_key(c: Cell) -> tuple:
    """What a ceiling cell and the speed cells of its depth grid share."""
    return (c.model_sha256, c.type_k, c.type_v, c.host_class, c.flash_attn, c.n_batch, c.n_ubatch,
            c.n_threads, c.env, c.n_gpu_layers)


def speed_series_key(c: Cell) -> tuple:
    return _grid_key(c) + (c.fill, c.corpus_sha256)


def ceiling_grids(cells: Iterable[Cell]) -> dict[str, list[tuple[int, str]]]:
    """Per ceiling cell, the (depth, cell id) of the speed cells of its depth grid."""
    cells = list(cells)
    speed: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for c in cells:
        if c.kind in (PROMPT, GENERATION):
            speed[_grid_key(c)].append((c.n_depth, c.cell_id))
    return {c.cell_id: sorted(speed.get(_grid_key(c), [])) for c in cells if c.kind == CEILING}


def make_units(cells: Iterable[Cell], max_contexts: int = defaults.MAX_CONTEXTS) -> list[WorkUnit]:
    """Group cells into units; models stay together so workers load each model rarely."""
    quality: dict[tuple, list[Cell]] = defaultdict(list)
    speed: dict[tuple, list[Cell]] = defaultdict(list)
    ceilings: list[Cell] = []
    for c in cells:
        if c.kind == CEILING:
            ceilings.append(c)  # a unit of its own: it needs its series' results first
            continue
        (quality[quality_group_key(c)] if c.kind == QUALITY else speed[speed_series_key(c)]).append(c)
    units: list[WorkUnit] = []
    for key, group in quality.items():
        # the baseline configuration's own cell needs no context of its own
        own = [c for c in group if c.type_k == c.type_v == c.baseline]
        others = [c for c in group if c not in own]
        size = max(1, max_contexts)
        batches = [others[i : i + size] for i in range(0, len(others), size)] or [[]]
        batches[0] = own + batches[0]
        for batch in batches:
            units.append(WorkUnit(_unit_id(batch), batch, batch[0].model_sha256,
                                  backend=batch[0].quality_backend))
    for key, series in speed.items():
        series.sort(key=lambda c: (c.n_depth, c.kind != PROMPT))
        units.append(WorkUnit(_unit_id(series), series, series[0].model_sha256,
                              host_class=series[0].host_class))
    for c in ceilings:
        units.append(WorkUnit(_unit_id([c]), [c], c.model_sha256, host_class=c.host_class))
    units.sort(key=lambda u: (u.model_sha256, u.kind != QUALITY, u.kind == CEILING))
    return units


def summarize(cells: list[Cell]) -> list[tuple[str, str, int]]:
    """(model, kind, count) rows for the dry-run table."""
    counts = Counter((c.model_name, c.kind) for c in cells)
    order = {QUALITY: 0, PROMPT: 1, GENERATION: 2, CEILING: 3}
    return sorted(((m, k, n) for (m, k), n in counts.items()), key=lambda r: (r[0], order[r[1]]))
