"""The `quality` SQL view against a direct numpy/float64 computation with known answers.

Rows go through the real path: per-token figures (from kl_math's Reducer, or given), the
scheduler's attempt_row, the Parquet sink, DuckDB's views. The expected figures are computed
here independently, following tools/perplexity/perplexity.cpp line by line (its
mean_and_uncertainty, covariance and percentile lambdas), in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvsweep import records
from kvsweep.analysis.db import connect
from kvsweep.cells import Cell
from kvsweep.orchestrator.run_dir import RunDir
from kvsweep.orchestrator.scheduler import attempt_row
from kvsweep.orchestrator.sink import ResultSink
from kvsweep.workers.kl_math import Reducer

PERCENTILES = {"p99_9": 0.999, "p99": 0.99, "p95": 0.95, "p90": 0.90, "median": 0.5,
               "p10": 0.10, "p5": 0.05, "p1": 0.01, "p0_1": 0.001}
DP_PERCENTILES = {**PERCENTILES, "p75": 0.75, "p25": 0.25}


def write_run(path, cell: Cell, tokens: dict[str, np.ndarray]):
    """A run directory holding one ok quality attempt of `cell` with these per-token values."""
    rd = RunDir(path)
    path.mkdir(parents=True)
    rd.write_manifest({"run_id": "test"})
    rd.write_plan([cell])
    outcome = records.CellOutcome(cell.cell_id, records.OK, 0.0, 1.0, tokens=tokens)
    sink = ResultSink(rd, "s")
    sink.add(attempt_row(cell, outcome, None, "test", 1), outcome.tokens)
    sink.flush()
    return connect(path)


def quality_cell(**kw) -> Cell:
    return Cell(kind="quality", model_name="m", model_path="/m.gguf", model_sha256="a" * 64,
                type_k="q8_0", type_v="q8_0", n_ctx=64, corpus_sha256="c" * 64, baseline="f16", **kw)


def token_columns(nll, nll_base, kld, dp, same_top, chunk=None):
    n = len(nll)
    return {"chunk": np.zeros(n, np.int32) if chunk is None else chunk,
            "pos": np.arange(n, dtype=np.int32), "token": np.zeros(n, np.int32),
            "nll": nll, "nll_base": nll_base, "kld": kld, "dp": dp, "same_top": same_top}


# -- llama-perplexity's statistics, transcribed ------------------------------------------------
def mean_and_uncertainty(x: np.ndarray) -> tuple[float, float]:
    n = len(x)
    f = x.sum() / n
    df = (x * x).sum() / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def covariance(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    return 0.0 if n < 10 else ((a * b).sum() / n - a.sum() / n * (b.sum() / n)) / (n - 1)


def percentile(values: np.ndarray, fraction: float) -> float:
    v = np.sort(values)
    if fraction <= 0:
        return v[0]
    if fraction >= 1:
        return v[-1]
    p = fraction * (len(v) - 1)
    ip = int(p)
    p -= ip
    return (1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)]


def expected(nll, nll_base, kld, dp, same_top) -> dict:
    n = len(nll)
    lp, lp_unc = mean_and_uncertainty(nll)
    lb, lb_unc = mean_and_uncertainty(nll_base)
    cov = covariance(nll, nll_base)
    ratio_unc = math.sqrt(lp_unc**2 + lb_unc**2 - 2 * cov)
    kld_mean, kld_unc = mean_and_uncertainty(kld)
    dp_mean, dp_unc = mean_and_uncertainty(dp)
    mse, mse_unc = mean_and_uncertainty(dp * dp)
    p_top = same_top.sum() / n
    ppl, ppl_base = math.exp(lp), math.exp(lb)
    out = {
        "ppl": ppl, "ppl_unc": ppl * lp_unc, "ppl_base": ppl_base, "ppl_base_unc": ppl_base * lb_unc,
        "ln_ppl_ratio": lp - lb, "ln_ppl_ratio_unc": ratio_unc,
        "ln_ppl_cor": cov / (lp_unc * lb_unc),
        "ppl_ratio": math.exp(lp - lb), "ppl_ratio_unc": math.exp(lp - lb) * ratio_unc,
        "ppl_diff": ppl - ppl_base,
        "ppl_diff_unc": math.sqrt((ppl * lp_unc) ** 2 + (ppl_base * lb_unc) ** 2 - 2 * ppl * ppl_base * cov),
        "kld_mean": kld_mean, "kld_unc": kld_unc, "kld_max": kld.max(), "kld_min": kld.min(),
        "dp_mean": dp_mean, "dp_unc": dp_unc, "dp_max": dp.max(), "dp_min": dp.min(),
        "dp_rms": math.sqrt(mse), "dp_rms_unc": 0.5 / math.sqrt(mse) * mse_unc,
        "same_top_p": p_top, "same_top_unc": math.sqrt(p_top * (1 - p_top) / (n - 1)),
        "n_tokens": n,
    }
    out.update({f"kld_{k}": percentile(kld, f) for k, f in PERCENTILES.items()})
    out.update({f"dp_{k}": percentile(dp, f) for k, f in DP_PERCENTILES.items()})
    return out


def quality_row(con) -> dict:
    cur = con.execute("SELECT * FROM quality")
    names = [d[0] for d in cur.description]
    (row,) = cur.fetchall()
    return dict(zip(names, row))


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


# -- tests --------------------------------------------------------------------------------------
def test_statistics_from_logits_match_float64(tmp_path):
    """Logits -> the worker's reduction -> Parquet -> SQL, against numpy on the same logits."""
    rng = np.random.default_rng(3)
    n, vocab = 3 * 137, 400
    base = (rng.standard_normal((n, vocab)) * 3).astype(np.float32)
    q = (base + rng.standard_normal((n, vocab)) * 0.4).astype(np.float32)
    nxt = rng.integers(0, vocab, n)
    reducer = Reducer(vocab, threads=2)
    rows = reducer.base_rows(base, nxt)
    scores = reducer.compare(base, rows, q, nxt)
    tokens = token_columns(scores.nll, rows.nll, scores.kld, scores.dp, scores.same_top,
                           chunk=np.repeat(np.arange(3, dtype=np.int32), 137))
    got = quality_row(write_run(tmp_path / "run", quality_cell(), tokens))

    lb, lq = log_softmax64(base), log_softmax64(q)
    idx = np.arange(n)
    nll, nll_base = -lq[idx, nxt], -lb[idx, nxt]
    kld = (np.exp(lb) * (lb - lq)).sum(axis=1)
    dp = np.exp(-nll) - np.exp(-nll_base)
    same = q.argmax(axis=1) == base.argmax(axis=1)
    assert 0.05 < same.mean() < 0.95, "the case must exercise both outcomes of same-top"
    want = expected(nll, nll_base, kld, dp, same)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=2e-5, abs=1e-9), key
    assert got["n_chunks"] == 3


