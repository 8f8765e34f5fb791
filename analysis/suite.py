"""Analyse a suite of delta edits on one pre/post pair: every estimator of every edit's loss
change, the measured change, classes, agreement statistics, and the pre→post checks.

Estimators (each result records which one it is; see PAPER.md, "The argument and the computed
term are different things"):

- ``riemann``: the paper's approximation term, left rule, C = 5, on ``W_post → W_edit``
  (C gradient passes per batch, per edit).
- ``first-order``: ``<∇L(W_post), ΔW~>``, the quantity the zero-expectation argument is about
  (the gradient is computed once for the whole suite).
- ``shared-curvature``: first order + ``½ Σ diag(H)·ΔW~²`` with ``diag(H)`` estimated once at
  ``W_post`` by Hutchinson probes (``probes`` Hessian-vector products per batch for the suite).
- ``second-order``: first order + ``½<ΔW~, H ΔW~>`` (one Hessian-vector product per batch, per edit).
- ``gauss-legendre``: Gauss–Legendre quadrature with 8 nodes on the same segment (near exact).
- ``measured``: ``L(W_edit) − L(W_post)`` (one forward pass per batch, per edit; ``L(W_post)``
  is shared).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import riemann
from analysis import stats
from analysis.pairs import Pair
from riemann import edits
from riemann._src import trees

PyTree = Any

ESTIMATORS: dict[str, dict[str, Any]] = {
    "riemann": {"method": "riemann", "rule": "left", "n": 5},
    "first-order": {"method": "first-order", "shared": True},
    "shared-curvature": {"method": "shared-curvature", "shared": True},
    "second-order": {"method": "second-order"},
    # Its per-module terms are not reported (the paper's rule supplies them), so forward-mode
    # products serve: the same value without a gradient accumulator, about 2× faster on the CPU.
    "gauss-legendre": {"method": "riemann", "rule": "gauss-legendre", "n": 8, "mode": "forward"},
}
COMPLETENESS_RULES = [("left", 5), ("right", 5), ("midpoint", 5), ("trapezoid", 5), ("simpson", 5), ("gauss-legendre", 8)]
PROFILE_T = np.round(np.linspace(-1.0, 2.0, 31), 6).tolist()
DEFAULT_PROBES = 8


def default_suite() -> list[str]:
    """The default edit suite (54 edits): all three classes of the paper with parameter sweeps."""
    suite = [f"dare:p={p:g},k={k:g}" for k in (0.0, 0.5, -0.5, -1.0) for p in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)]
    suite += ["dare:p=0.5,rescale=false", "dare:p=0.9,rescale=false", "della:density=0.3,epsilon=0.1"]
    suite += ["biased_sign:k=0.5", "biased_sign:k=1.5", "biased_product:k=0.5", "biased_product:k=1.5"]
    suite += [f"magnitude:keep={q:g}" for q in (0.1, 0.3, 0.5, 0.8)]
    suite += [f"bitdelta:magnitude_bits={b}" for b in (0, 1, 2, 4)]
    suite += [f"bitdelta:multiple={m:g}" for m in (0.5, 2.0)]
    suite += ["bitdelta:magnitudes=normal", "bitdelta:magnitudes=uniform"]
    suite += [f"lowrank:fraction={f:g}" for f in (0.05, 0.1, 0.25, 0.5)]
    suite += [f"expo:alpha={a:g}" for a in (-1.0, -0.5, -0.2, 0.2, 0.5, 1.0)]
    return suite


def edit_key(seed: int, spec: str) -> jax.Array:
    """The key of one edit: ``fold_in(key(seed), crc32(spec))``. Each edit's key depends on the
    seed and its own spec only, so adding or reordering edits never changes another's result."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(spec.encode()) & 0x7FFFFFFF)


@jax.jit
def _sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: x - y, a, b)


@jax.jit
def _add(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: x + y, a, b)


@jax.jit
def _norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(trees.tree_vdot(tree, tree))


