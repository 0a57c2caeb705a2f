"""The benchmark's statistics on cases small enough to know the answer."""

import itertools
import math

import numpy as np
import pytest

from weightgen.eval.stats import (
    binomial_two_sided,
    bootstrap_median,
    quartiles,
    ratios,
    sign_test,
)


def test_quartiles_with_never():
    q = quartiles([4.0, 1.0, None, 3.0, 2.0])  # sorted: 1 2 3 4 inf
    assert q == {"n": 5, "never": 1, "q1": 2.0, "median": 3.0, "q3": 4.0}
    # the median itself is "never": only a bound is known
    assert quartiles([1.0, None, None]) == {
        "n": 3,
        "never": 2,
        "q1": None,
        "median": None,
        "q3": None,
    }
    assert quartiles([1.0, 2.0]) == {"n": 2, "never": 0, "q1": 1.25, "median": 1.5, "q3": 1.75}


def test_sign_test_counts_never_as_slowest():
    s = sign_test([1.0, 2.0, 3.0, None, None], [2.0, 3.0, 1.0, 5.0, None])
    assert (s["wins"], s["losses"], s["ties"]) == (2, 2, 1)
    assert s["p"] == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        sign_test([1.0], [1.0, 2.0])


def test_binomial_exact_values():
    # 9 wins, 1 loss: 2 * (C(10,0) + C(10,1)) / 2^10
    assert binomial_two_sided(9, 1) == pytest.approx(22 / 1024)
    assert binomial_two_sided(1, 9) == binomial_two_sided(9, 1)
    assert binomial_two_sided(10, 0) == pytest.approx(2 / 1024)
    assert binomial_two_sided(3, 3) == 1.0 and binomial_two_sided(0, 0) == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    for k1, k2 in ((7, 2), (12, 5), (0, 6), (20, 20)):
        assert binomial_two_sided(k1, k2) == pytest.approx(
            scipy_stats.binomtest(k1, k1 + k2, 0.5).pvalue
        )


def test_bootstrap_matches_the_exact_resampling_distribution():
    values = [1.0, 4.0, 10.0]
    # the 27 equally likely resamples: median 1 in 7, 4 in 13, 10 in 7
    meds = [float(np.median(r)) for r in itertools.product(values, repeat=3)]
    assert [meds.count(v) for v in values] == [7, 13, 7]
    # a central 50% interval reaches both tails (7/27 > 25%), a 40% one only the middle
    assert bootstrap_median(values, n_boot=20_000, level=0.5, seed=3)["low"] == 1.0
    assert bootstrap_median(values, n_boot=20_000, level=0.5, seed=3)["high"] == 10.0
    ci = bootstrap_median(values, n_boot=20_000, level=0.4, seed=3)
    assert (ci["low"], ci["high"]) == (4.0, 4.0)
    assert bootstrap_median([3.0] * 7) == {
        "low": 3.0,
        "high": 3.0,
        "level": 0.95,
        "n_boot": 10_000,
    }
    assert bootstrap_median([1.0, math.inf, math.inf])["high"] is None
    assert bootstrap_median(values, seed=1) == bootstrap_median(values, seed=1)


def test_ratios_follow_the_speedup_convention():
    assert ratios([10.0, None, 4.0, None], [2.0, 1.0, None, None]) == [5.0, math.inf, 0.0]
