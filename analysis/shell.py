"""`kvsweep sql RUN_DIR [QUERY]`: ad-hoc SQL over the run's views (see docs/sql.md).

With no query, a small interactive DuckDB session: the views are loaded, a statement runs when
a line ends with ';' (or at once when it is a single line), `.views` lists the views and
`.schema NAME` their columns. Input that is not a terminal (a pipe, a file) works the same, so
scripts can feed it statements.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kvsweep.analysis.db import connect, with_damage_retry

# Views of views.sql and report_views.sql, in the order docs/sql.md explains them.
VIEWS = ("attempts", "plan", "counted", "identical_results", "results", "cell_status", "tokens",
         "quality", "quality_by_position", "generation_agreement", "speed", "measured_ceiling",
         "untrusted", "depth_status", "context_ceiling", "host_memory", "kl_vs_bits",
         "config_quality", "rec_candidates", "rec_questions", "recommend_fastest",
         "recommend_context", "cross_backend")
TABLES = ("cache_types", "kl_budgets", "lost_tokens")

HELP = """statements end with ';' (a single line runs at once); a line ending in '\\' continues.
.views          the views (docs/sql.md explains every column)
.schema NAME    the columns of a view
.help           this text
Ctrl-D          quit"""


class QueryError(ValueError):
    """DuckDB refused the user's query: its message, without a Python traceback."""


def run_query(run_dir: str | Path, sql: str) -> None:
    import duckdb

    def show(con) -> None:
        rel = con.sql(sql)
        if rel is not None:
            rel.show(max_width=200, max_rows=200)

    try:
        with_damage_retry(run_dir, show)
    except duckdb.Error as exc:
        raise QueryError(f"the query failed: {exc}\n  query: {sql}\n  the views and their columns: "
                         "docs/sql.md, or `kvsweep sql RUN_DIR` then .views / .schema NAME") from None


def _dot_command(con, line: str) -> None:
    words = line.split()
    if words[0] == ".views":
        print("views:  " + ", ".join(VIEWS))
        print("tables: " + ", ".join(TABLES))
    elif words[0] == ".schema" and len(words) == 2:
        con.sql(f"DESCRIBE {words[1]}").show(max_rows=200)
    else:
        print(HELP)


def shell(run_dir: str | Path) -> None:
    """Read statements from stdin until end of input."""
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history where available)
        except ImportError:
            pass
    con = connect(run_dir)
    print(f"kvsweep sql on {run_dir}: views {', '.join(VIEWS)}.\n"
          "End statements with ';'. .help for help, Ctrl-D to quit.")
    buffer: list[str] = []
    try:
        while True:
            try:
                line = input("kvsweep> " if not buffer else "     ...> ") if interactive else _read_line()
            except EOFError:
                if interactive:
                    print()
                break
            if not buffer and line.strip().startswith("."):
                _dot_command(con, line.strip())
                continue
            if line.rstrip().endswith("\\"):
                buffer.append(line.rstrip()[:-1])
                continue
            buffer.append(line)
            text = "\n".join(buffer).strip()
            if not text:
                buffer = []
                continue
            # at a terminal a single line runs at once; otherwise a statement runs at its ';'
            if text.endswith(";") or (interactive and len(buffer) == 1):
                buffer = []
                _run(con, text)
        if "\n".join(buffer).strip():  # piped input may end without ';'
            _run(con, "\n".join(buffer))
    finally:
        con.close()


def _run(con, text: str) -> None:
    import duckdb

    try:
        rel = con.sql(text.strip().rstrip(";"))
        if rel is not None:
            rel.show(max_width=200, max_rows=200)
    except duckdb.Error as exc:
        print(f"error: {exc}")


def _read_line() -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")
