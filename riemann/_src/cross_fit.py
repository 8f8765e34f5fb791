"""The first-order term of an edit built from the gradient, estimated on batches it was not built on.

Some edits are chosen by the gradient they will be judged with: the biased ``ΔW·∇L`` split scales
each entry by the sign of ``ΔW ⊙ g``, gradient-saliency pruning keeps the largest ``|ΔW ⊙ g|``. For
such an edit ``x(ḡ)``, built from the mean calibration gradient ``ḡ``, the in-sample first-order
term ``⟨ḡ, x(ḡ)⟩`` is biased towards the selection: wherever ``ḡ``'s noise happens to put an entry
into the scaled group, it also makes that entry's contribution look larger (the winner's curse).
On held-out data the term is ``⟨g_test, x(ḡ)⟩``, which is what the measured change sees.

Cross-fitting (leave one batch out, as in double machine learning) estimates it from the
calibration batches alone::

    F = (1/n) Σ_i ⟨g_i, x(ḡ_{−i})⟩,      ḡ_{−i} = (n·ḡ − g_i)/(n − 1),

each batch's gradient ``g_i`` scoring an edit that did not see it. ``F`` is unbiased for the edit
built from ``n − 1`` batches, which differs from ``x(ḡ)`` only where an entry's group is decided by
noise, and so where the mean gradient is small. Its standard error is the spread of the ``n`` terms
over ``√n``; ``bias = ⟨ḡ, x(ḡ)⟩ − F`` is what the in-sample term over-states.

Costs no pass beyond one gradient per batch (:func:`batch_gradients`, streamed): per edit, ``n + 1``
edits built and as many inner products, holding ``ḡ``, one ``g_i``, one ``ḡ_{−i}`` and one edit at
a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from riemann._src import trees
from riemann._src.curvature import _grad_jit
from riemann._src.pacing import pace

PyTree = Any


@dataclasses.dataclass(frozen=True)
class CrossFit:
    """A cross-fitted first-order term (:func:`cross_fitted_first_order`).

    Attributes:
      value: ``F = (1/n) Σ_i ⟨g_i, x(ḡ_{−i})⟩``.
      stderr: the standard deviation of the ``n`` terms over ``√n``.
      folds: ``⟨g_i, x(ḡ_{−i})⟩`` per held-out batch ``i``.
      modules: ``F`` per leaf (leaf name → value); they sum to ``value``.
      in_sample: ``⟨ḡ, x(ḡ)⟩``, the term the edit's own gradient gives it.
      in_sample_modules: the same per leaf.
    """

    value: float
    stderr: float
    folds: np.ndarray
    modules: dict[str, float]
    in_sample: float
    in_sample_modules: dict[str, float]

    @property
    def bias(self) -> float:
        """``⟨ḡ, x(ḡ)⟩ − F``: what the in-sample term over-states (the winner's curse)."""
        return self.in_sample - self.value


def batch_gradients(loss_fn: Any, params: PyTree, batches: Iterable[Any]) -> Iterator[PyTree]:
    """``∇L_b(params)`` for each batch in turn, in the accumulation dtype, one gradient pass each
    (a generator: one gradient is alive at a time). The pass is :func:`riemann.shared_curvature`'s
    own (``probes=0``), so their mean is its ``grad`` up to the order of summation."""
    one = trees.scalar(1.0)
    for batch in batches:
        g, _ = _grad_jit(loss_fn, trees.zeros_like_wide(params), params, batch, one)
        yield pace(g)


@jax.jit
def _held_out(mean: PyTree, g: PyTree, n: jax.Array) -> PyTree:
    return jax.tree.map(lambda t, x: (n.astype(t.dtype) * t - x.astype(t.dtype)) / (n.astype(t.dtype) - 1), mean, g)


@jax.jit
def _dots(g: PyTree, change: PyTree) -> list[jax.Array]:
    return trees.leaf_vdots(g, change)


def _leaf_dots(g: PyTree, change: PyTree, what: str) -> np.ndarray:
    # The change may be stored narrower (bfloat16) than the gradient's accumulation dtype.
    trees.check_compatible(change, g, (what, "the gradient"), wide=True)
    return np.asarray(jax.device_get(_dots(g, change)), np.float64)


def cross_fitted_first_order(
    build: Callable[[PyTree], PyTree] | Mapping[Any, Callable[[PyTree], PyTree]],
    batch_grads: Iterable[PyTree],
    *,
    mean: PyTree | None = None,
    num_batches: int | None = None,
) -> CrossFit | dict[Any, CrossFit]:
    """``(1/n) Σ_i ⟨g_i, x(ḡ_{−i})⟩``: the first-order term of the edit ``x = build(gradient)``
    scored, batch by batch, on a gradient it was not built from (module docstring).

    Args:
      build: ``gradient -> change``, the edit's change ``W_edit − W_post`` as a function of the
        gradient it is made from (for the biased split: ``biased_product(ΔW, g, k=k) − ΔW``); or a
        mapping of names to such functions, all scored on the same gradients.
      batch_grads: ``∇L_b`` per calibration batch (at least 2), each like the parameters: a
        sequence, or an iterable such as :func:`batch_gradients` with ``mean`` and ``num_batches``
        given, so that only one is held at a time.
      mean: ``ḡ``, their mean (computed from ``batch_grads`` when not given, which then holds them
        all).
      num_batches: how many ``batch_grads`` yields (needed with ``mean`` when it has no length).

    Returns:
      A :class:`CrossFit`, or a dict of them keyed like ``build``.

    Example:
      >>> import jax.numpy as jnp
      >>> gs = [{"w": jnp.array([1.0, -1.0])}, {"w": jnp.array([3.0, 1.0])}]
      >>> build = lambda g: {"w": jnp.sign(g["w"])}                # a step along the gradient's signs
      >>> cf = cross_fitted_first_order(build, gs)
      >>> float(cf.value), [float(f) for f in cf.folds]            # ⟨g₁, sign g₂⟩ = 0, ⟨g₂, sign g₁⟩ = 2
      (1.0, [0.0, 2.0])
      >>> float(cf.in_sample), float(cf.bias)                      # ⟨ḡ, sign ḡ⟩ = 2 + 0: the curse is 1
      (2.0, 1.0)
    """
    single = callable(build)
    if not single and not isinstance(build, Mapping):
        raise TypeError(f"build must be callable as build(gradient) -> change (or a mapping of them), got {build!r}")
    builds = {None: build} if single else dict(build)
    if not builds:
        raise ValueError("build is an empty mapping; expected at least one edit to cross-fit")
    for name, fn in builds.items():
        if not callable(fn):
            which = "build" if single else f"build[{name!r}]"
            raise TypeError(f"{which} must be callable as build(gradient) -> change, got {fn!r}")
    if mean is None:
        batch_grads = list(batch_grads)
        if not batch_grads:
            raise ValueError("batch_grads is empty; cross-fitting holds one batch out and needs at least 2")
        for i, g in enumerate(batch_grads[1:], 1):
            trees.check_compatible(batch_grads[0], g, ("batch_grads[0]", f"batch_grads[{i}]"))
        mean = jax.tree.map(lambda *xs: sum(trees.widen(x) for x in xs) / len(xs), *batch_grads)
    n = num_batches if num_batches is not None else len(batch_grads) if hasattr(batch_grads, "__len__") else None
    if n is None:
        raise ValueError("num_batches is required when batch_grads has no length (a generator) and mean is given")
    if n < 2:
        raise ValueError(f"{n} batch gradient(s); cross-fitting holds one batch out and needs at least 2")
    per_leaf: dict[Any, list[np.ndarray]] = {k: [] for k in builds}
    seen = 0
    for i, g in enumerate(batch_grads):
        trees.check_compatible(mean, g, ("mean", f"batch_grads[{i}]"), wide=True)
        out = _held_out(mean, g, trees.scalar(float(n)))
        for k, fn in builds.items():
            per_leaf[k].append(_leaf_dots(g, fn(out), "build(gradient)"))
        del out
        seen += 1
    if seen != n:
        raise ValueError(f"batch_grads yielded {seen} gradient(s); num_batches={n}")
    names = trees.leaf_names(mean)
    fits = {}
    for k, fn in builds.items():
        leaves = np.stack(per_leaf[k])  # fold, leaf
        folds = leaves.sum(axis=1)
        own = _leaf_dots(mean, fn(mean), "build(gradient)")
        fits[k] = CrossFit(
            value=float(folds.mean()),
            stderr=float(folds.std(ddof=1) / np.sqrt(n)),
            folds=folds,
            modules=dict(zip(names, leaves.mean(axis=0).tolist())),
            in_sample=float(own.sum()),
            in_sample_modules=dict(zip(names, own.tolist())),
        )
    return fits[None] if single else fits
