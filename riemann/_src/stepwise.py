"""The path integral as a sequence of (batch, node) steps over a state that is a value.

:func:`path_state` makes the state, :func:`advance_path` returns a new state some steps further,
:func:`path_result` turns a finished state into a :class:`PathIntegral`. :func:`riemann.integrate_path`
is exactly this loop run to the end, so a state saved after step ``k`` and advanced later (in
another process, after a crash) gives a result bit-identical to one uninterrupted call. Saving and
loading states is file I/O and lives outside the engine (``analysis.study.resume``).

Steps are batch-major with nodes inner: the endpoint losses of a batch (when asked for) are
computed right after its last node. Per-step losses and directional derivatives stay on the device
until the result is formed, so steps are not serialised by a host round trip each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from riemann._src import quadrature as quad
from riemann._src import steps as _steps
from riemann._src import trees
from riemann._src.pacing import pace
from riemann._src.progress import progress_bar

PyTree = Any
LossFn = _steps.LossFn


@dataclasses.dataclass(frozen=True)
class PathIntegral:
    """Result of :func:`riemann.integrate_path`.

    Attributes:
      value: ``Σ_i w_i ⟨∇L(start + t_i·direction), direction⟩``, averaged over batches.
      grad: ``Σ_i w_i ∇L(start + t_i·direction)`` averaged over batches; a pytree like ``start``
        in the accumulation dtype (float32 for 16-bit and 32-bit parameters); ``None`` in forward
        mode.
      nodes, weights: the quadrature rule used (float64, weights sum to 1).
      losses: mean loss over batches at each node.
      integrand: mean ``⟨∇L(start + t_i·direction), direction⟩`` over batches at each node.
      batch_values: the estimate computed on each batch alone (their mean is ``value``).
      modules: per-leaf breakdown ``{leaf name: ⟨grad_leaf, direction_leaf⟩}``; sums to ``value``.
      rule, n: the rule's name and node count.
      loss_start, loss_end: mean loss at ``start`` and ``start + direction`` when asked for
        (``endpoints=True``), else ``None``.
      evaluations: gradient evaluations (forward + backward passes; jvps in forward mode) per
        batch that were spent, and ``forward``: loss-only forward passes per batch.
      error, converged: for rules that estimate their own error (``riemann.integrate_kronrod``),
        the estimate of ``|value − ∫|`` from the integrand alone and whether it met the tolerance;
        ``None`` for fixed rules.
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
    error: float | None = None
    converged: bool | None = None

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
        """``⟨grad, other⟩``: the same weighted gradients applied to another direction."""
        if self.grad is None:
            raise ValueError(
                "this PathIntegral was computed without a gradient accumulator (forward, leaves or adaptive); "
                "use mode='accumulate'"
            )
        trees.check_compatible(self.grad, trees.widen_tree(other), ("grad", "other"))
        return float(trees.tree_vdot(self.grad, other))


