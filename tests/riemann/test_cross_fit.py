"""The cross-fitted first-order term of an edit built from the gradient: by hand, unbiased where the
in-sample term is not (Monte Carlo on gradients with a known mean), and refusals that name the
argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann
from riemann import edits


def test_each_batch_scores_the_edit_built_from_the_others():
    gs = [{"a": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}, {"a": jnp.array([3.0, 1.0]), "b": jnp.array([-1.0])},
          {"a": jnp.array([-1.0, 1.0]), "b": jnp.array([2.0])}]  # fmt: skip
    build = lambda g: jax.tree.map(lambda x: 2.0 * x, g)  # noqa: E731
    got = riemann.cross_fitted_first_order(build, gs)
    folds = []
    for i, g in enumerate(gs):
        rest = [h for j, h in enumerate(gs) if j != i]
        mean = {k: (rest[0][k] + rest[1][k]) / 2 for k in g}
        folds.append(sum(float(jnp.vdot(g[k], 2.0 * mean[k])) for k in g))
    np.testing.assert_allclose(got.folds, folds, rtol=1e-6)
    assert got.value == pytest.approx(np.mean(folds)) and got.stderr == pytest.approx(
        np.std(folds, ddof=1) / np.sqrt(3)
    )
    assert sum(got.modules.values()) == pytest.approx(got.value) and set(got.modules) == {"a", "b"}


def test_unbiased_for_held_out_data_where_the_in_sample_term_is_not():
    # Per-batch gradients g_i = μ + noise; the edit is the biased ΔW·∇L split, chosen by ḡ's signs.
    # Held out, its first-order term is ⟨μ, x⟩. The in-sample ⟨ḡ, x(ḡ)⟩ exceeds it (winner's curse);
    # the cross-fit's mean equals the held-out term of the edits it scores, E⟨μ, x(ḡ_{−i})⟩.
    rng = np.random.default_rng(0)
    d, n, reps = 400, 4, 60
    mu = rng.normal(0.0, 0.3, d).astype(np.float32)
    delta = {"w": jnp.asarray(rng.normal(0.0, 1.0, d).astype(np.float32))}
    edit = edits.parse("biased_product:k=0")
    build = lambda g: jax.tree.map(lambda e, x: e - x, edit(delta, grad=g), delta)  # noqa: E731
    fit, held, in_sample, truth = [], [], [], []
    for _ in range(reps):
        gs = [{"w": jnp.asarray(mu + rng.normal(0.0, 1.0, d).astype(np.float32))} for _ in range(n)]
        got = riemann.cross_fitted_first_order(build, gs)
        fit.append(got.value)
        held.append(
            np.mean([float(jnp.vdot(mu, build({"w": (sum(g["w"] for g in gs) - g["w"]) / (n - 1)})["w"])) for g in gs])
        )
        gbar = {"w": sum(g["w"] for g in gs) / n}
        in_sample.append(float(jnp.vdot(gbar["w"], build(gbar)["w"])))
        truth.append(float(jnp.vdot(mu, build(gbar)["w"])))
    se = np.std(np.subtract(fit, held), ddof=1) / np.sqrt(reps)
    assert abs(np.mean(fit) - np.mean(held)) < 3 * se
    bias = np.subtract(in_sample, truth)
    assert np.mean(bias) > 10 * np.std(bias, ddof=1) / np.sqrt(reps)  # the in-sample term is biased
    assert abs(np.mean(fit) - np.mean(truth)) < 0.2 * np.mean(bias)  # the cross-fit nearly removes it


def test_refusals_name_the_argument():
    g = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="at least 2"):
        riemann.cross_fitted_first_order(lambda x: x, [g])
    with pytest.raises(TypeError, match="build"):
        riemann.cross_fitted_first_order(None, [g, g])
    with pytest.raises(ValueError, match=r"batch_grads\[1\]"):
        riemann.cross_fitted_first_order(lambda x: x, [g, {"w": jnp.ones(4)}])
    with pytest.raises(ValueError, match=r"build\(gradient\)"):
        riemann.cross_fitted_first_order(lambda x: {"v": x["w"]}, [g, g])


def test_shared_curvature_keeps_each_batch_gradient_when_asked():
    loss = lambda p, x: jnp.sum(x * p["w"] ** 3)  # noqa: E731
    w, batches = {"w": jnp.array([1.0, 2.0])}, [jnp.array([1.0, 0.0]), jnp.array([2.0, 1.0])]
    kept = riemann.shared_curvature(loss, w, batches, probes=0, per_batch=True)
    plain = riemann.shared_curvature(loss, w, batches, probes=0)
    assert plain.batch_grads is None and len(kept.batch_grads) == 2
    for g, x in zip(kept.batch_grads, batches):
        np.testing.assert_allclose(g["w"], 3 * np.asarray(x) * np.array([1.0, 4.0]), rtol=1e-6)
    np.testing.assert_allclose(kept.grad["w"], plain.grad["w"], rtol=1e-6)
    np.testing.assert_allclose(kept.batch_losses, plain.batch_losses)
    with pytest.raises(ValueError, match="per_batch"):
        riemann.shared_curvature(loss, w, batches, probes=1, key=jax.random.key(0), per_batch=True)
