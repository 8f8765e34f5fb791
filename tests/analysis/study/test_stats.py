import numpy as np
import pytest
from scipy import stats as sps

from analysis.study import stats


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(30)
    y = x + rng.standard_normal(30)
    y[:5] = y[0]  # ties
    assert stats.spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, rel=1e-12)
    assert stats.pearson(x, y) == pytest.approx(sps.pearsonr(x, y).statistic, rel=1e-12)


def test_degenerate_inputs_give_nan():
    assert np.isnan(stats.pearson([1.0, 1.0], [1.0, 2.0]))
    assert np.isnan(stats.spearman([1.0], [2.0]))


def test_confusion_counts():
    labels = ["competitive", "decreased", "improved"]
    m = stats.confusion(["decreased", "competitive", "decreased"], ["decreased", "decreased", "improved"], labels)
    assert m == [[0, 0, 0], [1, 1, 0], [0, 1, 0]]


def test_bootstrap_interval_of_a_mean_matches_the_normal_closed_form():
    # For the mean of n draws the percentile interval is ≈ mean ± 1.96·σ/√n.
    x = np.random.default_rng(1).standard_normal(400)
    lo, hi = stats.bootstrap_ci(np.mean, x, n=2000, seed=0)
    half = 1.96 * np.std(x, ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(np.mean(x) - half, abs=0.15 * half)
    assert hi == pytest.approx(np.mean(x) + half, abs=0.15 * half)
    assert stats.bootstrap_ci(np.mean, x, n=200, seed=3) == stats.bootstrap_ci(np.mean, x, n=200, seed=3)


def test_bootstrap_degenerate_cases():
    assert stats.bootstrap_ci(np.mean, np.full(10, 2.5)) == [2.5, 2.5]
    assert all(np.isnan(stats.bootstrap_ci(np.mean, [1.0])))
    # A statistic that is NaN on most resamples gives no interval.
    assert all(np.isnan(stats.bootstrap_ci(lambda x: np.nan if x.min() < 2 else 1.0, [1.0, 1.0, 2.0, 3.0])))


def test_median_abs_log_ratio():
    assert stats.median_abs_log_ratio([2.0, -1.0, 0.0], [1.0, 1.0, 5.0]) == pytest.approx(np.log(2) / 2)
    assert np.isnan(stats.median_abs_log_ratio([0.0], [1.0]))


def test_row_statistics_equal_the_statistic_of_each_row():
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((50, 12)), 1)  # ties within rows
    y = x + rng.standard_normal((50, 12))
    x[3] = 1.0  # a constant row: NaN
    y[4, :6], x[5, :] = 0.0, np.where(np.arange(12) < 6, 0.0, x[5])  # zeros: skipped by the log ratio
    y[6] = 0.0  # nothing to compare: NaN
    for rows, one in (
        (stats.spearman_rows, stats.spearman),
        (stats.median_abs_log_ratio_rows, stats.median_abs_log_ratio),
    ):
        got, want = rows(x, y), np.array([one(a, b) for a, b in zip(x, y)])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(stats._ranks_rows(x), np.array([stats._ranks(a) for a in x]))


def test_bootstrap_over_rows_draws_the_same_resamples_as_the_loop():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(40)
    y = x + rng.standard_normal(40)
    y[:8] = y[0]
    loop = stats.bootstrap_ci(stats.spearman, x, y, seed=7)
    rows = stats.bootstrap_ci(stats.spearman, x, y, seed=7, rows=stats.spearman_rows)
    assert rows == pytest.approx(loop, rel=1e-12) and rows != stats.bootstrap_ci(stats.spearman, x, y, seed=8)
