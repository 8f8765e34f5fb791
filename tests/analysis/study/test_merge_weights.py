"""choose_weights on tiny pairs sharing a base: a complete, JSON-ready record whose figures agree
with each other, and a refusal of pairs that do not share a base."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.pairs.pair import Pair
from analysis.study.merge_weights import choose_weights

pytestmark = pytest.mark.isolated  # a child pytest process (tests/conftest.py)


def _loss(params, batch):
    x, y = batch
    logits = jnp.tanh(x @ params["w1"]) @ params["w2"]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])


def _tiny_pairs(n: int = 3):
    """A small MLP base and ``n`` fine-tunes (a few gradient steps each on its own teacher), with 12
    batches per task."""
    rng = np.random.default_rng(0)
    base = {
        "w1": jnp.asarray(rng.normal(size=(4, 6)) / 2.0, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(6, 3)) / 2.5, jnp.float32),
    }
    grad = jax.jit(jax.grad(_loss))
    pairs = []
    for i in range(n):
        r = np.random.default_rng(10 + i)
        teacher = r.normal(size=(4, 3))
        batches = []
        for _ in range(16):
            x = r.normal(size=(24, 4))
            batches.append((jnp.asarray(x, jnp.float32), jnp.asarray(np.argmax(x @ teacher, axis=1), jnp.int32)))
        post = base
        for s in range(30):
            g = grad(post, batches[12 + s % 4])  # trained on its own 4 batches, evaluated on the other 12
            post = jax.tree.map(lambda a, b: a - jnp.float32(0.5) * b, post, g)
        pairs.append(Pair(f"tiny/{i}", "a tiny fine-tune", base, post, _loss, batches[:12], None, {}))
    return pairs


def test_choose_weights_records_a_recommendation_its_measurement_and_the_grids():
    res = choose_weights(_tiny_pairs(), shared_grid=(0.0, 0.5, 1.0, 1.5), vector_grid=(0.0, 0.75, 1.5))
    json.dumps(res)  # JSON-ready
    assert res["calibration_batches"] == [4, 4, 4] and res["test_batches"] == [8, 8, 8]
    assert res["cost_per_calibration_batch"] == {"gradient": 1, "hvp": 3}
    assert res["grid"]["shared"]["points"] == 4 and res["grid"]["vector"]["points"] == 27
    for kind in ("shared", "vector"):
        r = res["recommended"][kind]
        lam = np.asarray(r["recommendation"]["lam"])
        assert np.all((lam >= 0.0) & (lam <= 1.5))
        assert r["measured_objective"] == pytest.approx(max(r["measured"]))
        assert r["predicted_objective"] == pytest.approx(r["recommendation"]["value"])
        best = r["best_grid_objective"]
        assert r["gap_percent"] == pytest.approx(100 * (r["measured_objective"] - best) / abs(best))
    assert len(set(res["recommended"]["shared"]["recommendation"]["lam"])) == 1
    # The best of both grids is no worse than either grid's best.
    best_all = res["best_of_all_grids"]["measured_objective"]
    assert best_all <= min(g["best_measured_objective"] for g in res["grid"].values())
    # Each task's own fine-tune costs it nothing: its ΔL at λ = e_i is 0 (predicted and measured).
    stats = res["statistics"]
    assert [s["own"] for s in stats] == [0, 1, 2]
    assert all(s["asymmetry"] < 1e-3 for s in stats)
    # Merging hurts: at λ = 1/n every task's loss rises, as predicted in sign.
    avg = res["reference"]["average (λ = 1/n)"]
    assert all(m > 0 for m in avg["measured"]) and all(p > 0 for p in avg["predicted"])


def test_pairs_without_a_common_base_are_refused():
    pairs = _tiny_pairs(2)
    other = pairs[1]
    moved = Pair(
        other.name, other.description, jax.tree.map(lambda x: x + 1.0, other.pre), other.post, _loss,
        other.batches, None, {},
    )  # fmt: skip
    with pytest.raises(ValueError, match="do not share a base"):
        choose_weights([pairs[0], moved], vector_grid=None)
    with pytest.raises(ValueError, match="at least two"):
        choose_weights(pairs[:1])
