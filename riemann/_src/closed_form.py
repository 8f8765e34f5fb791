"""Closed forms: whole families of edits predicted from a few shared statistics, with no pass per edit.

A random multiplicative edit ``F(ΔW) = z ⊙ ΔW`` with independent per-entry factors ``z_i`` has
the change ``ΔW~ = (z − 1) ⊙ ΔW``. Under the second-order model at ``W_post``,
``ΔL ≈ ⟨g, ΔW~⟩ + ½⟨ΔW~, H ΔW~⟩``, its expectation over masks needs only ``μ_i = E[z_i] − 1`` and
``v_i = Var(z_i)`` (the cross terms of independent entries vanish in expectation):

    E[ΔL] ≈ ⟨g, μ⊙ΔW⟩ + ½ ⟨μ⊙ΔW, H (μ⊙ΔW)⟩ + ½ Σ_i H_ii v_i ΔW_i²,

and the first-order term's mask-to-mask standard deviation is ``√(Σ_i g_i² v_i ΔW_i²)``
(``docs/theory.md``, §11). For DARE and drop-only ``μ`` and ``v`` are the same for every entry, so
every ``(p, k)`` follows from four scalars computed once (:class:`DeltaStatistics`):
``b = ⟨g, ΔW⟩``, ``q = ⟨ΔW, HΔW⟩`` (one Hessian-vector product per batch), ``s = Σ diag(H)_i ΔW_i²``
(the Hutchinson diagonal) and ``r = Σ g_i² ΔW_i²``. EXPO (``ΔW~ = αΔW``) follows from ``b`` and
``q``, with a cubic term fixed by the exact loss at ``W_pre`` (``α = −1``); any family affine in one
parameter (BitDelta's multiple: ``ΔW~(m) = x0 + m·x1``) is a quadratic in it from three
Hessian-vector products per batch (:func:`line_quadratic`). DELLA keeps entry ``i``
with a probability set by its magnitude rank, so its sums are taken once per ``(density, ε)``:
one pass over the parameters, no forward or backward pass.

These are predictions of the *quadratic model's* mean. Where the loss is not quadratic over the
step they can miss either way (on a small decoder the loss rises far faster than the quadratic
even at ``p = 0.3``; elsewhere large steps saturate); the spread given is that of the first-order
term only, and the Hutchinson diagonal adds its own noise to ``s``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann._src.curvature import SharedCurvature
from riemann._src.estimate import estimate

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DeltaStatistics:
    """The scalars of ``ΔW`` at ``W_post`` that the closed forms need (batch means).

    Attributes:
      b: ``⟨g, ΔW⟩``, the first-order change of moving one more ``ΔW``.
      q: ``⟨ΔW, H ΔW⟩``, the exact curvature along ``ΔW`` (one Hessian-vector product per batch).
      s: ``Σ_i diag(H)_i ΔW_i²`` from the Hutchinson diagonal.
      r: ``Σ_i g_i² ΔW_i²``.
      gain: ``L(W_pre) − L(W_post)`` on the same batches (EXPO's cubic term), or ``None``.
      loss_post: ``L(W_post)`` on the same batches.
    """

    b: float
    q: float
    s: float
    r: float
    gain: float | None
    loss_post: float


@jax.jit
def _weighted_squares(grad: PyTree, diagonal: PyTree, delta: PyTree) -> tuple[jax.Array, jax.Array]:
    sq = jax.tree.map(lambda d: jnp.square(trees.widen(d)), delta)
    g2 = jax.tree.map(lambda g: jnp.square(trees.widen(g)), grad)
    return trees.tree_vdot(diagonal, sq), trees.tree_vdot(g2, sq)


def delta_statistics(
    loss_fn: Any,
    post: PyTree,
    delta: PyTree,
    batches: Sequence[Any],
    shared: SharedCurvature,
    *,
    loss_pre: float | None = None,
) -> DeltaStatistics:
    """:class:`DeltaStatistics` of ``delta`` at ``post`` on ``batches``: ``b`` and ``q`` from one
    gradient and one Hessian-vector product per batch (``riemann.estimate(..., method="second-order")``),
    ``s`` and ``r`` from ``shared`` (its gradient and Hutchinson diagonal, computed on the same
    batches). ``loss_pre`` (the mean ``L(W_pre)`` on those batches) enables EXPO's cubic term.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from riemann import shared_curvature
      >>> loss = lambda p, x: jnp.sum(x * p["w"] ** 2)
      >>> post, delta, batches = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.5, -1.0])}, [jnp.ones(2)]
      >>> sc = shared_curvature(loss, post, batches, probes=4, key=jax.random.key(0))
      >>> st = delta_statistics(loss, post, delta, batches, sc)
      >>> round(st.b, 4), round(st.q, 4), round(st.s, 4), round(st.r, 4)   # g = 2w, H = 2I
      (-3.0, 2.5, 2.5, 17.0)
    """
    if shared.diagonal is None:
        raise ValueError("delta_statistics needs the Hutchinson diagonal: compute shared_curvature with probes >= 1")
    trees.check_compatible(post, delta, ("post", "delta"), wide=True)  # a float32 ΔW on 16-bit weights
    second = estimate(loss_fn, post, delta, list(batches), method="second-order")
    s, r = _weighted_squares(shared.grad, shared.diagonal, delta)
    gain = None if loss_pre is None else float(loss_pre) - second.terms["loss_post"]
    return DeltaStatistics(
        b=second.terms["first"],
        q=second.terms["curvature"],
        s=float(s),
        r=float(r),
        gain=gain,
        loss_post=second.terms["loss_post"],
    )


def dare_factors(p: Any, k: Any = 0.0, *, rescale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(μ, v)``: mean minus one and variance of DARE's per-entry factor ``z`` (``k`` w.p. ``p``,
    ``κ = (1 − k·p)/(1 − p)`` otherwise, or ``κ = 1`` without rescaling), broadcast over ``p`` and ``k``.

    Example:
      >>> mu, v = dare_factors(0.9, 0.0)
      >>> float(mu), round(float(v), 6)     # unbiased; p/(1 − p)
      (0.0, 9.0)
    """
    p, k = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(k, np.float64))
    if np.any((p < 0) | (p >= 1)):
        raise ValueError(f"p must lie in [0, 1); got {p[(p < 0) | (p >= 1)].ravel()[:3].tolist()}")
    kept = (1.0 - k * p) / (1.0 - p) if rescale else np.ones_like(p)
    # E[z] = p·k + (1 − p)·κ: exactly 1 with rescaling, 1 − p(1 − k) without.
    mu = np.zeros_like(p) if rescale else p * (k - 1.0)
    v = p * (1.0 - p) * (kept - k) ** 2
    return mu, v


