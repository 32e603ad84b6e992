"""DuckDB over a run directory: the views of sql/views.sql, and named queries from sql/*.sql.

Python is only glue: the statistics live in SQL, so `kvsweep sql` users get the same numbers
the report shows.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from kvsweep.records import ATTEMPTS_SCHEMA, TOKENS_SCHEMA


def sql_text(name: str) -> str:
    """The text of analysis/sql/NAME.sql."""
    return resources.files("kvsweep.analysis").joinpath("sql", f"{name}.sql").read_text()


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("part-*.parquet")) if folder.exists() else []


def _plan_schema() -> pa.Schema:
    from dataclasses import fields

    from kvsweep.cells import Cell

    kinds = {int: pa.int64(), str: pa.string()}
    return pa.schema([(f.name, kinds[type(getattr(_example_cell(), f.name))]) for f in fields(Cell)])


def _example_cell():
    from kvsweep.cells import Cell

    return Cell(kind="pp", model_name="", model_path="", model_sha256="", type_k="f16", type_v="f16")


def connect(run_dir: str | Path, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the run directory's views loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").exists():
        raise FileNotFoundError(
            f"{run_dir} is not a kvsweep run directory (no manifest.json): give the directory "
            "`kvsweep run` printed, e.g. runs/demo"
        )
    con = duckdb.connect(database)
    for name, folder, schema in (
        ("attempts_raw", run_dir / "results" / "attempts", ATTEMPTS_SCHEMA),
        ("tokens_raw", run_dir / "results" / "tokens", TOKENS_SCHEMA),
    ):
        files = _files(folder)
        if files:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({files!r}, union_by_name = true)")
        else:
            con.register(f"{name}_empty", schema.empty_table())
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_empty")
    plan = run_dir / "plan.parquet"
    if plan.exists():
        con.execute(f"CREATE VIEW plan_raw AS SELECT * FROM read_parquet('{plan}')")
    else:
        con.register("plan_empty", _plan_schema().empty_table())
        con.execute("CREATE VIEW plan_raw AS SELECT * FROM plan_empty")
    con.execute(sql_text("views"))
    return con


def query(con: duckdb.DuckDBPyConnection, name: str) -> list[dict]:
    """Run analysis/sql/NAME.sql; rows as dicts."""
    cur = con.execute(sql_text(name))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]
