"""Decreased edits by magnitude: the TIES trim step on one model, and multi-model TIES merging.

Trimming keeps the largest entries by ``|ΔW|`` without rescaling, so ``ΔW~ = −(1 − M) ⊙ ΔW``
with a mask that depends on ``ΔW`` (Tang et al., 2024, §5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann.edits import _common as c

PyTree = Any


def check_magnitude(keep: float, scope: str = "tensor", **_: Any) -> None:
    c.check_range("magnitude", "keep", keep, 0.0, 1.0, lo_open=True)
    if scope not in ("tensor", "global"):
        raise ValueError(f"magnitude: scope={scope!r}; accepted: 'tensor', 'global'")


def _count(keep: float, size: int) -> int:
    # ceil, so that any keep > 0 keeps at least one entry of a non-empty tensor.
    return min(size, max(1 if size else 0, math.ceil(keep * size - 1e-9)))


@jax.jit
def _top_mask(a: jax.Array, count: jax.Array) -> jax.Array:
    """Boolean mask of the ``count`` largest entries of the flat non-negative array ``a``; among
    equal values at the threshold, lower indices win (the order a stable sort gives).

    Instead of sorting (slow on CPU for tens of millions of entries), the threshold is found by
    bisection on the float32 bit patterns, which order non-negative floats exactly: 31 counting
    passes find the ``count``-th largest value, then one prefix sum settles ties.
    """
    bits = jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)

    def body(_: int, lohi: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = lohi  # invariant: count(bits >= lo) >= count > count(bits >= hi)
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits >= mid, dtype=jnp.int32) >= count
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, body, (jnp.int32(0), jnp.int32(0x7F800001)))
    greater = bits > lo
    equal = bits == lo
    room = count - jnp.sum(greater, dtype=jnp.int32)
    return (greater | (equal & (jnp.cumsum(equal, dtype=jnp.int32) <= room))) & (count > 0)


@jax.jit
def _trim_leaf(x: jax.Array, count: jax.Array, scale: jax.Array) -> jax.Array:
    xw = c.wide(x)
    mask = _top_mask(jnp.abs(xw).ravel(), count).reshape(x.shape)
    return jnp.where(mask, scale.astype(xw.dtype) * xw, 0.0).astype(x.dtype)


def magnitude(
    delta: PyTree,
    keep: float,
    *,
    rescale: bool = False,
    scope: str = "tensor",
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | None = None,
) -> PyTree:
    """Magnitude trim (the TIES trim step, Yadav et al., 2023): keep the ``keep`` fraction of
    entries with the largest ``|ΔW|`` and zero the rest, ``F = M ⊙ ΔW``.

    Args:
      keep: fraction kept, in (0, 1]; ``ceil(keep·size)`` entries (ties broken by position).
      rescale: divide survivors by ``keep`` (as DARE rescales by ``1/(1 − p)``); off by default,
        as in TIES.
      scope: ``"tensor"`` ranks within each tensor (default); ``"global"`` ranks across all
        selected leaves together.
      include, exclude, ndim: leaf selection; default every leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> magnitude({"w": jnp.array([0.1, -3.0, 2.0, -0.5])}, 0.5)["w"]
      Array([ 0., -3.,  2.,  0.], dtype=float32)
    """
    check_magnitude(keep, scope)
    scale = trees.scalar(1.0 / keep if rescale else 1.0)
    if scope == "tensor":
        return c.map_leaves(
            delta,
            "magnitude",
            lambda name, x: _trim_leaf(x, jnp.asarray(_count(keep, x.size)), scale),
            include=include,
            exclude=exclude,
            ndim=ndim,
            whole=True,
        )
    named = [(n, x) for n, x in c.check_delta(delta, "magnitude") if c.selected(n, x, include, exclude, ndim)]
    flat = jnp.concatenate([jnp.abs(c.wide(c.gathered(x))).ravel() for _, x in named]) if named else jnp.zeros((0,))
    mask = _top_mask(flat, jnp.asarray(_count(keep, flat.size)))
    offsets = np.cumsum([0] + [x.size for _, x in named])
    masks = {n: mask[o : o + x.size].reshape(x.shape) for (n, x), o in zip(named, offsets)}
    return c.map_leaves(
        delta,
        "magnitude",
        lambda name, x: jnp.where(masks[name], scale.astype(c.wide(x).dtype) * c.wide(x), 0.0),
        include=include,
        exclude=exclude,
        ndim=ndim,
        whole=True,
    )


def check_ties(keep: float, lam: float = 1.0, **_: Any) -> None:
    c.check_range("ties", "keep", keep, 0.0, 1.0, lo_open=True)
    c.check_range("ties", "lam", lam, -math.inf, math.inf)


@jax.jit
def _ties_leaf(stack: jax.Array, lam: jax.Array) -> jax.Array:
    elected = jnp.sign(jnp.sum(stack, axis=0, keepdims=True))
    agree = (jnp.sign(stack) == elected) & (stack != 0)
    total = jnp.sum(jnp.where(agree, stack, 0.0), axis=0)
    count = jnp.sum(agree, axis=0).astype(stack.dtype)
    return lam.astype(stack.dtype) * total / jnp.maximum(count, 1.0)


def ties(
    deltas: Sequence[PyTree],
    keep: float,
    *,
    lam: float = 1.0,
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | None = None,
) -> PyTree:
    """TIES-merging (Yadav et al., 2023): trim each delta to its top ``keep`` fraction per tensor,
    elect each entry's sign by the summed trimmed mass, average the trimmed entries that agree
    with it (disjoint mean), and scale by ``λ``.

    With one delta this is the trim step the unified-view paper analyses
    (``magnitude(delta, keep)`` times ``λ``). Leaves outside the selection are averaged
    (with one delta: unchanged).

    Args:
      deltas: a sequence of delta pytrees with identical structure, shapes and dtypes.
      keep: fraction kept per tensor, in (0, 1].
      lam: scale of the merged delta.

    Example:
      >>> import jax.numpy as jnp
      >>> a, b = {"w": jnp.array([3.0, -1.0, 0.5])}, {"w": jnp.array([1.0, -2.0, -4.0])}
      >>> [float(v) for v in ties([a, b], keep=1.0)["w"]]   # signs elected by mass; agreeing entries averaged
      [2.0, -1.5, -4.0]
    """
    check_ties(keep, lam)
    if not isinstance(deltas, Sequence) or isinstance(deltas, dict) or len(deltas) == 0:
        raise ValueError("ties: deltas must be a non-empty list of delta pytrees")
    for i, d in enumerate(deltas[1:], start=1):
        trees.check_compatible(deltas[0], d, ("deltas[0]", f"deltas[{i}]"))
    deltas = [jax.tree_util.tree_map(c.gathered, d) for d in deltas]
    trimmed = [magnitude(d, keep) for d in deltas]
    names = [n for n, _ in c.check_delta(deltas[0], "ties")]
    leaves = [jax.tree_util.tree_leaves(d) for d in deltas]
    tleaves = [jax.tree_util.tree_leaves(t) for t in trimmed]
    lam_a = trees.scalar(lam)
    out = []
    for i, name in enumerate(names):
        x = jnp.asarray(leaves[0][i])
        if c.selected(name, x, include, exclude, ndim):
            merged = _ties_leaf(jnp.stack([c.wide(jnp.asarray(t[i])) for t in tleaves]), lam_a)
        else:
            merged = jnp.mean(jnp.stack([c.wide(jnp.asarray(leaf[i])) for leaf in leaves]), axis=0)
        out.append(merged.astype(x.dtype))  # replicated: a merge of several models has no one layout
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(deltas[0]), out)
