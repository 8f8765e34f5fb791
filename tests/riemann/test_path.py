import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann

KEY = jax.random.key(0)


def quadratic_problem(dtype=jnp.float32):
    """L(w) = ½ wᵀ A w + bᵀ w per batch (A, b from the batch), on a two-leaf tree."""
    k1, k2, k3, k4 = jax.random.split(KEY, 4)
    m = jax.random.normal(k1, (5, 5), dtype)
    batch = {"A": m @ m.T / 5 + jnp.eye(5, dtype=dtype), "b": jax.random.normal(k2, (5,), dtype)}
    start = {"u": jax.random.normal(k3, (3,), dtype), "v": jax.random.normal(k4, (2,), dtype)}
    direction = {"u": jnp.array([0.5, -1.0, 0.25], dtype), "v": jnp.array([1.0, 2.0], dtype)}

    def loss(p, batch):
        w = jnp.concatenate([p["u"], p["v"]])
        return 0.5 * w @ batch["A"] @ w + batch["b"] @ w

    return loss, start, direction, batch


def flat(tree):
    return jnp.concatenate([tree["u"], tree["v"]])


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_left_rule_on_a_quadratic_matches_its_closed_form(n):
    # integrand f(t) = g0·d + t·dᵀAd, so the left sum is g0·d + (n−1)/(2n)·dᵀAd exactly.
    loss, start, direction, batch = quadratic_problem()
    w, d = flat(start), flat(direction)
    g0d = float((batch["A"] @ w + batch["b"]) @ d)
    dad = float(d @ batch["A"] @ d)
    res = riemann.integrate_path(loss, start, direction, [batch], rule="left", n=n)
    # float32 round-off is relative to the terms summed, not to their (smaller) difference.
    assert res.value == pytest.approx(g0d + (n - 1) / (2 * n) * dad, abs=1e-6 * (abs(g0d) + abs(dad)))


@pytest.mark.parametrize("rule,n", [("midpoint", 1), ("trapezoid", 2), ("simpson", 3), ("gauss-legendre", 1)])
def test_rules_of_degree_one_are_exact_on_a_quadratic(rule, n):
    loss, start, direction, batch = quadratic_problem()
    res = riemann.integrate_path(loss, start, direction, [batch], rule=rule, n=n, endpoints=True)
    exact = float(loss(jax.tree.map(jnp.add, start, direction), batch) - loss(start, batch))
    assert res.value == pytest.approx(exact, rel=1e-5)
    assert abs(res.gap) <= 1e-5 * abs(exact)


@pytest.mark.parametrize("rule,order", [("left", 1), ("midpoint", 2), ("trapezoid", 2), ("simpson", 4)])
def test_order_of_convergence_on_a_polynomial_path(rule, order):
    # L(w) = Σ w⁶ gives a degree-5 integrand along the path: each rule's error must shrink as
    # (cells)^-order. float64 so that round-off does not flatten the slope.
    with jax.enable_x64(True):
        start = {"w": jnp.array([0.3, -0.7, 1.1], jnp.float64)}
        direction = {"w": jnp.array([0.9, 0.8, -0.6], jnp.float64)}

        def loss(p, _):
            return jnp.sum(p["w"] ** 6)

        exact = float(loss(jax.tree.map(jnp.add, start, direction), None) - loss(start, None))
        ns = [9, 17, 33, 65] if rule in ("trapezoid", "simpson") else [8, 16, 32, 64]
        errs = [abs(riemann.integrate_path(loss, start, direction, [None], rule=rule, n=n).value - exact) for n in ns]
    cells = np.array(ns) - (1 if rule in ("trapezoid", "simpson") else 0)
    slope = -np.polyfit(np.log(cells), np.log(errs), 1)[0]
    assert slope == pytest.approx(order, abs=0.15)


