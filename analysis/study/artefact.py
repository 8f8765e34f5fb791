"""The edited model as it would be saved, and the direction that reaches it exactly.

An edit computes ``F(ΔW)``; the model a user saves is ``W_edit = W_pre + F(ΔW)`` rounded to each
tensor's storage dtype. For bfloat16 (or float16) parameters that rounding matters: an entry whose
change is below half a bfloat16 step never moves (a weight of 1.0 changed by 1e-3 stays 1.0). So
the direction that is integrated and measured is ``ΔW~ = W_edit − W_post`` computed in float32
from the *rounded* ``W_edit``: the path ``W_post + t·ΔW~`` ends exactly on the saved artefact, the
measured change and the accuracy are those of the artefact, and integral + completeness gap =
measured change holds for what would be shipped. For float32 parameters the rounding is float32's
own and ``ΔW~`` is ``F(ΔW) − ΔW`` to float32 round-off.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann.tree_utils import leaf_names, widen

PyTree = Any
UNMOVED_WARN = 0.01  # a leaf that leaves more than this share of its intended changes unmoved is named


class UnmovedWarning(UserWarning):
    """Rounding to the storage dtype left a share of an edit's intended changes at ``W_post``."""


@dataclasses.dataclass(frozen=True)
class Artefact:
    """One edited model as stored.

    Attributes:
      params: ``W_pre + F(ΔW)``, each leaf rounded to ``W_post``'s dtype (what would be saved).
      change: ``params − W_post``, exact: computed in float32, stored in ``W_post``'s dtype where
        that is exact (:func:`compact`).
      unmoved: per leaf, the fraction of the entries the edit meant to change (``F(ΔW) ≠ ΔW``)
        that rounding left at ``W_post``; leaves with no intended change are left out.
      unmoved_fraction: the same over all leaves together (0.0 when nothing was meant to move).
    """

    params: PyTree
    change: PyTree
    unmoved: dict[str, float]
    unmoved_fraction: float


@jax.jit
def _exact_in(tree: PyTree, like: PyTree) -> list[jax.Array]:
    return [
        jnp.all(x.astype(y.dtype).astype(x.dtype) == x) for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(like))
    ]


def compact(tree: PyTree, like: PyTree) -> PyTree:
    """Each leaf of ``tree`` (float32) stored in ``like``'s dtype where that is exact for every
    entry, else kept in float32.

    Differences of two 16-bit models are float32 numbers, but nearly always 16-bit ones too (two
    nearby bfloat16 values differ by an exact bfloat16 number): storing such leaves in 16 bits
    halves the memory of ``ΔW`` and ``ΔW~`` on a large model, and changes no value."""
    flags = [bool(f) for f in jax.device_get(_exact_in(tree, like))]
    leaves, treedef = jax.tree.flatten(tree)
    out = [
        x.astype(y.dtype) if f and x.dtype != y.dtype else x for x, y, f in zip(leaves, jax.tree.leaves(like), flags)
    ]
    return jax.tree.unflatten(treedef, out)


@jax.jit
def difference(pre: PyTree, post: PyTree) -> PyTree:
    """``post − pre`` leaf by leaf, in each leaf's accumulation dtype (unrounded)."""
    return jax.tree.map(lambda a, b: widen(b) - widen(a), pre, post)


def delta_of(pre: PyTree, post: PyTree) -> PyTree:
    """``ΔW = W_post − W_pre``, exactly: computed in float32 for 16-bit leaves (a 16-bit subtraction
    would round it) and stored in 16 bits where that loses nothing (:func:`compact`)."""
    return compact(difference(pre, post), post)


@jax.jit
def _stored(pre: PyTree, post: PyTree, delta: PyTree, edited: PyTree) -> tuple[PyTree, PyTree, jax.Array]:
    def one(a: jax.Array, b: jax.Array, d: jax.Array, e: jax.Array) -> tuple[jax.Array, ...]:
        saved = (widen(a) + widen(e)).astype(b.dtype)
        change = widen(saved) - widen(b)
        meant = widen(e) != widen(d)
        return saved, change, jnp.sum(meant & (change == 0)), jnp.sum(meant)

    out = jax.tree.map(one, pre, post, delta, edited)
    saved, change = (jax.tree.map(lambda _, o, i=i: o[i], post, out) for i in range(2))
    # The counts leave as one small replicated array: one transfer, readable on every process.
    counts = jnp.stack([jnp.stack([o[2], o[3]]) for o in jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, tuple))])
    return saved, change, counts


def stored(pre: PyTree, post: PyTree, delta: PyTree, edited: PyTree) -> Artefact:
    """The artefact of ``edited = F(ΔW)`` (``delta`` = ``ΔW`` from :func:`delta_of`): rounded to
    ``post``'s dtypes, with the float32 direction that reaches it and what rounding left unmoved.

    Example:
      >>> import jax.numpy as jnp
      >>> pre = {"w": jnp.zeros(2, jnp.bfloat16)}
      >>> post = {"w": jnp.ones(2, jnp.bfloat16)}
      >>> a = stored(pre, post, delta_of(pre, post), {"w": jnp.array([1.001, 0.5])})
      >>> a.change["w"].tolist(), a.unmoved_fraction   # 1.001 rounds back to 1.0 in bfloat16
      ([0.0, -0.5], 0.5)
    """
    saved, change, counts = _stored(pre, post, delta, edited)
    change = compact(change, post)
    names = leaf_names(post)
    counts = np.asarray(jax.device_get(counts), np.int64)
    u, m = counts[:, 0], counts[:, 1]
    per_leaf = {n: float(a / b) for n, a, b in zip(names, u, m) if b > 0}
    total = float(u.sum() / m.sum()) if m.sum() > 0 else 0.0
    return Artefact(saved, change, per_leaf, total)


def warn_unmoved(artefact: Artefact, what: str, *, threshold: float = UNMOVED_WARN) -> list[str]:
    """Warn (:class:`UnmovedWarning`) naming every leaf where more than ``threshold`` of the
    intended changes did not survive rounding; returns those leaves."""
    bad = sorted((n for n, f in artefact.unmoved.items() if f > threshold), key=lambda n: -artefact.unmoved[n])
    if bad:
        shown = ", ".join(f"{n} ({artefact.unmoved[n]:.1%})" for n in bad[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        warnings.warn(
            f"{what}: rounding to the storage dtype left more than {threshold:.0%} of the intended changes "
            f"unmoved in {len(bad)} leaves: {shown}{more}; {artefact.unmoved_fraction:.1%} overall. The "
            "measured change and the estimates are of the rounded model that would be saved.",
            UnmovedWarning,
            stacklevel=2,
        )
    return bad
