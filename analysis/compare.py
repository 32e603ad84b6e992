"""`kvsweep compare RUN_A RUN_B`: two runs side by side, cell by cell, like llama.cpp's
compare-llama-bench.py: B's speed over A's for every matching speed cell, B minus A for PPL,
KL and same-top agreement, and the settings that differ between the runs (build, device,
threads, flash attention, environment).

Each run is read through its own views (db.connect); the three result sets are registered in
one DuckDB connection and joined by compare_*.sql.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from kvsweep.analysis.db import connect, query, sql_text
from kvsweep.analysis.document import md_table
from kvsweep.analysis.formatting import fmt_depth, fmt_kl, fmt_status


@dataclass
class Comparison:
    run_a: Path
    run_b: Path
    speed: list[dict]  # compare_speed.sql rows, matched and not
    quality: list[dict]  # compare_quality.sql rows
    settings: list[dict]  # compare_settings.sql rows: what differs

    @property
    def matched_speed(self) -> list[dict]:
        return [r for r in self.speed if r["matched"]]

    @property
    def matched_quality(self) -> list[dict]:
        return [r for r in self.quality if r["matched"]]


def _arrow(run_dir: Path, queries: dict[str, str]) -> dict:
    con = connect(run_dir)
    try:
        out = {}
        for name, sql in queries.items():
            rel = con.sql(sql)
            # DuckDB 2 calls it to_arrow_table; 1.x (pyproject allows 1.1+) calls it arrow
            fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
            out[name] = fetch()
        return out
    finally:
        con.close()


def compare(run_a: str | Path, run_b: str | Path) -> Comparison:
    run_a, run_b = Path(run_a), Path(run_b)
    queries = {"speed": sql_text("speed_by_depth"), "quality": sql_text("quality_table"),
               "results": "SELECT * FROM results"}
    con = duckdb.connect()
    try:
        for side, run in (("a", run_a), ("b", run_b)):
            for name, table in _arrow(run, queries).items():
                con.register(f"run_{side}_{name}", table)
        return Comparison(run_a, run_b, query(con, "compare_speed"), query(con, "compare_quality"),
                          query(con, "compare_settings"))
    finally:
        con.close()


# --- rendering -----------------------------------------------------------------------------


def _ts(value, sd, status) -> str:
    if value is None:
        return fmt_status(status) if status else "-"
    return f"{value:.1f} ± {sd or 0:.1f}"


def _speedup(r: dict) -> str:
    if r["speedup"] is None:
        return "-"
    return f"{r['speedup']:.2f}" + (" ~" if r["within_noise"] else "")


def _signed(value, unc, fmt) -> str:
    if value is None:
        return "-"
    sign = "+" if value > 0 else ""
    return f"{sign}{fmt(value)} ± {fmt(unc)}" if unc is not None else f"{sign}{fmt(value)}"


def tables(c: Comparison) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table, shared by the Markdown and the terminal renderings:
    the settings that differ, then speed per model and host class, then quality per model."""
    out = []
    if c.settings:
        out.append(("What differs between the runs", ["Setting", "A", "B"],
                    [[s["setting"], ", ".join(s["values_a"]) or "-", ", ".join(s["values_b"]) or "-"]
                     for s in c.settings]))
    groups: dict[tuple, list[dict]] = {}
    for r in c.matched_speed:
        groups.setdefault((r["model_name"], r["host_class"]), []).append(r)
    for (model, host_class), rows in groups.items():
        out.append((f"Speed: {model} on {host_class} (tokens/s ± sd; B/A, ~ within noise)",
                    ["Test", "Depth", "Cache", "A", "B", "B/A"],
                    [[r["test"], fmt_depth(r["n_depth"]), r["config"],
                      _ts(r["ts_a"], r["sd_a"], r["status_a"]), _ts(r["ts_b"], r["sd_b"], r["status_b"]),
                      _speedup(r)] for r in rows]))
    qgroups: dict[tuple, list[dict]] = {}
    for r in c.matched_quality:
        qgroups.setdefault((r["model_name"], r["baseline"]), []).append(r)
    for (model, baseline), rows in qgroups.items():
        out.append((f"Quality: {model}, KL against {baseline} (B - A, ± combined standard error)",
                    ["n_ctx", "Cache", "PPL A", "PPL B", "ΔPPL", "KL A", "KL B", "ΔKL", "Δ same top"],
                    [[str(r["n_ctx"]), r["config"],
                      _ppl(r["ppl_a"]) if r["ppl_a"] is not None else fmt_status(r["status_a"]),
                      _ppl(r["ppl_b"]) if r["ppl_b"] is not None else fmt_status(r["status_b"]),
                      _signed(r["ppl_delta"], r["ppl_delta_unc"], _ppl),
                      fmt_kl(r["kld_a"]), fmt_kl(r["kld_b"]),
                      _signed(r["kld_delta"], r["kld_delta_unc"], fmt_kl),
                      _signed(r["same_top_delta"], r["same_top_delta_unc"], _pct)] for r in rows]))
    return out


def _ppl(v: float) -> str:
    return f"{v:.4f}"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _unmatched(c: Comparison) -> str:
    only_a = sum(1 for r in c.speed + c.quality if not r["matched"] and r["status_a"] is not None)
    only_b = sum(1 for r in c.speed + c.quality if not r["matched"] and r["status_b"] is not None)
    return (f"{len(c.matched_speed)} speed and {len(c.matched_quality)} quality cells match; "
            f"{only_a} cell(s) only in A, {only_b} only in B.")


def to_markdown(c: Comparison) -> str:
    parts = ["# kvsweep compare\n", f"A: `{c.run_a}`  \nB: `{c.run_b}`\n", _unmatched(c) + "\n"]
    for title, header, rows in tables(c):
        parts.append(f"## {title}\n\n{md_table(header, rows)}\n")
    return "\n".join(parts)


def print_tables(c: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a pipe or a file: do not squeeze the tables into 80 columns
        console = Console(width=160)
    console.print(f"A: {c.run_a}\nB: {c.run_b}\n{_unmatched(c)}")
    for title, header, rows in tables(c):
        console.print(f"\n[bold]{title}[/bold]", highlight=False)
        t = Table()
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if h in ("Setting", "Test", "Cache") else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
