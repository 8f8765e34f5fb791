"""The counter-based uniforms behind DARE and DELLA masks: distribution, independence, and
invariance to sharding."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from riemann.edits._common import leaf_key, uniform

N = 1 << 20


def test_uniform_distribution_passes_ks_and_chi_square():
    u = np.asarray(uniform(jax.random.key(0), (N,)), np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    counts = np.histogram(u, bins=256, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_neighbouring_entries_and_bits_are_uncorrelated():
    u = np.asarray(uniform(jax.random.key(1), (N,)), np.float64)
    for lag in (1, 2, 1024):
        r = np.corrcoef(u[:-lag], u[lag:])[0, 1]
        assert abs(r) < 5 / np.sqrt(N), lag
    rows = np.asarray(uniform(jax.random.key(1), (1024, 1024)))
    assert abs(np.corrcoef(rows[:-1].ravel(), rows[1:].ravel())[0, 1]) < 5 / np.sqrt(N)


def test_masks_from_different_keys_and_leaves_are_independent():
    p = 0.3
    a = np.asarray(uniform(jax.random.key(0), (N,))) < p
    b = np.asarray(uniform(jax.random.key(1), (N,))) < p
    c = np.asarray(uniform(leaf_key(jax.random.key(0), "model.layers.1.w"), (N,))) < p
    d = np.asarray(uniform(leaf_key(jax.random.key(0), "model.layers.2.w"), (N,))) < p
    se = np.sqrt(p * p * (1 - p * p) / N)
    for x, y in ((a, b), (c, d), (a, c)):
        assert abs(np.mean(x & y) - p * p) < 5 * se


def test_same_values_under_sharding():
    mesh = jax.make_mesh((8,), ("d",))
    key = jax.random.key(3)
    ref = np.asarray(uniform(key, (64, 48)))
    sharded = jax.jit(lambda k: uniform(k, (64, 48)), out_shardings=jax.sharding.NamedSharding(mesh, jax.P("d")))(key)
    np.testing.assert_array_equal(np.asarray(sharded), ref)
    assert uniform(key, (64, 48)).dtype == jnp.float32
