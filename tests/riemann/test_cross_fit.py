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


def test_streamed_gradients_and_several_edits_give_the_same_fits():
    def loss(p, x):
        return jnp.sum(x * p["w"] ** 3) + jnp.sum(p["b"] * x[:1])

    w = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([0.3])}
    batches = [jnp.array([1.0, 0.0, 2.0]), jnp.array([2.0, 1.0, -1.0]), jnp.array([0.5, -3.0, 1.0])]
    grads = list(riemann.batch_gradients(loss, w, batches))
    for g, x in zip(grads, batches):  # d/dw Σ x·w³ = 3x·w², d/db = x₀
        np.testing.assert_allclose(g["w"], 3 * np.asarray(x) * np.asarray(w["w"]) ** 2, rtol=1e-6)
        assert float(g["b"][0]) == pytest.approx(float(x[0]))
    builds = {"sign": lambda g: jax.tree.map(jnp.sign, g), "half": lambda g: jax.tree.map(lambda v: -0.5 * v, g)}
    held = riemann.cross_fitted_first_order(builds, grads)
    mean = jax.tree.map(lambda *v: sum(v) / 3, *grads)
    streamed = riemann.cross_fitted_first_order(
        builds, riemann.batch_gradients(loss, w, batches), mean=mean, num_batches=3
    )
    assert set(held) == set(streamed) == {"sign", "half"}
    for k in builds:
        np.testing.assert_allclose(streamed[k].folds, held[k].folds, rtol=1e-6)
        assert streamed[k].in_sample == pytest.approx(held[k].in_sample, rel=1e-6)
        assert held[k].bias == pytest.approx(held[k].in_sample - held[k].value)
        assert sum(held[k].in_sample_modules.values()) == pytest.approx(held[k].in_sample, rel=1e-6)
    # x = −½g is not selected by the gradient's noise in a way that flatters it: held out it scores
    # −½⟨g_i, ḡ_{−i}⟩, in-sample −½‖ḡ‖², and the latter is the more negative only by ḡ's own noise.
    assert held["half"].in_sample == pytest.approx(-0.5 * sum(float(jnp.vdot(v, v)) for v in jax.tree.leaves(mean)))


def test_a_sixteen_bit_change_is_scored_against_the_wide_gradient():
    gs = [{"w": jnp.array([1.0, -1.0])}, {"w": jnp.array([3.0, 1.0])}]
    got = riemann.cross_fitted_first_order(lambda g: {"w": jnp.sign(g["w"]).astype(jnp.bfloat16)}, gs)
    assert got.value == pytest.approx(1.0)


def test_refusals_name_the_argument():
    g = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="at least 2"):
        riemann.cross_fitted_first_order(lambda x: x, [g])
    with pytest.raises(TypeError, match="build"):
        riemann.cross_fitted_first_order(None, [g, g])
    with pytest.raises(TypeError, match=r"build\['b'\]"):
        riemann.cross_fitted_first_order({"a": lambda x: x, "b": 3}, [g, g])
    with pytest.raises(ValueError, match=r"batch_grads\[1\]"):
        riemann.cross_fitted_first_order(lambda x: x, [g, {"w": jnp.ones(4)}])
    with pytest.raises(ValueError, match=r"build\(gradient\)"):
        riemann.cross_fitted_first_order(lambda x: {"v": x["w"]}, [g, g])
    with pytest.raises(ValueError, match="num_batches"):
        riemann.cross_fitted_first_order(lambda x: x, iter([g, g]), mean=g)
    with pytest.raises(ValueError, match="yielded 2"):
        riemann.cross_fitted_first_order(lambda x: x, iter([g, g]), mean=g, num_batches=3)