@dataclasses.dataclass(frozen=True, eq=False)
class PathState:
    """Progress of a path integral: ``step`` of ``num_batches · len(nodes)`` (batch, node) steps done.

    Attributes:
      rule, n, mode, endpoints: what is being integrated (see :func:`riemann.integrate_path`).
      num_batches: batches the integral averages over.
      nodes, weights: the nodes this state evaluates and their weights.
      acc: ``Σ w_i ∇L`` summed over the steps done, a pytree like ``start`` in the accumulation
        dtype; ``None`` in forward and leaves modes.
      step: steps done.
      losses, dots: the loss and ``⟨∇L, D⟩`` of each step done, in step order (device scalars
        until :meth:`host` copies them; in leaves mode each dot is the vector of per-leaf terms).
      loss_start, loss_end: per batch done, the loss at ``t = 0`` and ``t = 1`` when
        ``endpoints`` asks for them and no node lies there.

    A state is never changed in place. :func:`advance_path` donates ``acc`` into its first step,
    as a training loop's ``state = step(state, batch)`` does: keep the returned state, not the one
    passed in.
    """

    rule: str
    n: int
    num_batches: int
    endpoints: bool
    mode: str
    nodes: np.ndarray
    weights: np.ndarray
    acc: PyTree | None
    step: int = 0
    losses: tuple[Any, ...] = ()
    dots: tuple[Any, ...] = ()
    loss_start: tuple[Any, ...] = ()
    loss_end: tuple[Any, ...] = ()

    @property
    def total(self) -> int:
        return self.num_batches * len(self.nodes)

    @property
    def done(self) -> bool:
        return self.step >= self.total

    def host(self) -> PathState:
        """The same state with its per-step scalars copied to the host (NumPy scalars of the
        steps' own dtype, so that results formed from a saved state equal those formed at once)."""
        fields = ("losses", "dots", "loss_start", "loss_end")
        values = jax.device_get([list(getattr(self, f)) for f in fields])
        return dataclasses.replace(self, **{f: tuple(np.asarray(x)[()] for x in v) for f, v in zip(fields, values)})


def path_state(
    start: PyTree,
    *,
    rule: str = "left",
    n: int = 5,
    num_batches: int,
    endpoints: bool = False,
    mode: str = "accumulate",
) -> PathState:
    """A fresh state for integrating from ``start`` with ``rule``/``n`` over ``num_batches`` batches.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, x: jnp.sum(p["w"] ** 2 * x)
      >>> start, direction, batches = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 0.0])}, [jnp.ones(2)]
      >>> s0 = path_state(start, rule="midpoint", n=2, num_batches=1)
      >>> s1 = advance_path(loss, s0, start, direction, batches, steps=1)
      >>> s0.step, s1.step, s1.done
      (0, 1, False)
      >>> s2 = advance_path(loss, s1, start, direction, batches)
      >>> round(path_result(loss, s2, start, direction, batches).value, 6)
      3.0
    """
    nodes, weights = quad.quadrature(rule, n)
    _steps.check_mode(mode)
    if num_batches < 1:
        raise ValueError(f"num_batches={num_batches}; expected at least one batch")
    acc = trees.zeros_like_wide(start) if mode == "accumulate" else None
    return PathState(
        rule=rule,
        n=int(n),
        num_batches=int(num_batches),
        endpoints=bool(endpoints),
        mode=mode,
        nodes=nodes,
        weights=weights,
        acc=acc,
    )


