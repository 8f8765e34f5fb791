import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import edits


def matrix(m=40, n=25, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = 0.8 ** np.arange(min(m, n))
    return (u[:, : len(s)] * s) @ v[: len(s)], s


@pytest.mark.parametrize("rank", [1, 3, 10, 25])
def test_truncated_svd_has_the_rank_and_the_optimal_error(rank):
    x, s = matrix()
    out = np.asarray(edits.lowrank({"w": jnp.asarray(x, jnp.float32)}, rank)["w"], np.float64)
    assert np.linalg.matrix_rank(out, tol=1e-4) == rank
    # Eckart–Young: the Frobenius error of the best rank-r approximation is sqrt(Σ_{i>r} σ_i²).
    assert np.linalg.norm(out - x) == pytest.approx(np.sqrt(np.sum(s[rank:] ** 2)), abs=1e-5)
    u, sv, vt = np.linalg.svd(x)
    np.testing.assert_allclose(out, (u[:, :rank] * sv[:rank]) @ vt[:rank], atol=1e-5)


def test_fraction_and_energy_choose_the_rank():
    x, s = matrix()
    d = {"w": jnp.asarray(x, jnp.float32)}
    np.testing.assert_allclose(edits.lowrank(d, fraction=0.2)["w"], edits.lowrank(d, 5)["w"], atol=1e-6)
    energy = np.cumsum(s**2) / np.sum(s**2)
    r = int(np.searchsorted(energy, 0.9) + 1)
    np.testing.assert_allclose(edits.lowrank(d, energy=0.9)["w"], edits.lowrank(d, r)["w"], atol=1e-6)


def test_randomized_svd_is_near_optimal():
    x, s = matrix(300, 200)
    d = {"w": jnp.asarray(x, jnp.float32)}
    opt = np.sqrt(np.sum(s[10:] ** 2))
    out = np.asarray(edits.lowrank(d, 10, method="randomized", key=jax.random.key(0))["w"])
    assert np.linalg.norm(out - x) <= 1.01 * opt + 1e-6


def test_rank_above_the_smaller_dimension_names_the_leaf():
    with pytest.raises(ValueError, match=r"rank=6 exceeds the smaller dimension 5 of leaf 'layer.w' \(5, 8\)"):
        edits.lowrank({"layer": {"w": jnp.ones((5, 8))}}, 6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rank": 0}, "rank=0; accepted: an integer >= 1"),
        ({}, "exactly one of rank, fraction, energy"),
        ({"rank": 2, "fraction": 0.5}, "exactly one"),
        ({"fraction": 0.0}, r"fraction=0.0 is outside"),
        ({"energy": 0.9, "method": "randomized"}, "method='svd'"),
        ({"rank": 2, "method": "randomized"}, "needs an explicit key"),
        ({"rank": 2, "method": "qr"}, "accepted: svd, randomized"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        edits.lowrank({"w": jnp.ones((4, 4))}, **kwargs)


def test_expo_scales_and_negative_alpha_interpolates():
    x = {"w": jnp.array([1.0, -2.0])}
    np.testing.assert_allclose(edits.expo(x, 0.3)["w"], [1.3, -2.6], rtol=1e-6)
    np.testing.assert_array_equal(edits.expo(x, -1.0)["w"], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"expo: alpha=nan"):
        edits.expo(x, float("nan"))
