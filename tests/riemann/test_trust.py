"""The shared quadratic's trust region against closed forms, and `auto` choosing between the
shared prediction and the measurement by its validity score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann


def _quartic(p, x):  # ΔL along ±s·d from w = 1 is ±4s + 6s² ± 4s³ + s⁴ per unit of x
    return jnp.sum(x * p["w"] ** 4)


def _quadratic(p, x):  # diagonal Hessian diag(x): the shared quadratic is exact
    return 0.5 * jnp.sum(x * p["w"] ** 2)


W = {"w": jnp.array([1.0, 1.0])}
D = {"w": jnp.array([1.0, 0.0])}
BATCHES = [jnp.array([1.0, 2.0]), jnp.array([3.0, 1.0])]


def _curvature(loss):
    return riemann.shared_curvature(loss, W, BATCHES, probes=1, key=jax.random.key(0))


def test_errors_are_the_quartic_remainder_made_monotone():
    steps = [0.1, 0.3, 0.6, 1.0]
    tr = riemann.trust_region(_quartic, W, D, BATCHES, _curvature(_quartic), steps=steps)
    s = np.array(steps)
    x = np.mean([b[0] for b in BATCHES])  # only w[0] moves; batches average its weight
    np.testing.assert_allclose(tr.forward, x * ((1 + s) ** 4 - 1), rtol=1e-5)
    np.testing.assert_allclose(tr.backward, x * ((1 - s) ** 4 - 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tr.model_forward, x * (4 * s + 6 * s**2), rtol=1e-5)
    np.testing.assert_allclose(tr.errors, x * (4 * s**3 + s**4), rtol=1e-4)  # the + side errs more
    assert tr.scale == pytest.approx(1.0)
    assert tr.cost == {"forward": 8}


def test_error_reads_the_envelope_and_extrapolates_conservatively():
    tr = riemann.trust_region(_quartic, W, D, BATCHES, _curvature(_quartic), steps=[0.5, 1.0])
    e_half, e_one = tr.errors
    assert tr.error(0.5) == pytest.approx(e_half)
    assert tr.error(0.7) == pytest.approx(e_one)  # the first grid length ≥ ρ: conservative
    assert tr.error(2.0) == pytest.approx(e_one * 8)  # beyond: the exact quadratic's cubic remainder
    assert tr.error(0.25) == pytest.approx(e_half / 4)  # below: the surrogate's own second-order error
    assert tr.error(0.0) == 0.0
    with pytest.raises(ValueError, match="relative_step"):
        tr.error(-1.0)


def test_below_the_grid_the_error_bound_holds_when_the_diagonal_drops_cross_terms():
    # L = ½ xᵀHx with off-diagonal curvature the diagonal surrogate drops: its error along ΔW is
    # second order, so scaling the first grid value down by (ρ/s)² still covers it at small steps.
    h = jnp.array([[1.0, 0.9], [0.9, 1.0]])

    def loss(p, _):
        return 0.5 * p["w"] @ h @ p["w"]

    w, d = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    exact = riemann.SharedCurvature({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.0, np.zeros(1), 1, 1, {})
    tr = riemann.trust_region(loss, w, d, [None], exact, steps=[0.1, 0.5])
    for rho in (0.01, 0.05):
        true_error = 0.5 * rho**2 * (float(d["w"] @ h @ d["w"]) - 2.0)  # ½ρ²(ΔWᵀHΔW − Σ diag·ΔW²)
        assert tr.error(rho) >= true_error * (1 - 1e-5)


def test_validity_is_error_over_the_margin_to_a_class_boundary():
    tr = riemann.trust_region(_quartic, W, D, BATCHES, _curvature(_quartic), steps=[0.5, 1.0])
    e = tr.error(0.5)
    assert tr.validity(0.5, 3.0, 1.0) == pytest.approx(e / 2.0)  # nearest boundary +1
    assert tr.validity(0.5, -0.25, 1.0) == pytest.approx(e / 0.75)  # inside the band
    assert tr.validity(0.5, 1.0, 1.0) == float("inf")  # on a boundary: never trusted
    assert tr.validity(float("nan"), 3.0, 1.0) == float("inf")  # a non-finite step: measured
    assert tr.validity(0.5, float("inf"), 1.0) == float("inf")
    with pytest.raises(ValueError, match="tolerance"):
        tr.validity(0.5, 0.0, float("nan"))


def test_auto_returns_the_shared_prediction_where_the_quadratic_holds():
    c = _curvature(_quadratic)
    tr = riemann.trust_region(_quadratic, W, D, BATCHES, c)
    assert np.max(tr.errors) < 1e-5  # exact model: no error at any length
    change = {"w": jnp.array([0.3, -0.2])}
    got = riemann.auto_estimate(c, tr, _quadratic, W, change, BATCHES, tolerance=0.01)
    assert got.method == "auto" and got.settings["source"] == "shared"
    assert got.terms["validity"] < 1
    assert got.value == pytest.approx(c.estimate(change).value)
    assert got.value == pytest.approx(riemann.estimate(_quadratic, W, change, BATCHES, method="measured").value)
    assert got.cost["forward"] == 0


def test_auto_measures_where_the_step_leaves_the_region():
    c = _curvature(_quartic)
    tr = riemann.trust_region(_quartic, W, D, BATCHES, c, steps=[0.1, 0.2])
    change = {"w": jnp.array([-0.9, 0.0])}  # ρ = 0.9: the quartic is far from its quadratic there
    got = riemann.auto_estimate(c, tr, _quartic, W, change, BATCHES, tolerance=0.01)
    meas = riemann.estimate(_quartic, W, change, BATCHES, method="measured")
    assert got.settings["source"] == "measured" and got.terms["validity"] >= 1
    assert got.value == pytest.approx(meas.value)
    assert got.terms["shared"] == pytest.approx(c.estimate(change).value)
    assert got.terms["relative_step"] == pytest.approx(0.9)
    small = {"w": jnp.array([1e-3, 0.0])}  # a step well inside: the class cannot change
    assert riemann.auto_estimate(c, tr, _quartic, W, small, BATCHES, tolerance=0.5).settings["source"] == "shared"


def test_trust_region_refuses_what_it_cannot_use():
    c = _curvature(_quartic)
    g = riemann.shared_curvature(_quartic, W, BATCHES, probes=0)
    with pytest.raises(ValueError, match="Hessian diagonal"):
        riemann.trust_region(_quartic, W, D, BATCHES, g)
    with pytest.raises(ValueError, match="increasing"):
        riemann.trust_region(_quartic, W, D, BATCHES, c, steps=[0.5, 0.2])
    with pytest.raises(ValueError, match="increasing"):
        riemann.trust_region(_quartic, W, D, BATCHES, c, steps=[0.0, 0.2])
    with pytest.raises(ValueError, match="norm 0"):
        riemann.trust_region(_quartic, W, {"w": jnp.zeros(2)}, BATCHES, c)
    with pytest.raises(ValueError, match="1 batches but the curvature was computed on 2"):
        riemann.trust_region(_quartic, W, D, BATCHES[:1], c)


def test_a_surrogate_is_judged_and_returned_in_place_of_the_quadratic():
    """A cubic surrogate of the quartic errs only by its s⁴ term; auto returns its value."""
    c = _curvature(_quartic)
    x = float(np.mean([b[0] for b in BATCHES]))

    def cubic(change):
        t = float(change["w"][0])  # only w[0] moves
        return riemann.Estimate("cubic", x * (4 * t + 6 * t**2 + 4 * t**3), np.array([0.0]), {}, {}, {}, {})

    steps = [0.1, 0.3, 0.6, 1.0]
    tr = riemann.trust_region(_quartic, W, D, BATCHES, c, steps=steps, surrogate=cubic)
    s = np.array(steps)
    np.testing.assert_allclose(tr.model_forward, x * (4 * s + 6 * s**2 + 4 * s**3), rtol=1e-5)
    np.testing.assert_allclose(tr.errors, x * s**4, rtol=1e-3, atol=1e-6)
    step = {"w": jnp.array([0.3, 0.0])}
    got = riemann.auto_estimate(c, tr, _quartic, W, step, BATCHES, tolerance=100.0, surrogate=cubic)
    assert got.settings["source"] == "shared" and got.value == pytest.approx(cubic(step).value)
