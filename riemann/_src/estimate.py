"""Estimators of the loss change an edit causes, ``ΔL = L(W_post + ΔW~) − L(W_post)``.

- ``riemann``: the paper's approximation term (Tang et al., 2024, Eq. 1),
  ``Σ_i w_i <∇L(W_post + t_i·ΔW~), ΔW~>`` — left rule with C = 5 by default, any rule on request.
- ``first-order``: ``<g, ΔW~>`` with ``g = ∇L(W_post)``; the paper's zero-expectation argument
  for DARE is about this term.
- ``second-order``: ``<g, ΔW~> + ½ <ΔW~, H ΔW~>`` with ``H = ∇²L(W_post)``, the local quadratic
  surrogate of the follow-up paper ("On the Editability of Delta Parameters in Post-Trained
  Models", 2026). ``H ΔW~`` is one forward-over-reverse Hessian-vector product (``jax.jvp`` of
  ``jax.grad``), which yields ``g`` in the same pass; ``H`` is never formed.
- ``measured``: ``L(W_post + ΔW~) − L(W_post)`` itself, paired per batch.

Why the first-order term and the computed sum differ, and what second order adds:
``docs/theory.md``, §4 and §5.

Each result carries its standard error across batches (paired: the same batches on both sides)
and, for the gradient-based terms, the per-leaf (per-module) breakdown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from riemann._src import kronrod as _kronrod
from riemann._src import path as _path
from riemann._src import steps as _steps
from riemann._src import trees
from riemann._src.pacing import pace

PyTree = Any
METHODS: tuple[str, ...] = ("riemann", "first-order", "second-order", "measured")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One estimate of an edit's loss change.

    Attributes:
      method: the estimator (one of :data:`METHODS`).
      value: the estimated (or, for ``measured``, the measured) ``ΔL``, averaged over batches.
      batch_values: the same quantity on each batch; ``value`` is their mean.
      modules: per-leaf breakdown ``{leaf name: contribution}`` summing to ``value`` (empty for
        ``measured``, which has none).
      terms: named parts, e.g. ``first``/``second`` for ``second-order``, ``loss_post``/
        ``loss_edited`` for ``measured``.
      cost: passes spent per batch: ``gradient`` (forward + backward), ``jvp`` (forward-mode
        product, ``riemann`` with ``mode="forward"``), ``hvp`` (forward-over-reverse),
        ``forward`` (loss only).
      settings: the estimator's settings (rule and n for ``riemann``).
      error, converged: for the adaptive rule (``rule="gauss-kronrod"``), its error estimate and
        whether it met its tolerance within its budget; ``None`` for every other estimator.
    """

    method: str
    value: float
    batch_values: np.ndarray
    modules: dict[str, float]
    terms: dict[str, float]
    cost: dict[str, int]
    settings: dict[str, Any]
    error: float | None = None
    converged: bool | None = None

    @property
    def stderr(self) -> float:
        """Standard error of ``value`` across batches (NaN with a single batch)."""
        b = len(self.batch_values)
        return float(np.std(self.batch_values, ddof=1) / np.sqrt(b)) if b > 1 else float("nan")


def _second_order_step(loss_fn: Any, post: PyTree, change: PyTree, batch: Any) -> tuple[jax.Array, list, list]:
    def grad_fn(p: PyTree) -> PyTree:
        return jax.grad(loss_fn)(p, batch)

    loss = loss_fn(post, batch)
    g, hc = jax.jvp(grad_fn, (post,), (jax.tree.map(lambda c, p: c.astype(p.dtype), change, post),))
    return trees.widen(loss), trees.leaf_vdots(g, change), trees.leaf_vdots(change, hc)


_second_order_jit = jax.jit(_second_order_step, static_argnums=0)


def _measured_step(loss_fn: Any, post: PyTree, change: PyTree, batch: Any) -> tuple[jax.Array, jax.Array]:
    edited = trees.move_along(post, change, trees.scalar(1.0))
    return trees.widen(loss_fn(post, batch)), trees.widen(loss_fn(edited, batch))


_measured_jit = jax.jit(_measured_step, static_argnums=0)


def _edited_step(loss_fn: Any, post: PyTree, change: PyTree, batch: Any) -> jax.Array:
    return trees.widen(loss_fn(trees.move_along(post, change, trees.scalar(1.0)), batch))


_edited_jit = jax.jit(_edited_step, static_argnums=0)


