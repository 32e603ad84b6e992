"""The report, the comparison and the SQL shell on real runs: the demo matrix on a real local Ray
cluster with llama-cpp-python, plus fault injection so the report has out-of-memory, skipped and
invalid cells to show. Expected values are recomputed here from the Parquet files with pyarrow and
numpy, independently of the SQL views the report uses. The HTML page is opened in headless
Chromium and screenshotted.
"""

from __future__ import annotations

import base64
import html.parser
import math
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import DEMO_CORPUS, ROOT
from kvsweep.analysis import charts
from kvsweep.analysis.compare import compare, to_markdown
from kvsweep.analysis.db import DEFAULT_BUDGETS, connect
from kvsweep.analysis.document import Bullets, Heading, Table
from kvsweep.analysis.report import build
from kvsweep.analysis.screenshot import find_browser, take
from kvsweep.cache_types import CATALOGUE as MAINLINE, config_label
from kvsweep.orchestrator.sweep import RunOptions, run_sweep

pytestmark = pytest.mark.ray

# q4_0 runs out of memory at depth 1024 (so 4096 is skipped); the q8_0/q4_0 quality cell's
# logits turn to NaN (so it is invalid): failures the report must show and the
# recommendations must leave out
FAULTS = """
[retry]
oom_retries = 0
crash_retries = 0

[testing]
faults = [
  {match = {type_k = "q4_0", n_depth = 1024}, fault = "oom"},
  {match = {kind = "quality", type_k = "q8_0", type_v = "q4_0"}, fault = "nan"},
]
"""

# a second, smaller run of the same model with flash attention off, to compare against
SECOND = f"""
name = "demo-fa-off"

[[models]]
name = "tiny-llama"
generate = {{ arch = "llama", seed = 0 }}

[cache]
symmetric = ["f16", "bf16"]

[quality]
corpus = "{DEMO_CORPUS}"
n_ctx = [256]
max_chunks = 8
baseline = "f32"
n_batch = 256

[speed]
depths = [0, 1024]
n_prompt = 128
n_gen = 32
repetitions = 2

[runtime]
flash_attn = "off"
cell_timeout_s = 300
"""


@pytest.fixture(scope="module")
def demo(ray_local, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    text = (ROOT / "matrices" / "demo.toml").read_text().replace('"corpora/demo.txt"', f'"{DEMO_CORPUS}"')
    matrix = tmp / "demo.toml"
    matrix.write_text(text + FAULTS)
    result = run_sweep(matrix, RunOptions(run_dir=tmp / "demo", progress=False))
    assert result.report is not None
    return result.run_dir


@pytest.fixture(scope="module")
def second(ray_local, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("second")
    (tmp / "second.toml").write_text(SECOND)
    return run_sweep(tmp / "second.toml", RunOptions(run_dir=tmp / "run", progress=False, report=False)).run_dir


@pytest.fixture(scope="module")
def blocks(demo) -> list:
    return build(demo)[0]


# --- the run's facts, read straight from Parquet -----------------------------------------


def _plan(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "plan.parquet").to_pylist()


def _counted(run_dir: Path) -> dict[str, dict]:
    """cell_id -> the attempt that counts (an ok one if any, else the latest)."""
    rows = pq.read_table(sorted((run_dir / "results" / "attempts").glob("part-*.parquet"))).to_pylist()
    best: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r["status"] == "ok", r["finished_at"], r["attempt"])):
        best[r["cell_id"]] = r
    return best