def test_known_answers_by_hand(tmp_path):
    """Values whose statistics are known exactly: percentiles interpolate at p*(N-1)."""
    n = 21
    kld = np.arange(n, dtype=np.float64)[::-1].copy()  # 20 .. 0, unsorted on purpose
    dp = np.linspace(-0.5, 0.5, n)
    same = np.arange(n) % 3 == 0  # 7 of 21
    nll = np.full(n, 2.0) + np.linspace(-1, 1, n)
    nll_base = np.full(n, 2.0)
    got = quality_row(write_run(tmp_path / "run", quality_cell(), token_columns(nll, nll_base, kld, dp, same)))
    # p*(N-1) = 20p on 0..20: the percentile is 20p itself
    for key, f in PERCENTILES.items():
        assert got[f"kld_{key}"] == pytest.approx(20 * f, abs=1e-12), key
    assert got["kld_max"] == 20 and got["kld_min"] == 0 and got["kld_mean"] == pytest.approx(10)
    # sample sd of 0..20 is sqrt(38.5); llama-perplexity's uncertainty is sqrt(var_pop/(N-1))
    assert got["kld_unc"] == pytest.approx(math.sqrt((np.var(kld)) / 20), rel=1e-12)
    assert got["dp_median"] == pytest.approx(0, abs=1e-12)
    assert got["dp_p75"] == pytest.approx(0.25, abs=1e-12)
    assert got["dp_rms"] == pytest.approx(math.sqrt(np.mean(dp * dp)), rel=1e-12)
    assert got["same_top_p"] == pytest.approx(7 / 21)
    assert got["same_top_unc"] == pytest.approx(math.sqrt(7 / 21 * 14 / 21 / 20))
    # nll_base is constant: no uncertainty, and ln ratio = mean(nll) - 2 = 0
    assert got["ppl_base"] == pytest.approx(math.exp(2)) and got["ppl_base_unc"] == 0
    assert got["ppl"] == pytest.approx(math.exp(2), rel=1e-12)
    assert got["ln_ppl_ratio"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("n,has_unc", [(10, False), (11, True)])
def test_uncertainty_needs_more_than_ten_tokens(tmp_path, n, has_unc):
    """llama-perplexity prints 0 for an uncertainty from 10 tokens or fewer; so does the view."""
    x = np.linspace(1.0, 3.0, n)
    got = quality_row(write_run(tmp_path / "run", quality_cell(),
                                token_columns(x, x[::-1].copy(), x / 10, x / 100, x > 2)))
    for key in ("ppl_unc", "kld_unc", "dp_unc", "dp_rms_unc"):
        assert (got[key] > 0) is has_unc, key


def test_any_grouping_of_chunks_in_sql(tmp_path):
    """Per-token rows let SQL aggregate any subset of chunks exactly."""
    rng = np.random.default_rng(5)
    n = 4 * 50
    nll = rng.gamma(2.0, 1.5, n)
    kld = rng.exponential(0.01, n)
    chunk = np.repeat(np.arange(4, dtype=np.int32), 50)
    con = write_run(tmp_path / "run", quality_cell(),
                    token_columns(nll, nll + 0.1, kld, kld - 0.005, kld < 0.01, chunk=chunk))
    ppl, kld_p90 = con.execute(
        "SELECT exp(avg(nll)), quantile_cont(kld, 0.9) FROM tokens WHERE chunk IN (1, 3)").fetchone()
    pick = (chunk == 1) | (chunk == 3)
    assert ppl == pytest.approx(math.exp(nll[pick].mean()), rel=1e-12)
    assert kld_p90 == pytest.approx(percentile(kld[pick], 0.9), rel=1e-12)
