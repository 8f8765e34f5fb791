"""The saturation curves against closed forms: a loss whose even part and odd part along a line are
known exactly, the map φ between and beyond grid points, the band from the spread over batches, a
change's placement (length, alignment) and the error an edit is given."""

import dataclasses
import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

import riemann
from riemann import Curve, Saturation


def _cosh_loss(p, x):
    # Even along every line through 0 (cosh), with a cubic odd part x₀·w³/6 on the first coordinate.
    return jnp.sum(x * jnp.cosh(p["w"])) + x[0] * p["w"][0] ** 3 / 6.0


def _half_quadratic(d):  # the exact Hessian at 0 of Σ x·cosh(w) for x = 1: ½ Σ d²
    return 0.5 * float(jnp.sum(d["w"] ** 2))


def _left_out(curve, k):
    """``curve`` without grid step ``k``, by hand."""
    keep = np.arange(len(curve.steps)) != k
    odd = None if curve.odd is None else curve.odd[keep]
    return Curve(curve.steps[keep], curve.quadratic[keep], curve.loss[keep], curve.errors[keep], 1, odd=odd)


def test_curves_are_the_even_part_against_the_quadratic_the_odd_part_along_delta_and_errors_left_out():
    n = 4
    w, delta = {"w": jnp.zeros(n)}, {"w": jnp.array([1.0, -1.0, 1.0, 1.0])}
    steps = [0.25, 0.5, 1.0, 2.0]
    sat = riemann.saturation(
        _cosh_loss, w, delta, [jnp.ones(n)], _half_quadratic, {"w": jnp.zeros(n)},
        key=jax.random.key(0), probes=3, coherent_steps=steps, noise_steps=steps, band=0.0,
    )  # fmt: skip
    s = np.asarray(steps)
    even = n * (np.cosh(s) - 1.0)  # every copy ε ⊙ ΔW has |entries| 1: the same even part
    for curve in (sat.coherent, sat.noise):
        np.testing.assert_allclose(curve.quadratic, 0.5 * n * s**2, rtol=1e-6)
        np.testing.assert_allclose(curve.loss, even, rtol=1e-4)  # float32 losses
        # φ(Q(s)) = C(s) at every grid point
        np.testing.assert_allclose([curve(q) for q in curve.quadratic], even, rtol=1e-4)
    # Along ΔW (first entry +1) the odd part is w₀³/6; a random-sign copy's is ±s³/6, chance.
    np.testing.assert_allclose(sat.coherent.odd, s**3 / 6.0, rtol=1e-4, atol=1e-6)
    assert sat.noise.odd is None
    for k, x in enumerate(s):  # the model along ±s·ΔW is the measured loss on both sides
        for sign in (1.0, -1.0):
            want = even[k] + sign * x**3 / 6.0
            assert sat.phi(sat.coherent.quadratic[k], sign * x) == pytest.approx(want, rel=1e-4, abs=1e-6)

    # Errors (no band asked for), made non-decreasing. In-sample the coherent model is exact; at
    # the inner steps it misses what the curve without that step interpolates wrongly.
    def miss(curve, k, odd):
        fit = _left_out(curve, k)
        return max(
            abs(even[k] + sign * s[k] ** 3 / 6.0 - fit(curve.quadratic[k]) - fit.odd_at(sign * s[k]) * odd)
            for sign in (1.0, -1.0)
        )

    raw = np.array([0.0, miss(sat.coherent, 1, True), miss(sat.coherent, 2, True), 0.0])
    np.testing.assert_allclose(sat.coherent.errors, np.maximum.accumulate(raw), rtol=1e-4, atol=1e-5)
    assert sat.coherent.errors[1] > 0.01  # the odd part is not linear in s: the left-out step shows it
    # Random-sign copies keep their odd part as error, in-sample and left out.
    raw = np.maximum(s**3 / 6.0, [0.0, miss(sat.noise, 1, False), miss(sat.noise, 2, False), 0.0])
    np.testing.assert_allclose(sat.noise.errors, np.maximum.accumulate(raw), rtol=1e-4, atol=1e-5)
    assert sat.noise.directions == 3 and sat.coherent.directions == 1
    assert sat.scale == pytest.approx(2.0)
    assert sat.cost == {"forward": 1 + 2 * 4 + 2 * 3 * 4}
    back = Saturation.from_record(sat.record(), delta)  # as read back from results.json
    for q in (0.01, 1.0, 3.0, 50.0):
        assert back.phi(q, 0.3) == sat.phi(q, 0.3) and back.error(0.7, 0.3, q) == sat.error(0.7, 0.3, q)
    assert back.noise.floor == sat.noise.floor > 0
    assert back.place(delta) == pytest.approx((1.0, 1.0))


