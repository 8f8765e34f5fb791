"""Path integrals of the gradient along a straight segment in parameter space.

For a loss ``L``, a start point ``W`` and a direction ``D`` (pytrees of the same structure), the
fundamental theorem of calculus for line integrals gives

    L(W + D) − L(W) = ∫_0^1 <∇L(W + t·D), D> dt  ≈  Σ_i w_i <∇L(W + t_i·D), D>,

which is the paper's Eq. 1 (Tang et al., 2024, arXiv 2410.13841) when ``W = W_post``,
``D = ΔW~ = F(ΔW) − ΔW`` and the rule is the left Riemann sum with C = 5 nodes. The same identity
on ``W_pre → W_post`` is the completeness check.

Rather than the scalar alone, :func:`integrate_path` returns the weighted gradient sum
``G = Σ_i w_i ∇L(W + t_i·D)`` (averaged over data batches), so that ``<G, D>`` is the estimate,
``<G_leaf, D_leaf>`` is its per-module breakdown, and any other direction can be scored against
the same gradients. Memory is flat in the number of nodes: one float32 accumulator, donated to
each jitted step; per-node gradients are never stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import quadrature as quad
from riemann._src import trees

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class PathIntegral:
    """Result of :func:`integrate_path`.

    Attributes:
      value: ``Σ_i w_i <∇L(start + t_i·direction), direction>``, averaged over batches.
      grad: ``Σ_i w_i ∇L(start + t_i·direction)`` averaged over batches; a pytree like ``start``
        in the accumulation dtype (float32 for 16-bit and 32-bit parameters); ``None`` in forward
        mode.
      nodes, weights: the quadrature rule used (float64, weights sum to 1).
      losses: mean loss over batches at each node.
      integrand: mean ``<∇L(start + t_i·direction), direction>`` over batches at each node.
      batch_values: the estimate computed on each batch alone (their mean is ``value``).
      modules: per-leaf breakdown ``{leaf name: <grad_leaf, direction_leaf>}``; sums to ``value``.
      rule, n: the rule's name and node count.
      loss_start, loss_end: mean loss at ``start`` and ``start + direction`` when asked for
        (``endpoints=True``), else ``None``.
      evaluations: gradient evaluations (forward + backward passes; jvps in forward mode) per batch that were spent,
        and ``forward``: loss-only forward passes per batch.
    """

    value: float
    grad: PyTree
    nodes: np.ndarray
    weights: np.ndarray
    losses: np.ndarray
    integrand: np.ndarray
    batch_values: np.ndarray
    modules: dict[str, float]
    rule: str
    n: int
    loss_start: float | None = None
    loss_end: float | None = None
    evaluations: int = 0
    forward: int = 0

    @property
    def num_batches(self) -> int:
        return int(self.batch_values.shape[0])

    @property
    def stderr(self) -> float:
        """Standard error of ``value`` across batches (NaN with a single batch)."""
        b = self.num_batches
        return float(np.std(self.batch_values, ddof=1) / np.sqrt(b)) if b > 1 else float("nan")

    @property
    def gap(self) -> float | None:
        """Completeness gap ``value − (L(end) − L(start))``: the rule's error on this segment."""
        if self.loss_start is None or self.loss_end is None:
            return None
        return self.value - (self.loss_end - self.loss_start)

    @property
    def relative_gap(self) -> float | None:
        """``|gap| / |L(end) − L(start)|``."""
        if self.gap is None:
            return None
        return abs(self.gap) / max(abs(self.loss_end - self.loss_start), np.finfo(np.float64).tiny)

    def score(self, other: PyTree) -> float:
        """``<grad, other>``: the same weighted gradients applied to another direction."""
        if self.grad is None:
            raise ValueError("this PathIntegral was computed in forward mode and holds no gradient; use mode='accumulate'")
        trees.check_compatible(self.grad, jax.tree_util.tree_map(_as_accum, other), ("grad", "other"))
        return float(trees.tree_vdot(self.grad, other))


