# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: predict an edit's loss change, then measure it
#
# A post-trained model is `W_post = W_pre + ΔW`. An edit `F` (DARE, BitDelta, EXPO, …) replaces
# `ΔW` by `F(ΔW)`, which moves the model by `ΔW~ = F(ΔW) − ΔW`. The loss change is a line
# integral (Tang et al., 2024, Eq. 1):
#
# $$\Delta L = L(W_\text{post} + \Delta\tilde W) - L(W_\text{post}) = \int_0^1 \langle \nabla L(W_\text{post} + t\,\Delta\tilde W), \Delta\tilde W\rangle\,dt$$
#
# and the paper approximates it with a left Riemann sum of C = 5 gradients. This notebook loads a
# built-in pair, applies three edits, computes the paper's term, the first- and second-order
# surrogates, measures each edit, classifies it and plots the result.
#
# `RIEMANN_SMOKE=1` (as in CI) uses the miniature workbench; otherwise the full one
# (shipped trained with the package: nothing to build).

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

import riemann
from analysis.pairs import workbench
from riemann import edits

SMOKE = os.environ.get("RIEMANN_SMOKE") == "1"
SIZE = "mini" if SMOKE else "full"

pair = workbench.load_pair("lm/arithmetic", SIZE, progress=False)
print(pair.description)
print(
    f"{len(pair.batches)} held-out batches; {pair.info['accuracy_name']} of W_post: "
    f"{pair.accuracy_fn(pair.post, pair.batches):.3f}"
)

# %% [markdown]
# ## The delta and three edits
# Parameters are plain pytrees keyed by Hugging Face tensor names. Random edits take an explicit
# key; each tensor's randomness depends only on that key and the tensor's name.

# %%
delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
key = jax.random.key(0)
edited = {
    "DARE p=0.5": edits.dare(delta, 0.5, key=key),
    "DARE p=0.9": edits.dare(delta, 0.9, key=key),
    "BitDelta": edits.bitdelta(delta),
    "EXPO α=+0.3": edits.expo(delta, 0.3),
    "EXPO α=−0.3": edits.expo(delta, -0.3),
}
changes = {name: jax.tree.map(lambda e, d: e - d, f, delta) for name, f in edited.items()}

# %% [markdown]
# ## Predict, measure, classify
# `riemann.estimate` computes the paper's term (`method="riemann"`, left rule, C = 5), the
# first-order term `⟨∇L(W_post), ΔW~⟩`, the second-order surrogate (one Hessian-vector product)
# and the measured change. The class needs a tolerance for "≈ 0": `choose_tolerance` uses 5 % of
# the post-training gain or two paired standard errors, whichever is larger.

# %%
gain = riemann.estimate(
    pair.loss_fn, pair.post, jax.tree.map(lambda d: -d, delta), pair.batches, method="measured"
).value  # L(W_post − ΔW) − L(W_post) = L(pre) − L(post)
assert gain > 0, "post-training lowers the loss on its own task"
rows = []
for name, change in changes.items():
    est = {
        m: riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method=m)
        for m in ("riemann", "first-order", "second-order", "measured")
    }
    tol = riemann.choose_tolerance(gain=gain, stderr=est["measured"].stderr)
    acc = pair.accuracy_fn(jax.tree.map(lambda p, f: p + f, pair.pre, edited[name]), pair.batches)
    rows.append(
        {
            "edit": name,
            **{m: e.value for m, e in est.items()},
            "predicted": riemann.classify(est["riemann"].value, tol),
            "measured class": riemann.classify(est["measured"].value, tol),
            "accuracy": acc,
            "modules": est["riemann"].modules,
        }
    )

print(f"post-training gain L(pre) − L(post) = {gain:.3f}")
print(
    f"{'edit':<13}{'term (C=5)':>12}{'1st order':>12}{'2nd order':>12}{'measured':>12}  {'predicted':<12}{'measured':<12}{'accuracy':>8}"
)
for r in rows:
    print(
        f"{r['edit']:<13}{r['riemann']:>12.4f}{r['first-order']:>12.4f}{r['second-order']:>12.4f}"
        f"{r['measured']:>12.4f}  {r['predicted']:<12}{r['measured class']:<12}{r['accuracy']:>8.3f}"
    )

# %% [markdown]
# DARE's first-order term is near zero at every `p` (the paper's zero-expectation argument); the
# computed term and the second-order surrogate see the curvature that makes large `p` costly.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
x = np.arange(len(rows))
for i, (m, label) in enumerate(
    [
        ("first-order", "first order"),
        ("riemann", "term, C = 5"),
        ("second-order", "second order"),
        ("measured", "measured"),
    ]
):
    axes[0].bar(x + (i - 1.5) * 0.2, [r[m] for r in rows], width=0.2, label=label)
axes[0].set_xticks(x, [r["edit"] for r in rows], rotation=20)
axes[0].set_yscale("symlog", linthresh=1e-2)
axes[0].axhline(0, color="gray", lw=0.8)
axes[0].set_ylabel("ΔL")
axes[0].legend(fontsize=8)
axes[0].set_title("predicted vs measured loss change")
bd = rows[[r["edit"] for r in rows].index("BitDelta")]["modules"]
names = sorted(bd, key=lambda k: -abs(bd[k]))[:12]
axes[1].barh(range(len(names)), [bd[k] for k in names])
axes[1].set_yticks(range(len(names)), [k.replace("model.layers.", "L") for k in names], fontsize=7)
axes[1].invert_yaxis()
axes[1].set_title("BitDelta: the term per tensor (largest 12)")
fig.tight_layout()

# %% [markdown]
# The same in one command, on a whole suite and several pairs: `riemann run` (see the README);
# `riemann.integrate_path` gives the gradient accumulator itself, and `riemann.shared_curvature`
# predicts any number of edits from one fixed set of passes.