def line_profile(pair: Pair, delta: PyTree, ts: Sequence[float]) -> list[float]:
    """Mean loss along ``W_pre + t·ΔW`` (interpolation for t in [0, 1], extrapolation outside)."""
    # One forward per (t, batch), the point formed inside jit; no L(pre) re-evaluated per t.
    loss_at = jax.jit(lambda t, b: pair.loss_fn(jax.tree.map(lambda p, d: p + t.astype(p.dtype) * d, pair.pre, delta), b))
    return [float(np.mean([loss_at(np.float32(t), b) for b in pair.batches])) for t in ts]


def check_specs(specs: Sequence[str]) -> list[edits.Edit]:
    """Parse every spec (errors name the spec and what was expected) and refuse duplicates."""
    parsed = [edits.parse(s) for s in specs]
    seen: dict[str, str] = {}
    for s, e in zip(specs, parsed):
        if e.spec in seen:
            raise ValueError(f"edit {s!r} repeats {seen[e.spec]!r} (both are {e.spec!r}); list each edit once")
        seen[e.spec] = s
    if not parsed:
        raise ValueError("the edit suite is empty; pass at least one edit spec")
    return parsed


def pair_checks(pair: Pair, delta: PyTree, *, log: Callable[[str], None] = print, progress: bool = False) -> dict[str, Any]:
    """Per-pair facts: endpoint losses and accuracies, completeness of every rule on pre→post,
    the per-module attribution of the post-training gain, and the line profile."""
    log(f"[{pair.name}] completeness of the pre→post change with {len(COMPLETENESS_RULES)} rules, line profile")
    completeness = {}
    rules: Any = COMPLETENESS_RULES
    if progress:
        from tqdm.auto import tqdm

        rules = tqdm(COMPLETENESS_RULES, desc=f"{pair.name} completeness", unit="rule", leave=False)
    for rule, n in rules:
        # Only Gauss-Legendre's per-module terms are kept (the gain's attribution); the other rules
        # need values alone, which forward-mode products give without a gradient accumulator.
        mode = "accumulate" if rule == "gauss-legendre" else "forward"
        res = riemann.integrate_path(pair.loss_fn, pair.pre, delta, pair.batches, rule=rule, n=n, endpoints=True, mode=mode)
        completeness[f"{rule}:{n}"] = {"value": res.value, "gap": res.gap, "relative_gap": res.relative_gap}
        if rule == "gauss-legendre":
            gain_modules = res.modules
            loss_pre, loss_post = res.loss_start, res.loss_end
    return {
        "name": pair.name,
        "description": pair.description,
        "loss_pre": loss_pre,
        "loss_post": loss_post,
        "gain": loss_pre - loss_post,
        "accuracy_name": pair.info.get("accuracy_name", "accuracy"),
        "accuracy_pre": pair.accuracy_fn(pair.pre, pair.batches) if pair.accuracy_fn else None,
        "accuracy_post": pair.accuracy_fn(pair.post, pair.batches) if pair.accuracy_fn else None,
        "num_batches": len(pair.batches),
        "num_params": int(sum(np.size(x) for x in jax.tree.leaves(pair.post))),
        "completeness": completeness,
        "gain_modules": gain_modules,
        "line_profile": {"t": PROFILE_T, "loss": line_profile(pair, delta, PROFILE_T)},
        "info": pair.info,
    }