def test_gauss_legendre_is_exact_on_its_degree():
    with jax.enable_x64(True):
        start = {"w": jnp.array([0.3, -0.7], jnp.float64)}
        direction = {"w": jnp.array([0.9, -0.6], jnp.float64)}

        def loss(p, _):
            return jnp.sum(p["w"] ** 6)  # integrand of degree 5 = 2·3 − 1

        exact = float(loss(jax.tree.map(jnp.add, start, direction), None) - loss(start, None))
        assert riemann.integrate_path(
            loss, start, direction, [None], rule="gauss-legendre", n=3
        ).value == pytest.approx(exact, rel=1e-12)
        assert (
            abs(riemann.integrate_path(loss, start, direction, [None], rule="gauss-legendre", n=2).value - exact) > 1e-6
        )


def logistic_problem(num_batches=3):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(k1, (num_batches, 32, 6))
    y = (jax.random.uniform(k2, (num_batches, 32)) < 0.5).astype(jnp.float32)
    start = {"w": jax.random.normal(k3, (6,)), "b": jnp.zeros(())}
    direction = {"w": 2.0 * jax.random.normal(k4, (6,)), "b": jnp.array(0.5)}

    def loss(p, batch):
        xb, yb = batch
        z = xb @ p["w"] + p["b"]
        return jnp.mean(jnp.logaddexp(0.0, z) - yb * z)

    return loss, start, direction, [(x[i], y[i]) for i in range(num_batches)]


def test_grad_accumulator_reproduces_value_and_scores_other_directions():
    loss, start, direction, batches = logistic_problem()
    res = riemann.integrate_path(loss, start, direction, batches, rule="simpson", n=5)
    # Independent computation: explicit per-node gradients, weights and batch mean.
    nodes, weights = riemann.quadrature("simpson", 5)
    grads = [
        jax.grad(loss)(jax.tree.map(lambda s, d, t=t: s + t * d, start, direction), b) for t in nodes for b in batches
    ]
    expected = jax.tree.map(
        lambda *g: sum(w * gi for w, gi in zip(np.repeat(weights, len(batches)), g)) / len(batches), *grads
    )
    for leaf in ("w", "b"):
        np.testing.assert_allclose(res.grad[leaf], expected[leaf], rtol=1e-5, atol=1e-7)
    assert res.value == pytest.approx(float(sum(jnp.vdot(res.grad[k], direction[k]) for k in ("w", "b"))), rel=1e-6)
    other = {"w": jnp.arange(6.0), "b": jnp.array(-1.0)}
    assert res.score(other) == pytest.approx(
        float(jnp.vdot(expected["w"], other["w"]) + expected["b"] * other["b"]), rel=1e-5
    )
    assert sum(res.modules.values()) == pytest.approx(res.value, rel=1e-6)
    assert set(res.modules) == {"w", "b"}


def test_batches_are_averaged_and_node_losses_are_the_losses():
    loss, start, direction, batches = logistic_problem()
    res = riemann.integrate_path(loss, start, direction, batches, rule="left", n=4)
    singles = [riemann.integrate_path(loss, start, direction, [b], rule="left", n=4).value for b in batches]
    assert res.value == pytest.approx(np.mean(singles), rel=1e-5)
    np.testing.assert_allclose(res.batch_values, singles, rtol=1e-5)
    assert res.stderr == pytest.approx(np.std(singles, ddof=1) / np.sqrt(3), rel=1e-4)
    for t, node_loss in zip(res.nodes, res.losses):
        p = jax.tree.map(lambda s, d, t=t: s + t * d, start, direction)
        assert node_loss == pytest.approx(float(np.mean([loss(p, b) for b in batches])), rel=1e-5)
    assert res.integrand @ res.weights == pytest.approx(res.value, rel=1e-5)


def test_logistic_regression_completeness():
    loss, start, direction, batches = logistic_problem()
    gl = riemann.integrate_path(loss, start, direction, batches, rule="gauss-legendre", n=8, endpoints=True)
    left = riemann.integrate_path(loss, start, direction, batches, rule="left", n=5, endpoints=True)
    assert gl.relative_gap < 1e-4
    assert left.relative_gap > 10 * gl.relative_gap  # the paper's rule is visibly less exact
    assert gl.loss_start == pytest.approx(left.loss_start, rel=1e-6)
    assert left.forward == 1 and gl.forward == 2  # left reuses t = 0 for L(start)


