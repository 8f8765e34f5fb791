"""``riemann.edits.merge`` against the reference: mergekit 0.1.5 itself, run in-process on CPU.

The test writes a tiny random Llama base and three fine-tunes (a dense perturbation, a sparse one,
and one that mostly opposes the first: sign conflicts), one mergekit configuration per case, runs
``mergekit.merge.run_merge`` on each, and reads the merged safetensors with our own reader.
Deterministic methods are compared tensor by tensor; the DARE and DELLA methods (torch's RNG vs
our JAX keys) are compared in law.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the parity reference: the test extra installs torch (CPU), transformers and mergekit
import transformers
import yaml

from analysis.hf import safetensors_file
from riemann.edits import merge as M

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"),
    pytest.mark.isolated,  # mergekit runs in a child process (tests/conftest.py)
]


def _mergekit():
    """mergekit's merge, config and options modules, imported only where the tests run (the child)."""
    import mergekit.config
    import mergekit.merge
    import mergekit.options

    return mergekit.merge, mergekit.config, mergekit.options


LAYERS = 2
CONFIG = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
DONORS = ("ft0", "ft1", "ft2")


def _read(path):
    infos, _ = safetensors_file.read_header(path / "model.safetensors")
    return {name: safetensors_file.read_tensor(info).astype(np.float32) for name, info in infos.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mergekit")
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in base.parameters():  # fresh norms are all ones: make every tensor random
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    base.save_pretrained(root / "base")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    first = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    perturb = {
        "ft0": first,  # dense
        "ft1": {  # sparse: 20 % of the entries move
            k: 0.02 * torch.randn(v.shape, generator=g) * (torch.rand(v.shape, generator=g) < 0.2)
            for k, v in state.items()
        },
        "ft2": {k: -0.7 * first[k] + 0.006 * torch.randn(v.shape, generator=g) for k, v in state.items()},
    }
    for name, delta in perturb.items():
        with torch.no_grad():
            base.load_state_dict({k: state[k] + delta[k] for k in state})
        base.save_pretrained(root / name)
    w = {name: _read(root / name) for name in ("base", *DONORS)}
    deltas = [{k: w[d][k] - w["base"][k] for k in w["base"]} for d in DONORS]
    return root, w["base"], deltas


def gradient(values):
    """mergekit's per-layer gradient: layer i of L gets t = i/(L − 1), other tensors t = 0, and
    the list is interpolated linearly at t (mergekit/config.py evaluate_setting)."""

    def at(name):
        m = re.search(r"layers\.(\d+)\.", name)
        t = int(m[1]) / (LAYERS - 1) if m else 0.0
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * values[i0] + frac * values[i1]

    return at


def run_mergekit(root, name, method, donors, parameters=None, seed=0, dtype="float32", base_model=None):
    cfg = {
        "merge_method": method,
        "models": [{"model": str(root / d), "parameters": p} for d, p in donors],
        "dtype": dtype,
    }
    if method != "linear" or base_model:
        cfg["base_model"] = str(root / "base")
    if parameters:
        cfg["parameters"] = parameters
    out = root / f"out-{name}"
    mergekit_merge, mergekit_config, mergekit_options = _mergekit()
    options = mergekit_options.MergeOptions(
        cuda=False, lazy_unpickle=False, copy_tokenizer=False, quiet=True, write_model_card=False, random_seed=seed
    )
    config = mergekit_config.MergeConfiguration.model_validate(yaml.safe_load(yaml.dump(cfg)))
    mergekit_merge.run_merge(config, str(out), options)
    return _read(out)


def _bf16(x):
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# bfloat16: mergekit casts the checkpoints to the config's dtype and computes in it. With
# compute_dtype=bfloat16 and the deltas of the bfloat16 checkpoints (exact in float32),
# Merged.apply(base) is mergekit's tensor. torch's CPU sort is not stable, so among entries whose
# bfloat16 magnitudes tie exactly at a trim threshold mergekit keeps an unspecified subset, we the
# lowest indices: the trimming methods may differ there and nowhere else.

BF16 = [
    ("linear", [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}], None, dict(weight=[0.5, 0.3, 0.2])),
    (
        "task_arithmetic",
        [{"weight": [0.0, 0.5, 1.0]}, {"weight": 0.3}, {"weight": -0.4}],
        {"lambda": 0.8},
        dict(weight=[gradient([0.0, 0.5, 1.0]), 0.3, -0.4], lambda_=0.8),
    ),
    (
        "ties",
        [{"weight": [1.0, 0.4], "density": 0.5}, {"weight": 0.3, "density": 0.7}, {"weight": 0.6, "density": 0.4}],
        None,
        dict(weight=[gradient([1.0, 0.4]), 0.3, 0.6], density=[0.5, 0.7, 0.4]),
    ),
    (
        "breadcrumbs",
        [{"weight": 0.5, "density": 0.8, "gamma": 0.05}, {"weight": 0.5, "density": 0.6}, {"weight": 0.3}],
        None,
        dict(weight=[0.5, 0.5, 0.3], density=[0.8, 0.6, 1.0], gamma=[0.05, 0.01, 0.01]),
    ),
]


