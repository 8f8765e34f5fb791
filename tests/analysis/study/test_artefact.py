"""The edited model as saved: on bfloat16 checkpoints the direction that is integrated and
measured reaches the rounded model exactly, as in the README's checkpoint example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann
from analysis.hf import checkpoints
from analysis.pairs import data
from analysis.study import artefact
from riemann import edits


def test_the_readme_checkpoint_example_runs_on_bfloat16(user_pair, tmp_path):
    pre, post = checkpoints.load_pair(user_pair / "pre", user_pair / "post", dtype="bfloat16")
    kind, batches = data.jsonl_batches(user_pair / "resp.jsonl", user_pair / "post", batch_size=4, max_len=64)
    loss_fn = data.causal_lm_loss(post.forward)
    delta = jax.tree.map(lambda a, b: b.astype("float32") - a.astype("float32"), pre.params, post.params)
    edited = edits.dare(delta, 0.9, key=jax.random.key(0))
    art = artefact.stored(pre.params, post.params, delta, edited)
    assert {x.dtype for x in jax.tree.leaves(art.params)} == {jnp.dtype(jnp.bfloat16)}
    # The direction is exact: float32 differences, kept in bfloat16 only where that loses nothing.
    assert {x.dtype for x in jax.tree.leaves(art.change)} <= {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}
    # post + change is the saved model, exactly, leaf by leaf.
    for s, b, c in zip(jax.tree.leaves(art.params), jax.tree.leaves(post.params), jax.tree.leaves(art.change)):
        np.testing.assert_array_equal(np.asarray(s, np.float32), np.asarray(b, np.float32) + np.asarray(c))
    measured = riemann.estimate(loss_fn, post.params, art.change, batches, method="measured")
    loss = jax.jit(loss_fn)  # compiled as the engine compiles it: bfloat16 rounding depends on fusion
    direct = np.mean([float(loss(art.params, b)) - float(loss(post.params, b)) for b in batches])
    assert measured.value == pytest.approx(direct, rel=1e-6, abs=1e-7)
    # On a bfloat16 path the inner points are rounded: the loss gaps disagree with the integrand
    # and the adaptive rule says so rather than claiming a converged error.
    with pytest.warns(riemann.NotConverged):
        kron = riemann.estimate(loss_fn, post.params, art.change, batches, rule="gauss-kronrod", mode="forward")
    assert not kron.converged and abs(kron.value - measured.value) <= kron.error + 1e-6
    # The backward pass of jax.nn.dot_product_attention mixes float32 and bfloat16 itself (see the
    # model's attention), which this test session's strict promotion refuses outside the forward.
    with jax.numpy_dtype_promotion("standard"):
        left = riemann.estimate(loss_fn, post.params, art.change, batches)  # the paper's rule, gradient mode
        second = riemann.estimate(loss_fn, post.params, art.change, batches, method="second-order")
    assert kron.error is not None and np.isfinite([kron.value, left.value, second.value]).all()
    assert sum(left.modules.values()) == pytest.approx(left.value, rel=1e-4)
    saved = checkpoints.save(tmp_path / "edited", post, art.params)
    back = checkpoints.load(saved)
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(art.params)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_unmoved_entries_are_counted_per_leaf_and_named():
    pre = {"a": jnp.zeros(4, jnp.bfloat16), "b": jnp.zeros(4, jnp.float32)}
    post = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(4, jnp.float32)}
    delta = artefact.delta_of(pre, post)
    edited = {"a": jnp.array([1.001, 1.001, 0.5, 1.0]), "b": jnp.array([1.001, 1.001, 0.5, 1.0])}
    art = artefact.stored(pre, post, delta, edited)
    # a: two of three intended changes are below half a bfloat16 step; b (float32) keeps them all.
    assert art.unmoved == {"a": pytest.approx(2 / 3), "b": 0.0}
    assert art.unmoved_fraction == pytest.approx(2 / 6)
    with pytest.warns(artefact.UnmovedWarning, match=r"in 1 leaves: a \(66.7%\)"):
        assert artefact.warn_unmoved(art, "test") == ["a"]
    assert artefact.warn_unmoved(art, "test", threshold=0.9) == []


def test_compact_keeps_float32_only_where_16_bits_would_round():
    like = {"a": jnp.zeros(3, jnp.bfloat16), "b": jnp.zeros(3, jnp.bfloat16), "c": jnp.zeros(3, jnp.float32)}
    tree = {
        "a": jnp.array([0.5, -0.25, 3.0], jnp.float32),  # exact in bfloat16
        "b": jnp.array([0.5, 1.0 + 2.0**-12, 0.0], jnp.float32),  # needs more than 8 significant bits
        "c": jnp.array([0.1, 0.2, 0.3], jnp.float32),
    }
    out = artefact.compact(tree, like)
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32 and out["c"].dtype == jnp.float32
    for k in tree:
        np.testing.assert_array_equal(np.asarray(out[k], np.float32), np.asarray(tree[k]))
    pre, post = {"w": jnp.array([1.0, 3.0], jnp.bfloat16)}, {"w": jnp.array([1.0078125, 0.00390625], jnp.bfloat16)}
    delta = artefact.delta_of(pre, post)  # 3.0 → 2^-8 needs 10 bits: kept in float32, exact
    assert delta["w"].dtype == jnp.float32 and float(delta["w"][1]) == 0.00390625 - 3.0