def _tokens(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    table = pq.read_table(sorted((run_dir / "results" / "tokens").glob("part-*.parquet")))
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    cols = table.to_pydict()
    for i, attempt in enumerate(cols["attempt_id"]):
        for name in ("nll", "kld", "same_top"):
            out[attempt][name].append(cols[name][i])
    return {a: {k: np.array(v, dtype=float) for k, v in d.items()} for a, d in out.items()}


def _configs(run_dir: Path, kinds: tuple[str, ...]) -> list[str]:
    seen = []
    for c in _plan(run_dir):
        label = config_label(c["type_k"], c["type_v"])
        if c["kind"] in kinds and label not in seen:
            seen.append(label)
    return seen


def _tables(blocks) -> dict[str, Table]:
    """Each table under the heading just above it."""
    out, heading = {}, None
    for b in blocks:
        if isinstance(b, Heading):
            heading = b.text
        elif isinstance(b, Table):
            out[heading] = b
    return out


def _name(cell: str) -> str:
    return cell.replace(" (baseline)", "").replace(" †", "")


# --- the report ----------------------------------------------------------------------------


def test_every_configuration_appears_in_every_table(demo, blocks):
    tables = _tables(blocks)
    quality_configs = _configs(demo, ("quality",))
    speed_configs = _configs(demo, ("pp", "tg"))
    assert len(quality_configs) == 6 and len(speed_configs) == 5
    by_kind = defaultdict(list)
    for title, t in tables.items():
        if ", n_ctx " in title:
            by_kind["quality"].append(t)
            assert sorted(_name(r[0]) for r in t.rows) == sorted(quality_configs), title
        elif " by depth" in title:
            by_kind["depth"].append(t)
            assert t.header[1:] == speed_configs, title
            assert all(cell != "" for row in t.rows for cell in row), f"{title}: a cell with nothing in it"
        elif title.startswith("At depth") or title == "Context ceiling":
            by_kind["per config"].append(t)
            assert [r[0] for r in t.rows] == speed_configs, title
    assert len(by_kind["quality"]) == 1 and len(by_kind["depth"]) == 2 and len(by_kind["per config"]) == 2
    markdown = (demo / "report" / "report.md").read_text()
    assert "| Depth | " + " | ".join(speed_configs) + " |" in markdown
    for config in quality_configs:
        assert f"\n| {config}" in markdown


def test_failures_are_marked_where_they_happened(demo, blocks):
    tables = _tables(blocks)
    counted = _counted(demo)
    label = {"oom": "OOM", "skipped": "skipped"}
    statuses = {}
    for c in _plan(demo):
        if c["kind"] in ("pp", "tg") and c["type_k"] == c["type_v"] == "q4_0":
            statuses[(c["kind"], c["n_depth"])] = counted[c["cell_id"]]["status"]
    # the injected OOM hit the first cell at 1K; everything deeper in the series was skipped
    assert statuses[("pp", 0)] == statuses[("tg", 0)] == "ok"
    assert "oom" in {statuses[("pp", 1024)], statuses[("tg", 1024)]}
    assert statuses[("pp", 4096)] == statuses[("tg", 4096)] == "skipped"
    for kind, title in (("tg", "Generation tok/s (tg32) by depth"), ("pp", "Prompt processing tok/s (pp128) by depth")):
        t = tables[title]
        col = t.header.index("q4_0")
        rows = {r[0]: r for r in t.rows}
        for depth, text in ((1024, "1K"), (4096, "4K")):
            assert rows[text][col] == label[statuses[(kind, depth)]]
        assert " ± " in rows["0"][col]
    ceiling = {r[0]: r for r in tables["Context ceiling"].rows}
    assert ceiling["q4_0"][1:3] == ["0", "OOM at 1K"]
    assert ceiling["f16"][1:3] == ["4K", "nothing: every depth up to 4K fit"]


def test_quality_table_figures_and_uncertainties(demo, blocks):
    table = next(t for title, t in _tables(blocks).items() if ", n_ctx 256" in title)
    rows = {_name(r[0]): r for r in table.rows}
    counted, tokens = _counted(demo), _tokens(demo)
    for c in _plan(demo):
        if c["kind"] != "quality":
            continue
        config, attempt = config_label(c["type_k"], c["type_v"]), counted[c["cell_id"]]
        row = rows[config]
        if attempt["status"] != "ok":
            assert row[1] == attempt["status"]  # "invalid"
            continue
        t = tokens[attempt["attempt_id"]]
        n = len(t["nll"])
        ppl = math.exp(t["nll"].mean())
        ppl_unc = ppl * math.sqrt(max((t["nll"] ** 2).mean() - t["nll"].mean() ** 2, 0) / (n - 1))
        assert row[1] == f"{ppl:.4f} ± {ppl_unc:.4f}", config
        assert row[5] == f"{(MAINLINE[c['type_k']].bits_per_value + MAINLINE[c['type_v']].bits_per_value) / 2:g}"
        if config == "f32":
            assert row[2] == "baseline" and row[3] == "n/a"
            continue
        p = t["same_top"].mean()
        assert row[3] == f"{100 * p:.2f} ± {100 * math.sqrt(p * (1 - p) / (n - 1)):.2f}%", config
        kld = t["kld"].mean()
        if kld >= 0.001:
            assert row[2].startswith(f"{kld:.4f} ± "), config
            assert row[4] == f"{np.quantile(t['kld'], 0.99):.4f}", config
    assert rows["q8_0/q4_0"][1] == "invalid"
    assert table.header[:4] == ["Cache", "PPL", "KL vs f32", "Top-1 token agreement"]  # the seeds' columns


def _expected_recommendations(run_dir: Path) -> dict[str, tuple[str | None, str | None]]:
    """The rules of docs/reports.md, implemented again over the Parquet files: budget ->
    (fastest at deep context, largest context that fits)."""
    counted, tokens = _counted(run_dir), _tokens(run_dir)
    plan = _plan(run_dir)
    kl = {}
    for c in plan:
        a = counted.get(c["cell_id"])
        if c["kind"] == "quality" and a and a["status"] == "ok" and not a["flags"]:
            kl[config_label(c["type_k"], c["type_v"])] = tokens[a["attempt_id"]]["kld"].mean()
    speed: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for c in plan:
        if c["kind"] in ("pp", "tg"):
            speed[(config_label(c["type_k"], c["type_v"]), c["n_depth"])][c["kind"]] = counted[c["cell_id"]]
    out = {}
    for budget in DEFAULT_BUDGETS:
        cands = {c: k for c, k in kl.items() if budget.max_kld is None or k <= budget.max_kld}
        tg = {(c, d): a["tg"] for (c, d), a in speed.items() if c in cands
              and a["tg"]["status"] == "ok" and not a["tg"]["flags"]}
        ran = {c for c, _ in tg}
        common = [d for d in {d for _, d in tg} if all((c, d) in tg for c in ran)]
        fastest = None
        if common:
            depth = max(common)
            at = {c: tg[(c, depth)] for c in ran}
            best = max(at, key=lambda c: at[c]["avg_ts"])
            tied = [c for c in at if at[best]["avg_ts"] - at[c]["avg_ts"]
                    <= math.hypot(at[best]["stddev_ts"] or 0, at[c]["stddev_ts"] or 0)]
            fastest = min(tied, key=lambda c: (cands[c], -at[c]["avg_ts"]))
        fits = {}
        for (c, d), a in speed.items():
            if c in cands and all(x["status"] == "ok" and not x["flags"] for x in a.values()):
                if d >= fits.get(c, (-1,))[0]:
                    fits[c] = (d, max(x["kv_bytes"] or 0 for x in a.values()))
        context = None
        if fits:
            deepest = max(d for d, _ in fits.values())
            context = min((c for c, (d, _) in fits.items() if d == deepest),
                          key=lambda c: (fits[c][1], cands[c]))
        out[budget.name] = (fastest, context)
    return out


def test_recommendations_follow_the_stated_rules(demo, blocks):
    table = _tables(blocks)[next(t for t in _tables(blocks) if t.startswith("tiny-llama on "))]
    expected = _expected_recommendations(demo)
    for row in table.rows:
        budget = row[0].split(" (")[0]
        fastest, context = expected[budget]
        assert row[2].startswith(f"**{fastest}**:"), (budget, row[2], fastest)
        assert row[3].startswith(f"**{context}**:"), (budget, row[3], context)
        assert "q8_0/q4_0" not in row[1], "its quality cell is invalid: never a candidate"
    # f16 and bf16 take the same memory at every depth: the lower KL (f16's 0) decides
    assert "free: bf16 also fits 4K; f16 has the lowest mean KL of those using the least memory there." in str(
        [b.items for b in blocks if isinstance(b, Bullets)])
    # q4_0 fits only depth 0, so with no KL limit tg is compared there
    assert "no limit: tg32 compared at 0, the deepest depth every candidate ran" in str(
        [b.items for b in blocks if isinstance(b, Bullets)])
    excluded = next(b for i, b in enumerate(blocks) if isinstance(b, Bullets)
                    and "Not used for recommendations" in getattr(blocks[i - 1], "text", ""))
    assert any(item.startswith("tiny-llama q8_0/q4_0, ppl@256 at n_ctx 256: invalid, flagged nonfinite")
               for item in excluded.items)


def _near(image, color: str, tol: int = 10) -> int:
    """How many pixels are within `tol` of `color` in every channel."""
    target = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(pixels - target) <= tol).all(axis=1).sum())


