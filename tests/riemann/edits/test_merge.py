"""Merges of several deltas (riemann.edits.merge): closed forms, invariants, laws, refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from riemann import edits
from riemann.edits import merge as M

pytestmark = pytest.mark.isolated  # a child pytest process (tests/conftest.py)

RANDOM = ("dare_ties", "dare_linear", "della", "della_linear")
DETERMINISTIC = tuple(m for m in M.METHODS if m not in RANDOM)


def kw(method, **extra):
    return {"key": jax.random.key(0), **extra} if method in RANDOM else extra


def tree(seed, scale=1.0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "layers": [
            {"mlp": {"weight": scale * jax.random.normal(k[0], (6, 8))}},
            {"mlp": {"weight": scale * jax.random.normal(k[1], (6, 8))}},
        ],
        "norm": scale * jax.random.normal(k[2], (8,)),
    }


def f32(x):
    return np.asarray(x, np.float32)


def test_reexports_and_methods():
    assert edits.MERGE_METHODS == M.METHODS
    assert edits.Merged is M.Merged
    assert M.METHODS == (
        "linear",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "della",
        "della_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
    )


def test_ties_by_hand_three_donors():
    # density 2/3 keeps floor(2/3·3) = 2 of 3 entries per donor.
    a = {"w": jnp.array([4.0, -1.0, 0.5])}  # trim → [4, -1, 0]
    b = {"w": jnp.array([-2.0, -3.0, 0.1])}  # trim → [-2, -3, 0]
    c = {"w": jnp.array([1.0, 0.2, -5.0])}  # trim → [1, 0, -5]
    m = M.merge("ties", [a, b, c], density=2 / 3)
    # entry 0: mass 4 − 2 + 1 = 3 > 0 → +; agreeing 4 and 1, disjoint mean 2.5
    # entry 1: −1 − 3 → −; mean −2.   entry 2: −5 → −; −5.
    np.testing.assert_array_equal(f32(m.total["w"]), [2.5, -2.0, -5.0])
    np.testing.assert_array_equal(f32(m.parts[0]["w"]), [2.0, -0.5, 0.0])
    np.testing.assert_array_equal(f32(m.parts[1]["w"]), [0.0, -1.5, 0.0])
    np.testing.assert_array_equal(f32(m.parts[2]["w"]), [0.5, 0.0, -5.0])
    assert m.settings["normalize"] is True and m.settings["density"] == [2 / 3] * 3


def test_ties_weights_enter_the_election_and_the_divisor():
    a, b = {"w": jnp.array([1.0])}, {"w": jnp.array([-2.0])}
    # unweighted mass −1 → −; with weights (3, 1): 3 − 2 = 1 → +, only donor a agrees
    m = M.merge("ties", [a, b], weight=[3.0, 1.0])
    np.testing.assert_array_equal(f32(m.total["w"]), [1.0])  # (3·1) / 3
    m = M.merge("ties", [a, b], weight=[3.0, 1.0], normalize=False)
    np.testing.assert_array_equal(f32(m.total["w"]), [3.0])
    m = M.merge("ties", [a, b], weight=[3.0, 1.0], normalize=False, lambda_=0.5)
    np.testing.assert_array_equal(f32(m.total["w"]), [1.5])


def test_sign_election_ties_go_positive_and_count_consensus():
    a, b = {"w": jnp.array([2.0, 1.0])}, {"w": jnp.array([-2.0, -0.5])}
    m = M.merge("ties", [a, b])  # entry 0: mass 0 → + (mergekit: sum >= 0)
    np.testing.assert_array_equal(f32(m.total["w"]), [2.0, 1.0])
    c = {"w": jnp.array([-0.1, -0.1])}
    m = M.merge("ties", [a, b, c], consensus="count")  # two negatives outvote one large positive
    np.testing.assert_allclose(f32(m.total["w"]), [-1.05, -0.3], rtol=1e-6)
    assert m.settings["consensus"] == "count"


def test_disjoint_mean_with_no_agreeing_donor_falls_back_to_divisor_one():
    a, b = {"w": jnp.array([0.0, 3.0])}, {"w": jnp.array([0.0, 1.0])}
    m = M.merge("ties", [a, b])
    np.testing.assert_array_equal(f32(m.total["w"]), [0.0, 2.0])


def test_task_arithmetic_and_linear_closed_forms():
    a, b = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
    ta = M.merge("task_arithmetic", [a, b], weight=[0.5, 2.0], lambda_=2.0)
    np.testing.assert_array_equal(f32(ta.total["w"]), [13.0, -6.0])
    ta = M.merge("task_arithmetic", [a, b], weight=[0.5, 2.0], normalize=True)
    np.testing.assert_allclose(f32(ta.total["w"]), [6.5 / 2.5, -3.0 / 2.5], rtol=1e-6)
    lin = M.merge("linear", [a, b], weight=[1.0, 3.0])
    np.testing.assert_allclose(f32(lin.total["w"]), [2.5, -1.0], rtol=1e-6)
    np.testing.assert_allclose(f32(lin.parts[1]["w"]), [2.25, -1.5], rtol=1e-6)


def test_linear_without_normalize_needs_the_base_and_sums_full_weights():
    base = {"w": jnp.array([10.0, -4.0])}
    a, b = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
    with pytest.raises(ValueError, match="needs base=W_base"):
        M.merge("linear", [a, b], normalize=False)
    m = M.merge("linear", [a, b], weight=[0.5, 0.25], normalize=False, base=base)
    w_merge = 0.5 * (base["w"] + a["w"]) + 0.25 * (base["w"] + b["w"])
    np.testing.assert_allclose(f32(base["w"] + m.total["w"]), f32(w_merge), rtol=1e-6)
    np.testing.assert_allclose(f32(m.parts[0]["w"] + m.parts[1]["w"]), f32(m.total["w"]), rtol=1e-6)


def test_linear_zero_weight_sum_is_refused_and_task_arithmetic_falls_back():
    a, b = {"w": jnp.ones(2)}, {"w": 2 * jnp.ones(2)}
    with pytest.raises(ValueError, match="weights of leaf 'w' sum to zero"):
        M.merge("linear", [a, b], weight=[1.0, -1.0])
    m = M.merge("task_arithmetic", [a, b], weight=[1.0, -1.0], normalize=True)  # |Σw| < 1e-8 → divisor 1
    np.testing.assert_array_equal(f32(m.total["w"]), [-1.0, -1.0])


def test_breadcrumbs_drops_outliers_and_small_entries():
    x = {"w": jnp.arange(1.0, 11.0)}  # density 0.5, gamma 0.2: drop the 2 largest and the 3 smallest
    m = M.merge("breadcrumbs", [x], density=0.5, gamma=0.2)
    np.testing.assert_array_equal(f32(m.total["w"]), [0, 0, 0, 4, 5, 6, 7, 8, 0, 0])
    m = M.merge("breadcrumbs", [x], density=0.9, gamma=0.2)  # keeping 9 leaves room for 1 outlier only
    np.testing.assert_array_equal(f32(m.total["w"]), [1, 2, 3, 4, 5, 6, 7, 8, 9, 0])


def test_magnitude_count_is_floor_with_at_least_one_and_l1_rescale():
    x = {"w": jnp.array([1.0, -4.0, 2.0, 3.0])}
    m = M.merge("ties", [x], density=0.3)  # floor(1.2) = 1
    np.testing.assert_array_equal(f32(m.total["w"]), [0.0, -4.0, 0.0, 0.0])
    m = M.merge("ties", [x], density=0.1)  # floor(0.4) = 0 → 1
    np.testing.assert_array_equal(f32(m.total["w"]), [0.0, -4.0, 0.0, 0.0])
    m = M.merge("ties", [x], density=0.5, rescale=True)  # keep −4, 3; L1 10/7
    np.testing.assert_allclose(f32(m.total["w"]), [0.0, -40 / 7, 0.0, 30 / 7], rtol=1e-6)
    m = M.merge("ties", [x], density=0.5, rescale=True, rescale_norm="density")
    np.testing.assert_allclose(f32(m.total["w"]), [0.0, -8.0, 0.0, 6.0], rtol=1e-6)


def test_global_trim_scope_ranks_a_donor_over_all_its_leaves():
    x = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([10.0, 20.0])}
    per_tensor = M.merge("ties", [x], density=0.5)
    np.testing.assert_array_equal(f32(per_tensor.total["a"]), [0.0, 2.0])
    glob = M.merge("ties", [x], density=0.5, trim_scope="global")
    np.testing.assert_array_equal(f32(glob.total["a"]), [0.0, 0.0])
    np.testing.assert_array_equal(f32(glob.total["b"]), [10.0, 20.0])


@pytest.mark.parametrize("method", M.METHODS)
def test_parts_sum_to_total_and_are_float32(method):
    ds = [tree(1), tree(2, 0.5), jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree(3))]
    m = M.merge(method, ds, weight=[0.3, 0.5, 0.4], **kw(method, density=0.5, epsilon=0.1))
    assert len(m.parts) == 3 and m.method == method
    for p in m.parts:
        assert jax.tree.structure(p) == jax.tree.structure(ds[0])
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
    summed = jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *m.parts)
    for s, t in zip(jax.tree.leaves(summed), jax.tree.leaves(m.total)):
        np.testing.assert_allclose(f32(s), f32(t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_one_model_with_weight_one_is_the_identity(method):
    d = tree(4)
    m = M.merge(method, [d])  # density 1: nothing trimmed
    for a, b in zip(jax.tree.leaves(m.total), jax.tree.leaves(d)):
        np.testing.assert_array_equal(f32(a), f32(b))


@pytest.mark.parametrize("method", RANDOM)
def test_random_methods_with_density_one_are_the_identity(method):
    d = tree(4)
    m = M.merge(method, [d], key=jax.random.key(1))
    for a, b in zip(jax.tree.leaves(m.total), jax.tree.leaves(d)):
        np.testing.assert_array_equal(f32(a), f32(b))


@pytest.mark.parametrize("method,eps", [("dare_linear", None), ("della_linear", 0.2)])
def test_random_sparsifiers_in_law_kept_fraction_rescale_and_unbiasedness(method, eps):
    # One donor, weight 2, density 0.4; the papers' rescale (1/p) makes E[part] = weight·τ exactly.
    x = jax.random.normal(jax.random.key(0), (64, 64))
    extra = {} if eps is None else {"epsilon": eps}
    keys = 200
    outs = np.stack(
        [
            f32(
                M.merge(
                    method, [{"w": x}], weight=2.0, density=0.4, key=jax.random.key(i), rescale_norm="density", **extra
                ).total["w"]
            )
            for i in range(keys)
        ]
    )
    kept = outs != 0
    se = np.sqrt(0.4 * 0.6 / kept.size)
    assert abs(kept.mean() - 0.4) < 5 * se
    if eps is None:
        np.testing.assert_allclose(outs[kept], np.broadcast_to(2 * f32(x) / 0.4, outs.shape)[kept], rtol=1e-6)
    mean, sd = outs.mean(0), outs.std(0, ddof=1)
    z = (mean - 2 * f32(x)) / (sd / np.sqrt(keys))
    assert np.mean(np.abs(z) < 3) > 0.98 and np.all(np.abs(z) < 6)
    # mergekit's L1 rescale: every draw keeps the tensor's L1 norm, weighted
    m = M.merge(method, [{"w": x}], weight=2.0, density=0.4, key=jax.random.key(7), **extra)
    np.testing.assert_allclose(np.abs(f32(m.total["w"])).sum(), 2 * np.abs(f32(x)).sum(), rtol=1e-5)


def test_della_keeps_larger_entries_more_often():
    x = jnp.tile(jnp.arange(1.0, 9.0), (20_000, 1))  # column j has rank j in every row
    out = f32(M.merge("della_linear", [{"w": x}], density=0.5, epsilon=0.3, key=jax.random.key(1)).total["w"])
    rate = (out != 0).mean(0)
    prob = 0.2 + 0.6 * np.arange(8) / 7
    assert np.all(np.abs(rate - prob) < 5 * np.sqrt(prob * (1 - prob) / 20_000))


def test_per_leaf_callables_and_per_donor_sequences():
    a = {"layers": {"0": jnp.ones(3), "1": jnp.ones(3)}, "head": jnp.ones(3)}
    b = jax.tree.map(lambda x: 2 * x, a)

    def w(name):
        return {"layers.0": 0.0, "layers.1": 1.0}.get(name, 0.5)

    m = M.merge("task_arithmetic", [a, b], weight=[w, 1.0], lambda_=lambda n: 2.0 if n == "head" else 1.0)
    np.testing.assert_array_equal(f32(m.total["layers"]["0"]), [2.0] * 3)  # 0·1 + 1·2
    np.testing.assert_array_equal(f32(m.total["layers"]["1"]), [3.0] * 3)
    np.testing.assert_array_equal(f32(m.total["head"]), [5.0] * 3)  # 2·(0.5 + 2)
    assert m.settings["weight"] == [{"layers.0": 0.0, "layers.1": 1.0, "head": 0.5}, 1.0]
    assert m.settings["lambda"] == {"layers.0": 1.0, "layers.1": 1.0, "head": 2.0}


@pytest.mark.parametrize("method", RANDOM)
def test_keys_depend_on_root_donor_and_leaf_name_only(method):
    d1, d2 = tree(1), tree(2)
    full = M.merge(method, [d1, d2], density=0.5, epsilon=0.1, key=jax.random.key(5))
    w = full.total["layers"][1]["mlp"]["weight"]
    # another traversal order ("a" sorts before "layers") and a single leaf alone give the same leaf
    reordered = [{"a": d["norm"], "layers": d["layers"]} for d in (d1, d2)]
    other = M.merge(method, reordered, density=0.5, epsilon=0.1, key=jax.random.key(5))
    np.testing.assert_array_equal(f32(w), f32(other.total["layers"][1]["mlp"]["weight"]))
    alone = [{"layers": [{}, {"mlp": {"weight": d["layers"][1]["mlp"]["weight"]}}]} for d in (d1, d2)]
    single = M.merge(method, alone, density=0.5, epsilon=0.1, key=jax.random.key(5))
    np.testing.assert_array_equal(f32(w), f32(single.total["layers"][1]["mlp"]["weight"]))
    # the same delta given twice draws a different mask per donor
    twice = M.merge(method, [d1, d1], density=0.5, epsilon=0.1, key=jax.random.key(5))
    assert not np.array_equal(f32(twice.parts[0]["norm"]) != 0, f32(twice.parts[1]["norm"]) != 0)
    again = M.merge(method, [d1, d2], density=0.5, epsilon=0.1, key=jax.random.key(6))
    assert not np.array_equal(f32(full.total["norm"]), f32(again.total["norm"]))


def test_sharded_leaves_give_the_same_merge():
    w = [jax.random.normal(jax.random.key(i), (16, 24)) for i in range(2)]
    mesh = jax.make_mesh((8,), ("fsdp",))
    sh = [jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("fsdp"))) for x in w]
    for method in ("ties", "dare_ties", "della", "breadcrumbs_ties"):
        a = M.merge(method, [{"w": x} for x in w], density=0.5, key=jax.random.key(2)).total["w"]
        b = M.merge(method, [{"w": x} for x in sh], density=0.5, key=jax.random.key(2)).total["w"]
        np.testing.assert_allclose(f32(a), f32(b), rtol=1e-6, atol=1e-7)


def test_inputs_are_not_modified():
    ds = [jax.tree.map(np.asarray, tree(i)) for i in range(2)]
    copies = [jax.tree.map(np.copy, d) for d in ds]
    M.merge("ties", ds, density=0.5)
    M.merge("dare_ties", ds, density=0.5, key=jax.random.key(0))
    for d, c in zip(ds, copies):
        for a, b in zip(jax.tree.leaves(d), jax.tree.leaves(c)):
            np.testing.assert_array_equal(a, b)


D = {"w": jnp.ones(4)}


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: M.merge("slerp", [D]), r"unknown method 'slerp'; accepted: linear, task_arithmetic, ties, dare_ties"),
        (lambda: M.merge("ties", D), "non-empty sequence of delta pytrees"),
        (lambda: M.merge("ties", []), "non-empty sequence"),
        (lambda: M.merge("ties", [D, {"v": jnp.ones(4)}]), r"deltas\[0\] and deltas\[1\] differ in tree structure"),
        (lambda: M.merge("ties", [D, {"w": jnp.ones(5)}]), r"leaf 'w' has shape \(5,\) in deltas\[1\], \(4,\)"),
        (lambda: M.merge("ties", [D, {"w": jnp.arange(4)}]), r"leaf 'w' of deltas\[1\] has dtype int32"),
        (
            lambda: M.merge("dare_ties", [D], density=-0.1, key=jax.random.key(0)),
            r"density=-0.1 for 'dare_linear'.*≥ 0 \(donor 0, leaf 'w'\)",
        ),
        (lambda: M.merge("ties", [D], compute_dtype=jnp.int8), "compute_dtype int8 for leaf 'w'"),
        (lambda: M.merge("ties", [D], trim_scope="global", compute_dtype="inputs"), "no compute_dtype path"),
        (lambda: M.merge("linear", [D], compute_dtype=jnp.bfloat16), "linear with compute_dtype .* needs base="),
        (lambda: M.merge("ties", [D, D], density=[0.5]), "density has 1 values for 2 deltas"),
        (lambda: M.merge("ties", [D, D], weight=[1, 2, 3]), "weight has 3 values for 2 deltas"),
        (lambda: M.merge("ties", [D], weight="x"), r"weight\[0\] must be a finite number, got 'x' for leaf 'w'"),
        (lambda: M.merge("ties", [D], weight=lambda n: 1 / 0), r"weight\[0\]\('w'\) raised ZeroDivisionError"),
        (lambda: M.merge("ties", [D], normalize=1), "normalize must be a bool"),
        (lambda: M.merge("ties", [D], consensus="max"), "consensus='max' for leaf 'w'; accepted: 'sum', 'count'"),
        (lambda: M.merge("ties", [D], trim_scope="layer"), "trim_scope='layer'"),
        (lambda: M.merge("dare_ties", [D], trim_scope="global", key=jax.random.key(0)), "applies to magnitude"),
        (lambda: M.merge("ties", [D], trim_scope="global", density=lambda n: 0.5), "constant density"),
        (lambda: M.merge("ties", [D], rescale_norm="l3"), "rescale_norm='l3'"),
        (lambda: M.merge("dare_ties", [D], density=0.5), "needs an explicit key"),
        (lambda: M.merge("della", [D], density=0.5), "needs an explicit key"),
        (
            lambda: M.merge("della", [D], density=0.9, epsilon=0.15, key=jax.random.key(0)),
            r"epsilon=0.15 with density=0.9 for 'della'.*\(donor 0, leaf 'w'\)",
        ),
        (lambda: M.merge("linear", [D], rescale=True), "linear has no rescale"),
        (lambda: M.merge("ties", [D], base={"w": jnp.ones(3)}), r"leaf 'w' has shape \(3,\) in base"),
    ],
)
def test_refusals_name_the_argument_and_leaf(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "method,kw,message",
    [
        ("dare_ties", dict(density=-0.01), "density=-0.01"),
        ("della", dict(density=0.5, epsilon=0.6), "density ± epsilon must lie in \\(0, 1\\)"),
        ("della", dict(density=0.5, epsilon=0.5), "epsilon=0.5"),
        ("della", dict(density=0.1, epsilon=-0.2), "must lie in \\[0, 1\\]"),  # passes mergekit's check, fails torch
        ("della", dict(density=0.9, epsilon=-0.2), "must lie in \\[0, 1\\]"),
        ("ties", dict(density=float("nan")), "density must be a finite number"),
        ("breadcrumbs", dict(gamma="x"), "gamma must be a finite number"),
    ],
)
def test_check_parameters_refuses_what_mergekit_fails_on(method, kw, message):
    with pytest.raises(ValueError, match=message):
        M.check_parameters(method, **kw)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("ties", dict(density=0.0)),
        ("ties", dict(density=-3.0)),
        ("ties", dict(density=1.2)),
        ("breadcrumbs", dict(density=0.5, gamma=1.5)),
        ("breadcrumbs", dict(density=0.5, gamma=-0.2)),
        ("dare_linear", dict(density=0.0)),
        ("dare_linear", dict(density=7.0)),
        ("della", dict(density=0.0, epsilon=0.9)),
        ("della", dict(density=1.0, epsilon=0.9)),
        ("della", dict(density=0.5, epsilon=-0.2)),  # probabilities fall with magnitude, all in [0, 1]
        ("task_arithmetic", dict(density=-1.0)),  # no sparsification: density unused
    ],
)
def test_check_parameters_accepts_the_rest(method, kw):
    M.check_parameters(method, **kw)


def test_density_outside_zero_one_follows_mergekit():
    x = {"w": jnp.array([3.0, -1.0, 0.5, 2.0, -4.0, 0.25, 1.5, -0.75, 0.1, 6.0])}
    key = jax.random.key(0)
    for method in ("ties", "dare_linear", "della_linear"):
        dropped = M.merge(method, [x], density=0.0, normalize=False, key=key)
        np.testing.assert_array_equal(dropped.total["w"], 0.0)
        kept = M.merge(method, [x], density=1.2, normalize=False, key=key)
        np.testing.assert_array_equal(kept.total["w"], x["w"])
    # breadcrumbs keeps the ascending ranks indices[n_bot : n_bot + target_n] of the sorted |x|, with
    # Python's slice semantics: gamma = 2 gives n_top = 20 > 10, n_bot = 0; density −0.3 gives
    # target_n = −3, so the slice [0 : −3] keeps the 7 smallest entries.
    b = M.merge("breadcrumbs", [x], density=-0.3, gamma=2.0)
    order = np.argsort(np.abs(np.asarray(x["w"])), kind="stable")
    expect = np.zeros(10, np.float32)
    expect[order[:7]] = np.asarray(x["w"])[order[:7]]
    np.testing.assert_array_equal(b.total["w"], expect)
    b = M.merge("breadcrumbs", [x], density=0.5, gamma=-0.2)  # n_top = −2: n_bot = 7, keeps ranks 7..9
    expect = np.zeros(10, np.float32)
    expect[order[7:]] = np.asarray(x["w"])[order[7:]]
    np.testing.assert_array_equal(b.total["w"], expect)
    g = M.merge("ties", [x], density=0.0, trim_scope="global")
    np.testing.assert_array_equal(g.total["w"], 0.0)


def _bf(x):
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))


def test_compute_dtype_bfloat16_rounds_every_step_as_mergekit():
    rng = np.random.default_rng(0)
    base = {"w": jnp.asarray(_bf(rng.normal(size=(8, 16)) * 0.05))}
    tau = [{"w": jnp.asarray(_bf(base["w"] + rng.normal(size=(8, 16)) * 0.01) - base["w"])} for _ in range(3)]
    w = [0.3, 0.7, -0.2]
    m = M.merge("task_arithmetic", tau, weight=w, lambda_=0.8, compute_dtype=jnp.bfloat16)
    assert m.compute_dtype == jnp.bfloat16 and m.settings["compute_dtype"] == "bfloat16"
    # mergekit: weights in bf16, bf16 products, float32-accumulated sum rounded once, λ via float32
    wb = _bf(np.asarray(w))
    xs = [_bf(_bf(t["w"]) * wb[j]) for j, t in enumerate(tau)]
    mixed = _bf(_bf(xs[0] + xs[1] + xs[2]) * np.float32(0.8))
    np.testing.assert_array_equal(m.total["w"], mixed)
    out = m.apply(base)
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(out["w"].astype(jnp.float32), _bf(base["w"] + mixed))
    # the float32 parts are attribution shares: their sum is the total up to bfloat16 rounding
    s = sum(np.asarray(p["w"]) for p in m.parts)
    np.testing.assert_allclose(s, m.total["w"], atol=float(np.max(np.abs(mixed))) * 2**-7)
    # float32 (and None) is today's float32 merge
    f = M.merge("task_arithmetic", tau, weight=w, lambda_=0.8, compute_dtype=jnp.float32)
    g = M.merge("task_arithmetic", tau, weight=w, lambda_=0.8)
    assert f.compute_dtype is None and g.compute_dtype is None
    np.testing.assert_array_equal(f.total["w"], g.total["w"])
    np.testing.assert_array_equal(g.apply(base)["w"], base["w"] + g.total["w"])
    # "inputs": the deltas' own dtype
    bf_tau = [{"w": t["w"].astype(jnp.bfloat16)} for t in tau]
    h = M.merge("ties", bf_tau, weight=w, compute_dtype="inputs", density=0.5)
    assert h.settings["compute_dtype"] == "bfloat16"
    k = M.merge("ties", tau, weight=w, compute_dtype=jnp.bfloat16, density=0.5)
    np.testing.assert_array_equal(h.total["w"], k.total["w"])


def test_compute_dtype_linear_is_the_float32_average_of_the_bf16_checkpoints():
    rng = np.random.default_rng(1)
    base = {"w": jnp.asarray(_bf(rng.normal(size=(4, 8))))}
    full = [_bf(base["w"] + rng.normal(size=(4, 8)) * 0.1) for _ in range(2)]
    tau = [{"w": jnp.asarray(f - base["w"])} for f in full]
    m = M.merge("linear", tau, weight=[0.25, 0.5], base=base, compute_dtype=jnp.bfloat16)
    expect = _bf((np.float32(0.25) * full[0] + np.float32(0.5) * full[1]) / np.float32(0.75))
    np.testing.assert_allclose(np.asarray(m.apply(base)["w"].astype(jnp.float32)), expect, rtol=2**-7)
