"""llama-perplexity's --kl-divergence arithmetic, transcribed to numpy, for the fidelity check.

kvsweep computes KL statistics from full-precision logits. llama-perplexity stores the
baseline's log-probabilities as uint16 (a 65535-step scale over the 16 nats below the top
logit; everything lower becomes the floor) and reads them back, so its PPL(base), Δp,
same-top and KLD carry that quantization: tokens whose baseline log-prob is below max - 16
get a clamped NLL, ties appear between entries closer than one step (16/65535 nats), and
entries below -16 are left out of the KL sum. This module applies exactly that to logits
kvsweep decoded, so bench/fidelity.py can show that, given the same arithmetic, kvsweep's
logits reproduce every figure llama-perplexity prints; and where the two columns differ, that
it is the 16-bit storage. It is a measuring aid, not used by sweeps.

Transcribed from tools/perplexity/perplexity.cpp (llama.cpp 0c1e570): log_softmax(n_vocab,
logits, log_prob, tok) (the writer) and log_softmax(n_vocab, logits, base_log_prob, tok, kld)
(the reader).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32


def _nearest_int(x: np.ndarray) -> np.ndarray:
    # nearest_int(): the float trick rounds half to even, as np.rint does
    return np.rint(x.astype(F32)).astype(np.int64)


@dataclass
class StoredBase:
    """What the --kl-divergence-base file holds for each row: scale, min log-prob, uint16s."""

    scale: np.ndarray  # float32 per row
    min_log_prob: np.ndarray  # float32 per row
    q16: np.ndarray  # uint16 (rows, vocab)


def store_base(logits: np.ndarray) -> StoredBase:
    x = logits.astype(F32)
    max_logit = x.max(axis=1)
    min_logit = np.maximum(x.min(axis=1), max_logit - F32(16))
    sum_exp = np.exp(x - max_logit[:, None]).astype(np.float64).sum(axis=1)
    log_sum_exp = np.log(sum_exp).astype(F32)
    min_log_prob = (min_logit - max_logit - log_sum_exp).astype(F32)
    scale = ((max_logit - min_logit) / F32(65535)).astype(F32)
    inv = np.where(scale != 0, F32(1) / np.where(scale != 0, scale, F32(1)), F32(0)).astype(F32)
    q = _nearest_int(inv[:, None] * (x - min_logit[:, None]))
    q = np.where(x > min_logit[:, None], q, 0)
    return StoredBase(scale, min_log_prob, q.astype(np.uint16))


@dataclass
class PerToken:
    nll: np.ndarray
    nll_base: np.ndarray
    kld: np.ndarray
    dp: np.ndarray
    same_top: np.ndarray


def compare(base: StoredBase, logits: np.ndarray, next_tokens: np.ndarray) -> PerToken:
    x = logits.astype(F32)
    rows = np.arange(len(x))
    imax = x.argmax(axis=1)
    max_logit = x.max(axis=1)
    sum_exp = np.exp(x - max_logit[:, None]).astype(np.float64).sum(axis=1)
    log_sum_exp = np.log(sum_exp).astype(F32)
    nll = (max_logit + log_sum_exp - x[rows, next_tokens]).astype(F32)
    p_log_base = (base.scale[:, None] * base.q16.astype(F32) + base.min_log_prob[:, None]).astype(F32)
    nll_base = (-p_log_base[rows, next_tokens]).astype(F32)
    imax_base = p_log_base.argmax(axis=1)  # first maximum, as the C loop's strict '>'
    top = (max_logit + log_sum_exp).astype(F32)
    terms = np.exp(p_log_base) * (p_log_base - x + top[:, None])
    kld = np.where(p_log_base > F32(-16), terms, F32(0)).astype(np.float64).sum(axis=1)
    dp = (np.exp(-nll) - np.exp(-nll_base)).astype(F32)
    return PerToken(nll.astype(np.float64), nll_base.astype(np.float64), kld, dp.astype(np.float64),
                    imax == imax_base)


def statistics(t: PerToken) -> dict:
    """The figures llama-perplexity prints (its mean_and_uncertainty etc.), from per-token values."""
    n = len(t.nll)

    def mu(x):
        f = x.sum() / n
        df = (x * x).sum() / n - f * f
        return f, (np.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)

    lp, lp_unc = mu(t.nll)
    lb, lb_unc = mu(t.nll_base)
    cov = ((t.nll * t.nll_base).sum() / n - lp * lb) / (n - 1)
    kld, kld_unc = mu(t.kld)
    dp, _ = mu(t.dp)
    mse, _ = mu(t.dp * t.dp)
    p_top = t.same_top.sum() / n
    sorted_kld = np.sort(t.kld.astype(F32))
    return {
        "ppl": float(np.exp(lp)), "ppl_unc": float(np.exp(lp) * lp_unc),
        "ppl_base": float(np.exp(lb)), "ln_ppl_ratio": float(lp - lb),
        "ln_ppl_cor": float(cov / (lp_unc * lb_unc)),
        "kld_mean": float(kld), "kld_mean_unc": float(kld_unc),
        "kld_median": float(np.median(sorted_kld)), "kld_max": float(sorted_kld[-1]),
        "kld_p99": float(_percentile(sorted_kld, 0.99)),
        "dp_mean": float(dp), "dp_rms": float(np.sqrt(mse)),
        "same_top_p": float(p_top), "same_top_p_unc": float(np.sqrt(p_top * (1 - p_top) / (n - 1))),
    }


def _percentile(v: np.ndarray, fraction: float) -> float:
    p = F32(fraction) * F32(len(v) - 1)
    ip = int(p)
    p -= ip
    return (1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)]