def test_endpoint_losses_are_reused_from_nodes():
    loss, start, direction, batches = logistic_problem()
    res = riemann.integrate_path(loss, start, direction, batches, rule="trapezoid", n=3, endpoints=True)
    assert res.forward == 0
    assert res.loss_start == pytest.approx(res.losses[0]) and res.loss_end == pytest.approx(res.losses[-1])


def test_compiles_once_per_shape_across_rules_and_node_counts():
    loss0, start, direction, batches = logistic_problem()
    # Traced once per compilation of the step that calls it: a second trace raises.
    loss = eqx.debug.assert_max_traces(loss0, max_traces=1)
    for rule, n in [("left", 5), ("gauss-legendre", 3), ("simpson", 7)]:
        riemann.integrate_path(loss, start, direction, batches, rule=rule, n=n)
    assert eqx.debug.get_num_traces(loss) == 1


def test_adaptive_refinement_reuses_nested_evaluations():
    loss, start, direction, batches = logistic_problem()
    res = riemann.integrate_adaptive(loss, start, direction, batches, rule="trapezoid", n=2, rtol=1e-4, max_n=129)
    assert res.relative_gap <= 1e-4
    assert res.evaluations == res.n  # 2 → 3 → 5 → 9 …: every node evaluated exactly once
    direct = riemann.integrate_path(loss, start, direction, batches, rule="trapezoid", n=res.n)
    assert res.value == pytest.approx(direct.value, rel=1e-5)
    np.testing.assert_allclose(res.losses, direct.losses, rtol=1e-6)
    np.testing.assert_allclose(res.batch_values, direct.batch_values, rtol=1e-5)
    for leaf in ("w", "b"):
        np.testing.assert_allclose(res.grad[leaf], direct.grad[leaf], rtol=1e-5, atol=1e-7)


def test_adaptive_gauss_legendre_restarts_and_counts_all_work():
    loss, start, direction, batches = logistic_problem()
    res = riemann.integrate_adaptive(loss, start, direction, batches, rule="gauss-legendre", n=1, rtol=1e-6)
    assert res.relative_gap <= 1e-6
    assert res.evaluations == 2 * res.n - 1  # 1 + 2 + 4 + … + n


def test_bfloat16_parameters_accumulate_in_float32():
    loss, start, direction, batches = logistic_problem()

    def cast(t):
        return jax.tree.map(lambda x: x.astype(jnp.bfloat16), t)

    def loss16(p, b):
        return loss(jax.tree.map(lambda x: x.astype(jnp.float32), p), b)

    res = riemann.integrate_path(loss16, cast(start), cast(direction), batches)
    assert res.grad["w"].dtype == jnp.float32
    ref = riemann.integrate_path(
        loss,
        jax.tree.map(lambda x: x.astype(jnp.float32), cast(start)),
        jax.tree.map(lambda x: x.astype(jnp.float32), cast(direction)),
        batches,
    )
    assert res.value == pytest.approx(ref.value, rel=2e-2)


def test_sharded_parameters_give_the_single_device_result():
    loss, start, direction, batches = logistic_problem()
    mesh = jax.make_mesh((8,), ("fsdp",))
    rep = jax.sharding.NamedSharding(mesh, jax.P())
    big = {"w": jnp.tile(start["w"], 4), "b": start["b"]}  # 24 entries: divisible by 8
    dbig = {"w": jnp.tile(direction["w"], 4), "b": direction["b"]}
    x4 = [(jnp.tile(x, (1, 4)) / 2.0, y) for x, y in batches]
    shard = {"w": jax.sharding.NamedSharding(mesh, jax.P("fsdp")), "b": rep}
    ref = riemann.integrate_path(loss, big, dbig, x4, rule="gauss-legendre", n=3)
    res = riemann.integrate_path(
        loss, jax.device_put(big, shard), jax.device_put(dbig, shard), x4, rule="gauss-legendre", n=3
    )
    assert res.value == pytest.approx(ref.value, rel=1e-5)
    assert res.grad["w"].sharding.spec == jax.P("fsdp")


