"""How cross-entropy departs from its quadratic as a perturbation of the logits grows: a curve per
pair, measured once on the calibration batches, that maps a shared quadratic prediction to a loss
change (the ``kfac-saturated`` estimator).

A second-order model of softmax cross-entropy is exact only near ``W_post``. Far from it, two
things happen, token by token: on a confident token (``p_y → 1``) the loss ``log(1 + Σ_{k≠y}
e^{z_k − z_y})`` grows *exponentially* in the logit margin before it grows linearly, so the quadratic
under-predicts moderate steps many times over (on ``lm/arithmetic``, at ``W_pre = W_post − ΔW``, the
diagonal quadratic predicts 0.075 and 5.9 is measured); once logits have moved by more than the
margins, the loss grows linearly in them, so the quadratic over-predicts. Neither is visible in the
curvature at ``W_post``; both are visible in logit space, where the loss is known exactly.

The curve, with ``u = J·(ε ⊙ ΔW)`` the change of the logits along a random-sign copy of the
pair's delta (``ε = ±1`` per parameter; one forward-mode product per probe and batch), ``p =
softmax(z)`` at ``W_post`` and ``w_t`` each position's loss weight:

    Q(α) = ½ α² Σ_t w_t (Σ_k p_k u_k² − (Σ_k p_k u_k)²)              (the Gauss–Newton quadratic)
    C(α) = Σ_t w_t · ½ [ℓ_t(z + αu) + ℓ_t(z − αu) − 2 ℓ_t(z)]         (its exact even part)

averaged over probes and batches. ``C`` is the exact cross-entropy of the linearised network along
``±αu``; its even part drops every odd order (the first-order term belongs to the gradient, which the
predictor adds separately). ``C`` is convex and even in ``α``, hence non-decreasing in ``α ≥ 0``, and
``C ≈ Q`` as ``α → 0``. The map from an edit's quadratic ``Q_e`` (K-FAC's, with the Fisher diagonal
for other leaves) to a loss change is ``φ(Q_e) = C(α)`` at ``Q(α) = Q_e`` — the saturation an edit of
that Gauss–Newton energy would see if its logit change were spread over tokens and classes as a
random-sign copy of ``ΔW`` spreads it. That is exact for DARE's rescaled noise in the limit of many
parameters (its logit change is such a copy, scaled by ``(1 − k)√(p/(1 − p))``) and an assumption
for structured edits, which the validation on the test batches judges. The suite measures the
``Q`` axis with K-FAC's own quadratic on each copy (``quadratic=``), so that an edit is placed on
the curve by the same quadratic that scores it, whatever that quadratic's error.

Only pairs whose loss is the model's own cross-entropy have logits to read (those K-FAC supports,
:func:`analysis.study.kfac.output_kind`); any other pair gets no curve and the estimator says so.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analysis.study import kfac

PyTree = Any
# Step multiples of the random-sign copy of ΔW: DARE's noise is the copy times (1 − k)√(p/(1 − p)),
# 0.032 at p = 0.001 and k = 0, 632 at p = 0.99999 and k = −1.
ALPHAS = np.geomspace(1e-3, 1e3, 61)


@dataclasses.dataclass(frozen=True)
class SaturationCurve:
    """``C`` against ``Q`` on a grid of step multiples (:data:`ALPHAS`), and how it was measured.

    Attributes:
      quadratic: ``Q(α)`` per grid point (increasing).
      loss: ``C(α)`` per grid point (non-decreasing).
      probes: random-sign copies of ``ΔW`` per batch.
      info: batches, seconds, passes.
    """

    quadratic: np.ndarray
    loss: np.ndarray
    probes: int
    info: dict[str, Any]

    def __call__(self, q: float) -> float:
        """``φ(q)``: the loss change of a step whose Gauss–Newton quadratic is ``q``.

        Log–log interpolation on the grid; below it ``C/Q`` is held at its first grid value (there
        ``C ≈ Q``), above it ``C`` grows as ``√Q`` (linearly in the step, as cross-entropy does far
        out). A non-positive ``q`` (a quadratic that is not a Gauss–Newton one) is returned as it is.
        """
        q = float(q)
        qs, cs = self.quadratic, self.loss
        if not np.isfinite(q) or q <= 0.0 or qs[-1] <= 0.0:
            return q
        ok = (qs > 0) & (cs > 0)
        qs, cs = qs[ok], cs[ok]
        if qs.size == 0:
            return q
        if q <= qs[0]:
            return q * cs[0] / qs[0]
        if q >= qs[-1]:
            return float(cs[-1] * np.sqrt(q / qs[-1]))
        return float(np.exp(np.interp(np.log(q), np.log(qs), np.log(cs))))

    def record(self) -> dict[str, Any]:
        """For ``results.json``: the grid as lists, and how it was made."""
        return {
            "alphas": ALPHAS.tolist(),
            "quadratic": self.quadratic.tolist(),
            "loss": self.loss.tolist(),
            "probes": self.probes,
            **self.info,
        }


def _log_mean_exp(logp: jax.Array, x: jax.Array) -> jax.Array:
    """``log Σ_k p_k e^{x_k}`` per position, to full float32 precision for small ``x`` (where it is
    ``log1p(Σ p_k expm1(x_k))``, used while every ``x_k < 30``) as well as for large."""
    # log1p form while no term can overflow: logsumexp would lose everything below float32's
    # resolution near 1, which on a confident token is the whole change.
    p = jnp.exp(logp)
    small = jnp.log1p(jnp.sum(p * jnp.expm1(jnp.minimum(x, 30.0)), axis=-1))
    large = jax.nn.logsumexp(logp + x, axis=-1)
    return jnp.where(jnp.max(x, axis=-1) < 30.0, small, large)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _curve_step(graph: Any, params: PyTree, kind: str, batch: dict[str, Any], direction: PyTree):
    def logits(p: PyTree) -> tuple[jax.Array, jax.Array]:
        module = graph.ckpt.module(p)
        if hasattr(module, "remat"):
            module.remat = False
        return kfac._logits_and_weights(module, kind, batch)

    (z, w), (u, _) = jax.jvp(logits, (params,), (direction,))
    logp = jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
    u = u.astype(jnp.float32)
    p = jnp.exp(logp)
    # Centred on its mean under p: changes neither quantity, keeps the arguments small, and spares
    # the variance a cancellation.
    c = u - jnp.sum(p * u, axis=-1)[..., None]
    q1 = 0.5 * jnp.sum(w * jnp.sum(p * c * c, axis=-1))

    def even(alpha: jax.Array) -> jax.Array:
        # ½[ℓ(z + αu) + ℓ(z − αu)] − ℓ(z) = ½[lme(αu) + lme(−αu)]: the target's logit cancels.
        return jnp.sum(w * 0.5 * (_log_mean_exp(logp, alpha * c) + _log_mean_exp(logp, -alpha * c)))

    return q1, jax.lax.map(even, jnp.asarray(ALPHAS, jnp.float32))


def collect(
    ckpt: Any,
    params: PyTree,
    delta: PyTree,
    batches: Sequence[dict[str, Any]],
    kind: str,
    *,
    key: jax.Array,
    probes: int = 4,
    quadratic: Callable[[PyTree], float] | None = None,
) -> SaturationCurve:
    """The pair's saturation curve at ``params`` (``W_post``) along random-sign copies of ``delta``.

    Args:
      ckpt: an :class:`analysis.hf.checkpoints.Checkpoint` (its graph).
      params: the point.
      delta: ``ΔW`` (a pytree like ``params``).
      batches: calibration batches (each counts equally, as in the mean loss).
      kind: ``"causal-lm"`` or ``"classification"`` (:func:`analysis.study.kfac.output_kind`).
      key: PRNG key of the signs (probe ``j`` uses ``fold_in(key, j)``).
      probes: random-sign copies per batch (one forward-mode product each).
      quadratic: the shared quadratic ``½⟨x, G x⟩`` the curve will be read with (e.g. K-FAC's; no
        passes over data). The curve's ``Q`` axis is then its value on each copy, averaged, so that
        ``φ`` is read where that quadratic puts an edit, whatever its error against the exact
        Gauss–Newton ``Q`` (recorded as ``quadratic_over_exact``). Default: the exact one.

    Returns:
      :class:`SaturationCurve`.
    """
    if kind not in kfac.KINDS:
        raise ValueError(f"kind={kind!r}; accepted: {', '.join(kfac.KINDS)}")
    if probes < 1:
        raise ValueError(f"probes={probes}; at least 1 random-sign copy of ΔW is needed")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; the saturation curve needs at least one calibration batch")
    graph = kfac._Graph(ckpt)
    t0 = time.perf_counter()
    leaves, treedef = jax.tree_util.tree_flatten(delta)
    q1, qs, c = 0.0, 0.0, np.zeros(ALPHAS.shape)
    for j in range(probes):
        keys = jax.random.split(jax.random.fold_in(key, j), len(leaves))
        signs = [jax.random.rademacher(k, x.shape, jnp.float32).astype(x.dtype) for k, x in zip(keys, leaves)]
        direction = treedef.unflatten([x * s for x, s in zip(leaves, signs)])
        if quadratic is not None:
            qs += float(quadratic(direction))
        for batch in batches:
            qb, cb = _curve_step(graph, params, kind, batch, direction)
            q1 += float(qb)
            c += np.asarray(cb, np.float64)
    n = probes * len(batches)
    q1, c = q1 / n, c / n
    if not (np.isfinite(q1) and np.all(np.isfinite(c))):
        raise FloatingPointError(f"the saturation curve is not finite (Q per unit step {q1}); the logits overflow")
    info: dict[str, Any] = {"batches": len(batches), "passes_per_batch": {"jvp": probes}}
    if quadratic is not None:
        qs /= probes
        info["quadratic_over_exact"] = qs / q1 if q1 > 0 else float("nan")
        q1 = qs
    info["seconds"] = time.perf_counter() - t0
    c = np.maximum.accumulate(c)  # convex and even in α: non-decreasing (rounding aside)
    return SaturationCurve(quadratic=ALPHAS**2 * q1, loss=c, probes=probes, info=info)
