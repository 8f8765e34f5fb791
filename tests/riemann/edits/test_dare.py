import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import edits

N = 400_000


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("k", [0.0, 0.5, -1.0])
def test_dare_drop_fraction_factors_and_unbiasedness(p, k):
    x = jnp.full((N,), 2.0)
    out = np.asarray(edits.dare({"w": x}, p, k=k, key=jax.random.key(int(p * 100)))["w"])
    kept_factor = (1 - k * p) / (1 - p)
    dropped = np.isclose(out, 2.0 * k)
    kept = np.isclose(out, 2.0 * kept_factor)
    assert np.all(dropped | kept)
    sigma = np.sqrt(p * (1 - p) / N)
    assert abs(dropped.mean() - p) < 5 * sigma
    # E[F(ΔW)] = ΔW: the sample mean of F is within 5 standard errors of 2.
    sd = abs(2.0 * (kept_factor - k)) * np.sqrt(p * (1 - p))
    assert abs(out.mean() - 2.0) < 5 * sd / np.sqrt(N) + 1e-6


def test_dare_k_zero_is_classic_dare_and_drop_only_does_not_rescale():
    x = jax.random.normal(jax.random.key(0), (1000,))
    key = jax.random.key(1)
    dare = edits.dare({"w": x}, 0.6, key=key)["w"]
    drop = edits.dare({"w": x}, 0.6, key=key, rescale=False)["w"]
    mask = np.asarray(drop) != 0
    np.testing.assert_allclose(np.asarray(dare)[mask], np.asarray(x)[mask] / 0.4, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(drop)[mask], np.asarray(x)[mask])
    np.testing.assert_array_equal(np.asarray(dare)[~mask], 0.0)


def test_dare_p_zero_is_identity():
    x = jax.random.normal(jax.random.key(0), (50,))
    np.testing.assert_array_equal(edits.dare({"w": x}, 0.0, k=0.3, key=jax.random.key(0))["w"], x)


def test_della_keep_probability_follows_rank_and_is_unbiased():
    # Every row is 1, 2, …, 8 (shuffled identically), so column j has rank j in every row and the
    # empirical keep rate per column estimates (density − ε) + 2ε·j/7.
    rows, n, density, eps = 50_000, 8, 0.5, 0.3
    x = jnp.tile(jnp.arange(1.0, n + 1.0), (rows, 1))
    out = np.asarray(edits.della({"w": x}, density, eps, key=jax.random.key(3))["w"])
    prob = (density - eps) + 2 * eps * np.arange(n) / (n - 1)
    rate = (out != 0).mean(axis=0)
    assert np.all(np.abs(rate - prob) < 5 * np.sqrt(prob * (1 - prob) / rows))
    np.testing.assert_allclose(out[:, -1][out[:, -1] != 0], n / prob[-1], rtol=1e-6)
    col_mean = out.mean(axis=0)
    se = np.arange(1.0, n + 1) * np.sqrt((1 - prob) / prob / rows)
    assert np.all(np.abs(col_mean - np.arange(1.0, n + 1)) < 5 * se)


def test_della_with_zero_epsilon_keeps_density_uniformly():
    x = jax.random.normal(jax.random.key(0), (400, 250))
    out = np.asarray(edits.della({"w": x}, 0.3, 0.0, key=jax.random.key(1))["w"])
    assert abs((out != 0).mean() - 0.3) < 0.01


def test_biased_sign_exact():
    x = jnp.array([-2.0, 1.0, -1.0, 3.0, 0.5])
    out = edits.biased_sign({"w": x}, k=0.5)["w"]  # q = 2/5 negative: positives × (1 − 0.2)/0.6
    np.testing.assert_allclose(out, [-1.0, 4 / 3, -0.5, 4.0, 2 / 3], rtol=1e-6)
    out = edits.biased_sign({"w": x}, 0.5, k=1.5)["w"]  # p given: positives × (1 − 0.75)/0.5 = 0.5
    np.testing.assert_allclose(out, [-3.0, 0.5, -1.5, 1.5, 0.25], rtol=1e-6)


def test_biased_sign_all_negative_tensor_does_not_divide_by_zero():
    out = edits.biased_sign({"w": -jnp.ones(4)}, k=0.5)["w"]
    np.testing.assert_allclose(out, -0.5 * np.ones(4))


def test_biased_product_splits_by_the_product_sign_and_k_above_one_lowers_the_first_order_term():
    d = jnp.array([1.0, -2.0, 3.0, -1.0])
    g = jnp.array([1.0, 1.0, -1.0, -2.0])  # product: +, −, −, +
    out = edits.biased_product({"w": d}, {"w": g}, k=1.5)["w"]
    np.testing.assert_allclose(out, [0.5, -3.0, 4.5, -0.5], rtol=1e-6)  # q = ½: others × (1 − .75)/.5
    for k in (1.1, 1.3, 1.5):
        change = edits.biased_product({"w": d}, {"w": g}, k=k)["w"] - d
        assert float(jnp.vdot(g, change)) < 0


def test_biased_product_needs_a_matching_gradient():
    with pytest.raises(ValueError, match=r"leaf 'w': grad has shape \(3,\), delta \(4,\)"):
        edits.biased_product({"w": jnp.ones(4)}, {"w": jnp.ones(3)}, k=0.5)
    with pytest.raises(ValueError, match="needs grad="):
        edits.parse("biased_product:k=0.5")({"w": jnp.ones(4)})


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda d: edits.dare(d, 1.0, key=jax.random.key(0)), r"dare: p=1.0 is outside the accepted range \[0, 1\)"),
        (lambda d: edits.dare(d, -0.1, key=jax.random.key(0)), r"p=-0.1"),
        (lambda d: edits.dare(d, 0.5), "needs an explicit key"),
        (lambda d: edits.dare(d, 0.5, key=3), "integer"),
        (lambda d: edits.della(d, 0.0, key=jax.random.key(0)), r"density=0.0 is outside .*\(0, 1\]"),
        (lambda d: edits.della(d, 0.5, 0.6, key=jax.random.key(0)), r"epsilon < min"),
        (lambda d: edits.biased_sign(d, 1.0, k=0.5), r"p=1.0"),
    ],
)
def test_bad_arguments_name_argument_and_range(call, match):
    with pytest.raises(ValueError, match=match):
        call({"w": jnp.ones(4)})


def test_integer_leaf_is_refused_by_name():
    with pytest.raises(ValueError, match=r"leaf 'steps' has dtype int32"):
        edits.dare({"steps": jnp.arange(3)}, 0.5, key=jax.random.key(0))


def test_raw_uint32_keys_are_accepted():
    x = {"w": jnp.ones(10)}
    a = edits.dare(x, 0.5, key=jax.random.PRNGKey(0))["w"]
    b = edits.dare(x, 0.5, key=jax.random.wrap_key_data(jax.random.PRNGKey(0)))["w"]
    np.testing.assert_array_equal(a, b)