def test_one_batch_has_no_spread_to_band_by_so_nothing_is_trusted():
    w, delta = {"w": jnp.zeros(2)}, {"w": jnp.array([1.0, 1.0])}
    kw = dict(key=jax.random.key(0), coherent_steps=[0.5, 1.0], noise_steps=[0.5, 1.0])
    sat = riemann.saturation(_cosh_loss, w, delta, [jnp.ones(2)], _half_quadratic, {"w": jnp.zeros(2)}, **kw)
    assert sat.quantile == np.inf and np.all(np.isinf(sat.noise.errors))
    assert sat.noise.error(0.0) == np.inf and sat.error(0.3, 0.5, 0.1) == np.inf
    assert sat.judge(delta, 5.0, 1.0, 0.1)["validity"] == np.inf  # auto measures it
    back = Saturation.from_record(json.loads(json.dumps(files_clean(sat.record()))), delta)
    assert back.error(0.3, 0.5, 0.1) == np.inf  # results.json writes the infinities as null
    assert back.quantile == np.inf


def test_a_grid_of_two_steps_is_judged_leaving_out_each_end():
    w, delta = {"w": jnp.zeros(4)}, {"w": jnp.array([1.0, -1.0, 1.0, 1.0])}
    kw = dict(key=jax.random.key(0), coherent_steps=[0.5, 1.0], noise_steps=[1.0], band=0.0)
    sat = riemann.saturation(_cosh_loss, w, delta, [jnp.ones(4)], _half_quadratic, {"w": jnp.zeros(4)}, **kw)
    c = sat.coherent
    np.testing.assert_allclose(c.odd, np.array([0.5, 1.0]) ** 3 / 6, rtol=1e-4)  # exact in-sample
    misses = [
        max(
            abs(c.loss[k] + sign * c.odd[k] - _left_out(c, k)(c.quadratic[k]) - _left_out(c, k).odd_at(sign * x))
            for sign in (1.0, -1.0)
        )
        for k, x in enumerate(c.steps)
    ]
    np.testing.assert_allclose(c.errors, np.maximum.accumulate(misses), rtol=1e-6)
    assert c.errors[1] > 0.05  # from 0.5 alone the odd part grows ∝ s, the loss's as s³


