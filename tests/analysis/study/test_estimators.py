"""The estimator registry: every entry scores a change as its method says, and the suite, the
report, the plots and the command line read the same entries."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann
from analysis.cli import build_parser
from analysis.pairs.pair import Pair
from analysis.reporting import plots
from analysis.study import estimators, suite
from analysis.study.estimators import ESTIMATORS, Shared
from riemann import edits


def _pair():
    def loss(p, x):  # H = diag(x): every estimator but the left rule is exact on it
        return 0.5 * jnp.sum(x * p["w"] ** 2)

    post = {"w": jnp.array([1.0, -2.0, 0.5])}
    batches = [jnp.array([1.0, 2.0, 3.0]) * (1.0 + 0.1 * i) for i in range(12)]  # 4 calibrate, 8 test
    return Pair("quadratic", "½ Σ x w²", post, post, loss, batches, None, {})


def test_every_estimator_scores_a_change_by_its_method():
    pair = _pair()
    g = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=0)
    c = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=1, key=jax.random.key(0))
    shared = Shared(pair, g, c, tolerance=0.01)
    q = lambda d: ESTIMATORS["kfac"].score(shared, d).terms["second"]  # noqa: E731
    sat = riemann.saturation(
        pair.loss_fn, pair.post, {"w": jnp.array([1.0, 0.0, 0.0])}, pair.batches, q, g.grad, key=jax.random.key(1)
    )
    shared = dataclasses.replace(shared, saturation=sat)
    change = {"w": jnp.array([0.5, 1.0, -1.0])}
    exact = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="measured").value
    first = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="first-order").value
    want = {
        "riemann": None,
        "first-order": first,
        "shared-curvature": exact,
        "second-order": exact,
        "gauss-legendre": exact,
        "gauss-kronrod": exact,
        "auto": exact,  # the quadratic is exact here, so auto trusts it
        "kfac": exact,  # no model checkpoint: the Hessian diagonal serves every leaf
        "ekfac": exact,
        "kfac-saturated": exact,  # the loss is its quadratic: both curves are φ(Q) = Q
    }
    assert set(ESTIMATORS) == set(want)
    for name, est in ESTIMATORS.items():
        got = est.score(shared, change)
        assert got.method == est.settings["method"]
        if want[name] is not None:
            assert got.value == pytest.approx(want[name], rel=1e-6), name
        assert est.shared == (est.needs is not None)


def test_a_copy_keeps_the_structured_curvature_unless_what_it_is_built_from_changes():
    pair = _pair()
    g = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=0)
    c = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=1, key=jax.random.key(0))
    shared = Shared(pair, g, c, tolerance=0.01)
    built = estimators._structured_curvature(shared, "kfac")
    assert estimators._structured_curvature(shared.replace(tolerance=0.5), "kfac") is built
    assert estimators._structured_curvature(shared.replace(curvature=c), "kfac") is not built  # rebuilt


def test_auto_is_told_how_an_edit_was_made():
    pair = _pair()
    g = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=0)
    c = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=1, key=jax.random.key(0))
    shared = Shared(pair, g, c, tolerance=1e-3)
    delta = {"w": jnp.array([1.0, 1.0, 1.0])}
    q = lambda d: ESTIMATORS["kfac"].score(shared, d).terms["second"]  # noqa: E731
    shared = dataclasses.replace(
        shared,
        saturation=riemann.saturation(pair.loss_fn, pair.post, delta, pair.batches, q, g.grad, key=jax.random.key(1)),
    )
    auto = ESTIMATORS["auto"]
    assert auto.takes_edit and ESTIMATORS["kfac-saturated"].takes_edit
    biased = edits.parse("biased_product:k=1.5")
    change = jax.tree.map(lambda x, d: x - d, biased(delta, grad=g.grad), delta)
    got = auto(shared, change, biased)
    # built from the calibration gradient: measured, whatever the validity, with the reason
    assert got.settings["source"] == "measured" and got.settings["reason"] == "built from the calibration gradient"
    assert got.value == pytest.approx(
        riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="measured").value
    )
    assert got.terms["shared"] == pytest.approx(ESTIMATORS["kfac-saturated"](shared, change, biased).value)
    dare = edits.parse("dare:p=0.5")
    noisy = jax.tree.map(lambda x, d: x - d, dare(delta, key=jax.random.key(2)), delta)
    assert auto(shared, noisy, dare).terms["noise"] and not auto(shared, noisy).terms["noise"]
    # A noise edit is not charged the doubt between the curves: with curves that differ (φ_coh = 3q,
    # φ_noise = q/2, no gradient curve), a bare change is charged |φ_coh(Q⊥) − φ_noise(Q⊥)| more.
    one = np.array([1.0])
    sat = shared.saturation
    differ = dataclasses.replace(
        sat,
        coherent=riemann.Curve(one, one * sat.coherent.unit, 3 * one * sat.coherent.unit, 0 * one, 1),
        noise=riemann.Curve(one, one, 0.5 * one, 0 * one, 2),
        gradient=None,
    )
    shared2 = dataclasses.replace(shared, saturation=differ)
    with_noise, bare = auto(shared2, noisy, dare).terms, auto(shared2, noisy).terms
    q = ESTIMATORS["kfac"].score(shared2, noisy).terms["second"]
    _, across = differ.split(q, with_noise["alignment"] * with_noise["relative_step"])
    assert bare["model_error"] - with_noise["model_error"] == pytest.approx(2.5 * across, rel=1e-9)
    assert across > 0


def test_the_suite_plots_and_command_line_read_the_registry(monkeypatch):
    new = estimators.per_edit("third-order", "a user's estimator", "1 miracle per edit", "*", method="second-order")
    monkeypatch.setitem(ESTIMATORS, "third-order", new)  # removed again after the test
    assert plots._marker("third-order") == "*"
    run = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    assert "third-order (1 miracle per edit)" in next(a.help for a in run._actions if a.dest == "estimators")
    pair = dataclasses.replace(_pair(), pre={"w": jnp.array([0.5, -1.0, 0.0])})
    res = suite.analyse(
        pair, ["expo:alpha=0.5"], estimators=["third-order", "first-order"], progress=False, log=lambda s: None
    )
    (rec,) = res["edits"]
    assert set(rec["estimates"]) == {"third-order", "first-order"}
    assert rec["estimates"]["third-order"] == pytest.approx(rec["measured"], rel=1e-6)  # exact on a quadratic
    assert res["estimators"]["third-order"] == {"method": "second-order"}
    assert res["shared"]["estimators"] == {"first-order": res["shared"]["estimators"]["first-order"]}
    with pytest.raises(ValueError, match="already registered"):
        estimators.register_estimator(new)
    with pytest.raises(ValueError, match="needs='hessian'"):
        estimators.register_estimator(dataclasses.replace(new, name="x", needs="hessian"))
    with pytest.raises(ValueError, match=r"unknown estimator\(s\) \['magic'\]"):
        estimators.check_names(["riemann", "magic"])
    assert estimators.check_names(["all"]) == list(ESTIMATORS)
    assert set(estimators.DEFAULT_ESTIMATORS) < set(ESTIMATORS)