def _threshold_ties(tau, densities, gammas, method):
    """Entries whose bfloat16 |τ| (mergekit's delta) equals, in some donor, a magnitude that
    straddles that donor's trim cut."""
    out = np.zeros(tau[0].shape, bool)
    for t, d, g in zip(tau, densities, gammas):
        t = _bf16(t)
        if d >= 1:
            continue
        a = np.sort(np.abs(t).ravel())  # ascending
        size = a.size
        if method == "ties":
            cuts = [size - max(1, int(d * size))]
        else:
            upper, top = M._outlier_counts(d, g, size)
            cuts = [size - upper, size - top]
        for cut in cuts:
            if 0 < cut < size and a[cut - 1] == a[cut]:
                out |= np.abs(t) == a[cut]
    return out


@pytest.mark.parametrize("case", BF16, ids=[c[0] for c in BF16])
def test_bfloat16_merges_are_mergekits(models, case):
    root, base, _ = models
    method, per_donor, shared, ours = case
    theirs = run_mergekit(root, f"bf16-{method}", method, list(zip(DONORS, per_donor)), shared, dtype="bfloat16")
    b16 = {k: _bf16(v) for k, v in base.items()}
    # the deltas of the bfloat16 checkpoints, exact in float32
    tau = [{k: _bf16(v) - b16[k] for k, v in _read(root / d).items()} for d in DONORS]
    merged = M.merge(method, tau, base=b16, compute_dtype=jnp.bfloat16, **ours)
    assert merged.settings["compute_dtype"] == "bfloat16"
    out = merged.apply(b16)
    differ = total = 0
    for leaf, ref in theirs.items():
        mine = np.asarray(out[leaf].astype(jnp.float32))
        bad = mine != ref
        if method in ("ties", "breadcrumbs") and bad.any():
            dens = [ours["density"][j] for j in range(3)]
            gams = ours.get("gamma", [0.01] * 3)
            ties = _threshold_ties([t[leaf] for t in tau], dens, gams, method)
            assert not np.any(bad & ~ties), f"{method}: {leaf} differs off the threshold ties"
        else:
            np.testing.assert_array_equal(mine, ref, err_msg=f"bf16 {method}: {leaf}")
        differ += int(bad.sum())
        total += ref.size
    print(f"bf16 {method}: {differ} of {total} entries differ (threshold ties)")
    assert differ <= 0.01 * total


