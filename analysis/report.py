"""`kvsweep report RUN_DIR`: the tables of the posts kvsweep grew from, made from the results.

(a) quality: Cache | PPL | KL vs baseline | Top-1 agreement, per model and n_ctx;
(b) generation tok/s, a row per depth and a column per configuration, per model and host class
    (and the same for prompt processing);
(c) pp and tg side by side at one depth (the deepest measured) for every configuration.
Failures are part of the tables (OOM, skipped) and are listed with their reasons.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict, defaultdict
from pathlib import Path

from kvsweep.analysis.db import connect, query


def fmt_depth(depth: int) -> str:
    if depth >= 1024 and depth % 1024 == 0:
        return f"{depth // 1024}K"
    return str(depth)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _config_order(con) -> list[str]:
    rows = con.execute("SELECT config, min(rowid) AS first FROM (SELECT config, row_number() OVER () AS rowid FROM plan) GROUP BY config ORDER BY first").fetchall()
    return [r[0] for r in rows]


def quality_section(con, order: list[str]) -> list[str]:
    rows = query(con, "quality_table")
    groups: dict[tuple, list[dict]] = OrderedDict()
    for r in rows:
        groups.setdefault((r["model_name"], r["n_ctx"], r["baseline"]), []).append(r)
    out = []
    for (model, n_ctx, baseline), items in groups.items():
        items.sort(key=lambda r: (r["config"] != baseline, order.index(r["config"]) if r["config"] in order else 999))
        table = []
        for r in items:
            is_base = r["config"] == baseline
            flag = " (flagged: " + ", ".join(r["flags"]) + ")" if r["flags"] else ""
            table.append([
                r["config"] + flag,
                f"{r['ppl']:.4f} ± {r['ppl_unc']:.4f}",
                "baseline" if is_base else f"{r['kld_mean']:.4f}",
                "n/a" if is_base else f"{100 * r['same_top_p']:.2f}%",
            ])
        n_tokens = items[0]["n_tokens"]
        out.append(f"### Quality: {model}, n_ctx {n_ctx}, KL against a {baseline} cache\n")
        out.append(md_table(["Cache", "PPL", f"KL vs {baseline}", "Top-1 token agreement"], table))
        out.append(f"\n{n_tokens} scored tokens per row. Statistics in full: "
                   "`kvsweep sql RUN_DIR \"SELECT * FROM quality\"`.\n")
    missing = con.execute("SELECT count(*) FROM cell_status WHERE kind = 'quality' AND status <> 'ok'").fetchone()[0]
    if missing:
        out.append(f"{missing} quality cell(s) have no ok result; see *Not ok* below.\n")
    return out


def _speed_cells(con) -> dict:
    """(model, host_class, kind) -> {depth: {config: text}}"""
    grid: dict[tuple, dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for r in query(con, "speed_by_depth"):
        if r["status"] == "ok":
            text = f"{r['avg_ts']:.1f}"
        elif r["status"] == "skipped":
            text = "skipped"
        else:
            text = r["status"].upper() if r["status"] == "oom" else r["status"]
        grid[(r["model_name"], r["host_class"], r["kind"])][r["n_depth"]][r["config"]] = text
    return grid


def speed_sections(con, order: list[str]) -> list[str]:
    grid = _speed_cells(con)
    out = []
    tests = {r[0]: r[1] for r in con.execute("SELECT DISTINCT kind, CASE WHEN kind = 'pp' THEN 'pp' || n_prompt ELSE 'tg' || n_gen END FROM plan WHERE kind IN ('pp', 'tg')").fetchall()}
    for kind, title in (("tg", "Generation"), ("pp", "Prompt processing")):
        for (model, host_class, k), by_depth in grid.items():
            if k != kind:
                continue
            configs = [c for c in order if any(c in row for row in by_depth.values())]
            rows = [[fmt_depth(d)] + [by_depth[d].get(c, "") for c in configs] for d in sorted(by_depth)]
            out.append(f"### {title} tok/s ({tests.get(kind, kind)}) by depth: {model} on {host_class}\n")
            out.append(md_table(["Depth"] + configs, rows))
            out.append("")
    # (c) one depth, every configuration, pp and tg side by side
    keys = {(m, h) for (m, h, _k) in grid}
    for model, host_class in sorted(keys):
        pp = grid.get((model, host_class, "pp"), {})
        tg = grid.get((model, host_class, "tg"), {})
        depths = sorted(set(pp) | set(tg))
        if not depths:
            continue
        depth = depths[-1]
        configs = [c for c in order if c in pp.get(depth, {}) or c in tg.get(depth, {})]
        rows = [[c, pp.get(depth, {}).get(c, ""), tg.get(depth, {}).get(c, "")] for c in configs]
        out.append(f"### At depth {depth} ({fmt_depth(depth)}): {model} on {host_class}\n")
        out.append(md_table(["Cache", tests.get("pp", "pp"), tests.get("tg", "tg")], rows))
        out.append("")
    return out


def failures_section(con) -> list[str]:
    rows = query(con, "failures")
    if not rows:
        return []
    table = []
    for r in rows:
        where = f"n_ctx {r['n_ctx']}" if r["kind"] == "quality" else f"d{r['n_depth']} on {r['host_class']}"
        message = (r["error_message"] or "").splitlines()[0][:120] if r["error_message"] else ""
        table.append([r["kind"], r["model_name"], r["config"], where, r["status"], r["host"] or "", message])
    return ["## Not ok\n", md_table(["Kind", "Model", "Cache", "Where", "Status", "Host", "Reason"], table), ""]


def header_section(con, run_dir: Path) -> list[str]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    status = {r["status"]: r["cells"] for r in query(con, "status_counts")}
    total = sum(status.values())
    builds = con.execute("SELECT DISTINCT build_commit, llama_cpp_python_version, backends FROM results WHERE build_commit IS NOT NULL").fetchall()
    hosts = con.execute("SELECT DISTINCT host, host_class, device_name FROM results WHERE host IS NOT NULL ORDER BY host").fetchall()
    lines = [
        f"# kvsweep report: {run_dir.name}\n",
        f"Run `{manifest.get('run_id', '')[:12]}`, {len(manifest.get('sessions', []))} session(s), "
        f"report written {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Cells: {total} planned; " + ", ".join(f"{n} {s}" for s, n in status.items()) + ".",
    ]
    for commit, version, backends in builds:
        lines.append(f"llama.cpp build {commit} (llama-cpp-python {version}), backends {backends}.")
    for host, host_class, device in hosts:
        lines.append(f"Host {host}: class `{host_class}`, device {device}.")
    return lines + [""]


def render(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    con = connect(run_dir)
    try:
        order = _config_order(con)
        parts = header_section(con, run_dir)
        parts += ["## Quality\n"] + quality_section(con, order)
        parts += ["## Speed\n"] + speed_sections(con, order)
        parts += failures_section(con)
    finally:
        con.close()
    return "\n".join(parts).rstrip() + "\n"


def write_report(run_dir: str | Path) -> Path:
    from kvsweep.orchestrator.run_dir import atomic_write_bytes

    run_dir = Path(run_dir)
    out = run_dir / "report" / "report.md"
    atomic_write_bytes(out, render(run_dir).encode())
    return out
