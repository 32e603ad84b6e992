"""When a measurement has answered its question: the stopping rules of `[quality] precision` and
`[speed] precision` (docs/measurement.md, "Adaptive precision", writes the statistics out).

Quality: every cache of a work unit sees the same chunks in the same order, and chunks (not
tokens: tokens inside a chunk share its text and its cache) are the independent units. After
each chunk, with m[c][j] the mean KL of cache c over chunk j:

- `kl_rel_se`: the relative standard error of every compared cache's mean KL over chunks,
  sd_j(m[c][j]) / sqrt(n) / mean_j(m[c][j]), is at most the target;
- `rank_confidence`: the ranking of the unit's compared caches by mean KL is resolved: for each
  pair of neighbours in the current order, the paired per-chunk differences d_j = m[b][j] -
  m[a][j] have a t statistic beyond Student's t quantile at a level that spends the error
  (1 - confidence) over the pairs (Bonferroni) and over every look (alpha_n = alpha * 6 /
  (pi^2 n^2) at the look after chunk n: the sum over all looks is alpha), so stopping at the
  first look that passes keeps the chance of a wrong order at most 1 - confidence.

Speed: repetitions stop once the relative standard error of the t/s samples is at most
`rel_se` (at least `min_repetitions`, at most the cell's repetitions).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

# why a quality cell stopped adding chunks / a speed cell adding repetitions
STOP_TARGET = "target"  # the precision target was met
STOP_CORPUS_END = "corpus-end"  # every chunk the corpus holds ran
STOP_MAX_CHUNKS = "max-chunks"  # quality.max_chunks ran
STOP_REPETITIONS = "repetitions"  # the cell's repetitions ran (no target, or not met by then)


class _JsonSetting:
    """A setting kept in a Cell as canonical JSON (so it enters the cell's id as text)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str):
        return cls(**json.loads(text)) if text else None


@dataclass(frozen=True)
class QualityPrecision(_JsonSetting):
    kl_rel_se: float = 0.0  # 0: no target on the KL's relative standard error
    rank_confidence: float = 0.0  # 0: no target on the ranking
    min_chunks: int = 4


@dataclass(frozen=True)
class SpeedPrecision(_JsonSetting):
    rel_se: float
    min_repetitions: int = 3


def mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.inf
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def relative_se(values: list[float]) -> float:
    """sd / sqrt(n) / mean of the values; 0 when all are exactly 0 (known exactly); inf below 2."""
    if len(values) < 2:
        return math.inf
    mean, sd = mean_sd(values)
    if mean == 0:
        return 0.0 if sd == 0 else math.inf
    return sd / math.sqrt(len(values)) / abs(mean)


def look_alpha(alpha: float, n: int, comparisons: int) -> float:
    """The error level of one pair at the look after chunk n (see the module's docstring)."""
    return alpha * 6 / (math.pi**2 * n * n) / max(1, comparisons)


def pair_resolved(a: list[float], b: list[float], alpha: float) -> bool:
    """Are the means of the paired samples a and b different at two-sided level alpha (paired
    t test)? Exactly equal samples are a tie, and a tie is resolved (nothing will ever split it)."""
    d = [y - x for x, y in zip(a, b)]
    if all(v == 0 for v in d):
        return True
    n = len(d)
    if n < 2:
        return False
    mean, sd = mean_sd(d)
    if sd == 0:
        return True  # the same nonzero difference in every chunk
    t = abs(mean) / (sd / math.sqrt(n))
    return t > t_quantile(1 - alpha / 2, n - 1)


def ranking(chunk_means: dict[str, list[float]]) -> list[str]:
    """Keys ordered by mean KL, smallest first (ties by key, so the order is deterministic)."""
    return sorted(chunk_means, key=lambda k: (math.fsum(chunk_means[k]) / len(chunk_means[k]), k))


def quality_target_met(chunk_means: dict[str, list[float]], target: QualityPrecision) -> bool:
    """After n chunks (every list has n values): are all of the target's rules met?

    `chunk_means`: per compared cache (the baseline configuration's own cell left out) its mean
    KL over each chunk so far. A rule that is set and cannot be judged (one cache for a ranking)
    is not met: the unit then runs to its end."""
    if not chunk_means:
        return False
    n = len(next(iter(chunk_means.values())))
    if n < max(2, target.min_chunks):
        return False
    if target.kl_rel_se > 0:
        if any(relative_se(v) > target.kl_rel_se for v in chunk_means.values()):
            return False
    if target.rank_confidence > 0:
        if len(chunk_means) < 2:
            return False
        order = ranking(chunk_means)
        alpha = look_alpha(1 - target.rank_confidence, n, len(order) - 1)
        if not all(pair_resolved(chunk_means[a], chunk_means[b], alpha) for a, b in zip(order, order[1:])):
            return False
    return target.kl_rel_se > 0 or target.rank_confidence > 0


def speed_target_met(samples_ts: list[float], target: SpeedPrecision) -> bool:
    return len(samples_ts) >= max(2, target.min_repetitions) and relative_se(samples_ts) <= target.rel_se


# -- Student's t quantile (no scipy: the design card's packages do not include it) -------------

def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2, 0.5, x)
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on t_cdf (p in (0.5, 1))."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (Numerical Recipes' continued fraction)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1 - math.exp(ln_front) * _betacf(b, a, 1 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < 3e-16:
            break
    return h
