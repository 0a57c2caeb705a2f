"""The benchmark's statistics over concepts: quartiles of times that may be "never", a paired sign
test, and a bootstrap interval of a median speed-up.

A time to target is seconds, or None when the method never reached the target within its budget;
None sorts after every finite time (it is slower than any of them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _as_inf(times: Sequence[float | None]) -> np.ndarray:
    return np.array([math.inf if t is None else float(t) for t in times], dtype=np.float64)


def quartiles(values: Sequence[float | None]) -> dict:
    """{"q1", "median", "q3", "never", "n"} of values with None as +inf (never reached); a
    quartile that falls on +inf is None (only a lower bound is known). Linear interpolation between
    order statistics, as numpy's default; an interpolation touching +inf gives None."""
    x = np.sort(_as_inf(values))
    out: dict = {"n": int(x.size), "never": int(np.isinf(x).sum())}
    for name, q in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
        if x.size == 0:
            out[name] = None
            continue
        v = float(np.quantile(x, q)) if np.isfinite(x).all() else _quantile_inf(x, q)
        out[name] = v if math.isfinite(v) else None
    return out


def _quantile_inf(x: np.ndarray, q: float) -> float:
    pos = q * (x.size - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi or x[hi] == x[lo]:
        return float(x[lo])
    if math.isinf(x[hi]):
        return math.inf
    return float(x[lo] + (pos - lo) * (x[hi] - x[lo]))


def sign_test(a: Sequence[float | None], b: Sequence[float | None]) -> dict:
    """Paired per-concept sign test of times `a` against `b` (index i: one concept; lower is
    better, None = never). {"wins": a faster, "losses": a slower, "ties", "p": exact two-sided
    binomial p over the untied pairs (1.0 when all tie)}."""
    if len(a) != len(b):
        raise ValueError(f"paired times differ in length: {len(a)} vs {len(b)}")
    xa, xb = _as_inf(a), _as_inf(b)
    wins = int((xa < xb).sum())
    losses = int((xa > xb).sum())
    ties = len(a) - wins - losses
    return {"wins": wins, "losses": losses, "ties": ties, "p": binomial_two_sided(wins, losses)}


def binomial_two_sided(k1: int, k2: int) -> float:
    """Exact two-sided p of a split k1 : k2 under a fair coin: twice the smaller tail, at most 1."""
    n = k1 + k2
    if n == 0:
        return 1.0
    k = min(k1, k2)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def ratios(slow: Sequence[float | None], fast: Sequence[float | None]) -> list[float]:
    """Per-concept speed-ups slow/fast (metrics.speedups' convention): concepts neither reached
    are left out; fast never reaching is 0, slow never reaching +inf."""
    out = []
    for s, f in zip(slow, fast):
        if s is None and f is None:
            continue
        if f is None:
            out.append(0.0)
        elif s is None:
            out.append(math.inf)
        else:
            out.append(s / max(f, 1e-9))
    return out


def bootstrap_median(
    values: Sequence[float], *, n_boot: int = 10_000, level: float = 0.95, seed: int = 0
) -> dict:
    """Percentile bootstrap interval of the median of `values` (concepts resampled with
    replacement; +inf allowed: a bound on +inf is None). {"low", "high", "level", "n_boot"}."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"low": None, "high": None, "level": level, "n_boot": n_boot}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    meds = np.sort(np.median(x[idx], axis=1))
    lo = meds[int(math.floor((1 - level) / 2 * (n_boot - 1)))]
    hi = meds[int(math.ceil((1 + level) / 2 * (n_boot - 1)))]
    return {
        "low": float(lo) if math.isfinite(lo) else None,
        "high": float(hi) if math.isfinite(hi) else None,
        "level": level,
        "n_boot": n_boot,
    }
