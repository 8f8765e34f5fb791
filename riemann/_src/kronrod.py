"""An adaptive path integral that states its own error: Gauss–Kronrod 7/15 panels on [0, 1],
bisecting the panel with the largest error until the error is within tolerance or the evaluation
budget is spent (Piessens et al., QUADPACK, 1983; Kronrod, 1965).

On a panel the 15 Kronrod nodes contain the 7 Gauss–Legendre nodes, so one set of integrand values
gives two estimates: ``K`` (exact for polynomials of degree 22) and ``G`` (degree 13). ``|K − G|``
bounds the error of ``G`` and, for smooth integrands, far exceeds that of ``K``, which is what is
returned. But both rules see the integrand only at their nodes, and a steep rise of the loss
narrower than the node spacing (large steps such as DARE at p = 0.99) can fool them alike.

The integrand is a derivative, so each panel also has its exact value: the loss gap
``L(b) − L(a)`` between its ends (the fundamental theorem of calculus), one forward pass per batch
per panel end, shared by neighbouring panels. A panel's error is the larger of ``|K − G|`` and
``|K − (L(b) − L(a))|`` beyond the float32 resolution of that gap (``eps·(|L(a)| + |L(b)|)``), so
the stated error bounds the deviation from the true integral whatever the integrand hides between
nodes, and bisection goes where either check says it is needed. When the budget runs out first
the result says so (``converged=False`` and a :class:`NotConverged` warning) rather than stopping
silently. The value is still the quadrature: its per-module terms (``leaves`` mode) are what the
gap check makes trustworthy.

Two modes: ``forward`` (each node one Jacobian-vector product: the value only) and ``leaves`` (each
node one gradient, reduced at once against the direction leaf by leaf, so per-module terms come
from ``nodes × leaves`` scalars with no float32 accumulator).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from riemann._src import steps as _steps
from riemann._src import trees
from riemann._src.pacing import pace
from riemann._src.progress import progress_bar
from riemann._src.stepwise import PathIntegral, _diagnose_nonfinite

PyTree = Any
LossFn = _steps.LossFn
KRONROD_MODES = ("forward", "leaves")

# Kronrod nodes on [-1, 1] (non-negative half, descending) and their weights; the Gauss–Legendre
# 7-point nodes are every other one of them (indices 1, 3, 5, 7), with weights _WG (QUADPACK's qk15).
_XGK = np.array([0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
                 0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
                 0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
                 0.207784955007898467600689403773245, 0.0])  # fmt: skip
_WGK = np.array([0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
                 0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
                 0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
                 0.204432940075298892414161999234649, 0.209482141084727828012999174891714])  # fmt: skip
_WG = np.array([0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
                0.381830050505118944950369775488975, 0.417959183673469387755102040816327])  # fmt: skip


class NotConverged(RuntimeWarning):
    """An adaptive integral spent its evaluation budget before its error met the tolerance."""


def kronrod_rule() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 15 Gauss–Kronrod nodes on [0, 1] (ascending), their Kronrod weights, and the weights of
    the embedded 7-point Gauss–Legendre rule on the same nodes (zero at the 8 Kronrod-only nodes).
    Both weight vectors sum to 1.

    Example:
      >>> nodes, wk, wg = kronrod_rule()
      >>> len(nodes), round(float(wk.sum()), 12), round(float(wg.sum()), 12), int((wg > 0).sum())
      (15, 1.0, 1.0, 7)
      >>> round(float(wk @ nodes**22), 12) == round(1 / 23, 12)     # exact to degree 22
      True
    """
    x = np.concatenate([-_XGK[:-1], _XGK[::-1]])  # -x0 … -x6, 0, x6 … x0: ascending
    wk = np.concatenate([_WGK[:-1], _WGK[::-1]])
    g = np.zeros(8)
    g[1::2] = _WG
    wg = np.concatenate([g[:-1], g[::-1]])
    return (x + 1.0) / 2.0, wk / 2.0, wg / 2.0