def test_charts_are_png_files_with_every_configuration_drawn(demo):
    from PIL import Image

    folder = demo / "report" / "charts"
    style = charts.styles(_configs(demo, ("quality", "pp", "tg")))
    names = sorted(p.name for p in folder.glob("*.png"))
    # one quality chart (one model, one n_ctx) and three for the one host class
    assert sorted(n.split("-tiny-llama-")[0] for n in names) == ["kl-vs-bits", "memory", "pp-vs-depth", "tg-vs-depth"]
    for name in names:
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        Image.open(folder / name).verify()
        image = Image.open(folder / name)
        assert image.size == (640, 400), name
        drawn = (["f32", "f16", "bf16", "q8_0", "q4_0"] if name.startswith("kl-vs-bits")
                 else _configs(demo, ("pp", "tg")))
        for config in drawn:
            assert _near(image, style[config].color) >= 25, f"{name}: {config} not drawn"
        if name.startswith("kl-vs-bits"):  # the invalid configuration has no point
            assert _near(image, style["q8_0/q4_0"].color) < 5


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src", "srcset", "data"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


def test_html_is_one_self_contained_page(demo, blocks):
    page = (demo / "report" / "report.html").read_text()
    refs = _Refs()
    refs.feed(page)
    assert not {"script", "link", "iframe", "object", "embed"} & set(refs.tags)
    charts_on_disk = {p.read_bytes() for p in (demo / "report" / "charts").glob("*.png")}
    assert len(refs.images) == len(charts_on_disk) == 4
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in refs.images)
    assert {base64.b64decode(src[len(prefix):]) for src in refs.images} == charts_on_disk
    assert all(link.startswith("#") for link in refs.links), refs.links
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert refs.tags.count("table") == sum(isinstance(b, Table) for b in blocks)


