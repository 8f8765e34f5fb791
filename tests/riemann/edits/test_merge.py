"""Merges of several deltas (riemann.edits.merge): closed forms, invariants, laws, refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import edits
from riemann.edits import merge as M

RANDOM = ("dare_ties", "dare_linear", "della", "della_linear")
DETERMINISTIC = tuple(m for m in M.METHODS if m not in RANDOM)


def kw(method, **extra):
    return {"key": jax.random.key(0), **extra} if method in RANDOM else extra


def tree(seed, scale=1.0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "layers": [
            {"mlp": {"weight": scale * jax.random.normal(k[0], (6, 8))}},
            {"mlp": {"weight": scale * jax.random.normal(k[1], (6, 8))}},
        ],
        "norm": scale * jax.random.normal(k[2], (8,)),
    }


def f32(x):
    return np.asarray(x, np.float32)


def test_reexports_and_methods():
    assert edits.MERGE_METHODS == M.METHODS
    assert edits.Merged is M.Merged
    assert M.METHODS == (
        "linear",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "della",
        "della_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
    )


def test_ties_by_hand_three_donors():
    # density 2/3 keeps floor(2/3·3) = 2 of 3 entries per donor.
    a = {"w": jnp.array([4.0, -1.0, 0.5])}  # trim → [4, -1, 0]
    b = {"w": jnp.array([-2.0, -3.0, 0.1])}  # trim → [-2, -3, 0]
    c = {"w": jnp.array([1.0, 0.2, -5.0])}  # trim → [1, 0, -5]
    m = M.merge("ties", [a, b, c], density=2 / 3)
    # entry 0: mass 4 − 2 + 1 = 3 > 0 → +; agreeing 4 and 1, disjoint mean 2.5
    # entry 1: −1 − 3 → −; mean −2.   entry 2: −5 → −; −5.
    np.testing.assert_array_equal(f32(m.total["w"]), [2.5, -2.0, -5.0])
    np.testing.assert_array_equal(f32(m.parts[0]["w"]), [2.0, -0.5, 0.0])
    np.testing.assert_array_equal(f32(m.parts[1]["w"]), [0.0, -1.5, 0.0])
    np.testing.assert_array_equal(f32(m.parts[2]["w"]), [0.5, 0.0, -5.0])
    assert m.settings["normalize"] is True and m.settings["density"] == [2 / 3] * 3


def test_ties_weights_enter_the_election_and_the_divisor():
    a, b = {"w": jnp.array([1.0])}, {"w": jnp.array([-2.0])}
    # unweighted mass −1 → −; with weights (3, 1): 3 − 2 = 1 → +, only donor a agrees
    m = M.merge("ties", [a, b], weight=[3.0, 1.0])
    np.testing.assert_array_equal(f32(m.total["w"]), [1.0])  # (3·1) / 3
    m = M.merge("ties", [a, b], weight=[3.0, 1.0], normalize=False)
    np.testing.assert_array_equal(f32(m.total["w"]), [3.0])
    m = M.merge("ties", [a, b], weight=[3.0, 1.0], normalize=False, lambda_=0.5)
    np.testing.assert_array_equal(f32(m.total["w"]), [1.5])


def test_sign_election_ties_go_positive_and_count_consensus():
    a, b = {"w": jnp.array([2.0, 1.0])}, {"w": jnp.array([-2.0, -0.5])}
    m = M.merge("ties", [a, b])  # entry 0: mass 0 → + (mergekit: sum >= 0)
    np.testing.assert_array_equal(f32(m.total["w"]), [2.0, 1.0])
    c = {"w": jnp.array([-0.1, -0.1])}
    m = M.merge("ties", [a, b, c], consensus="count")  # two negatives outvote one large positive
    np.testing.assert_allclose(f32(m.total["w"]), [-1.05, -0.3], rtol=1e-6)
    assert m.settings["consensus"] == "count"


def test_disjoint_mean_with_no_agreeing_donor_falls_back_to_divisor_one():
    a, b = {"w": jnp.array([0.0, 3.0])}, {"w": jnp.array([0.0, 1.0])}
    m = M.merge("ties", [a, b])
    np.testing.assert_array_equal(f32(m.total["w"]), [0.0, 2.0])


def test_task_arithmetic_and_linear_closed_forms():
    a, b = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
    ta = M.merge("task_arithmetic", [a, b], weight=[0.5, 2.0], lambda_=2.0)
    np.testing.assert_array_equal(f32(ta.total["w"]), [13.0, -6.0])
    ta = M.merge("task_arithmetic", [a, b], weight=[0.5, 2.0], normalize=True)
    np.testing.assert_allclose(f32(ta.total["w"]), [6.5 / 2.5, -3.0 / 2.5], rtol=1e-6)
    lin = M.merge("linear", [a, b], weight=[1.0, 3.0])
    np.testing.assert_allclose(f32(lin.total["w"]), [2.5, -1.0], rtol=1e-6)
    np.testing.assert_allclose(f32(lin.parts[1]["w"]), [2.25, -1.5], rtol=1e-6)


def test_linear_without_normalize_needs_the_base_and_sums_full_weights():
    base = {"w": jnp.array([10.0, -4.0])}
    a, b = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
    with pytest.raises(ValueError, match="needs base=W_base"):
        M.merge("linear", [a, b], normalize=False)
    m = M.merge("linear", [a, b], weight=[0.5, 0.25], normalize=False, base=base)
    w_merge = 0.5 * (base["w"] + a["w"]) + 0.25 * (base["w"] + b["w"])
    np.testing.assert_allclose(f32(base["w"] + m.total["w"]), f32(w_merge), rtol=1e-6)
    np.testing.assert_allclose(f32(m.parts[0]["w"] + m.parts[1]["w"]), f32(m.total["w"]), rtol=1e-6)


def test_linear_zero_weight_sum_is_refused_and_task_arithmetic_falls_back():
    a, b = {"w": jnp.ones(2)}, {"w": 2 * jnp.ones(2)}
    with pytest.raises(ValueError, match="weights of leaf 'w' sum to zero"):
        M.merge("linear", [a, b], weight=[1.0, -1.0])
    m = M.merge("task_arithmetic", [a, b], weight=[1.0, -1.0], normalize=True)  # |Σw| < 1e-8 → divisor 1
    np.testing.assert_array_equal(f32(m.total["w"]), [-1.0, -1.0])


def test_breadcrumbs_drops_outliers_and_small_entries():
    x = {"w": jnp.arange(1.0, 11.0)}  # density 0.5, gamma 0.2: drop the 2 largest and the 3 smallest
    m = M.merge("breadcrumbs", [x], density=0.5, gamma=0.2)
    np.testing.assert_array_equal(f32(m.total["w"]), [0, 0, 0, 4, 5, 6, 7, 8, 0, 0])
    m = M.merge("breadcrumbs", [x], density=0.9, gamma=0.2)  # keeping 9 leaves room for 1 outlier only
    np.testing.assert_array_equal(f32(m.total["w"]), [1, 2, 3, 4, 5, 6, 7, 8, 9, 0])


def test_magnitude_count_is_floor_with_at_least_one_and_l1_rescale():
    x = {"w": jnp.array([1.0, -4.0, 2.0, 3.0])}
    m = M.merge("ties", [x], density=0.3)  # floor(1.2) = 1
    np.testing.assert_array_equal(f32(m.total["w"]), [0.0, -4.0, 0.0, 0.0])
    m = M.merge("ties", [x], density=0.1)  # floor(0.4) = 0 → 1
    np.testing.assert_array_equal(f32(m.total["w"]), [0.0, -4.0, 0.0, 0.0])
    m = M.merge("ties", [x], density=0.5, rescale=True)  # keep −4, 3; L1 10/7
    np.testing.assert_allclose(f32(m.total["w"]), [0.0, -40 / 7, 0.0, 30 / 7], rtol=1e-6)
    m = M.merge("ties", [x], density=0.5, rescale=True, rescale_norm="density")
    np.testing.assert_allclose(f32(m.total["w"]), [0.0, -8.0, 0.0, 6.0], rtol=1e-6)


def test_global_trim_scope_ranks_a_donor_over_all_its_leaves():
    x = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([10.0, 20.0])}
    per_tensor = M.merge("ties", [x], density=0.5)
    np.testing.assert_array_equal(f32(per_tensor.total["a"]), [0.0, 2.0])
    glob = M.merge("ties", [x], density=0.5, trim_scope="global")
    np.testing.assert_array_equal(f32(glob.total["a"]), [0.0, 0.0])
    np.testing.assert_array_equal(f32(glob.total["b"]), [10.0, 20.0])


@pytest.mark.parametrize("method", M.METHODS)
def test_parts_sum_to_total_and_are_float32(method):
    ds = [tree(1), tree(2, 0.5), jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree(3))]
    m = M.merge(method, ds, weight=[0.3, 0.5, 0.4], **kw(method, density=0.5, epsilon=0.1))
    assert len(m.parts) == 3 and m.method == method
    for p in m.parts:
        assert jax.tree.structure(p) == jax.tree.structure(ds[0])
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
    summed = jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *m.parts)
    for s, t in zip(jax.tree.leaves(summed), jax.tree.leaves(m.total)):
        np.testing.assert_allclose(f32(s), f32(t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_one_model_with_weight_one_is_the_identity(method):
    d = tree(4)
    m = M.merge(method, [d])  # density 1: nothing trimmed
    for a, b in zip(jax.tree.leaves(m.total), jax.tree.leaves(d)):
        np.testing.assert_array_equal(f32(a), f32(b))


@pytest.mark.parametrize("method", RANDOM)
def test_random_methods_with_density_one_are_the_identity(method):
    d = tree(4)
    m = M.merge(method, [d], key=jax.random.key(1))
    for a, b in zip(jax.tree.leaves(m.total), jax.tree.leaves(d)):
        np.testing.assert_array_equal(f32(a), f32(b))
