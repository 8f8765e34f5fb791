"""Path integrals with parameters sharded FSDP-style and data sharded over a second mesh axis
give the single-device result (8 simulated CPU devices)."""

import jax
import numpy as np
import pytest

import riemann
from analysis.pairs.mlp import MLPConfig, build_pair

CFG = MLPConfig(
    inputs=16, hidden=32, classes=8, teacher_hidden=16, pre_steps=60, post_steps=40, batch=64, eval_batches=2
)


@pytest.fixture(scope="module")
def pair():
    return build_pair(CFG)


def _shard(pair):
    # Auto axes: XLA propagates shardings through the user's loss (explicit axes would ask every
    # loss function to annotate its own gathers).
    mesh = jax.make_mesh((4, 2), ("fsdp", "data"), axis_types=(jax.sharding.AxisType.Auto,) * 2)

    def spec(x):
        return jax.P("fsdp") if x.shape[0] % 4 == 0 else jax.P()

    def place(t):
        return jax.tree.map(lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec(x))), t)

    data = jax.sharding.NamedSharding(mesh, jax.P("data"))
    batches = [tuple(jax.device_put(a, data) for a in b) for b in pair.batches]
    return place(pair.pre), place(pair.post), batches


@pytest.mark.parametrize("rule,n", [("left", 5), ("gauss-legendre", 4)])
def test_fsdp_and_data_parallel_match_single_device(pair, rule, n):
    delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
    ref = riemann.integrate_path(pair.loss_fn, pair.pre, delta, pair.batches, rule=rule, n=n, endpoints=True)
    pre_s, post_s, batches_s = _shard(pair)
    delta_s = jax.tree.map(lambda a, b: b - a, pre_s, post_s)
    res = riemann.integrate_path(pair.loss_fn, pre_s, delta_s, batches_s, rule=rule, n=n, endpoints=True)
    assert res.value == pytest.approx(ref.value, rel=1e-5)
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref.grad), jax.tree.leaves(res.grad)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    w = res.grad["fc1"]["weight"]
    assert w.sharding.spec[0] == "fsdp" and len(w.sharding.device_set) == 8


def test_sharded_second_order_and_measured_match(pair):
    delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
    change = jax.tree.map(lambda d: -0.5 * d, delta)
    pre_s, post_s, batches_s = _shard(pair)
    change_s = jax.tree.map(lambda a, b: -0.5 * (b - a), pre_s, post_s)
    for method in ("second-order", "measured"):
        ref = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method=method)
        res = riemann.estimate(pair.loss_fn, post_s, change_s, batches_s, method=method)
        assert res.value == pytest.approx(ref.value, rel=1e-5, abs=1e-7), method


def test_sharded_shared_curvature_and_forward_mode_match(pair):
    delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
    pre_s, post_s, batches_s = _shard(pair)
    delta_s = jax.tree.map(lambda a, b: b - a, pre_s, post_s)
    ref = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=2, key=jax.random.key(0))
    res = riemann.shared_curvature(pair.loss_fn, post_s, batches_s, probes=2, key=jax.random.key(0))
    for a, b in zip(jax.tree.leaves(ref.diagonal), jax.tree.leaves(res.diagonal)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)  # same probes under sharding
    assert res.estimate(delta_s).value == pytest.approx(ref.estimate(delta).value, rel=1e-5)
    fwd = riemann.integrate_path(pair.loss_fn, pre_s, delta_s, batches_s, rule="gauss-legendre", n=4, mode="forward")
    rev = riemann.integrate_path(pair.loss_fn, pair.pre, delta, pair.batches, rule="gauss-legendre", n=4)
    assert fwd.value == pytest.approx(rev.value, rel=1e-5)


def test_sharded_saturation_curves_match(pair):
    # The random-sign copies are drawn per leaf name inside one compiled function: the same signs,
    # and so the same curves, whether ΔW is on one device or sharded FSDP-style.
    delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
    pre_s, post_s, batches_s = _shard(pair)
    delta_s = jax.tree.map(lambda a, b: b - a, pre_s, post_s)
    kw = dict(key=jax.random.key(5), probes=2, coherent_steps=[0.5, 1.0], noise_steps=[0.3, 1.0, 3.0])
    curves = []
    for post, d, batches in ((pair.post, delta, pair.batches), (post_s, delta_s, batches_s)):
        sc = riemann.shared_curvature(pair.loss_fn, post, batches, probes=1, key=jax.random.key(0))
        quadratic = lambda x, sc=sc: sc.estimate(x).terms["second"]  # noqa: E731
        curves.append(riemann.saturation(pair.loss_fn, post, d, batches, quadratic, sc.grad, **kw))
    ref, res = curves
    for a, b in ((ref.coherent, res.coherent), (ref.noise, res.noise)):
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(b.quadratic, a.quadratic, rtol=1e-5)
        np.testing.assert_allclose(b.errors, a.errors, rtol=1e-3, atol=1e-7)
    assert res.scale == pytest.approx(ref.scale, rel=1e-6)