def _as_accum(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(trees.accum_dtype(jnp.result_type(x)))


def _zeros_like_accum(tree: PyTree) -> PyTree:
    """A zero accumulator laid out like ``tree`` (same sharding), so donating it into each step
    updates it in place instead of copying across a layout change."""

    def one(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        return jnp.zeros_like(x, dtype=trees.accum_dtype(x.dtype), device=x.sharding)

    return jax.tree_util.tree_map(one, tree)


def _grad_step(
    loss_fn: LossFn, acc: PyTree, start: PyTree, direction: PyTree, t: jax.Array, w: jax.Array, batch: Any
) -> tuple[PyTree, jax.Array, jax.Array]:
    """One (node, batch) step: ``acc += w·∇L(start + t·direction)``; also the loss and the
    directional derivative ``<∇L, direction>`` at the node."""
    point = trees.move_along(start, direction, t)
    loss, g = jax.value_and_grad(loss_fn)(point, batch)
    acc = jax.tree_util.tree_map(lambda a, gi: a + w.astype(a.dtype) * gi.astype(a.dtype), acc, g)
    return acc, jnp.asarray(loss).astype(trees.accum_dtype(jnp.result_type(loss))), trees.tree_vdot(g, direction)


# loss_fn is static (hashed by identity), so a step compiles once per (loss_fn, shapes) and is
# reused by every later call; the accumulator is donated so it is updated in place.
_grad_step_jit = jax.jit(_grad_step, static_argnums=0, donate_argnums=1)


def _jvp_step(
    loss_fn: LossFn, start: PyTree, direction: PyTree, t: jax.Array, batch: Any
) -> tuple[jax.Array, jax.Array]:
    """One (node, batch) step in forward mode: the loss and ``<∇L(start + t·D), D>`` as the
    directional derivative ``d/dε L(start + t·D + ε·D)`` (``jax.jvp``): no gradient is formed."""
    point = trees.move_along(start, direction, t)
    loss, dot = jax.jvp(lambda p: loss_fn(p, batch), (point,), (direction,))
    wide = trees.accum_dtype(jnp.result_type(loss))
    return jnp.asarray(loss).astype(wide), jnp.asarray(dot).astype(wide)


_jvp_step_jit = jax.jit(_jvp_step, static_argnums=0)


def _loss_at(loss_fn: LossFn, start: PyTree, direction: PyTree, t: jax.Array, batch: Any) -> jax.Array:
    loss = loss_fn(trees.move_along(start, direction, t), batch)
    return jnp.asarray(loss).astype(trees.accum_dtype(jnp.result_type(loss)))


_loss_at_jit = jax.jit(_loss_at, static_argnums=0)


@jax.jit
def _scale_tree(tree: PyTree, c: jax.Array) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x * c.astype(x.dtype), tree)


@jax.jit
def _leaf_vdots_jit(a: PyTree, b: PyTree) -> list[jax.Array]:
    return trees.leaf_vdots(a, b)


def _check_inputs(loss_fn: LossFn, start: PyTree, direction: PyTree) -> None:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch) -> scalar, got {loss_fn!r}")
    trees.check_compatible(start, direction, ("start", "direction"))
    if not jax.tree_util.tree_leaves(start):
        raise ValueError("start has no array leaves; expected a pytree of floating arrays")
    trees.check_finite(start, "start")
    trees.check_finite(direction, "direction")


@dataclasses.dataclass
class _Sums:
    """Running sums over batches for a fixed node set (host-side bookkeeping only)."""

    acc: PyTree
    losses: list[list[jax.Array]]  # [batch][node]
    dots: list[list[jax.Array]]
    loss_start: list[jax.Array]
    loss_end: list[jax.Array]


def _accumulate(
    loss_fn: LossFn,
    start: PyTree,
    direction: PyTree,
    batches: Iterable[Any],
    nodes: np.ndarray,
    weights: np.ndarray,
    acc: PyTree,
    *,
    want_start: bool,
    want_end: bool,
    progress: Any,
) -> _Sums:
    sums = _Sums(acc, [], [], [], [])
    ts = [trees.scalar(t) for t in nodes]
    ws = [trees.scalar(w) for w in weights]
    for batch in batches:
        row_l, row_d = [], []
        for t, w in zip(ts, ws):
            if sums.acc is None:
                loss, dot = _jvp_step_jit(loss_fn, start, direction, t, batch)
            else:
                sums.acc, loss, dot = _grad_step_jit(loss_fn, sums.acc, start, direction, t, w, batch)
            row_l.append(loss)
            row_d.append(dot)
            if progress is not None:
                progress.update(1)
        sums.losses.append(row_l)
        sums.dots.append(row_d)
        if want_start:
            sums.loss_start.append(_loss_at_jit(loss_fn, start, direction, trees.scalar(0.0), batch))
        if want_end:
            sums.loss_end.append(_loss_at_jit(loss_fn, start, direction, trees.scalar(1.0), batch))
    if not sums.losses:
        raise ValueError("batches is empty; expected at least one batch for loss_fn(params, batch)")
    return sums


