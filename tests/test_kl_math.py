"""The per-token reduction against a direct extended-precision computation with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from kvsweep.workers import kl_math
from kvsweep.workers.kl_math import Reducer

FUSED = kl_math.fused_library()
# the fused reduction in each instruction set this CPU has (AVX2; AVX-512 where present), and numpy
IMPLEMENTATIONS = ["numpy"] + ([f"fused-{n}" for lvl, n in ((2, "avx2"), (3, "avx512"))
                                if FUSED is not None and FUSED.kvs_simd() >= lvl] if FUSED else [])


@pytest.fixture(params=IMPLEMENTATIONS)
def make_reducer(request):
    """Reducer(...) of one implementation; the instruction set is forced for the test's length."""
    impl = request.param
    if impl == "numpy":
        yield lambda *a, **k: Reducer(*a, fused=False, **k)
        return
    best = FUSED.kvs_simd()
    FUSED.kvs_set_simd(2 if impl.endswith("avx2") else 3)
    yield lambda *a, **k: Reducer(*a, fused=True, **k)
    FUSED.kvs_set_simd(best)


def reference(base: np.ndarray, q: np.ndarray, nxt: np.ndarray):
    """Textbook definitions in long double."""
    b, qq = base.astype(np.longdouble), q.astype(np.longdouble)

    def log_softmax(x):
        m = x.max(axis=1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))

    lb, lq = log_softmax(b), log_softmax(qq)
    rows = np.arange(len(nxt))
    kld = (np.exp(lb) * (lb - lq)).sum(axis=1)
    return (-lq[rows, nxt], -lb[rows, nxt], kld,
            np.exp(lq[rows, nxt]) - np.exp(lb[rows, nxt]), qq.argmax(1) == b.argmax(1))


@pytest.mark.parametrize("noise", [1e-4, 1e-2, 0.04, 0.5, 3.0])  # 0.04: a few entries outside the series
def test_matches_extended_precision(noise, make_reducer):
    rng = np.random.default_rng(7)
    n, vocab = 96, 3000
    base = (rng.standard_normal((n, vocab)) * 4).astype(np.float32)
    q = (base + rng.standard_normal((n, vocab)) * noise).astype(np.float32)
    nxt = rng.integers(0, vocab, n)
    reducer = make_reducer(vocab, threads=2, budget_bytes=1 << 20)  # small blocks: exercises blocking
    assert reducer.block_rows < n
    rows = reducer.base_rows(base, nxt)
    got = reducer.compare(base, rows, q, nxt)
    nll, nll_base, kld, dp, same = reference(base, q, nxt)
    np.testing.assert_allclose(got.nll, nll.astype(float), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rows.nll, nll_base.astype(float), rtol=1e-6, atol=1e-6)
    # relative precision holds from tiny to large divergences
    np.testing.assert_allclose(got.kld, kld.astype(float), rtol=1e-5)
    np.testing.assert_allclose(got.dp, dp.astype(float), atol=1e-7)
    assert (got.same_top == same).all()


def test_known_answer_two_token_vocabulary(make_reducer):
    # base p = (0.5, 0.5); q = (0.8, 0.2): KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2)
    base = np.zeros((1, 2), np.float32)
    q = np.log(np.array([[0.8, 0.2]], np.float32))
    nxt = np.array([1])
    r = make_reducer(2, threads=1)
    got = r.compare(base, r.base_rows(base, nxt), q, nxt)
    assert got.kld[0] == pytest.approx(0.5 * np.log(0.5 / 0.8) + 0.5 * np.log(0.5 / 0.2), rel=1e-6)
    assert got.nll[0] == pytest.approx(-np.log(0.2), rel=1e-6)
    assert got.dp[0] == pytest.approx(0.2 - 0.5, abs=1e-7)
    assert got.same_top[0]  # argmax q = 0; base is a tie, and argmax takes the first: 0
    q_flip = np.log(np.array([[0.2, 0.8]], np.float32))
    assert not r.compare(base, r.base_rows(base, nxt), q_flip, nxt).same_top[0]


