import math

import numpy as np
import pytest

from sft_lessons import stats


def test_wilson_matches_the_formula():
    k, n, z = 166, 200, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    ci = stats.wilson(k, n)
    assert ci.low == pytest.approx(centre - half, abs=1e-9) and ci.high == pytest.approx(centre + half, abs=1e-9)
    assert str(ci) == "0.830 [0.772, 0.876], n=200"


def test_wilson_edges_and_errors():
    assert stats.wilson(0, 10).low == 0.0 and stats.wilson(10, 10).high == pytest.approx(1.0)
    with pytest.raises(ValueError, match="valid: n >= 1"):
        stats.wilson(3, 0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.wilson(11, 10)


def test_accuracy_ci_counts_flags():
    ci = stats.accuracy_ci([True, False, True, True])
    assert (ci.k, ci.n) == (3, 4)
    with pytest.raises(ValueError, match="1-D"):
        stats.accuracy_ci([[True]])


def test_mcnemar_exact_by_hand():
    # 6 discordant pairs, all favouring B: p = 2 * 0.5**6 = 0.03125
    a = [False] * 6 + [True] * 10
    b = [True] * 6 + [True] * 10
    assert stats.mcnemar_exact(a, b) == pytest.approx(2 * 0.5**6)
    # 3 vs 1: p = 2 * P(X <= 1 | n=4) = 2 * 5/16 = 0.625
    a = [True, False, False, False, True]
    b = [False, True, True, True, True]
    assert stats.mcnemar_exact(a, b) == pytest.approx(0.625)
    assert stats.mcnemar_exact([True, False], [True, False]) == 1.0
    with pytest.raises(ValueError, match="same length"):
        stats.mcnemar_exact([True], [True, False])


def test_paired_comparison_interval_and_verdict():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.6
    b = a | (rng.random(400) < 0.3)  # B fixes some of A's errors, breaks none
    cmp = stats.compare_paired(a, b)
    assert cmp.diff == pytest.approx(b.mean() - a.mean())
    assert 0 < cmp.low < cmp.diff < cmp.high and cmp.a_only == 0 and cmp.p_value < 1e-6
    assert cmp.significant and cmp.verdict("B", "A") == "B better than A"
    same = stats.compare_paired(a, a)
    assert (same.low, same.high, same.p_value) == (0.0, 0.0, 1.0)
    assert same.verdict() == "no measurable difference at n=400 (interval contains 0)"
    noisy = stats.compare_paired(rng.random(40) < 0.5, rng.random(40) < 0.5)
    assert noisy.low < 0 < noisy.high and not noisy.significant


def test_over_seeds():
    s = stats.over_seeds([0.8, 0.9, 1.0])
    assert s.mean == pytest.approx(0.9) and s.sd == pytest.approx(0.1) and str(s) == "0.900 ± 0.100 (3 seeds)"
    assert stats.over_seeds([0.5]).sd == 0.0
    with pytest.raises(ValueError):
        stats.over_seeds([])


def test_fisher_exact_by_hand():
    # [[1, 3], [3, 1]]: hypergeometric, two-sided p = 0.4857...
    assert stats.fisher_exact(1, 4, 3, 4) == pytest.approx(34 / 70)
    assert stats.fisher_exact(5, 10, 5, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="valid"):
        stats.fisher_exact(5, 4, 1, 2)


def test_paired_mean_difference_weighted_and_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 0.3, 60)
    b = a - 0.2 + rng.normal(0, 0.05, 60)  # b lower by 0.2 on every example
    w = rng.integers(5, 50, 60)
    d = stats.paired_mean_difference(a, b, weights=w)
    assert d.diff == pytest.approx(((b - a) * w).sum() / w.sum())
    assert d.low < d.diff < d.high < 0 and d.significant
    assert str(d).startswith(f"{d.diff:+.3f} [")
    same = stats.paired_mean_difference(a, a)
    assert same.diff == 0 and same.low == 0 == same.high and not same.significant
    with pytest.raises(ValueError, match="1-D"):
        stats.paired_mean_difference(a, b[:10])
