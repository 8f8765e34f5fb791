"""Analyse a suite of delta edits on one pre/post pair: every estimator of every edit's loss
change, the measured change, classes, agreement statistics, and the pre→post checks.

Estimators (each result records which one it is; see PAPER.md, "The argument and the computed
term are different things"):

- ``riemann``: the paper's approximation term, left rule, C = 5, on ``W_post → W_edit``.
- ``first-order``: ``<∇L(W_post), ΔW~>``, the quantity the zero-expectation argument is about.
- ``second-order``: first order + ``½<ΔW~, H ΔW~>`` (one Hessian-vector product).
- ``gauss-legendre``: Gauss–Legendre quadrature with 8 nodes on the same segment (near exact).
- ``measured``: ``L(W_edit) − L(W_post)``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

import riemann
from analysis import stats
from analysis.pairs import Pair
from riemann import edits

PyTree = Any

ESTIMATORS: dict[str, dict[str, Any]] = {
    "riemann": {"method": "riemann", "rule": "left", "n": 5},
    "first-order": {"method": "first-order"},
    "second-order": {"method": "second-order"},
    "gauss-legendre": {"method": "riemann", "rule": "gauss-legendre", "n": 8},
}
COMPLETENESS_RULES = [("left", 5), ("right", 5), ("midpoint", 5), ("trapezoid", 5), ("simpson", 5), ("gauss-legendre", 8)]


def default_suite() -> list[str]:
    """The default edit suite: all three classes of the paper with parameter sweeps."""
    suite = [f"dare:p={p:g},k={k:g}" for k in (0.0, 0.5, -0.5, -1.0) for p in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)]
    suite += ["dare:p=0.5,rescale=false", "dare:p=0.9,rescale=false", "della:density=0.3,epsilon=0.1"]
    suite += ["biased_sign:k=0.5", "biased_sign:k=1.5", "biased_product:k=0.5", "biased_product:k=1.5"]
    suite += [f"magnitude:keep={q:g}" for q in (0.1, 0.3, 0.5)]
    suite += [f"bitdelta:magnitude_bits={b}" for b in (0, 1, 2, 4)]
    suite += [f"bitdelta:multiple={m:g}" for m in (0.5, 2.0)]
    suite += ["bitdelta:magnitudes=normal", "bitdelta:magnitudes=uniform"]
    suite += [f"lowrank:fraction={f:g}" for f in (0.05, 0.1, 0.25, 0.5)]
    suite += [f"expo:alpha={a:g}" for a in (-0.5, -0.2, 0.2, 0.5, 1.0)]
    return suite


def _edit_key(seed: int, spec: str) -> jax.Array:
    # Each edit's key depends on the seed and its own spec only, so adding or reordering edits in
    # a suite never changes another edit's result.
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(spec.encode()) & 0x7FFFFFFF)


@jax.jit
def _sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: x - y, a, b)


def line_profile(pair: Pair, delta: PyTree, ts: Sequence[float]) -> list[float]:
    """Mean loss along ``W_pre + t·ΔW`` (interpolation for t in [0, 1], extrapolation outside)."""
    # One forward per (t, batch), the point formed inside jit; no L(pre) re-evaluated per t.
    loss_at = jax.jit(lambda t, b: pair.loss_fn(jax.tree.map(lambda p, d: p + t.astype(p.dtype) * d, pair.pre, delta), b))
    return [float(np.mean([loss_at(np.float32(t), b) for b in pair.batches])) for t in ts]


def analyse(
    pair: Pair,
    specs: Sequence[str] | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the suite on ``pair`` and return the results record (see ``report.md``'s sections)."""
    specs = list(default_suite() if specs is None else specs)
    parsed = [edits.parse(s) for s in specs]  # every spec checked before any heavy work
    t0 = time.perf_counter()
    delta = _sub(pair.post, pair.pre)
    loss_fn, post, batches = pair.loss_fn, pair.post, pair.batches

    log(f"[pair] {pair.name}: completeness of the pre→post gain with {len(COMPLETENESS_RULES)} rules")
    completeness = {}
    for rule, n in COMPLETENESS_RULES:
        res = riemann.integrate_path(loss_fn, pair.pre, delta, batches, rule=rule, n=n, endpoints=True)
        completeness[f"{rule}:{n}"] = {"value": res.value, "gap": res.gap, "relative_gap": res.relative_gap}
        if rule == "gauss-legendre":
            gain_modules = res.modules
            loss_pre, loss_post = res.loss_start, res.loss_end
    gain = loss_pre - loss_post
    ts = np.round(np.linspace(-1.0, 2.0, 31), 6).tolist()
    profile = line_profile(pair, delta, ts)
    grad_post = riemann.integrate_path(loss_fn, post, delta, batches, rule="left", n=1).grad

    records = []
    iterator: Any = parsed
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(parsed, desc="edits", unit="edit")
    for edit in iterator:
        key = _edit_key(seed, edit.spec)
        edited = edit(delta, key=key if edit.random else None, grad=grad_post if edit.needs_grad else None)
        change = _sub(edited, delta)
        estimates = {}
        for name, kw in ESTIMATORS.items():
            est = riemann.estimate(loss_fn, post, change, batches, **kw)
            estimates[name] = est
        measured = riemann.estimate(loss_fn, post, change, batches, method="measured")
        tol = riemann.choose_tolerance(gain=gain, stderr=measured.stderr)
        acc = pair.accuracy_fn(jax.tree.map(lambda a, b: a + b, pair.pre, edited), batches) if pair.accuracy_fn else None
        records.append({
            "name": edit.name,
            "spec": edit.spec,
            "params": dict(edit.params),
            "paper_class": edit.info.paper_class,
            "key": {"seed": seed, "derived_from": "fold_in(key(seed), crc32(spec))"} if edit.random else None,
            "estimates": {n: e.value for n, e in estimates.items()},
            "stderr": {**{n: e.stderr for n, e in estimates.items()}, "measured": measured.stderr},
            "second_order_terms": estimates["second-order"].terms,
            "measured": measured.value,
            "loss_edited": measured.terms["loss_edited"],
            "accuracy": acc,
            "tolerance": tol,
            "class": {**{n: riemann.classify(e.value, tol) for n, e in estimates.items()},
                      "measured": riemann.classify(measured.value, tol)},
            "modules": estimates["riemann"].modules,
            "cost": {n: e.cost for n, e in estimates.items()} | {"measured": measured.cost},
        })

    agreement = {name: agreement_of(records, name) for name in ESTIMATORS}
    return {
        "pair": {
            "name": pair.name,
            "description": pair.description,
            "loss_pre": loss_pre,
            "loss_post": loss_post,
            "gain": gain,
            "accuracy_pre": pair.accuracy_fn(pair.pre, batches) if pair.accuracy_fn else None,
            "accuracy_post": pair.accuracy_fn(pair.post, batches) if pair.accuracy_fn else None,
            "num_batches": len(batches),
            "completeness": completeness,
            "gain_modules": gain_modules,
            "line_profile": {"t": ts, "loss": profile},
            "info": pair.info,
        },
        "settings": {
            "seed": seed,
            "estimators": ESTIMATORS,
            "tolerance_rule": "max(0.05·|L(pre) − L(post)|, 2·stderr(measured))",
            "edits": specs,
        },
        "edits": records,
        "agreement": agreement,
        "elapsed_s": time.perf_counter() - t0,
    }


def agreement_of(records: list[dict[str, Any]], estimator: str) -> dict[str, Any]:
    """Spearman, Pearson, sign and class agreement of one estimator with the measured change."""
    pred = np.array([r["estimates"][estimator] for r in records])
    meas = np.array([r["measured"] for r in records])
    nonzero = meas != 0
    pc = [r["class"][estimator] for r in records]
    mc = [r["class"]["measured"] for r in records]
    cost = records[0]["cost"][estimator] if records else {}
    return {
        "spearman": stats.spearman(pred, meas),
        "pearson": stats.pearson(pred, meas),
        "sign_agreement": float(np.mean(np.sign(pred[nonzero]) == np.sign(meas[nonzero]))) if nonzero.any() else float("nan"),
        "class_agreement": float(np.mean([a == b for a, b in zip(pc, mc)])) if records else float("nan"),
        "confusion": stats.confusion(pc, mc, riemann.CLASSES),
        "passes_per_edit_per_batch": cost,
        "mean_abs_error": float(np.mean(np.abs(pred - meas))) if records else float("nan"),
    }
