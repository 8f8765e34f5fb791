"""How far a shared prediction can be trusted, and the ``auto`` estimate that measures where it
cannot. Two judges: the diagonal quadratic's trust region along ``±ΔW`` (this module, below), and
the error envelopes of :func:`riemann.saturation` along ``ΔW``, random-sign copies of it and its
gradient-sign copy, read by a change's length and its parts along each (what the main job's ``auto``
uses; last paragraph).

The shared-curvature surrogate ``q(x) = ⟨g, x⟩ + ½ Σ diag(H)·x²`` (:mod:`riemann._src.curvature`)
is a local model: its error grows with the step. Trust-region methods judge a local model the
same way (Nocedal & Wright, *Numerical Optimization*, 2nd ed., §4.1): compare the actual change
with the model's along steps of growing length. Here the steps are ``±s·ΔW`` from ``W_post`` for a
few relative lengths ``s`` (``s = 1`` backwards is ``W_pre``), on the data the curvature was
computed from, and the model's error at relative length ``s`` is

    e(s) = max over ± of | L(W_post ± s·ΔW) − L(W_post) − q(±s·ΔW) |,

made non-decreasing in ``s`` (a running maximum). An edit whose change has relative length
``ρ = ‖ΔW~‖ / ‖ΔW‖`` is given the error ``ê(ρ)``: the envelope at the first grid length ``≥ ρ``;
beyond the last grid length, the last value scaled by ``(ρ/s)³`` (the exact quadratic's remainder
is third order in the step); below the first, the first value scaled by ``(ρ/s)²`` only, because
the surrogate is not the exact quadratic: the off-diagonal curvature it drops and the noise of
its diagonal are errors of second order, which a cubic would shrink too fast.

An edit's **validity score** is ``v = ê(ρ) / margin``, where ``margin`` is the distance from the
shared prediction to the nearest class boundary ``±tolerance``: ``v < 1`` means the prediction's
class survives an error of the size the model makes at that step length. :func:`auto_estimate`
returns the shared prediction when ``v < 1`` and measures the edit otherwise.

The assumption, stated rather than guaranteed: in the edit's own direction the model errs no more
than along ``±ΔW`` at the same relative length. A direction of high curvature that ``ΔW`` does not
visit (a scale that moves a sensitive matrix, say) can break it; the measured fraction and the
class agreement ``auto`` reaches say how often it held (``docs/theory.md``, §5).

:func:`riemann.saturation` gives a stronger judge for a saturated prediction: envelopes along ``ΔW``,
along random-sign copies of it and along its gradient-sign copy, read by the change's parts along
each, with a band for held-out batches (the Student-t multiple of an estimated standard error). A
prediction whose first-order term was estimated apart (``terms["first_stderr"]``, a cross-fitted one)
has the same multiple of that standard error added.
:func:`auto_estimate` accepts either judge; the main job uses the saturation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann._src.curvature import SharedCurvature
from riemann._src.estimate import Estimate, estimate
from riemann._src.pacing import pace
from riemann._src.saturation import Saturation

PyTree = Any
DEFAULT_STEPS: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class TrustRegion:
    """The shared quadratic's error along ``±s·ΔW``, as a function of the relative step length.

    Attributes:
      steps: the relative lengths ``s`` (increasing).
      errors: the envelope ``e(s)`` (non-decreasing), one per step.
      forward, backward: ``L(W_post ± s·ΔW) − L(W_post)`` measured at each step, batch mean.
      model_forward, model_backward: the quadratic's prediction at the same points.
      scale: ``‖ΔW‖``, the length a relative step is measured against.
      cost: passes per batch spent once (``forward``).
    """

    steps: np.ndarray
    errors: np.ndarray
    forward: np.ndarray
    backward: np.ndarray
    model_forward: np.ndarray
    model_backward: np.ndarray
    scale: float
    cost: dict[str, int]

    def error(self, relative_step: float) -> float:
        """``ê(ρ)``: the envelope at the first grid length ``≥ ρ``; below the grid the first value
        scaled by ``(ρ/s)²``, beyond it the last value scaled by ``(ρ/s)³``."""
        rho = float(relative_step)
        if not rho >= 0:
            raise ValueError(f"relative_step={relative_step!r}; expected a length ≥ 0")
        s, e = self.steps, self.errors
        if rho <= s[0]:
            return float(e[0] * (rho / s[0]) ** 2)
        if rho > s[-1]:
            return float(e[-1] * (rho / s[-1]) ** 3)
        return float(e[int(np.searchsorted(s, rho))])

    def validity(self, change_norm: float, value: float, tolerance: float) -> float:
        """``v = ê(‖ΔW~‖/‖ΔW‖) / margin``, ``margin = min(|value − tolerance|, |value + tolerance|)``:
        below 1 the shared prediction's class survives the model's error at this step (``inf``
        when the prediction sits on a class boundary)."""
        if not tolerance >= 0:
            raise ValueError(f"tolerance={tolerance!r}; expected a number ≥ 0")
        rho = change_norm / self.scale
        margin = min(abs(value - tolerance), abs(value + tolerance))
        if not (np.isfinite(rho) and np.isfinite(value) and margin > 0):
            return float("inf")  # nothing to trust: a non-finite step or prediction, or on a boundary
        return float(self.error(rho) / margin)

    def record(self) -> dict[str, Any]:
        """What ``results.json`` keeps of it: every field, arrays as lists."""
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in dataclasses.asdict(self).items()}


def _loss_at_step(loss_fn: Any, params: PyTree, direction: PyTree, t: jax.Array, batch: Any) -> jax.Array:
    return trees.widen(loss_fn(trees.move_along(params, direction, t), batch))


_loss_at_jit = jax.jit(_loss_at_step, static_argnums=0)


def trust_region(
    loss_fn: Any,
    params: PyTree,
    direction: PyTree,
    batches: Iterable[Any],
    curvature: SharedCurvature,
    *,
    steps: Sequence[float] = DEFAULT_STEPS,
    surrogate: Callable[[PyTree], Estimate] | None = None,
) -> TrustRegion:
    """Measure the shared quadratic's error along ``±s·direction`` from ``params``.

    ``curvature`` must have been computed at ``params`` on the same ``batches`` (its per-batch
    losses are the reference ``L(params)``). Costs ``2·len(steps)`` forward passes per batch, once.
    ``surrogate`` replaces the quadratic by any shared predictor (``change -> Estimate``, no passes
    over data), whose error is then the one measured.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the point the curvature was computed at (``W_post``).
      direction: the step's direction and unit of length (``ΔW``).
      batches: the curvature's batches (calibration data).
      curvature: a :class:`riemann.SharedCurvature` with its Hessian diagonal.
      steps: relative lengths ``s > 0``, increasing.
      surrogate: the model judged (default: ``curvature.estimate``, the diagonal quadratic).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import riemann
      >>> loss = lambda p, x: jnp.sum(x * p["w"] ** 4)           # quartic: the quadratic errs
      >>> w, d, b = {"w": jnp.array([1.0])}, {"w": jnp.array([1.0])}, [jnp.array([1.0])]
      >>> sc = riemann.shared_curvature(loss, w, b, probes=1, key=jax.random.key(0))
      >>> tr = trust_region(loss, w, d, b, sc, steps=[0.5, 1.0])
      >>> [round(float(e), 4) for e in tr.errors]           # |(1±s)⁴ − 1 − (±4s + 6s²)| = 4s³ + s⁴ at worst
      [0.5625, 5.0]
    """
    if curvature.diagonal is None:
        raise ValueError("trust_region needs the Hessian diagonal: compute shared_curvature with probes >= 1")
    s = np.asarray(list(steps), np.float64)
    if s.ndim != 1 or len(s) == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0) or np.any(np.diff(s) <= 0):
        raise ValueError(f"steps={list(steps)!r}; expected increasing relative lengths > 0")
    batches = list(batches)
    if len(batches) != curvature.num_batches:
        raise ValueError(
            f"{len(batches)} batches but the curvature was computed on {curvature.num_batches}; "
            "pass the curvature's own batches"
        )
    scale = float(trees.tree_norm(direction))
    if not np.isfinite(scale) or scale == 0:
        raise ValueError(f"direction has norm {scale}; expected a finite, non-zero step (ΔW = W_post − W_pre)")
    losses = {}
    for sign in (1.0, -1.0):
        out = [
            [pace(_loss_at_jit(loss_fn, params, direction, trees.scalar(sign * t), batch)) for batch in batches]
            for t in s
        ]
        got = np.asarray(jax.device_get(out), np.float64)
        if not np.all(np.isfinite(got)):
            i = int(np.argwhere(~np.isfinite(got))[0, 0])
            raise FloatingPointError(f"non-finite loss at W_post {'+' if sign > 0 else '−'} {s[i]:g}·ΔW")
        losses[sign] = got.mean(axis=1) - curvature.batch_losses.mean()
    if surrogate is None:
        terms = curvature.estimate(direction).terms
        b, c = terms["first"], terms["curvature"]  # ⟨g, ΔW⟩ and Σ diag(H)·ΔW²
        model = {sign: sign * s * b + 0.5 * s**2 * c for sign in (1.0, -1.0)}
    else:
        model = {
            sign: np.array(
                [surrogate(jax.tree.map(lambda x, a=sign * t: x * jnp.asarray(a, x.dtype), direction)).value for t in s]
            )
            for sign in (1.0, -1.0)
        }
    raw = np.maximum(np.abs(losses[1.0] - model[1.0]), np.abs(losses[-1.0] - model[-1.0]))
    return TrustRegion(
        steps=s,
        errors=np.maximum.accumulate(raw),
        forward=losses[1.0],
        backward=losses[-1.0],
        model_forward=model[1.0],
        model_backward=model[-1.0],
        scale=scale,
        cost={"forward": 2 * len(s)},
    )


def auto_estimate(
    curvature: SharedCurvature | None,
    trust: TrustRegion | Saturation,
    loss_fn: Any,
    post: PyTree,
    change: PyTree,
    batches: Iterable[Any],
    *,
    tolerance: float,
    loss_post: Any = None,
    surrogate: Callable[[PyTree], Estimate] | None = None,
    noise: bool = False,
) -> Estimate:
    """The shared-curvature prediction (or ``surrogate``'s, the one ``trust`` was measured for)
    where its validity score is below 1, else the measurement.

    ``trust`` is a :class:`TrustRegion` (errors along ``±s·ΔW``) or a
    :class:`riemann.Saturation` (errors along ``ΔW`` and random-sign copies of it, read by the
    change's alignment), which judges ``surrogate``, the prediction through its curves (whose
    ``terms["second"]`` is the quadratic before them). ``noise=True``
    declares the change's component across ``ΔW`` to be independent per-parameter noise (DARE's
    and DELLA's masks), judged by the noise envelope alone; a :class:`TrustRegion` ignores it.

    The returned estimate's ``method`` is ``"auto"``; ``settings["source"]`` says which it is
    (``"shared"`` or ``"measured"``) and ``terms`` carry ``validity``, ``relative_step`` (``ρ``),
    ``model_error`` (``ê``) and ``shared`` (the shared prediction, whichever was returned).
    ``loss_post``: the per-batch ``L(post)`` on ``batches`` when known (the measurement then costs
    one forward per batch).
    """
    if isinstance(trust, Saturation) and surrogate is None:
        raise ValueError(
            "a Saturation judges the saturated prediction its envelopes were measured for: pass surrogate= "
            "(a StructuredCurvature's estimate with saturate=, as in the README)"
        )
    if surrogate is None and curvature is None:
        raise ValueError("auto_estimate needs a curvature or a surrogate to predict with")
    shared = (curvature.estimate if surrogate is None else surrogate)(change)
    if isinstance(trust, Saturation):
        q = shared.terms.get("second")
        if q is None:
            raise ValueError("judging by a Saturation needs the prediction's quadratic, terms['second']")
        # A surrogate read through the same curves has already placed the change.
        terms = shared.terms
        placed = (
            (terms["relative_step"], terms["alignment"]) if {"relative_step", "alignment"} <= terms.keys() else None
        )
        # A first-order term estimated apart (cross-fitted) states its own standard error.
        se = terms.get("first_stderr", 0.0)
        info = trust.judge(
            change,
            shared.value,
            q,
            tolerance,
            noise=noise,
            placed=placed,
            gradient=terms.get("gradient_part"),
            first_stderr=se if np.isfinite(se) else float("inf"),
        )
    else:
        norm = float(trees.tree_norm(change))
        rho = norm / trust.scale
        info = {
            "validity": trust.validity(norm, shared.value, tolerance),
            "relative_step": rho,
            "model_error": trust.error(rho) if np.isfinite(rho) else float("inf"),
        }
    info["shared"] = shared.value
    if info["validity"] < 1:
        chosen, source = shared, "shared"
    else:
        chosen, source = estimate(loss_fn, post, change, batches, method="measured", loss_post=loss_post), "measured"
    return dataclasses.replace(
        chosen,
        method="auto",
        terms={**chosen.terms, **info},
        settings={**chosen.settings, "source": source, "tolerance": float(tolerance)},
    )