def _empty(what: str) -> ValueError:
    return ValueError(f"batches is empty; expected at least one batch for loss_fn(params, batch) ({what})")


def estimate(
    loss_fn: Any,
    post: PyTree,
    change: PyTree,
    batches: Iterable[Any],
    *,
    method: str = "riemann",
    rule: str = "left",
    n: int = 5,
    progress: bool = False,
    mode: str = "accumulate",
    loss_post: Any = None,
    rtol: float = 1e-3,
    atol: float = 0.0,
    max_evaluations: int = 15 * 15,
    start_gradients: Any = None,
    start_losses: Any = None,
) -> Estimate:
    """Estimate ``ΔL = L(post + change) − L(post)`` for an edit with ``change = F(ΔW) − ΔW``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, traceable by ``jax.jit``.
      post: the post-trained parameters ``W_post``.
      change: ``ΔW~``, same structure, shapes and dtypes as ``post``.
      batches: iterable of batches; each counts equally.
      method: ``"riemann"`` (paper Eq. 1), ``"first-order"``, ``"second-order"`` or ``"measured"``.
      rule, n: the quadrature for ``"riemann"`` (default: the paper's left rule, C = 5). With
        ``rule="gauss-kronrod"`` the integral is adaptive (:func:`riemann.integrate_kronrod`, to
        ``rtol``/``atol`` within ``max_evaluations`` per batch; ``n`` is unused) and the estimate
        carries its ``error`` and ``converged``.
      progress: progress bar for the Riemann sum.
      mode: for ``"riemann"``: ``"accumulate"`` (per-module breakdown) or ``"forward"`` (jvp
        products, less memory, no breakdown); see :func:`riemann.integrate_path`. The adaptive
        rule takes ``"forward"`` or ``"leaves"`` (per-module terms without an accumulator), which
        ``"accumulate"`` means for it.
      loss_post: for ``"measured"``: the per-batch losses at ``post`` when already known (e.g.
        ``riemann.shared_curvature(...).batch_losses``), so measuring a suite costs one forward
        pass per batch per edit instead of two.
      start_gradients, start_losses: for ``"riemann"`` with a rule that has a node at ``t = 0`` (the
        paper's left rule) and for ``"first-order"``: ``∇L_b(post)`` and ``L_b(post)`` per batch
        when already known (:func:`riemann.batch_gradients`): that node costs no pass, so a suite
        scored from one ``post`` spends ``n − 1`` gradients per batch per edit (see
        :func:`riemann.integrate_path`).

    Returns:
      An :class:`Estimate`.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, x: 0.5 * jnp.sum(x * p["w"] ** 2)       # H = diag(x): second order exact
      >>> post, change = {"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([-0.5, 1.0])}
      >>> batches = [jnp.array([1.0, 2.0])]
      >>> round(estimate(loss, post, change, batches, method="measured").value, 6)
      2.625
      >>> round(estimate(loss, post, change, batches, method="second-order").value, 6)
      2.625
      >>> round(estimate(loss, post, change, batches, method="first-order").value, 6)
      1.5
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; accepted methods: {', '.join(METHODS)}")
    if method == "riemann" and rule == "gauss-kronrod":
        if start_gradients is not None or start_losses is not None:
            raise ValueError("start_gradients/start_losses: the adaptive rule has no node at t = 0 to use them")
        mode = "leaves" if mode == "accumulate" else mode  # per-module terms, without an accumulator
        res = _kronrod.integrate_kronrod(
            loss_fn,
            post,
            change,
            batches,
            rtol=rtol,
            atol=atol,
            max_evaluations=max_evaluations,
            mode=mode,
            progress=progress,
        )
        settings = {"rule": res.rule, "rtol": rtol, "atol": atol, "max_evaluations": max_evaluations, "mode": mode}
        return dataclasses.replace(_from_path(res, "riemann", settings), error=res.error, converged=res.converged)
    known = {"start_gradients": start_gradients, "start_losses": start_losses}
    if method == "riemann":
        res = _path.integrate_path(
            loss_fn, post, change, batches, rule=rule, n=n, progress=progress, mode=mode, **known
        )
        return _from_path(res, "riemann", {"rule": res.rule, "n": res.n, "mode": mode})
    if method == "first-order":
        res = _path.integrate_path(loss_fn, post, change, batches, rule="left", n=1, **known)
        return _from_path(res, "first-order", {})
    if start_gradients is not None or start_losses is not None:
        raise ValueError(f"start_gradients/start_losses are for 'riemann' and 'first-order', not {method!r}")
    _steps.check_inputs(loss_fn, post, change)
    if method == "second-order":
        return _second_order(loss_fn, post, change, batches)
    return _measured(loss_fn, post, change, batches, loss_post)


def _from_path(res: _path.PathIntegral, method: str, settings: dict[str, Any]) -> Estimate:
    # A rule with a node at t = 0 has the first-order term ⟨∇L(post), ΔW~⟩ on these batches for free.
    terms = {"loss_post": float(res.losses[0]), "first": float(res.integrand[0])} if res.nodes[0] == 0.0 else {}
    return Estimate(
        method=method,
        value=res.value,
        batch_values=res.batch_values,
        modules=res.modules,
        terms=terms,
        cost={
            **(
                {"gradient": 0, "jvp": res.evaluations}
                if settings.get("mode") == "forward"
                else {"gradient": res.evaluations}
            ),
            "hvp": 0,
            "forward": res.forward,
        },
        settings=settings,
    )


def _second_order(loss_fn: Any, post: PyTree, change: PyTree, batches: Iterable[Any]) -> Estimate:
    names = trees.leaf_names(post)
    losses, firsts, quads = [], [], []
    for batch in batches:
        loss, first, quad = pace(_second_order_jit(loss_fn, post, change, batch))
        losses.append(loss)
        firsts.append(first)
        quads.append(quad)
    if not losses:
        raise _empty("second-order")
    losses_np = np.asarray(jax.device_get(losses), np.float64)
    first_np = np.asarray(jax.device_get(firsts), np.float64).reshape(len(losses), len(names))
    quad_np = np.asarray(jax.device_get(quads), np.float64).reshape(len(losses), len(names))
    if not np.all(np.isfinite(losses_np)) or not np.all(np.isfinite(first_np)) or not np.all(np.isfinite(quad_np)):
        b = int(
            np.argwhere(~(np.isfinite(losses_np) & np.isfinite(first_np).all(1) & np.isfinite(quad_np).all(1)))[0, 0]
        )
        bad = [nm for nm, f, q in zip(names, first_np[b], quad_np[b]) if not (np.isfinite(f) and np.isfinite(q))]
        raise FloatingPointError(
            f"non-finite loss, gradient or Hessian-vector product at t=0 (batch {b}); leaves {bad[:5]}"
        )
    per_leaf = first_np + 0.5 * quad_np
    batch_values = per_leaf.sum(axis=1)
    return Estimate(
        method="second-order",
        value=float(batch_values.mean()),
        batch_values=batch_values,
        modules=dict(zip(names, per_leaf.mean(axis=0).tolist())),
        terms={
            "first": float(first_np.sum(axis=1).mean()),
            "second": float(0.5 * quad_np.sum(axis=1).mean()),
            "curvature": float(quad_np.sum(axis=1).mean()),
            "loss_post": float(losses_np.mean()),
        },
        cost={"gradient": 0, "hvp": 1, "forward": 0},
        settings={},
    )


def _measured(loss_fn: Any, post: PyTree, change: PyTree, batches: Iterable[Any], loss_post: Any = None) -> Estimate:
    if loss_post is None:
        pairs = [pace(_measured_jit(loss_fn, post, change, batch)) for batch in batches]
    else:
        edited = [pace(_edited_jit(loss_fn, post, change, batch)) for batch in batches]
        reference = np.asarray(loss_post, np.float64).reshape(-1)
        if len(reference) != len(edited):
            raise ValueError(
                f"loss_post has {len(reference)} per-batch losses for {len(edited)} batches; they must match"
            )
        pairs = list(zip(reference, jax.device_get(edited)))
    if not pairs:
        raise _empty("measured")
    both = np.asarray(jax.device_get(pairs), np.float64)
    if not np.all(np.isfinite(both)):
        b, side = map(int, np.argwhere(~np.isfinite(both))[0])
        raise FloatingPointError(f"non-finite loss at {'t=0 (post)' if side == 0 else 't=1 (edited)'} (batch {b})")
    batch_values = both[:, 1] - both[:, 0]
    return Estimate(
        method="measured",
        value=float(batch_values.mean()),
        batch_values=batch_values,
        modules={},
        terms={"loss_post": float(both[:, 0].mean()), "loss_edited": float(both[:, 1].mean())},
        cost={"gradient": 0, "hvp": 0, "forward": 2 if loss_post is None else 1},
        settings={},
    )
