"""Shared local curvature at ``W_post``: one gradient and a Hutchinson estimate of the Hessian
diagonal, computed once, then used to predict the loss change of any number of edits with no
further passes.

For an edit with change ``ΔW~`` the local quadratic surrogate (the follow-up paper, "On the
Editability of Delta Parameters in Post-Trained Models", 2026) is

    ΔL ≈ <g, ΔW~> + ½ <ΔW~, H ΔW~>,      g = ∇L(W_post),  H = ∇²L(W_post).

The exact quadratic term needs one Hessian-vector product per edit (``riemann.estimate(...,
method="second-order")``). Keeping only the diagonal of ``H``,

    ½ <ΔW~, H ΔW~>  ≈  ½ Σ_i H_ii ΔW~_i²,

turns it into a weighted sum of squares that any edit can be scored against. The diagonal is
estimated by Hutchinson's method (Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a
matrix", Appl. Numer. Math. 2007): for Rademacher ``z`` (entries ±1), ``E[z ⊙ Hz] = diag(H)``.
Each probe is one forward-over-reverse Hessian-vector product, which yields the gradient in the
same pass. For multiplicative edits with ``E[m] = 1`` independent of the rest (DARE and its
extension), the expected cross terms ``H_ij ΔW~_i ΔW~_j`` (i ≠ j) vanish, so the diagonal carries
the whole expected quadratic term (docs/theory.md, §5).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann._src.estimate import Estimate
from riemann._src.pacing import pace
from riemann._src.progress import progress_bar

PyTree = Any


@dataclasses.dataclass(frozen=True)
class SharedCurvature:
    """Gradient and Hessian-diagonal estimate at one point, averaged over batches.

    Attributes:
      grad: ``g = mean_b ∇L_b(params)`` (accumulation dtype, a pytree like ``params``).
      diagonal: Hutchinson estimate of ``diag(mean_b ∇²L_b(params))``, or ``None`` when no
        probes were spent.
      loss: mean loss at ``params``.
      batch_losses: the loss at ``params`` on each batch (for ``estimate(..., loss_post=...)``).
      probes: Rademacher probes per batch (each batch gets its own probes).
      num_batches: number of batches averaged.
      cost: passes per batch spent once: ``gradient`` (only when ``probes == 0``) and ``hvp``.
    """

    grad: PyTree
    diagonal: PyTree | None
    loss: float
    batch_losses: np.ndarray
    probes: int
    num_batches: int
    cost: dict[str, int]

    def first_order(self, change: PyTree) -> Estimate:
        """``<g, ΔW~>``: the first-order term, with no new passes."""
        firsts = _first_jit(self.grad, change)
        per_leaf = np.asarray(jax.device_get(firsts), np.float64)
        return self._estimate("first-order", per_leaf, {"first": float(per_leaf.sum())})

    def estimate(self, change: PyTree) -> Estimate:
        """``<g, ΔW~> + ½ Σ_i diag(H)_i ΔW~_i²``: the shared-curvature estimate (no new passes)."""
        if self.diagonal is None:
            raise ValueError(
                "this SharedCurvature was computed with probes=0; the curvature estimate needs probes >= 1"
            )
        firsts, quads = _quad_jit(self.grad, self.diagonal, change)
        first = np.asarray(jax.device_get(firsts), np.float64)
        quad = np.asarray(jax.device_get(quads), np.float64)
        return self._estimate(
            "shared-curvature",
            first + 0.5 * quad,
            {"first": float(first.sum()), "second": float(0.5 * quad.sum()), "curvature": float(quad.sum())},
        )

    def _estimate(self, method: str, per_leaf: np.ndarray, terms: dict[str, float]) -> Estimate:
        value = float(per_leaf.sum())
        return Estimate(
            method=method,
            value=value,
            # Only the batch mean of g and diag(H) is kept (per-batch gradients would cost a model
            # copy per batch), so there is no spread across batches: stderr is NaN.
            batch_values=np.array([value]),
            modules=dict(zip(trees.leaf_names(self.grad), per_leaf.tolist())),
            terms={**terms, "loss_post": self.loss},
            cost={"gradient": 0, "hvp": 0, "forward": 0},
            settings={"shared": True, "probes": self.probes, "shared_cost_per_batch": dict(self.cost)},
        )


@jax.jit
def _first_jit(grad: PyTree, change: PyTree) -> list[jax.Array]:
    return trees.leaf_vdots(grad, change)


@jax.jit
def _quad_jit(grad: PyTree, diagonal: PyTree, change: PyTree) -> tuple[list[jax.Array], list[jax.Array]]:
    sq = jax.tree_util.tree_map(lambda c: jnp.square(trees.widen(c)), change)
    return trees.leaf_vdots(grad, change), trees.leaf_vdots(diagonal, sq)


def rademacher(params: PyTree, key: jax.Array) -> PyTree:
    """A Rademacher (±1) pytree like ``params``; each leaf's draw depends on ``key`` and the
    leaf's name only (not on traversal order or sharding)."""
    names = trees.leaf_names(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = [
        jax.random.rademacher(
            jax.random.fold_in(key, zlib.crc32(n.encode()) & 0x7FFFFFFF), jnp.shape(x), dtype=jnp.result_type(x)
        )
        for n, x in zip(names, leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _probe_step(
    loss_fn: Any, acc_g: PyTree, acc_d: PyTree, params: PyTree, batch: Any, key: jax.Array, wg: jax.Array, wd: jax.Array
) -> tuple[PyTree, PyTree, jax.Array]:
    z = rademacher(params, key)
    (loss, g), (_, hz) = jax.jvp(lambda p: jax.value_and_grad(loss_fn)(p, batch), (params,), (z,))
    acc_g = jax.tree_util.tree_map(lambda a, x: a + wg.astype(a.dtype) * x.astype(a.dtype), acc_g, g)
    acc_d = jax.tree_util.tree_map(
        lambda a, zi, h: a + wd.astype(a.dtype) * (zi.astype(a.dtype) * h.astype(a.dtype)), acc_d, z, hz
    )
    return acc_g, acc_d, trees.widen(loss)


_probe_jit = jax.jit(_probe_step, static_argnums=0, donate_argnums=(1, 2))


def _grad_step(loss_fn: Any, acc_g: PyTree, params: PyTree, batch: Any, wg: jax.Array) -> tuple[PyTree, jax.Array]:
    loss, g = jax.value_and_grad(loss_fn)(params, batch)
    acc_g = jax.tree_util.tree_map(lambda a, x: a + wg.astype(a.dtype) * x.astype(a.dtype), acc_g, g)
    return acc_g, trees.widen(loss)


_grad_jit = jax.jit(_grad_step, static_argnums=0, donate_argnums=1)


def shared_curvature(
    loss_fn: Any,
    params: PyTree,
    batches: Iterable[Any],
    *,
    probes: int = 8,
    key: jax.Array | None = None,
    progress: bool = False,
) -> SharedCurvature:
    """Gradient and Hutchinson Hessian diagonal of the batch-mean loss at ``params``, once.

    ``diag(H) ≈ (1/(B·P)) Σ_b Σ_p z_bp ⊙ H_b z_bp`` with an independent Rademacher ``z_bp`` per
    batch ``b`` and probe ``p`` (Bekas et al., 2007), so ``P·B`` Hessian-vector products are spent
    in all; the gradient comes with the first probe of each batch. With ``probes=0`` only the
    gradient is computed (one gradient pass per batch).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the point (``W_post``).
      batches: evaluation batches, each counting equally.
      probes: Rademacher probes per batch (the curvature budget).
      key: PRNG key for the probes; required when ``probes > 0``.
      progress: show a progress bar.

    Returns:
      A :class:`SharedCurvature`; ``.first_order(change)`` and ``.estimate(change)`` score edits.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> loss = lambda p, x: 0.5 * jnp.sum(x * p["w"] ** 2)      # diagonal Hessian: diag(x)
      >>> sc = shared_curvature(loss, {"w": jnp.array([1.0, 1.0])}, [jnp.array([1.0, 2.0])],
      ...                       probes=1, key=jax.random.key(0))
      >>> [float(v) for v in sc.diagonal["w"]]
      [1.0, 2.0]
      >>> round(sc.estimate({"w": jnp.array([-0.5, 1.0])}).value, 6)   # diagonal H: equals second order
      2.625
    """
    if not isinstance(probes, (int, np.integer)) or isinstance(probes, bool) or probes < 0:
        raise ValueError(f"probes={probes!r}; expected a non-negative integer (Hessian-vector products per batch)")
    if probes > 0 and key is None:
        raise ValueError(
            "key is required when probes > 0: the Rademacher probes are random (pass jax.random.key(seed))"
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch) -> scalar, got {loss_fn!r}")
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params has no array leaves; expected a pytree of floating arrays")
    trees.check_finite(params, "params")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; expected at least one batch for loss_fn(params, batch) (shared curvature)")
    nb = len(batches)
    acc_g = trees.zeros_like_wide(params)
    acc_d = trees.zeros_like_wide(params) if probes else None
    losses = []
    with progress_bar(progress, desc="shared curvature", unit="pass", total=nb * max(probes, 1), leave=False) as bar:
        for b, batch in enumerate(batches):
            if probes == 0:
                acc_g, loss = pace(_grad_jit(loss_fn, acc_g, params, batch, trees.scalar(1.0 / nb)))
                losses.append(loss)
                bar.update(1)
                continue
            for p in range(probes):
                k = jax.random.fold_in(jax.random.fold_in(key, p), b)
                wg = trees.scalar(1.0 / nb if p == 0 else 0.0)
                acc_g, acc_d, loss = pace(
                    _probe_jit(loss_fn, acc_g, acc_d, params, batch, k, wg, trees.scalar(1.0 / (nb * probes)))
                )
                if p == 0:
                    losses.append(loss)
                bar.update(1)
    loss_np = np.asarray(jax.device_get(losses), np.float64)
    if not np.all(np.isfinite(loss_np)):
        raise FloatingPointError(f"non-finite loss at params (batch {int(np.argwhere(~np.isfinite(loss_np))[0, 0])})")
    trees.check_finite(acc_g, "the gradient")
    if acc_d is not None:
        trees.check_finite(acc_d, "the Hessian-diagonal estimate")
    return SharedCurvature(
        grad=acc_g,
        diagonal=acc_d,
        loss=float(loss_np.mean()),
        batch_losses=loss_np,
        probes=int(probes),
        num_batches=nb,
        cost={"gradient": 0 if probes else 1, "hvp": int(probes)},
    )
