"""End to end on a small trained pair: the engine's completeness and the suite's records."""

import dataclasses

import jax
import pytest

import riemann
from analysis.cli import main
from analysis.pairs.mlp import MLPConfig, build_pair
from analysis.study import suite

SMALL = MLPConfig(hidden=24, teacher_hidden=16, pre_steps=150, post_steps=100, batch=128, eval_batches=3)


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
        # The shared first order is the per-edit first-order estimate of the engine.
        assert r["estimates"]["first-order"] == pytest.approx(
            r["terms"]["shared-curvature"]["first"], rel=1e-4, abs=1e-7
        )
        assert r["estimates"]["second-order"] == pytest.approx(
            r["terms"]["second-order"]["first"] + r["terms"]["second-order"]["second"], rel=1e-6
        )
    assert res["agreement"]["gauss-legendre"]["spearman"] == pytest.approx(1.0)
    again = suite.analyse(pair, specs[:2], seed=3, progress=False, log=lambda s: None)
    assert again["edits"][1]["measured"] == res["edits"][1]["measured"]  # same seed, same numbers
    assert again["edits"][1]["estimates"] == res["edits"][1]["estimates"]


def test_measured_change_equals_the_engine_measurement(pair):
    from riemann import edits

    delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
    edit = edits.parse("dare:p=0.7")
    change = jax.tree.map(lambda e, d: e - d, edit(delta, key=suite.edit_key(0, edit.spec)), delta)
    res = suite.analyse(pair, ["dare:p=0.7"], progress=False, log=lambda s: None, estimators=["first-order"])
    ref = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="measured")
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