def test_inputs_are_not_modified():
    loss, start, direction, batches = logistic_problem()
    start_np = jax.tree.map(np.array, start)
    direction_np = jax.tree.map(np.array, direction)
    copies = jax.tree.map(np.copy, (start_np, direction_np))
    riemann.integrate_path(loss, start_np, direction_np, batches, endpoints=True)
    riemann.estimate(loss, start_np, direction_np, batches, method="second-order")
    for a, b in zip(jax.tree.leaves((start_np, direction_np)), jax.tree.leaves(copies)):
        np.testing.assert_array_equal(a, b)
    # Device arrays given by the caller stay alive (only our own accumulator is donated).
    riemann.integrate_path(loss, start, direction, batches)
    assert not start["w"].is_deleted() and float(jnp.sum(start["w"])) == pytest.approx(float(np.sum(start_np["w"])))


# ---- bad input ---------------------------------------------------------------------------


def test_structure_mismatch_names_the_leaf():
    loss, start, direction, batches = logistic_problem()
    with pytest.raises(ValueError, match=r"in start but not in direction: \['b'\]"):
        riemann.integrate_path(loss, start, {"w": direction["w"]}, batches)


def test_shape_and_dtype_mismatch_name_the_leaf_and_both_sides():
    loss, start, direction, batches = logistic_problem()
    with pytest.raises(ValueError, match=r"leaf 'w': start has shape \(6,\) dtype float32, direction has shape \(5,\)"):
        riemann.integrate_path(loss, start, {**direction, "w": direction["w"][:5]}, batches)
    with pytest.raises(ValueError, match=r"leaf 'w'.*dtype float32.*dtype bfloat16"):
        riemann.integrate_path(loss, start, {**direction, "w": direction["w"].astype(jnp.bfloat16)}, batches)


def test_nonfinite_parameters_name_the_leaf():
    loss, start, direction, batches = logistic_problem()
    with pytest.raises(FloatingPointError, match=r"start has non-finite values.*\['b'\]"):
        riemann.integrate_path(loss, {**start, "b": jnp.array(jnp.nan)}, direction, batches)


def test_nonfinite_loss_names_the_node():
    # log(1 − t) blows up at t = 1: finite on the left rule's nodes, infinite at the right rule's last.
    def loss(p, _):
        return -jnp.log(1.0 - p["w"][0])

    start, direction = {"w": jnp.array([0.0, 0.0])}, {"w": jnp.array([1.0, 0.0])}
    riemann.integrate_path(loss, start, direction, [None], rule="left", n=4)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at node t=1 \(batch 0\)"):
        riemann.integrate_path(loss, start, direction, [None], rule="right", n=4)


def test_nonfinite_gradient_names_node_and_leaf():
    def loss(p, _):
        return jnp.sqrt(p["a"][0]) + jnp.sum(p["b"])  # d/da sqrt at 0 is inf

    start, direction = {"a": jnp.array([0.0]), "b": jnp.ones(2)}, {"a": jnp.array([1.0]), "b": jnp.ones(2)}
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at node t=0 .*\['a'\]"):
        riemann.integrate_path(loss, start, direction, [None], rule="left", n=2)


@pytest.mark.parametrize("kwargs,match", [({"rule": "gauss"}, "accepted rules"), ({"n": 0}, ">= 1")])
def test_bad_rule_or_n(kwargs, match):
    loss, start, direction, batches = logistic_problem()
    with pytest.raises(ValueError, match=match):
        riemann.integrate_path(loss, start, direction, batches, **kwargs)


def test_empty_batches():
    loss, start, direction, _ = logistic_problem()
    with pytest.raises(ValueError, match="batches is empty"):
        riemann.integrate_path(loss, start, direction, [])
    with pytest.raises(ValueError, match="batches is empty"):
        riemann.integrate_path(loss, start, direction, iter(()))