# (name, method, per-donor mergekit parameters, shared parameters, our keyword arguments, tolerance)
# A tolerance of 0 means bit for bit.
DETERMINISTIC = [
    (
        "linear",
        "linear",
        [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}],
        None,
        dict(weight=[0.5, 0.3, 0.2]),
        1e-7,  # mergekit averages full weights, we add the averaged deltas to the base
    ),
    (
        "linear-gradient-unnormalized",
        "linear",
        [{"weight": [0.2, 1.0]}, {"weight": 0.3}, {"weight": 0.4}],
        {"normalize": False},
        dict(weight=[gradient([0.2, 1.0]), 0.3, 0.4], normalize=False),
        1e-7,
    ),
    (
        "task_arithmetic",
        "task_arithmetic",
        [{"weight": [0.0, 0.5, 1.0]}, {"weight": 0.3}, {"weight": -0.4}],
        {"lambda": 0.8},
        dict(weight=[gradient([0.0, 0.5, 1.0]), 0.3, -0.4], lambda_=0.8),
        0.0,
    ),
    (
        "task_arithmetic-normalized-filter",
        "task_arithmetic",
        [{"weight": [{"filter": "mlp", "value": 0.2}, {"value": 0.6}]}, {"weight": 0.3}, {"weight": 0.5}],
        {"normalize": True},
        dict(weight=[lambda n: 0.2 if "mlp" in n else 0.6, 0.3, 0.5], normalize=True),
        0.0,
    ),
    (
        "ties",
        "ties",
        [{"weight": [1.0, 0.4], "density": 0.5}, {"weight": 0.3, "density": 0.7}, {"weight": 0.6, "density": 0.4}],
        None,
        dict(weight=[gradient([1.0, 0.4]), 0.3, 0.6], density=[0.5, 0.7, 0.4]),
        0.0,
    ),
    (
        "ties-unnormalized",
        "ties",
        [{"weight": 0.7, "density": 0.3}, {"weight": 0.5, "density": 0.9}, {"weight": 1.0, "density": 0.6}],
        {"normalize": False, "lambda": 1.3},
        dict(weight=[0.7, 0.5, 1.0], density=[0.3, 0.9, 0.6], normalize=False, lambda_=1.3),
        0.0,
    ),
    (
        "ties-rescaled",
        "ties",
        [{"weight": 0.7, "density": 0.3}, {"weight": 0.5, "density": 0.5}, {"weight": 1.0, "density": 0.6}],
        {"rescale": True},
        dict(weight=[0.7, 0.5, 1.0], density=[0.3, 0.5, 0.6], rescale=True),
        1e-7,  # the L1 norms are sums in a different order: the rescale factor may differ in its last bit
    ),
    (
        "ties-density-0-and-1.2-int8-mask",  # mergekit drops a delta at density 0, keeps it whole above 1
        "ties",
        [{"weight": 0.7, "density": 0.0}, {"weight": 0.5, "density": 1.2}, {"weight": 1.0, "density": 0.6}],
        {"int8_mask": True},
        dict(weight=[0.7, 0.5, 1.0], density=[0.0, 1.2, 0.6], int8_mask=True),
        0.0,
    ),
    (
        "breadcrumbs",
        "breadcrumbs",
        [{"weight": 0.5, "density": 0.8, "gamma": 0.05}, {"weight": 0.5, "density": 0.6}, {"weight": 0.3}],
        None,
        dict(weight=[0.5, 0.5, 0.3], density=[0.8, 0.6, 1.0], gamma=[0.05, 0.01, 0.01]),
        0.0,
    ),
    (
        "breadcrumbs_ties",
        "breadcrumbs_ties",
        [
            {"weight": [0.0, 1.0], "density": 0.7, "gamma": 0.1},
            {"weight": 0.5, "density": 0.5, "gamma": 0.02},
            {"weight": 0.8, "density": 0.9},
        ],
        {"normalize": True},
        dict(weight=[gradient([0.0, 1.0]), 0.5, 0.8], density=[0.7, 0.5, 0.9], gamma=[0.1, 0.02, 0.01], normalize=True),
        0.0,
    ),
]


