import numpy as np
import pytest

import riemann
from riemann import degree, refine

NS = {
    "left": [1, 2, 5, 17],
    "right": [1, 3, 8],
    "midpoint": [1, 4, 9],
    "trapezoid": [2, 3, 10],
    "simpson": [3, 5, 21],
    "gauss-legendre": [1, 2, 5, 8],
}
CASES = [(r, n) for r, ns in NS.items() for n in ns]


@pytest.mark.parametrize("rule,n", CASES)
def test_weights_sum_to_one_and_nodes_in_unit_interval(rule, n):
    nodes, weights = riemann.quadrature(rule, n)
    assert nodes.shape == weights.shape == (n,)
    assert abs(weights.sum() - 1.0) < 1e-15
    assert np.all(weights > 0)
    assert np.all((nodes >= 0) & (nodes <= 1))
    assert np.all(np.diff(nodes) > 0)


@pytest.mark.parametrize("rule,n", CASES)
def test_exact_up_to_degree_and_not_beyond(rule, n):
    nodes, weights = riemann.quadrature(rule, n)
    d = degree(rule, n)
    for k in range(d + 1):
        assert weights @ nodes**k == pytest.approx(1.0 / (k + 1), rel=1e-13, abs=1e-15), k
    # One degree more is not exact (this is what makes `degree` the rule's true degree).
    assert abs(weights @ nodes ** (d + 1) - 1.0 / (d + 2)) > 1e-12


def test_left_rule_is_the_papers():
    nodes, weights = riemann.quadrature("left", 5)
    np.testing.assert_array_equal(nodes, [0.0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_array_equal(weights, [0.2] * 5)
    default = riemann.quadrature()
    np.testing.assert_array_equal(default.nodes, nodes)
    np.testing.assert_array_equal(default.weights, weights)


@pytest.mark.parametrize("rule,order", [("left", 1), ("right", 1), ("midpoint", 2), ("trapezoid", 2), ("simpson", 4)])
def test_order_of_convergence(rule, order):
    # Composite rules on a smooth integrand converge as h^order; measure the slope on log-log.
    f, exact = np.exp, np.e - 1.0
    ns = [9, 17, 33, 65] if rule in ("trapezoid", "simpson") else [8, 16, 32, 64]
    errs = []
    for n in ns:
        x, w = riemann.quadrature(rule, n)
        errs.append(abs(w @ f(x) - exact))
    cells = np.array(ns) - (1 if rule in ("trapezoid", "simpson") else 0)
    slope = -np.polyfit(np.log(cells), np.log(errs), 1)[0]
    assert slope == pytest.approx(order, abs=0.1)


def test_gauss_legendre_converges_exponentially():
    errs = [abs(w @ np.exp(x) - (np.e - 1)) for x, w in (riemann.quadrature("gauss-legendre", n) for n in (1, 2, 3, 4))]
    assert all(b < a / 20 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-8


@pytest.mark.parametrize("rule,n", [(r, NS[r][1]) for r in NS])
def test_refine_is_nested_where_the_rule_allows(rule, n):
    old, _ = riemann.quadrature(rule, n)
    new, _ = riemann.quadrature(rule, refine(rule, n))
    contains = np.isclose(old[:, None], new[None, :], atol=1e-14).any(axis=1).all()
    assert contains == (rule != "gauss-legendre")


@pytest.mark.parametrize(
    "rule,n,match",
    [
        ("simpsons", 3, "unknown quadrature rule 'simpsons'.*left, right"),
        ("left", 0, "n .* >= 1"),
        ("left", 2.5, "integer"),
        ("trapezoid", 1, "n >= 2"),
        ("simpson", 4, "odd n >= 3"),
        ("simpson", 1, "odd"),
    ],
)
def test_bad_arguments_say_what_is_accepted(rule, n, match):
    with pytest.raises(ValueError, match=match):
        riemann.quadrature(rule, n)
