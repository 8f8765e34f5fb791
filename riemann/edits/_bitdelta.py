"""Decreased edits by quantization: BitDelta (Liu et al., 2024) and the unified-view paper's
extensions (Tang et al., 2024, §5.1, Figs. 4 and 5).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann.edits import _common as c

PyTree = Any
MAX_BITS = 16
MAGNITUDES = ("constant", "normal", "uniform")
DEFAULT_SPREAD = {"normal": 1.0 / 3.0, "uniform": 1.0}


def check_bitdelta(
    magnitude_bits: int = 0,
    multiple: float = 1.0,
    magnitudes: str = "constant",
    blocks: str = "count",
    scope: str = "matrix",
    spread: float | None = None,
    **_: Any,
) -> None:
    if (
        isinstance(magnitude_bits, bool)
        or not isinstance(magnitude_bits, (int, np.integer))
        or not 0 <= magnitude_bits <= MAX_BITS
    ):
        raise ValueError(f"bitdelta: magnitude_bits={magnitude_bits!r}; accepted: an integer in [0, {MAX_BITS}]")
    c.check_range("bitdelta", "multiple", multiple, -math.inf, math.inf)
    if magnitudes not in MAGNITUDES:
        raise ValueError(f"bitdelta: magnitudes={magnitudes!r}; accepted: {', '.join(MAGNITUDES)}")
    if blocks not in ("count", "width"):
        raise ValueError(f"bitdelta: blocks={blocks!r}; accepted: 'count' (equal-count), 'width' (equal-width)")
    if scope not in ("matrix", "global"):
        raise ValueError(f"bitdelta: scope={scope!r}; accepted: 'matrix', 'global'")
    if spread is not None:
        hi = 1.0 if magnitudes == "uniform" else math.inf
        c.check_range("bitdelta", "spread", spread, 0.0, hi)


@functools.partial(jax.jit, static_argnames=("bits", "blocks"))
def _block_means(a: jax.Array, bits: int, blocks: str) -> jax.Array:
    """Each entry of the flat magnitude array ``a`` replaced by the mean of its block.

    Equal-count blocks cut the sorted entries at ``ceil(j·N/2^b)``; equal-width blocks cut
    ``[min a, max a]`` into ``2^b`` equal bins. Both are nested in ``b`` (each block at ``b`` splits
    into two at ``b + 1``), so more bits never increase the L2 error.
    """
    nblocks = 2**bits
    if bits == 0:
        return jnp.broadcast_to(jnp.mean(a), a.shape)
    if blocks == "count":
        n = a.size
        order = jnp.argsort(a, stable=True)
        bounds = jnp.asarray([-(-j * n // nblocks) for j in range(1, nblocks)], jnp.int32)
        sorted_ids = jnp.searchsorted(bounds, jnp.arange(n, dtype=jnp.int32), side="right")
        ids = jnp.zeros(n, jnp.int32).at[order].set(sorted_ids)
    else:
        lo, hi = jnp.min(a), jnp.max(a)
        width = jnp.where(hi > lo, hi - lo, 1.0)
        ids = jnp.clip(jnp.floor((a - lo) / width * nblocks), 0, nblocks - 1).astype(jnp.int32)
    sums = jax.ops.segment_sum(a, ids, num_segments=nblocks)
    counts = jax.ops.segment_sum(jnp.ones_like(a), ids, num_segments=nblocks)
    return (sums / jnp.maximum(counts, 1.0))[ids]


@functools.partial(jax.jit, static_argnames=("magnitudes",))
def _finish_leaf(
    x: jax.Array, mag: jax.Array, key: jax.Array, multiple: jax.Array, spread: jax.Array, magnitudes: str
) -> jax.Array:
    """``multiple · m · sign(ΔW)`` with magnitudes ``m`` = ``mag`` or drawn around it."""
    xw = c.wide(x)
    mag = mag.reshape(x.shape).astype(xw.dtype)
    s = spread.astype(xw.dtype)
    if magnitudes == "normal":
        mag = jnp.abs(mag + s * mag * jax.random.normal(key, mag.shape, xw.dtype))
    elif magnitudes == "uniform":
        mag = mag * (1.0 + s * (2.0 * c.uniform(key, mag.shape).astype(xw.dtype) - 1.0))
    return (multiple.astype(xw.dtype) * mag * jnp.sign(xw)).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("bits", "blocks", "magnitudes"))
def _bitdelta_leaf(
    x: jax.Array, key: jax.Array, multiple: jax.Array, spread: jax.Array, bits: int, blocks: str, magnitudes: str
) -> jax.Array:
    # One compiled function per leaf shape, so XLA fuses |ΔW|, the block means and the output.
    mag = _block_means(jnp.abs(c.wide(x)).ravel(), bits, blocks)
    return _finish_leaf(x, mag, key, multiple, spread, magnitudes)


def bitdelta(
    delta: PyTree,
    *,
    magnitude_bits: int = 0,
    multiple: float = 1.0,
    magnitudes: str = "constant",
    key: Any = None,
    blocks: str = "count",
    scope: str = "matrix",
    spread: float | None = None,
    include: str | None = None,
    exclude: str | None = c.EMBEDDING_PATTERN,
    ndim: int | tuple[int, ...] | None = 2,
) -> PyTree:
    """BitDelta (Liu et al., 2024) as the unified-view paper analyses it (without scale
    distillation), and its extensions.

    Per matrix, ``F(ΔW) = multiple · μ · sign(ΔW)`` with ``μ = mean|ΔW|`` (1 bit per entry plus
    one scale). Extensions (Tang et al., 2024, §5.1):

    - ``multiple``: scale the average magnitude (Fig. 5; ``multiple = 1`` is BitDelta).
    - ``magnitude_bits = b``: sort entries by ``|ΔW|`` into ``2^b`` blocks and give each block its
      own mean magnitude (Fig. 4); ``blocks="count"`` (default) makes blocks of equal size,
      ``"width"`` of equal magnitude range. ``b = 0`` is BitDelta.
    - ``magnitudes="normal"``: magnitudes drawn i.i.d. from ``N(μ, (s·μ)²)``, ``s = spread``
      (default 1/3, so only 0.13 % of draws are negative; those are reflected, ``|·|``, which keeps
      the sign of ``ΔW`` and raises the mean by under 0.01 %). ``"uniform"``: from
      ``U(μ(1 − s), μ(1 + s))``, default ``s = 1`` (``U(0, 2μ)``), never negative. Both keep the
      mean ``μ`` of each block (Fig. 5) and need a ``key``.
    - ``scope="global"``: one ``μ`` (or one set of block means) over all selected leaves.

    Default selection: 2-D leaves except embeddings and output heads (names matching
    ``EMBEDDING_PATTERN``); norms, biases and embeddings keep their post-trained values.
    Pass ``exclude=None`` to edit embeddings too, or ``ndim=None`` for every rank.

    Example:
      >>> import jax.numpy as jnp
      >>> bitdelta({"w": jnp.array([[1.0, -3.0], [0.5, -0.5]])})["w"]    # mean |ΔW| = 1.25
      Array([[ 1.25, -1.25],
             [ 1.25, -1.25]], dtype=float32)
    """
    check_bitdelta(magnitude_bits, multiple, magnitudes, blocks, scope, spread)
    if magnitudes != "constant":
        key = c.as_key(key, f"bitdelta (magnitudes={magnitudes!r})")
    s = trees.scalar(DEFAULT_SPREAD.get(magnitudes, 0.0) if spread is None else spread)
    mult = trees.scalar(multiple)
    sel = {"include": include, "exclude": exclude, "ndim": ndim}
    root = key if key is not None else jax.random.key(0)  # unused unless magnitudes are drawn

    if scope == "matrix":
        return c.map_leaves(
            delta,
            "bitdelta",
            lambda name, x: _bitdelta_leaf(x, c.leaf_key(root, name), mult, s, magnitude_bits, blocks, magnitudes),
            **sel,
            whole=magnitude_bits > 0,
        )
    named = [(n, x) for n, x in c.check_delta(delta, "bitdelta") if c.selected(n, x, **sel)]
    if not named:
        return delta
    flat = jnp.concatenate([jnp.abs(c.wide(c.gathered(x))).ravel() for _, x in named])
    means = _block_means(flat, magnitude_bits, blocks)
    offsets = dict(zip([n for n, _ in named], np.cumsum([0] + [x.size for _, x in named])))
    return c.map_leaves(
        delta,
        "bitdelta",
        lambda name, x: _finish_leaf(
            x, means[offsets[name] : offsets[name] + x.size], c.leaf_key(root, name), mult, s, magnitudes
        ),
        **sel,
        whole=True,
    )
