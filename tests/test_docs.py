"""docs/sql.md documents every view and every column a run directory's DuckDB session has, and
docs/reports.md names every chart and rule the report uses. (That the example queries run is
checked on a real run in test_report_e2e.py.)"""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from kvsweep.analysis.db import connect
from kvsweep.analysis.shell import TABLES, VIEWS

SQL_DOC = (ROOT / "docs" / "sql.md").read_text()


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """The views over an empty run directory: the same columns as over a full one."""
    run = tmp_path_factory.mktemp("empty-run")
    (run / "manifest.json").write_text(json.dumps({"run_id": "empty", "sessions": []}))
    return connect(run)


def _section(name: str) -> str:
    m = re.search(rf"^### `{re.escape(name)}`\n(.*?)(?=^##)", SQL_DOC + "\n## end", re.S | re.M)
    assert m, f"docs/sql.md has no section for {name}"
    return m.group(1)


def test_the_shell_lists_every_view(con):
    # db.py's inputs (attempts_raw over the Parquet files, or an empty stand-in) are not for users
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
             if not r[0].endswith(("_raw", "_empty"))}
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert views == set(VIEWS)
    assert tables == set(TABLES)


@pytest.mark.parametrize("name", VIEWS + TABLES)
def test_every_column_is_documented(con, name):
    section = _section(name)
    same = re.search(r"Same columns as `(\w+)`", section)
    documented = set(re.findall(r"`(\w+)`", section + (_section(same.group(1)) if same else "")))
    columns = [r[0] for r in con.execute(f"DESCRIBE {name}").fetchall()]
    missing = [c for c in columns if c not in documented]
    assert not missing, f"docs/sql.md, {name}: undocumented columns {missing}"


def test_reports_doc_names_the_charts_and_rules():
    doc = (ROOT / "docs" / "reports.md").read_text()
    for phrase in ("KL vs bits per value", "Pareto front", "tg vs depth", "pp vs depth", "Memory at depth",
                   "within noise", "√(sd₁² + sd₂²)", "least memory", "Not used for recommendations",
                   "--budget", "kvsweep compare", "--screenshot"):
        assert phrase in doc, phrase
