"""Decreased edit by compression: truncated SVD of each delta matrix (as in Twin-Merging's
compression; Lu et al., 2024), exact or randomized (Halko, Martinsson & Tropp, 2011)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from riemann.edits import _common as c

PyTree = Any
METHODS = ("svd", "randomized")


def check_lowrank(
    rank: int | None = None,
    fraction: float | None = None,
    energy: float | None = None,
    method: str = "svd",
    oversample: int = 10,
    power_iters: int = 2,
    **_: Any,
) -> None:
    given = [n for n, v in (("rank", rank), ("fraction", fraction), ("energy", energy)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"lowrank: give exactly one of rank, fraction, energy (got {given or 'none'})")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"lowrank: rank={rank!r}; accepted: an integer >= 1 (and <= each matrix's smaller dimension)")
    if fraction is not None:
        c.check_range("lowrank", "fraction", fraction, 0.0, 1.0, lo_open=True)
    if energy is not None:
        c.check_range("lowrank", "energy", energy, 0.0, 1.0, lo_open=True)
        if method != "svd":
            raise ValueError("lowrank: energy= needs the full spectrum; use method='svd'")
    if method not in METHODS:
        raise ValueError(f"lowrank: method={method!r}; accepted: {', '.join(METHODS)}")
    if oversample < 0 or power_iters < 0:
        raise ValueError(f"lowrank: oversample and power_iters must be >= 0, got {oversample}, {power_iters}")


@functools.partial(jax.jit, static_argnames=("rank",))
def _svd_truncate(x: jax.Array, rank: int) -> jax.Array:
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    return (u[:, :rank] * s[None, :rank]) @ vt[:rank]


@jax.jit
def _singular_values(x: jax.Array) -> jax.Array:
    return jnp.linalg.svd(x, compute_uv=False)


@functools.partial(jax.jit, static_argnames=("rank", "oversample", "power_iters"))
def _rsvd_truncate(x: jax.Array, key: jax.Array, rank: int, oversample: int, power_iters: int) -> jax.Array:
    """Randomized range finder with power iterations, re-orthonormalized by QR at each step
    (Halko et al., 2011, Algorithms 4.4 and 5.1)."""
    m, n = x.shape
    width = min(rank + oversample, m, n)
    q, _ = jnp.linalg.qr(x @ jax.random.normal(key, (n, width), x.dtype))
    for _ in range(power_iters):
        q, _ = jnp.linalg.qr(x.T @ q)
        q, _ = jnp.linalg.qr(x @ q)
    ub, s, vt = jnp.linalg.svd(q.T @ x, full_matrices=False)
    return ((q @ ub[:, :rank]) * s[None, :rank]) @ vt[:rank]


def _rank_for(name: str, x2: jax.Array, rank: int | None, fraction: float | None, energy: float | None) -> int:
    full = min(x2.shape)
    if rank is not None:
        if rank > full:
            raise ValueError(
                f"lowrank: rank={rank} exceeds the smaller dimension {full} of leaf {name!r} {tuple(x2.shape)}"
            )
        return rank
    if fraction is not None:
        return max(1, min(full, round(fraction * full)))
    s2 = jnp.square(_singular_values(x2))
    total = float(jnp.sum(s2))
    if total == 0.0:
        return 1
    cum = jnp.cumsum(s2) / total
    return int(min(full, int(jnp.sum(cum < energy - 1e-7)) + 1))


def lowrank(
    delta: PyTree,
    rank: int | None = None,
    *,
    fraction: float | None = None,
    energy: float | None = None,
    method: str = "svd",
    key: Any = None,
    oversample: int = 10,
    power_iters: int = 2,
    include: str | None = None,
    exclude: str | None = c.EMBEDDING_PATTERN,
    ndim: int | tuple[int, ...] | None = 2,
) -> PyTree:
    """Best rank-``r`` approximation of each delta matrix: ``F(ΔW) = U_r Σ_r V_rᵀ``
    (Eckart–Young: optimal in Frobenius and spectral norm).

    Args:
      rank: keep ``r`` singular values (1 ≤ r ≤ the matrix's smaller dimension).
      fraction: keep ``round(fraction · min(m, n))`` of them (at least 1); we read the paper's
        "sparsity 0.9" as ``fraction=0.1`` (``docs/theory.md``, §9).
      energy: keep the fewest that hold at least this share of ``Σ σ²``.
      method: ``"svd"`` (exact) or ``"randomized"`` (Halko et al., 2011: ``oversample`` extra
        columns, ``power_iters`` power iterations; needs ``key``) for large matrices.
      include, exclude, ndim: leaf selection; default: 2-D leaves except embeddings and heads.
        Leaves of rank > 2 that are selected are treated as ``(shape[0], −1)`` matrices.

    Example:
      >>> import jax.numpy as jnp
      >>> out = lowrank({"w": jnp.diag(jnp.array([3.0, 2.0, 1.0]))}, 2)
      >>> jnp.diag(out["w"]).round(5).tolist()
      [3.0, 2.0, 0.0]
    """
    check_lowrank(rank, fraction, energy, method, oversample, power_iters)
    if method == "randomized":
        key = c.as_key(key, "lowrank (method='randomized')")

    def one(name: str, x: jax.Array) -> jax.Array:
        x2 = c.wide(x).reshape(x.shape[0], -1) if x.ndim != 2 else c.wide(x)
        if x2.ndim != 2 or x2.size == 0:
            raise ValueError(
                f"lowrank: leaf {name!r} of shape {x.shape} is not a matrix; narrow the selection (ndim=2)"
            )
        r = _rank_for(name, x2, rank, fraction, energy)
        if method == "svd":
            out = _svd_truncate(x2, r)
        else:
            out = _rsvd_truncate(x2, c.leaf_key(key, name), r, oversample, power_iters)
        return out.reshape(x.shape)

    return c.map_leaves(delta, "lowrank", one, include=include, exclude=exclude, ndim=ndim, whole=True)
