"""Path integrals one (batch, node) step at a time, with all progress in a plain state object.

:func:`riemann.integrate_path` runs the whole quadrature in one call. For runs long enough to be
interrupted (7-8B models, many batches), :func:`path_state` / :func:`advance_path` /
:func:`path_result` split the same computation into steps: the state holds the float32
accumulator ``Σ w_i ∇L(start + t_i·D)`` (summed over the batches done so far), the position,
and the per-step losses and directional derivatives. The steps are the very same jitted steps
in the same order (batch-major, nodes inner), so a state saved after step ``k`` and advanced
later gives a result bit-identical to an uninterrupted :func:`integrate_path`. Saving and loading
states is file I/O and lives outside the engine (``analysis.resume``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from riemann._src import path as _path
from riemann._src import quadrature as quad
from riemann._src import trees

PyTree = Any


@dataclasses.dataclass
class PathState:
    """Progress of a path integral: ``step`` of ``num_batches · n`` (batch, node) steps done.

    ``acc`` is the accumulator (a pytree like ``start`` in the accumulation dtype); ``losses``
    and ``dots`` are ``[num_batches, n]`` arrays (NaN where not yet computed); ``loss_start`` and
    ``loss_end`` hold the endpoint losses per batch when ``endpoints`` is set. Per-step scalars stay
    on the device until :meth:`sync` (called by :func:`path_result` and before saving), so steps
    are not serialised by a host round trip each.
    """

    rule: str
    n: int
    num_batches: int
    endpoints: bool
    acc: PyTree
    step: int
    losses: np.ndarray
    dots: np.ndarray
    loss_start: np.ndarray
    loss_end: np.ndarray
    pending: list[tuple[str, tuple[int, ...], Any]] = dataclasses.field(default_factory=list)

    def sync(self) -> PathState:
        """Copy the device scalars of the steps done so far into the NumPy arrays."""
        if self.pending:
            values = jax.device_get([v for _, _, v in self.pending])
            for (field, index, _), v in zip(self.pending, values):
                getattr(self, field)[index] = float(v)
            self.pending.clear()
        return self

    @property
    def total(self) -> int:
        return self.num_batches * self.n

    @property
    def done(self) -> bool:
        return self.step >= self.total


def path_state(start: PyTree, *, rule: str = "left", n: int = 5, num_batches: int, endpoints: bool = False) -> PathState:
    """A fresh state for integrating from ``start`` with ``rule``/``n`` over ``num_batches`` batches."""
    quad.quadrature(rule, n)  # validates rule and n
    if num_batches < 1:
        raise ValueError(f"num_batches={num_batches}; expected at least one batch")
    nan = lambda *shape: np.full(shape, np.nan)  # noqa: E731
    return PathState(rule=rule, n=int(n), num_batches=int(num_batches), endpoints=endpoints,
                     acc=_path._zeros_like_accum(start), step=0, losses=nan(num_batches, n), dots=nan(num_batches, n),
                     loss_start=nan(num_batches), loss_end=nan(num_batches))


def advance_path(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    state: PathState,
    start: PyTree,
    direction: PyTree,
    batches: Sequence[Any],
    *,
    steps: int | None = None,
    on_step: Callable[[PathState], None] | None = None,
) -> PathState:
    """Run up to ``steps`` more (batch, node) steps (all remaining by default), updating and
    returning ``state``; ``on_step(state)`` is called after each (e.g. to save every N steps)."""
    if not isinstance(batches, Sequence) or len(batches) != state.num_batches:
        raise ValueError(f"batches must be a sequence of the state's {state.num_batches} batches")
    if state.step == 0:
        _path._check_inputs(loss_fn, start, direction)
    nodes, weights = quad.quadrature(state.rule, state.n)
    has0, has1 = bool(np.any(nodes == 0.0)), bool(np.any(nodes == 1.0))
    stop = state.total if steps is None else min(state.total, state.step + int(steps))
    while state.step < stop:
        b, i = divmod(state.step, state.n)
        batch = batches[b]
        state.acc, loss, dot = _path._grad_step_jit(loss_fn, state.acc, start, direction, trees.scalar(nodes[i]),
                                                     trees.scalar(weights[i]), batch)
        state.pending += [("losses", (b, i), loss), ("dots", (b, i), dot)]
        if i == state.n - 1 and state.endpoints:
            # Same order as integrate_path: the endpoint forwards come after a batch's nodes.
            if not has0:
                state.pending.append(("loss_start", (b,), _path._loss_at_jit(loss_fn, start, direction, trees.scalar(0.0), batch)))
            if not has1:
                state.pending.append(("loss_end", (b,), _path._loss_at_jit(loss_fn, start, direction, trees.scalar(1.0), batch)))
        state.step += 1
        if on_step is not None:
            on_step(state)
    return state


def path_result(loss_fn: Callable[[PyTree, Any], jax.Array], state: PathState, start: PyTree, direction: PyTree,
                batches: Sequence[Any]) -> _path.PathIntegral:
    """The :class:`riemann.PathIntegral` of a finished state (same fields as ``integrate_path``)."""
    if not state.done:
        raise ValueError(f"the path integral is at step {state.step} of {state.total}; advance it to the end first")
    state.sync()
    nodes, weights = quad.quadrature(state.rule, state.n)
    sums = _path._Sums(state.acc, state.losses.tolist(), state.dots.tolist(),
                       state.loss_start.tolist(), state.loss_end.tolist())
    return _path._finish(loss_fn, start, direction, batches, state.rule, state.n, nodes, weights, sums, state.endpoints)
