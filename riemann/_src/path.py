"""Path integrals of the gradient along a straight segment in parameter space.

For a loss ``L``, a start point ``W`` and a direction ``D`` (pytrees of the same structure), the
fundamental theorem of calculus for line integrals gives

    L(W + D) − L(W) = ∫_0^1 <∇L(W + t·D), D> dt  ≈  Σ_i w_i <∇L(W + t_i·D), D>,

which is the paper's Eq. 1 (Tang et al., 2024, arXiv 2410.13841) when ``W = W_post``,
``D = ΔW~ = F(ΔW) − ΔW`` and the rule is the left Riemann sum with C = 5 nodes. The same identity
on ``W_pre → W_post`` is the completeness check (``docs/theory.md``, §2 and §3).

Rather than the scalar alone, :func:`integrate_path` returns the weighted gradient sum
``G = Σ_i w_i ∇L(W + t_i·D)`` (averaged over data batches), so that ``<G, D>`` is the estimate,
``<G_leaf, D_leaf>`` is its per-module breakdown, and any other direction can be scored against
the same gradients. Memory is flat in the number of nodes: one float32 accumulator, donated to
each jitted step; per-node gradients are never stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from riemann._src import quadrature as quad
from riemann._src import stepwise, trees
from riemann._src.steps import check_inputs, check_mode
from riemann._src.stepwise import PathIntegral, PathState

PyTree = Any
LossFn = stepwise.LossFn


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
    start_gradients: Sequence[PyTree] | None = None,
    start_losses: Sequence[Any] | None = None,
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
      batches: batches (any pytree ``loss_fn`` accepts), each counting equally; an iterable that
        is not a sequence is read into a list first.
      rule, n: quadrature rule and node count (see :func:`riemann.quadrature`).
      endpoints: also compute the loss at ``start`` and at ``start + direction`` (reusing node
        evaluations at t = 0 or 1), which gives :attr:`PathIntegral.gap`.
      progress: show a progress bar over (batch, node) steps.
      mode: ``"accumulate"`` (default): reverse mode, accumulating ``grad`` in float32 (per-module
        breakdown, scores of other directions). ``"forward"``: each integrand is the directional
        derivative ``d/dε L(W + t·D + ε·D)`` by ``jax.jvp`` — no gradient, no accumulator, about
        half the memory of a backward pass (see ``riemann plan``); ``grad`` is ``None`` and
        ``modules`` empty. ``"leaves"``: one gradient per node reduced against the direction leaf by
        leaf at once (``nodes × leaves`` scalars): the value and per-module terms of any rule with
        no float32 accumulator (``grad`` is ``None``) — what an 8B model's per-module terms need.
      start_gradients, start_losses: ``∇L_b(start)`` and ``L_b(start)`` for each batch, when already
        known (:func:`riemann.batch_gradients`; the losses of the same batches): a rule's node at
        ``t = 0`` — the left rule's first, which is the gradient every direction from ``start``
        shares — then costs no pass, and scoring many directions from one ``start`` spends
        ``n − 1`` gradients per batch on each (:attr:`PathIntegral.evaluations` counts only those).

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
    quad.quadrature(rule, n)
    check_mode(mode)
    check_inputs(loss_fn, start, direction)  # before the accumulator is allocated
    batches = batches if isinstance(batches, Sequence) else list(batches)
    if not batches:
        raise ValueError("batches is empty; expected at least one batch for loss_fn(params, batch)")
    state = stepwise.path_state(start, rule=rule, n=n, num_batches=len(batches), endpoints=endpoints, mode=mode)
    res = _run(loss_fn, state, start, direction, batches, progress, start_gradients, start_losses)
    # advance_path has checked them: given, they replaced the node at t = 0 (path_result counts it)
    return res if start_gradients is None else dataclasses.replace(res, evaluations=res.evaluations - 1)


def integrate_rules(
    loss_fn: LossFn,
    start: PyTree,
    direction: PyTree,
    batches: Iterable[Any],
    rules: Sequence[tuple[str, int]],
    *,
    endpoints: bool = False,
    mode: str = "forward",
    progress: bool = False,
) -> dict[tuple[str, int], PathIntegral]:
    """Several rules' quadratures of the same integral, each distinct node evaluated once.

    Rules on one segment share nodes (the left and right Riemann sums share all but one; the
    trapezoid and Simpson rules with the same ``n`` share all), and a node's integrand
    ``⟨∇L_b(start + t·direction), direction⟩`` does not depend on the rule that weights it. So
    the union of the rules' nodes is evaluated once per batch, and each rule's
    :class:`PathIntegral` is formed from its own nodes, exactly as :func:`integrate_path` forms it
    (the same per-node values, weighted in the same order). The cost is one evaluation per
    distinct node and batch (plus a forward pass at an end point no rule has, with ``endpoints``).

    ``mode`` is ``"forward"`` (values) or ``"leaves"`` (values and per-module terms); the
    accumulator of ``"accumulate"`` sums one rule's weights and cannot be shared.

    Returns:
      ``{(rule, n): PathIntegral}`` in the order of ``rules``; each result's ``evaluations`` is its
      own node count (what it would cost alone).

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, x: jnp.sum(jnp.exp(x * p["w"]))
      >>> res = integrate_rules(loss, {"w": jnp.array([0.0])}, {"w": jnp.array([1.0])}, [jnp.array([1.0])],
      ...                       [("left", 4), ("right", 4), ("trapezoid", 5)], endpoints=True)
      >>> [round(r.value, 4) for r in res.values()], round(res["trapezoid", 5].loss_end - 1.0, 4)
      ([1.5124, 1.9420, 1.7272], 1.7183)
    """
    if mode not in ("forward", "leaves"):
        raise ValueError(
            f"mode={mode!r}; integrate_rules shares nodes in 'forward' or 'leaves' mode (an accumulator sums "
            "one rule's weights); call integrate_path once per rule for 'accumulate'"
        )
    rules = [(r, int(n)) for r, n in rules]
    if not rules:
        raise ValueError("rules is empty; expected (rule, n) pairs, e.g. [('left', 5), ('trapezoid', 5)]")
    if len(set(rules)) != len(rules):
        raise ValueError(f"rules repeat: {rules}")
    quads = {rn: quad.quadrature(*rn) for rn in rules}
    every = np.concatenate([q.nodes for q in quads.values()])
    union = np.unique(every)
    union = union[np.concatenate([[True], np.diff(union) > 1e-12])]  # one node for values within 1e-12
    check_mode(mode)
    check_inputs(loss_fn, start, direction)
    batches = batches if isinstance(batches, Sequence) else list(batches)
    if not batches:
        raise ValueError("batches is empty; expected at least one batch for loss_fn(params, batch)")
    shared = PathState(
        rule="nodes",
        n=len(union),
        num_batches=len(batches),
        endpoints=bool(endpoints),
        mode=mode,
        nodes=union,
        weights=np.full(len(union), 1.0 / len(union)),
        acc=None,
    )
    done = stepwise.advance_path(loss_fn, shared, start, direction, batches, progress=progress, check=False).host()
    k, nb = len(union), len(batches)
    losses = np.asarray(done.losses, dtype=object).reshape(nb, k)
    dots = np.empty(nb * k, dtype=object)
    dots[:] = list(done.dots)
    dots = dots.reshape(nb, k)
    at0, at1 = np.flatnonzero(union == 0.0), np.flatnonzero(union == 1.0)
    ends = {
        "loss_start": tuple(losses[:, at0[0]]) if at0.size else done.loss_start,
        "loss_end": tuple(losses[:, at1[0]]) if at1.size else done.loss_end,
    }
    out = {}
    for (rule, n), (nodes, weights) in quads.items():
        idx = np.abs(union[None, :] - nodes[:, None]).argmin(axis=1)
        own = dataclasses.replace(
            shared,
            rule=rule,
            n=n,
            nodes=nodes,
            weights=weights,
            step=nb * len(nodes),
            losses=tuple(losses[:, idx].ravel()),
            dots=tuple(dots[:, idx].ravel()),
            # a rule without a node at an end reads that end's loss from the shared pass
            loss_start=ends["loss_start"] if endpoints else (),
            loss_end=ends["loss_end"] if endpoints else (),
        )
        out[rule, n] = stepwise.path_result(loss_fn, own, start, direction, batches)
    return out


def _run(
    loss_fn: LossFn,
    state: PathState,
    start: PyTree,
    direction: PyTree,
    batches: Sequence[Any],
    progress: bool,
    start_gradients: Sequence[PyTree] | None = None,
    start_losses: Sequence[Any] | None = None,
) -> PathIntegral:
    state = stepwise.advance_path(
        loss_fn,
        state,
        start,
        direction,
        batches,
        progress=progress,
        check=False,
        start_gradients=start_gradients,
        start_losses=start_losses,
    )
    return stepwise.path_result(loss_fn, state, start, direction, batches)


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
    nodes, _ = quad.quadrature(rule, n)
    if max_n < n:
        raise ValueError(f"max_n must be >= n, got max_n={max_n}, n={n}")
    nested = rule in ("left", "right", "midpoint", "trapezoid")
    res = integrate_path(loss_fn, start, direction, batches, rule=rule, n=n, endpoints=True, progress=progress)
    spent = res.evaluations
    l0, l1 = res.loss_start, res.loss_end
    while abs(res.gap) > atol + rtol * abs(l1 - l0) and quad.refine(rule, n) <= max_n:
        n_new = quad.refine(rule, n)
        if nested:
            res, used = _refine_nested(loss_fn, start, direction, batches, res, rule, n_new, progress)
        else:
            fresh = stepwise.path_state(start, rule=rule, n=n_new, num_batches=len(batches))
            res = _run(loss_fn, fresh, start, direction, batches, progress)
            used = res.evaluations
        spent += used
        res = dataclasses.replace(res, loss_start=l0, loss_end=l1)
        n = n_new
    return dataclasses.replace(
        res, evaluations=spent, forward=2 - int(np.any(nodes == 0.0)) - int(np.any(nodes == 1.0))
    )


def _refine_nested(
    loss_fn: LossFn,
    start: PyTree,
    direction: PyTree,
    batches: Sequence[Any],
    old: PathIntegral,
    rule: str,
    n_new: int,
    progress: bool,
) -> tuple[PathIntegral, int]:
    # For these rules the refined weight of every old node is c times its old weight, with
    # c = (old cell width)/(new cell width); the new integral is c·old + Σ_new w_j f(t_j): the old
    # accumulator, rescaled, continues over the new nodes only.
    nodes, weights = quad.quadrature(rule, n_new)
    c = weights[np.argmin(np.abs(nodes - old.nodes[0]))] / old.weights[0]
    is_new = ~np.isclose(nodes[:, None], old.nodes[None, :], rtol=0, atol=1e-12).any(axis=1)
    acc = stepwise._scale_tree(old.grad, trees.scalar(c * old.num_batches))
    state = PathState(
        rule=rule,
        n=n_new,
        num_batches=len(batches),
        endpoints=False,
        mode="accumulate",
        nodes=nodes[is_new],
        weights=weights[is_new],
        acc=acc,
    )
    fresh = _run(loss_fn, state, start, direction, batches, progress)
    order = np.argsort(np.concatenate([old.nodes, nodes[is_new]]), kind="stable")

    def merged(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b])[order]

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
