"""The saturation curve against a direct computation in float64 on a tiny CLIP model, its limits
(``C ≈ Q`` for small steps, linear growth far out), the causal-LM path, and the ``kfac-saturated``
estimator: K-FAC's quadratic read through the curve, or K-FAC's own value where no logits exist."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.hf import checkpoints
from analysis.pairs import data
from analysis.pairs.pair import Pair
from analysis.study import saturation, suite
from tests.analysis.study.test_kfac import CLIP, LLAMA, _images


def _delta(params, seed):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([0.05 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _signed(delta, key):
    leaves, treedef = jax.tree_util.tree_flatten(delta)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([x * jax.random.rademacher(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)])


def test_the_curve_is_the_even_part_of_cross_entropy_along_the_linearised_logits():
    model = checkpoints.from_config(CLIP, seed=0)
    batch = _images(6, seed=2)
    delta = _delta(model.params, 1)
    key = jax.random.key(3)
    curve = saturation.collect(model, model.params, delta, [batch], "classification", key=key, probes=1)

    # Independently: the logits' forward-mode change along the same random-sign copy, then exact
    # cross-entropy in float64 at z ± αu.
    direction = _signed(delta, jax.random.fold_in(key, 0))
    z, u = jax.jvp(lambda p: model.classify(p, batch["pixel_values"]), (model.params,), (direction,))
    z, u, y = np.asarray(z, np.float64), np.asarray(u, np.float64), batch["labels"]

    def ce(logits):
        m = logits.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
        return np.mean(lse - logits[np.arange(len(y)), y])

    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q1 = 0.5 * np.mean((p * u * u).sum(-1) - (p * u).sum(-1) ** 2)
    np.testing.assert_allclose(curve.quadratic, saturation.ALPHAS**2 * q1, rtol=1e-4)
    for i in (0, 20, 30, 40, 50, 60):
        a = saturation.ALPHAS[i]
        direct = 0.5 * (ce(z + a * u) + ce(z - a * u)) - ce(z)
        assert curve.loss[i] == pytest.approx(direct, rel=2e-3, abs=1e-9), (a, curve.loss[i], direct)
    # Near W_post the curve is the quadratic; far out cross-entropy grows linearly in the step.
    assert curve.loss[0] == pytest.approx(curve.quadratic[0], rel=1e-2)
    assert np.all(np.diff(curve.loss) >= 0)
    slope = np.log(curve.loss[-1] / curve.loss[-2]) / np.log(saturation.ALPHAS[-1] / saturation.ALPHAS[-2])
    assert 1.0 <= slope < 1.1, slope  # d log C / d log α: 2 for the quadratic, 1 for a linear tail


def test_phi_interpolates_and_extends_the_curve():
    q = saturation.ALPHAS**2 * 2.0
    c = np.where(saturation.ALPHAS < 1, q, 2.0 * saturation.ALPHAS)  # quadratic, then linear (C = Q at α = 1)
    curve = saturation.SaturationCurve(q, c, 1, {})
    assert curve(1e-9) == pytest.approx(1e-9)  # below the grid: C/Q of its first point (1 here)
    assert curve(q[10]) == pytest.approx(c[10])
    assert curve(4 * q[-1]) == pytest.approx(2 * c[-1])  # beyond it: √Q
    assert curve(-0.5) == -0.5 and curve(0.0) == 0.0
    mid = np.sqrt(q[45] * q[46])
    assert c[45] < curve(mid) < c[46]


def test_the_causal_lm_curve_runs_through_the_decoder_and_its_loss_weights():
    model = checkpoints.from_config(LLAMA, seed=0)
    ids = np.random.default_rng(0).integers(0, 32, (2, 8)).astype(np.int32)
    batch = {"input_ids": ids, "loss_mask": np.concatenate([np.zeros((2, 3)), np.ones((2, 5))], 1).astype(np.float32)}
    delta = _delta(model.params, 2)
    curve = saturation.collect(model, model.params, delta, [batch], "causal-lm", key=jax.random.key(0))
    assert curve.info["passes_per_batch"] == {"jvp": 4} and curve.quadratic[-1] > 0
    assert curve.loss[0] == pytest.approx(curve.quadratic[0], rel=1e-2)
    assert curve.loss[-1] < curve.quadratic[-1]  # saturated far out


def test_kfac_saturated_reads_kfacs_quadratic_through_the_curve_and_falls_back_without_logits():
    pre = checkpoints.from_config(CLIP, seed=0)
    post = checkpoints.from_config(CLIP, seed=1)
    batches = [_images(2, seed=i) for i in range(10)]
    loss = data.image_classification_loss(pre.classify)
    pair = Pair("clip", "tiny", pre.params, post.params, loss, batches, None, {}, template=post)
    scorer = suite.Scorer(pair, estimators=["kfac", "kfac-saturated"], calibration=2, probes=2)
    assert scorer.shared.saturation is not None
    record = scorer.shared_record()
    assert record["saturation"]["probes"] == 4
    assert record["estimators"]["kfac-saturated"]["passes_per_batch"]["jvp"] == 4
    change = jax.tree.map(lambda a, b: 0.3 * (a - b), pre.params, post.params)
    k = suite.ESTIMATORS["kfac"].score(scorer.shared, change)
    s = suite.ESTIMATORS["kfac-saturated"].score(scorer.shared, change)
    phi = scorer.shared.saturation(k.terms["second"])
    assert s.value == pytest.approx(k.terms["first"] + phi, rel=1e-9)
    assert sum(s.modules.values()) == pytest.approx(s.value, rel=1e-6)
    assert s.settings["saturated"] is True and s.terms["second_saturated"] == phi

    plain = Pair("clip", "tiny", pre.params, post.params, lambda p, b: loss(p, b), batches, None, {})
    fallback = suite.Scorer(plain, estimators=["kfac-saturated"], calibration=2, probes=2)
    est = suite.ESTIMATORS["kfac-saturated"].score(fallback.shared, change)
    assert est.settings["saturated"] is False and "plain loss_fn" in est.settings["note"]
    assert est.value == pytest.approx(fallback.shared.curvature.estimate(change).value, rel=1e-6)


def test_confident_tokens_keep_their_change_to_full_precision():
    """p_m = 1 − 1.4e-8: logsumexp in float32 would round the whole change away."""
    logits = jnp.asarray([[20.0, 0.0, 0.0]], jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    u = jnp.asarray([[0.0, 1.0, -1.0]], jnp.float32)
    z = np.array([20.0, 0.0, 0.0])
    for a in (0.3, 1.0, 3.0):
        want = np.log(np.sum(np.exp(z + a * np.array([0.0, 1.0, -1.0]))) / np.sum(np.exp(z)))
        got = float(saturation._log_mean_exp(logp, a * u)[0])
        assert got == pytest.approx(want, rel=1e-4), (a, got, want)


def test_the_q_axis_can_be_the_quadratic_that_scores_the_edits():
    model = checkpoints.from_config(CLIP, seed=0)
    batch = _images(4, seed=2)
    delta = _delta(model.params, 1)
    key = jax.random.key(3)
    exact = saturation.collect(model, model.params, delta, [batch], "classification", key=key, probes=2)
    twice = saturation.collect(
        model,
        model.params,
        delta,
        [batch],
        "classification",
        key=key,
        probes=2,
        quadratic=lambda d: 2.0 * sum(float(jnp.vdot(x, x)) for x in jax.tree.leaves(d)),
    )
    np.testing.assert_array_equal(twice.loss, exact.loss)  # the same C, read at another Q
    q1 = 2.0 * sum(float(jnp.vdot(x, x)) for x in jax.tree.leaves(delta))  # |ε ⊙ ΔW|² = |ΔW|²
    np.testing.assert_allclose(twice.quadratic, saturation.ALPHAS**2 * q1, rtol=1e-5)
    assert twice.info["quadratic_over_exact"] == pytest.approx(q1 / exact.quadratic[0] * saturation.ALPHAS[0] ** 2)