def test_records_written_before_the_odd_part_and_the_quantile_read_as_they_were():
    w, delta = {"w": jnp.zeros(2)}, {"w": jnp.array([1.0, 1.0])}
    batches = [jnp.array([1.0, 1.0]), jnp.array([3.0, 1.0]), jnp.array([2.0, 2.0])]
    kw = dict(key=jax.random.key(0), coherent_steps=[0.5, 1.0], noise_steps=[1.0])
    sat = riemann.saturation(_cosh_loss, w, delta, batches, _half_quadratic, {"w": jnp.zeros(2)}, **kw)
    old = sat.record()
    del old["quantile"], old["coherent"]["odd"], old["noise"]["odd"]
    back = Saturation.from_record(old, delta)
    assert back.quantile is None and back.coherent.odd is None
    assert back.phi(1.0, -0.4) == pytest.approx(
        back.coherent(0.16 * back.coherent.unit) + back.noise(1.0 - 0.16 * back.coherent.unit)
    )
    assert sat.phi(1.0, -0.4) == pytest.approx(back.phi(1.0, -0.4) + sat.coherent.odd_at(-0.4))
    # the cross-fit's standard error joins with band's multiple then, with the t multiple now
    plain = back.judge(delta, 5.0, 1.0, 0.1)["model_error"]
    assert back.judge(delta, 5.0, 1.0, 0.1, first_stderr=0.1)["model_error"] == pytest.approx(plain + 0.2)
    now = sat.judge(delta, 5.0, 1.0, 0.1)["model_error"]
    assert sat.judge(delta, 5.0, 1.0, 0.1, first_stderr=0.1)["model_error"] == pytest.approx(now + 0.1 * sat.quantile)


def files_clean(record):
    """As ``results.json`` holds it: non-finite numbers as ``null``."""
    if isinstance(record, dict):
        return {k: files_clean(v) for k, v in record.items()}
    if isinstance(record, list):
        return [files_clean(v) for v in record]
    return None if isinstance(record, float) and not np.isfinite(record) else record


def test_the_band_adds_standard_errors_of_the_held_out_mean():
    w, delta = {"w": jnp.zeros(2)}, {"w": jnp.array([1.0, 1.0])}
    batches = [jnp.array([1.0, 1.0]), jnp.array([3.0, 1.0]), jnp.array([2.0, 2.0])]
    kw = dict(key=jax.random.key(0), coherent_steps=[1.0], noise_steps=[1.0], held_out=5)
    grad = {"w": jnp.zeros(2)}
    plain = riemann.saturation(_cosh_loss, w, delta, batches, _half_quadratic, grad, band=0.0, **kw)
    banded = riemann.saturation(_cosh_loss, w, delta, batches, _half_quadratic, grad, band=2.0, **kw)
    # per batch, along +ΔW at s = 1: x·(cosh 1 − 1) summed, plus x₀/6
    per = np.array([(np.sum(x) * (np.cosh(1.0) - 1.0) + x[0] / 6.0) for x in map(np.asarray, batches)])
    minus = np.array([(np.sum(x) * (np.cosh(1.0) - 1.0) - x[0] / 6.0) for x in map(np.asarray, batches)])
    se = np.sqrt((per.var(ddof=1) + minus.var(ddof=1)) / 2) * np.sqrt(1 / 3 + 1 / 5)  # pooled over signs
    # The spread is estimated from 3 batches: 2 known standard errors' coverage takes the Student-t
    # quantile with 2 degrees of freedom at Φ(2), 4.53 standard errors.
    multiple = scipy_stats.t.ppf(scipy_stats.norm.cdf(2.0), 2)
    assert banded.quantile == pytest.approx(multiple) and multiple == pytest.approx(4.527, abs=1e-3)
    assert banded.coherent.errors[0] - plain.coherent.errors[0] == pytest.approx(multiple * se, rel=1e-4)
    assert banded.band == 2.0 and plain.coherent.errors[0] == pytest.approx(
        np.mean(np.asarray(batches)[:, 0]) / 6, rel=1e-4
    )  # from a single step the odd part x₀·w₀³/6 is not modelled: nothing could be left out to judge it
    assert plain.coherent.odd is None