def advance_path(
    loss_fn: LossFn,
    state: PathState,
    start: PyTree,
    direction: PyTree,
    batches: Sequence[Any],
    *,
    steps: int | None = None,
    on_step: Callable[[PathState], None] | None = None,
    progress: bool = False,
    check: bool = True,
    start_gradients: Sequence[PyTree] | None = None,
    start_losses: Sequence[Any] | None = None,
) -> PathState:
    """The state ``steps`` (batch, node) steps further (all remaining by default).

    ``on_step(state)`` is called with the new state after each step (for example to save it every
    N steps); ``progress`` shows a bar over the steps. The inputs are checked (structure, dtypes,
    finiteness, naming the offending leaf) on a fresh state unless ``check=False`` says the
    caller has done so. In ``accumulate`` mode the given state's accumulator is donated to the
    first step: continue from the returned state. ``start_gradients`` and ``start_losses``: each
    batch's ``∇L(start)`` and ``L(start)`` when already known (:func:`check_start`); a node at
    ``t = 0`` then reads them instead of a pass through the model (in ``forward`` mode with 16-bit
    parameters that node is then the wide gradient's product with the wide direction, not the jvp
    along the direction rounded to the parameters' dtype). :func:`path_result` counts every node in
    ``evaluations``; :func:`riemann.integrate_path` counts the one not spent.
    """
    if not isinstance(batches, Sequence) or len(batches) != state.num_batches:
        raise ValueError(f"batches must be a sequence of the state's {state.num_batches} batches")
    known = check_start(start, state.nodes, state.num_batches, start_gradients, start_losses)
    if state.acc is not None and any(x.is_deleted() for x in jax.tree_util.tree_leaves(state.acc)):
        raise ValueError(
            f"this state (step {state.step}) was advanced already: its accumulator was donated to the next step. "
            "Continue from the state advance_path returned (or one saved on the way, e.g. with on_step)"
        )
    if state.step == 0 and check:
        _steps.check_inputs(loss_fn, start, direction)
    ts = [trees.scalar(t) for t in state.nodes]
    ws = [trees.scalar(w) for w in state.weights]
    per_batch = len(state.nodes)
    want_start = state.endpoints and not bool(np.any(state.nodes == 0.0))
    want_end = state.endpoints and not bool(np.any(state.nodes == 1.0))
    acc, step = state.acc, state.step
    losses, dots, l0, l1 = list(state.losses), list(state.dots), list(state.loss_start), list(state.loss_end)

    def now() -> PathState:
        return dataclasses.replace(
            state, acc=acc, step=step, losses=tuple(losses), dots=tuple(dots), loss_start=tuple(l0), loss_end=tuple(l1)
        )

    stop = state.total if steps is None else min(state.total, state.step + int(steps))
    with progress_bar(
        progress, desc=f"path integral ({state.rule}, n={state.n})", total=state.total, initial=state.step
    ) as bar:
        while step < stop:
            b, i = divmod(step, per_batch)
            batch = batches[b]
            if known and state.nodes[i] == 0.0:
                acc, dot = _steps.known_step(acc, start_gradients[b], direction, ws[i], leaves=state.mode == "leaves")
                loss = trees.widen(start_losses[b])
            elif state.mode == "forward":
                loss, dot = _steps.jvp_step(loss_fn, start, direction, ts[i], batch)
            elif state.mode == "leaves":  # a vector of per-leaf terms; its sum is ⟨∇L, D⟩
                loss, dot = _steps.leaf_step(loss_fn, start, direction, ts[i], batch)
            else:
                acc, loss, dot = _steps.grad_step(loss_fn, acc, start, direction, ts[i], ws[i], batch)
            pace((acc, loss, dot))
            losses.append(loss)
            dots.append(dot)
            if i == per_batch - 1:
                if want_start:
                    l0.append(pace(_steps.loss_at(loss_fn, start, direction, trees.scalar(0.0), batch)))
                if want_end:
                    l1.append(pace(_steps.loss_at(loss_fn, start, direction, trees.scalar(1.0), batch)))
            step += 1
            bar.update(1)
            if on_step is not None:
                on_step(now())
    return now()


def check_start(
    start: PyTree,
    nodes: np.ndarray,
    num_batches: int,
    gradients: Sequence[PyTree] | None,
    losses: Sequence[Any] | None,
) -> bool:
    """Whether known per-batch gradients and losses at ``start`` (``∇L_b(start)``, ``L_b(start)``,
    e.g. from :func:`riemann.batch_gradients` and the losses of the same batches) replace the node
    at ``t = 0``; refuses them given one without the other, for a different number of batches, for
    a rule with no node at ``t = 0``, or shaped unlike ``start`` (naming the leaf)."""
    if gradients is None and losses is None:
        return False
    if gradients is None or losses is None:
        raise ValueError("start_gradients and start_losses go together: give both (∇L and L at start per batch)")
    if not isinstance(gradients, Sequence) or not hasattr(losses, "__len__"):
        raise ValueError("start_gradients and start_losses must be sequences (losses: or an array), one per batch")
    if len(gradients) != num_batches or len(losses) != num_batches:
        raise ValueError(
            f"start_gradients has {len(gradients)} and start_losses {len(losses)} entries for {num_batches} "
            "batches; expected one per batch"
        )
    if not np.any(nodes == 0.0):
        raise ValueError("start_gradients given, but the rule has no node at t = 0 to use them (left, trapezoid do)")
    for b, g in enumerate(gradients):
        trees.check_compatible(start, g, ("start", f"start_gradients[{b}]"), wide=True)
    return True


