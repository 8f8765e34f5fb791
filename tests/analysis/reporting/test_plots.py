"""Figures of a run: every plotting function draws on axes it is given and returns the figure."""

import pytest

from tests.analysis.helpers import results


def test_plotting_functions_draw_on_given_axes(mlp_run):
    import matplotlib.pyplot as plt

    from analysis.reporting import plots

    res = results(mlp_run)
    pair = res["pairs"][0]
    fig, ax = plt.subplots(figsize=(6, 5))
    assert plots.calibration(pair, ax=ax) is fig and plots.line_profile(pair, ax=ax) is fig
    assert plots.frontier(res, ax=ax) is fig
    n = len(pair["agreement"])  # one confusion matrix per estimator of the run
    fig2, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.4))
    assert plots.confusions(pair, axes) is fig2
    with pytest.raises(ValueError, match=f"needs {n} axes"):
        plots.confusions(pair, axes[:2])
    plt.close("all")
