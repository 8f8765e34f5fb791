"""Adaptive Gauss–Kronrod path integrals: the rule's exactness, error estimates that hold on
integrands with known values (a near-singularity by the segment included, where fixed
Gauss–Legendre oscillates), a budget that is never spent silently, per-leaf terms without an
accumulator."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann
from tests.riemann.test_path import logistic_problem


def test_the_rule_is_exact_to_its_degrees():
    nodes, wk, wg = riemann.kronrod_rule()
    assert np.all(np.diff(nodes) > 0) and 0 < nodes[0] and nodes[-1] < 1
    for k in range(24):
        exact = 1.0 / (k + 1)
        if k <= 22:
            assert wk @ nodes**k == pytest.approx(exact, rel=1e-13), k
        if k <= 13:
            assert wg @ nodes**k == pytest.approx(exact, rel=1e-13), k
    assert abs(wg @ nodes**14 - 1 / 15) > 1e-9  # the Gauss part stops at degree 13
    gl_nodes, _ = riemann.quadrature("gauss-legendre", 7)
    np.testing.assert_allclose(nodes[wg > 0], gl_nodes, atol=1e-15)


def _peak(eps):
    """L(w) = atan((w − ½)/ε): along t ∈ [0, 1] the integrand is a Lorentzian of width ε at t = ½
    (poles at ½ ± iε, close to the segment); ∫ = 2·atan(1/(2ε))."""

    def loss(p, _):
        return jnp.sum(jnp.arctan((p["w"] - 0.5) / eps))

    return loss, 2.0 * math.atan(0.5 / eps)


def test_a_near_singularity_by_the_segment_converges_with_an_honest_error():
    with jax.enable_x64(True):
        loss, exact = _peak(1e-3)
        start, direction = {"w": jnp.zeros(1, jnp.float64)}, {"w": jnp.ones(1, jnp.float64)}
        # Fixed Gauss–Legendre is nowhere near with up to 32 nodes: the peak falls between them.
        gl = [
            abs(riemann.integrate_path(loss, start, direction, [None], rule="gauss-legendre", n=n).value - exact)
            for n in (8, 16, 24, 32)
        ]
        assert min(gl) > 0.5 * exact
        res = riemann.integrate_kronrod(loss, start, direction, [None], rtol=1e-8, max_evaluations=2000)
        assert res.converged and res.rule == "gauss-kronrod"
        assert abs(res.value - exact) <= res.error <= 1e-8 * exact
        assert res.evaluations < 1000 and res.n < res.evaluations  # panels bisected were paid for
        assert np.sum(res.weights) == pytest.approx(1.0, rel=1e-12)
        # Nodes gather at the peak: half of them within 0.05 of t = ½.
        assert np.mean(np.abs(res.nodes - 0.5) < 0.05) > 0.5


@pytest.mark.parametrize("eps", [0.3, 3e-2, 3e-3])
def test_the_error_estimate_bounds_the_error_in_float32(eps):
    loss, exact = _peak(eps)
    start, direction = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
    res = riemann.integrate_kronrod(loss, start, direction, [None], rtol=1e-4, max_evaluations=1000)
    assert res.converged and abs(res.value - 3 * exact) <= res.error


def test_the_budget_is_never_spent_silently():
    with jax.enable_x64(True):
        loss, exact = _peak(1e-4)
        start, direction = {"w": jnp.zeros(1, jnp.float64)}, {"w": jnp.ones(1, jnp.float64)}
        with pytest.warns(riemann.NotConverged, match="budget is spent"):
            res = riemann.integrate_kronrod(loss, start, direction, [None], rtol=1e-10, max_evaluations=75)
        assert not res.converged and res.evaluations <= 75 and res.error > 1e-10 * abs(res.value)
        # A peak narrower than every panel is invisible to both rules' samples (|K − G| is tiny
        # there), but not to the loss gap between the panel's ends: unconverged, the error still
        # bounds the deviation (2.72 here), to the round-off of the loss values.
        assert abs(res.value - exact) > 1.0
        assert abs(res.value - exact) <= res.error + 1e-12 * abs(exact)
        assert res.forward == 4  # loss-only passes at the panel ends 0, ½, ¼ (or ¾) and 1


def test_leaves_mode_gives_per_module_terms_without_an_accumulator():
    loss, start, direction, batches = logistic_problem()
    fwd = riemann.integrate_kronrod(loss, start, direction, batches, rtol=1e-4)
    leaves = riemann.integrate_kronrod(loss, start, direction, batches, rtol=1e-4, mode="leaves")
    ref = riemann.integrate_path(loss, start, direction, batches, rule="gauss-legendre", n=16, endpoints=True)
    assert fwd.value == pytest.approx(leaves.value, rel=1e-5) and leaves.grad is None
    assert sum(leaves.modules.values()) == pytest.approx(leaves.value, rel=1e-6)
    for name in ("w", "b"):
        assert leaves.modules[name] == pytest.approx(ref.modules[name], rel=1e-4, abs=1e-7)
    # Completeness: the integral is the loss change along the segment, within the stated error.
    assert abs(leaves.value - (ref.loss_end - ref.loss_start)) <= leaves.error + 1e-6
    np.testing.assert_allclose(leaves.batch_values.mean(), leaves.value, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "accumulate"}, "mode='accumulate'"),
        ({"rtol": 0.0}, "not both zero"),
        ({"max_evaluations": 14}, "needs 15 evaluations"),
        ({"rtol": -1.0}, "tolerances >= 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    loss, start, direction, batches = logistic_problem()
    with pytest.raises(ValueError, match=match):
        riemann.integrate_kronrod(loss, start, direction, batches, **kwargs)
