import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann
from tests.riemann.test_estimate import quadratic
from tests.riemann.test_path import logistic_problem


def test_first_order_equals_the_per_edit_first_order_estimate():
    loss, post, direction, batches = logistic_problem()
    sc = riemann.shared_curvature(loss, post, batches, probes=0)
    for scale in (0.3, -1.0):
        change = jax.tree.map(lambda d, s=scale: s * d, direction)
        ref = riemann.estimate(loss, post, change, batches, method="first-order")
        got = sc.first_order(change)
        assert got.value == pytest.approx(ref.value, rel=1e-5, abs=1e-7)
        assert got.modules.keys() == ref.modules.keys()
        for k in ref.modules:
            assert got.modules[k] == pytest.approx(ref.modules[k], rel=1e-4, abs=1e-7)
    assert sc.cost == {"gradient": 1, "hvp": 0}
    assert sc.loss == pytest.approx(float(np.mean([loss(post, b) for b in batches])), rel=1e-6)
    np.testing.assert_allclose(sc.batch_losses, [float(loss(post, b)) for b in batches], rtol=1e-6)


def test_diagonal_hessian_is_recovered_exactly_by_any_probe():
    # z ⊙ Hz = diag(H) exactly when H is diagonal (z_i² = 1), so the surrogate is exact second order.
    with jax.enable_x64(True):
        h = jnp.array([0.5, 2.0, 3.0], jnp.float64)

        def loss(p, s):
            return s * (0.5 * jnp.sum(h * p["w"] ** 2) + jnp.sum(p["w"]))

        post = {"w": jnp.array([1.0, -1.0, 0.5], jnp.float64)}
        change = {"w": jnp.array([0.2, -0.7, 1.5], jnp.float64)}
        batches = [jnp.float64(1.0), jnp.float64(2.0)]
        sc = riemann.shared_curvature(loss, post, batches, probes=3, key=jax.random.key(1))
        np.testing.assert_allclose(np.asarray(sc.diagonal["w"]), 1.5 * np.asarray(h), rtol=1e-12)
        exact = riemann.estimate(loss, post, change, batches, method="second-order").value
        got = sc.estimate(change)
    assert got.value == pytest.approx(exact, rel=1e-12)
    assert got.terms["first"] + got.terms["second"] == pytest.approx(got.value, rel=1e-12)
    assert sc.cost == {"gradient": 0, "hvp": 3}


def test_hutchinson_diagonal_is_unbiased_for_a_dense_hessian():
    with jax.enable_x64(True):
        loss, post, _, a, _ = quadratic(jnp.float64)
        batches = [jnp.float64(1.0)]
        probes = 4000
        sc = riemann.shared_curvature(loss, post, batches, probes=probes, key=jax.random.key(0))
        est = np.concatenate([sc.diagonal["x"], sc.diagonal["y"]])
    a = np.asarray(a)
    # Var(z_i (Hz)_i) = Σ_{j≠i} H_ij²; the mean of `probes` draws is within 5 standard errors.
    off = (a**2).sum(axis=1) - np.diag(a) ** 2
    se = np.sqrt(off / probes)
    assert np.all(np.abs(est - np.diag(a)) <= 5 * se + 1e-12)
    assert np.any(np.abs(est - np.diag(a)) > 0)  # it is an estimate, not the closed form


def test_probes_are_reproducible_and_depend_on_the_key():
    loss, post, _, batches = logistic_problem()
    a = riemann.shared_curvature(loss, post, batches, probes=2, key=jax.random.key(3))
    b = riemann.shared_curvature(loss, post, batches, probes=2, key=jax.random.key(3))
    c = riemann.shared_curvature(loss, post, batches, probes=2, key=jax.random.key(4))
    for x, y, z in zip(jax.tree.leaves(a.diagonal), jax.tree.leaves(b.diagonal), jax.tree.leaves(c.diagonal)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert not np.array_equal(np.asarray(x), np.asarray(z))


def test_bfloat16_params_accumulate_in_float32():
    loss, post, _, batches = logistic_problem()
    post16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), post)
    with jax.numpy_dtype_promotion("standard"):
        sc = riemann.shared_curvature(loss, post16, batches, probes=1, key=jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(sc.grad))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(sc.diagonal))


def test_bad_arguments_are_named():
    loss, post, _, batches = logistic_problem()
    with pytest.raises(ValueError, match="key is required"):
        riemann.shared_curvature(loss, post, batches, probes=2)
    with pytest.raises(ValueError, match="probes=-1"):
        riemann.shared_curvature(loss, post, batches, probes=-1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="batches is empty"):
        riemann.shared_curvature(loss, post, [], probes=0)
    sc = riemann.shared_curvature(loss, post, batches, probes=0)
    with pytest.raises(ValueError, match="probes=0"):
        sc.estimate(post)
