"""DuckDB over a run directory: the views of sql/views.sql, and named queries from sql/*.sql.

Python is only glue: the statistics live in SQL, so `kvsweep sql` users get the same numbers
the report shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from kvsweep import cache_types
from kvsweep.result_files import quarantine_named, result_files
from kvsweep.run_layout import RunLayout
from kvsweep.records import ATTEMPTS_SCHEMA, TOKENS_SCHEMA


@dataclass(frozen=True)
class KlBudget:
    """A quality budget for recommendations: configurations whose mean KL divergence against
    the baseline is at most max_kld (None: no limit) are candidates."""

    name: str
    max_kld: float | None


# The report's default budgets (docs/reports.md): 0.002 is about q8_0's cost in the seeds
# (KL 0.0016, 98.6% same top token: "essentially free"); 0.02 is where the seeds' 3-4 bit caches
# land (turbo3 0.0199, turbo4 0.0131: about 1% PPL, a few points of top-token agreement).
DEFAULT_BUDGETS = (KlBudget("free", 0.002), KlBudget("acceptable", 0.02), KlBudget("no limit", None))


def parse_budget(text: str) -> KlBudget:
    """NAME=KL (KL a number, or 'none' for no limit), as `kvsweep report --budget` takes it."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--budget {text!r}: write NAME=KL, e.g. free=0.002 or any=none")
    if value.strip().lower() in ("none", "inf", ""):
        return KlBudget(name.strip(), None)
    try:
        kld = float(value)
    except ValueError:
        raise ValueError(f"--budget {text!r}: {value!r} is not a number (or 'none')") from None
    if kld < 0:
        raise ValueError(f"--budget {text!r}: a KL budget cannot be negative")
    return KlBudget(name.strip(), kld)


def sql_text(name: str) -> str:
    """The text of analysis/sql/NAME.sql."""
    return resources.files("kvsweep.analysis").joinpath("sql", f"{name}.sql").read_text()


def _plan_schema() -> pa.Schema:
    from dataclasses import fields

    from kvsweep.cells import Cell

    kinds = {int: pa.int64(), str: pa.string()}
    return pa.schema([(f.name, kinds[type(getattr(_example_cell(), f.name))]) for f in fields(Cell)])


def _example_cell():
    from kvsweep.cells import Cell

    return Cell(kind="pp", model_name="", model_path="", model_sha256="", type_k="f16", type_v="f16")


def connect(run_dir: str | Path, database: str = ":memory:",
            budgets: tuple[KlBudget, ...] = DEFAULT_BUDGETS) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the run directory's views loaded (views.sql, report_views.sql).

    Results files that cannot be read are moved to results/quarantine/ first, with a warning
    (kvsweep/result_files.py), so a damaged file never stops a report."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    if not layout.manifest_file.exists():
        raise FileNotFoundError(
            f"{run_dir} is not a kvsweep run directory (no manifest.json): give the directory "
            "`kvsweep run` printed, e.g. runs/demo"
        )
    con = duckdb.connect(database)
    # a merged attempts file replaces the parts it holds, tokens files a dead driver left
    # without their attempts file are not read, damaged files are set aside (result_files)
    files = result_files(layout.results_dir)
    for name, paths, schema in (("attempts_raw", files.attempts, ATTEMPTS_SCHEMA),
                                ("tokens_raw", files.tokens, TOKENS_SCHEMA)):
        listed = [str(p) for p in paths]
        con.register(f"{name}_empty", schema.empty_table())
        if listed:
            # every column of the current schema, also over files an older kvsweep wrote (the
            # columns they lack read as NULL)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_empty UNION ALL BY NAME "
                        f"SELECT * FROM read_parquet({listed!r}, union_by_name = true)")
        else:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {name}_empty")
    # ok quality attempts whose per-token rows went to quarantine: they no longer count
    con.register("lost_tokens_table", pa.table({"attempt_id": pa.array(sorted(files.lost_tokens), pa.string())}))
    con.execute("CREATE TABLE lost_tokens AS SELECT * FROM lost_tokens_table")
    con.unregister("lost_tokens_table")
    plan = layout.plan_file
    con.register("plan_empty", _plan_schema().empty_table())
    if plan.exists():
        # every field of the current Cell, also in a plan an older kvsweep wrote
        con.execute(f"CREATE VIEW plan_raw AS SELECT * FROM plan_empty UNION ALL BY NAME "
                    f"SELECT * FROM read_parquet('{plan}')")
    else:
        con.execute("CREATE VIEW plan_raw AS SELECT * FROM plan_empty")
    _register_reference_tables(con, budgets)
    con.execute(sql_text("views"))
    con.execute(sql_text("report_views"))
    return con


def with_damage_retry(run_dir: str | Path, work, attempts: int = 8, **connect_args):
    """work(connection) -> result, retried after moving a results file that a query found
    damaged past its footer (the error names it) to quarantine; other errors pass through."""
    results = RunLayout(Path(run_dir)).results_dir
    for attempt in range(attempts):
        con = connect(run_dir, **connect_args)
        try:
            return work(con)
        except (duckdb.IOException, duckdb.InvalidInputException) as exc:
            if attempt == attempts - 1 or quarantine_named(results, str(exc)) is None:
                raise
        finally:
            con.close()


def _register_reference_tables(con: duckdb.DuckDBPyConnection, budgets: tuple[KlBudget, ...]) -> None:
    """Small tables the report views join: storage cost per cache type, quality budgets."""
    catalogue = list(cache_types.CATALOGUE.values())
    types = pa.table({
        "name": [t.name for t in catalogue],
        "bits_per_value": [t.bits_per_value for t in catalogue],
        "block_size": pa.array([t.block_size for t in catalogue], pa.int32()),
        "origin": [t.origin for t in catalogue],
    })
    con.register("cache_types_table", types)
    con.execute("CREATE TABLE cache_types AS SELECT * FROM cache_types_table")
    con.unregister("cache_types_table")
    # a fork's type kvsweep has no entry for: as its workers' builds described it
    con.execute("""
        INSERT INTO cache_types
        SELECT name, any_value(bits), NULL, 'build' FROM (
            SELECT type_k AS name, bits_k AS bits FROM attempts_raw WHERE bits_k IS NOT NULL
            UNION ALL SELECT type_v, bits_v FROM attempts_raw WHERE bits_v IS NOT NULL)
        WHERE name NOT IN (SELECT name FROM cache_types) GROUP BY name""")
    table = pa.table({
        "budget": pa.array([b.name for b in budgets], pa.string()),
        "max_kld": pa.array([b.max_kld for b in budgets], pa.float64()),
        "budget_order": pa.array(list(range(1, len(budgets) + 1)), pa.int32()),
    })
    con.register("kl_budgets_table", table)
    con.execute("CREATE TABLE kl_budgets AS SELECT * FROM kl_budgets_table")
    con.unregister("kl_budgets_table")


def view_rows(con: duckdb.DuckDBPyConnection, view: str) -> list[dict]:
    """Every row of one of the views of views.sql / report_views.sql, as dicts."""
    from kvsweep.analysis.shell import VIEWS

    if view not in VIEWS:
        raise ValueError(f"{view!r} is not one of kvsweep's views ({', '.join(VIEWS)})")
    return _dicts(con.execute(f"SELECT * FROM {view}"))


def query(con: duckdb.DuckDBPyConnection, name: str, params: dict | None = None) -> list[dict]:
    """Run analysis/sql/NAME.sql (with $name parameters); rows as dicts."""
    return _dicts(con.execute(sql_text(name), params) if params else con.execute(sql_text(name)))


def _dicts(cur) -> list[dict]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]
