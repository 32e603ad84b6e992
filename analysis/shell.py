"""`kvsweep sql RUN_DIR [QUERY]`: ad-hoc SQL over the run's views (see docs/sql.md)."""

from __future__ import annotations

from pathlib import Path

from kvsweep.analysis.db import connect

VIEWS = ("attempts", "results", "cell_status", "plan", "tokens", "quality", "speed")


def run_query(run_dir: str | Path, sql: str) -> None:
    con = connect(run_dir)
    try:
        rel = con.sql(sql)
        if rel is not None:
            rel.show(max_width=200, max_rows=200)
    finally:
        con.close()


def shell(run_dir: str | Path) -> None:
    """A small interactive loop: one statement per line (end with ';' to span lines)."""
    try:
        import readline  # noqa: F401  (line editing and history where available)
    except ImportError:
        pass
    import duckdb

    con = connect(run_dir)
    print(f"kvsweep sql on {run_dir}: views {', '.join(VIEWS)}. Ctrl-D to quit.")
    buffer = ""
    try:
        while True:
            try:
                line = input("kvsweep> " if not buffer else "     ...> ")
            except EOFError:
                print()
                break
            buffer = f"{buffer}\n{line}" if buffer else line
            if not buffer.strip():
                buffer = ""
                continue
            if buffer.rstrip().endswith(";") or "\n" not in buffer and not line.rstrip().endswith("\\"):
                try:
                    rel = con.sql(buffer.rstrip().rstrip(";"))
                    if rel is not None:
                        rel.show(max_width=200, max_rows=200)
                except duckdb.Error as exc:
                    print(f"error: {exc}")
                buffer = ""
    finally:
        con.close()
