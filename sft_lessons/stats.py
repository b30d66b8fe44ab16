"""Uncertainty for measured numbers: Wilson intervals, McNemar, paired bootstrap (第 1 章, notebooks/01_prompt_learning.ipynb).

Thin wrappers around scipy.stats, so each chapter prints its numbers the same way, e.g. `0.830 [0.772, 0.876], n=200`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Proportion:
    """A proportion k/n with its 95 % Wilson interval."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n

    def brief(self) -> str:
        """'0.830 [0.772, 0.876]': the value and its interval, without n (for a table whose header gives n)."""
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def __str__(self) -> str:
        return f"{self.brief()}, n={self.n}"


def _as_bool_array(x) -> np.ndarray:
    arr = np.asarray(x.tolist() if hasattr(x, "tolist") else x)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of correct/incorrect flags, got shape {arr.shape}")
    return arr.astype(bool)


def wilson(k: int, n: int, confidence: float = 0.95) -> Proportion:
    """k successes out of n with the Wilson score interval (scipy's binomtest(...).proportion_ci)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"k={k}, n={n}; valid: n >= 1 and 0 <= k <= n")
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Proportion(int(k), int(n), float(ci.low), float(ci.high))


def accuracy_ci(correct, confidence: float = 0.95) -> Proportion:
    """Accuracy of a sequence of correct (True/1) and wrong (False/0) answers, with its Wilson interval."""
    flags = _as_bool_array(correct)
    return wilson(int(flags.sum()), len(flags), confidence)


@dataclass(frozen=True)
class PairedComparison:
    """System B minus system A on the same examples: accuracy difference, its bootstrap interval, McNemar's p."""

    n: int
    diff: float
    low: float
    high: float
    b_only: int  # examples B gets right and A gets wrong
    a_only: int  # examples A gets right and B gets wrong
    p_value: float

    @property
    def significant(self) -> bool:
        """The interval of the difference excludes 0."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return (
            f"{self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}], n={self.n}; "
            f"discordant {self.b_only} vs {self.a_only}, McNemar p={self.p_value:.3g}"
        )

    def verdict(self, better: str = "B", worse: str = "A") -> str:
        """One honest sentence: which is better, or no measurable difference at this n."""
        if not self.significant:
            return f"no measurable difference at n={self.n} (interval contains 0)"
        return f"{better} better than {worse}" if self.diff > 0 else f"{worse} better than {better}"


def mcnemar_exact(correct_a, correct_b) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    a, b = _as_bool_array(correct_a), _as_bool_array(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired flags need the same length, got {a.shape[0]} and {b.shape[0]}")
    b_only, a_only = int((b & ~a).sum()), int((a & ~b).sum())
    if b_only + a_only == 0:
        return 1.0
    return float(sps.binomtest(b_only, b_only + a_only, 0.5).pvalue)


def paired_bootstrap(correct_a, correct_b, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95):
    """(low, high) percentile-bootstrap interval of mean(b) - mean(a), resampling the examples (pairs kept)."""
    a, b = _as_bool_array(correct_a).astype(float), _as_bool_array(correct_b).astype(float)
    if a.shape != b.shape:
        raise ValueError(f"paired flags need the same length, got {a.shape[0]} and {b.shape[0]}")
    if np.all(a == b):
        return 0.0, 0.0
    res = sps.bootstrap(
        (b - a,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
        method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare_paired(correct_a, correct_b, n_resamples: int = 2000, seed: int = 0) -> PairedComparison:
    """B - A accuracy on the same examples, with a paired bootstrap interval and an exact McNemar test."""
    a, b = _as_bool_array(correct_a), _as_bool_array(correct_b)
    low, high = paired_bootstrap(a, b, n_resamples, seed)
    return PairedComparison(
        n=len(a), diff=float(b.mean() - a.mean()), low=low, high=high,
        b_only=int((b & ~a).sum()), a_only=int((a & ~b).sum()), p_value=mcnemar_exact(a, b),
    )  # fmt: skip


@dataclass(frozen=True)
class MeanDifference:
    """Mean of B minus mean of A over the same examples (weighted), with a paired bootstrap interval."""

    n: int
    diff: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval of the difference excludes 0."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}], n={self.n}"


def paired_mean_difference(values_a, values_b, weights=None, n_resamples: int = 2000, seed: int = 0,
                           confidence: float = 0.95) -> MeanDifference:
    """Weighted mean(b) - mean(a) on paired examples, with a percentile bootstrap interval over the examples.

    weights: e.g. each example's token count, so that the means are per token; equal weights by default.
    """
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=float)
    if not a.shape == b.shape == w.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need three 1-D arrays of one length >= 2, got {a.shape}, {b.shape}, {w.shape}")
    if (w < 0).any() or w.sum() == 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    delta = b - a
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_resamples, len(a)))  # (R, n) resampled examples
    boot = (w[idx] * delta[idx]).sum(1) / np.maximum(w[idx].sum(1), 1e-12)  # (R,)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return MeanDifference(len(a), float((w * delta).sum() / w.sum()), float(low), float(high))


def fisher_exact(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided p-value that two independent proportions k_a/n_a and k_b/n_b are equal (Fisher's exact test)."""
    if min(n_a, n_b) < 1 or not (0 <= k_a <= n_a and 0 <= k_b <= n_b):
        raise ValueError(f"k_a={k_a}, n_a={n_a}, k_b={k_b}, n_b={n_b}; valid: n >= 1 and 0 <= k <= n")
    return float(sps.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)


@dataclass(frozen=True)
class SeedSummary:
    """mean ± sd of one figure over several seeds."""

    mean: float
    sd: float
    n_seeds: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.sd:.3f} ({self.n_seeds} seeds)"


def over_seeds(values) -> SeedSummary:
    """mean ± sample sd over seeds (sd 0 for one seed)."""
    values = [float(v) for v in values]
    if not values or any(math.isnan(v) for v in values):
        raise ValueError(f"need at least one finite value, got {values}")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return SeedSummary(statistics.fmean(values), sd, len(values))
