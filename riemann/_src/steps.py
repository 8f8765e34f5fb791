"""The engine's jitted (node, batch) steps of a path integral, and their lowering for planning.

A path integral ``∫_0^1 ⟨∇L(W + t·D), D⟩ dt`` is a quadrature over nodes ``t_i`` and data batches;
each (node, batch) pair costs one of these steps:

- ``accumulate`` mode: ``acc += w_i · ∇L(W + t_i·D)`` (reverse mode, one float32 accumulator
  donated into each step so it is updated in place), also returning the loss and ``⟨∇L, D⟩``;
- ``forward`` mode: the loss and ``⟨∇L(W + t_i·D), D⟩ = d/dε L(W + t_i·D + ε·D)`` by ``jax.jvp``:
  no gradient is formed and nothing is accumulated;
- ``leaves`` mode: the loss and ``⟨∇L(W + t_i·D)_leaf, D_leaf⟩`` for every leaf, the gradient
  reduced leaf by leaf where it is formed and never kept: ``nodes × leaves`` scalars give the value
  and the per-module terms of any rule with no float32 accumulator.

``loss_fn`` is a static argument (hashed by identity), so a step compiles once per (loss function,
shapes) and is reused by every later call, whatever the rule and node count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from riemann._src import trees

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]
MODES: tuple[str, ...] = ("accumulate", "forward", "leaves")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(
            f"mode={mode!r}; expected 'accumulate' (gradient accumulator), 'forward' (jvp products) or "
            "'leaves' (per-leaf gradient terms, no accumulator)"
        )


def check_inputs(loss_fn: LossFn, start: PyTree, direction: PyTree) -> None:
    """Refuse a loss that is not callable, trees that differ (naming the first offending leaf),
    an empty tree, and non-finite parameters (naming the leaves). A direction may be in the
    accumulation dtype of 16-bit parameters: the exact difference of two bfloat16 models."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch) -> scalar, got {loss_fn!r}")
    trees.check_compatible(start, direction, ("start", "direction"), wide=True)
    if not jax.tree_util.tree_leaves(start):
        raise ValueError("start has no array leaves; expected a pytree of floating arrays")
    trees.check_finite(start, "start")
    trees.check_finite(direction, "direction")


def _grad_step(
    loss_fn: LossFn, acc: PyTree, start: PyTree, direction: PyTree, t: jax.Array, w: jax.Array, batch: Any
) -> tuple[PyTree, jax.Array, jax.Array]:
    """``acc += w·∇L(start + t·direction)``; also the loss and ``⟨∇L, direction⟩`` at the node."""
    point = trees.move_along(start, direction, t)
    loss, g = jax.value_and_grad(loss_fn)(point, batch)
    return _accumulate(acc, g, w), trees.widen(loss), trees.tree_vdot(g, direction)


def _accumulate(acc: PyTree, g: PyTree, w: jax.Array) -> PyTree:
    """``acc + w·g`` in the accumulator's dtype."""
    return jax.tree_util.tree_map(lambda a, gi: a + w.astype(a.dtype) * gi.astype(a.dtype), acc, g)


grad_step = jax.jit(_grad_step, static_argnums=0, donate_argnums=1)


def _known_step(
    acc: PyTree | None, g: PyTree, direction: PyTree, w: jax.Array, *, leaves: bool = False
) -> tuple[PyTree | None, jax.Array]:
    """A node at ``t = 0`` whose gradient ``g = ∇L(start)`` is already known: ``acc += w·g`` (when
    there is an accumulator) and ``⟨g, direction⟩``, or the per-leaf terms (``leaves``), with no
    pass through the model."""
    if acc is not None:
        acc = _accumulate(acc, g, w)
    dot = jnp.stack(trees.leaf_vdots(g, direction)) if leaves else trees.tree_vdot(g, direction)
    return acc, dot


known_step = jax.jit(_known_step, static_argnames="leaves", donate_argnums=0)


def _jvp_step(
    loss_fn: LossFn, start: PyTree, direction: PyTree, t: jax.Array, batch: Any
) -> tuple[jax.Array, jax.Array]:
    """The loss and ``⟨∇L(start + t·D), D⟩`` as the directional derivative ``d/dε L(start + t·D + ε·D)``."""
    point = trees.move_along(start, direction, t)
    # A tangent must have its primal's dtype: a float32 direction on bfloat16 parameters enters the
    # product rounded to bfloat16, the precision the model's own forward pass has there.
    tangent = jax.tree.map(lambda d, p: d.astype(p.dtype), direction, point)
    loss, dot = jax.jvp(lambda p: loss_fn(p, batch), (point,), (tangent,))
    wide = trees.accum_dtype(jnp.result_type(loss))
    return jnp.asarray(loss).astype(wide), jnp.asarray(dot).astype(wide)


jvp_step = jax.jit(_jvp_step, static_argnums=0)


def _leaf_step(
    loss_fn: LossFn, start: PyTree, direction: PyTree, t: jax.Array, batch: Any
) -> tuple[jax.Array, jax.Array]:
    """The loss and ``⟨∇L(start + t·D)_leaf, D_leaf⟩`` for every leaf (a vector in leaf order): the
    gradient is reduced leaf by leaf where it is formed, and never kept."""
    loss, g = jax.value_and_grad(loss_fn)(trees.move_along(start, direction, t), batch)
    return trees.widen(loss), jnp.stack(trees.leaf_vdots(g, direction))


leaf_step = jax.jit(_leaf_step, static_argnums=0)


def _loss_at(loss_fn: LossFn, start: PyTree, direction: PyTree, t: jax.Array, batch: Any) -> jax.Array:
    return trees.widen(loss_fn(trees.move_along(start, direction, t), batch))


loss_at = jax.jit(_loss_at, static_argnums=0)


def lower_path_step(loss_fn: LossFn, start: PyTree, batch: Any, *, mode: str = "accumulate") -> jax.stages.Lowered:
    """Lower the engine's own (node, batch) step of a path integral from ``start`` without running it.

    ``start`` and ``batch`` may be abstract (``jax.ShapeDtypeStruct`` leaves, with shardings):
    nothing is allocated, and ``.compile().memory_analysis()`` of the result is XLA's memory plan
    for exactly the step :func:`riemann.integrate_path` runs, on this process's backend. In
    ``accumulate`` mode the step's arguments are the float32 accumulator (donated), ``start``, the
    direction (shaped like ``start``), the node, the weight and the batch; in ``forward`` mode
    ``start``, the direction, the node and the batch.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> spec = {"w": jax.ShapeDtypeStruct((4, 4), jnp.bfloat16)}
      >>> lowered = lower_path_step(lambda p, x: jnp.sum(p["w"].astype(jnp.float32) @ x), spec,
      ...                           jax.ShapeDtypeStruct((4,), jnp.float32))
      >>> lowered.compile().memory_analysis().alias_size_in_bytes    # the float32 accumulator, updated in place
      64
    """
    check_mode(mode)
    scalar = jax.ShapeDtypeStruct((), trees.scalar(0.0).dtype)

    def wide(x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, trees.accum_dtype(x.dtype), sharding=getattr(x, "sharding", None))

    if mode == "forward":
        return jvp_step.lower(loss_fn, start, start, scalar, batch)
    if mode == "leaves":
        return leaf_step.lower(loss_fn, start, start, scalar, batch)
    return grad_step.lower(loss_fn, jax.tree_util.tree_map(wide, start), start, start, scalar, scalar, batch)
