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
term only, and the Hutchinson diagonal adds its own noise to ``s``. Given ``saturation=`` (a
:class:`riemann.Saturation` measured with the diagonal quadratic ``x ↦ ½ Σ diag(H)·x²``),
:func:`dare_moments` and :func:`della_moments` read the expected quadratic through its curves
instead: ``E[ΔL] ≈ μ·b + φ_coherent(½μ²·s) + O_coherent(μ) + φ_noise(½ Σ diag(H)_i v_i ΔW_i²)``,
the mean part ``μ·ΔW`` on the curve along ``ΔW`` (with the loss's measured odd part there) and the
noise on the curve along random-sign copies (one ``μ`` for every entry; DELLA's ``μ = 0``);
:func:`expo_curve` reads ``½α²·s`` and the odd part at ``α`` on the curve along ``ΔW``;
:func:`lowrank_curve` and :func:`bitdelta_bits_curve` read each point's ``½ Σ diag(H)·X²`` split by
its part ``⟨X, ΔW⟩/‖ΔW‖²`` along ``ΔW``, as the main job's ``kfac-saturated`` reads an edit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann._src.curvature import SharedCurvature
from riemann._src.estimate import estimate
from riemann._src.saturation import Saturation
from riemann.edits import _bitdelta, _common, _lowrank

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
def _leaf_squares(grad: PyTree, diagonal: PyTree, delta: PyTree) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per leaf, ``Σ diag(H)·ΔW²`` and ``Σ g²·ΔW²``."""
    sq = jax.tree.map(lambda d: jnp.square(trees.widen(d)), delta)
    g2 = jax.tree.map(lambda g: jnp.square(trees.widen(g)), grad)
    return trees.leaf_vdots(diagonal, sq), trees.leaf_vdots(g2, sq)


def _squares_by_leaf(shared: SharedCurvature, delta: PyTree) -> tuple[np.ndarray, np.ndarray]:
    s, r = _leaf_squares(shared.grad, shared.diagonal, delta)
    return np.asarray(jax.device_get(s), np.float64), np.asarray(jax.device_get(r), np.float64)


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
    s, r = (float(v.sum()) for v in _squares_by_leaf(shared, delta))
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


def _saturated_mean(saturation: Saturation, first: np.ndarray, mu: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    """``μ·b + φ(Q, μ)`` per point, ``Q = ½(μ² + v)·s``: the part ``μ·ΔW`` along ``ΔW`` on the
    coherent curve, the rest on the noise curve."""
    q = 0.5 * (mu**2 + v) * s
    phi = np.vectorize(saturation.phi, otypes=[np.float64])(q, mu)
    return first + phi


def dare_moments(
    stats: DeltaStatistics, p: Any, k: Any = 0.0, *, rescale: bool = True, saturation: Saturation | None = None
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

    ``saturation``: read the quadratic through its curves (module docstring); the spread is unchanged.
    """
    mu, v = dare_factors(p, k, rescale=rescale)
    mean, sd = _moments(stats, mu, v)
    if saturation is not None:
        mean = _saturated_mean(saturation, mu * stats.b, mu, v, stats.s)
    return mean, sd


def expo_curve(
    stats: DeltaStatistics, alpha: Any, *, cubic: bool = True, saturation: Saturation | None = None
) -> np.ndarray:
    """Predicted ``ΔL(α) = L(W_post + αΔW) − L(W_post)`` at every ``α``: ``α·b + ½α²·q``, plus,
    between ``W_pre`` and ``W_post`` (``−1 ≤ α < 0``), ``c·α³`` with ``c = ½q − b − gain``, which
    makes the curve pass through the exact ``ΔL(−1) = L(W_pre) − L(W_post)``. Beyond ``W_post``
    (``α > 0``) and below ``W_pre`` only the local expansion is known, and a cubic fitted at
    ``α = −1`` would turn over there, so the quadratic is kept (the two pieces meet at ``α = 0``
    with equal value, slope and curvature). ``cubic=False`` or an unknown gain: the quadratic everywhere.

    ``saturation`` (measured with the diagonal quadratic, as for :func:`dare_moments`) replaces
    ``½α²·q`` by the coherent curve's ``φ(½α²·s)``, the measured even part of the loss along ``±αΔW``,
    and the cubic by the curve's measured odd part ``O(α)`` (which holds ``L(W_pre)`` at ``α = −1``
    itself); curves recorded without an odd part keep the cubic, with coefficient ``φ(½s) − b − gain``;
    ``cubic=False`` leaves out either.

    Example:
      >>> st = DeltaStatistics(b=-1.0, q=4.0, s=0.0, r=0.0, gain=3.0, loss_post=0.0)
      >>> expo_curve(st, [-1.0, 0.0, 0.5]).tolist()     # through the gain at α = −1
      [3.0, 0.0, 0.0]
    """
    a = np.asarray(alpha, np.float64)
    if saturation is None:
        even, at_one = 0.5 * a**2 * stats.q, 0.5 * stats.q
    else:
        even = np.vectorize(lambda x: saturation.coherent(0.5 * x * x * stats.s), otypes=[np.float64])(a)
        at_one = saturation.coherent(0.5 * stats.s)
        if saturation.coherent.odd is not None and cubic:
            return a * stats.b + even + np.vectorize(saturation.coherent.odd_at, otypes=[np.float64])(a)
    c = 0.0 if (not cubic or stats.gain is None) else at_one - stats.b - stats.gain
    inside = (a >= -1.0) & (a < 0.0)
    return a * stats.b + even + np.where(inside, c * a**3, 0.0)


def best_alpha(
    stats: DeltaStatistics, alphas: Sequence[float], *, cubic: bool = True, saturation: Saturation | None = None
) -> float:
    """The ``α`` of ``alphas`` with the lowest predicted ``ΔL`` (``0`` if none predicts a decrease)."""
    a = np.asarray(list(alphas), np.float64)
    pred = expo_curve(stats, a, cubic=cubic, saturation=saturation)
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


def della_moments(
    shared: SharedCurvature,
    delta: PyTree,
    density: float,
    epsilon: float = 0.0,
    *,
    saturation: Saturation | None = None,
) -> tuple[float, float]:
    """Predicted mean ΔL of DELLA (MAGPRUNE, :func:`riemann.edits.della`) and the first-order
    term's standard deviation over masks. Entry ``i`` is kept with probability ``π_i`` (from its
    magnitude rank in its row) and rescaled by ``1/π_i``, so ``μ_i = 0``, ``v_i = (1 − π_i)/π_i``:
    ``E[ΔL] ≈ ½ Σ diag(H)_i v_i ΔW_i²``, ``sd ≈ √(Σ g_i² v_i ΔW_i²)``; with ``saturation``, the
    noise curve's ``φ`` of that quadratic (``c = 0``)."""
    if shared.diagonal is None:
        raise ValueError("della_moments needs the Hutchinson diagonal: compute shared_curvature with probes >= 1")
    if not (0.0 < density - epsilon and density + epsilon <= 1.0 and epsilon >= 0.0):
        raise ValueError(
            f"della_moments: keep probabilities (density − ε, density + ε) = ({density - epsilon:g}, "
            f"{density + epsilon:g}) must lie in (0, 1] with ε ≥ 0"
        )
    s, r = _della_sums(shared.grad, shared.diagonal, delta, trees.scalar(density), trees.scalar(epsilon))
    mean = 0.5 * float(s)
    if saturation is not None:
        mean = saturation.noise(mean)
    return mean, float(np.sqrt(max(float(r), 0.0)))


# --- DARE's drop rate per module under a budget ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DareAllocation:
    """Per-leaf DARE drop rates that minimise the predicted mean ``ΔL`` at a fixed number of kept
    entries, and the same prediction for the uniform rate.

    Attributes:
      p: ``{leaf name: drop rate}`` for every selected leaf (pass it to ``riemann.edits.dare``).
      keep: the fraction of the selected entries kept, in expectation (the budget).
      k: the factor of dropped entries.
      predicted, predicted_sd: the predicted mean ``ΔL`` and the first-order spread over masks.
      uniform_predicted, uniform_sd: the same at the uniform rate ``1 − keep``.
      curvature: per leaf, ``s_m = Σ_{i∈m} diag(H)_i ΔW_i²`` (the weight the allocation balances).
      sizes: per leaf, its number of entries.
    """

    p: dict[str, float]
    keep: float
    k: float
    predicted: float
    predicted_sd: float
    uniform_predicted: float
    uniform_sd: float
    curvature: dict[str, float]
    sizes: dict[str, int]


def dare_allocation(
    shared: SharedCurvature,
    delta: PyTree,
    keep: float,
    *,
    k: float = 0.0,
    include: str | None = None,
    exclude: str | None = None,
    ndim: int | tuple[int, ...] | None = None,
    max_p: float = 0.99,
) -> DareAllocation:
    """The drop rate per leaf that minimises DARE's predicted mean loss change when a fraction
    ``keep`` of the selected entries is kept.

    Rescaled DARE at rate ``p_m`` on leaf ``m`` has ``E[ΔL] ≈ ½(1 − k)² Σ_m s_m·p_m/(1 − p_m)`` with
    ``s_m = Σ_{i∈m} diag(H)_i ΔW_i²`` (:func:`dare_moments` leaf by leaf: the cross terms of
    independent masks vanish in expectation, so leaves add up). Writing ``q_m = 1 − p_m`` for the
    kept share and ``n_m`` for the leaf's size, minimising ``Σ_m s_m (1/q_m − 1)`` subject to
    ``Σ_m n_m q_m = keep·Σ_m n_m`` gives, by the Lagrange conditions,

        q_m = clip(√(s_m / n_m) / μ, 1 − max_p, 1),

    with ``μ`` set by bisection so that the budget holds: leaves with more curvature per entry keep
    more. A leaf whose ``s_m`` is not positive (Hutchinson noise, or a direction of negative
    curvature) gives the model no minimum to aim at, and dropping it at ``max_p`` would be
    predicted to *lower* the loss by ``|s_m|·p/(1 − p)``: such leaves keep the uniform rate
    ``1 − keep``, and the budget is allocated among the others. Only the model's mean is minimised;
    where the loss is not quadratic over the step, measure the result (``riemann sweep`` does,
    against the uniform rate).

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from riemann import SharedCurvature
      >>> g = {"a": jnp.zeros(4), "b": jnp.zeros(4)}
      >>> sc = SharedCurvature(g, {"a": jnp.full(4, 9.0), "b": jnp.full(4, 1.0)}, 0.0, np.zeros(1), 1, 1, {})
      >>> al = dare_allocation(sc, {"a": jnp.ones(4), "b": jnp.ones(4)}, keep=0.5)
      >>> {n: round(v, 3) for n, v in al.p.items()}     # keep ∝ √s: 3 : 1
      {'a': 0.25, 'b': 0.75}
      >>> round(al.predicted, 3), round(al.uniform_predicted, 3)   # ½(36·⅓ + 4·3) vs ½·40·1
      (12.0, 20.0)
    """
    if shared.diagonal is None:
        raise ValueError("dare_allocation needs the Hutchinson diagonal: compute shared_curvature with probes >= 1")
    if not 0.0 < max_p < 1.0:
        raise ValueError(f"max_p={max_p!r}; expected a drop rate in (0, 1)")
    if not (1.0 - max_p) * (1 - 1e-12) <= keep <= 1.0:  # 1 − 0.99 is 0.010000000000000009 in floats
        raise ValueError(f"keep={keep!r}; expected a kept fraction in [1 − max_p, 1] = [{1.0 - max_p:g}, 1]")
    trees.check_compatible(shared.grad, delta, ("the shared gradient", "delta"), wide=True)
    names = trees.leaf_names(delta)
    leaves = jax.tree.leaves(delta)
    chosen = [i for i, (n, x) in enumerate(zip(names, leaves)) if _common.selected(n, x, include, exclude, ndim)]
    if not chosen:
        raise ValueError(f"dare_allocation: no leaf of delta is selected by include={include!r}, exclude={exclude!r}")
    s_all, r_all = _squares_by_leaf(shared, delta)
    s, r = s_all[chosen], r_all[chosen]
    n = np.array([np.size(leaves[i]) for i in chosen], np.float64)
    lo = 1.0 - max_p
    q = np.full(len(n), float(keep))
    pos = s > 0  # only these leaves' curvature gives the model something to allocate by
    if pos.any():
        n_pos, root = n[pos], np.sqrt(s[pos] / n[pos])
        budget = keep * n_pos.sum()

        def kept(mu: float) -> np.ndarray:
            return np.clip(root / mu, lo, 1.0)

        a, b = root.min() * 1e-12, root.max() / lo * 1e12  # Σ n·q is ≥ budget at a, ≤ at b
        for _ in range(200):  # bisection in log μ: Σ n·q(μ) is non-increasing in μ
            mid = np.sqrt(a * b)
            a, b = (mid, b) if float(n_pos @ kept(mid)) > budget else (a, mid)
        qp = kept(np.sqrt(a * b))
        free = (qp > lo) & (qp < 1.0)  # leaves at a bound cannot absorb the bisection's rounding
        if free.any():
            qp[free] = np.clip(qp[free] + (budget - float(n_pos @ qp)) / n_pos[free].sum(), lo, 1.0)
        q[pos] = qp
    p = 1.0 - q
    factor = (1.0 - k) ** 2
    odds = p / q  # q ≥ 1 − max_p > 0
    u = (1.0 - keep) / keep
    return DareAllocation(
        p={names[i]: float(pi) for i, pi in zip(chosen, p)},
        keep=float(keep),
        k=float(k),
        predicted=float(0.5 * factor * (s @ odds)),
        predicted_sd=float(np.sqrt(max(factor * (r @ odds), 0.0))),
        uniform_predicted=float(0.5 * factor * u * s.sum()),
        uniform_sd=float(np.sqrt(max(factor * u * r.sum(), 0.0))),
        curvature={names[i]: float(v) for i, v in zip(chosen, s)},
        sizes={names[i]: int(v) for i, v in zip(chosen, n)},
    )


# --- Low rank: every rank from one SVD per matrix ---------------------------------------------------

_GRAM_ENTRIES = 1 << 24  # entries of one row block's Khatri–Rao product (64 MiB in float32)
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 in the small contractions that decide the curve


def _gram(u: jax.Array, h: jax.Array, v: jax.Array) -> jax.Array:
    """``P_kl = Σ_ab h_ab u_k[a] u_l[a] v_k[b] v_l[b]`` as ``Kᵀ diag(h) K`` with the Khatri–Rao
    rows ``K[(a, b), k] = u_k[a] v_k[b]``, accumulated over blocks of rows ``a`` so that only a
    block of ``K`` is ever held: ``O(m·n·R²)`` flops, ``O(min(m·n·R, 2²⁴) + R²)`` memory."""
    (m, top), n = u.shape, h.shape[1]
    block = max(1, min(m, _GRAM_ENTRIES // max(n * top, 1)))
    nb = -(-m // block)
    pad = nb * block - m  # zero rows of u and h add nothing
    ub = jnp.pad(u, ((0, pad), (0, 0))).reshape(nb, block, top)
    hb = jnp.pad(h, ((0, pad), (0, 0))).reshape(nb, block * n, 1)

    def step(acc: jax.Array, blk: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        ua, ha = blk
        k = (ua[:, None, :] * v[None, :, :]).reshape(block * n, top)
        return acc + jnp.matmul((k * ha).T, k, precision=_HIGHEST), None

    p, _ = jax.lax.scan(step, jnp.zeros((top, top), u.dtype), (ub, hb))
    return p


@functools.partial(jax.jit, static_argnames=("top",))
def _lowrank_leaf(g: jax.Array, h: jax.Array, x: jax.Array, top: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(first[r], quad[r], dot[r])`` for ``r = 0 … top`` of one matrix: ``⟨g, X_r⟩``, ``Σ h X_r²``
    and ``⟨X_r, ΔW⟩ = −Σ_{k>r} s_k²`` with ``X_r = U_r S_r V_rᵀ − ΔW``. Up to full rank the tails are
    summed (``X_r = −Σ_{k>r} s_k u_k v_kᵀ``; exactly 0 at full rank); below it the heads,
    ``Σ h X_r² = Σ h ΔW² − 2 Σ_{k≤r} s_k u_kᵀ(h⊙ΔW)v_k + Σ_{k,l≤r} s_k s_l P_kl``, so that only the
    leading ``top`` factors are needed."""
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    full = s.shape[0]
    u, s, v = u[:, :top], s[:top], vt[:top].T
    c = s * jnp.sum(u * jnp.matmul(g, v, precision=_HIGHEST), axis=0)  # c_k = s_k u_kᵀ G v_k
    m = s[:, None] * s[None, :] * _gram(u, h, v)  # M = (s sᵀ) ⊙ P
    zero = jnp.zeros((1,), x.dtype)
    if top == full:
        first = -jnp.concatenate([jnp.cumsum(c[::-1])[::-1], zero])
        tails = jnp.cumsum(jnp.cumsum(m[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]
        dot = -jnp.concatenate([jnp.cumsum(jnp.square(s)[::-1])[::-1], zero])
        return first, jnp.concatenate([jnp.diagonal(tails), zero]), dot
    e = s * jnp.sum(u * jnp.matmul(h * x, v, precision=_HIGHEST), axis=0)  # s_k u_kᵀ (h⊙ΔW) v_k
    heads = jnp.diagonal(jnp.cumsum(jnp.cumsum(m, axis=0), axis=1))
    first = jnp.concatenate([zero, jnp.cumsum(c)]) - jnp.sum(g * x)
    quad = jnp.sum(h * jnp.square(x)) - 2.0 * jnp.concatenate([zero, jnp.cumsum(e)]) + jnp.concatenate([zero, heads])
    dot = jnp.concatenate([zero, jnp.cumsum(jnp.square(s))]) - jnp.sum(jnp.square(x))
    return first, quad, dot


def lowrank_curve(
    shared: SharedCurvature,
    delta: PyTree,
    *,
    ranks: Sequence[int] | None = None,
    fractions: Sequence[float] | None = None,
    energies: Sequence[float] | None = None,
    include: str | None = None,
    exclude: str | None = _common.EMBEDDING_PATTERN,
    ndim: int | tuple[int, ...] | None = 2,
    saturation: Saturation | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``ΔL`` of :func:`riemann.edits.lowrank` at every point of one family (``ranks``,
    ``fractions`` or ``energies``, as the edit reads its ``rank``, ``fraction`` and ``energy``), from
    one SVD per selected matrix and the shared gradient and Hessian diagonal: no model pass per point.

    Per matrix ``ΔW = Σ_k s_k u_k v_kᵀ``, keeping rank ``r`` changes it by
    ``X_r = −Σ_{k>r} s_k u_k v_kᵀ``, so with ``G``, ``H`` the gradient and diagonal as matrices

        ⟨G, X_r⟩ = −Σ_{k>r} c_k,        c_k = s_k u_kᵀ G v_k,
        Σ H ⊙ X_r² = Σ_{k,l>r} s_k s_l P_kl,   P_kl = Σ_ab H_ab u_k[a] u_l[a] v_k[b] v_l[b],

    suffix sums of ``c`` and of ``M = (s sᵀ) ⊙ P`` give every rank at once, and the prediction is
    ``ΔL(r) ≈ ⟨G, X_r⟩ + ½ Σ H ⊙ X_r²`` summed over matrices. ``P = Kᵀ diag(H) K`` with the
    Khatri–Rao rows ``K[(a, b), k] = u_k[a] v_k[b]``. When no point needs a rank above ``R`` the
    same sums are taken over the heads ``k ≤ r`` (``X_r = A_r − ΔW``), so only the leading ``R``
    factors enter. Cost per ``m × n`` matrix: one SVD plus ``O(m·n·R²)`` flops for ``P``
    (``R = min(m, n)`` when a point keeps every factor), memory ``O(min(m·n·R, 2²⁴) + R²)``; the
    points themselves are free. Exact when the loss is quadratic with a diagonal Hessian; the
    Hessian's off-diagonal part is left out, as in every shared-curvature estimate.

    Leaf selection (``include``, ``exclude``, ``ndim``; leaves of higher rank as ``(shape[0], −1)``)
    and the rank each point keeps per matrix are the edit's own (``fraction`` keeps
    ``max(1, round(fraction·min(m, n)))``; ``energy`` the fewest factors holding that share of
    ``Σ s²``); other leaves are not changed. Beyond the edit, ``0`` (as rank, fraction or energy)
    keeps no factor: ``X = −ΔW`` on every selected matrix. The randomized SVD
    (``method="randomized"``) approximates the exact truncation predicted here.

    ``saturation`` (curves measured with the same diagonal quadratic, :func:`riemann.saturation`):
    each point's quadratic is read through them, ``⟨g, X⟩ + φ(½ Σ diag(H) X², a)``. The part along
    ``ΔW`` is ``a·ΔW`` with ``a = ⟨X, ΔW⟩/‖ΔW‖² = −Σ_{k>r} s_k²/‖ΔW‖²`` (the dropped tail is
    orthogonal to the kept head), free from the same SVD.

    Returns:
      ``(values, first_order)``: per point, ``⟨g, X⟩ + ½ Σ diag(H) X²`` (or its read through
      ``saturation``) and its ``⟨g, X⟩`` part (float64).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from riemann import shared_curvature
      >>> loss = lambda p, _: 0.5 * jnp.sum(p["w"] ** 2)          # g = w, H = I
      >>> post = {"w": jnp.diag(jnp.array([3.0, 2.0, 1.0]))}
      >>> sc = shared_curvature(loss, post, [None], probes=1, key=jax.random.key(0))
      >>> values, first = lowrank_curve(sc, post, ranks=[0, 1, 2, 3])
      >>> values.round(4).tolist(), first.round(4).tolist()   # drop 3, 2, 1: −s² + ½s² each
      ([-7.0, -2.5, -0.5, 0.0], [-14.0, -5.0, -1.0, 0.0])
    """
    parts = lowrank_parts(
        shared,
        delta,
        ranks=ranks,
        fractions=fractions,
        energies=energies,
        include=include,
        exclude=exclude,
        ndim=ndim,
    )
    return parts.values(saturation, who="lowrank_curve"), parts.first


def lowrank_parts(
    shared: SharedCurvature,
    delta: PyTree,
    *,
    ranks: Sequence[int] | None = None,
    fractions: Sequence[float] | None = None,
    energies: Sequence[float] | None = None,
    include: str | None = None,
    exclude: str | None = _common.EMBEDDING_PATTERN,
    ndim: int | tuple[int, ...] | None = 2,
) -> CurveParts:
    """:func:`lowrank_curve`'s parts per point (:class:`CurveParts`): one SVD per matrix, read with
    or without the saturation curves by :meth:`CurveParts.values`."""
    given = [(n, v) for n, v in (("rank", ranks), ("fraction", fractions), ("energy", energies)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"lowrank_curve: give exactly one of ranks, fractions, energies (got {len(given)})")
    if shared.diagonal is None:
        raise ValueError("lowrank_curve needs the Hutchinson diagonal: compute shared_curvature with probes >= 1")
    option, points = given[0][0], list(given[0][1])
    trees.check_compatible(delta, shared.grad, ("delta", "the gradient"), wide=True)
    for v in points:
        if option == "rank" and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ValueError(f"lowrank_curve: rank {v!r}; accepted: integers >= 0")
        if option != "rank" and not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"lowrank_curve: {option} {v!r} is outside [0, 1]")
    quads, firsts, dots = np.zeros(len(points)), np.zeros(len(points)), np.zeros(len(points))
    named = _common.check_delta(delta, "lowrank_curve")
    for (name, x), g, h in zip(named, jax.tree.leaves(shared.grad), jax.tree.leaves(shared.diagonal)):
        if not _common.selected(name, x, include, exclude, ndim):
            continue
        x2 = trees.widen(_common.gathered(x))
        x2 = x2.reshape(x.shape[0], -1) if x.ndim != 2 else x2
        if x2.ndim != 2 or x2.size == 0:
            raise ValueError(f"lowrank_curve: leaf {name!r} of shape {x.shape} is not a matrix; narrow the selection")
        kept = [
            0
            if v == 0
            else _lowrank._rank_for(name, x2, **({"rank": None, "fraction": None, "energy": None} | {option: v}))
            for v in points
        ]
        g2, h2 = (trees.widen(_common.gathered(t)).astype(x2.dtype).reshape(x2.shape) for t in (g, h))
        parts = _lowrank_leaf(g2, h2, x2, top=max(kept) if max(kept) < min(x2.shape) else min(x2.shape))
        first, quad, dot = (np.asarray(jax.device_get(a), np.float64)[kept] for a in parts)
        quads += 0.5 * quad
        firsts += first
        dots += dot
    return CurveParts(firsts, quads, dots, float(trees.tree_norm(delta)))


@dataclasses.dataclass(frozen=True)
class CurveParts:
    """Per point of a deterministic family of changes ``X``: ``first = ⟨g, X⟩``,
    ``quadratic = ½ Σ diag(H)·X²``, ``dot = ⟨X, ΔW⟩``, and ``scale = ‖ΔW‖`` (float64)."""

    first: np.ndarray
    quadratic: np.ndarray
    dot: np.ndarray
    scale: float

    def values(self, saturation: Saturation | None = None, *, who: str = "CurveParts.values") -> np.ndarray:
        """``first + quadratic`` per point, or through ``saturation`` (measured along this ``ΔW`` with
        the same diagonal quadratic) ``first + φ(quadratic, a)``, with the part along ``ΔW``
        ``a = dot/‖ΔW‖²``. Curves of another ``ΔW`` are refused: the part along it would be wrong."""
        if saturation is None:
            return self.first + self.quadratic
        if not np.isclose(self.scale, saturation.scale, rtol=1e-3):
            raise ValueError(
                f"{who}: saturation was measured along a ΔW of norm {saturation.scale:.6g}, this delta has "
                f"norm {self.scale:.6g}; pass the curves of this delta"
            )
        along = self.dot / saturation.scale**2
        return self.first + np.array([saturation.phi(q, a) for q, a in zip(self.quadratic, along)], np.float64)


# --- BitDelta: every magnitude-bit count from the edit itself ---------------------------------------


@functools.partial(jax.jit, static_argnames=("bits", "blocks"))
def _bits_leaf(
    g: jax.Array, h: jax.Array, x: jax.Array, multiple: jax.Array, bits: tuple[int, ...], blocks: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(⟨g, X_B⟩, Σ h X_B², ⟨X_B, ΔW⟩)`` for every ``B`` of one leaf, ``X_B`` built by the edit's own
    functions: one compiled function per leaf shape (the sort of ``|ΔW|`` is shared by every ``B``)."""
    xw = trees.widen(x)
    a = jnp.abs(xw).ravel()
    key = jax.random.key(0)  # unused: constant magnitudes
    firsts, quads, dots = [], [], []
    for b in bits:
        edited = _bitdelta._finish_leaf(
            x, _bitdelta._block_means(a, b, blocks), key, multiple, trees.scalar(0.0), "constant"
        )
        change = trees.widen(edited) - xw
        firsts.append(jnp.sum(g * change))
        quads.append(jnp.sum(h * jnp.square(change)))
        dots.append(jnp.sum(xw * change))
    return jnp.stack(firsts), jnp.stack(quads), jnp.stack(dots)


def bitdelta_bits_curve(
    shared: SharedCurvature,
    delta: PyTree,
    bits: Sequence[int] = range(1, 9),
    *,
    multiple: float = 1.0,
    blocks: str = "count",
    scope: str = "matrix",
    include: str | None = None,
    exclude: str | None = _common.EMBEDDING_PATTERN,
    ndim: int | tuple[int, ...] | None = 2,
    saturation: Saturation | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``ΔL`` of ``bitdelta:magnitude_bits=B`` for every ``B`` of ``bits``, from the
    shared gradient and Hessian diagonal.

    The change ``X_B = F_B(ΔW) − ΔW`` (signs kept, each of ``2^B`` blocks of ``|ΔW|`` replaced by
    its mean, times ``multiple``) is the edit itself, computed from the parameters alone, and the
    prediction is ``ΔL(B) ≈ ⟨g, X_B⟩ + ½ Σ diag(H) X_B²``. No model pass is spent per point, but
    one pass over the parameters is (a sort per matrix), unlike the DARE grid's pure arithmetic.
    ``B = 0`` is BitDelta itself (for which :func:`line_quadratic` gives the exact curvature along
    its multiple). The options are the edit's (:func:`riemann.edits.bitdelta`; constant magnitudes
    only: drawn magnitudes are random).

    ``saturation`` (curves measured with the same diagonal quadratic): each ``B``'s quadratic is read
    through them, ``⟨g, X_B⟩ + φ(½ Σ diag(H) X_B², a)``, ``a = ⟨X_B, ΔW⟩/‖ΔW‖²`` taken in the same pass.

    Returns:
      ``(values, first_order)`` per ``B`` (float64).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from riemann import shared_curvature
      >>> loss = lambda p, _: 0.5 * jnp.sum(p["w"] ** 2)          # g = w, H = I
      >>> post = {"w": jnp.array([[1.0, -3.0], [0.5, -0.5]])}
      >>> sc = shared_curvature(loss, post, [None], probes=1, key=jax.random.key(0))
      >>> values, first = bitdelta_bits_curve(sc, post, bits=[0, 1, 2])
      >>> values.tolist()      # here ΔL = ½(|F_B|² − |ΔW|²); B = 2: one entry per block, no change
      [-2.125, -1.0, 0.0]
    """
    parts = bitdelta_bits_parts(
        shared,
        delta,
        bits,
        multiple=multiple,
        blocks=blocks,
        scope=scope,
        include=include,
        exclude=exclude,
        ndim=ndim,
    )
    return parts.values(saturation, who="bitdelta_bits_curve"), parts.first


def bitdelta_bits_parts(
    shared: SharedCurvature,
    delta: PyTree,
    bits: Sequence[int] = range(1, 9),
    *,
    multiple: float = 1.0,
    blocks: str = "count",
    scope: str = "matrix",
    include: str | None = None,
    exclude: str | None = _common.EMBEDDING_PATTERN,
    ndim: int | tuple[int, ...] | None = 2,
) -> CurveParts:
    """:func:`bitdelta_bits_curve`'s parts per ``B`` (:class:`CurveParts`): the edit applied once per
    ``B``, read with or without the saturation curves by :meth:`CurveParts.values`."""
    if shared.diagonal is None:
        raise ValueError("bitdelta_bits_curve needs the Hutchinson diagonal: compute shared_curvature with probes >= 1")
    trees.check_compatible(delta, shared.grad, ("delta", "the gradient"), wide=True)
    bits = tuple(int(b) for b in bits)
    for b in bits:
        _bitdelta.check_bitdelta(b, multiple, "constant", blocks, scope)
    if scope == "matrix":  # one compiled function per leaf shape for every B
        first, quad, dot = np.zeros(len(bits)), np.zeros(len(bits)), np.zeros(len(bits))
        named = _common.check_delta(delta, "bitdelta_bits_curve")
        for (name, x), g, h in zip(named, jax.tree.leaves(shared.grad), jax.tree.leaves(shared.diagonal)):
            if _common.selected(name, x, include, exclude, ndim):
                parts = _bits_leaf(g, h, _common.gathered(x), trees.scalar(multiple), bits, blocks)
                f, q, d = (np.asarray(jax.device_get(a), np.float64) for a in parts)
                first, quad, dot = first + f, quad + q, dot + d
        return CurveParts(first, 0.5 * quad, dot, float(trees.tree_norm(delta)))
    firsts, quads, dots = [], [], []
    for b in bits:  # one set of block means over every selected leaf: the edit, once per B
        edited = _bitdelta.bitdelta(
            delta,
            magnitude_bits=b,
            multiple=multiple,
            blocks=blocks,
            scope=scope,
            include=include,
            exclude=exclude,
            ndim=ndim,
        )
        change = jax.tree.map(lambda e, d: trees.widen(e) - trees.widen(d), edited, delta)
        est = shared.estimate(change)
        firsts.append(est.terms["first"])
        quads.append(est.terms["second"])
        dots.append(float(trees.tree_vdot(change, delta)))
    first, quad, dot = (np.asarray(v, np.float64) for v in (firsts, quads, dots))
    return CurveParts(first, quad, dot, float(trees.tree_norm(delta)))
