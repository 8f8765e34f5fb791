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