def _moments(stats: DeltaStatistics, mu: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = mu * stats.b + 0.5 * (mu**2 * stats.q + v * stats.s)
    sd = np.sqrt(np.maximum(v * stats.r, 0.0))
    return mean, sd


def dare_moments(
    stats: DeltaStatistics, p: Any, k: Any = 0.0, *, rescale: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted mean ΔL of DARE (``rescale=False``: drop-only) at every ``(p, k)`` (broadcast), and
    the first-order term's standard deviation over masks:
    ``E[ΔL] ≈ μ·b + ½(μ²·q + v·s)``, ``sd ≈ √(v·r)``; with rescaling ``μ = 0`` and
    ``v = (1 − k)²·p/(1 − p)``.

    Example:
      >>> st = DeltaStatistics(b=-1.0, q=2.0, s=3.0, r=4.0, gain=None, loss_post=0.0)
      >>> mean, sd = dare_moments(st, [0.5, 0.9])
      >>> mean.tolist(), sd.tolist()          # ½·p/(1 − p)·s; √(p/(1 − p)·r)
      ([1.5, 13.5], [2.0, 6.0])
    """
    mu, v = dare_factors(p, k, rescale=rescale)
    return _moments(stats, mu, v)


def expo_curve(stats: DeltaStatistics, alpha: Any, *, cubic: bool = True) -> np.ndarray:
    """Predicted ``ΔL(α) = L(W_post + αΔW) − L(W_post)`` at every ``α``: ``α·b + ½α²·q``, plus,
    between ``W_pre`` and ``W_post`` (``−1 ≤ α < 0``), ``c·α³`` with ``c = ½q − b − gain``, which
    makes the curve pass through the exact ``ΔL(−1) = L(W_pre) − L(W_post)``. Beyond ``W_post``
    (``α > 0``) and below ``W_pre`` only the local expansion is known, and a cubic fitted at
    ``α = −1`` would turn over there, so the quadratic is kept (the two pieces meet at ``α = 0``
    with equal value, slope and curvature). ``cubic=False`` or an unknown gain: the quadratic everywhere.

    Example:
      >>> st = DeltaStatistics(b=-1.0, q=4.0, s=0.0, r=0.0, gain=3.0, loss_post=0.0)
      >>> expo_curve(st, [-1.0, 0.0, 0.5]).tolist()     # through the gain at α = −1
      [3.0, 0.0, 0.0]
    """
    a = np.asarray(alpha, np.float64)
    c = 0.0 if (not cubic or stats.gain is None) else 0.5 * stats.q - stats.b - stats.gain
    inside = (a >= -1.0) & (a < 0.0)
    return a * stats.b + 0.5 * a**2 * stats.q + np.where(inside, c * a**3, 0.0)


def best_alpha(stats: DeltaStatistics, alphas: Sequence[float], *, cubic: bool = True) -> float:
    """The ``α`` of ``alphas`` with the lowest predicted ``ΔL`` (``0`` if none predicts a decrease)."""
    a = np.asarray(list(alphas), np.float64)
    pred = expo_curve(stats, a, cubic=cubic)
    i = int(np.argmin(pred))
    return float(a[i]) if pred[i] < 0 else 0.0


@dataclasses.dataclass(frozen=True)
class LineQuadratic:
    """``ΔL(θ) ≈ c0 + c1·θ + c2·θ²``: the second-order model at ``W_post`` of the changes
    ``x0 + θ·x1`` (batch means), for an edit family that is affine in one parameter ``θ``
    (BitDelta's multiple, a scale of any fixed change)."""

    c0: float
    c1: float
    c2: float

    def __call__(self, theta: Any) -> np.ndarray:
        t = np.asarray(theta, np.float64)
        return self.c0 + self.c1 * t + self.c2 * t**2

    def best(self, grid: Sequence[float]) -> float:
        """The grid point of lowest predicted ``ΔL``."""
        g = np.asarray(list(grid), np.float64)
        return float(g[int(np.argmin(self(g)))])


def line_quadratic(loss_fn: Any, post: PyTree, x0: PyTree, x1: PyTree, batches: Sequence[Any]) -> LineQuadratic:
    """:class:`LineQuadratic` of the changes ``x0 + θ·x1`` from three second-order estimates (one
    gradient and one Hessian-vector product per batch each): ``c0 = ⟨g, x0⟩ + ½⟨x0, Hx0⟩``,
    ``c1 = ⟨g, x1⟩ + ⟨x0, Hx1⟩``, ``c2 = ½⟨x1, Hx1⟩``, the cross term by polarisation,
    ``⟨x0, Hx1⟩ = ½(Q(x0 + x1) − Q(x0) − Q(x1))``. Exact when the loss is quadratic.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, s: s * jnp.sum(p["w"] ** 2)
      >>> post = {"w": jnp.array([1.0, 0.0])}
      >>> lq = line_quadratic(loss, post, {"w": jnp.array([-1.0, 0.0])}, {"w": jnp.array([1.0, 1.0])}, [1.0])
      >>> lq(0.0).item(), lq(1.0).item(), lq.best([0.25, 0.5, 1.0])   # ΔL(θ) = 2θ² − 1
      (-1.0, 1.0, 0.25)
    """
    trees.check_compatible(post, x0, ("post", "x0"), wide=True)
    trees.check_compatible(post, x1, ("post", "x1"), wide=True)
    both = jax.tree.map(lambda a, b: trees.widen(a) + trees.widen(b), x0, x1)  # no 16-bit rounding
    e0, e1, e01 = (estimate(loss_fn, post, x, list(batches), method="second-order") for x in (x0, x1, both))
    q0, q1, q01 = (e.terms["curvature"] for e in (e0, e1, e01))
    cross = 0.5 * (q01 - q0 - q1)
    return LineQuadratic(c0=e0.terms["first"] + 0.5 * q0, c1=e1.terms["first"] + cross, c2=0.5 * q1)


@jax.jit
def _della_sums(
    grad: PyTree, diagonal: PyTree, delta: PyTree, density: jax.Array, eps: jax.Array
) -> tuple[jax.Array, jax.Array]:
    def per_leaf(g: jax.Array, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        xw = trees.widen(x)
        rows = xw.reshape(1, 1) if xw.ndim == 0 else xw.reshape(-1, xw.shape[-1])
        n = rows.shape[-1]
        rank = jnp.argsort(jnp.argsort(jnp.abs(rows), axis=-1, stable=True), axis=-1, stable=True)
        frac = rank.astype(xw.dtype) / (n - 1) if n > 1 else jnp.full(rows.shape, 0.5, xw.dtype)
        prob = density.astype(xw.dtype) - eps.astype(xw.dtype) + 2.0 * eps.astype(xw.dtype) * frac
        w = jnp.square(rows) * (1.0 - prob) / prob
        return (
            jnp.sum(trees.widen(h).reshape(rows.shape) * w),
            jnp.sum(jnp.square(trees.widen(g)).reshape(rows.shape) * w),
        )

    parts = [per_leaf(g, h, x) for g, h, x in zip(*(jax.tree.leaves(t) for t in (grad, diagonal, delta)))]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def della_moments(shared: SharedCurvature, delta: PyTree, density: float, epsilon: float = 0.0) -> tuple[float, float]:
    """Predicted mean ΔL of DELLA (MAGPRUNE, :func:`riemann.edits.della`) and the first-order
    term's standard deviation over masks. Entry ``i`` is kept with probability ``π_i`` (from its
    magnitude rank in its row) and rescaled by ``1/π_i``, so ``μ_i = 0``, ``v_i = (1 − π_i)/π_i``:
    ``E[ΔL] ≈ ½ Σ diag(H)_i v_i ΔW_i²``, ``sd ≈ √(Σ g_i² v_i ΔW_i²)``."""
    if shared.diagonal is None:
        raise ValueError("della_moments needs the Hutchinson diagonal: compute shared_curvature with probes >= 1")
    if not (0.0 < density - epsilon and density + epsilon <= 1.0 and epsilon >= 0.0):
        raise ValueError(
            f"della_moments: keep probabilities (density − ε, density + ε) = ({density - epsilon:g}, "
            f"{density + epsilon:g}) must lie in (0, 1] with ε ≥ 0"
        )
    s, r = _della_sums(shared.grad, shared.diagonal, delta, trees.scalar(density), trees.scalar(epsilon))
    return 0.5 * float(s), float(np.sqrt(max(float(r), 0.0)))
