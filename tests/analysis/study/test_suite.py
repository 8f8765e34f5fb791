"""End to end on a small trained pair: the engine's completeness and the suite's records."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

import riemann
from analysis.cli import main
from analysis.pairs import split
from analysis.pairs.mlp import MLPConfig, build_pair
from analysis.pairs.pair import Pair
from analysis.study import suite

SMALL = MLPConfig(hidden=24, teacher_hidden=16, pre_steps=150, post_steps=100, batch=128, eval_batches=12)


@pytest.fixture(scope="module")
def pair():
    return build_pair(SMALL)


def test_post_training_improves_its_task(pair):
    assert pair.info["accuracy_post"] > pair.info["accuracy_pre"] + 0.05
    losses = riemann.estimate(
        pair.loss_fn, pair.pre, jax.tree.map(lambda a, b: b - a, pair.pre, pair.post), pair.batches, method="measured"
    )
    assert losses.value < -0.1  # L(post) − L(pre) on the post-training task


def test_completeness_on_the_trained_pair(pair, capsys):
    delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
    gl = riemann.integrate_path(pair.loss_fn, pair.pre, delta, pair.batches, rule="gauss-legendre", n=8, endpoints=True)
    left = riemann.integrate_path(pair.loss_fn, pair.pre, delta, pair.batches, rule="left", n=5, endpoints=True)
    with capsys.disabled():
        print(
            f"\n[completeness] gauss-legendre n=8 relative gap {gl.relative_gap:.2e}; "
            f"paper's left n=5 relative gap {left.relative_gap:.2e}"
        )
    assert gl.relative_gap < 1e-4
    assert left.relative_gap > gl.relative_gap
    assert sum(gl.modules.values()) == pytest.approx(gl.value, rel=1e-5)
    assert set(gl.modules) == {f"{m}.{p}" for m in ("fc1", "fc2", "head") for p in ("bias", "weight")}


def test_suite_records_and_agreement(pair):
    specs = ["dare:p=0.5", "dare:p=0.99", "bitdelta", "expo:alpha=0.3", "biased_product:k=1.5", "lowrank:fraction=0.25"]
    res = suite.analyse(pair, specs, seed=3, progress=False, log=lambda s: None)
    assert [r["spec"] for r in res["edits"]] == specs
    for r in res["edits"]:
        assert set(r["estimates"]) == set(suite.ESTIMATORS)
        assert r["estimates"]["gauss-legendre"] == pytest.approx(r["measured"], rel=1e-3, abs=1e-5)
        assert set(r["class"]) == set(suite.ESTIMATORS) | {"measured"}
        # The shared first order is the per-edit first-order estimate of the engine (the predictors
        # cross-fit it for the edit built from the gradient, below, and keep it as first_in_sample).
        terms = r["terms"]["shared-curvature"]
        assert r["estimates"]["first-order"] == pytest.approx(
            terms.get("first_in_sample", terms["first"]), rel=1e-4, abs=1e-7
        )
        assert r["estimates"]["second-order"] == pytest.approx(
            r["terms"]["second-order"]["first"] + r["terms"]["second-order"]["second"], rel=1e-6
        )
    assert res["agreement"]["gauss-legendre"]["spearman"] == pytest.approx(1.0)
    # auto: the shared prediction where its validity score is below 1, else this very measurement.
    for r in res["edits"]:
        a = r["auto"]["auto"]
        for source, v, shared, meas, est in zip(
            a["source"], a["validity"], a["shared"], r["measured_seeds"], r["estimates_seeds"]["auto"]
        ):
            assert source == ("shared" if v < 1 else "measured")
            assert est == pytest.approx(shared if source == "shared" else meas, rel=1e-6, abs=1e-9)
    sources = [s for r in res["edits"] for s in r["auto"]["auto"]["source"]]
    assert res["agreement"]["auto"]["measured_fraction"] == pytest.approx(
        np.mean([r["auto"]["auto"]["measured_fraction"] for r in res["edits"]])
    )
    assert {"shared", "measured"} == set(sources)  # this suite has steps on both sides of the boundary
    sat = res["shared"]["saturation"]
    for curve in (sat["coherent"], sat["noise"], sat["gradient"]):
        assert curve["errors"] == sorted(curve["errors"]) and len(curve["loss"]) == len(curve["steps"])
    assert sat["cost"] == {"forward": 1 + 2 * 6 + 2 * 2 * 21 + 2 * 8} and sat["band"] == 2.0
    # The edit built from the calibration gradient: its first-order term cross-fitted, each
    # calibration batch's own gradient scoring the edit built from the other batches' mean (by hand
    # here, with jax.grad per batch), for every predictor but first-order itself (the paper's term).
    from riemann import edits

    (biased,) = [r for r in res["edits"] if r["spec"] == "biased_product:k=1.5"]
    cal, test = (getattr(split.split_pair(pair, seed=3), a) for a in ("calibration", "batches"))
    delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
    grads = [jax.grad(pair.loss_fn)(pair.post, b) for b in cal]
    edit, folds = edits.parse("biased_product:k=1.5"), []
    dot = lambda a, b: sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    for i, g in enumerate(grads):
        rest = jax.tree.map(lambda *xs: sum(xs) / len(xs), *[h for j, h in enumerate(grads) if j != i])
        folds.append(dot(g, jax.tree.map(lambda e, d: e - d, edit(delta, grad=rest), delta)))
    whole = jax.tree.map(lambda *xs: sum(xs) / len(xs), *grads)
    in_sample = dot(whole, jax.tree.map(lambda e, d: e - d, edit(delta, grad=whole), delta))
    assert abs(in_sample - np.mean(folds)) > 1e-3 * abs(in_sample)  # the two differ on this pair
    assert biased["estimates"]["first-order"] == pytest.approx(in_sample, rel=1e-4, abs=1e-7)
    se = np.std(folds, ddof=1) / np.sqrt(len(folds)) * np.sqrt(1 + len(cal) / len(test))
    for name in ("shared-curvature", "kfac", "ekfac", "kfac-saturated"):
        terms = biased["terms"][name]
        assert terms["first"] == pytest.approx(np.mean(folds), rel=1e-4, abs=1e-7), name
        assert terms["first_in_sample"] == pytest.approx(in_sample, rel=1e-4, abs=1e-7), name
        assert terms["first_stderr"] == pytest.approx(se, rel=1e-4), name
    # auto judges it (no longer always measured) by kfac-saturated's cross-fitted prediction, the
    # fit's standard error added to the curves' error as many times as the band takes (2 known
    # standard errors' coverage, from this many calibration batches: the Student-t quantile).
    a = biased["auto"]["auto"]
    assert a["shared"] == [pytest.approx(biased["estimates"]["kfac-saturated"], rel=1e-9)]
    sat_back = riemann.Saturation.from_record(res["shared"]["saturation"], delta, whole)
    kfs = biased["terms"]["kfac-saturated"]
    curves = sat_back.error(kfs["relative_step"], kfs["alignment"], kfs["second"], gradient=kfs["gradient_part"])
    multiple = scipy_stats.t.ppf(scipy_stats.norm.cdf(2.0), len(cal) - 1)
    assert sat_back.quantile == pytest.approx(multiple) and multiple > 2.0
    assert a["model_error"][0] == pytest.approx(curves + multiple * se, rel=1e-4)
    again = suite.analyse(pair, specs[:2], seed=3, progress=False, log=lambda s: None)
    assert again["edits"][1]["measured"] == res["edits"][1]["measured"]  # same seed, same numbers
    assert again["edits"][1]["estimates"] == res["edits"][1]["estimates"]


def test_measured_change_equals_the_engine_measurement(pair):
    from riemann import edits

    delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
    edit = edits.parse("dare:p=0.7")
    change = jax.tree.map(lambda e, d: e - d, edit(delta, key=suite.edit_key(0, edit.name)), delta)
    res = suite.analyse(pair, ["dare:p=0.7"], progress=False, log=lambda s: None, estimators=["first-order"])
    test = split.split_pair(pair, seed=0).batches  # estimates and measurements are on the test batches
    ref = riemann.estimate(pair.loss_fn, pair.post, change, test, method="measured")
    assert res["edits"][0]["measured"] == pytest.approx(ref.value, rel=1e-5, abs=1e-7)
    assert res["edits"][0]["stderr"]["measured"] == pytest.approx(ref.stderr, rel=1e-4)
    with pytest.raises(ValueError, match=r"unknown estimator\(s\)"):
        suite.analyse(pair, ["dare:p=0.7"], progress=False, log=lambda s: None, estimators=["magic"])


def test_cli_edits_lists_every_edit(capsys):
    assert main(["edits"]) == 0
    out = capsys.readouterr().out
    for name in ("dare", "della", "magnitude", "ties", "bitdelta", "lowrank", "expo", "biased_sign", "biased_product"):
        assert f"\n{name} [" in "\n" + out


def test_config_is_recorded(pair):
    assert pair.info["config"] == dataclasses.asdict(SMALL)


def test_random_edits_are_scored_over_nested_masks(pair):
    scorer = suite.Scorer(pair, seed=3, seeds=3, estimators=["first-order", "riemann"])
    dare = {p: suite.check_specs([f"dare:p={p}"])[0] for p in (0.5, 0.9)}
    leaf = lambda tree: np.asarray(tree["fc1"]["weight"])  # noqa: E731
    nonzero = leaf(scorer.delta) != 0
    dropped = {p: (leaf(scorer.edited(e)) == 0) & nonzero for p, e in dare.items()}
    assert dropped[0.5].sum() > 0 and (dropped[0.5] & ~dropped[0.9]).sum() == 0  # nested across p
    assert dropped[0.9].sum() > dropped[0.5].sum()
    again = (leaf(scorer.edited(dare[0.5], 1)) == 0) & nonzero
    assert (again != dropped[0.5]).any()  # another mask, another draw
    dare_rec, expo_rec = (scorer.record(scorer.score(e)) for e in suite.check_specs(["dare:p=0.9", "expo:alpha=0.3"]))
    assert len(dare_rec["measured_seeds"]) == 3 and dare_rec["key"]["masks"] == 3
    assert dare_rec["measured"] == pytest.approx(np.mean(dare_rec["measured_seeds"]), rel=1e-12)
    assert dare_rec["measured_std"] == pytest.approx(np.std(dare_rec["measured_seeds"], ddof=1), rel=1e-12)
    assert len(set(dare_rec["measured_seeds"])) == 3
    # Seeds are spent on measurement and shared estimators; per-edit estimators run on the first mask.
    assert len(dare_rec["estimates_seeds"]["first-order"]) == 3 and len(dare_rec["estimates_seeds"]["riemann"]) == 1
    assert dare_rec["identity"]["riemann"]["measured"] == dare_rec["measured_seeds"][0]
    # Each estimator is judged against the measurement of the masks it ran on.
    assert dare_rec["measured_for"] == {"riemann": dare_rec["measured_seeds"][0], "first-order": dare_rec["measured"]}
    # The paper's left rule gives the first-order term on the test batches for free (its t = 0 node).
    change = scorer.artefact(suite.check_specs(["dare:p=0.9"])[0]).change
    on_test = riemann.estimate(pair.loss_fn, pair.post, change, scorer.pair.batches, method="first-order").value
    assert dare_rec["first_order_test"] == pytest.approx(on_test, rel=1e-5, abs=1e-8)
    assert expo_rec["measured_seeds"] == [expo_rec["measured"]] and expo_rec["measured_std"] == 0.0
    assert expo_rec["key"] is None


def test_the_adaptive_rule_bounds_its_own_gap_on_the_suite(pair):
    specs = ["dare:p=0.5", "dare:p=0.99", "bitdelta", "expo:alpha=0.3", "magnitude:keep=0.8", "lowrank:fraction=0.5"]
    res = suite.analyse(pair, specs, estimators=["gauss-kronrod"], progress=False, log=lambda s: None)
    ident = res["agreement"]["gauss-kronrod"]["identity"]
    for r in res["edits"]:
        i = r["identity"]["gauss-kronrod"]
        assert i["converged"] and i["error"] > 0
        assert i["within_error"] == (abs(i["gap"]) <= i["error"] + i["resolution"])
    assert ident["within_error"] == 1.0 and ident["outside_error"] == [] and ident["not_converged"] == []


def _bf16_pair():
    """Two leaves stored in bfloat16: in ``moves`` an edit's change is several bfloat16 steps, in
    ``stays`` it is below half a step (a weight near 1.0 changed by about 5e-4)."""
    rng = np.random.default_rng(0)
    pre = {
        "moves": jnp.asarray(rng.uniform(-0.5, 0.5, 8), jnp.bfloat16),
        "stays": jnp.asarray(rng.uniform(0.75, 1.0, 8), jnp.bfloat16),
    }
    post = {"moves": (pre["moves"].astype(jnp.float32) + 8.0).astype(jnp.bfloat16), "stays": pre["stays"] + 0.25}
    batches = [jnp.asarray(rng.standard_normal((16, 8)), jnp.float32) for _ in range(12)]

    def loss(p, x):
        w = p["moves"].astype(jnp.float32) + p["stays"].astype(jnp.float32)
        return jnp.mean(jnp.sin(x @ w) ** 2)

    return Pair("bf16", "two bfloat16 leaves", pre, post, loss, batches, None, {})


def test_bfloat16_measures_the_rounded_model_that_would_be_saved():
    from analysis.jobs import export
    from analysis.study.artefact import UnmovedWarning

    pair = _bf16_pair()
    scorer = suite.Scorer(pair, estimators=["gauss-kronrod", "riemann"])
    (expo,) = suite.check_specs(["expo:alpha=0.01"])
    # The path's inner points are rounded to bfloat16, so the integrand is not the derivative of the
    # loss between them: the adaptive rule's loss-gap check sees it and does not converge, and the
    # record does not judge the in-sample identity there.
    with pytest.warns(UnmovedWarning, match=r"1 leaves: stays \(100.0%\)"), pytest.warns(riemann.NotConverged):
        rec = scorer.record(scorer.score(expo))
    assert rec["unmoved_fraction"] == pytest.approx(0.5)  # every entry of `stays`, none of `moves`
    assert rec["low_precision"] and rec["identity"]["gauss-kronrod"]["within_error"] is None
    with pytest.warns(UnmovedWarning, match="export expo:alpha=0.01"):  # export says so too
        saved = export.edited_params(pair.pre, pair.post, "expo:alpha=0.01")
    assert jnp.array_equal(saved["stays"], pair.post["stays"]) and not jnp.array_equal(
        saved["moves"], pair.post["moves"]
    )
    test = scorer.pair.batches
    direct = np.mean([float(pair.loss_fn(saved, b)) - float(pair.loss_fn(pair.post, b)) for b in test])
    assert rec["measured"] == pytest.approx(direct, rel=1e-5)  # the artefact itself, measured
    # The path ends on the artefact: integral + completeness gap = measured. (Its inner points are
    # rounded to bfloat16 too, so the integral alone is off by more than the quadrature's error.)
    with pytest.warns(UnmovedWarning):
        art = scorer.artefact(expo)
    path = riemann.integrate_path(pair.loss_fn, pair.post, art.change, test, rule="gauss-legendre", n=8, endpoints=True)
    resolution = rec["identity"]["gauss-kronrod"]["resolution"]  # float32 rounding of a loss difference
    assert path.value - path.gap == pytest.approx(rec["measured"], rel=0, abs=resolution)
    # The adaptive rule's loss-gap check sees the rounding: its stated error still bounds its distance
    # to the measurement, converged or not.
    kron = rec["identity"]["gauss-kronrod"]
    assert abs(kron["estimate"] - rec["measured"]) <= kron["error"] + resolution
    assert rec["identity"]["gauss-kronrod"]["estimate"] - path.gap == pytest.approx(
        rec["measured"], abs=rec["identity"]["gauss-kronrod"]["error"] + resolution
    )
    # An edit that moves nothing: measured 0 and every estimate exactly 0 (not the unrounded term).
    (tiny,) = suite.check_specs(["expo:alpha=0.0001"])
    small = dataclasses.replace(pair, post={"moves": pair.post["stays"], "stays": pair.post["stays"]})
    s2 = suite.Scorer(small, estimators=["riemann"])
    with pytest.warns(UnmovedWarning):
        r2 = s2.record(s2.score(tiny))
    assert r2["measured"] == 0.0 and r2["estimates"]["riemann"] == 0.0 and r2["unmoved_fraction"] == 1.0


def test_the_cross_fit_is_made_for_the_predictors_and_its_absence_is_warned(pair):
    from riemann import edits

    biased = edits.parse("biased_product:k=1.5")
    alone = suite.Scorer(pair, estimators=["first-order"], gradient_edits=[biased])
    assert alone.cross_fits == {} and alone.cross_fit_seconds == 0.0  # first-order keeps its own term
    given = suite.Scorer(pair, estimators=["first-order", "shared-curvature"], probes=1, gradient_edits=[biased])
    assert set(given.cross_fits) == {(biased.spec, 0)}
    scored = given.score(biased)
    assert scored.estimates["shared-curvature"][0].terms["first_in_sample"] == pytest.approx(
        scored.estimates["first-order"][0].value, rel=1e-5
    )
    not_given = suite.Scorer(pair, estimators=["first-order", "shared-curvature"], probes=1)
    with pytest.warns(UserWarning, match="built from the gradient but was not given"):
        bare = not_given.score(biased)
    assert "first_in_sample" not in bare.estimates["shared-curvature"][0].terms


def test_the_left_rule_reads_its_first_node_from_gradients_held_for_the_suite(pair, monkeypatch):
    # The paper's left rule starts at W_post, where every edit's path has the same gradient: the
    # scorer holds it per test batch and each edit spends 4 gradients per batch, with the same value
    # as computing all 5; Gauss-Legendre (no node at t = 0) is not given them. Too big to hold: 5.
    from riemann import edits

    edit = edits.parse("dare:p=0.5,k=0")
    held = suite.Scorer(pair, estimators=["riemann", "gauss-legendre"])
    assert held.start_gradients is not None and len(held.start_gradients) == len(held.pair.batches)
    monkeypatch.setattr(suite, "HELD_GRADIENT_BYTES", 0)
    not_held = suite.Scorer(pair, estimators=["riemann", "gauss-legendre"])
    assert not_held.start_gradients is None
    a, b = held.score(edit).estimates, not_held.score(edit).estimates
    assert (a["riemann"][0].cost["gradient"], b["riemann"][0].cost["gradient"]) == (4, 5)
    assert a["riemann"][0].value == pytest.approx(b["riemann"][0].value, rel=1e-6)
    assert a["gauss-legendre"][0].cost == b["gauss-legendre"][0].cost
    assert held.shared_record()["estimators"]["riemann"]["passes_per_batch"] == {"gradient": 1}
    assert "riemann" not in not_held.shared_record()["estimators"]
    sizes = sum(x.size for x in jax.tree.leaves(pair.post))
    assert suite.held_gradient_bytes(pair.post, 3) == 3 * 4 * sizes


def test_metrics_intervals_are_the_bootstrap_of_each_statistic():
    from analysis.study import stats

    rng = np.random.default_rng(3)
    meas = rng.standard_normal(30)
    meas[:4] = 0.0  # no sign, no log ratio
    pred = meas + 0.5 * rng.standard_normal(30)
    classes = np.array(riemann.CLASSES)
    pc, mc = classes[rng.integers(0, 3, 30)], classes[rng.integers(0, 3, 30)]
    got = suite.metrics(pred, meas, pc, mc, seed=4)
    one = {
        "spearman": lambda p, m, a, b: stats.spearman(p, m),
        "class_agreement": lambda p, m, a, b: float(np.mean(a == b)),
        "sign_agreement": lambda p, m, a, b: (
            float(np.mean(np.sign(p[m != 0]) == np.sign(m[m != 0]))) if (m != 0).any() else float("nan")
        ),
        "median_abs_log_ratio": lambda p, m, a, b: stats.median_abs_log_ratio(p, m),
    }
    for name, fn in one.items():
        want = stats.bootstrap_ci(fn, pred, meas, pc, mc, seed=4)
        assert got[f"{name}_ci95"] == pytest.approx(want, rel=1e-12), name
