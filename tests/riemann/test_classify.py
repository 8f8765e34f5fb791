import math

import pytest

import riemann


@pytest.mark.parametrize(
    "value,tol,expected",
    [
        (0.2, 0.1, "decreased"),
        (0.1, 0.1, "competitive"),
        (-0.1, 0.1, "competitive"),
        (-0.1000001, 0.1, "improved"),
        (0.0, 0.0, "competitive"),
        (1e-9, 0.0, "decreased"),
        (-3.0, 1.0, "improved"),
    ],
)
def test_classify_thresholds(value, tol, expected):
    assert riemann.classify(value, tol) == expected
    assert riemann.classify(value, tol) in riemann.CLASSES


@pytest.mark.parametrize("tol", [-0.1, math.inf, math.nan])
def test_classify_rejects_bad_tolerance(tol):
    with pytest.raises(ValueError, match="tolerance"):
        riemann.classify(0.0, tol)


def test_classify_rejects_nan_value():
    with pytest.raises(ValueError, match="NaN"):
        riemann.classify(math.nan, 0.1)


def test_tolerance_rule_takes_the_largest_term():
    assert riemann.choose_tolerance(gain=2.0) == pytest.approx(0.1)
    assert riemann.choose_tolerance(gain=-2.0) == pytest.approx(0.1)
    assert riemann.choose_tolerance(gain=2.0, stderr=0.2) == pytest.approx(0.4)
    assert riemann.choose_tolerance(stderr=0.2, z=3.0) == pytest.approx(0.6)
    assert riemann.choose_tolerance(gain=2.0, fraction=0.2) == pytest.approx(0.4)
    assert riemann.choose_tolerance(gain=1e-9, floor=1e-6) == pytest.approx(1e-6)
    assert riemann.choose_tolerance(gain=1.0, stderr=math.nan) == pytest.approx(0.05)  # one batch: no SE term


def test_tolerance_grows_with_noise_and_gain():
    base = riemann.choose_tolerance(gain=1.0, stderr=0.01)
    assert riemann.choose_tolerance(gain=1.0, stderr=0.1) > base
    assert riemann.choose_tolerance(gain=10.0, stderr=0.01) > base


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "needs gain"),
        ({"gain": 1.0, "fraction": -0.1}, "fraction"),
        ({"gain": math.inf}, "gain"),
        ({"stderr": -1.0}, "stderr"),
        ({"gain": 1.0, "z": math.nan}, "z"),
    ],
)
def test_tolerance_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        riemann.choose_tolerance(**kwargs)
