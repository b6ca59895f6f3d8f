"""Statistics for reports: bootstrap CIs, the exact McNemar test, Pareto fronts.

Everything is seeded, so a report is reproducible byte for byte.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

SEED = 0
RESAMPLES = 2000


def bootstrap_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Return the percentile-bootstrap CI of the mean of ``values``.

    Percentile rather than BCa: BCa is undefined for constant resamples, which
    binary correctness vectors of small runs produce often. A constant (or
    single-element) vector has a degenerate CI at its mean.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2 or np.all(values == values[0]):
        m = float(values.mean()) if values.size else math.nan
        return m, m
    res = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=RESAMPLES,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(SEED),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.asarray(x.mean(axis=axis) - y.mean(axis=axis))


def paired_stats(run: np.ndarray, base: np.ndarray) -> dict[str, float]:
    """Compare paired 0/1 correctness vectors of a run and its baseline.

    Returns ``mcnemar_b`` (baseline right, run wrong), ``mcnemar_c`` (the reverse),
    ``mcnemar_p`` (two-sided exact binomial test of ``b`` out of ``b + c`` at 0.5,
    i.e. the exact McNemar test; 1.0 without discordant pairs) and the paired
    bootstrap 95 % CI of the accuracy difference in points (``delta_acc_low``,
    ``delta_acc_high``).
    """
    run, base = np.asarray(run, dtype=float), np.asarray(base, dtype=float)
    b = int(((base == 1) & (run == 0)).sum())
    c = int(((base == 0) & (run == 1)).sum())
    p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    diff = run - base
    if diff.size >= 2 and not np.all(diff == diff[0]):
        res = stats.bootstrap(
            (run, base),
            _mean_difference,
            paired=True,
            vectorized=True,
            n_resamples=RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(SEED),
        )
        low, high = res.confidence_interval.low, res.confidence_interval.high
    else:
        low = high = float(diff.mean()) if diff.size else math.nan
    return {
        "mcnemar_b": b,
        "mcnemar_c": c,
        "mcnemar_p": p,
        "delta_acc_low": 100 * float(low),
        "delta_acc_high": 100 * float(high),
    }


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Return indices of the points no other point beats, ordered by cost.

    A point is on the front when every cheaper point is less accurate.
    """
    cost, acc = np.asarray(cost, dtype=float), np.asarray(acc, dtype=float)
    order = np.lexsort((-acc, cost))  # by cost; the best accuracy first on ties
    front, best = [], -np.inf
    for i in order:  # loop over runs (a handful), not tokens
        if acc[i] > best:
            front.append(int(i))
            best = acc[i]
    return np.asarray(front, dtype=int)
