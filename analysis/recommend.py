"""The recommendations section: which configuration to use, per model and host class, for each
quality budget. The decisions are SQL (report_views.sql: rec_candidates, recommend_fastest,
recommend_context); this module states the rules and words the outcome, ties and gaps included.
"""

from __future__ import annotations

from collections import OrderedDict

from kvsweep.analysis.document import Block, Bullets, Heading, Paragraph, Table
from kvsweep.analysis.formatting import fmt_budget, fmt_bytes, fmt_depth, fmt_kl, fmt_status, join_names

RULES = (
    "**Rules.** "
    "(1) *Candidates:* a configuration qualifies for a quality budget when every quality cell it "
    "has (each n_ctx) ran ok without a flag and its mean KL divergence against the baseline is "
    "within the budget (the worst n_ctx counts). "
    "(2) *Fastest generation at deep context:* among the candidates with a trusted tg result on "
    "the host class, tg tokens/s at the deepest depth where every one of them ran; a candidate "
    "within noise of the fastest (difference ≤ √(sd₁² + sd₂²), the standard deviations over "
    "repetitions) ties with it, and a tie goes to the lower mean KL. "
    "(3) *Largest context that fits:* the candidate with the deepest depth at which all its speed "
    "cells ran ok without a flag; when several reach the same depth, the one using the least "
    "memory there (the most room left), then the lower mean KL. "
    "Cells that failed or carry a flag are never used; they are listed below the tables."
)


def budget_line(budgets) -> str:
    parts = [fmt_budget(b.name, b.max_kld) for b in budgets]
    return ("**Budgets:** " + "; ".join(parts) + ". Set your own with "
            "`kvsweep report RUN_DIR --budget NAME=KL` (repeatable).")


class Notes:
    """Explanations under a table, one per distinct text; a text that holds for several budgets
    is said once, naming them (or "every budget")."""

    def __init__(self, budgets: list[str]):
        self.budgets = budgets
        self.texts: OrderedDict[str, list[str]] = OrderedDict()

    def add(self, budget: str, text: str) -> None:
        self.texts.setdefault(text, []).append(budget)

    def items(self) -> list[str]:
        out = []
        for text, budgets in self.texts.items():
            who = "Every budget" if len(budgets) == len(self.budgets) > 1 else join_names(budgets)
            out.append(f"{who}: {text}")
        return out


def _fastest_text(r: dict, deepest_planned: int | None, test: str, lowest: dict | None, notes: Notes,
                  in_speed_sweep: set[str]) -> str:
    budget = r["budget"]
    candidates, ran = list(r["candidates"] or []), list(r["ran_tg"] or [])
    if not candidates:
        notes.add(budget, _nothing_qualifies(lowest))
        return "nothing qualifies"
    if not ran:
        notes.add(budget, f"no candidate ({join_names(candidates)}) has a trusted {test} result "
                          "on this host class.")
        return "no speed result"
    if r["config"] is None:
        notes.add(budget, f"the candidates' {test} results share no depth, so none compares.")
        return "no common depth"
    not_planned = [c for c in candidates if c not in ran and c not in in_speed_sweep]
    not_run = [c for c in candidates if c not in ran and c in in_speed_sweep]
    if not_planned:
        notes.add(budget, f"{join_names(not_planned)}: not in the speed sweep on this host class "
                          "(a quality reference only).")
    if not_run:
        notes.add(budget, f"{join_names(not_run)}: no trusted {test} result on this host class, "
                          "so not compared for speed.")
    if deepest_planned is not None and r["n_depth"] < deepest_planned:
        notes.add(budget, f"{test} compared at {fmt_depth(r['n_depth'])}, the deepest depth every "
                          f"candidate ran (the sweep went to {fmt_depth(deepest_planned)}).")
    if r["tied_with"]:
        fastest = r["fastest_measured"]
        lead = f"{fastest} measured fastest, but " if fastest != r["config"] else ""
        tied = join_names([r["config"]] + list(r["tied_with"]))
        notes.add(budget, f"at {fmt_depth(r['n_depth'])}, {lead}{tied} are within noise of the "
                          f"fastest; the tie goes to the lowest mean KL, {r['config']}'s "
                          f"({fmt_kl(r['kld_mean'])}).")
    text = f"**{r['config']}**: {r['tg_ts']:.1f} ± {r['tg_sd']:.1f} t/s at {fmt_depth(r['n_depth'])}"
    if r["tied_with"]:
        text += f", tied with {join_names(r['tied_with'])}"
    return text


