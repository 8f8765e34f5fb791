"""Closed forms against brute force: the expectation over many sampled masks of the exact
quadratic change, the sample spread of the first-order term, and EXPO's curve on a loss that is
exactly cubic along ΔW."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import riemann
from riemann import closed_form as cf
from riemann import edits


def _quadratic_problem(n: int = 40, seed: int = 0, correlated: bool = False):
    """L(w) = ½ wᵀAw + cᵀw with a dense symmetric A (cross terms present), float64. ``correlated``
    adds a strong rank-one part 5·uuᵀ and points ΔW partly along u, so that ⟨ΔW, AΔW⟩ is far from
    Σ A_ii ΔW_i² (the mean of a biased edit needs the first, an unbiased one only the second)."""
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    a = m @ m.T / n + np.diag(rng.uniform(0.5, 2.0, n))
    u = rng.normal(size=n) / np.sqrt(n)
    if correlated:
        a = a + 5.0 * n * np.outer(u, u)
    c = rng.normal(size=n)
    a_j, c_j = jnp.asarray(a), jnp.asarray(c)

    def loss(p, s):
        w = p["w"]
        return s * (0.5 * w @ a_j @ w + c_j @ w)

    post = {"w": jnp.asarray(rng.normal(size=n))}
    d = rng.normal(size=n) * rng.uniform(0.1, 2.0, n)
    if correlated:
        d = d + 3.0 * np.sqrt(n) * u
    delta = {"w": jnp.asarray(d)}
    return loss, post, delta, a, c


def _statistics(loss, post, delta, batches, a):
    sc = riemann.shared_curvature(loss, post, batches, probes=1, key=jax.random.key(0))
    # A dense A: Hutchinson's diagonal is noisy, so the exact diagonal is put in its place to test
    # the closed form itself (the probes are tested in test_curvature).
    exact = riemann.SharedCurvature(
        grad=sc.grad,
        diagonal={"w": jnp.asarray(np.diag(a) * np.mean([float(b) for b in batches]))},
        loss=sc.loss,
        batch_losses=sc.batch_losses,
        probes=sc.probes,
        num_batches=sc.num_batches,
        cost=sc.cost,
    )
    return exact, cf.delta_statistics(loss, post, delta, batches, exact)


@pytest.mark.parametrize(
    ("p", "k", "rescale", "correlated"),
    [(0.5, 0.0, True, False), (0.9, -1.0, True, False), (0.3, 0.5, False, False), (0.7, 0.0, True, True),
     (0.5, 0.0, False, True)],
)  # fmt: skip
def test_dare_mean_equals_the_average_over_many_masks_of_the_exact_quadratic(p, k, rescale, correlated):
    with jax.enable_x64(True):
        loss, post, delta, a, c = _quadratic_problem(correlated=correlated)
        batches = [jnp.float64(1.0), jnp.float64(3.0)]
        _, st = _statistics(loss, post, delta, batches, a)
        if correlated:  # the curvature along ΔW and the diagonal part differ: swapping them would fail
            assert st.q > 3 * st.s
        mean, sd = cf.dare_moments(st, p, k, rescale=rescale)
        w, d = np.asarray(post["w"]), np.asarray(delta["w"])
        g = 2.0 * (a @ w + c)  # the batch-mean gradient (scales 1 and 3)
        h = 2.0 * a
        changes = []
        key = jax.random.key(7)
        for i in range(4000):
            x = np.asarray(edits.dare(delta, p, k=k, rescale=rescale, key=jax.random.fold_in(key, i))["w"]) - d
            changes.append(x)
        x = np.stack(changes)
        exact = x @ g + 0.5 * np.einsum("mi,ij,mj->m", x, h, x)  # the loss is quadratic: exact ΔL
        first = x @ g
        se = exact.std(ddof=1) / np.sqrt(len(exact))
        assert float(mean) == pytest.approx(exact.mean(), abs=4 * se)
        assert float(sd) == pytest.approx(first.std(ddof=1), rel=0.05)


def test_the_statistics_are_the_exact_inner_products():
    with jax.enable_x64(True):
        loss, post, delta, a, c = _quadratic_problem(seed=3)
        batches = [jnp.float64(2.0)]
        _, st = _statistics(loss, post, delta, batches, a)
        w, d = np.asarray(post["w"]), np.asarray(delta["w"])
        g, h = 2.0 * (a @ w + c), 2.0 * a
        assert st.b == pytest.approx(g @ d, rel=1e-10)
        assert st.q == pytest.approx(d @ h @ d, rel=1e-10)
        assert st.s == pytest.approx(np.diag(h) @ d**2, rel=1e-10)
        assert st.r == pytest.approx((g**2) @ d**2, rel=1e-10)


def test_della_mean_and_spread_against_sampled_masks():
    with jax.enable_x64(True):
        loss, post, delta, a, c = _quadratic_problem(n=30, seed=5)
        batches = [jnp.float64(1.0)]
        shared, _ = _statistics(loss, post, delta, batches, a)
        delta2 = {"w": delta["w"].reshape(3, 10)}  # DELLA ranks within rows
        shared2 = riemann.SharedCurvature(
            grad={"w": shared.grad["w"].reshape(3, 10)},
            diagonal={"w": shared.diagonal["w"].reshape(3, 10)},
            loss=shared.loss,
            batch_losses=shared.batch_losses,
            probes=1,
            num_batches=1,
            cost=shared.cost,
        )
        mean, sd = cf.della_moments(shared2, delta2, density=0.4, epsilon=0.2)
        g = np.asarray(shared.grad["w"])
        h = a  # one batch of scale 1
        d = np.asarray(delta["w"])
        xs = np.stack(
            [np.asarray(edits.della(delta2, 0.4, 0.2, key=jax.random.key(i))["w"]).ravel() - d for i in range(3000)]
        )
        # The closed form keeps only diagonal curvature for the variance part (μ = 0 here, so
        # exactly the expectation of ½ xᵀHx): E[xᵢxⱼ] = 0 for i ≠ j.
        quad = 0.5 * np.einsum("mi,ij,mj->m", xs, h, xs)
        exact = xs @ g + quad
        se = exact.std(ddof=1) / np.sqrt(len(exact))
        assert mean == pytest.approx(exact.mean(), abs=4 * se)
        assert sd == pytest.approx((xs @ g).std(ddof=1), rel=0.06)


def test_expo_curve_is_exact_on_a_loss_cubic_along_the_delta():
    with jax.enable_x64(True):
        # L(w) = a·u + b·u² + c·u³ with u = ⟨e, w⟩: exactly cubic along any direction.
        e = jnp.asarray([1.0, -2.0, 0.5])

        def loss(p, s):
            u = e @ p["w"]
            return s * (0.3 * u + 0.7 * u**2 - 0.2 * u**3)

        post = {"w": jnp.asarray([0.4, 0.1, -0.3])}
        delta = {"w": jnp.asarray([1.0, -0.5, 0.4])}
        pre = {"w": post["w"] - delta["w"]}
        batches = [jnp.float64(1.0)]
        sc = riemann.shared_curvature(loss, post, batches, probes=2, key=jax.random.key(0))
        st = cf.delta_statistics(loss, post, delta, batches, sc, loss_pre=float(loss(pre, 1.0)))
        alphas = np.linspace(-1.0, 0.0, 9)  # between W_pre and W_post the cubic is exact
        measured = [float(loss({"w": post["w"] + a * delta["w"]}, 1.0) - loss(post, 1.0)) for a in alphas]
        np.testing.assert_allclose(cf.expo_curve(st, alphas), measured, rtol=1e-9, atol=1e-12)
        quad = cf.expo_curve(st, alphas, cubic=False)
        assert np.max(np.abs(quad - measured)) > 0.5  # the cubic term matters here
        # Below W_pre (α < −1) and beyond W_post only the local quadratic is known.
        np.testing.assert_allclose(cf.expo_curve(st, [-1.5]), cf.expo_curve(st, [-1.5], cubic=False), rtol=1e-12)
        # Beyond W_post the curve is the local quadratic α·b + ½α²·q, continuous at 0.
        beyond = np.array([1e-6, 0.5, 2.0])
        u0, e_d = float(e @ post["w"]), float(e @ delta["w"])
        slope, curv = (0.3 + 1.4 * u0 - 0.6 * u0**2) * e_d, (1.4 - 1.2 * u0) * e_d**2
        np.testing.assert_allclose(cf.expo_curve(st, beyond), beyond * slope + 0.5 * beyond**2 * curv, rtol=1e-9)
        grid = np.linspace(-1.0, 2.0, 31)
        pred = cf.expo_curve(st, grid)
        assert cf.best_alpha(st, grid) == (grid[int(np.argmin(pred))] if pred.min() < 0 else 0.0)
        # Through curves measured along ±ΔW (even and odd part), at every grid step on both sides,
        # W_pre included, the measured loss; between steps the even part is exact (quadratic here) and
        # the odd part c₃α³, c₃ = −0.2·⟨e, ΔW⟩³, linear between grid steps.
        steps = [0.25, 0.5, 0.75, 1.0]
        sat = riemann.saturation(
            loss, post, delta, batches, lambda x: sc.estimate(x).terms["second"], sc.grad,
            key=jax.random.key(1), coherent_steps=steps, noise_steps=[1.0], gradient_steps=None,
        )  # fmt: skip
        on_grid = np.array([-1.0, -0.75, -0.5, -0.25, 0.25, 0.5, 0.75, 1.0])
        measured = [float(loss({"w": post["w"] + a * delta["w"]}, 1.0) - loss(post, 1.0)) for a in on_grid]
        np.testing.assert_allclose(cf.expo_curve(st, on_grid, saturation=sat), measured, rtol=1e-7, atol=1e-9)
        assert cf.expo_curve(st, [-1.0], saturation=sat)[0] == pytest.approx(st.gain, rel=1e-7)
        between = np.array([-0.6, 0.6])
        truth = [float(loss({"w": post["w"] + a * delta["w"]}, 1.0) - loss(post, 1.0)) for a in between]
        c3 = -0.2 * float(e @ delta["w"]) ** 3
        linear = 0.5**3 + (0.6 - 0.5) / 0.25 * (0.75**3 - 0.5**3)
        want = np.asarray(truth) + np.sign(between) * c3 * (linear - 0.6**3)
        np.testing.assert_allclose(cf.expo_curve(st, between, saturation=sat), want, rtol=1e-7)


def test_bad_arguments_are_refused():
    st = cf.DeltaStatistics(b=0.0, q=1.0, s=1.0, r=1.0, gain=None, loss_post=0.0)
    with pytest.raises(ValueError, match="p must lie in"):
        cf.dare_moments(st, 1.0)
    with jax.enable_x64(True):
        loss, post, delta, a, c = _quadratic_problem(n=4)
        sc = riemann.shared_curvature(loss, post, [jnp.float64(1.0)], probes=0)
        with pytest.raises(ValueError, match="Hutchinson diagonal"):
            cf.delta_statistics(loss, post, delta, [jnp.float64(1.0)], sc)


def test_line_quadratic_is_exact_for_a_quadratic_loss_and_finds_bitdeltas_best_multiple():
    with jax.enable_x64(True):
        loss, post, delta, a, c = _quadratic_problem(n=24, seed=9)
        post2 = {"w": post["w"].reshape(4, 6)}
        delta2 = {"w": delta["w"].reshape(4, 6)}

        def loss2(p, s):
            return loss({"w": p["w"].ravel()}, s)

        batches = [jnp.float64(1.0), jnp.float64(0.5)]
        f0, f1 = (edits.bitdelta(delta2, multiple=m) for m in (0.0, 1.0))
        x0 = jax.tree.map(lambda f, d: f - d, f0, delta2)
        x1 = jax.tree.map(lambda a_, b_: a_ - b_, f1, f0)
        lq = cf.line_quadratic(loss2, post2, x0, x1, batches)
        grid = np.linspace(0.0, 3.0, 31)
        measured = []
        for m in grid:
            edited = edits.bitdelta(delta2, multiple=float(m))
            change = jax.tree.map(lambda e, d: e - d, edited, delta2)
            measured.append(riemann.estimate(loss2, post2, change, batches, method="measured").value)
        np.testing.assert_allclose(lq(grid), measured, rtol=1e-8, atol=1e-10)
        assert lq.best(grid) == grid[int(np.argmin(measured))]


def test_a_float32_delta_on_bfloat16_weights_is_accepted_and_della_checks_its_probabilities():
    # The direction a 16-bit pair integrates is kept in float32 where 16 bits cannot hold it.
    loss = lambda p, x: jnp.sum(x * p["w"].astype(jnp.float32) ** 2)  # noqa: E731
    post = {"w": jnp.array([1.0, 2.0, -1.0], jnp.bfloat16)}
    delta = {"w": jnp.array([0.5, -1.0, 0.25], jnp.float32)}
    batches = [jnp.ones(3, jnp.float32)]
    sc = riemann.shared_curvature(loss, post, batches, probes=2, key=jax.random.key(0))
    st = cf.delta_statistics(loss, post, delta, batches, sc)
    assert st.q == pytest.approx(2.0 * float(jnp.sum(delta["w"] ** 2)), rel=1e-2)  # H = 2I
    with pytest.raises(ValueError, match="keep probabilities"):
        cf.della_moments(sc, delta, density=0.1, epsilon=0.2)


def _diagonal_problem(dtype=jnp.float64, wide=jnp.float64):
    """L(w) = Σ_leaves s·(c ⊙ w + ½ d ⊙ w²): exactly quadratic with a diagonal Hessian ``s̄·d``, which
    one Rademacher probe recovers exactly (z ⊙ Hz = diag(H) when H is diagonal). Two matrices of
    different shapes, a bias (1-D) and an embedding (2-D, excluded by default)."""
    rng = np.random.default_rng(11)
    shapes = {"a": (7, 5), "b": (4, 9), "bias": (6,), "embed_tokens": (5, 3)}
    c = {n: jnp.asarray(rng.normal(size=sh), wide) for n, sh in shapes.items()}
    d = {n: jnp.asarray(rng.uniform(0.2, 3.0, size=sh), wide) for n, sh in shapes.items()}

    def loss(p, s):
        return s * sum(jnp.sum(c[n] * p[n].astype(c[n].dtype) + 0.5 * d[n] * p[n].astype(c[n].dtype) ** 2) for n in p)

    post = {n: jnp.asarray(rng.normal(size=sh), dtype) for n, sh in shapes.items()}
    delta = {n: jnp.asarray(rng.normal(size=sh) * rng.uniform(0.1, 2.0, size=sh), dtype) for n, sh in shapes.items()}
    batches = [jnp.asarray(1.0, wide), jnp.asarray(2.0, wide)]
    return loss, post, delta, batches, c, d


def _direct(c, d, post, change, scale=1.5):
    """⟨g, X⟩ + ½ Σ h X² by hand (g = s̄(c + d ⊙ w), h = s̄·d) and its first-order part."""
    first = sum(
        float(np.sum(scale * (np.asarray(c[n]) + np.asarray(d[n]) * np.asarray(post[n])) * np.asarray(x)))
        for n, x in change.items()
    )
    quad = sum(float(np.sum(scale * np.asarray(d[n]) * np.asarray(x) ** 2)) for n, x in change.items())
    return first + 0.5 * quad, first


def _truncate(x, r):
    u, s, vt = np.linalg.svd(np.asarray(x), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def test_lowrank_curve_equals_the_direct_quadratic_at_every_rank_and_the_edits_own_change():
    with jax.enable_x64(True):
        loss, post, delta, batches, c, d = _diagonal_problem()
        sc = riemann.shared_curvature(loss, post, batches, probes=1, key=jax.random.key(0))
        full = 4  # both matrices: min(7, 5) = 5 and min(4, 9) = 4; ranks above 4 refused (the edit's rule)
        values, first = cf.lowrank_curve(sc, delta, ranks=range(full + 1))
        for r in range(full + 1):
            change = {n: _truncate(delta[n], r) - np.asarray(delta[n]) for n in ("a", "b")}  # others untouched
            want, want_first = _direct(c, d, post, change)
            assert values[r] == pytest.approx(want, rel=1e-9, abs=1e-12), r
            assert first[r] == pytest.approx(want_first, rel=1e-9, abs=1e-12), r
        # r = 0 removes every selected matrix's delta; nothing is left to remove at full rank (here 4 < 5 for "a").
        assert values[0] == pytest.approx(_direct(c, d, post, {n: -np.asarray(delta[n]) for n in ("a", "b")})[0])
        # The edit's own output at some ranks, measured on the exact quadratic (and its exact second order:
        # one Hessian-vector product per rank).
        for r in (1, 3):
            change = jax.tree.map(lambda e, x: e - x, edits.lowrank(delta, r), delta)
            measured = riemann.estimate(loss, post, change, batches, method="measured").value
            second = riemann.estimate(loss, post, change, batches, method="second-order").value
            assert values[r] == pytest.approx(measured, rel=1e-9) and second == pytest.approx(measured, rel=1e-9)
        # Heads (no point at full rank: only the leading factors enter) and tails agree.
        heads, heads_first = cf.lowrank_curve(sc, delta, ranks=[1, 2])
        np.testing.assert_allclose(heads, values[1:3], rtol=1e-10)
        np.testing.assert_allclose(heads_first, first[1:3], rtol=1e-10)
        # Full rank of the one matrix selected: nothing to remove, exactly.
        assert cf.lowrank_curve(sc, delta, ranks=[4], include="^b$")[0].tolist() == [0.0]
        with pytest.raises(ValueError, match="exceeds the smaller dimension"):
            cf.lowrank_curve(sc, delta, ranks=[5])


def test_lowrank_curve_over_fractions_and_energies_follows_the_edits_rounding():
    with jax.enable_x64(True):
        loss, post, delta, batches, c, d = _diagonal_problem()
        sc = riemann.shared_curvature(loss, post, batches, probes=1, key=jax.random.key(0))
        fractions = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
        values, _ = cf.lowrank_curve(sc, delta, fractions=fractions)
        assert values[0] == pytest.approx(_direct(c, d, post, {n: -np.asarray(delta[n]) for n in ("a", "b")})[0])
        assert values[-1] == 0.0  # every factor kept: tails are empty
        for f, v in zip(fractions[1:], values[1:]):
            change = jax.tree.map(lambda e, x: e - x, edits.lowrank(delta, fraction=f), delta)
            assert v == pytest.approx(_direct(c, d, post, change)[0], rel=1e-8, abs=1e-10), f
        # The selection is the edit's: embeddings included on request, 1-D leaves never (ndim=2).
        wide, _ = cf.lowrank_curve(sc, delta, fractions=[0.5], exclude=None)
        change = jax.tree.map(lambda e, x: e - x, edits.lowrank(delta, fraction=0.5, exclude=None), delta)
        assert np.asarray(change["bias"]).tolist() == [0.0] * 6 and float(np.abs(change["embed_tokens"]).max()) > 0
        assert wide[0] == pytest.approx(
            riemann.estimate(loss, post, change, batches, method="measured").value, rel=1e-8
        )
        energies = [0.5, 0.9, 0.99]
        values, _ = cf.lowrank_curve(sc, delta, energies=energies)
        for e, v in zip(energies, values):
            change = jax.tree.map(lambda a, x: a - x, edits.lowrank(delta, energy=e), delta)
            assert v == pytest.approx(_direct(c, d, post, change)[0], rel=1e-8), e
        with pytest.raises(ValueError, match="exactly one"):
            cf.lowrank_curve(sc, delta, ranks=[1], fractions=[0.5])
        with pytest.raises(ValueError, match="outside"):
            cf.lowrank_curve(sc, delta, fractions=[1.5])


@pytest.mark.parametrize(
    ("blocks", "scope", "bits"),
    [("count", "matrix", (0, 1, 3, 6)), ("width", "matrix", (2,)), ("count", "global", (2,))],
)
def test_bitdelta_bits_curve_equals_applying_the_edit_and_the_exact_quadratic(blocks, scope, bits):
    with jax.enable_x64(True):
        loss, post, delta, batches, c, d = _diagonal_problem()
        sc = riemann.shared_curvature(loss, post, batches, probes=1, key=jax.random.key(0))
        values, first = cf.bitdelta_bits_curve(sc, delta, bits, blocks=blocks, scope=scope)
        for b, v, f1 in zip(bits, values, first):
            edited = edits.bitdelta(delta, magnitude_bits=b, blocks=blocks, scope=scope)
            change = jax.tree.map(lambda e, x: e - x, edited, delta)
            assert float(np.abs(change["bias"]).max()) == 0.0 == float(np.abs(change["embed_tokens"]).max())
            if b == bits[0]:  # the quadratic is the loss itself
                assert v == pytest.approx(
                    riemann.estimate(loss, post, change, batches, method="measured").value, rel=1e-9
                )
            assert (v, f1) == pytest.approx(
                _direct(c, d, post, {n: np.asarray(change[n]) for n in ("a", "b")}), rel=1e-9
            )
        if 6 in bits:
            assert values[-1] == 0.0  # 2⁶ ≥ 36 entries: one entry per block, no change


def test_lowrank_and_bits_curves_on_bfloat16_weights_accumulate_in_float32():
    loss, post, delta, batches, c, d = _diagonal_problem(jnp.bfloat16, jnp.float32)
    sc = riemann.shared_curvature(loss, post, batches, probes=1, key=jax.random.key(0))
    values, first = cf.lowrank_curve(sc, delta, ranks=[0, 2, 4])
    assert values.dtype == np.float64 and np.all(np.isfinite(values))
    change = jax.tree.map(lambda e, x: e.astype(jnp.float32) - x.astype(jnp.float32), edits.lowrank(delta, 2), delta)
    assert values[1] == pytest.approx(sc.estimate(change).value, rel=2e-2)  # the edit rounds its output to bfloat16
    bits, _ = cf.bitdelta_bits_curve(sc, delta, [0, 2])
    assert np.all(np.isfinite(bits))


def _allocation_problem():
    """Three leaves with different curvature per entry; the loss is ½ Σ h_i w_i² (diagonal Hessian),
    so the shared diagonal is exact and the quadratic model is the loss itself."""
    rng = np.random.default_rng(3)
    h = {"a": rng.uniform(5.0, 9.0, 300), "b": rng.uniform(0.5, 1.5, 500), "c": rng.uniform(0.01, 0.05, 200)}
    hj = {n: jnp.asarray(v) for n, v in h.items()}

    def loss(p, s):
        return s * sum(0.5 * jnp.sum(hj[n] * p[n] ** 2) for n in hj)

    post = {n: jnp.zeros_like(v) for n, v in hj.items()}
    delta = {n: jnp.asarray(rng.normal(size=v.shape)) for n, v in hj.items()}
    sc = riemann.shared_curvature(loss, post, [1.0], probes=1, key=jax.random.key(0))
    return loss, post, delta, sc


def test_dare_allocation_keeps_the_budget_and_beats_every_other_split_of_it():
    loss, post, delta, sc = _allocation_problem()
    al = cf.dare_allocation(sc, delta, keep=0.3)
    sizes = np.array([al.sizes[n] for n in "abc"])
    q = 1.0 - np.array([al.p[n] for n in "abc"])
    assert float(sizes @ q) == pytest.approx(0.3 * sizes.sum(), rel=1e-9)
    assert q[0] > q[1] > q[2]  # more curvature per entry, more kept
    s = np.array([al.curvature[n] for n in "abc"])
    assert al.predicted == pytest.approx(0.5 * float(s @ ((1 - q) / q)), rel=1e-9)
    assert al.uniform_predicted == pytest.approx(0.5 * (0.7 / 0.3) * s.sum(), rel=1e-9)
    # Brute force over the budget's plane: no feasible split predicts less.
    rng = np.random.default_rng(0)
    for _ in range(2000):
        qa, qb = rng.uniform(0.01, 1.0, 2)
        qc = (0.3 * sizes.sum() - sizes[0] * qa - sizes[1] * qb) / sizes[2]
        if 0.01 <= qc <= 1.0:
            assert 0.5 * float(s @ ((1 - np.array([qa, qb, qc])) / np.array([qa, qb, qc]))) >= al.predicted - 1e-9


def test_dare_allocation_predicts_the_mean_over_many_masks_of_the_allocated_edit():
    loss, post, delta, sc = _allocation_problem()
    al = cf.dare_allocation(sc, delta, keep=0.4, k=-0.5)
    draws = []
    for i in range(400):
        out = edits.dare(delta, al.p, k=-0.5, key=jax.random.key(i))
        change = jax.tree.map(lambda f, d: f - d, out, delta)
        draws.append(float(loss(jax.tree.map(jnp.add, post, change), 1.0)))
    mean, se = np.mean(draws), np.std(draws, ddof=1) / np.sqrt(len(draws))
    assert abs(mean - al.predicted) < 4 * se
    assert al.predicted < al.uniform_predicted


def test_dare_with_per_leaf_rates_draws_the_uniform_rates_masks():
    _, _, delta, _ = _allocation_problem()
    key = jax.random.key(7)
    same = edits.dare(delta, {"a": 0.5, "b": 0.5, "c": 0.5}, key=key)
    assert all(np.array_equal(same[n], v) for n, v in edits.dare(delta, 0.5, key=key).items())
    part = edits.dare(delta, {"a": 0.9}, key=key)
    assert np.array_equal(part["b"], delta["b"]) and np.array_equal(part["c"], delta["c"])
    assert np.array_equal(part["a"] == 0, edits.dare(delta, 0.9, key=key)["a"] == 0)
    with pytest.raises(ValueError, match=r"dare: p names leaves \['z'\]"):
        edits.dare(delta, {"z": 0.5}, key=key)
    with pytest.raises(ValueError, match=r"dare \(leaf 'b'\): p=1.0 is outside"):
        edits.dare(delta, {"a": 0.5, "b": 1.0}, key=key)
    _, _, _, sc = _allocation_problem()
    with pytest.raises(ValueError, match="keep=0.001"):
        cf.dare_allocation(sc, delta, keep=0.001)
    assert set(cf.dare_allocation(sc, delta, keep=0.01).p.values()) == {0.99}  # the budget's closed end
    with pytest.raises(ValueError, match="include, exclude and ndim do not apply"):
        edits.dare(delta, {"a": 0.5}, key=key, include="a")
    with pytest.raises(ValueError, match="no leaf of delta is selected"):
        cf.dare_allocation(sc, delta, keep=0.5, include="^nothing$")


def test_a_leaf_without_positive_curvature_keeps_the_uniform_rate():
    g = {"a": jnp.zeros(4), "b": jnp.zeros(4), "c": jnp.zeros(4)}
    diag = {"a": jnp.full(4, 9.0), "b": jnp.full(4, 1.0), "c": jnp.full(4, -2.0)}  # c: negative (noise)
    sc = riemann.SharedCurvature(g, diag, 0.0, np.zeros(1), 1, 1, {})
    al = cf.dare_allocation(sc, {n: jnp.ones(4) for n in "abc"}, keep=0.5)
    assert al.p["c"] == pytest.approx(0.5)  # not dropped at max_p for a predicted gain
    assert (al.p["a"], al.p["b"]) == pytest.approx((0.25, 0.75))  # a and b share their own budget
    assert al.predicted == pytest.approx(0.5 * (36 / 3 + 4 * 3 - 8 * 1))


def _two_curves(delta, coherent_ratio, noise_ratio):
    """A Saturation whose curves are φ = ratio·Q (one grid point each: the ratio is held)."""
    one = np.array([1.0])  # Q(ΔW) = 1 on the coherent grid: st.s must be 2 (Q = ½ s)
    coherent = riemann.Curve(one, one, coherent_ratio * one, 0 * one, 1)
    noise = riemann.Curve(one, one, noise_ratio * one, 0 * one, 2)
    return riemann.Saturation(coherent, noise, delta, 1.0, 2.0, {"forward": 0})


def test_saturated_closed_forms_read_the_expected_quadratic_through_the_curves():
    st = cf.DeltaStatistics(b=-1.0, q=2.0, s=2.0, r=4.0, gain=None, loss_post=0.0)
    delta = {"w": jnp.ones(3)}
    p = np.array([0.3, 0.9])
    plain, sd = cf.dare_moments(st, p)
    same, same_sd = cf.dare_moments(st, p, saturation=_two_curves(delta, 1.0, 1.0))
    np.testing.assert_allclose(same, plain)  # identity curves and q = s: the quadratic model
    np.testing.assert_allclose(same_sd, sd)
    sat = _two_curves(delta, 3.0, 0.5)
    # DARE is all noise (μ = 0): the noise curve alone, ½·p/(1 − p)·s halved
    got, _ = cf.dare_moments(st, p, k=0.0, saturation=sat)
    np.testing.assert_allclose(got, 0.5 * 0.5 * p / (1 - p) * st.s)
    # drop-only: the mean part −p·ΔW on the coherent curve (Q∥ = ½p²·s), the noise v = p(1 − p) on the other
    got, _ = cf.dare_moments(st, p, rescale=False, saturation=sat)
    np.testing.assert_allclose(got, -p * st.b + 3.0 * 0.5 * p**2 * st.s + 0.5 * 0.5 * p * (1 - p) * st.s)


def test_saturated_closed_forms_on_a_quadratic_loss_are_the_quadratic_ones():
    def loss(w, x):  # diagonal Hessian: q = s, and both measured curves are φ(Q) = Q
        return 0.5 * jnp.sum(x * w["w"] ** 2)

    post, delta = {"w": jnp.array([1.0, -0.5, 2.0, 0.3])}, {"w": jnp.array([0.4, 0.2, -0.6, 1.0])}
    batches = [jnp.array([1.0, 2.0, 3.0, 0.5])]
    sc = riemann.shared_curvature(loss, post, batches, probes=2, key=jax.random.key(0))
    st = cf.delta_statistics(loss, post, delta, batches, sc)
    sat = riemann.saturation(
        loss, post, delta, batches, lambda x: sc.estimate(x).terms["second"], sc.grad, key=jax.random.key(1)
    )
    p, k = np.meshgrid([0.1, 0.5, 0.9], [-1.0, 0.0, 0.5])
    for rescale in (True, False):
        want, _ = cf.dare_moments(st, p, k, rescale=rescale)
        got, _ = cf.dare_moments(st, p, k, rescale=rescale, saturation=sat)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    want, _ = cf.della_moments(sc, delta, 0.4, 0.1)
    got, _ = cf.della_moments(sc, delta, 0.4, 0.1, saturation=sat)
    assert got == pytest.approx(want, rel=1e-4)


def test_saturated_expo_reads_the_curve_along_delta_and_stays_pinned_at_w_pre():
    st = cf.DeltaStatistics(b=-1.0, q=4.0, s=2.0, r=0.0, gain=3.0, loss_post=0.0)
    sat = _two_curves({"w": jnp.ones(3)}, 3.0, 0.5)  # φ_ΔW = 3·Q with Q(αΔW) = ½α²·s = α²
    a = np.array([-1.0, -0.5, 0.0, 0.5, 2.0])
    got = cf.expo_curve(st, a, saturation=sat)
    c = 3.0 * 1.0 - st.b - st.gain  # φ(½s) − b − gain
    want = a * st.b + 3.0 * a**2 + np.where((a >= -1) & (a < 0), c * a**3, 0.0)
    np.testing.assert_allclose(got, want)
    assert got[0] == pytest.approx(st.gain)  # through the exact gain at W_pre
    assert cf.best_alpha(st, a, saturation=sat) == (a[np.argmin(want)] if want.min() < 0 else 0.0)
    np.testing.assert_allclose(
        cf.expo_curve(st, a, saturation=_two_curves({"w": jnp.ones(3)}, 2.0, 2.0)), cf.expo_curve(st, a)
    )  # fmt: skip  (φ = 2Q with s = q/2: the quadratic)


def test_lowrank_and_bits_curves_read_each_point_through_the_curves_by_its_part_along_delta():
    with jax.enable_x64(True):
        loss, post, delta, batches, c, d = _diagonal_problem()
        sc = riemann.shared_curvature(loss, post, batches, probes=1, key=jax.random.key(0))
        scale = float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in delta.values())))
        base = _two_curves(delta, 3.0, 0.5)
        sat = riemann.Saturation(base.coherent, base.noise, delta, scale, 2.0, {"forward": 0})

        def want(change):
            # by hand: ⟨g, X⟩ + φ(½ Σ h X², a) with a = ⟨X, ΔW⟩/‖ΔW‖² over the whole tree
            value, first = _direct(c, d, post, change)
            dot = sum(float(np.sum(np.asarray(x) * np.asarray(delta[n]))) for n, x in change.items())
            return first + sat.phi(value - first, dot / scale**2)

        ranks = [0, 1, 2, 4]  # tails (a point at full rank of "b") and heads below
        for points in (ranks, [1, 2]):
            got, first = cf.lowrank_curve(sc, delta, ranks=points, saturation=sat)
            plain, plain_first = cf.lowrank_curve(sc, delta, ranks=points)
            np.testing.assert_allclose(first, plain_first)
            for r, v, p in zip(points, got, plain):
                change = {n: _truncate(delta[n], r) - np.asarray(delta[n]) for n in ("a", "b")}
                assert v == pytest.approx(want(change), rel=1e-9, abs=1e-12), r
                if r not in (0, 4):  # the tail is part along ΔW, part across: the curves differ
                    assert abs(v - p) > 1e-3
        # Curves measured along another ΔW are refused: the part along it would be wrong.
        other = riemann.Saturation(base.coherent, base.noise, delta, 2 * scale, 2.0, {"forward": 0})
        with pytest.raises(ValueError, match="lowrank_curve: saturation was measured along a ΔW of norm"):
            cf.lowrank_curve(sc, delta, ranks=[1], saturation=other)
        with pytest.raises(ValueError, match="bitdelta_bits_curve: saturation was measured"):
            cf.bitdelta_bits_curve(sc, delta, (0,), saturation=other)
        # The parts read both ways from one SVD / one pass: the curves' reading and the plain quadratic.
        parts = cf.lowrank_parts(sc, delta, ranks=ranks)
        np.testing.assert_array_equal(parts.values(sat), cf.lowrank_curve(sc, delta, ranks=ranks, saturation=sat)[0])
        np.testing.assert_allclose(parts.values(), cf.lowrank_curve(sc, delta, ranks=ranks)[0], rtol=1e-12)
        assert parts.scale == pytest.approx(scale) and parts.dot[0] == pytest.approx(
            -sum(float(np.sum(np.asarray(delta[n]) ** 2)) for n in ("a", "b"))
        )  # rank 0 removes both selected matrices: ⟨−ΔW_sel, ΔW⟩
        bits = cf.bitdelta_bits_parts(sc, delta, (0, 2))
        np.testing.assert_array_equal(bits.values(sat), cf.bitdelta_bits_curve(sc, delta, (0, 2), saturation=sat)[0])
        with pytest.raises(ValueError, match="CurveParts.values: saturation was measured"):
            parts.values(other)
        for scope in ("matrix", "global"):
            got, _ = cf.bitdelta_bits_curve(sc, delta, (0, 2), scope=scope, saturation=sat)
            for b, v in zip((0, 2), got):
                edited = edits.bitdelta(delta, magnitude_bits=b, scope=scope)
                change = {n: np.asarray(edited[n]) - np.asarray(delta[n]) for n in ("a", "b")}
                assert v == pytest.approx(want(change), rel=1e-9), (scope, b)
