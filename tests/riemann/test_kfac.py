"""The K-FAC / EK-FAC engine: the quadratic is the explicit ``vec(X)ᵀ (A ⊗ S) vec(X)``, the eigen
form equals it at full rank, and compression only drops non-negative terms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import kfac


def _psd(rng, n):
    m = rng.normal(size=(n, n))
    return m @ m.T + 0.1 * np.eye(n)


def _factor(seed=0, out=5, inp=4):
    rng = np.random.default_rng(seed)
    a, s = _psd(rng, inp), _psd(rng, out)
    return kfac.KroneckerFactor(jnp.asarray(a, jnp.float32), jnp.asarray(s, jnp.float32)), a, s, rng


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quadratic_is_the_explicit_kronecker_form(seed):
    f, a, s, rng = _factor(seed)
    x = rng.normal(size=(5, 4))
    vec = x.reshape(-1, order="F")  # column-stacking: vec(S X A) = (A ⊗ S) vec(X)
    want = vec @ np.kron(a, s) @ vec
    xj = jnp.asarray(x, jnp.float32)
    assert float(kfac.quadratic(f, xj)) == pytest.approx(want, rel=1e-5)
    assert float(kfac.quadratic(kfac.eigen(f), xj)) == pytest.approx(want, rel=1e-4)
    assert float(jax.jit(kfac.quadratic)(f, xj)) == pytest.approx(want, rel=1e-5)


def test_compression_error_falls_with_rank_and_vanishes_at_full_rank():
    f, _, _, rng = _factor(3, out=6, inp=5)
    x = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    full = float(kfac.quadratic(f, x))
    errors = [full - float(kfac.quadratic(kfac.compress(f, r), x)) for r in range(1, 7)]
    assert all(e >= -1e-4 * full for e in errors)  # dropped directions only remove non-negative terms
    assert all(b <= a + 1e-4 * full for a, b in zip(errors, errors[1:]))
    assert errors[0] > 1e-3 * full and abs(errors[-1]) <= 1e-4 * full
    e = kfac.compress(f, 2)
    assert e.qa.shape == (5, 2) and e.qs.shape == (6, 2) and e.lam.shape == (2, 2)
    assert kfac.factor_size(e) == 5 * 2 + 6 * 2 + 4
    with pytest.raises(ValueError, match="rank"):
        kfac.compress(f, 0)


def test_structured_curvature_uses_factors_and_the_diagonal_elsewhere():
    f, _, _, rng = _factor(4)
    grad = {"b": jnp.ones((3,), jnp.float32), "w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}
    diag = {"b": jnp.full((3,), 2.0, jnp.float32), "w": jnp.zeros((5, 4), jnp.float32)}
    change = {"b": jnp.ones((3,), jnp.float32), "w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}
    est = kfac.StructuredCurvature(grad, {"w": f}, diag, name="kfac").estimate(change)
    first = float(jnp.sum(grad["w"] * change["w"])) + 3.0
    quad = float(kfac.quadratic(f, change["w"])) + 6.0
    assert est.value == pytest.approx(first + 0.5 * quad, rel=1e-5)
    assert est.modules["b"] == pytest.approx(3.0 + 3.0) and est.method == "kfac"
    with pytest.raises(ValueError, match="shape"):
        kfac.StructuredCurvature(grad, {"b": f}, diag)
    with pytest.raises(ValueError, match="no diagonal"):
        kfac.StructuredCurvature(grad, {"w": f}, None)


def test_a_saturation_map_replaces_the_second_order_term_and_scales_each_leaf():
    f, _, _, rng = _factor(5)
    grad = {"b": jnp.ones((3,), jnp.float32), "w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}
    diag = {"b": jnp.full((3,), 2.0, jnp.float32), "w": jnp.zeros((5, 4), jnp.float32)}
    change = {"b": jnp.ones((3,), jnp.float32), "w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}
    sc = kfac.StructuredCurvature(grad, {"w": f}, diag)
    plain = sc.estimate(change)
    got = sc.estimate(change, saturate=np.sqrt)
    q = plain.terms["second"]
    assert got.value == pytest.approx(plain.terms["first"] + np.sqrt(q), rel=1e-9)
    assert got.terms["second_saturated"] == pytest.approx(np.sqrt(q)) and got.terms["saturation"] == pytest.approx(
        q**-0.5
    )
    assert sum(got.modules.values()) == pytest.approx(got.value, rel=1e-9)
    assert got.modules["b"] == pytest.approx(3.0 + 3.0 * q**-0.5)  # ⟨g, x⟩ = 3, ½ Σ 2·1² = 3, scaled