class _Panels:
    """Integrand values on the panels evaluated so far: per panel, per batch, per node."""

    def __init__(
        self, loss_fn: LossFn, start: PyTree, direction: PyTree, batches: Sequence[Any], mode: str, bar: Any
    ) -> None:
        self.loss_fn, self.start, self.direction, self.batches, self.mode, self.bar = (
            loss_fn, start, direction, batches, mode, bar)  # fmt: skip
        self.x, self.wk, self.wg = kronrod_rule()
        self.evaluations = 0
        self.ends: dict[float, np.ndarray] = {}  # per-batch loss at each panel end evaluated

    def loss_at(self, t: float) -> np.ndarray:
        """The per-batch loss at ``start + t·direction`` (one forward pass per batch, cached)."""
        if t not in self.ends:
            got = [
                pace(_steps.loss_at(self.loss_fn, self.start, self.direction, trees.scalar(t), b)) for b in self.batches
            ]
            self.ends[t] = np.asarray(jax.device_get(got), np.float64)
        return self.ends[t]

    def evaluate(self, a: float, b: float) -> dict[str, Any]:
        ts = a + (b - a) * self.x
        losses, parts = [], []
        for batch in self.batches:
            for t in ts:
                if self.mode == "forward":
                    loss, dot = _steps.jvp_step(self.loss_fn, self.start, self.direction, trees.scalar(t), batch)
                    parts.append([dot])
                else:
                    loss, dots = _steps.leaf_step(self.loss_fn, self.start, self.direction, trees.scalar(t), batch)
                    parts.append(dots)
                losses.append(pace((loss, parts[-1]))[0])
                self.bar.update(1)
        self.evaluations += len(ts)
        nb = len(self.batches)
        fetched = jax.device_get(losses)
        eps = float(np.finfo(np.asarray(fetched[0]).dtype).eps)  # of the dtype the integrand was computed in
        loss = np.asarray(fetched, np.float64).reshape(nb, len(ts))
        leaf = np.asarray(jax.device_get(parts), np.float64).reshape(nb, len(ts), -1)  # batch, node, leaf
        _diagnose_nonfinite(self.loss_fn, self.start, self.direction, ts, loss, leaf.sum(-1), self.batches)
        width = b - a
        k_leaf = width * np.einsum("n,bnl->bl", self.wk, leaf)  # per batch, per leaf
        g_total = width * np.einsum("n,bn->b", self.wg, leaf.sum(-1))
        k_total = k_leaf.sum(-1)
        # The integrand is computed in float32 (or float64): below 50·eps·∫|f| on the panel (QUADPACK's
        # round-off floor) |K − G| is noise, and bisecting cannot lower it.
        roundoff = 50.0 * eps * width * float(self.wk @ np.abs(leaf.sum(-1)).mean(axis=0))
        # The exact panel value is the loss gap between its ends; a disagreement within the gap's own
        # float32 resolution says nothing.
        la, lb = self.loss_at(a), self.loss_at(b)
        resolution = eps * float(np.mean(np.abs(la) + np.abs(lb)))
        ends = max(abs(float(k_total.mean() - (lb - la).mean())) - resolution, 0.0)
        return {
            "a": a,
            "b": b,
            "t": ts,
            "w": width * self.wk,
            "loss": loss,
            "dot": leaf.sum(-1),
            "k_leaf": k_leaf,
            "k": k_total,
            "gk": max(abs(float(k_total.mean() - g_total.mean())), ends),
            "roundoff": roundoff,
        }