def _diagnose_nonfinite(
    loss_fn: LossFn, start: PyTree, direction: PyTree, nodes: np.ndarray, losses: np.ndarray,
    dots: np.ndarray, batches: Any,
) -> None:
    bad = ~(np.isfinite(losses) & np.isfinite(dots))
    if not bad.any():
        return
    b, i = map(int, np.argwhere(bad)[0])
    t = float(nodes[i])
    what = "loss" if not np.isfinite(losses[b, i]) else "gradient"
    where = ""
    if isinstance(batches, Sequence):
        point = trees.move_along(start, direction, trees.scalar(t))
        bad_params = trees.nonfinite_leaves(point)
        if bad_params:
            where = f"; parameters non-finite in leaves {bad_params[:5]}"
        else:
            g = jax.grad(loss_fn)(point, batches[b])
            bad_grad = trees.nonfinite_leaves(g)
            if bad_grad:
                where = f"; gradient non-finite in leaves {bad_grad[:5]}"
    raise FloatingPointError(f"non-finite {what} at node t={t:.6g} (batch {b}){where}")


def integrate_path(
    loss_fn: LossFn,
    start: PyTree,
    direction: PyTree,
    batches: Iterable[Any],
    *,
    rule: str = "left",
    n: int = 5,
    endpoints: bool = False,
    progress: bool = False,
    mode: str = "accumulate",
) -> PathIntegral:
    """Quadrature of ``∫_0^1 <∇L(start + t·direction), direction> dt``, averaged over batches.

    With ``start = W_post``, ``direction = F(ΔW) − ΔW`` and the defaults (left rule, n = 5) this is
    the paper's approximation term (Tang et al., 2024, Eq. 1). With ``start = W_pre`` and
    ``direction = ΔW`` it is the completeness check of the post-training gain.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``; must be traceable by ``jax.jit``. The jitted
        step is cached on the function's identity: pass the same function object across calls
        to compile once per shape.
      start: pytree of floating arrays.
      direction: pytree with the structure, shapes and dtypes of ``start``.
      batches: iterable of batches (any pytree ``loss_fn`` accepts), walked once; each batch
        counts equally. A sequence also allows naming the offending leaf on a non-finite loss.
      rule, n: quadrature rule and node count (see :func:`riemann.quadrature`).
      endpoints: also compute the loss at ``start`` and at ``start + direction`` (reusing node
        evaluations at t = 0 or 1), which gives :attr:`PathIntegral.gap`.
      progress: show a progress bar (tqdm) over (node, batch) steps.
      mode: ``"accumulate"`` (default): reverse mode, accumulating ``grad`` in float32 (per-module
        breakdown, scores of other directions). ``"forward"``: each integrand is the directional
        derivative ``d/dε L(W + t·D + ε·D)`` by ``jax.jvp`` — no gradient, no accumulator, about
        half the memory of a backward pass (see ``riemann plan``); ``grad`` is ``None`` and
        ``modules`` empty.

    Returns:
      A :class:`PathIntegral`.

    Raises:
      ValueError: unknown rule, bad ``n``, empty ``batches``, or trees differing in structure,
        shape or dtype (naming the first offending leaf).
      FloatingPointError: non-finite parameters (naming the leaves) or a non-finite loss or
        gradient at a node (naming ``t`` and, where possible, the leaves).

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, x: jnp.sum(p["w"] ** 2 * x)       # L(w) = Σ x w², exact for midpoint
      >>> res = integrate_path(loss, {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 0.0])},
      ...                      [jnp.array([1.0, 1.0])], rule="midpoint", n=1, endpoints=True)
      >>> round(res.value, 6), round(res.loss_end - res.loss_start, 6)
      (3.0, 3.0)
    """
    nodes, weights = quad.quadrature(rule, n)
    if mode not in ("accumulate", "forward"):
        raise ValueError(f"mode={mode!r}; expected 'accumulate' (gradient accumulator) or 'forward' (jvp products)")
    _check_inputs(loss_fn, start, direction)
    return _integrate(loss_fn, start, direction, batches, rule, int(n), nodes, weights, endpoints, progress,
                      forward=mode == "forward")