def test_the_band_pools_the_spread_over_directions():
    # Along ±s·(ε ⊙ ΔW), ΔW = (1, 1), the loss Σ x·cosh(w) + x₀·w₀·w₁ changes by
    # (x₀ + x₁)(cosh s − 1) + ε₀ε₁·x₀·s² on each sign: the two copies' spreads over batches differ when
    # their products ε₀ε₁ do (this key draws one of each).
    def loss(p, x):
        return jnp.sum(x * jnp.cosh(p["w"])) + x[0] * p["w"][0] * p["w"][1]

    w, delta = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    batches = [jnp.array([1.0, 1.0]), jnp.array([3.0, 1.0]), jnp.array([2.0, 4.0])]
    kw = dict(key=jax.random.key(2), probes=2, coherent_steps=[1.0], noise_steps=[1.0], held_out=5)
    args = (loss, w, delta, batches, _half_quadratic, {"w": jnp.zeros(2)})
    band = (
        riemann.saturation(*args, band=2.0, **kw).noise.errors[0]
        - riemann.saturation(*args, band=0.0, **kw).noise.errors[0]
    )
    x = np.asarray(batches)

    def var(product):
        return np.var((x[:, 0] + x[:, 1]) * (np.cosh(1.0) - 1.0) + product * x[:, 0], ddof=1)

    spread = scipy_stats.t.ppf(scipy_stats.norm.cdf(2.0), 2) * np.sqrt(1 / 3 + 1 / 5)  # 3 batches
    pooled = spread * np.sqrt((var(1.0) + var(-1.0)) / 2)  # both signs of both copies
    assert band == pytest.approx(pooled, rel=1e-4)
    assert abs(band - spread * np.sqrt(max(var(1.0), var(-1.0)))) > 0.1  # not the larger copy's alone


def _curve(q, c, errors=None):
    q, c = np.asarray(q, float), np.asarray(c, float)
    return Curve(np.arange(1.0, len(q) + 1), q, c, np.zeros_like(q) if errors is None else np.asarray(errors, float), 1)


def test_phi_interpolates_the_ratio_holds_it_below_and_follows_the_last_slope_beyond():
    curve = _curve([1.0, 4.0, 16.0], [2.0, 4.0, 8.0])  # C = 2√Q: ratio 2, 1, 0.5
    assert curve(0.5) == pytest.approx(1.0)  # below: C/Q held at 2
    assert curve(4.0) == pytest.approx(4.0)
    assert curve(2.0) == pytest.approx(2.0 * 1.5)  # ratio halfway in log Q between 2 and 1
    assert curve(64.0) == pytest.approx(16.0)  # beyond: slope ½ in log–log, as between the last two
    assert curve(-1.0) == -1.0 and curve(0.0) == 0.0  # a non-positive quadratic passes through
    flat = _curve([1.0, 4.0], [-0.5, 2.0])
    assert flat(8.0) == pytest.approx(8.0 * 0.5)  # no log–log slope through a negative C: ratio held
    assert _curve([-1.0, -4.0], [1.0, 2.0])(3.0) == 3.0  # a curvature that is not one: identity


def test_error_reads_the_envelope_linear_below_power_law_between_and_cubic_beyond():
    curve = Curve(np.array([0.5, 1.0]), np.array([1.0, 4.0]), np.array([1.0, 4.0]), np.array([0.2, 0.6]), 1)
    assert curve.error(0.25) == pytest.approx(0.2 / 2)  # linear below: the band is first order
    # between grid steps the power law through both neighbours: 0.2·(s/0.5)^log2(3)
    assert curve.error(0.7) == pytest.approx(0.2 * 1.4 ** np.log2(3.0))
    assert curve.error(0.5) == pytest.approx(0.2) and curve.error(1.0) == pytest.approx(0.6)
    assert 0.2 < curve.error(0.7) < 0.6
    assert curve.error(2.0) == pytest.approx(0.6 * 8)
    # a zero or flat lower neighbour is read linearly (no power law through 0)
    zero = dataclasses.replace(curve, errors=np.array([0.0, 0.6]))
    assert zero.error(0.75) == pytest.approx(0.3)
    flat = dataclasses.replace(curve, errors=np.array([0.6, 0.6]))
    assert flat.error(0.75) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="step="):
        curve.error(-1.0)


