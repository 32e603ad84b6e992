"""What `kvsweep run --dry-run` prints: the plan, the fleet it is for, what fits where, and
which input files are missing."""

from __future__ import annotations

from collections import defaultdict

from kvsweep import defaults
from kvsweep.cache_types import config_label
from kvsweep.cells import QUALITY, SPEED_KINDS
from kvsweep.orchestrator.memory_plan import eligible, fits, unsupported
from kvsweep.orchestrator.plan import make_units, summarize
from kvsweep.paths import fmt_bytes
from kvsweep.terminal import print_table


def fmt_depth(depth: int) -> str:
    return f"{depth // 1024}K" if depth >= 1024 and depth % 1024 == 0 else str(depth)


def print_plan(plan, address, out=print) -> None:
    """`plan`: orchestrator.sweep.DryRun."""
    matrix, cells, view, preds, problems = plan.matrix, plan.cells, plan.view, plan.predictions, plan.problems
    out(f"matrix {matrix.source} (sweep '{matrix.name}')")
    out(f"configurations: {', '.join(config_label(k, v) for k, v in matrix.configs)}")
    by_class = defaultdict(list)
    for slot in view.slots:
        by_class[slot.host_class].append(slot)
    classes = ", ".join(
        f"{c} ({len(s)} worker{'s' if len(s) > 1 else ''}, "
        + "/".join(sorted({fmt_bytes(x.memory_total) for x in s})) + ")"
        for c, s in sorted(by_class.items()))
    out(f"host classes:   {classes or '(none)'}" + ("" if address else " (this host; --address to plan for a fleet)"))
    _print_types(matrix, cells, view, out)
    units = make_units(cells, matrix.quality.max_contexts if matrix.quality else defaults.MAX_CONTEXTS)
    out(f"{len(cells)} cells in {len(units)} work units:")
    print_table(["model", "kind", "cells"], summarize(cells), out=out, numeric=[2])
    _print_memory(cells, view, preds, out)
    if plan.warnings:
        out(f"\nwarnings: {len(plan.warnings)}")
        for warning in plan.warnings:
            out(f"  - {warning}")
    if problems:
        out(f"\ncannot run as it is: {len(problems)} problem(s):")
        for problem in problems:
            out(f"  - {problem}")


def _print_types(matrix, cells, view, out) -> None:
    """Per cache type, the host classes (and builds) that run it; cells no build runs."""
    names = list(dict.fromkeys(t for k, v in matrix.configs for t in (k, v)))
    out("cache types, and where a build runs them:")
    print_table(["type", "host classes (builds) that run it"],
                [[name, ", ".join(sorted({f"{s.host_class} ({s.build})" for s in view.slots
                                          if s.kv_types is None or name in s.kv_types})) or "no host of the fleet"]
                 for name in names], out=out)
    nowhere = unsupported(cells, view.slots)
    if nowhere:
        pairs = sorted({config_label(c.type_k, c.type_v) for c in nowhere})
        out(f"  {len(nowhere)} cell(s) need a pair no build runs ({', '.join(pairs)}): recorded as "
            "unsupported when the sweep runs")


def _print_memory(cells, view, preds, out) -> None:
    speed = [c for c in cells if c.kind in SPEED_KINDS and c.cell_id in preds]
    if not speed and not preds:
        out("\nmemory: not predicted (the model files are not on this host)")
        return
    for model in sorted({c.model_name for c in speed}):
        mine = [c for c in speed if c.model_name == model]
        depths = sorted({c.n_depth for c in mine})
        # the larger of pp and tg per (configuration, depth): what must fit
        need: dict[tuple, int] = {}
        for c in mine:
            key = (config_label(c.type_k, c.type_v), c.n_depth)
            need[key] = max(need.get(key, 0), preds[c.cell_id].total)
        weights = preds[mine[0].cell_id].weights
        out(f"\npredicted memory, GiB (weights {weights / 2**30:.2f} + KV cache + buffers): {model}")
        configs = list(dict.fromkeys(k for k, _ in need))
        print_table(["config"] + [fmt_depth(d) for d in depths],
                    [[config] + [f"{need[(config, d)] / 2**30:.2f}" for d in depths] for config in configs],
                    out=out, numeric=range(1, len(depths) + 1))
    out("\nfits (cells predicted to fit on at least one eligible worker):")
    for host_class in sorted({s.host_class for s in view.slots}):
        mine = [c for c in cells if c.cell_id in preds and c.host_class == host_class and c.kind in SPEED_KINDS]
        slots = [s for s in view.slots if s.host_class == host_class]
        ok = [c for c in mine if any(fits(preds[c.cell_id], s.memory_total, s.backend) for s in slots)]
        out(f"  {host_class}: {len(ok)} of {len(mine)} speed cells"
            + ("" if len(ok) == len(mine) else f" ({len(mine) - len(ok)} recorded as predicted-oom, not tried)"))
    quality = [c for c in cells if c.kind == QUALITY and c.cell_id in preds]
    if quality:
        ok = [c for c in quality if any(eligible(c, s) and fits(preds[c.cell_id], s.memory_total, s.backend)
                                        for s in view.slots)]
        out(f"  quality (any eligible worker): {len(ok)} of {len(quality)} cells")
