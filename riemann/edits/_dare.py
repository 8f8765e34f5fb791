"""Competitive edits: DARE and its k-extension, the Table 1 biased variants, DELLA (MAGPRUNE).

All are multiplicative, ``F(ΔW) = m ⊙ ΔW``, so ``ΔW~ = (m − 1) ⊙ ΔW``; when ``m`` is independent
of ``ΔW ⊙ ∇L`` with ``E[m] = 1`` the first-order term has zero expectation (Tang et al., 2024, §4).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from riemann._src import trees
from riemann.edits import _common as c

PyTree = Any


def check_dare(p: float, k: float = 0.0, leaf: str | None = None, **_: Any) -> None:
    c.check_range("dare" if leaf is None else f"dare (leaf {leaf!r})", "p", p, 0.0, 1.0, hi_open=True)
    c.check_range("dare", "k", k, -math.inf, math.inf)


@functools.partial(jax.jit, static_argnames=("rescale",))
def _dare_leaf(x: jax.Array, key: jax.Array, p: jax.Array, k: jax.Array, rescale: bool) -> jax.Array:
    xw = c.wide(x)
    p, k = p.astype(xw.dtype), k.astype(xw.dtype)
    drop = c.uniform(key, x.shape).astype(xw.dtype) < p
    kept = (1.0 - k * p) / (1.0 - p) if rescale else jnp.ones((), xw.dtype)
    return jnp.where(drop, k * xw, kept * xw).astype(x.dtype)


def dare(
    delta: PyTree,
    p: float | Mapping[str, float],
    *,
    k: float = 0.0,
    key: Any = None,
    rescale: bool = True,
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | None = None,
) -> PyTree:
    """DARE (Yu et al., 2024, "Language Models are Super Mario") and its k-extension (Tang et al.,
    2024, §4.1, Fig. 1/2).

    Each entry is dropped with probability ``p`` (``M ~ Bernoulli(p)``, 1 = drop, from the
    counter-based uniforms of :func:`riemann.edits._common.uniform`); dropped entries
    are multiplied by ``k``, kept ones by ``(1 − k·p)/(1 − p)``:
    ``F = [k·M + (1 − k·p)/(1 − p)·(1 − M)] ⊙ ΔW``, so ``E[F] = ΔW`` and
    ``ΔW~ = (k − 1)(M − p)/(1 − p) ⊙ ΔW``. ``k = 0`` is DARE; ``rescale=False`` is "drop only"
    (kept entries unscaled, ``F = (k·M + 1 − M) ⊙ ΔW``), which is not expectation-preserving.

    Args:
      delta: pytree of floating arrays ``ΔW``.
      p: drop probability in [0, 1), or one per leaf: a mapping from dotted leaf name to its
        probability (e.g. :func:`riemann.closed_form.dare_allocation`'s), leaves it does not name
        left unchanged; a leaf draws the same uniforms either way, so masks nest across rates.
      k: factor for dropped entries.
      key: JAX PRNG key; each leaf uses ``fold_in(key, crc32(leaf name))`` (:func:`leaf_key`).
      rescale: rescale kept entries (True) or not ("drop only").
      include, exclude, ndim: leaf selection (regexes on the dotted leaf name, accepted ranks);
        default: every leaf.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> out = dare({"w": jnp.ones(100_000)}, 0.9, key=jax.random.key(0))
      >>> round(float(jnp.mean(out["w"] == 0)), 2), round(float(jnp.mean(out["w"])), 1)  # 90 % dropped, mean kept
      (0.9, 1.0)
    """
    key = c.as_key(key, "dare")
    ka = trees.scalar(k)
    if isinstance(p, Mapping):
        if include is not None or exclude is not None or ndim is not None:
            raise ValueError("dare: per-leaf rates name their leaves; include, exclude and ndim do not apply")
        names = {n for n, _ in c.check_delta(delta, "dare")}
        unknown = sorted(set(p) - names)
        if unknown:
            raise ValueError(
                f"dare: p names leaves {unknown[:5]} that delta does not have; leaves: {sorted(names)[:5]}…"
            )
        for name, pn in p.items():
            check_dare(pn, k, leaf=name)
        rates = {n: trees.scalar(v) for n, v in p.items()}

        def per_leaf(name: str, x: jax.Array) -> jax.Array:
            return _dare_leaf(x, c.leaf_key(key, name), rates[name], ka, bool(rescale)) if name in rates else x

        return c.map_leaves(delta, "dare", per_leaf)
    check_dare(p, k)
    pa = trees.scalar(p)
    return c.map_leaves(
        delta,
        "dare",
        lambda name, x: _dare_leaf(x, c.leaf_key(key, name), pa, ka, bool(rescale)),
        include=include,
        exclude=exclude,
        ndim=ndim,
    )


def check_biased(p: float | None = None, k: float = 0.0, **_: Any) -> None:
    if p is not None:
        c.check_range("biased", "p", p, 0.0, 1.0, hi_open=True)
    c.check_range("biased", "k", k, -math.inf, math.inf)


@functools.partial(jax.jit, static_argnames=("by_product",))
def _split_leaf(
    x: jax.Array, g: jax.Array, p: jax.Array, k: jax.Array, use_p: jax.Array, by_product: bool
) -> jax.Array:
    # The group (× k) is computed here, inside the same compiled pass that applies the factors.
    xw = c.wide(x)
    group = xw * c.wide(g) < 0 if by_product else xw < 0
    k = k.astype(xw.dtype)
    q = jnp.where(use_p, p.astype(xw.dtype), jnp.mean(group.astype(xw.dtype)))
    kept = jnp.where(q < 1.0, (1.0 - k * q) / jnp.where(q < 1.0, 1.0 - q, 1.0), 1.0)
    return jnp.where(group, k * xw, kept * xw).astype(x.dtype)


def _split(delta: PyTree, grad: PyTree | None, p: float | None, k: float, edit: str, **sel: Any) -> PyTree:
    check_biased(p, k)
    pa = trees.scalar(0.0 if p is None else p)
    use_p = jnp.asarray(p is not None)
    ka = trees.scalar(k)
    grad_of = dict(zip(trees.leaf_names(grad), jax.tree_util.tree_leaves(grad))) if grad is not None else {}
    return c.map_leaves(
        delta,
        edit,
        lambda name, x: _split_leaf(x, jnp.asarray(grad_of.get(name, x)), pa, ka, use_p, grad is not None),
        **sel,
    )


def biased_sign(
    delta: PyTree,
    p: float | None = None,
    *,
    k: float,
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | None = None,
) -> PyTree:
    """Table 1's "Biased ΔW" (Tang et al., 2024): the DARE-extension factors applied by the sign
    of ΔW instead of a random mask — negative entries × ``k``, the others × ``(1 − k·p)/(1 − p)``.

    How ``p`` enters is not stated in the paper. Here ``p`` plays the role of the drop rate in the
    rescale factor. ``p=None`` (default) uses, per tensor, the fraction of entries in the
    ``× k`` group, so that the factors average to 1 over the tensor, as the random mask's do in
    expectation (``E[M] = p``); ``ΣΔW`` itself is not preserved. A number uses that value for every
    tensor (``docs/theory.md``, §6).

    Example:
      >>> import jax.numpy as jnp
      >>> biased_sign({"w": jnp.array([-1.0, 2.0, -3.0, 4.0])}, k=0.5)["w"]   # q = ½: × ½ and × 3/2
      Array([-0.5,  3. , -1.5,  6. ], dtype=float32)
    """
    return _split(delta, None, p, k, "biased_sign", include=include, exclude=exclude, ndim=ndim)


def biased_product(
    delta: PyTree,
    grad: PyTree,
    p: float | None = None,
    *,
    k: float,
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | None = None,
) -> PyTree:
    """Table 1's "Biased ΔW·∇L" (Tang et al., 2024): entries where ``ΔW ⊙ ∇L < 0`` × ``k``, the
    others × ``(1 − k·p)/(1 − p)`` (``p`` as in :func:`biased_sign`).

    Example:
      >>> import jax.numpy as jnp
      >>> d, g = {"w": jnp.array([1.0, 1.0, -1.0, 2.0])}, {"w": jnp.array([-1.0, 1.0, 1.0, 1.0])}
      >>> [float(v) for v in biased_product(d, g, k=0.0)["w"]]    # ΔW ⊙ ∇L < 0 → × k = 0, others × 1/(1 − p)
      [0.0, 2.0, -0.0, 4.0]

    The paper does not say which gradient defines the product; pass ``∇L(W_post)`` (for example
    ``riemann.integrate_path(..., rule="left", n=1).grad``) for the first-order reading, under
    which ``k > 1`` is predicted to lower the loss — the mask now depends on ``ΔW ⊙ ∇L``, which is
    exactly what breaks DARE's zero-expectation argument.

    Args:
      delta: ``ΔW``.
      grad: a gradient pytree with the structure and shapes of ``delta`` (any float dtype).
      p, k, include, exclude, ndim: as in :func:`biased_sign`.
    """
    _check_grad(delta, grad, "biased_product")
    return _split(delta, grad, p, k, "biased_product", include=include, exclude=exclude, ndim=ndim)


def _check_grad(delta: PyTree, grad: PyTree, edit: str) -> None:
    if grad is None:
        raise ValueError(f"{edit}: needs grad=, a gradient pytree shaped like delta (e.g. ∇L at W_post)")
    d_flat, d_def = jax.tree_util.tree_flatten_with_path(delta)
    g_flat, g_def = jax.tree_util.tree_flatten_with_path(grad)
    if d_def != g_def:
        raise ValueError(f"{edit}: grad and delta differ in tree structure ({g_def} vs {d_def})")
    for (path, x), (_, g) in zip(d_flat, g_flat):
        if jnp.shape(x) != jnp.shape(g):
            raise ValueError(
                f"{edit}: leaf {trees.path_name(path)!r}: grad has shape {jnp.shape(g)}, delta {jnp.shape(x)}"
            )


def check_della(density: float, epsilon: float = 0.0, **_: Any) -> None:
    d = c.check_range("della", "density", density, 0.0, 1.0, lo_open=True)
    e = c.check_range("della", "epsilon", epsilon, 0.0, 1.0)
    if not (d - e > 0 and d + e <= 1):
        raise ValueError(
            f"della: keep probabilities (density − ε, density + ε) = ({d - e:g}, {d + e:g}) must lie in "
            "(0, 1]; choose epsilon < min(density, 1 − density)"
        )


@jax.jit
def _della_leaf(x: jax.Array, key: jax.Array, density: jax.Array, eps: jax.Array) -> jax.Array:
    xw = c.wide(x)
    rows = xw.reshape(1, 1) if xw.ndim == 0 else xw.reshape(-1, xw.shape[-1])
    n = rows.shape[-1]
    # Inverse permutation as a second argsort (a scatter would need an explicit out_sharding
    # for sharded leaves under explicit meshes).
    rank = jnp.argsort(jnp.argsort(jnp.abs(rows), axis=-1, stable=True), axis=-1, stable=True)
    frac = rank.astype(xw.dtype) / (n - 1) if n > 1 else jnp.full(rows.shape, 0.5, xw.dtype)
    prob = (density - eps).astype(xw.dtype) + 2.0 * eps.astype(xw.dtype) * frac
    keep = c.uniform(key, rows.shape).astype(xw.dtype) < prob
    return jnp.where(keep, rows / prob, 0.0).reshape(x.shape).astype(x.dtype)


def della(
    delta: PyTree,
    density: float,
    epsilon: float = 0.0,
    *,
    key: Any = None,
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | None = None,
) -> PyTree:
    """DELLA's MAGPRUNE (Deep et al., 2024, "DELLA-Merging"), per row of each tensor.

    Within a row of ``n`` entries ranked by ``|ΔW|`` (rank 0 = smallest), entry ``i`` is kept with
    probability ``p_i = (density − ε) + 2ε·rank_i/(n − 1)`` and, if kept, divided by ``p_i``; so
    ``E[F] = ΔW`` and larger entries are kept more often. Rows are the last axis (for an HF
    ``(out, in)`` matrix: each output unit's incoming weights); a 1-D leaf is one row.
    ``epsilon = 0`` is DARE with ``p = 1 − density``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> d = {"w": jnp.ones((4, 1000))}
      >>> out = della(d, density=0.3, epsilon=0.1, key=jax.random.key(0))["w"]
      >>> round(float(jnp.mean(out != 0)), 1), round(float(jnp.mean(out)), 1)   # keeps ~30 %, unbiased
      (0.3, 1.0)
    """
    check_della(density, epsilon)
    key = c.as_key(key, "della")
    da, ea = trees.scalar(density), trees.scalar(epsilon)
    return c.map_leaves(
        delta,
        "della",
        lambda name, x: _della_leaf(x, c.leaf_key(key, name), da, ea),
        include=include,
        exclude=exclude,
        ndim=ndim,
        whole=True,
    )