def test_the_odd_part_is_odd_linear_between_cubic_below_and_proportional_beyond():
    curve = dataclasses.replace(_curve([1.0, 4.0, 9.0], [1.0, 4.0, 9.0]), odd=np.array([-0.5, 1.0, 4.0]))  # s = 1, 2, 3
    for sign in (1.0, -1.0):
        assert curve.odd_at(sign * 1.5) == pytest.approx(sign * 0.25)  # halfway between −0.5 and 1
        assert curve.odd_at(sign * 0.5) == pytest.approx(sign * -0.5 / 8)  # (s/s₀)³ below
        assert curve.odd_at(sign * 6.0) == pytest.approx(sign * 8.0)  # ∝ s beyond
        assert curve.odd_at(sign * 1.0) == pytest.approx(sign * -0.5)  # negative at s = 1, positive at −1
    assert curve.odd_at(0.0) == 0.0 and _curve([1.0], [1.0]).odd_at(0.7) == 0.0  # none measured: 0


def _saturation(delta):
    coherent = Curve(np.array([1.0]), np.array([1.0]), np.array([3.0]), np.array([0.1]), 1)  # φ = 3q
    noise = Curve(np.array([1.0]), np.array([1.0]), np.array([0.5]), np.array([0.2]), 2)  # φ = q/2
    scale = float(jnp.sqrt(jnp.sum(delta["w"] ** 2)))
    return Saturation(coherent, noise, delta, scale, 2.0, {"forward": 0})


def test_a_change_is_placed_by_length_and_alignment_and_each_part_read_on_its_curve():
    delta = {"w": jnp.array([3.0, 0.0, 0.0, 4.0])}
    sat = _saturation(delta)  # Q(ΔW) = 1 (the coherent grid's unit); φ_coh = 3q, φ_noise = q/2
    change = {"w": jnp.array([0.6, 2.0, 0.0, 0.8])}  # 0.2·ΔW plus 2 across it: ‖·‖ = √5
    rho, cos = sat.place(change)
    assert rho == pytest.approx(np.sqrt(5.0) / 5.0) and cos == pytest.approx(1.0 / np.sqrt(5.0))
    assert cos * rho == pytest.approx(0.2)  # the part along ΔW is 0.2·ΔW
    assert sat.place({"w": jnp.zeros(4)}) == (0.0, 0.0)
    # Q∥ = 0.2²·Q(ΔW) = 0.04 on the coherent curve, the rest of q = 2 on the noise curve
    assert sat.split(2.0, 0.2) == pytest.approx((0.04, 1.96))
    assert sat.phi(2.0, 0.2) == pytest.approx(3 * 0.04 + 0.5 * 1.96)
    assert sat.phi(2.0, 0.0) == pytest.approx(1.0) and sat.phi(1.0, 1.0) == pytest.approx(3.0)
    # error: the coherent envelope at |c|ρ, the noise envelope at √(1 − c²)ρ (both linear below their
    # grids), and for a structured change the doubt |φ_coh(Q⊥) − φ_noise(Q⊥)| = 2.5·Q⊥
    base = 0.1 * (cos * rho) + 0.2 * (np.sqrt(1 - cos**2) * rho)
    assert sat.error(rho, cos, 2.0, noise=True) == pytest.approx(base)
    assert sat.error(rho, cos, 2.0) == pytest.approx(base + 2.5 * 1.96)
    # along ΔW there is nothing across it to doubt (EXPO)
    assert sat.error(1.0, 1.0, 1.0) == pytest.approx(0.1) and sat.error(1.0, -1.0, 1.0, noise=True) == pytest.approx(
        0.1
    )
    got = sat.judge(change, 1.0, 2.0, 0.5, noise=True)
    assert sat.judge(change, 1.0, 2.0, 0.5, noise=True, placed=(rho, cos)) == got  # a placement passed in
    assert got["validity"] == pytest.approx(base / 0.5) and got["alignment"] == pytest.approx(cos)
    assert sat.judge(change, 0.5, 2.0, 0.5)["validity"] == float("inf")  # on the boundary
    record = sat.record()
    assert record["coherent"]["errors"] == [0.1] and record["scale"] == pytest.approx(5.0)