def _browser_or_skip() -> None:
    if find_browser():
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail("Chromium is missing but could be installed: run `bash tests/install-chromium.sh`")
    pytest.skip("no Chromium, and this user cannot install one (not root, or no apt-get): see "
                "tests/install-chromium.sh")


def test_html_opens_in_chromium_without_errors(demo):
    from PIL import Image

    _browser_or_skip()
    shot = take(demo / "report" / "report.html", demo / "report" / "report.png")
    assert shot.errors == [], shot.errors
    assert shot.png.exists() and shot.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(shot.png)
    assert image.width == 1400 and 2000 < image.height < 32000  # the whole page, trimmed
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert (pixels != 255).any(axis=1).mean() > 0.05, "the page is blank"
    # the charts rendered: each configuration's colour is on the page
    style = charts.styles(_configs(demo, ("quality", "pp", "tg")))
    for config in _configs(demo, ("pp", "tg")):
        assert _near(image, style[config].color) >= 50, f"{config}'s colour is not on the page"


def test_the_browser_check_sees_page_errors(tmp_path):
    """The check above could fail: a page with a script error is caught."""
    _browser_or_skip()
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); missing();</script></body></html>")
    shot = take(bad, tmp_path / "bad.png", width=400, height=300)
    assert any("boom" in e for e in shot.errors) and any("missing is not defined" in e for e in shot.errors)


# --- comparison, CLI, shell ---------------------------------------------------------------


