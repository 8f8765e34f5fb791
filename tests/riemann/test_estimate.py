import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann
from tests.riemann.test_path import logistic_problem


def quadratic(dtype):
    a = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]], dtype)
    b = jnp.array([0.1, -0.4, 0.2], dtype)

    def loss(p, scale):
        w = jnp.concatenate([p["x"], p["y"]])
        return scale * (0.5 * w @ a @ w + b @ w)

    post = {"x": jnp.array([1.0, -2.0], dtype), "y": jnp.array([0.5], dtype)}
    change = {"x": jnp.array([0.3, 0.4], dtype), "y": jnp.array([-1.0], dtype)}
    return loss, post, change, a, b


def test_second_order_is_exact_on_a_quadratic_and_first_order_is_the_gradient_term():
    with jax.enable_x64(True):
        loss, post, change, a, b = quadratic(jnp.float64)
        batches = [jnp.float64(1.0), jnp.float64(3.0)]
        w = np.concatenate([post["x"], post["y"]])
        c = np.concatenate([change["x"], change["y"]])
        g = np.asarray(a) @ w + np.asarray(b)
        first = 2.0 * g @ c  # mean of scale over batches is 2
        quad = 2.0 * c @ np.asarray(a) @ c
        est = {m: riemann.estimate(loss, post, change, batches, method=m) for m in riemann.METHODS}
    assert est["first-order"].value == pytest.approx(first, rel=1e-12)
    assert est["second-order"].value == pytest.approx(first + 0.5 * quad, rel=1e-12)
    assert est["measured"].value == pytest.approx(first + 0.5 * quad, rel=1e-12)
    assert est["second-order"].terms["second"] == pytest.approx(0.5 * quad, rel=1e-12)
    # Left rule, C = 5: first + (C − 1)/(2C)·quad = first + 0.4·quad.
    assert est["riemann"].value == pytest.approx(first + 0.4 * quad, rel=1e-12)
    for e in est.values():
        if e.method != "measured":
            assert sum(e.modules.values()) == pytest.approx(e.value, rel=1e-12)
            assert list(e.modules) == ["x", "y"]
    assert est["measured"].modules == {}
    np.testing.assert_allclose(
        est["measured"].batch_values, np.array([1.0, 3.0]) * (first + 0.5 * quad) / 2.0, rtol=1e-12
    )


def test_second_order_per_leaf_breakdown_matches_a_dense_hessian():
    with jax.enable_x64(True):
        loss, post, change, a, _ = quadratic(jnp.float64)
        est = riemann.estimate(loss, post, change, [jnp.float64(1.0)], method="second-order")
        c = np.concatenate([change["x"], change["y"]])
        hc = np.asarray(a) @ c
        g = np.asarray(jax.grad(loss)(post, 1.0)["x"])
    assert est.modules["x"] == pytest.approx(g @ c[:2] + 0.5 * c[:2] @ hc[:2], rel=1e-12)


def test_estimators_on_logistic_regression_rank_as_theory_says():
    loss, post, change, batches = logistic_problem()
    est = {m: riemann.estimate(loss, post, change, batches, method=m) for m in riemann.METHODS}
    gl = riemann.estimate(loss, post, change, batches, method="riemann", rule="gauss-legendre", n=8)
    measured = est["measured"].value
    assert gl.value == pytest.approx(measured, rel=1e-4)
    err = {m: abs(e.value - measured) for m, e in est.items()}
    assert err["second-order"] < err["first-order"]
    assert err["riemann"] < err["first-order"]
    assert est["measured"].stderr > 0 and est["second-order"].stderr > 0
    assert est["riemann"].cost == {"gradient": 5, "hvp": 0, "forward": 0}
    assert est["second-order"].cost["hvp"] == 1 and est["measured"].cost["forward"] == 2
    assert gl.settings == {"rule": "gauss-legendre", "n": 8, "mode": "accumulate"}
    # Forward-mode products: the same value and per-batch values, counted as jvps, no breakdown.
    fwd = riemann.estimate(loss, post, change, batches, method="riemann", rule="gauss-legendre", n=8, mode="forward")
    assert fwd.value == pytest.approx(gl.value, rel=1e-5)
    np.testing.assert_allclose(fwd.batch_values, gl.batch_values, rtol=1e-5)
    assert fwd.cost == {"gradient": 0, "jvp": 8, "hvp": 0, "forward": 0} and fwd.modules == {}


def test_unknown_method_and_empty_batches():
    loss, post, change, batches = logistic_problem()
    with pytest.raises(ValueError, match="unknown method 'hessian'.*riemann, first-order, second-order, measured"):
        riemann.estimate(loss, post, change, batches, method="hessian")
    for m in riemann.METHODS:
        with pytest.raises(ValueError, match="batches is empty"):
            riemann.estimate(loss, post, change, [], method=m)


def test_second_order_mismatched_change_names_the_leaf():
    loss, post, change, batches = logistic_problem()
    with pytest.raises(ValueError, match="leaf 'w'"):
        riemann.estimate(loss, post, {**change, "w": change["w"][:3]}, batches, method="second-order")


def test_measured_reuses_known_post_losses_with_one_forward():
    loss, start, direction, batches = logistic_problem()
    ref = riemann.estimate(loss, start, direction, batches, method="measured")
    post_losses = [float(loss(start, b)) for b in batches]
    got = riemann.estimate(loss, start, direction, batches, method="measured", loss_post=post_losses)
    assert got.value == pytest.approx(ref.value, rel=1e-6)
    np.testing.assert_allclose(got.batch_values, ref.batch_values, rtol=1e-5)
    assert ref.cost["forward"] == 2 and got.cost["forward"] == 1
    with pytest.raises(ValueError, match="loss_post has 2 per-batch losses for 3 batches"):
        riemann.estimate(loss, start, direction, batches, method="measured", loss_post=post_losses[:2])
