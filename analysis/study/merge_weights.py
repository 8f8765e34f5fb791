"""Task-arithmetic weights recommended from calibration statistics, measured against a grid.

Pairs that share one base (``pre``) are merged as ``W(λ) = W_base + Σ_j λ_j τ_j``,
``τ_j = post_j − W_base``. For each pair, :func:`riemann.merge_weights.task_statistics` computes
its quadratic in ``λ`` at its own fine-tune on its calibration batches (one gradient and ``n``
Hessian-vector products per batch); :func:`riemann.merge_weights.recommend_weights` picks ``λ``
(one shared weight, and one weight per task vector) minimising the predicted worst-task loss
change ``max_i ΔL_i(λ)``, ``ΔL_i(λ) = L_i(W(λ)) − L_i(post_i)``. The recommendation is then
measured on the test batches next to every point of a grid (a shared ``λ`` and, optionally, a
coarse per-task grid), and the report says how far its measured worst-task ``ΔL`` is from the
best grid point's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analysis.pairs.pair import Pair
from analysis.pairs.split import DEFAULT_CALIBRATION, split_pair
from riemann import merge_weights as mw
from riemann import tree_utils

PyTree = Any
SHARED_GRID = tuple(round(0.1 * i, 1) for i in range(16))  # 0, 0.1, …, 1.5
VECTOR_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def _same_base(pairs: Sequence[Pair]) -> None:
    ref = pairs[0]
    for p in pairs[1:]:
        tree_utils.check_compatible(ref.pre, p.pre, (f"{ref.name}.pre", f"{p.name}.pre"))
        for name, a, b in zip(tree_utils.leaf_names(ref.pre), jax.tree.leaves(ref.pre), jax.tree.leaves(p.pre)):
            if not np.array_equal(np.asarray(a), np.asarray(b)):
                raise ValueError(
                    f"pairs {ref.name!r} and {p.name!r} do not share a base: their pre-trained leaf {name!r} "
                    "differs; task arithmetic merges fine-tunes of one base"
                )


@jax.jit
def _merge(base: PyTree, taus: tuple[PyTree, ...], lam: jax.Array) -> PyTree:
    def one(b: jax.Array, *ts: jax.Array) -> jax.Array:
        acc = tree_utils.widen(b)
        for j, t in enumerate(ts):
            acc = acc + lam[j].astype(acc.dtype) * tree_utils.widen(t)
        return acc.astype(b.dtype)

    return jax.tree.map(one, base, *taus)


@jax.jit
def _task_vector(post: PyTree, pre: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: tree_utils.widen(a) - tree_utils.widen(b), post, pre)


class _Measure:
    """Measured ``ΔL_i(λ)`` of every task on its test batches (paired per batch against ``post_i``)."""

    def __init__(self, pairs: Sequence[Pair], base: PyTree, taus: tuple[PyTree, ...]) -> None:
        self.pairs, self.base, self.taus = pairs, base, taus
        self.losses = [jax.jit(p.loss_fn) for p in pairs]
        self.post = [self._losses(i, p.post) for i, p in enumerate(pairs)]
        self.count = 0

    def _losses(self, i: int, params: PyTree) -> np.ndarray:
        out = [self.losses[i](params, b) for b in self.pairs[i].batches]
        return np.asarray(jax.device_get(out), np.float64)

    def __call__(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        merged = _merge(self.base, self.taus, jnp.asarray(lam, jnp.float32))
        means, ses = [], []
        for i in range(len(self.pairs)):
            d = self._losses(i, merged) - self.post[i]
            if not np.all(np.isfinite(d)):
                raise FloatingPointError(f"non-finite loss of task {self.pairs[i].name!r} at λ = {lam.tolist()}")
            means.append(float(d.mean()))
            ses.append(float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"))
        self.count += 1
        return np.asarray(means), np.asarray(ses)


def _gap(value: float, best: float) -> float:
    """``(value − best)/|best|`` in %: how much worse the recommendation measures than the best grid point."""
    return float(100.0 * (value - best) / abs(best)) if best != 0 else float("nan")


def choose_weights(
    pairs: Sequence[Pair],
    *,
    objective: str = "worst",
    bounds: tuple[float, float] = (0.0, 1.5),
    calibration: int = DEFAULT_CALIBRATION,
    seed: int = 0,
    shared_grid: Sequence[float] = SHARED_GRID,
    vector_grid: Sequence[float] | None = VECTOR_GRID,
    progress: bool = False,
) -> dict[str, Any]:
    """Recommend task-arithmetic weights for ``pairs`` (fine-tunes of one base) from their
    calibration batches and measure the recommendation against a grid on their test batches.

    Args:
      pairs: the fine-tunes, each with its own task loss and batches; their ``pre`` must be identical.
        Unsplit pairs are split (:func:`analysis.pairs.split.split_pair` with ``calibration`` and ``seed``).
      objective: ``"worst"`` (min-max over tasks) or ``"mean"``, for the recommendation and for
        ranking the grid alike.
      bounds: the box of ``λ`` (the quadratics' trust region), for the recommendation.
      shared_grid: shared weights ``λ_j = s`` measured.
      vector_grid: per-axis values of a full per-task grid measured (``len(vector_grid) ** n``
        points), or ``None`` to skip it.
      progress: progress bars for the statistics.

    Returns:
      A JSON-ready dict: the statistics per task, the shared and per-task recommendations with their
      predicted and measured ``ΔL_i``, each grid with its measured objective and best point, the gap
      in % of the recommendation's measured objective above the best grid point's (negative: better
      than every grid point), two reference merges (average ``λ = 1/n``, sum ``λ = 1``) and wall times.
    """
    if len(pairs) < 2:
        raise ValueError(f"{len(pairs)} pair(s) given; a merge needs at least two fine-tunes of one base")
    if objective not in mw.OBJECTIVES:
        raise ValueError(f"objective={objective!r}; accepted: {', '.join(mw.OBJECTIVES)}")
    t_start = time.perf_counter()
    _same_base(pairs)
    pairs = [split_pair(p, calibration=calibration, seed=seed) for p in pairs]
    n = len(pairs)
    base = pairs[0].pre
    taus = tuple(_task_vector(p.post, base) for p in pairs)

    t0 = time.perf_counter()
    stats = [
        mw.task_statistics(p.loss_fn, p.post, taus, p.calibration, own=i, progress=progress)
        for i, p in enumerate(pairs)
    ]
    t_stats = time.perf_counter() - t0

    t0 = time.perf_counter()
    recs = {
        "shared": mw.recommend_weights(stats, objective=objective, bounds=bounds, shared=True),
        "vector": mw.recommend_weights(stats, objective=objective, bounds=bounds),
    }
    t_rec = time.perf_counter() - t0

    def obj(values: np.ndarray) -> float:
        return float(values.max() if objective == "worst" else values.mean())

    t0 = time.perf_counter()
    measure = _Measure(pairs, base, taus)
    grids: dict[str, list[np.ndarray]] = {"shared": [np.full(n, float(s)) for s in shared_grid]}
    if vector_grid is not None:
        axes = [np.asarray(list(vector_grid), np.float64)] * n
        grids["vector"] = list(np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, n))
    grid_out: dict[str, Any] = {}
    best_overall = (np.inf, None)
    for kind, points in grids.items():
        measured = [measure(lam)[0] for lam in points]
        objs = np.asarray([obj(m) for m in measured])
        pred = mw.predict_changes(stats, np.stack(points))[0]
        b = int(np.argmin(objs))
        grid_out[kind] = {
            "points": len(points),
            "lam": [p.tolist() for p in points] if kind == "shared" else None,
            "axis": list(map(float, vector_grid)) if kind == "vector" else None,
            "measured_objective": objs.tolist() if kind == "shared" else None,
            "predicted_objective": [obj(v) for v in pred] if kind == "shared" else None,
            "best_lam": points[b].tolist(),
            "best_measured": measured[b].tolist(),
            "best_measured_objective": float(objs[b]),
            "predicted_at_best": pred[b].tolist(),
        }
        if objs[b] < best_overall[0]:
            best_overall = (float(objs[b]), points[b].tolist())

    def measured_at(lam: np.ndarray) -> dict[str, Any]:
        m, se = measure(lam)
        pred = mw.predict_changes(stats, lam)[0]
        return {
            "lam": lam.tolist(),
            "measured": m.tolist(),
            "measured_stderr": se.tolist(),
            "measured_objective": obj(m),
            "predicted": pred.tolist(),
            "predicted_objective": obj(pred),
        }

    out_recs = {}
    for kind, rec in recs.items():
        at = measured_at(rec.lam)
        grid_best = grid_out[kind]["best_measured_objective"] if kind in grid_out else best_overall[0]
        out_recs[kind] = {
            "recommendation": rec.record(),
            **{k: v for k, v in at.items() if k != "lam"},
            "best_grid_objective": grid_best,
            "gap_percent": _gap(at["measured_objective"], grid_best),
            "gap_percent_vs_best_of_all_grids": _gap(at["measured_objective"], best_overall[0]),
        }
    reference = {
        "average (λ = 1/n)": measured_at(np.full(n, 1.0 / n)),
        "sum (λ = 1)": measured_at(np.ones(n)),
    }
    t_measure = time.perf_counter() - t0
    return {
        "pairs": [p.name for p in pairs],
        "objective": objective,
        "bounds": [float(bounds[0]), float(bounds[1])],
        "split": {p.name: p.info.get("split") for p in pairs},
        "calibration_batches": [len(p.calibration) for p in pairs],
        "test_batches": [len(p.batches) for p in pairs],
        "statistics": [{"pair": p.name, **s.record()} for p, s in zip(pairs, stats)],
        "cost_per_calibration_batch": {"gradient": 1, "hvp": n},
        "recommended": out_recs,
        "grid": grid_out,
        "best_of_all_grids": {"lam": best_overall[1], "measured_objective": best_overall[0]},
        "reference": reference,
        "measured_points": measure.count,
        "wall_s": {
            "statistics": t_stats,
            "recommend": t_rec,
            "measure": t_measure,
            "total": time.perf_counter() - t_start,
        },
    }