class Scorer:
    """Scores edits of one pair with every estimator. Shared quantities (the gradient and the
    Hutchinson diagonal at ``W_post``, the per-batch ``L(W_post)``) are computed once, at
    construction; :meth:`score` then costs only the per-edit estimators."""

    def __init__(self, pair: Pair, *, seed: int = 0, probes: int = DEFAULT_PROBES,
                 estimators: Sequence[str] | None = None, progress: bool = False) -> None:
        names = list(ESTIMATORS) if estimators is None else list(estimators)
        unknown = [n for n in names if n not in ESTIMATORS]
        if unknown or not names:
            raise ValueError(f"unknown estimators {unknown}; accepted: {', '.join(ESTIMATORS)}")
        if "shared-curvature" in names and probes < 1:
            raise ValueError(f"probes={probes}; the shared-curvature estimator needs at least 1 probe per batch")
        self.pair, self.seed, self.probes, self.estimators = pair, seed, probes, names
        self.delta = _sub(pair.post, pair.pre)
        # The gradient alone (first order) and the probes (shared curvature) are timed apart so
        # that each estimator is charged what it needs; the probes' own gradient is the same g.
        t = time.perf_counter()
        self.gradient = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=0)
        self.gradient_seconds = time.perf_counter() - t
        self.curvature = None
        self.curvature_seconds = 0.0
        if "shared-curvature" in names:
            t = time.perf_counter()
            # Probes are keyed by the seed alone: the same seed gives the same diagonal in every run.
            self.curvature = riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=probes,
                                                      key=jax.random.fold_in(jax.random.key(seed), 0x48757463),
                                                      progress=progress)
            self.curvature_seconds = time.perf_counter() - t
        # Per-batch L(W_post) from the gradient pass: measuring each edit then costs one forward.
        self.loss_post = self.gradient.batch_losses

    def shared_record(self) -> dict[str, Any]:
        """What was computed once for the suite, per shared estimator: passes per batch and seconds."""
        rec = {"first-order": {"passes_per_batch": self.gradient.cost, "seconds": self.gradient_seconds}}
        if self.curvature is not None:
            rec["shared-curvature"] = {"passes_per_batch": self.curvature.cost, "seconds": self.curvature_seconds}
        return {"probes": self.probes if self.curvature is not None else 0, "loss_post": self.gradient.loss,
                "estimators": rec}

    def score(self, edit: edits.Edit, *, gain: float) -> dict[str, Any]:
        """One edit's record: estimates, measured change, classes, accuracy, per-module terms, cost."""
        pair = self.pair
        t0 = time.perf_counter()
        key = edit_key(self.seed, edit.spec)
        edited = edit(self.delta, key=key if edit.random else None, grad=self.gradient.grad if edit.needs_grad else None)
        change = _sub(edited, self.delta)
        seconds = {"edit": time.perf_counter() - t0}
        estimates: dict[str, riemann.Estimate] = {}
        for name in self.estimators:
            kw = ESTIMATORS[name]
            t = time.perf_counter()
            if name == "first-order":
                est = self.gradient.first_order(change)
            elif name == "shared-curvature":
                est = self.curvature.estimate(change)
            else:
                est = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches,
                                       **{k: v for k, v in kw.items() if k != "shared"})
            seconds[name] = time.perf_counter() - t
            estimates[name] = est
        t = time.perf_counter()
        m = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="measured", loss_post=self.loss_post)
        seconds["measured"] = time.perf_counter() - t
        measured, measured_se, loss_edited = m.value, m.stderr, m.terms["loss_edited"]
        tol = riemann.choose_tolerance(gain=gain, stderr=measured_se)
        t = time.perf_counter()
        acc = pair.accuracy_fn(_add(pair.pre, edited), pair.batches) if pair.accuracy_fn else None
        seconds["accuracy"] = time.perf_counter() - t
        # The paper's rule when it ran, else the first estimator that has a per-module breakdown.
        modules_source = next((n for n in ("riemann", *estimates) if n in estimates and estimates[n].modules), None)
        return {
            "name": edit.name,
            "spec": edit.spec,
            "params": dict(edit.params),
            "paper_class": edit.info.paper_class,
            "key": {"seed": self.seed, "derived_from": "fold_in(key(seed), crc32(spec))"} if edit.random else None,
            "estimates": {n: e.value for n, e in estimates.items()},
            "stderr": {**{n: e.stderr for n, e in estimates.items()}, "measured": measured_se},
            "terms": {n: e.terms for n, e in estimates.items() if n in ("second-order", "shared-curvature")},
            "measured": measured,
            "loss_edited": loss_edited,
            "accuracy": acc,
            "tolerance": tol,
            "class": {**{n: riemann.classify(e.value, tol) for n, e in estimates.items()},
                      "measured": riemann.classify(measured, tol)},
            "modules": estimates[modules_source].modules if modules_source else {},
            "modules_estimator": modules_source,
            "cost": {n: e.cost for n, e in estimates.items()} | {"measured": m.cost},
            "seconds": seconds,
            "change_norm": float(_norm(change)),
        }


