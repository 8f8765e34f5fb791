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
# # Beyond first order
#
# The paper's argument for DARE is first order: with `g = ∇L(W_post)` and a drop mask independent
# of `ΔW ⊙ g`, `E⟨g, ΔW~⟩ = 0` for every drop rate `p` — yet models break at large `p`. The
# follow-up ("On the Editability of Delta Parameters in Post-Trained Models", 2026) adds the
# second-order term,
#
# $$\Delta L \approx \langle g, \Delta\tilde W\rangle + \tfrac12 \langle \Delta\tilde W, H\,\Delta\tilde W\rangle,$$
#
# whose expectation for DARE's extension is the **editing intensity**
# `½ · (1−k)² p/(1−p) · Σ_i H_ii ΔW_i²` (the mask's variance times the curvature-weighted size of
# the delta). This notebook measures where the first-order term fails, how the second-order term
# and the intensity explain it, and how fast each quadrature rule converges on these segments.

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

import riemann
from analysis.pairs import workbench
from riemann import edits

SMOKE = os.environ.get("RIEMANN_SMOKE") == "1"
pair = workbench.load_pair("lm/arithmetic", "mini" if SMOKE else "full", progress=False, log=lambda s: None)
delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
gain = riemann.estimate(
    pair.loss_fn, pair.post, jax.tree.map(lambda d: -d, delta), pair.batches, method="measured"
).value
assert gain > 0, "post-training lowers the loss on its own task"
tolerance = 0.05 * gain
print(pair.description, f"\ngain L(pre) − L(post) = {gain:.3f}; competitive means ΔL ≤ {tolerance:.3f}")

# %% [markdown]
# ## The editing intensity, from one Hutchinson estimate of diag(H)
# `riemann.shared_curvature` computes `g` and a Hutchinson estimate of `diag(H)` once
# (probes × batches Hessian-vector products); the intensity of any DARE setting is then free.

# %%
sc = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=4 if SMOKE else 16, key=jax.random.key(0))
curv = sum(
    float(np.sum(np.asarray(d) * np.asarray(x) ** 2))
    for d, x in zip(jax.tree.leaves(sc.diagonal), jax.tree.leaves(delta))
)  # Σ_i H_ii ΔW_i²


def intensity(p, k=0.0):
    return 0.5 * (1 - k) ** 2 * p / (1 - p) * curv


ps = [0.1, 0.3, 0.5, 0.7, 0.9, 0.99] if SMOKE else [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
rows = []
for p in ps:
    d = edits.dare(delta, p, key=jax.random.key(1))
    change = jax.tree.map(lambda e, x: e - x, d, delta)
    rows.append(
        {
            "p": p,
            "first": sc.first_order(change).value,
            "second": riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="second-order").value,
            "intensity": intensity(p),
            "measured": riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="measured").value,
        }
    )
print(f"Σ H_ii ΔW_i² = {curv:.4g}")
print(f"{'p':>5}{'first order':>14}{'second order':>14}{'intensity':>12}{'measured':>12}")
for r in rows:
    print(f"{r['p']:>5}{r['first']:>14.4f}{r['second']:>14.4f}{r['intensity']:>12.4f}{r['measured']:>12.4f}")
boundary = next((r["p"] for r in rows if r["intensity"] > tolerance), None)
first_bad = next((r["p"] for r in rows if r["measured"] > tolerance), None)
print(f"intensity crosses the tolerance at p = {boundary}; measured change first exceeds it at p = {first_bad}")

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
x = [r["p"] for r in rows]
for key, label, m in (
    ("first", "first order ⟨g, ΔW~⟩", "s"),
    ("second", "second order (HVP)", "^"),
    ("intensity", "editing intensity (expected quadratic term)", "v"),
    ("measured", "measured ΔL", "o"),
):
    ax.plot(x, [max(r[key], 1e-6) if key != "first" else abs(r[key]) + 1e-6 for r in rows], marker=m, label=label)
ax.axhline(tolerance, color="gray", ls="--", lw=0.8, label="tolerance (5 % of the gain)")
ax.set_yscale("log")
ax.set_xlabel("DARE drop rate p")
ax.set_ylabel("ΔL (first order: |value|)")
ax.legend(fontsize=7)
ax.grid(alpha=0.3)

# %% [markdown]
# ## A mask that depends on the gradient: Table 1's biased ΔW·∇L
# Scaling the entries with `ΔW ⊙ g < 0` by `k > 1` makes the first-order term negative by
# construction ("improved"); the measured loss says otherwise, and second order sees why.

# %%
for k in (0.5, 1.5):
    e = edits.biased_product(delta, k=k, grad=sc.grad)
    change = jax.tree.map(lambda a, b: a - b, e, delta)
    f, s = (
        sc.first_order(change).value,
        riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="second-order"),
    )
    m = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="measured").value
    print(
        f"k = {k}: first order {f:+.4f}, second order {s.value:+.4f} (quadratic part {s.terms['second']:+.4f}), "
        f"measured {m:+.4f}"
    )

# %% [markdown]
# ## How fast each quadrature converges
# On the pre→post segment the exact integral is `L(post) − L(pre)` (the completeness check); on an
# edit's segment it is the measured change. Left/right rules converge as `1/n`, midpoint and
# trapezoid as `1/n²`, Simpson as `1/n⁴`, Gauss–Legendre faster still — while the integrand is
# smooth. The paper's left rule with C = 5 is the first point of the `left` line.

# %%
ns = (
    {
        "left": [2, 5, 10],
        "midpoint": [2, 5, 10],
        "trapezoid": [2, 5, 9],
        "simpson": [3, 5, 9],
        "gauss-legendre": [2, 4, 8],
    }
    if SMOKE
    else {
        "left": [2, 5, 10, 20, 40],
        "midpoint": [2, 5, 10, 20],
        "trapezoid": [3, 5, 9, 17],
        "simpson": [3, 5, 9, 17],
        "gauss-legendre": [2, 3, 4, 6, 8],
    }
)
d5 = jax.tree.map(lambda e, x: e - x, edits.dare(delta, 0.5, key=jax.random.key(1)), delta)
segments = {"pre → post": (pair.pre, delta), "DARE p = 0.5 (post → edited)": (pair.post, d5)}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, (label, (start, direction)) in zip(axes, segments.items()):
    exact = None
    for rule, counts in ns.items():
        errs = []
        for n in counts:
            res = riemann.integrate_path(pair.loss_fn, start, direction, pair.batches, rule=rule, n=n, endpoints=True)
            exact = res.loss_end - res.loss_start
            errs.append(max(abs(res.gap), 1e-9))
        ax.loglog(counts, errs, marker="o", label=rule)
    ax.set_title(f"{label}: exact change {exact:+.4f}", fontsize=9)
    ax.set_xlabel("gradient evaluations n")
    ax.set_ylabel("|estimate − exact|")
    ax.grid(alpha=0.3, which="both")
axes[0].legend(fontsize=7)
fig.tight_layout()
