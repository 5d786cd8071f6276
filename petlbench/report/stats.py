"""The statistics behind verdicts, ranks and flags: numbers in, numbers out (no records, no formatting).

Why each choice (also stated wherever the numbers are printed):
- paired differences: two methods run on the same (task, seed) share the task's data and the seed, so the
  difference per pair removes the task-to-task spread that dwarfs differences between methods in a mean;
- bootstrap interval: percentile interval of the mean difference, resampling pairs with replacement, a fixed
  seed (the same numbers give the same interval on every machine);
- Wilcoxon signed-rank: scipy.stats.wilcoxon with zero_method="zsplit" (zero differences are ranked and their
  ranks split evenly between the positive and negative sums, as Demšar 2006 recommends; scipy's default
  drops them, which overstates a difference when many pairs tie); all differences zero: p = 1; the exact
  distribution up to 50 pairs without zeros or ties, else the normal approximation (see wilcoxon_method);
- ranks, Friedman and Nemenyi as in Demšar, "Statistical comparisons of classifiers over multiple data sets",
  JMLR 7, 2006 (rank 1 = best, ties averaged; critical difference CD = q_alpha sqrt(k (k+1) / (6 N)), q_alpha
  the studentized range quantile at infinite degrees of freedom over sqrt 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

RESAMPLES, BOOTSTRAP_SEED, LEVEL, ALPHA = 10_000, 0, 0.95, 0.05
UNSTABLE_STD, UNSTABLE_RANGE, HALF_WIDTH = 2.0, 5.0, 1.0  # top-1 points
FEWEST = 6  # pairs before an exact two-sided Wilcoxon p < 0.05 is possible at all (at best 2 / 2^n: 0.0625 for 5)
RULE = (f"verdict: 'A better' (or 'B better') when the {LEVEL:.0%} bootstrap interval of the mean difference "
        f"excludes 0 and the Wilcoxon signed-rank p < {ALPHA}, from at least {FEWEST} pairs; otherwise 'no detectable "
        "difference'")
A_BETTER, B_BETTER, TIE = "A better", "B better", "no detectable difference"


@dataclass
class Difference:
    """The paired comparison of one set of differences (A minus B, top-1 points)."""
    n: int
    mean: float
    low: float
    high: float
    p: float
    verdict: str

    def as_dict(self) -> dict:
        return {"pairs": self.n, "mean_difference": self.mean, "ci_low": self.low, "ci_high": self.high,
                "wilcoxon_p": self.p, "verdict": self.verdict}


def bootstrap_interval(diffs, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of `diffs`, resampling the pairs with replacement (numpy's PCG64, `seed`)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def wilcoxon_p(diffs) -> float:
    """Two-sided Wilcoxon signed-rank p (zero differences split between the signs); 1.0 when every one is 0."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan
    if not np.any(d):
        return 1.0
    return float(sps.wilcoxon(d, zero_method="zsplit", method=wilcoxon_method(d)).pvalue)


def wilcoxon_method(diffs) -> str:
    """scipy's exact null distribution for up to 50 pairs without zeros or tied magnitudes; otherwise the normal
    approximation with tie correction (scipy's own 'auto' would run a permutation test there: seconds per call)."""
    d = np.abs(np.asarray(diffs, dtype=float))
    return "exact" if d.size <= 50 and np.all(d > 0) and np.unique(d).size == d.size else "approx"


def verdict(low: float, high: float, p: float, n: int = FEWEST) -> str:
    """The rule: the interval excludes 0 and p < ALPHA from at least FEWEST pairs (below that only the normal
    approximation, used when differences tie, could give p < ALPHA), else no detectable difference."""
    if not (p < ALPHA) or n < FEWEST:  # NaN (no pairs) is no evidence either
        return TIE
    if low > 0:
        return A_BETTER
    if high < 0:
        return B_BETTER
    return TIE


def paired(diffs, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Difference:
    d = np.asarray(diffs, dtype=float)
    low, high = bootstrap_interval(d, resamples, seed)
    p = wilcoxon_p(d)
    return Difference(int(d.size), float(d.mean()) if d.size else math.nan, low, high, p, verdict(low, high, p, d.size))


# --- ranks over tasks (Demšar 2006) ---

def rank_table(means: pd.DataFrame) -> pd.DataFrame:
    """Per task (column) the rank of each method (row) by mean top-1, 1 = best, ties averaged; only the tasks
    every row has (a rank among fewer methods is not the same rank)."""
    common = means.dropna(axis=1, how="any")
    return common.apply(lambda col: pd.Series(sps.rankdata(-col.to_numpy()), index=col.index), axis=0)


def friedman(ranks: pd.DataFrame) -> tuple[float, float]:
    """Friedman's chi-square (corrected for ties, as scipy.stats.friedmanchisquare) and its p (k-1 df) from a
    rank table (rows: k methods, columns: N tasks)."""
    k, n = ranks.shape
    if k < 2 or n < 1:
        return math.nan, math.nan
    r = ranks.to_numpy(dtype=float)
    ssbn = float((r.sum(axis=1) ** 2).sum())
    ties = 0.0
    for column in r.T:
        _, counts = np.unique(column, return_counts=True)
        ties += float((counts ** 3 - counts).sum())
    correction = 1.0 - ties / (n * k * (k * k - 1))
    if correction <= 0:  # every task a full tie
        return 0.0, 1.0
    chi2 = (12.0 / (n * k * (k + 1)) * ssbn - 3.0 * n * (k + 1)) / correction
    return chi2, float(sps.chi2.sf(chi2, k - 1))


def q_alpha(k: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical value: the studentized range quantile (k groups, infinite df) over sqrt(2)."""
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Two average ranks over n tasks of k methods differ (Nemenyi, level alpha) when they differ by more."""
    return q_alpha(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


# --- seeds, frontier, PPT ---

def unstable(values) -> bool:
    """Seed-to-seed spread too large to read one run: sample std above 2 points or range above 5."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return False
    return bool(v.std(ddof=1) > UNSTABLE_STD or np.ptp(v) > UNSTABLE_RANGE)


def seeds_needed(std: float, half_width: float = HALF_WIDTH, level: float = LEVEL) -> int:
    """Smallest n with t(level, n-1) * std / sqrt(n) <= half_width, i.e. n = (t s / w)^2 with t at n-1 df."""
    if not std > 0:
        return 2
    n = 2
    while sps.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n) > half_width:
        n += 1
    return n


def pareto_front(points: dict) -> set:
    """Keys of the non-dominated (params, accuracy) points: no other point has accuracy >= and params <=, with
    at least one of the two strict. Points with a NaN are never on it."""
    valid = {k: (p, a) for k, (p, a) in points.items() if not (math.isnan(p) or math.isnan(a))}
    return {k for k, (p, a) in valid.items()
            if not any(q <= p and b >= a and (q < p or b > a) for j, (q, b) in valid.items() if j != k)}


def ppt(accuracy_percent: float, params: float) -> float:
    """V-PETL Bench's performance-parameter trade-off, on its scale: (top-1 % / 100) x exp(-log10(P / 1e7 + 1)),
    P the trainable parameters (its README prints 0.71 for 71.44% at 0.16M)."""
    return accuracy_percent / 100.0 * math.exp(-math.log10(params / 1e7 + 1))
