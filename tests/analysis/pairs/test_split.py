"""Calibration and test batches: disjoint, seeded, and nothing fitted on calibration data sees a
test batch."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from analysis.pairs import split
from analysis.pairs.pair import Pair
from analysis.study import suite


def _pair(n=12):
    """A least-squares pair: ``loss = mean((x·w − y)²)``, pre at zero, post fitted; n batches."""
    rng = np.random.default_rng(0)
    w_true = rng.standard_normal(6).astype(np.float32)
    batches = []
    for _ in range(n):
        x = rng.standard_normal((32, 6)).astype(np.float32)
        batches.append((jnp.asarray(x), jnp.asarray(x @ w_true + 0.3 * rng.standard_normal(32).astype(np.float32))))

    def loss(p, b):
        x, y = b
        return jnp.mean((x @ p["w"] - y) ** 2)

    def accuracy(p, bs):  # share of predictions within 1 of the target
        return float(np.mean([np.mean(np.abs(np.asarray(x @ p["w"] - y)) < 1.0) for x, y in bs]))

    pre = {"w": jnp.zeros(6, jnp.float32)}
    post = {"w": jnp.asarray(0.9 * w_true)}
    return Pair("lsq", "least squares", pre, post, loss, batches, accuracy, {})


def test_choose_is_disjoint_seeded_and_covers_every_batch():
    a, b = split.choose(12, seed=0), split.choose(12, seed=0)
    assert a == b
    assert set(a.calibration).isdisjoint(a.test)
    assert sorted(a.calibration + a.test) == list(range(12))
    assert len(a.calibration) == 4 and len(a.test) == 8
    assert split.choose(12, seed=1) != a  # another seed, another split
    with pytest.raises(ValueError, match=r"has 10 evaluation batches; a split needs at least 12"):
        split.choose(10)
    with pytest.raises(ValueError, match="calibration=0"):
        split.choose(12, calibration=0)


def test_split_pair_records_the_split_and_keeps_a_split_pair():
    pair = split.split_pair(_pair(), seed=3)
    s = split.choose(12, seed=3)
    assert pair.info["split"]["calibration_batches"] == list(s.calibration)
    assert len(pair.calibration) == 4 and len(pair.batches) == 8
    assert split.split_pair(pair, seed=99) is pair


def test_poisoning_a_test_batch_changes_no_calibration_statistic():
    pair = _pair()
    s = split.choose(12, seed=0)
    poisoned_batches = list(pair.batches)
    x, y = poisoned_batches[s.test[0]]
    poisoned_batches[s.test[0]] = (x * 1e3, y - 1e3)  # a wildly different test batch
    poisoned = dataclasses.replace(pair, batches=poisoned_batches)
    clean = suite.Scorer(pair, seed=0, probes=2)
    dirty = suite.Scorer(poisoned, seed=0, probes=2)
    # Everything fitted before any edit is scored: the shared gradient, the curvature, the
    # tolerance, and a data-dependent edit's mask.
    np.testing.assert_array_equal(clean.shared.gradient.grad["w"], dirty.shared.gradient.grad["w"])
    np.testing.assert_array_equal(clean.shared.curvature.diagonal["w"], dirty.shared.curvature.diagonal["w"])
    assert clean.tolerance == dirty.tolerance and clean.accuracy_tolerance == dirty.accuracy_tolerance
    assert clean.tolerance["noise_part"] > 0 and clean.accuracy_tolerance["value"] > 0
    biased = suite.check_specs(["biased_sign:k=0.5"])[0]
    np.testing.assert_array_equal(clean.edited(biased)["w"], dirty.edited(biased)["w"])
    # The test batches do see it: the measured change moves.
    expo = suite.check_specs(["expo:alpha=0.5"])[0]
    a, b = clean.score(expo), dirty.score(expo)
    assert a.measured[0].value != pytest.approx(b.measured[0].value, rel=1e-3)
    assert a.accuracy[0] != b.accuracy[0] and clean.accuracy_post != dirty.accuracy_post


def test_a_pair_with_too_few_batches_is_refused_by_the_suite():
    with pytest.raises(ValueError, match="a split needs at least 12"):
        suite.Scorer(_pair(6))
    assert len(suite.Scorer(_pair(9), calibration=1).pair.batches) == 8  # fewer calibration batches: allowed