def test_compare_two_runs(demo, second):
    result = compare(demo, second)
    assert {(r["kind"], r["n_depth"], r["config"]) for r in result.matched_speed} == {
        (k, d, c) for k in ("pp", "tg") for d in (0, 1024) for c in ("f16", "bf16")}
    a, b = _counted(demo), _counted(second)

    def ts(run_rows, plan, kind, depth, config):
        cell = next(c for c in plan if c["kind"] == kind and c["n_depth"] == depth
                    and config_label(c["type_k"], c["type_v"]) == config)
        return run_rows[cell["cell_id"]]["avg_ts"]

    plan_a, plan_b = _plan(demo), _plan(second)
    for r in result.matched_speed:
        ratio = ts(b, plan_b, r["kind"], r["n_depth"], r["config"]) / ts(a, plan_a, r["kind"], r["n_depth"], r["config"])
        assert r["speedup"] == pytest.approx(ratio, rel=1e-9)
    assert {r["config"] for r in result.matched_quality} == {"f32", "f16", "bf16"}
    settings = {s["setting"]: (s["values_a"], s["values_b"]) for s in result.settings}
    assert settings["flash_attn"] == (["on"], ["off"])
    text = to_markdown(result)
    assert "8 speed and 3 quality cells match" in text
    assert "25 cell(s) only in A, 0 only in B" in text  # 3 configs x 3 depths x 2 + f16/bf16 at 4K + 3 quality


def kvsweep(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvsweep", *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=300, env={**os.environ})


def test_compare_command_writes_markdown(demo, second, tmp_path):
    out = kvsweep("compare", demo, second, "--format", "md", "--out", tmp_path / "cmp.md")
    assert out.returncode == 0, out.stderr
    written = (tmp_path / "cmp.md").read_text()
    assert written.strip() == out.stdout.strip()
    assert "| Test | Depth | Cache | A | B | B/A |" in written and "| flash_attn | on | off |" in written
    table = kvsweep("compare", demo, second)
    assert table.returncode == 0 and "B/A" in table.stdout and "tg32" in table.stdout


def test_report_command_budgets(demo, tmp_path):
    run = shutil.copytree(demo, tmp_path / "copy")  # the other tests read the default report
    out = kvsweep("report", run, "--budget", "tight=0.0001", "--budget", "any=none")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(run / "report" / "report.md"), str(run / "report" / "report.html")]
    text = (run / "report" / "report.md").read_text()
    assert "| tight (mean KL ≤ 0.0001) |" in text and "| any (no KL limit) |" in text
    assert "free (mean KL" not in text
    bad = kvsweep("report", run, "--budget", "tight")
    assert bad.returncode == 2 and "NAME=KL" in bad.stderr


def test_sql_shell_reads_statements(demo):
    cells = len(_plan(demo))
    script = (".views\n"
              "SELECT 'planned=' || count(*) AS planned\n  FROM plan;\n"
              "SELECT nonsense FROM nowhere;\n"
              "SELECT budget || ':' || config AS pick FROM recommend_context ORDER BY budget_order")
    out = kvsweep("sql", demo, stdin=script)
    assert out.returncode == 0, out.stderr
    assert "recommend_fastest" in out.stdout and "kl_budgets" in out.stdout
    assert f"planned={cells}" in out.stdout  # a statement over two lines ran at its ';'
    assert "error: Catalog Error" in out.stdout  # a bad statement is reported, the session goes on
    expected = _expected_recommendations(demo)
    for budget in ("free", "acceptable", "no limit"):
        assert f"{budget}:{expected[budget][1]}" in out.stdout


def test_docs_sql_examples_run_on_the_demo(demo, tmp_path):
    """Every query docs/sql.md shows runs on a real run and finds something."""
    queries = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "sql.md").read_text(), re.S)
    assert len(queries) >= 8
    con = connect(demo)
    export = tmp_path / "bench.jsonl"
    for sql in queries:
        rel = con.sql(sql.replace("'bench.jsonl'", f"'{export}'").strip().rstrip(";"))
        if rel is not None:
            assert rel.fetchall(), f"no rows from:\n{sql}"
    speed_ok = sum(1 for c in _plan(demo) if c["kind"] in ("pp", "tg")
                   and _counted(demo)[c["cell_id"]]["status"] == "ok")
    assert len(export.read_text().splitlines()) == speed_ok