def test_forward_mode_gives_the_same_integral_without_a_gradient():
    loss, start, direction, batches = logistic_problem()
    for rule, n in (("left", 5), ("gauss-legendre", 4)):
        rev = riemann.integrate_path(loss, start, direction, batches, rule=rule, n=n, endpoints=True)
        fwd = riemann.integrate_path(loss, start, direction, batches, rule=rule, n=n, endpoints=True, mode="forward")
        assert fwd.value == pytest.approx(rev.value, rel=1e-5)
        np.testing.assert_allclose(fwd.batch_values, rev.batch_values, rtol=1e-5)
        np.testing.assert_allclose(fwd.losses, rev.losses, rtol=1e-6)
        assert fwd.gap == pytest.approx(rev.gap, rel=1e-4, abs=1e-7)
        assert fwd.grad is None and fwd.modules == {}
    with pytest.raises(ValueError, match="without a gradient accumulator"):
        fwd.score(direction)
    with pytest.raises(ValueError, match="mode='backward'"):
        riemann.integrate_path(loss, start, direction, batches, mode="backward")
    est = riemann.estimate(loss, start, direction, batches, mode="forward")
    assert est.value == pytest.approx(riemann.estimate(loss, start, direction, batches).value, rel=1e-5)


@pytest.mark.parametrize("mode", ["accumulate", "forward", "leaves"])
@pytest.mark.parametrize("rule,n", [("left", 5), ("trapezoid", 3)])
def test_known_gradients_at_the_start_replace_the_first_node(mode, rule, n):
    # Two batches: the node at t = 0 reads ∇L_b(start) and L_b(start) given per batch instead of a
    # pass, one gradient fewer per batch, and the result is the one the pass would have given.
    loss, start, direction, batch = quadratic_problem()
    other = {"A": batch["A"] * 2.0, "b": -batch["b"]}
    batches = [batch, other]
    grads = list(riemann.batch_gradients(loss, start, batches))
    losses = [float(loss(start, b)) for b in batches]
    plain = riemann.integrate_path(loss, start, direction, batches, rule=rule, n=n, mode=mode, endpoints=True)
    known = riemann.integrate_path(
        loss,
        start,
        direction,
        batches,
        rule=rule,
        n=n,
        mode=mode,
        endpoints=True,
        start_gradients=grads,
        start_losses=losses,
    )
    assert known.evaluations == plain.evaluations - 1
    np.testing.assert_allclose(known.batch_values, plain.batch_values, rtol=1e-6)
    np.testing.assert_allclose(known.integrand, plain.integrand, rtol=1e-6)
    assert known.loss_start == pytest.approx(plain.loss_start, rel=1e-6)
    for k, v in plain.modules.items():
        assert known.modules[k] == pytest.approx(v, rel=1e-5, abs=1e-6)
    if mode == "accumulate":
        np.testing.assert_allclose(flat(known.grad), flat(plain.grad), rtol=1e-6)
    # Wrong gradients give a different answer: they are used, not recomputed.
    shifted = [jax.tree.map(lambda x: x + 1.0, g) for g in grads]
    off = riemann.integrate_path(
        loss, start, direction, batches, rule=rule, n=n, mode=mode, start_gradients=shifted, start_losses=losses
    )
    w = riemann.quadrature(rule, n)[1][0]
    assert off.value - plain.value == pytest.approx(w * float(jnp.sum(flat(direction))), rel=1e-5)


def test_known_start_gradients_are_checked():
    loss, start, direction, batch = quadratic_problem()
    g = next(riemann.batch_gradients(loss, start, [batch]))
    with pytest.raises(ValueError, match="go together"):
        riemann.integrate_path(loss, start, direction, [batch], start_gradients=[g])
    with pytest.raises(ValueError, match="1 batches"):
        riemann.integrate_path(loss, start, direction, [batch], start_gradients=[g, g], start_losses=[0.0, 0.0])
    with pytest.raises(ValueError, match="no node at t = 0"):
        riemann.integrate_path(
            loss, start, direction, [batch], rule="midpoint", start_gradients=[g], start_losses=[0.0]
        )
    with pytest.raises(ValueError, match=r"start_gradients\[0\]"):
        riemann.integrate_path(loss, start, direction, [batch], start_gradients=[{"u": g["u"]}], start_losses=[0.0])
    with pytest.raises(ValueError, match="adaptive rule"):
        riemann.estimate(loss, start, direction, [batch], rule="gauss-kronrod", start_gradients=[g], start_losses=[0.0])
    with pytest.raises(ValueError, match="not 'measured'"):
        riemann.estimate(loss, start, direction, [batch], method="measured", start_gradients=[g], start_losses=[0.0])


