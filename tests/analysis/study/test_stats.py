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