def integrate_kronrod(
    loss_fn: LossFn,
    start: PyTree,
    direction: PyTree,
    batches: Iterable[Any],
    *,
    rtol: float = 1e-3,
    atol: float = 0.0,
    max_evaluations: int = 15 * 15,
    mode: str = "forward",
    progress: bool = False,
) -> PathIntegral:
    """``∫_0^1 ⟨∇L(start + t·direction), direction⟩ dt`` by adaptive Gauss–Kronrod 7/15 panels, with
    its error estimate.

    A panel's error is the largest of ``|K − G|``, the disagreement of ``K`` with the loss gap
    between the panel's ends beyond that gap's float32 resolution, and the round-off of its
    integrand values (``50·eps·∫|f|``, eps of the loss's dtype), which bisection cannot lower.
    Starting from one panel, the panel with the largest error is bisected until the summed error
    is at most ``max(atol, rtol·|value|)``, until bisecting again would spend more than
    ``max_evaluations`` integrand evaluations per batch (each panel costs 15), or until every
    panel is at its round-off.

    Args:
      loss_fn, start, direction, batches: as for :func:`riemann.integrate_path`.
      rtol, atol: relative and absolute tolerance on the value (both ``≥ 0``, not both zero).
      max_evaluations: the budget of integrand evaluations per batch (at least 15).
      mode: ``"forward"`` (one jvp per node; value only) or ``"leaves"`` (one gradient per node,
        reduced leaf by leaf at once: per-module terms without an accumulator).
      progress: a progress bar over evaluations.

    Returns:
      A :class:`riemann.PathIntegral` with ``rule="gauss-kronrod"``, the nodes and weights of the
      final panels, ``error`` (the summed panel errors), ``converged``, ``evaluations`` counting
      every evaluation spent (panels later bisected included) and ``forward`` the loss-only passes
      per batch at panel ends. ``grad`` is ``None``; ``modules`` are
      filled in ``leaves`` mode. When the budget runs out first, ``converged`` is ``False`` and a
      :class:`NotConverged` warning says so.

    Example:
      >>> import jax.numpy as jnp
      >>> import math
      >>> loss = lambda p, _: jnp.sum(jnp.sin(5.0 * p["w"]))           # ∫ 5cos(5t) dt = sin 5
      >>> res = integrate_kronrod(loss, {"w": jnp.zeros(1)}, {"w": jnp.ones(1)}, [None], rtol=1e-4)
      >>> res.converged, abs(res.value - math.sin(5.0)) <= res.error, res.evaluations
      (True, True, 15)
    """
    if mode not in KRONROD_MODES:
        raise ValueError(f"mode={mode!r}; expected 'forward' (jvp per node) or 'leaves' (per-leaf gradient terms)")
    if rtol < 0 or atol < 0 or (rtol == 0 and atol == 0) or not np.isfinite(rtol + atol):
        raise ValueError(f"rtol={rtol}, atol={atol}; expected finite tolerances >= 0, not both zero")
    if max_evaluations < 15:
        raise ValueError(f"max_evaluations={max_evaluations}; one Gauss–Kronrod panel needs 15 evaluations")
    _steps.check_inputs(loss_fn, start, direction)
    batches = batches if isinstance(batches, Sequence) else list(batches)
    if not batches:
        raise ValueError("batches is empty; expected at least one batch for loss_fn(params, batch)")
    with progress_bar(progress, desc="path integral (gauss-kronrod)", unit="node") as bar:
        work = _Panels(loss_fn, start, direction, batches, mode, bar)
        panels = [work.evaluate(0.0, 1.0)]
        while True:
            value = float(sum(p["k"].mean() for p in panels))
            error = float(sum(max(p["gk"], p["roundoff"]) for p in panels))
            converged = error <= max(atol, rtol * abs(value))
            improvable = [i for i, p in enumerate(panels) if p["gk"] > p["roundoff"]]
            if converged or not improvable or work.evaluations + 30 > max_evaluations:
                break
            p = panels.pop(max(improvable, key=lambda i: panels[i]["gk"]))
            mid = 0.5 * (p["a"] + p["b"])
            panels += [work.evaluate(p["a"], mid), work.evaluate(mid, p["b"])]
    if not converged:
        why = "the evaluation budget is spent" if improvable else "the integrand's round-off limits it"
        warnings.warn(
            f"adaptive Gauss–Kronrod integral not converged after {work.evaluations} evaluations per batch ({why}): "
            f"value {value:.6g}, error estimate {error:.3g} > tolerance {max(atol, rtol * abs(value)):.3g}",
            NotConverged,
            stacklevel=2,
        )
    return _result(panels, value, error, converged, work.evaluations, len(work.ends), trees.leaf_names(start), mode)


def _result(
    panels: list[dict[str, Any]],
    value: float,
    error: float,
    converged: bool,
    evaluations: int,
    forward: int,
    names: list[str],
    mode: str,
) -> PathIntegral:
    panels = sorted(panels, key=lambda p: p["a"])
    nodes = np.concatenate([p["t"] for p in panels])
    weights = np.concatenate([p["w"] for p in panels])
    losses = np.concatenate([p["loss"] for p in panels], axis=1)
    dots = np.concatenate([p["dot"] for p in panels], axis=1)
    batch_values = sum(p["k"] for p in panels)
    modules = {}
    if mode == "leaves":
        per_leaf = sum(p["k_leaf"] for p in panels).mean(axis=0)
        modules = dict(zip(names, per_leaf.tolist()))
    return PathIntegral(
        value=float(batch_values.mean()),
        grad=None,
        nodes=nodes,
        weights=weights,
        losses=losses.mean(axis=0),
        integrand=dots.mean(axis=0),
        batch_values=batch_values,
        modules=modules,
        rule="gauss-kronrod",
        n=len(nodes),
        evaluations=evaluations,
        forward=forward,
        error=error,
        converged=converged,
    )
