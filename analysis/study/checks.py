"""Facts about a pair that do not depend on any edit: endpoint losses and accuracies, how exact
each quadrature rule is on the pre→post segment (the completeness check, ``docs/theory.md``, §3),
the per-module attribution of the post-training gain, and the loss along the pre→post line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

import riemann
from analysis.pairs.pair import Pair

PyTree = Any
COMPLETENESS_RULES = (
    ("left", 5),
    ("right", 5),
    ("midpoint", 5),
    ("trapezoid", 5),
    ("simpson", 5),
    ("gauss-legendre", 8),
)
PROFILE_T = np.round(np.linspace(-1.0, 2.0, 31), 6).tolist()


def line_profile(pair: Pair, delta: PyTree, ts: Sequence[float]) -> list[float]:
    """Mean loss along ``W_pre + t·ΔW`` (interpolation for t in [0, 1], extrapolation outside)."""

    # One forward per (t, batch), the point formed inside jit; no L(pre) re-evaluated per t. The
    # parameters are arguments, not closed over: arrays that span several processes cannot be.
    @jax.jit
    def loss_at(pre: PyTree, d: PyTree, t: jax.Array, b: Any) -> jax.Array:
        return pair.loss_fn(jax.tree.map(lambda p, x: p + t.astype(p.dtype) * x, pre, d), b)

    losses = [[riemann.pace(loss_at(pair.pre, delta, np.float32(t), b)) for b in pair.batches] for t in ts]
    return [float(np.mean(per_batch)) for per_batch in losses]


def completeness(pair: Pair, delta: PyTree, *, progress: bool = False) -> tuple[dict[str, Any], riemann.PathIntegral]:
    """Every rule of :data:`COMPLETENESS_RULES` on ``W_pre → W_post``: its value, its gap to the
    exact change and the relative gap; also the Gauss–Legendre integral itself, whose per-module
    terms attribute the gain."""
    # The other rules need values alone, which forward-mode products give without a gradient
    # accumulator, and they share nodes: their 13 distinct nodes, 0 and 1 among them, are evaluated
    # once (riemann.integrate_rules), where each rule run alone would spend 25 and 4 end-point
    # forwards; Gauss–Legendre reads the end points' losses from them too.
    shared = [(rule, n) for rule, n in COMPLETENESS_RULES if rule != "gauss-legendre"]
    with riemann.progress_bar(
        progress, desc=f"{pair.name} completeness", unit="rule", total=len(COMPLETENESS_RULES), leave=False
    ) as bar:
        values = riemann.integrate_rules(pair.loss_fn, pair.pre, delta, pair.batches, shared, endpoints=True)
        bar.update(len(shared))
        (n_gl,) = [n for rule, n in COMPLETENESS_RULES if rule == "gauss-legendre"]
        # Only Gauss–Legendre's per-module terms are kept.
        reference = riemann.integrate_path(pair.loss_fn, pair.pre, delta, pair.batches, rule="gauss-legendre", n=n_gl)
        ends = values[shared[0]]
        reference = dataclasses.replace(reference, loss_start=ends.loss_start, loss_end=ends.loss_end)
        bar.update(1)
    values["gauss-legendre", n_gl] = reference
    table = {}
    for rule, n in COMPLETENESS_RULES:
        r = values[rule, n]
        table[f"{rule}:{n}"] = {"value": r.value, "gap": r.gap, "relative_gap": r.relative_gap}
    return table, reference


def pair_checks(
    pair: Pair,
    delta: PyTree,
    *,
    log: Callable[[str], None] = print,
    progress: bool = False,
    accuracy_post: float | None = None,
) -> dict[str, Any]:
    """Per-pair facts: endpoint losses and accuracies, completeness of every rule on pre→post,
    the per-module attribution of the post-training gain, and the line profile. ``accuracy_post``,
    when the caller has it on the same batches, is not computed again (greedy decoding is not cheap)."""
    log(f"[{pair.name}] completeness of the pre→post change with {len(COMPLETENESS_RULES)} rules, line profile")
    table, gl = completeness(pair, delta, progress=progress)
    return {
        "name": pair.name,
        "description": pair.description,
        "loss_pre": gl.loss_start,
        "loss_post": gl.loss_end,
        "gain": gl.loss_start - gl.loss_end,
        "accuracy_name": pair.info.get("accuracy_name", "accuracy"),
        "accuracy_pre": pair.accuracy_fn(pair.pre, pair.batches) if pair.accuracy_fn else None,
        "accuracy_post": accuracy_post
        if accuracy_post is not None
        else (pair.accuracy_fn(pair.post, pair.batches) if pair.accuracy_fn else None),
        "num_batches": len(pair.batches),
        "num_params": int(sum(np.size(x) for x in jax.tree.leaves(pair.post))),
        "completeness": table,
        "gain_modules": gl.modules,
        "line_profile": {"t": PROFILE_T, "loss": line_profile(pair, delta, PROFILE_T)},
        "info": pair.info,
    }