def _integrate(
    loss_fn: LossFn, start: PyTree, direction: PyTree, batches: Iterable[Any], rule: str, n: int,
    nodes: np.ndarray, weights: np.ndarray, endpoints: bool, progress: bool, forward: bool = False,
) -> PathIntegral:
    has0, has1 = bool(np.any(nodes == 0.0)), bool(np.any(nodes == 1.0))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = n * len(batches) if isinstance(batches, Sequence) else None
        bar = tqdm(total=total, desc=f"path integral ({rule}, n={n})", unit="step")
    try:
        sums = _accumulate(
            loss_fn, start, direction, batches, nodes, weights, None if forward else _zeros_like_accum(start),
            want_start=endpoints and not has0, want_end=endpoints and not has1, progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    return _finish(loss_fn, start, direction, batches, rule, n, nodes, weights, sums, endpoints)


def _finish(
    loss_fn: LossFn, start: PyTree, direction: PyTree, batches: Any, rule: str, n: int,
    nodes: np.ndarray, weights: np.ndarray, sums: _Sums, endpoints: bool,
) -> PathIntegral:
    losses = np.asarray(jax.device_get(sums.losses), np.float64).reshape(-1, len(nodes))
    dots = np.asarray(jax.device_get(sums.dots), np.float64).reshape(-1, len(nodes))
    _diagnose_nonfinite(loss_fn, start, direction, nodes, losses, dots, batches)
    num_batches = losses.shape[0]
    batch_values = dots @ weights
    if sums.acc is None:  # forward mode: no gradient, the value comes from the directional derivatives
        grad, modules, value = None, {}, float(batch_values.mean())
    else:
        grad = _scale_tree(sums.acc, trees.scalar(1.0 / num_batches))
        per_leaf = [float(v) for v in jax.device_get(_leaf_vdots_jit(grad, direction))]
        modules = dict(zip(trees.leaf_names(start), per_leaf))
        value = float(np.sum(per_leaf)) if per_leaf else 0.0
    loss_start = loss_end = None
    if endpoints:
        loss_start = float(losses[:, nodes == 0.0][:, 0].mean()) if np.any(nodes == 0.0) else float(
            np.mean(jax.device_get(sums.loss_start)))
        loss_end = float(losses[:, nodes == 1.0][:, 0].mean()) if np.any(nodes == 1.0) else float(
            np.mean(jax.device_get(sums.loss_end)))
        if not (np.isfinite(loss_start) and np.isfinite(loss_end)):
            which = "start (t=0)" if not np.isfinite(loss_start) else "end (t=1)"
            raise FloatingPointError(f"non-finite loss at the {which} of the segment")
    return PathIntegral(
        value=value,
        grad=grad,
        nodes=nodes,
        weights=weights,
        losses=losses.mean(axis=0),
        integrand=dots.mean(axis=0),
        batch_values=batch_values,
        modules=modules,
        rule=rule,
        n=n,
        loss_start=loss_start,
        loss_end=loss_end,
        evaluations=len(nodes),
        forward=int(endpoints and not np.any(nodes == 0.0)) + int(endpoints and not np.any(nodes == 1.0)),
    )


def integrate_adaptive(
    loss_fn: LossFn,
    start: PyTree,
    direction: PyTree,
    batches: Sequence[Any],
    *,
    rule: str = "gauss-legendre",
    n: int = 2,
    rtol: float = 1e-4,
    atol: float = 0.0,
    max_n: int = 64,
    progress: bool = False,
) -> PathIntegral:
    """Raise ``n`` until the completeness gap ``|value − (L(end) − L(start))|`` is at most
    ``atol + rtol·|L(end) − L(start)|``.

    The endpoint losses are computed once. Rules whose refined node set contains the old one
    with proportional weights (left, right, midpoint, trapezoid) reuse every earlier gradient
    evaluation: the accumulator is rescaled and only the new nodes are evaluated. Simpson and
    Gauss–Legendre restart at the refined ``n`` (see :func:`riemann.quadrature.refine`).

    Returns the last :class:`PathIntegral` (with ``loss_start``/``loss_end`` set);
    ``evaluations`` counts every gradient evaluation spent over all rounds. If ``max_n`` is reached
    first, the result is returned as is: check :attr:`PathIntegral.gap` yourself.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, x: jnp.sum(jnp.exp(x * p["w"]))        # smooth: trapezoid converges as 1/n²
      >>> res = integrate_adaptive(loss, {"w": jnp.array([0.0])}, {"w": jnp.array([1.0])},
      ...                          [jnp.array([1.0])], rule="trapezoid", n=2, rtol=1e-3)
      >>> res.n, res.relative_gap < 1e-3, res.evaluations == res.n      # every gradient reused
      (17, True, True)
    """
    if not isinstance(batches, Sequence):
        raise ValueError("integrate_adaptive needs batches as a sequence (it walks them once per round)")
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    nodes, weights = quad.quadrature(rule, n)
    if max_n < n:
        raise ValueError(f"max_n must be >= n, got max_n={max_n}, n={n}")
    _check_inputs(loss_fn, start, direction)
    nested = rule in ("left", "right", "midpoint", "trapezoid")
    res = _integrate(loss_fn, start, direction, batches, rule, n, nodes, weights, True, progress)
    spent = res.evaluations
    l0, l1 = res.loss_start, res.loss_end
    while abs(res.gap) > atol + rtol * abs(l1 - l0) and quad.refine(rule, n) <= max_n:
        n_new = quad.refine(rule, n)
        new_nodes, new_weights = quad.quadrature(rule, n_new)
        if not nested:
            res = _integrate(loss_fn, start, direction, batches, rule, n_new, new_nodes, new_weights, False, progress)
            spent += res.evaluations
        else:
            res, used = _refine_nested(loss_fn, start, direction, batches, res, rule, n_new, new_nodes, new_weights)
            spent += used
        res = dataclasses.replace(res, loss_start=l0, loss_end=l1)
        n = n_new
    return dataclasses.replace(res, evaluations=spent, forward=2 - int(np.any(nodes == 0.0)) - int(np.any(nodes == 1.0)))


def _refine_nested(
    loss_fn: LossFn, start: PyTree, direction: PyTree, batches: Sequence[Any], old: PathIntegral,
    rule: str, n_new: int, nodes: np.ndarray, weights: np.ndarray,
) -> tuple[PathIntegral, int]:
    # For these rules the refined weight of every old node is c times its old weight, with
    # c = (old cell width)/(new cell width); the new integral is c·old + Σ_new w_j f(t_j).
    c = weights[np.argmin(np.abs(nodes - old.nodes[0]))] / old.weights[0]
    is_new = ~np.isclose(nodes[:, None], old.nodes[None, :], rtol=0, atol=1e-12).any(axis=1)
    acc = _scale_tree(old.grad, trees.scalar(c * old.num_batches))
    sums = _accumulate(
        loss_fn, start, direction, batches, nodes[is_new], weights[is_new], acc,
        want_start=False, want_end=False, progress=None,
    )
    fresh = _finish(loss_fn, start, direction, batches, rule, n_new, nodes[is_new], weights[is_new], sums, False)
    order = np.argsort(np.concatenate([old.nodes, nodes[is_new]]), kind="stable")
    merged = lambda a, b: np.concatenate([a, b])[order]  # noqa: E731
    res = dataclasses.replace(
        fresh,
        nodes=nodes,
        weights=weights,
        losses=merged(old.losses, fresh.losses),
        integrand=merged(old.integrand, fresh.integrand),
        batch_values=c * old.batch_values + fresh.batch_values,
        n=n_new,
    )
    return res, int(is_new.sum())
