"""Pytree helpers shared by the engine: leaf names, compatibility and finiteness checks, inner
products in an accumulation dtype.

Leaf names join the path keys with dots (``model.layers.0.mlp.down_proj.weight``), so that for
parameter trees keyed by Hugging Face names the per-module reports speak those names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path: Iterable[Any]) -> str:
    """Dotted name of a key path, e.g. ``(DictKey('mlp'), DictKey('w'))`` → ``'mlp.w'``."""
    name = ".".join(_key_str(k) for k in path)
    return name or "<root>"


def leaf_names(tree: PyTree) -> list[str]:
    """Dotted names of the leaves of ``tree`` in flattening order.

    Example:
      >>> leaf_names({"model": {"layers": [{"w": 0.0}]}, "head": 1.0})
      ['head', 'model.layers.0.w']
    """
    return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def accum_dtype(*dtypes: Any) -> np.dtype:
    """The dtype sums are accumulated in: the widest of the given floating dtypes, at least
    float32 (so bfloat16/float16 accumulate in float32 and float64 stays float64).

    Explicit rather than ``jnp.promote_types``, which refuses bfloat16 + float32 under
    ``jax_numpy_dtype_promotion="strict"``.
    """
    widest = np.dtype(np.float32)
    for d in dtypes:
        d = np.dtype(d)
        if jnp.issubdtype(d, jnp.floating) and d.itemsize > widest.itemsize:
            widest = d
    return widest


def widen(x: Any) -> jax.Array:
    """``x`` as an array in its accumulation dtype (:func:`accum_dtype`): float32 for 16-bit and
    32-bit floats, float64 for float64. Traceable."""
    x = jnp.asarray(x)
    return x.astype(accum_dtype(x.dtype))


def widen_tree(tree: PyTree) -> PyTree:
    """Every leaf of ``tree`` widened with :func:`widen`."""
    return jax.tree_util.tree_map(widen, tree)


def zeros_like_wide(tree: PyTree) -> PyTree:
    """Zeros laid out like ``tree`` (same shapes and shardings) in each leaf's accumulation dtype,
    so that an accumulator donated into a jitted step is updated in place, never re-laid out."""

    def one(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        return jnp.zeros_like(x, dtype=accum_dtype(x.dtype), device=x.sharding)

    return jax.tree_util.tree_map(one, tree)


def check_compatible(reference: PyTree, other: PyTree, names: tuple[str, str], *, wide: bool = False) -> None:
    """Raise ``ValueError`` unless ``other`` has the structure, shapes and dtypes of ``reference``
    (with ``wide=True``, each leaf of ``other`` may instead be in the accumulation dtype of
    ``reference``'s: a float32 direction for bfloat16 parameters).

    The message names the first offending leaf path and gives both shapes and dtypes.
    """
    ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(reference)
    oth_leaves, oth_def = jax.tree_util.tree_flatten_with_path(other)
    a, b = names
    if ref_def != oth_def:
        ref_paths = [path_name(p) for p, _ in ref_leaves]
        oth_paths = [path_name(p) for p, _ in oth_leaves]
        missing = [p for p in ref_paths if p not in set(oth_paths)]
        extra = [p for p in oth_paths if p not in set(ref_paths)]
        detail = []
        if missing:
            detail.append(f"leaves in {a} but not in {b}: {missing[:5]}")
        if extra:
            detail.append(f"leaves in {b} but not in {a}: {extra[:5]}")
        if not detail:
            detail.append(f"{a} is {ref_def}, {b} is {oth_def}")
        raise ValueError(f"{a} and {b} differ in tree structure; " + "; ".join(detail))
    for (path, x), (_, y) in zip(ref_leaves, oth_leaves):
        sx, sy = np.shape(x), np.shape(y)
        dx, dy = jnp.result_type(x), jnp.result_type(y)
        if sx != sy or (dx != dy and not (wide and jnp.issubdtype(dx, jnp.floating) and dy == accum_dtype(dx))):
            also = f" (or {accum_dtype(dx)} for {b})" if wide else ""
            raise ValueError(
                f"leaf {path_name(path)!r}: {a} has shape {sx} dtype {dx}, "
                f"{b} has shape {sy} dtype {dy}; they must match{also}"
            )
        if not jnp.issubdtype(dx, jnp.floating):
            raise ValueError(f"leaf {path_name(path)!r}: {a} has dtype {dx}; expected a floating dtype")


@jax.jit
def _finite_flags(tree: PyTree) -> list[jax.Array]:
    return [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]


def nonfinite_leaves(tree: PyTree) -> list[str]:
    """Names of the leaves of ``tree`` holding a NaN or an infinity."""
    flags = jax.device_get(_finite_flags(tree))
    return [name for name, ok in zip(leaf_names(tree), flags) if not bool(ok)]


def check_finite(tree: PyTree, what: str) -> None:
    """Raise ``FloatingPointError`` naming the leaves of ``tree`` that are not finite."""
    bad = nonfinite_leaves(tree)
    if bad:
        raise FloatingPointError(f"{what} has non-finite values (NaN or inf) in leaves {bad[:5]}")


def leaf_vdots(a: PyTree, b: PyTree) -> list[jax.Array]:
    """Per-leaf ``Σ a ⊙ b`` in each leaf's accumulation dtype (traceable)."""
    out = []
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        dt = accum_dtype(x.dtype, y.dtype)
        out.append(jnp.sum(x.astype(dt) * y.astype(dt)))
    return out


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Frobenius inner product ``<a, b>`` summed over all leaves (traceable)."""
    parts = leaf_vdots(a, b)
    if not parts:
        return jnp.zeros((), jnp.float32)
    dt = accum_dtype(*(p.dtype for p in parts))
    return sum((p.astype(dt) for p in parts), jnp.zeros((), dt))


@jax.jit
def tree_norm(tree: PyTree) -> jax.Array:
    """Frobenius norm ``‖tree‖`` over all leaves, in the accumulation dtype (one compiled pass)."""
    return jnp.sqrt(tree_vdot(tree, tree))


def scalar(x: float) -> jax.Array:
    """A float scalar in the widest float JAX allows now: float64 under ``jax_enable_x64``,
    else float32 — so quadrature nodes and weights are exact in float64 runs."""
    return jnp.asarray(x, jax.dtypes.canonicalize_dtype(np.float64))


def move_along(start: PyTree, direction: PyTree, t: jax.Array) -> PyTree:
    """``start + t · direction`` computed in the accumulation dtype and cast back to each leaf's."""

    def one(s: jax.Array, d: jax.Array) -> jax.Array:
        dt = accum_dtype(s.dtype)
        return (s.astype(dt) + jnp.asarray(t).astype(dt) * d.astype(dt)).astype(s.dtype)

    return jax.tree_util.tree_map(one, start, direction)