def test_phi_holds_the_first_resolved_ratio_and_never_decreases_beyond_the_grid():
    noisy = Curve(
        np.array([1.0, 2.0, 4.0]), np.array([1.0, 4.0, 16.0]), np.array([-1e-9, 8.0, 4.0]), np.zeros(3), 1, 1e-6
    )
    assert noisy(0.5) == pytest.approx(0.5 * 2.0)  # the first point is below the floor: hold 8/4
    assert noisy(64.0) == pytest.approx(4.0)  # C fell over the last segment: held flat, not decreasing


def test_sixteen_bit_parameters_leave_out_the_steps_rounding_moves():
    def loss(p, x):  # exactly quadratic: C/Q = 1 wherever the step is realised
        return 0.5 * jnp.sum(x * p["w"].astype(jnp.float32) ** 2)

    w = {"w": jnp.ones(64, jnp.bfloat16)}
    delta = {"w": jnp.full(64, 2.0**-6, jnp.float32)}
    q = lambda d: 0.5 * float(jnp.sum(d["w"].astype(jnp.float32) ** 2))  # noqa: E731
    sat = riemann.saturation(loss, w, delta, [jnp.ones(64)], q, {"w": jnp.ones(64)}, key=jax.random.key(0),
                             coherent_steps=[0.01, 0.1, 1.0, 10.0], noise_steps=[0.01, 10.0])  # fmt: skip
    # bf16 spacing near 1 is 2⁻⁷: 1 ± 2⁻⁶ and 1 ± 10·2⁻⁶ are stored exactly, 1 ± 0.1·2⁻⁶ rounds to 1
    assert sat.coherent.steps.tolist() == [1.0, 10.0] and sat.noise.steps.tolist() == [10.0]
    np.testing.assert_allclose(sat.coherent.loss / sat.coherent.quadratic, 1.0, rtol=1e-3)
    assert sat.coherent(0.5) == pytest.approx(0.5, rel=1e-3)


def test_same_key_same_curves_and_refusals_name_the_argument():
    def loss(p, x):  # not sign-symmetric: each copy saturates differently
        return jnp.sum(x * jnp.log1p(jnp.exp(p["w"] * jnp.arange(1.0, 5.0))))

    w, delta, b = {"w": jnp.zeros(4)}, {"w": jnp.array([1.0, 2.0, -1.0, 0.5])}, [jnp.ones(4)]
    args = (loss, w, delta, b, _half_quadratic, {"w": jnp.zeros(4)})
    one = riemann.saturation(*args, key=jax.random.key(3), noise_steps=[1.0, 4.0])
    two = riemann.saturation(*args, key=jax.random.key(3), noise_steps=[1.0, 4.0])
    other = riemann.saturation(*args, key=jax.random.key(4), noise_steps=[1.0, 4.0])
    np.testing.assert_array_equal(one.noise.loss, two.noise.loss)
    assert not np.array_equal(one.noise.loss, other.noise.loss)
    for kwargs, match in (
        ({"probes": 0}, "probes=0"),
        ({"noise_steps": [1.0, 0.5]}, "noise_steps="),
        ({"coherent_steps": [0.0]}, "coherent_steps="),
        ({"held_out": 0}, "held_out=0"),
        ({"band": -1.0}, "band="),
    ):
        with pytest.raises(ValueError, match=match):
            riemann.saturation(*args, key=jax.random.key(0), **kwargs)

    def overflowing(p, x):  # float32 exp overflows beyond a step of about 88
        return jnp.sum(x * jnp.log1p(jnp.exp(p["w"])))

    far = riemann.saturation(overflowing, w, delta, b, _half_quadratic, {"w": jnp.zeros(4)}, key=jax.random.key(0))
    assert (
        far.noise.steps[-1] < 100
        and np.all(np.isfinite(far.noise.loss))
        and len(far.noise.errors) == len(far.noise.steps)
    )
    assert far.coherent.steps.tolist() == list(
        inspect.signature(riemann.saturation).parameters["coherent_steps"].default
    )
    with pytest.raises(FloatingPointError, match="not finite at the first step"):
        riemann.saturation(
            overflowing, w, delta, b, _half_quadratic, {"w": jnp.zeros(4)}, key=jax.random.key(0), noise_steps=[200.0]
        )
    with pytest.raises(ValueError, match="leaf 'w': params has dtype int32"):
        riemann.saturation(loss, {"w": jnp.zeros(4, jnp.int32)}, {"w": jnp.ones(4, jnp.int32)}, b, _half_quadratic,
                           {"w": jnp.zeros(4)}, key=jax.random.key(0))  # fmt: skip
    with pytest.raises(ValueError, match="batches is empty"):
        riemann.saturation(loss, w, delta, [], _half_quadratic, {"w": jnp.zeros(4)}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="delta has norm 0"):
        riemann.saturation(loss, w, {"w": jnp.zeros(4)}, b, _half_quadratic, {"w": jnp.zeros(4)}, key=jax.random.key(0))