def path_result(
    loss_fn: LossFn, state: PathState, start: PyTree, direction: PyTree, batches: Sequence[Any]
) -> PathIntegral:
    """The :class:`PathIntegral` of a finished state (the fields of :func:`riemann.integrate_path`)."""
    if not state.done:
        raise ValueError(f"the path integral is at step {state.step} of {state.total}; advance it to the end first")
    nodes, weights = state.nodes, state.weights
    host = state.host()
    losses = np.asarray(host.losses, np.float64).reshape(-1, len(nodes))
    leaf = None
    if state.mode == "leaves":  # batch, node, leaf
        leaf = np.asarray(host.dots, np.float64).reshape(losses.shape[0], len(nodes), -1)
        dots = leaf.sum(-1)
    else:
        dots = np.asarray(host.dots, np.float64).reshape(-1, len(nodes))
    _diagnose_nonfinite(loss_fn, start, direction, nodes, losses, dots, batches)
    batch_values = dots @ weights
    if state.mode == "forward":  # no gradient: the value comes from the directional derivatives
        grad, modules, value = None, {}, float(batch_values.mean())
    elif leaf is not None:  # every rule's per-module terms from the nodes × leaves scalars
        per_leaf = np.einsum("n,bnl->l", weights, leaf) / leaf.shape[0]
        grad, modules = None, dict(zip(trees.leaf_names(start), per_leaf.tolist()))
        value = float(batch_values.mean())
    else:
        grad = _scale_tree(state.acc, trees.scalar(1.0 / state.num_batches))
        per_leaf = [float(v) for v in jax.device_get(_leaf_vdots(grad, direction))]
        modules = dict(zip(trees.leaf_names(start), per_leaf))
        value = float(np.sum(per_leaf)) if per_leaf else 0.0
    has0, has1 = bool(np.any(nodes == 0.0)), bool(np.any(nodes == 1.0))
    loss_start = loss_end = None
    if state.endpoints:
        loss_start = float(losses[:, nodes == 0.0][:, 0].mean()) if has0 else float(np.mean(host.loss_start))
        loss_end = float(losses[:, nodes == 1.0][:, 0].mean()) if has1 else float(np.mean(host.loss_end))
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
        rule=state.rule,
        n=state.n,
        loss_start=loss_start,
        loss_end=loss_end,
        evaluations=len(nodes),
        forward=int(state.endpoints and not has0) + int(state.endpoints and not has1),
    )


@jax.jit
def _scale_tree(tree: PyTree, c: jax.Array) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x * c.astype(x.dtype), tree)


@jax.jit
def _leaf_vdots(a: PyTree, b: PyTree) -> list[jax.Array]:
    return trees.leaf_vdots(a, b)


def _diagnose_nonfinite(
    loss_fn: LossFn,
    start: PyTree,
    direction: PyTree,
    nodes: np.ndarray,
    losses: np.ndarray,
    dots: np.ndarray,
    batches: Sequence[Any],
) -> None:
    bad = ~(np.isfinite(losses) & np.isfinite(dots))
    if not bad.any():
        return
    b, i = map(int, np.argwhere(bad)[0])
    t = float(nodes[i])
    what = "loss" if not np.isfinite(losses[b, i]) else "gradient"
    where = ""
    point = trees.move_along(start, direction, trees.scalar(t))
    bad_params = trees.nonfinite_leaves(point)
    if bad_params:
        where = f"; parameters non-finite in leaves {bad_params[:5]}"
    else:
        bad_grad = trees.nonfinite_leaves(jax.grad(loss_fn)(point, batches[b]))
        if bad_grad:
            where = f"; gradient non-finite in leaves {bad_grad[:5]}"
    raise FloatingPointError(f"non-finite {what} at node t={t:.6g} (batch {b}){where}")