def test_estimate_with_known_start_gradients_costs_a_gradient_less():
    loss, start, direction, batch = quadratic_problem()
    g = list(riemann.batch_gradients(loss, start, [batch]))
    kw = {"start_gradients": g, "start_losses": [float(loss(start, batch))]}
    plain, known = (riemann.estimate(loss, start, direction, [batch], **k) for k in ({}, kw))
    assert (plain.cost["gradient"], known.cost["gradient"]) == (5, 4)
    assert known.value == pytest.approx(plain.value, rel=1e-6)
    assert known.terms["first"] == pytest.approx(plain.terms["first"], rel=1e-6)
    first = riemann.estimate(loss, start, direction, [batch], method="first-order", **kw)
    assert first.cost["gradient"] == 0 and first.value == pytest.approx(plain.terms["first"], rel=1e-6)


def _tanh_problem():
    """A non-polynomial loss over three batches, on a two-leaf tree."""
    keys = jax.random.split(KEY, 5)
    start = {"u": jax.random.normal(keys[0], (4, 3)), "v": jax.random.normal(keys[1], (3,))}
    direction = {"u": 0.5 * jax.random.normal(keys[2], (4, 3)), "v": jax.random.normal(keys[3], (3,))}
    batches = list(jax.random.normal(keys[4], (3, 6, 4)))

    def loss(p, x):
        return jnp.mean(jnp.tanh(x @ p["u"] + p["v"][None, :]) ** 2)

    return loss, start, direction, batches


RULES = [("left", 5), ("right", 5), ("midpoint", 5), ("trapezoid", 5), ("simpson", 5), ("gauss-legendre", 3)]


@pytest.mark.parametrize("mode", ["forward", "leaves"])
def test_rules_from_shared_nodes_equal_each_rule_run_alone(mode):
    loss, start, direction, batches = _tanh_problem()
    shared = riemann.integrate_rules(loss, start, direction, batches, RULES, endpoints=True, mode=mode)
    assert list(shared) == RULES
    for (rule, n), res in shared.items():
        alone = riemann.integrate_path(loss, start, direction, batches, rule=rule, n=n, endpoints=True, mode=mode)
        # The same per-node values, weighted in the same order: the same numbers.
        assert res.value == alone.value, rule
        np.testing.assert_array_equal(res.batch_values, alone.batch_values)
        np.testing.assert_array_equal(res.integrand, alone.integrand)
        np.testing.assert_array_equal(res.nodes, alone.nodes)
        assert res.modules == alone.modules and (res.rule, res.n, res.evaluations) == (rule, n, n)
        # An end point's loss may come from another rule's node (a jvp's primal) rather than a forward.
        assert res.loss_start == pytest.approx(alone.loss_start, rel=1e-6)
        assert res.loss_end == pytest.approx(alone.loss_end, rel=1e-6)


def test_each_distinct_node_is_evaluated_once_per_batch():
    loss, start, direction, batches = _tanh_problem()
    calls = []

    def counted(p, x):
        jax.debug.callback(lambda: calls.append(1))
        return loss(p, x)

    rules = [("left", 5), ("right", 5), ("trapezoid", 5), ("simpson", 5), ("midpoint", 5)]
    riemann.integrate_rules(counted, start, direction, batches, rules, endpoints=True)
    jax.effects_barrier()
    # {0, .2, .4, .6, .8, 1} ∪ {.25, .5, .75} ∪ {.1, .3, .7, .9}: 13 nodes (25 alone, and 4 end-point forwards)
    assert len(calls) == 13 * len(batches)


def test_rules_that_cannot_share_are_refused():
    loss, start, direction, batches = _tanh_problem()
    with pytest.raises(ValueError, match="accumulator sums one rule"):
        riemann.integrate_rules(loss, start, direction, batches, RULES, mode="accumulate")
    with pytest.raises(ValueError, match="rules is empty"):
        riemann.integrate_rules(loss, start, direction, batches, [])
    with pytest.raises(ValueError, match="rules repeat"):
        riemann.integrate_rules(loss, start, direction, batches, [("left", 5), ("left", 5)])
    with pytest.raises(ValueError, match="unknown quadrature rule 'lefty'"):
        riemann.integrate_rules(loss, start, direction, batches, [("lefty", 5)])
