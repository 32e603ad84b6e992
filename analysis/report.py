"""`kvsweep report RUN_DIR`: the decision and the evidence, as Markdown and one HTML page.

Writes RUN_DIR/report/report.md, report.html (self-contained: charts embedded as data URIs)
and charts/*.png. Sections (docs/reports.md):
  recommendations per model and host class, derived by stated rules (recommend.py);
  quality per model and n_ctx (PPL ±, KL mean ±, same top p ±, KL p99, bits per value), KL vs bits;
  per model and host class: tg and pp by depth x configuration (± sd, the seeds' layout), pp and
  tg at the deepest depth, the context ceiling, charts of speed and memory against depth;
  cells that are not ok.
The figures come from the SQL views (views.sql, report_views.sql); this module lays them out.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from kvsweep.analysis import charts, recommend
from kvsweep.analysis.db import DEFAULT_BUDGETS, KlBudget, query, view_rows, with_damage_retry
from kvsweep.analysis.document import Block, Bullets, Heading, Image, Paragraph, Table, to_html, to_markdown
from kvsweep.run_layout import RunLayout
from kvsweep.analysis.formatting import fmt_bytes, fmt_depth, fmt_kl, fmt_kl_pm, fmt_pm, fmt_status

@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    charts: list[Path]


def _config_order(con) -> list[str]:
    """Configurations in the order the matrix lists them (the plan's row order)."""
    return [r["config"] for r in query(con, "config_order")]


def _slug(*parts) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def _tests(con) -> dict[tuple[str, str], str]:
    """(model, kind) -> llama-bench's test name (pp512, tg128)."""
    return {(r["model_name"], r["kind"]): r["test"] for r in query(con, "test_names")}


# --- sections ------------------------------------------------------------------------------


def header_section(con, run_dir: Path) -> list[Block]:
    manifest = json.loads(RunLayout(run_dir).manifest_file.read_text())
    status = {r["status"]: r["cells"] for r in query(con, "status_counts")}
    total = sum(status.values())
    builds = query(con, "header_builds")
    hosts = query(con, "header_hosts")
    cells = (f"Cells: {total} planned; " + ", ".join(f"{n} {s}" for s, n in status.items()) + "."
             if total else "No cells planned yet.")
    lines = [
        f"Run `{manifest.get('run_id', '')[:12]}`, {len(manifest.get('sessions', []))} session(s), "
        f"report written {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. {cells}",
    ]
    for b in builds:
        line = (f"llama.cpp build {b['build_name']} `{b['build_commit']}` (llama-cpp-python "
                f"{b['llama_cpp_python_version']}), backends {b['backends']}.")
        if b["cpu_turbo_speed"]:
            line += (" Its turbo caches ran on the CPU backend, through the fork's slow scalar path: "
                     "their speed figures say nothing about Metal or CUDA (quality figures are valid).")
        lines.append(line)
    for h in hosts:
        lines.append(f"Host `{h['host']}`: class `{h['host_class']}`, device {h['device_name']}, "
                     f"memory {fmt_bytes(h['device_memory_total'])}.")
    return [Heading(f"kvsweep report: {run_dir.name}", 1), Paragraph(lines[0])] + (
        [Bullets(lines[1:])] if len(lines) > 1 else [])


def recommendations_section(con, budgets, tests) -> list[Block]:
    return recommend.section(
        view_rows(con, "recommend_fastest"),
        view_rows(con, "recommend_context"),
        view_rows(con, "config_quality"),
        query(con, "untrusted_rows"),
        query(con, "failed_quality"), budgets,
        {m: t for (m, k), t in tests.items() if k == "tg"},
        _speed_configs(con),
    )


def _speed_configs(con) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in query(con, "speed_configs"):
        out[(r["model_name"], r["host_class"])].add(r["config"])
    return out


def quality_section(con, order: list[str], style, budgets, chart_list: list[charts.Chart]) -> list[Block]:
    rows = query(con, "quality_table")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # per backend too when cells were planned per backend (every-backend)
        groups.setdefault((r["model_name"], r["n_ctx"], r["baseline"], r["quality_backend"]), []).append(r)
    out: list[Block] = [Heading("Quality", 2)]
    if not groups:
        out.append(Paragraph("This sweep has no quality cells."))
    kl_rows = view_rows(con, "kl_vs_bits")
    known_twins = query(con, "identical_known")
    for (model, n_ctx, baseline, backend), items in groups.items():
        items.sort(key=lambda r: (r["config"] != baseline, order.index(r["config"]) if r["config"] in order else 999))
        adaptive = any(r["precision"] for r in items)  # `[quality] precision`: say what each row reached
        table = []
        for r in items:
            is_base = r["config"] == baseline
            name = r["config"] + (" (baseline)" if is_base else "")
            if r["flags"]:
                name += " †"
            # the seeds' four columns first, as in their posts, then KL p99 and the storage cost
            if r["ppl"] is None:
                table.append([name, fmt_status(r["status"]), "", "", "", _bits(r["bits_per_value"])]
                             + ([""] if adaptive else []))
                continue
            table.append([
                name,
                f"{r['ppl']:.4f} ± {r['ppl_unc']:.4f}",
                "baseline" if is_base else fmt_kl_pm(r["kld_mean"], r["kld_unc"]),
                "n/a" if is_base else f"{100 * r['same_top_p']:.2f} ± {100 * r['same_top_unc']:.2f}%",
                "baseline" if is_base else fmt_kl(r["kld_p99"]),
                _bits(r["bits_per_value"]),
            ] + ([_precision_text(r, is_base)] if adaptive else []))
        ok = [r for r in items if r["n_tokens"]]
        where = sorted({f"`{r['host']}` ({r['host_class']})" for r in ok if r["host"]})
        on = f", on {backend}" if backend else ""
        out.append(Heading(f"{model}, n_ctx {n_ctx}: KL against a {baseline} cache{on}", 3))
        out.append(Table(["Cache", "PPL", f"KL vs {baseline}", "Top-1 token agreement", "KL p99",
                          "Bits/value"] + (["Chunks: precision reached"] if adaptive else []),
                         table, numeric={1, 2, 3, 4, 5}))
        notes = []
        if adaptive:
            target = json.loads(items[0]["precision"])
            notes.append(f"Chunks were added until the precision target was met ({_target_text(target)}; "
                         "docs/measurement.md): each row says how many ran, why they stopped, and the "
                         "standard error of its mean KL over chunks relative to the mean.")
        if ok:
            notes.append(f"{ok[0]['n_tokens']} scored tokens per row ({ok[0]['n_chunks']} chunks), "
                         f"measured on {', '.join(where)}. ± is one standard error (llama-perplexity's). "
                         "Every statistic: `kvsweep sql RUN_DIR \"SELECT * FROM quality\"`.")
        if any(r["flags"] for r in items):
            notes.append("† flagged: " + "; ".join(_flag_text(r) for r in items if r["flags"]))
        known = [k for k in known_twins if (k["model_name"], k["n_ctx"], k["baseline"]) == (model, n_ctx, baseline)
                 and (not backend or k["backend"] == backend)]
        for k in known:
            notes.append(f"{k['config_a']} and {k['config_b']} gave bit-identical results: expected on the "
                         f"{k['backend']} backend with flash attention, whose kernel computes with f16 K and V "
                         "for both, so not a setting that failed to apply.")
        out.append(Paragraph(" ".join(notes)))
        mine = [k for k in kl_rows if (k["model_name"], k["n_ctx"], k["baseline"]) == (model, n_ctx, baseline)
                and (not backend or k["backend"] == backend)]
        if mine:
            chart = charts.kl_vs_bits(model, n_ctx, baseline, mine,
                                      [(b.name, b.max_kld) for b in budgets if b.max_kld is not None],
                                      style, _slug("kl-vs-bits", model, n_ctx, baseline, *([backend] if backend else [])))
            chart_list.append(chart)
            out.append(_image(chart))
    return out


def _flag_text(r: dict) -> str:
    text = f"{r['config']}: {', '.join(r['flags'])}"
    if r.get("identical_to"):
        text += (f" (per-token results bit-identical to {', '.join(r['identical_to'])}'s: the cache "
                 "setting probably did not take effect)")
    return text


def _quality_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows of a per-cell quality view by (model, n_ctx, baseline, backend), in row order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model_name"], r["n_ctx"], r["baseline"], r["backend"]), []).append(r)
    return groups


def _compared_configs(order: list[str], items: list[dict], baseline: str) -> list[str]:
    """The configurations of `items` but the baseline, in the matrix's order (others after)."""
    configs = [c for c in order if c != baseline and any(r["config"] == c for r in items)]
    return configs + sorted({r["config"] for r in items} - set(configs) - {baseline})


def position_section(con, order: list[str], style, chart_list: list[charts.Chart]) -> list[Block]:
    """Quality by position within the chunk (quality_by_position), where positions were scored
    from the start of the chunk (quality.score = "all")."""
    groups = _quality_groups(query(con, "position_rows"))
    if not groups:
        return []
    out: list[Block] = [Heading("Quality by position in the chunk", 2)]
    multi_backend = len({k[3] for k in groups}) > 1
    for (model, n_ctx, baseline, backend), items in groups.items():
        buckets = sorted({(r["bucket_lo"], r["bucket_hi"]) for r in items})
        on = f", on {backend}" if multi_backend else ""
        out.append(Heading(f"{model}, n_ctx {n_ctx}: KL against a {baseline} cache by position{on}", 3))
        if len(buckets) == 1:
            out.append(Paragraph(
                f"Only positions {buckets[0][0]}-{buckets[0][1]} were scored (the second half of each chunk, "
                "as llama-perplexity scores): one bucket, the quality table above. Set "
                '`quality.score = "all"` to score every position and read quality by depth.'))
            continue
        configs = _compared_configs(order, items, baseline)
        by = {(r["config"], r["bucket_lo"]): r for r in items}
        table = []
        for c in configs:
            flagged = any(by[(c, lo)]["flags"] for lo, _ in buckets if (c, lo) in by)
            table.append([c + (" †" if flagged else "")] + [
                fmt_kl_pm(by[(c, lo)]["kld_mean"], by[(c, lo)]["kld_unc"]) if (c, lo) in by else ""
                for lo, _ in buckets])
        n_tok = {lo: max((r["n_tokens"] for r in items if r["bucket_lo"] == lo), default=0) for lo, _ in buckets}
        out.append(Table(["Cache"] + [f"{fmt_depth(lo)}-{fmt_depth(hi)}" if hi > lo else fmt_depth(lo)
                                      for lo, hi in buckets],
                         table, numeric=set(range(1, len(buckets) + 1))))
        out.append(Paragraph(
            "Mean KL divergence per position bucket [lo, 2·lo) of the predicted token; ± is one standard "
            "error over tokens. Tokens per row and bucket: "
            + ", ".join(f"{fmt_depth(lo)}: {n_tok[lo]}" for lo, _ in buckets)
            + ". Every statistic (Δp, same top, PPL): `kvsweep sql RUN_DIR \"SELECT * FROM quality_by_position\"`."))
        chart = charts.kl_vs_position(model, n_ctx, baseline, items, style,
                                      _slug("kl-by-position", model, n_ctx, baseline, *([backend] if multi_backend else [])))
        chart_list.append(chart)
        out.append(_image(chart))
    return out


def generation_section(con, order: list[str]) -> list[Block]:
    """Generation agreement (generation_agreement) next to mean KL."""
    groups = _quality_groups(query(con, "generation_rows"))
    if not groups:
        return []
    out: list[Block] = [Heading("Generation agreement", 2)]
    multi_backend = len({k[3] for k in groups}) > 1
    for (model, n_ctx, baseline, backend), items in groups.items():
        depths = sorted({r["depth"] for r in items})
        n_gen = items[0]["gen_tokens"]
        configs = _compared_configs(order, items, baseline)
        by = {(r["config"], r["depth"]): r for r in items}
        table = []
        for c in configs:
            first = next(r for r in items if r["config"] == c)
            row = [c + (" †" if first["flags"] else ""), fmt_kl_pm(first["kld_mean"], first["kld_unc"])]
            for d in depths:
                g = by.get((c, d))
                row.append("" if g is None else
                           f"{g['first_diff_mean']:.1f} ± {g['first_diff_unc']:.1f} · {100 * g['equal_mean']:.0f}%")
            table.append(row)
        on = f", on {backend}" if multi_backend else ""
        out.append(Heading(f"{model}, n_ctx {n_ctx}: greedy continuations against a {baseline} cache{on}", 3))
        out.append(Table(["Cache", f"KL vs {baseline}"] + [f"after {fmt_depth(d)} tokens" for d in depths],
                         table, numeric=set(range(1, len(depths) + 2))))
        n_prompts = max(r["n_prompts"] for r in items)
        out.append(Paragraph(
            f"Each cache greedily continues {n_prompts} corpus prompt(s) per depth for {n_gen} tokens; per "
            "depth: the mean index of the first token that differs from the baseline's continuation (± one "
            f"standard error; {n_gen} = never), then the share of positions with the baseline's token. KL scores "
            "each position on the baseline's own history; here one different token changes all that follows. "
            "Per prompt: `kvsweep sql RUN_DIR \"SELECT config, gen_depth, gen_first_diff, gen_equal FROM results\"`."))
    return out


def cross_backend_section(con, order: list[str]) -> list[Block]:
    """The same quality cells on two backends (placement.quality_on = "every-backend")."""
    rows = query(con, "cross_backend_rows")
    if not rows:
        return []
    out: list[Block] = [Heading("Quality across backends", 2)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model_name"], r["n_ctx"], r["baseline"], r["backend_a"], r["backend_b"]), []).append(r)
    for (model, n_ctx, baseline, a, b), items in groups.items():
        items.sort(key=lambda r: (r["config"] != baseline, order.index(r["config"]) if r["config"] in order else 999))
        table = [[
            r["config"] + (" (baseline)" if r["config"] == baseline else "") + ("" if r["trusted"] else " †"),
            f"{r['ppl_a']:.4f}", f"{r['ppl_b']:.4f}",
            f"{100 * r['ppl_rel_diff']:+.3f} ± {100 * r['ppl_rel_diff_unc']:.3f}%",
            fmt_kl(r["kld_a"]), fmt_kl(r["kld_b"]), fmt_kl_pm(r["d_kld"], r["d_kld_unc"]),
            "**beyond noise**" if r["beyond_noise"] else "within noise",
        ] for r in items]
        out.append(Heading(f"{model}, n_ctx {n_ctx}, KL against a {baseline} cache: {a} vs {b}", 3))
        out.append(Table(["Cache", f"PPL on {a}", f"PPL on {b}", f"PPL {b} vs {a}", f"KL on {a}",
                          f"KL on {b}", f"KL {b} − {a}", "Difference"], table, numeric={1, 2, 3, 4, 5, 6}))
        out.append(Paragraph(
            f"{items[0]['n_tokens']} tokens scored on both, paired by chunk and position. The PPL "
            f"difference is exp(mean(nll on {b} − nll on {a})) − 1; ± is one standard error of the "
            "paired differences over tokens. Beyond noise: more than 3 standard errors in nll or KL "
            "(the backends compute the same cache differently). Every figure: `kvsweep sql RUN_DIR "
            "\"SELECT * FROM cross_backend\"`."))
    return out


def _bits(b) -> str:
    return "" if b is None else f"{b:g}"


def _image(chart: charts.Chart) -> Image:
    return Image(f"charts/{chart.name}.png", chart.png, chart.title, chart.caption)


def _speed_text(r: dict) -> str:
    if r["status"] != "ok":
        return fmt_status(r["status"])
    text = fmt_pm(r["avg_ts"], r["stddev_ts"])
    if r.get("precision"):  # repetitions stopped at a precision target: say how many ran
        text += f" (n={r['repetitions_run']})"
    return text + " †" if r["flags"] else text


def speed_sections(con, order: list[str], style, tests, chart_list: list[charts.Chart]) -> list[Block]:
    cells = query(con, "speed_by_depth")
    depth_rows = view_rows(con, "depth_status")
    ceiling = view_rows(con, "context_ceiling")
    hosts = query(con, "host_memory_rows")
    grid: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    for r in cells:
        grid[(r["model_name"], r["host_class"], r["kind"])][r["n_depth"]][r["config"]] = r
    out: list[Block] = []
    pairs = sorted({(m, h) for (m, h, _k) in grid})
    for model, host_class in pairs:
        out.append(Heading(f"Speed: {model} on {host_class}", 2))
        flagged = []
        for kind, title in (("tg", "Generation"), ("pp", "Prompt processing")):
            by_depth = grid.get((model, host_class, kind))
            if not by_depth:
                continue
            configs = [c for c in order if any(c in row for row in by_depth.values())]
            rows = [[fmt_depth(d)] + [_speed_text(by_depth[d][c]) if c in by_depth[d] else "" for c in configs]
                    for d in sorted(by_depth)]
            flagged += [r for row in by_depth.values() for r in row.values() if r["flags"]]
            out.append(Heading(f"{title} tok/s ({tests.get((model, kind), kind)}) by depth", 3))
            out.append(Table(["Depth"] + configs, rows, numeric=set(range(1, len(configs) + 1))))
        target = next((r["precision"] for k in ("tg", "pp") for row in grid.get((model, host_class, k), {}).values()
                       for r in row.values() if r["precision"]), "")
        if target:
            t = json.loads(target)
            out.append(Paragraph(
                f"Repetitions stopped once the tokens/s figure had a relative standard error of at most "
                f"{100 * t['rel_se']:g}% (at least {t['min_repetitions']}; `[speed] precision`, "
                "docs/measurement.md): (n=…) is how many ran. ± is the standard deviation over them."))
        out += _at_depth_table(grid, model, host_class, order, tests)
        out += _ceiling_table(ceiling, depth_rows, model, host_class, order)
        if flagged:
            out.append(Paragraph("† flagged: " + "; ".join(
                f"{r['config']} {r['test']} at {fmt_depth(r['n_depth'])}: {', '.join(r['flags'])}" for r in flagged)))
        mine = [r for r in depth_rows if r["model_name"] == model and r["host_class"] == host_class]
        for kind in ("tg", "pp"):
            if (model, host_class, kind) in grid:
                chart = charts.speed_vs_depth(kind, tests.get((model, kind), kind), model, host_class, mine,
                                              style, _slug(kind, "vs-depth", model, host_class))
                chart_list.append(chart)
                out.append(_image(chart))
        chart = charts.memory_vs_depth(model, host_class, mine,
                                       [h for h in hosts if h["host_class"] == host_class],
                                       style, _slug("memory", model, host_class))
        chart_list.append(chart)
        out.append(_image(chart))
    return out


def _at_depth_table(grid, model, host_class, order, tests) -> list[Block]:
    """The seeds' third table: pp and tg side by side at the deepest depth measured."""
    pp = grid.get((model, host_class, "pp"), {})
    tg = grid.get((model, host_class, "tg"), {})
    depths = sorted(set(pp) | set(tg))
    if not depths:
        return []
    depth = depths[-1]
    configs = [c for c in order if c in pp.get(depth, {}) or c in tg.get(depth, {})]
    rows = [[c,
             _speed_text(pp[depth][c]) if c in pp.get(depth, {}) else "",
             _speed_text(tg[depth][c]) if c in tg.get(depth, {}) else ""] for c in configs]
    return [Heading(f"At depth {depth} ({fmt_depth(depth)})", 3),
            Table(["Cache", tests.get((model, "pp"), "pp"), tests.get((model, "tg"), "tg")], rows, numeric={1, 2})]


def _target_text(target: dict) -> str:
    parts = []
    if target.get("kl_rel_se"):
        parts.append(f"every mean KL to {100 * target['kl_rel_se']:g}% relative standard error")
    if target.get("rank_confidence"):
        parts.append(f"the order by KL at {100 * target['rank_confidence']:g}% confidence")
    return " and ".join(parts) + f", at least {target.get('min_chunks', 2)} chunks"


def _precision_text(r: dict, is_base: bool) -> str:
    why = {"target": "target met", "corpus-end": "corpus end", "max-chunks": "max_chunks"}.get(
        r["stop_reason"] or "", r["stop_reason"] or "")
    if is_base or r["kld_rel_se"] is None:
        reached = ""
    elif r["kld_mean"] == 0:
        reached = ", KL 0 in every chunk"
    else:
        reached = f", KL ±{100 * r['kld_rel_se']:.1f}%"
    return f"{r['n_chunks']} ({why}{reached})"


def _ceiling_table(ceiling, depth_rows, model, host_class, order) -> list[Block]:
    mine = {r["config"]: r for r in ceiling if r["model_name"] == model and r["host_class"] == host_class}
    if not mine:
        return []
    measured = any(r["measured_status"] is not None for r in mine.values())
    memory = {(r["config"], r["n_depth"]): r["memory_bytes"] for r in depth_rows
              if r["model_name"] == model and r["host_class"] == host_class}
    rows = []
    for c in [c for c in order if c in mine]:
        r = mine[c]
        if r["deepest_fit"] is None:
            fit = "nothing fit"
        else:
            fit = fmt_depth(r["deepest_fit"])
        if r["stopped_at"] is not None:
            stop = f"{fmt_status(r['stopped_by'])} at {fmt_depth(r['stopped_at'])}"
        else:
            stop = f"nothing: every depth up to {fmt_depth(r['deepest_planned'])} fit"
        mem = memory.get((c, r["deepest_fit"])) if r["deepest_fit"] is not None else None
        row = [c, fit, stop, fmt_bytes(mem) if mem is not None else ""]
        if measured:
            row += _measured_cells(r)
        rows.append(row)
    head = ["Cache", "Deepest depth that fit", "Stopped by", "Memory there"]
    text = ("The deepest depth at which each configuration's pp and tg cells both ran, "
            "and what stopped it at the next depth.")
    if measured:
        head += ["Measured ceiling", "Memory at it"]
        text += (" The measured ceiling is bisected after the grid (`[speed] ceiling`): the deepest "
                 "depth whose context llama.cpp makes within the worker's memory, and the shallowest "
                 "found not to fit, which the matrix's resolution bounds (docs/measurement.md).")
    return [Heading("Context ceiling", 3), Paragraph(text),
            Table(head, rows, numeric={1, 3, 4, 5})]


def _measured_cells(r: dict) -> list[str]:
    if r["measured_status"] is None:
        return ["", ""]
    if r["measured_depth"] is None:
        return [f"nothing fits ({fmt_status(r['measured_status'])})", ""]
    bound = {"planner": ", bounded by the memory planner", "max-tokens": ", no memory limit found"}.get(
        r["measured_bound"], "")
    return [f"{r['measured_depth']:,} ({r['measured_fail_depth']:,} does not fit{bound})",
            fmt_bytes(r["measured_bytes"])]


def failures_section(con) -> list[Block]:
    rows = query(con, "failures")
    if not rows:
        return []
    table = []
    for r in rows:
        where = f"n_ctx {r['n_ctx']}" if r["kind"] == "quality" else f"{fmt_depth(r['n_depth'])} on {r['host_class']}"
        message = (r["error_message"] or "").splitlines()[0][:120] if r["error_message"] else ""
        table.append([r["kind"], r["model_name"], r["config"], where, fmt_status(r["status"]), r["host"] or "", message])
    return [Heading("Not ok", 2), Table(["Kind", "Model", "Cache", "Where", "Status", "Host", "Reason"], table)]


def footer_section(run_dir: Path) -> list[Block]:
    return [Heading("About this report", 2), Paragraph(
        f"Made by `kvsweep report {run_dir}` from the run directory's Parquet files; every figure "
        f"comes from the SQL views in `analysis/sql/` (query them with `kvsweep sql {run_dir}`; "
        "see docs/sql.md). How to read it: docs/reports.md.")]


# --- assembly ------------------------------------------------------------------------------


def build(run_dir: str | Path, budgets: tuple[KlBudget, ...] = DEFAULT_BUDGETS) -> tuple[list[Block], list[charts.Chart]]:
    run_dir = Path(run_dir)

    def assemble(con) -> tuple[list[Block], list[charts.Chart]]:
        chart_list: list[charts.Chart] = []
        order = _config_order(con)
        style = charts.styles(order)
        tests = _tests(con)
        blocks = header_section(con, run_dir)
        blocks += recommendations_section(con, budgets, tests)
        blocks += quality_section(con, order, style, budgets, chart_list)
        blocks += position_section(con, order, style, chart_list)
        blocks += generation_section(con, order)
        blocks += cross_backend_section(con, order)
        blocks += speed_sections(con, order, style, tests, chart_list)
        blocks += failures_section(con)
        blocks += footer_section(run_dir)
        return blocks, chart_list

    return with_damage_retry(run_dir, assemble, budgets=budgets)


def render(run_dir: str | Path, budgets: tuple[KlBudget, ...] = DEFAULT_BUDGETS) -> str:
    """The report as Markdown (images referenced as charts/NAME.png)."""
    blocks, _ = build(run_dir, budgets)
    return to_markdown(blocks)


def write_reports(run_dir: str | Path, budgets: tuple[KlBudget, ...] = DEFAULT_BUDGETS) -> ReportFiles:
    """Write report.md, report.html and charts/*.png under RUN_DIR/report."""
    from kvsweep.run_layout import atomic_write_bytes

    run_dir = Path(run_dir)
    blocks, chart_list = build(run_dir, budgets)
    out = run_dir / "report"
    paths = []
    for chart in chart_list:
        path = out / "charts" / f"{chart.name}.png"
        atomic_write_bytes(path, chart.png)
        paths.append(path)
    md, html = out / "report.md", out / "report.html"
    atomic_write_bytes(md, to_markdown(blocks).encode())
    atomic_write_bytes(html, to_html(blocks, f"kvsweep report: {run_dir.name}").encode())
    return ReportFiles(md, html, paths)


def write_report(run_dir: str | Path) -> Path:
    """What `kvsweep run` calls at the end: every format; returns the Markdown file's path."""
    return write_reports(run_dir).markdown