def analyse(
    pair: Pair,
    specs: Sequence[str] | None = None,
    *,
    seed: int = 0,
    probes: int = DEFAULT_PROBES,
    estimators: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    done: Mapping[str, dict[str, Any]] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    checks: dict[str, Any] | None = None,
    on_checks: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the suite on ``pair`` and return its results record.

    ``done`` maps specs to records from an interrupted run (they are kept, not recomputed;
    ``checks`` likewise holds the pair checks already made); ``on_record`` and ``on_checks`` are
    called with each new result as soon as it exists, so a caller can persist progress.
    """
    specs = list(default_suite() if specs is None else specs)
    parsed = check_specs(specs)  # every spec checked before any heavy work
    t0 = time.perf_counter()
    done = dict(done or {})
    scorer = Scorer(pair, seed=seed, probes=probes, estimators=estimators, progress=progress)
    if checks is None:
        checks = pair_checks(pair, scorer.delta, log=log, progress=progress)
        if on_checks is not None:
            on_checks(checks)

    records = []
    todo = [e for e in parsed if e.spec not in done]
    if done:
        log(f"[{pair.name}] resuming: {len(parsed) - len(todo)} of {len(parsed)} edits already scored")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"{pair.name} edits", unit="edit")
    for edit in parsed:
        if edit.spec in done:
            records.append(done[edit.spec])
            continue
        rec = scorer.score(edit, gain=checks["gain"])
        records.append(rec)
        if on_record is not None:
            on_record(rec)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    names = scorer.estimators
    return {
        "pair": checks,
        "shared": scorer.shared_record(),
        "estimators": {n: ESTIMATORS[n] for n in names},
        "edits": records,
        "agreement": {name: agreement_of(records, name, shared=scorer.shared_record()) for name in names},
        "elapsed_s": time.perf_counter() - t0,
    }


def agreement_of(records: list[dict[str, Any]], estimator: str, *, shared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Spearman, Pearson, sign and class agreement of one estimator with the measured change,
    its confusion matrix, and its cost over the suite (passes and seconds)."""
    pred = np.array([r["estimates"][estimator] for r in records])
    meas = np.array([r["measured"] for r in records])
    nonzero = meas != 0
    pc = [r["class"][estimator] for r in records]
    mc = [r["class"]["measured"] for r in records]
    per_edit = records[0]["cost"][estimator] if records else {}
    once = {}
    seconds = float(sum(r["seconds"].get(estimator, 0.0) for r in records))
    if shared is not None and estimator in shared["estimators"]:
        once = dict(shared["estimators"][estimator]["passes_per_batch"])
        seconds += float(shared["estimators"][estimator]["seconds"])
    wrong = [r["spec"] for r, a, b in zip(records, pc, mc) if a != b]
    return {
        "spearman": stats.spearman(pred, meas),
        "pearson": stats.pearson(pred, meas),
        "sign_agreement": float(np.mean(np.sign(pred[nonzero]) == np.sign(meas[nonzero]))) if nonzero.any() else float("nan"),
        "class_agreement": float(np.mean([a == b for a, b in zip(pc, mc)])) if records else float("nan"),
        "confusion": stats.confusion(pc, mc, riemann.CLASSES),
        "misclassified": wrong,
        "passes_per_edit_per_batch": per_edit,
        "passes_once_per_batch": once,
        "seconds": seconds,
        "mean_abs_error": float(np.mean(np.abs(pred - meas))) if records else float("nan"),
    }

