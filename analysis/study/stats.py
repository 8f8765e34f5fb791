"""Agreement statistics between predicted and measured loss changes (NumPy only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as in Spearman's definition."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant or has fewer than 2 points."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return pearson(_ranks(x), _ranks(y)) if len(x) >= 2 else float("nan")


def confusion(predicted: Sequence[str], actual: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts ``m[i][j]`` of edits measured as ``labels[i]`` and predicted as ``labels[j]``."""
    index = {lab: i for i, lab in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for p, a in zip(predicted, actual):
        m[index[a]][index[p]] += 1
    return m


def median_abs_log_ratio(pred: Sequence[float], meas: Sequence[float]) -> float:
    """Median of ``|log(|pred| / |meas|)|`` over the pairs where both are non-zero and finite:
    how many e-folds a prediction's magnitude is off, whatever its sign. NaN when none qualify."""
    p, m = np.abs(np.asarray(pred, np.float64)), np.abs(np.asarray(meas, np.float64))
    ok = (p > 0) & (m > 0) & np.isfinite(p) & np.isfinite(m)
    return float(np.median(np.abs(np.log(p[ok] / m[ok])))) if ok.any() else float("nan")


def bootstrap_ci(
    statistic: Callable[..., float], *columns: Sequence[Any], n: int = 1000, seed: int = 0, level: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval of ``statistic(*columns)`` over rows (edits): ``n`` resamples
    of the rows with replacement, drawn from ``default_rng(seed)``; the ``(1 − level)/2`` and
    ``(1 + level)/2`` quantiles of the statistic over the resamples where it is finite. ``[nan, nan]``
    when fewer than two rows, or when too few resamples give a finite value (under half).

    Efron & Tibshirani (1993), *An Introduction to the Bootstrap*, §13.3.
    """
    cols = [np.asarray(c) for c in columns]
    rows = len(cols[0]) if cols else 0
    if rows < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, rows, rows)
        v = statistic(*(c[idx] for c in cols))
        if np.isfinite(v):
            values.append(v)
    if len(values) < n / 2:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def t_quantile(q: float, dof: int) -> float:
    """The ``q`` quantile of Student's t with ``dof`` degrees of freedom (SciPy)."""
    from scipy import stats as scipy_stats

    if dof < 1:
        raise ValueError(f"dof={dof}; Student's t needs at least 1 degree of freedom")
    return float(scipy_stats.t.ppf(q, dof))