def test_the_gradient_curve_is_measured_along_the_gradient_signs_less_their_part_along_delta():
    n = 4
    w, delta, grad = {"w": jnp.zeros(n)}, {"w": jnp.array([1.0, -1.0, 1.0, 1.0])}, {"w": jnp.ones(n)}
    steps = [0.25, 0.5, 1.0]
    kw = dict(key=jax.random.key(0), coherent_steps=steps, noise_steps=steps, gradient_steps=steps, band=0.0)
    sat = riemann.saturation(_cosh_loss, w, delta, [jnp.ones(n)], _half_quadratic, grad, **kw)
    # S = sign(g)·|ΔW| = (1, 1, 1, 1); κ = ⟨S, ΔW⟩/‖ΔW‖² = 2/4; S⊥ = S − ½ΔW = (½, 3/2, ½, ½), ‖S⊥‖² = 3
    v, s = np.array([0.5, 1.5, 0.5, 0.5]), np.asarray(steps)
    assert sat.gradient_shift == pytest.approx(0.5) and sat.gradient_scale == pytest.approx(np.sqrt(3.0))
    np.testing.assert_allclose(sat.gradient.quadratic, 0.5 * 3.0 * s**2, rtol=1e-6)
    np.testing.assert_allclose(sat.gradient.loss, (np.cosh(np.outer(s, v)) - 1).sum(axis=1), rtol=1e-4)
    assert sat.cost == {"forward": 1 + 2 * 3 + 2 * 2 * 3 + 2 * 3}
    # A change 0.3·ΔW + 0.7·S⊥ + 0.2·r with r across both: each part placed, each read on its curve.
    r = np.array([1.0, 0.0, -1.0, 0.0])
    change = {"w": jnp.asarray(0.3 * np.array([1.0, -1.0, 1.0, 1.0]) + 0.7 * v + 0.2 * r)}
    rho, cos = sat.place(change)
    assert cos * rho == pytest.approx(0.3) and sat.place_gradient(change) == pytest.approx(0.7)
    q = _half_quadratic(change)
    q_par, q_grad = 0.09 * sat.coherent.unit, 0.49 * sat.gradient.unit
    assert sat.split(q, 0.3, 0.7) == pytest.approx((q_par, q - q_par - q_grad))
    # The odd part is model along ΔW only: along S⊥, chosen by the gradient, it stays in the error.
    assert sat.gradient.odd is None and sat.coherent.odd is not None
    want = sat.coherent(q_par) + sat.gradient(q_grad) + sat.noise(q - q_par - q_grad) + sat.coherent.odd_at(0.3)
    assert sat.phi(q, 0.3, 0.7) == pytest.approx(want)
    assert sat.phi(q, 0.3, 0.7) != pytest.approx(sat.phi(q, 0.3))  # the part along S⊥ is read apart
    # Its error: the gradient envelope at |b|, the noise envelope on what is left after both parts.
    rest = np.sqrt((1 - cos**2) * rho**2 - (0.7 * np.sqrt(3.0) / 2.0) ** 2)
    want = sat.coherent.error(abs(cos) * rho) + sat.noise.error(rest) + sat.gradient.error(0.7)
    assert sat.error(rho, cos, q, noise=True, gradient=0.7) == pytest.approx(want)
    assert sat.judge(change, 1.0, q, 0.5, noise=True)["gradient_part"] == pytest.approx(0.7)
    # read back from results.json, with the gradient to place a change
    back = Saturation.from_record(sat.record(), delta, grad)
    with pytest.raises(ValueError, match="grad="):
        Saturation.from_record(sat.record(), delta).place_gradient(change)
    assert back.place_gradient(change) == pytest.approx(0.7) and back.phi(q, 0.3, 0.7) == sat.phi(q, 0.3, 0.7)
    # Not asked for, or nothing left of S once its part along ΔW is out (g's signs are ΔW's): no curve.
    none = riemann.saturation(
        _cosh_loss, w, delta, [jnp.ones(n)], _half_quadratic, grad, **{**kw, "gradient_steps": None}
    )
    same = riemann.saturation(_cosh_loss, w, delta, [jnp.ones(n)], _half_quadratic, delta, **kw)
    for got in (none, same):
        assert got.gradient is None and got.place_gradient(change) == 0.0
        assert got.cost == {"forward": 1 + 2 * 3 + 2 * 2 * 3} and got.phi(q, 0.3, 0.7) == got.phi(q, 0.3)
    with pytest.raises(ValueError, match="gradient_steps"):
        riemann.saturation(
            _cosh_loss, w, delta, [jnp.ones(n)], _half_quadratic, grad, **{**kw, "gradient_steps": [1.0, 0.5]}
        )


