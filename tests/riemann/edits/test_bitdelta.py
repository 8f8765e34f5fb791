import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import edits


def test_bitdelta_is_mean_magnitude_times_sign_per_matrix():
    w = jnp.array([[1.0, -3.0], [0.5, -0.5]])
    v = jnp.array([[2.0, 2.0, -2.0]])
    out = edits.bitdelta({"w": w, "v": v, "bias": jnp.array([5.0, -1.0])})
    np.testing.assert_allclose(out["w"], 1.25 * np.sign(w))
    np.testing.assert_allclose(out["v"], 2.0 * np.sign(v))
    np.testing.assert_array_equal(out["bias"], [5.0, -1.0])  # 1-D leaves keep their post-trained value
    np.testing.assert_allclose(edits.bitdelta({"w": w}, multiple=2.0)["w"], 2.5 * np.sign(w))
    # One mean over both matrices: (5 + 6) / 7 entries.
    np.testing.assert_allclose(edits.bitdelta({"w": w, "v": v}, scope="global")["w"], 11.0 / 7 * np.sign(w), rtol=1e-6)


def test_bitdelta_leaves_embeddings_unless_asked():
    e = jnp.array([[1.0, -3.0]])
    assert np.array_equal(
        edits.bitdelta({"model": {"embed_tokens": {"weight": e}}})["model"]["embed_tokens"]["weight"], e
    )
    out = edits.bitdelta({"model": {"embed_tokens": {"weight": e}}}, exclude=None)["model"]["embed_tokens"]["weight"]
    np.testing.assert_allclose(out, [[2.0, -2.0]])


def test_multibit_equal_count_blocks_get_their_own_means():
    w = jnp.array([[-1.0, 2.0, -3.0, 4.0, 5.0, -6.0, 7.0, -8.0]])
    out = edits.bitdelta({"w": w}, magnitude_bits=1)["w"]  # blocks {1,2,3,4} → 2.5, {5,…,8} → 6.5
    np.testing.assert_allclose(out, [[-2.5, 2.5, -2.5, 2.5, 6.5, -6.5, 6.5, -6.5]])
    out = edits.bitdelta({"w": w}, magnitude_bits=2)["w"]
    np.testing.assert_allclose(out, [[-1.5, 1.5, -3.5, 3.5, 5.5, -5.5, 7.5, -7.5]])
    np.testing.assert_allclose(edits.bitdelta({"w": w}, magnitude_bits=3)["w"], w)  # one entry per block: exact


def test_multibit_equal_width_blocks():
    w = jnp.array([[1.0, 1.5, 2.0, 9.0, 10.0]])  # range [1, 10], 2 bins: [1, 5.5) and [5.5, 10]
    out = edits.bitdelta({"w": w}, magnitude_bits=1, blocks="width")["w"]
    np.testing.assert_allclose(out, [[1.5, 1.5, 1.5, 9.5, 9.5]])


@pytest.mark.parametrize("blocks", ["count", "width"])
@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_more_bits_never_increase_the_l2_error(blocks, scope):
    k1, k2 = jax.random.split(jax.random.key(0))
    d = {"a": jax.random.laplace(k1, (37, 53)), "b": 3.0 * jax.random.normal(k2, (20, 11))}
    errs = []
    for bits in range(0, 7):
        out = edits.bitdelta(d, magnitude_bits=bits, blocks=blocks, scope=scope)
        errs.append(sum(float(jnp.sum((out[k] - d[k]) ** 2)) for k in d))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.05 * errs[0]


@pytest.mark.parametrize("magnitudes", ["normal", "uniform"])
def test_random_magnitudes_keep_the_mean_and_the_sign(magnitudes):
    w = jax.random.normal(jax.random.key(0), (300, 300))
    out = np.asarray(edits.bitdelta({"w": w}, magnitudes=magnitudes, key=jax.random.key(1))["w"])
    mu = float(jnp.mean(jnp.abs(w)))
    assert np.all(np.sign(out) == np.sign(np.asarray(w)))
    assert abs(np.abs(out).mean() - mu) < 0.01 * mu
    spread = np.abs(out).std() / mu
    expected = 1 / 3 if magnitudes == "normal" else 1 / np.sqrt(3)  # U(0, 2μ) has sd μ/√3
    assert spread == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"magnitude_bits": -1}, r"magnitude_bits=-1; accepted: an integer in \[0, 16\]"),
        ({"magnitude_bits": 1.5}, "magnitude_bits=1.5"),
        ({"magnitudes": "gamma"}, "accepted: constant, normal, uniform"),
        ({"magnitudes": "normal"}, "needs an explicit key"),
        ({"blocks": "quantile"}, "accepted: 'count'"),
        ({"magnitudes": "uniform", "spread": 2.0, "key": jax.random.key(0)}, r"spread=2.0 is outside"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        edits.bitdelta({"w": jnp.ones((2, 2))}, **kwargs)
