import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import edits


def test_magnitude_keeps_the_largest_fraction_per_tensor():
    x = jnp.array([0.1, -3.0, 2.0, -0.5, 1.0])
    np.testing.assert_array_equal(edits.magnitude({"w": x}, 0.4)["w"], [0, -3.0, 2.0, 0, 0])
    np.testing.assert_array_equal(edits.magnitude({"w": x}, 0.5)["w"], [0, -3.0, 2.0, 0, 1.0])  # ceil(2.5) = 3
    np.testing.assert_allclose(edits.magnitude({"w": x}, 0.4, rescale=True)["w"], [0, -7.5, 5.0, 0, 0])
    np.testing.assert_array_equal(edits.magnitude({"w": x}, 1.0)["w"], x)


def test_magnitude_count_is_exact_with_ties():
    out = edits.magnitude({"w": jnp.ones(10)}, 0.3)["w"]
    assert int(jnp.sum(out != 0)) == 3


def test_magnitude_global_scope_ranks_across_leaves():
    d = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([10.0, 20.0])}
    out = edits.magnitude(d, 0.5, scope="global")
    np.testing.assert_array_equal(out["a"], [0, 0])
    np.testing.assert_array_equal(out["b"], [10.0, 20.0])
    per_tensor = edits.magnitude(d, 0.5)
    np.testing.assert_array_equal(per_tensor["a"], [0, 2.0])


def test_ties_single_delta_is_the_trim_times_lambda():
    x = jax.random.normal(jax.random.key(0), (30, 10))
    np.testing.assert_allclose(
        edits.ties([{"w": x}], 0.2, lam=1.5)["w"], 1.5 * edits.magnitude({"w": x}, 0.2)["w"], rtol=1e-6
    )


def test_ties_elects_sign_and_takes_the_disjoint_mean():
    d1 = {"w": jnp.array([3.0, -1.0, 2.0, 0.0])}
    d2 = {"w": jnp.array([-1.0, -3.0, 4.0, 0.0])}
    d3 = {"w": jnp.array([1.0, 1.0, -1.0, 0.0])}
    out = edits.ties([d1, d2, d3], 1.0)["w"]
    # entry 0: sum 3 > 0 → mean of {3, 1} = 2; entry 1: sum −3 → mean {−1, −3} = −2;
    # entry 2: sum 5 → mean {2, 4} = 3; entry 3: all zero → 0.
    np.testing.assert_allclose(out, [2.0, -2.0, 3.0, 0.0])


def test_ties_mismatched_trees_name_the_leaf():
    with pytest.raises(ValueError, match=r"leaf 'w': deltas\[0\] has shape \(4,\).*deltas\[1\] has shape \(3,\)"):
        edits.ties([{"w": jnp.ones(4)}, {"w": jnp.ones(3)}], 0.5)
    with pytest.raises(ValueError, match="non-empty list"):
        edits.ties([], 0.5)


@pytest.mark.parametrize("keep", [0.0, 1.5, -0.2])
def test_keep_outside_range(keep):
    with pytest.raises(ValueError, match=rf"magnitude: keep={keep} is outside the accepted range \(0, 1\]"):
        edits.magnitude({"w": jnp.ones(3)}, keep)


@pytest.mark.parametrize("keep", [0.01, 0.1, 0.37, 0.5, 0.99, 1.0])
def test_top_mask_matches_a_stable_sort_with_ties(keep):
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal(5000), 1).astype(np.float32)  # many exact ties
    out = np.asarray(edits.magnitude({"w": jnp.asarray(x)}, keep)["w"])
    k = int(np.ceil(keep * x.size - 1e-9))
    order = np.argsort(-np.abs(x), kind="stable")
    ref = np.zeros_like(x)
    ref[order[:k]] = x[order[:k]]
    np.testing.assert_array_equal(out, ref)


def test_top_mask_handles_zeros_infinities_and_tiny_values():
    x = jnp.array([0.0, 1e-37, -1e-30, 3.0, -jnp.inf, 0.0])
    np.testing.assert_array_equal(
        edits.magnitude({"w": x}, 0.5)["w"], np.array([0, 0, -1e-30, 3.0, -np.inf, 0], np.float32)
    )
