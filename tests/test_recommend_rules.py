"""The recommendation rules on a run directory written cell by cell, so every rule has a case
whose answer is known: ties within noise, a candidate that stops early, a flagged cell, an
invalid quality cell, a model whose quality never ran. Real Parquet files, real DuckDB views;
the figures are chosen for the rules, not measured (the end-to-end tests use measured runs).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kvsweep.analysis.db import DEFAULT_BUDGETS, KlBudget, connect, parse_budget
from kvsweep.analysis.report import build
from kvsweep.analysis.document import Bullets, Heading, Table, to_markdown
from kvsweep.cache_types import CATALOGUE as MAINLINE
from kvsweep.cells import Cell
from kvsweep.records import ATTEMPTS_SCHEMA, TOKENS_SCHEMA

HC = "test-host-class"
DEPTHS = (0, 1024, 4096)
# mean KL of each configuration against the f16 baseline (each of its tokens has this KL)
KL = {"f16": 0.0, "q8_0": 0.001, "q5_0": 0.01, "q4_0": 0.05, "iq4_nl": None}  # None: invalid
# tg tokens/s (mean, sd) by depth; None: out of memory (and pp too)
TG = {
    "f16": {0: (100, 1), 1024: (80, 1), 4096: None},
    "q8_0": {0: (110, 1), 1024: (88, 4), 4096: (50, 5)},
    "q5_0": {0: (105, 1), 1024: (92, 5), 4096: (60, 1)},
    "q4_0": {0: (120, 1), 1024: (95, 1), 4096: (70, 1)},
    "iq4_nl": {0: (200, 1), 1024: (190, 1), 4096: (180, 1)},  # fastest, but quality is invalid
}
FLAGGED = ("q4_0", "tg", 4096)  # an ok cell carrying a flag: not to be trusted


def _cell(kind: str, model: str, config: str, **kw) -> Cell:
    return Cell(kind=kind, model_name=model, model_path="", model_sha256=model * 8, type_k=config,
                type_v=config, **kw)


def _row(cell: Cell, status: str, **values) -> dict:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    row = {name: None for name in ATTEMPTS_SCHEMA.names}
    row.update(run_id="synthetic", cell_id=cell.cell_id, attempt_id=uuid.uuid4().hex, attempt=1,
               kind=cell.kind, test=cell.test_name, status=status, flags=[], host="host-a",
               host_class=cell.host_class or HC, started_at=now, finished_at=now,
               model_name=cell.model_name, type_k=cell.type_k, type_v=cell.type_v, n_ctx=cell.n_ctx,
               baseline=cell.baseline, n_depth=cell.n_depth, n_prompt=cell.n_prompt, n_gen=cell.n_gen,
               device_memory_total=16 * 2**30)
    row.update(values)
    return row


def _tokens(cell_id: str, attempt_id: str, kld: float, n: int = 200) -> pa.Table:
    rng = np.random.default_rng(0)
    nll = rng.uniform(1, 3, n)
    return pa.table({
        "cell_id": [cell_id] * n, "attempt_id": [attempt_id] * n,
        "chunk": pa.array(np.arange(n) // 100, pa.int32()), "pos": pa.array(np.arange(n) % 100, pa.int32()),
        "token": pa.array(np.arange(n), pa.int32()), "nll": nll, "nll_base": nll - kld,
        "kld": np.full(n, kld), "dp": np.zeros(n), "same_top": np.ones(n, bool),
    }, schema=TOKENS_SCHEMA)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "run"
    (path / "results" / "attempts").mkdir(parents=True)
    (path / "results" / "tokens").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"run_id": "synthetic", "sessions": []}))
    cells, rows, tokens = [], [], []
    for config, kl in KL.items():
        q = _cell("quality", "m", config, n_ctx=256, baseline="f16")
        cells.append(q)
        row = _row(q, "invalid" if kl is None else "ok", flags=["nonfinite"] if kl is None else [])
        rows.append(row)
        if kl is not None:
            tokens.append(_tokens(q.cell_id, row["attempt_id"], kl))
        for depth in DEPTHS:
            for kind in ("pp", "tg"):
                s = _cell(kind, "m", config, n_depth=depth, n_prompt=64, n_gen=16, host_class=HC)
                cells.append(s)
                figure = TG[config][depth]
                if figure is None:
                    rows.append(_row(s, "oom"))
                    continue
                mean, sd = figure if kind == "tg" else (figure[0] * 10, figure[1] * 10)
                kv = int((depth + 64) * MAINLINE[config].bits_per_value * 1000)
                flags = ["cpu-fallback"] if (config, kind, depth) == FLAGGED else []
                rows.append(_row(s, "ok", avg_ts=float(mean), stddev_ts=float(sd), kv_bytes=kv, flags=flags))
    # a second model whose quality cells never ran: nothing can qualify
    for config in ("f16", "q8_0"):
        cells.append(_cell("quality", "m2", config, n_ctx=256, baseline="f16"))
        s = _cell("tg", "m2", config, n_depth=0, n_gen=16, host_class=HC)
        cells.append(s)
        rows.append(_row(s, "ok", avg_ts=50.0, stddev_ts=1.0, kv_bytes=1000))
    pq.write_table(pa.Table.from_pylist([c.to_row() for c in cells]), path / "plan.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=ATTEMPTS_SCHEMA), path / "results" / "attempts" / "part-0.parquet")
    pq.write_table(pa.concat_tables(tokens), path / "results" / "tokens" / "part-0.parquet")
    return path


def _by_budget(run_dir, view: str, model: str = "m") -> dict[str, dict]:
    con = connect(run_dir)
    cur = con.execute(f"SELECT * FROM {view} WHERE model_name = ?", [model])
    cols = [d[0] for d in cur.description]
    return {r["budget"]: r for r in (dict(zip(cols, row)) for row in cur.fetchall())}


def test_candidates_are_the_trusted_configurations_within_each_budget(run_dir):
    rows = _by_budget(run_dir, "recommend_fastest")
    assert set(rows["free"]["candidates"]) == {"f16", "q8_0"}
    assert set(rows["acceptable"]["candidates"]) == {"f16", "q8_0", "q5_0"}
    assert set(rows["no limit"]["candidates"]) == {"f16", "q8_0", "q5_0", "q4_0"}
    # iq4_nl is the fastest everywhere, but its quality cell is invalid
    assert all("iq4_nl" not in r["candidates"] for r in rows.values())


def test_fastest_is_compared_at_the_deepest_depth_every_candidate_ran(run_dir):
    free = _by_budget(run_dir, "recommend_fastest")["free"]
    # f16 ran out of memory at 4K, so f16 and q8_0 compare at 1K: q8_0 88±4 beats f16 80±1
    assert (free["n_depth"], free["config"], free["tied_with"]) == (1024, "q8_0", [])


def test_a_tie_within_noise_goes_to_the_lower_kl(run_dir):
    rows = _by_budget(run_dir, "recommend_fastest")
    # at 1K q5_0 92±5 is fastest, q8_0 88±4 is within sqrt(5²+4²)=6.4 of it: q8_0 has lower KL
    acceptable = rows["acceptable"]
    assert (acceptable["config"], acceptable["fastest_measured"], acceptable["tied_with"]) == ("q8_0", "q5_0", ["q5_0"])
    # q4_0 95±1 is fastest; q5_0 is within sqrt(1+25)=5.1 of it, q8_0 (7 > 4.1) is not
    no_limit = rows["no limit"]
    assert (no_limit["config"], no_limit["fastest_measured"], no_limit["tied_with"]) == ("q5_0", "q4_0", ["q4_0"])


def test_largest_context_prefers_the_smallest_memory_and_skips_flagged_cells(run_dir):
    rows = _by_budget(run_dir, "recommend_context")
    assert (rows["free"]["config"], rows["free"]["n_depth"], rows["free"]["tied_with"]) == ("q8_0", 4096, [])
    assert rows["free"]["ceiling_not_reached"] is True
    # q5_0 and q8_0 both fit 4K; q5_0's cache is smaller there
    assert (rows["acceptable"]["config"], rows["acceptable"]["tied_with"]) == ("q5_0", ["q8_0"])
    # q4_0 would use less memory still, but its tg cell at 4K is flagged: it counts as fitting 1K
    assert (rows["no limit"]["config"], rows["no limit"]["n_depth"]) == ("q5_0", 4096)


def test_nothing_qualifies_without_quality_results(run_dir):
    for view in ("recommend_fastest", "recommend_context"):
        rows = _by_budget(run_dir, view, model="m2")
        assert set(rows) == {b.name for b in DEFAULT_BUDGETS}
        assert all(r["candidates"] == [] and r["config"] is None for r in rows.values())


def test_the_report_states_rules_outcomes_and_exclusions(run_dir):
    blocks, _ = build(run_dir)
    text = to_markdown(blocks)
    assert "**Rules.**" in text and "√(sd₁² + sd₂²)" in text
    tables = {b_prev.text: b for b_prev, b in zip(blocks, blocks[1:]) if isinstance(b_prev, Heading) and isinstance(b, Table)}
    m = tables[f"m on {HC}"]
    cells = {row[0].split(" (")[0]: row for row in m.rows}
    assert cells["free"][2].startswith("**q8_0**: 88.0 ± 4.0 t/s at 1K")
    assert cells["acceptable"][2].startswith("**q8_0**") and "tied with q5_0" in cells["acceptable"][2]
    assert cells["no limit"][3].startswith("**q5_0**: fits 4K")
    notes = next(b for b in blocks[blocks.index(m):] if isinstance(b, Bullets))
    joined = " ".join(notes.items)
    assert "q5_0 measured fastest" in joined and "the tie goes to the lowest mean KL" in joined
    assert "compared at 1K, the deepest depth every candidate ran" in joined
    m2 = tables[f"m2 on {HC}"]
    assert all(row[2] == "nothing qualifies" for row in m2.rows)
    assert "no configuration has a trusted quality result" in text
    # the excluded cells are listed with their reasons
    assert "m iq4_nl, ppl@256 at n_ctx 256: invalid, flagged nonfinite" in text
    assert "m q4_0, tg16 @ d4096 at 4K on test-host-class: ok, flagged cpu-fallback" in text


def test_budgets_can_be_set(run_dir):
    strict = (parse_budget("strict=0.0005"), parse_budget("any=none"))
    assert strict == (KlBudget("strict", 0.0005), KlBudget("any", None))
    con = connect(run_dir, budgets=strict)
    got = dict(con.execute("SELECT budget, list_sort(candidates) FROM rec_questions WHERE model_name = 'm'").fetchall())
    assert got == {"strict": ["f16"], "any": ["f16", "q4_0", "q5_0", "q8_0"]}
    for bad in ("free", "=0.1", "free=abc", "free=-1"):
        with pytest.raises(ValueError):
            parse_budget(bad)
