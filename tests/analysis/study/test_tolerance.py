"""The classification tolerance, fixed from calibration data with a Student-t quantile."""

import math

import numpy as np
import pytest

from analysis.study import stats, tolerance


@pytest.mark.parametrize("q", [0.9, 0.975, 0.995])
def test_t_quantiles_match_closed_forms(q):
    # Student's t with 1 dof is Cauchy: tan(π(q − ½)); with 2 dof: (2q − 1)/√(2q(1 − q)).
    assert stats.t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-10)
    assert stats.t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-10)
    with pytest.raises(ValueError, match="dof=0"):
        stats.t_quantile(q, 0)


def test_tolerance_is_the_wider_of_the_gain_and_the_paired_t_interval():
    post = np.array([1.0, 1.2, 0.8, 1.1, 0.9])
    pre = post + 2.0
    reference = post + np.array([0.10, 0.14, 0.08, 0.12, 0.11])  # W_post − 0.05·ΔW, per batch
    tol = tolerance.fixed(pre, post, reference, n_test=8)
    half_width = stats.t_quantile(0.975, 4) * np.std(reference - post, ddof=1) / math.sqrt(8)
    assert tol["gain"] == pytest.approx(2.0)
    assert tol["gain_part"] == pytest.approx(0.1)
    assert tol["noise_part"] == pytest.approx(half_width)
    assert tol["value"] == pytest.approx(max(0.1, half_width))
    assert tol["dof"] == 4 and tol["n_test"] == 8
    # The noise is of the paired difference: a batch-to-batch offset shared by both sides cancels.
    shifted = tolerance.fixed(pre, post + 5 * np.arange(5), reference + 5 * np.arange(5), n_test=8)
    assert shifted["noise_part"] == pytest.approx(half_width)
    # More test batches narrow the noise part as 1/√n; a small gain leaves the noise part in charge.
    assert tolerance.fixed(pre, post, reference, n_test=32)["noise_part"] == pytest.approx(half_width / 2)
    assert tolerance.fixed(post + 0.01, post, reference, n_test=8)["value"] == pytest.approx(half_width)


def test_one_calibration_batch_has_no_noise_part_and_bad_input_is_named():
    tol = tolerance.fixed([2.0], [1.0], [1.1], n_test=8)
    assert tol["value"] == pytest.approx(0.05) and tol["noise_part"] == 0.0 and tol["dof"] == 0
    with pytest.raises(ValueError, match="same, non-zero number"):
        tolerance.fixed([1.0, 2.0], [1.0], [1.0], n_test=8)
    with pytest.raises(ValueError, match="n_test=0"):
        tolerance.fixed([1.0], [1.0], [1.0], n_test=0)