@pytest.mark.parametrize("case", DETERMINISTIC, ids=[c[0] for c in DETERMINISTIC])
def test_deterministic_methods_match_mergekit(models, case):
    root, base, deltas = models
    name, method, per_donor, shared, ours, tol = case
    theirs = run_mergekit(root, name, method, list(zip(DONORS, per_donor)), shared)
    merged = M.merge(method, deltas, base=base, **ours)
    assert set(theirs) == set(base)
    worst = 0.0
    for leaf, ref in theirs.items():
        mine = base[leaf] + np.asarray(merged.total[leaf])
        if tol == 0:
            np.testing.assert_array_equal(mine, ref, err_msg=f"{name}: {leaf}")
        else:
            # relative to the weights' scale: a few float32 ulps of |W|
            scale = np.maximum(np.abs(ref), np.abs(base[leaf]))
            np.testing.assert_array_less(np.abs(mine - ref), tol + 4 * np.finfo(np.float32).eps * scale)
            worst = max(worst, float(np.max(np.abs(mine - ref))))
    assert worst <= 1e-6


def test_linear_with_the_base_among_its_inputs(models):
    """With base_model set and weighted, mergekit's linear averages the base as one more input: our
    donor with a zero delta."""
    root, base, deltas = models
    donors = [("base", {"weight": 0.2}), ("ft0", {"weight": 0.5}), ("ft1", {"weight": 0.3})]
    theirs = run_mergekit(root, "linear-base", "linear", donors, base_model=True)
    zero = {k: np.zeros_like(v) for k, v in base.items()}
    merged = M.merge("linear", [zero, deltas[0], deltas[1]], weight=[0.2, 0.5, 0.3])
    for leaf, ref in theirs.items():
        mine = base[leaf] + np.asarray(merged.total[leaf])
        scale = np.maximum(np.abs(ref), np.abs(base[leaf]))
        np.testing.assert_array_less(np.abs(mine - ref), 1e-7 + 4 * np.finfo(np.float32).eps * scale)


# ----------------------------------------------------------------------------------------------
# DARE and DELLA: mergekit draws its masks with torch's RNG, we with JAX keys; compare the laws.


def _within_binomial(kept, prob, what):
    """Kept count against its expectation Σp with a 5-SE Poisson-binomial bound."""
    mean, var = float(np.sum(prob)), float(np.sum(prob * (1 - prob)))
    assert abs(float(np.sum(kept)) - mean) <= 5 * np.sqrt(var) + 1, f"{what}: kept {np.sum(kept)}, expected {mean:.1f}"


def _della_probs(x, density, eps):
    rows = x.reshape(1, -1) if x.ndim < 2 else x
    rank = np.argsort(np.argsort(np.abs(rows), axis=1, kind="stable"), axis=1, kind="stable")
    n = rows.shape[1]
    return ((density - eps) + 2 * eps * rank / max(n - 1, 1)).reshape(x.shape)


def _check_single_donor_law(sparse, tau, density, eps, what):
    """``sparse`` is a sparsified τ: kept entries follow the keep probabilities, survivors carry
    mergekit's L1 rescale ``‖τ‖₁ / ‖kept τ‖₁``."""
    for leaf, s in sparse.items():
        t = tau[leaf]
        kept = s != 0
        prob = np.full(t.shape, density) if eps is None else _della_probs(t, density, eps)
        _within_binomial(kept, prob, f"{what} {leaf}")
        factor = np.sum(np.abs(t)) / np.sum(np.abs(t[kept]))
        np.testing.assert_allclose(s[kept], factor * t[kept], rtol=2e-4, atol=1e-8, err_msg=f"{what} {leaf}")
    if eps is not None:  # larger entries survive more often: pool the upper and lower halves of every row
        hi_kept = hi_p = lo_kept = lo_p = 0.0
        for leaf, s in sparse.items():
            t = tau[leaf]
            if t.ndim != 2:
                continue
            p = _della_probs(t, density, eps)
            upper = p > density
            hi_kept, hi_p = hi_kept + np.sum((s != 0) & upper), hi_p + np.sum(np.where(upper, p, 0))
            lo_kept, lo_p = lo_kept + np.sum((s != 0) & ~upper), lo_p + np.sum(np.where(upper, 0, p))
        assert hi_kept > lo_kept
        for kept, exp in ((hi_kept, hi_p), (lo_kept, lo_p)):
            assert abs(kept - exp) <= 5 * np.sqrt(exp) + 1, f"{what}: rank tilt {kept} vs {exp:.1f}"


