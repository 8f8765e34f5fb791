"""Machinery shared by the edit operators: leaf selection, per-leaf keys, argument checks.

Every edit maps a delta pytree to an edited delta with the same structure, shapes and dtypes.
Leaves an edit does not select are returned unchanged (``F(ΔW) = ΔW`` there: the edited model
keeps the post-trained value). Each random leaf draws from ``fold_in(key, crc32(leaf name))``,
so its randomness depends on the root key and the leaf's name only: not on traversal order,
on which other leaves exist, or on sharding (JAX's threefry is partitionable).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann._src.pacing import pace

PyTree = Any

# Embedding and output-head matrices are 2-D but are not the linear maps that BitDelta and low-rank
# compression target (they act on transformer-block weights); names follow HF conventions.
EMBEDDING_PATTERN = r"(embed|wte|wpe|lm_head|position_embedding|token_embedding|patch_embedding|class_embedding)"


def leaf_key(key: jax.Array, name: str) -> jax.Array:
    """Key of one leaf: the root key folded with a stable 32-bit hash of the leaf's name
    (``fold_in(key, crc32(name))``), so a leaf's randomness never depends on the other leaves.

    Example:
      >>> import jax
      >>> k = jax.random.key(0)
      >>> bool((jax.random.key_data(leaf_key(k, "a.w")) == jax.random.key_data(leaf_key(k, "a.w"))).all())
      True
    """
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def as_key(key: Any, edit: str) -> jax.Array:
    """Accept a typed key (``jax.random.key``) or a raw uint32 key (``jax.random.PRNGKey``)."""
    if key is None:
        raise ValueError(f"{edit}: this edit is random and needs an explicit key=jax.random.key(seed)")
    if isinstance(key, (int, np.integer)):
        raise ValueError(f"{edit}: key must be a JAX PRNG key (jax.random.key(seed)), got the integer {key}")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def selected(name: str, x: Any, include: str | None, exclude: str | None, ndim: int | tuple[int, ...] | None) -> bool:
    """Whether an edit acts on leaf ``name``: a regex ``include`` (``re.search``) that must match,
    an ``exclude`` that must not, and the accepted ranks ``ndim``."""
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if np.ndim(x) not in allowed:
            return False
    if include is not None and re.search(include, name) is None:
        return False
    if exclude is not None and re.search(exclude, name) is not None:
        return False
    return True


def check_delta(delta: PyTree, edit: str) -> list[tuple[str, jax.Array]]:
    """Named leaves of ``delta`` as arrays, each of a floating dtype."""
    flat, _ = jax.tree_util.tree_flatten_with_path(delta)
    out = []
    for path, x in flat:
        name = trees.path_name(path)
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{edit}: leaf {name!r} has dtype {x.dtype}; edits act on floating deltas")
        out.append((name, x))
    return out


def gathered(x: jax.Array) -> jax.Array:
    """``x`` replicated over its mesh, for operations that need a whole tensor at once (sorting,
    prefix sums over the flat tensor, SVD). One tensor at a time, so the extra memory is one leaf."""
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and not sharding.is_fully_replicated:
        return jax.device_put(x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    return x


def map_leaves(
    delta: PyTree,
    edit: str,
    fn: Callable[[str, jax.Array], jax.Array],
    *,
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | tuple[int, ...] | None = None,
    whole: bool = False,
) -> PyTree:
    """Apply ``fn(name, leaf)`` to every selected leaf; the rest pass through unchanged.

    ``fn`` computes in float32 (or wider); the result is cast back to the leaf's dtype and laid
    out with the leaf's sharding. ``whole=True`` hands ``fn`` each leaf replicated
    (:func:`gathered`), for edits that rank or factor a whole tensor.
    """
    named = check_delta(delta, edit)
    treedef = jax.tree_util.tree_structure(delta)
    out = []
    for name, x in named:
        if selected(name, x, include, exclude, ndim):
            y = fn(name, gathered(x) if whole else x).astype(x.dtype)
            if whole and y.sharding != x.sharding:
                y = jax.device_put(y, x.sharding)
            out.append(pace(y))  # a gathered leaf is a collective under several processes
        else:
            out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


def check_range(
    edit: str, arg: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """``value`` as a float inside [lo, hi] (ends open as asked), else a ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{edit}: {arg} must be a number, got {value!r}") from None
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{edit}: {arg}={value!r} is outside the accepted range {interval}")
    return v


def _mix32(h: jax.Array) -> jax.Array:
    # lowbias32 (C. Wellons, "Prospecting for hash functions", 2018): a 32-bit integer hash with
    # near-ideal avalanche; two rounds separate the two seed words.
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Counter-based float32 uniforms in [0, 1) with 24-bit resolution, one per entry.

    Entry ``i`` (flat index) gets ``mix(mix(i ^ s0) + s1) >> 8`` scaled by 2⁻²⁴, where ``(s0, s1)``
    are 64 bits drawn from ``key`` with JAX's threefry. Like Philox this is a counter-based
    generator, so the value of each entry depends only on the key and its index: the same on
    every device, sharding and backend. It fuses into the edit's single pass over the tensor,
    where ``jax.random.bernoulli`` makes passes of its own (``riemann bench --only edit_cost``
    measures the edits against an elementwise multiply).
    """
    size = math.prod(shape)
    if size >= 2**32:
        return jax.random.uniform(key, shape, jnp.float32)
    seed = jax.random.bits(key, (2,), jnp.uint32)
    idx = jax.lax.iota(jnp.uint32, size).reshape(shape)
    h = _mix32(_mix32(idx ^ seed[0]) + seed[1])
    return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


wide = trees.widen  # edits compute in the accumulation dtype (float32 for 16-bit floats)
