"""Improved edit: extrapolation of the delta (EXPO; Zheng et al., 2024, "Weak-to-Strong
Extrapolation Expedites Alignment")."""

from __future__ import annotations

import math
from typing import Any

import jax

from riemann._src import trees
from riemann.edits import _common as c

PyTree = Any


def check_expo(alpha: float, **_: Any) -> None:
    c.check_range("expo", "alpha", alpha, -math.inf, math.inf)


@jax.jit
def _scale_leaf(x: jax.Array, factor: jax.Array) -> jax.Array:
    xw = c.wide(x)
    return (factor.astype(xw.dtype) * xw).astype(x.dtype)


def expo(
    delta: PyTree,
    alpha: float,
    *,
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | None = None,
) -> PyTree:
    """EXPO: ``F(ΔW) = (1 + α)·ΔW``, so ``ΔW~ = α·ΔW`` and the approximation term is
    ``(α/C)·Σ_c <ΔW, ∇L(W_post + (c/C)·α·ΔW)>`` (Tang et al., 2024, §6). ``α > 0`` extrapolates
    past the post-trained model, ``α < 0`` interpolates back towards the pre-trained one
    (``α = −1`` is ``W_pre``).

    Example:
      >>> import jax.numpy as jnp
      >>> expo({"w": jnp.array([1.0, -2.0])}, 0.5)["w"]
      Array([ 1.5, -3. ], dtype=float32)
    """
    check_expo(alpha)
    factor = trees.scalar(1.0 + alpha)
    return c.map_leaves(
        delta, "expo", lambda name, x: _scale_leaf(x, factor), include=include, exclude=exclude, ndim=ndim
    )