@pytest.mark.parametrize("method,density,eps", [("dare_linear", 0.3, None), ("della_linear", 0.5, 0.2)])
def test_single_donor_sparsification_agrees_in_law(models, method, density, eps):
    root, base, deltas = models
    params = {"weight": 1.0, "density": density, **({} if eps is None else {"epsilon": eps})}
    theirs = run_mergekit(root, method, method, [("ft0", params)])
    _check_single_donor_law({k: v - base[k] for k, v in theirs.items()}, deltas[0], density, eps, "mergekit")
    extra = {} if eps is None else {"epsilon": eps}
    ours = M.merge(method, deltas[:1], density=density, key=jax.random.key(3), **extra)
    _check_single_donor_law({k: np.asarray(v) for k, v in ours.total.items()}, deltas[0], density, eps, "riemann")


K = 32


@pytest.mark.parametrize(
    "method,params,ours",
    [
        (
            "dare_ties",
            [{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.6}, {"weight": 0.8, "density": 0.4}],
            dict(weight=[1.0, 0.5, 0.8], density=[0.5, 0.6, 0.4]),
        ),
        (
            "della",
            [{"weight": 1.0, "density": 0.5, "epsilon": 0.1}, {"weight": 0.5, "density": 0.6}, {"weight": 0.8}],
            dict(weight=[1.0, 0.5, 0.8], density=[0.5, 0.6, 1.0], epsilon=[0.1, 0.15, 0.15]),
        ),
        (  # several donors, no rescale, λ
            "dare_linear",
            [{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.6}, {"weight": 0.8, "density": 0.4}],
            dict(weight=[1.0, 0.5, 0.8], density=[0.5, 0.6, 0.4], rescale=False, lambda_=0.7),
        ),
        (  # several donors, normalized, λ
            "della_linear",
            [{"weight": 1.0, "density": 0.5, "epsilon": 0.1}, {"weight": 0.5, "density": 0.6}, {"weight": 0.8}],
            dict(
                weight=[1.0, 0.5, 0.8], density=[0.5, 0.6, 1.0], epsilon=[0.1, 0.15, 0.15], normalize=True, lambda_=1.2
            ),
        ),
    ],
)
def test_random_merges_agree_in_law(models, method, params, ours):
    root, base, deltas = models
    shared = {
        k: v for k, v in (("rescale", ours.get("rescale")), ("normalize", ours.get("normalize"))) if v is not None
    }
    if "lambda_" in ours:
        shared["lambda"] = ours["lambda_"]
    theirs = run_mergekit(root, f"{method}-{len(shared)}", method, list(zip(DONORS, params)), shared or None)
    samples = [M.merge(method, deltas, key=jax.random.key(100 + i), **ours).total for i in range(K)]
    inside = count = 0
    for leaf, ref in theirs.items():
        stack = np.stack([base[leaf] + np.asarray(s[leaf]) for s in samples])
        tol = 4 * np.finfo(np.float32).eps * np.abs(base[leaf])
        inside += int(np.sum((ref >= stack.min(0) - tol) & (ref <= stack.max(0) + tol)))
        count += ref.size
        # the tensor's mean change: mergekit's single draw within the spread of ours
        mu, sd = stack.mean(0), stack.std(0, ddof=1)
        bound = 5 * np.sqrt(np.sum(sd**2) * (1 + 1 / K)) / ref.size + 1e-7
        assert abs(float(np.mean(ref - mu))) <= bound, leaf
        # sign election: where every donor moves one way, the merge never moves the other way
        t = np.stack([d[leaf] for d in deltas])
        agree = np.all(t > 0, axis=0) | np.all(t < 0, axis=0)
        move = ref - base[leaf]
        assert np.all(np.sign(move[agree]) * np.sign(t[0][agree]) >= 0), leaf
        mine = stack[0] - base[leaf]
        assert np.all(np.sign(mine[agree]) * np.sign(t[0][agree]) >= 0), leaf
    # an exchangeable draw falls inside the range of K others with probability (K − 1)/(K + 1)
    assert inside / count >= (K - 1) / (K + 1) - 0.01, inside / count
