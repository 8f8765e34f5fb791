"""The first-order term of an edit built from the gradient, estimated on batches it was not built on.

Some edits are chosen by the gradient they will be judged with: the biased ``ΔW·∇L`` split keeps or
scales each entry by the sign of ``ΔW ⊙ g``, gradient-saliency pruning by ``|ΔW ⊙ g|``. For such an
edit ``x(ḡ)``, built from the mean calibration gradient ``ḡ``, the in-sample first-order term
``⟨ḡ, x(ḡ)⟩`` is biased towards the selection: wherever ``ḡ``'s noise happens to push an entry
into the kept (or scaled) group, it also makes that entry's contribution look larger (the winner's
curse). On held-out data the term is ``⟨g_test, x(ḡ)⟩``, which is what the measured change sees.

Cross-fitting (leave one batch out, as in double machine learning) estimates it from the
calibration batches alone::

    F = (1/n) Σ_i ⟨g_i, x(ḡ_{−i})⟩,      ḡ_{−i} = (n·ḡ − g_i)/(n − 1),

each batch's gradient ``g_i`` scoring an edit that did not see it. ``F`` is unbiased for the edit
built from ``n − 1`` batches, which differs from ``x(ḡ)`` only where an entry's group is decided by
noise, and so where the mean gradient is small. Its standard error is the spread of the ``n`` terms
over ``√n``.

Costs no pass over data: ``n`` edits built and ``n`` inner products, given the per-batch
gradients (:func:`riemann.shared_curvature` with ``per_batch=True``), which hold one copy of the
parameters each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from riemann._src import trees

PyTree = Any


@dataclasses.dataclass(frozen=True)
class CrossFit:
    """A cross-fitted first-order term (:func:`cross_fitted_first_order`).

    Attributes:
      value: ``F = (1/n) Σ_i ⟨g_i, x(ḡ_{−i})⟩``.
      stderr: the standard deviation of the ``n`` terms over ``√n``.
      folds: ``⟨g_i, x(ḡ_{−i})⟩`` per held-out batch ``i``.
      modules: ``F`` per leaf (leaf name → value); they sum to ``value``.
    """

    value: float
    stderr: float
    folds: np.ndarray
    modules: dict[str, float]


@jax.jit
def _held_out(total: PyTree, g: PyTree, n: jax.Array) -> PyTree:
    return jax.tree.map(lambda t, x: (n.astype(t.dtype) * t - x.astype(t.dtype)) / (n.astype(t.dtype) - 1), total, g)


@jax.jit
def _dots(g: PyTree, change: PyTree) -> list[jax.Array]:
    return trees.leaf_vdots(g, change)


def cross_fitted_first_order(build: Callable[[PyTree], PyTree], batch_grads: Sequence[PyTree]) -> CrossFit:
    """``(1/n) Σ_i ⟨g_i, x(ḡ_{−i})⟩``: the first-order term of the edit ``x = build(gradient)``
    scored, batch by batch, on a gradient it was not built from (module docstring).

    Args:
      build: ``gradient -> change``, the edit's change ``W_edit − W_post`` as a function of the
        gradient it is made from (for the biased split: ``biased_product(ΔW, g, k=k) − ΔW``).
      batch_grads: ``∇L_b`` per calibration batch (at least 2), each like the parameters;
        ``ḡ`` is their mean.

    Example:
      >>> import jax.numpy as jnp
      >>> gs = [{"w": jnp.array([1.0, -1.0])}, {"w": jnp.array([3.0, 1.0])}]
      >>> build = lambda g: {"w": jnp.sign(g["w"])}                # a step along the gradient's signs
      >>> cf = cross_fitted_first_order(build, gs)
      >>> float(cf.value), [float(f) for f in cf.folds]            # ⟨g₁, sign g₂⟩ = 0, ⟨g₂, sign g₁⟩ = 2
      (1.0, [0.0, 2.0])
    """
    grads = list(batch_grads)
    n = len(grads)
    if n < 2:
        raise ValueError(f"batch_grads has {n} gradient(s); cross-fitting holds one batch out and needs at least 2")
    if not callable(build):
        raise TypeError(f"build must be callable as build(gradient) -> change, got {build!r}")
    for i, g in enumerate(grads[1:], 1):
        trees.check_compatible(grads[0], g, ("batch_grads[0]", f"batch_grads[{i}]"))
    total = jax.tree.map(lambda *xs: sum(trees.widen(x) for x in xs) / n, *grads)
    per_leaf = []
    for i, g in enumerate(grads):
        change = build(_held_out(total, g, trees.scalar(float(n))))
        trees.check_compatible(g, change, (f"batch_grads[{i}]", "build(gradient)"), wide=True)
        per_leaf.append(np.asarray(jax.device_get(_dots(g, change)), np.float64))
        del change
    leaves = np.stack(per_leaf)  # fold, leaf
    folds = leaves.sum(axis=1)
    return CrossFit(
        value=float(folds.mean()),
        stderr=float(folds.std(ddof=1) / np.sqrt(n)),
        folds=folds,
        modules=dict(zip(trees.leaf_names(grads[0]), leaves.mean(axis=0).tolist())),
    )