def test_identical_logits_give_zero(make_reducer):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((10, 500)).astype(np.float32)
    nxt = rng.integers(0, 500, 10)
    r = make_reducer(500, threads=1)
    got = r.compare(base, r.base_rows(base, nxt), base.copy(), nxt)
    assert np.all(got.kld == 0) and np.all(got.dp == 0) and got.same_top.all()


@pytest.mark.parametrize("vocab, rows, parallel", [(414, 256, False), (3000, 96, True)])
def test_threads_split_only_large_calls_and_never_change_a_bit(vocab, rows, parallel, make_reducer):
    rng = np.random.default_rng(3)
    base = (rng.standard_normal((rows, vocab)) * 4).astype(np.float32)
    q = (base + rng.standard_normal((rows, vocab)) * 0.1).astype(np.float32)
    nxt = rng.integers(0, vocab, rows)
    one, two = make_reducer(vocab, threads=1), make_reducer(vocab, threads=2)
    # a small call (the demo model's vocabulary) stays in the calling thread: one block
    assert (len(two._blocks(rows)) > 1) == parallel
    a, b = one.compare(base, one.base_rows(base, nxt), q, nxt), two.compare(base, two.base_rows(base, nxt), q, nxt)
    for name in ("nll", "kld", "dp", "same_top"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    two.close()


@pytest.mark.parametrize("scale", [1e-5, 1e-3, 0.03, 0.3, 3.0])
def test_expm1_minus_x_is_exact_to_float32_everywhere(scale):
    """The cancellation-free expm1(x) - x, whichever way the entries outside the series' range
    are fixed up (few: one by one; many: a masked copy), against long double."""
    from kvsweep.workers.kl_math import _expm1_minus_x

    x = (np.random.default_rng(11).standard_normal((8, 5000)) * scale).astype(np.float32)
    ref = np.expm1(x.astype(np.longdouble)) - x.astype(np.longdouble)
    got = _expm1_minus_x(x).astype(np.longdouble)
    assert np.max(np.abs(got - ref) / np.abs(ref)) < 2e-6


@pytest.mark.skipif(FUSED is None, reason="the fused reduction is not built here (no C compiler, or "
                    "not x86-64 with AVX2): kl_math uses numpy")
def test_fused_and_numpy_agree_on_real_vocabulary_sizes():
    """At a 248,320-token vocabulary (Qwen3.5's), with a tail that is not a multiple of the
    vector width and a row max in the last few entries."""
    rng = np.random.default_rng(5)
    n, vocab = 6, 248_320 + 5
    base = (rng.standard_normal((n, vocab)) * 3).astype(np.float32)
    base[0, -2] = 40.0  # the row's maximum among the last entries
    q = (base + rng.standard_normal((n, vocab)) * np.array([1e-4, 1e-3, 1e-2, 0.1, 1.0, 3.0])[:, None]).astype(np.float32)
    q[1, -1] = 50.0
    nxt = rng.integers(0, vocab, n)
    nxt[0] = vocab - 2
    a, b = Reducer(vocab, threads=1, fused=False), Reducer(vocab, threads=1, fused=True)
    ra, rb = a.base_rows(base, nxt), b.base_rows(base, nxt)
    np.testing.assert_array_equal(ra.argmax, rb.argmax)
    np.testing.assert_allclose(rb.lse, ra.lse, rtol=1e-8)
    sa, sb = a.compare(base, ra, q, nxt), b.compare(base, rb, q, nxt)
    np.testing.assert_allclose(sb.nll, sa.nll, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(sb.kld, sa.kld, rtol=2e-6)
    np.testing.assert_allclose(sb.dp, sa.dp, atol=1e-9)
    assert (sa.same_top == sb.same_top).all() and not sb.same_top[1]