def test_the_gradient_direction_of_sixteen_bit_parameters_is_formed_in_float32():
    def loss(p, x):
        return 0.5 * jnp.sum(x * p["w"].astype(jnp.float32) ** 2)

    n = 64
    w = {"w": jnp.zeros(n, jnp.bfloat16)}  # steps stored to bf16's relative precision (2⁻⁸)
    signs = np.where(np.arange(n) % 3 == 0, -1.0, 1.0)
    delta = {"w": jnp.asarray(np.linspace(0.5, 1.5, n) * 2.0**-4, jnp.bfloat16)}  # ΔW stored in bf16 too
    grad = {"w": jnp.asarray(signs, jnp.bfloat16)}  # a gradient in the parameters' dtype
    q = lambda d: 0.5 * float(jnp.sum(d["w"].astype(jnp.float32) ** 2))  # noqa: E731
    sat = riemann.saturation(loss, w, delta, [jnp.ones(n)], q, grad, key=jax.random.key(0),
                             coherent_steps=[1.0], noise_steps=[1.0], gradient_steps=[1.0, 2.0])  # fmt: skip
    d = np.asarray(delta["w"].astype(jnp.float32), np.float64)
    s = np.abs(d) * signs
    kappa = s @ d / (d @ d)
    s_perp = s - kappa * d
    assert sat.gradient_shift == pytest.approx(kappa, rel=1e-5)
    assert sat.gradient_scale == pytest.approx(np.linalg.norm(s_perp), rel=1e-5)
    # S⊥ itself is placed at b = 1 and at no part along ΔW; ΔW at b = 0
    change = {"w": jnp.asarray(s_perp, jnp.float32)}
    assert sat.place_gradient(change) == pytest.approx(1.0, rel=1e-4)
    assert abs(sat.place(change)[1]) < 1e-5 and abs(sat.place_gradient(delta)) < 1e-5
