"""Agreement statistics between predicted and measured loss changes (NumPy only)."""

from __future__ import annotations

import functools
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


def _ranks_rows(x: np.ndarray) -> np.ndarray:
    """:func:`_ranks` of each row of a 2-D array, without a Python loop: each value's code among
    all values, then per row the count of smaller codes plus half the ties (less one)."""
    uniq, codes = np.unique(x, return_inverse=True)
    codes = codes.reshape(x.shape)
    k = len(uniq)
    counts = np.bincount((codes + k * np.arange(x.shape[0])[:, None]).ravel(), minlength=k * x.shape[0])
    counts = counts.reshape(x.shape[0], k)
    below = np.cumsum(counts, axis=1) - counts
    rows = np.arange(x.shape[0])[:, None]
    return below[rows, codes] + (counts[rows, codes] - 1) / 2.0


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`spearman` of each row of ``x`` against the same row of ``y`` (2-D arrays): NaN where
    a row of either is constant or has fewer than 2 entries."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape[1] < 2:
        return np.full(x.shape[0], np.nan)
    rx, ry = _ranks_rows(x), _ranks_rows(y)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    sx, sy = np.sqrt((rx * rx).sum(axis=1)), np.sqrt((ry * ry).sum(axis=1))
    ok = (sx > 0) & (sy > 0)
    out = np.full(x.shape[0], np.nan)
    out[ok] = (rx[ok] * ry[ok]).sum(axis=1) / (sx[ok] * sy[ok])
    return out


def median_abs_log_ratio_rows(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    """:func:`median_abs_log_ratio` of each row of ``pred`` against the same row of ``meas``."""
    p, m = np.abs(np.asarray(pred, np.float64)), np.abs(np.asarray(meas, np.float64))
    ok = (p > 0) & (m > 0) & np.isfinite(p) & np.isfinite(m)
    logs = np.where(ok, np.abs(np.log(np.where(ok, p, 1.0) / np.where(ok, m, 1.0))), np.nan)
    out = np.full(p.shape[0], np.nan)
    some = ok.any(axis=1)
    out[some] = np.nanmedian(logs[some], axis=1)
    return out


@functools.lru_cache(maxsize=64)
def _resamples(seed: int, n: int, size: int) -> np.ndarray:
    """The row indices of ``n`` resamples of ``size`` rows from ``default_rng(seed)`` (read-only; the
    same for every statistic of the same edits). One draw per resample, as a loop of single
    resamples draws them (one (n, size) draw would not: the generator drops a half-used word at
    the end of each call)."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, size, size) for _ in range(n)])
    idx.flags.writeable = False
    return idx


def bootstrap_ci(
    statistic: Callable[..., float],
    *columns: Sequence[Any],
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    rows: Callable[..., np.ndarray] | None = None,
) -> list[float]:
    """Percentile bootstrap interval of ``statistic(*columns)`` over rows (edits): ``n`` resamples
    of the rows with replacement, drawn from ``default_rng(seed)``; the ``(1 − level)/2`` and
    ``(1 + level)/2`` quantiles of the statistic over the resamples where it is finite. ``[nan, nan]``
    when fewer than two rows, or when too few resamples give a finite value (under half).

    ``rows``, when given, is the same statistic over a batch: called once with each column
    resampled ``n`` times (2-D, one resample a row), it returns the ``n`` values, so that a report's
    hundreds of intervals do not each cost ``n`` Python calls. The resamples are the same either way.

    Efron & Tibshirani (1993), *An Introduction to the Bootstrap*, §13.3.
    """
    cols = [np.asarray(c) for c in columns]
    size = len(cols[0]) if cols else 0
    if size < 2:
        return [float("nan"), float("nan")]
    idx = _resamples(seed, n, size)
    if rows is not None:
        values = np.asarray(rows(*(c[idx] for c in cols)), np.float64)
    else:
        values = np.array([statistic(*(c[i] for c in cols)) for i in idx], np.float64)
    values = values[np.isfinite(values)]
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