def _context_text(r: dict, notes: Notes) -> str:
    budget = r["budget"]
    if not r["candidates"]:
        return "nothing qualifies"
    if r["config"] is None:
        notes.add(budget, "no candidate fit any depth on this host class.")
        return "nothing fit"
    depth = f"{r['n_depth']:,} tokens (measured ceiling)" if r.get("measured_ceiling") else fmt_depth(r["n_depth"])
    text = f"**{r['config']}**: fits {depth}"
    if r["ceiling_not_reached"]:
        text += ", the deepest measured"
        notes.add(budget, f"{depth} is the deepest depth this sweep measured: the real ceiling is "
                          "higher (add deeper depths to find it).")
    if r["tied_with"]:
        if r["memory_bytes"] is None or r["memory_tie"]:
            why = f"{r['config']} has the lowest mean KL of those using the least memory there"
        else:
            why = f"{r['config']} uses the least memory there ({fmt_bytes(r['memory_bytes'])})"
        verb = "fits" if len(r["tied_with"]) == 1 else "fit"
        notes.add(budget, f"{join_names(r['tied_with'])} also {verb} {depth}; {why}.")
        text += f" ({join_names(r['tied_with'])} {verb} too)"
    return text


def _nothing_qualifies(lowest: dict | None) -> str:
    if lowest is None:
        return "no configuration has a trusted quality result, so nothing qualifies."
    return (f"nothing qualifies; the lowest trusted mean KL is {lowest['config']}'s, "
            f"{fmt_kl(lowest['kld_mean'])}.")


def section(fastest: list[dict], context: list[dict], quality: list[dict], untrusted: list[dict],
            failed_quality: list[dict], budgets, tests: dict[str, str],
            speed_configs: dict[tuple[str, str], set[str]]) -> list[Block]:
    """fastest/context: recommend_fastest/recommend_context rows; quality: config_quality rows;
    untrusted: untrusted rows; failed_quality: quality cells with no ok result (cell_status);
    tests: model -> the tg test's name (tg128); speed_configs: (model, host class) -> the
    configurations with planned speed cells there."""
    out: list[Block] = [Heading("Recommendations", 2), Paragraph(RULES), Paragraph(budget_line(budgets))]
    by_key = {(r["model_name"], r["host_class"], r["budget"]): r for r in context}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(fastest, key=lambda r: (r["model_name"], r["host_class"], r["budget_order"])):
        groups.setdefault((r["model_name"], r["host_class"]), []).append(r)
    if not groups:
        out.append(Paragraph("No speed cells in this sweep, so nothing to recommend by speed or context."))
    for (model, host_class), rows in groups.items():
        trusted = [q for q in quality if q["model_name"] == model and q["kld_mean"] is not None
                   and q["trusted_cells"] == q["quality_cells"]]
        lowest = min(trusted, key=lambda q: q["kld_mean"]) if trusted else None
        test = tests.get(model, "tg")
        notes = Notes([r["budget"] for r in rows])
        table = []
        for r in rows:
            c = by_key[(model, host_class, r["budget"])]
            table.append([
                fmt_budget(r["budget"], r["max_kld"]),
                join_names(r["candidates"] or []) or "none",
                _fastest_text(r, c["deepest_planned"], test, lowest, notes,
                              speed_configs.get((model, host_class), set())),
                _context_text(c, notes),
            ])
        out.append(Heading(f"{model} on {host_class}", 3))
        out.append(Table(["Quality budget", "Candidates (by mean KL)",
                          f"Fastest generation ({test}) at deep context", "Largest context that fits"],
                         table))
        if notes.texts:
            out.append(Bullets(notes.items()))
    excluded = _excluded(untrusted, failed_quality)
    if excluded:
        out.append(Paragraph("**Not used for recommendations** (failed, or flagged as untrustworthy):"))
        out.append(Bullets(excluded))
    return out


def _excluded(untrusted: list[dict], failed_quality: list[dict]) -> list[str]:
    items = []
    for r in untrusted:
        where = f"n_ctx {r['n_ctx']}" if r["kind"] == "quality" else f"{fmt_depth(r['n_depth'])} on {r['host_class']}"
        flags = f", flagged {', '.join(r['flags'])}" if r["flags"] else ""
        detail = f" ({r['error_message'].splitlines()[0]})" if r["error_message"] else ""
        items.append(f"{r['model_name']} {r['config']}, {r['test']} at {where}: {r['status']}{flags}{detail}")
    flagged_ids = {r["cell_id"] for r in untrusted}
    for r in failed_quality:
        if r["cell_id"] in flagged_ids:
            continue
        items.append(f"{r['model_name']} {r['config']}, quality at n_ctx {r['n_ctx']}: {fmt_status(r['status'])} "
                     "(no quality result, so not a candidate)")
    return items
