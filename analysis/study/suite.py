"""A suite of delta edits on one pre/post pair: every estimator of every edit's loss change, the
measured change, classes, agreement statistics, and the per-pair checks.

The estimators are those of :mod:`analysis.study.estimators`; what each one computes, and why the
first-order term and the computed Riemann sum are different things: ``docs/theory.md``, §4.
Shared quantities (the gradient and the Hutchinson diagonal at ``W_post``, the per-batch
``L(W_post)``) are computed once per pair by :class:`Scorer`; each edit then costs only its
per-edit estimators and one forward pass per batch to measure it.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

import riemann
from analysis.pairs.pair import Pair
from analysis.study import stats
from analysis.study.checks import pair_checks
from analysis.study.estimators import DEFAULT_PROBES, ESTIMATORS, Shared, check_names
from riemann import edits
from riemann.tree_utils import tree_vdot

PyTree = Any
# The Hutchinson probes' key is folded from the seed with this constant, apart from every edit key.
_PROBE_SALT = 0x48757463


def default_suite() -> list[str]:
    """The default edit suite (53 edits): all three classes of the paper with parameter sweeps."""
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


@jax.jit
def _sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: x - y, a, b)


@jax.jit
def _add(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: x + y, a, b)


@jax.jit
def _norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(tree_vdot(tree, tree))


def _timed(f: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


@dataclasses.dataclass(frozen=True)
class Scored:
    """One edit, scored: ``F(ΔW)`` and the change ``ΔW~``, each estimator's estimate, the measurement, the accuracy of
    the edited model, and the seconds each part took."""

    edit: edits.Edit
    edited: PyTree
    change: PyTree
    estimates: dict[str, riemann.Estimate]
    measured: riemann.Estimate
    accuracy: float | None
    seconds: dict[str, float]


class Scorer:
    """Scores edits of one pair with the chosen estimators. Shared quantities are computed once,
    at construction; :meth:`score` then costs only the per-edit estimators and the measurement."""

    def __init__(
        self,
        pair: Pair,
        *,
        seed: int = 0,
        probes: int = DEFAULT_PROBES,
        estimators: Sequence[str] | None = None,
        progress: bool = False,
    ) -> None:
        names = check_names(list(ESTIMATORS) if estimators is None else list(estimators))
        needs_curvature = any(ESTIMATORS[n].needs == "curvature" for n in names)
        if needs_curvature and probes < 1:
            raise ValueError(f"probes={probes}; the shared-curvature estimator needs at least 1 probe per batch")
        self.pair, self.seed, self.probes, self.estimators = pair, seed, probes, names
        self.delta = _sub(pair.post, pair.pre)
        # The gradient alone (first order) and the probes (shared curvature) are timed apart so
        # that each estimator is charged what it needs; the probes' own gradient is the same g.
        gradient, self.gradient_seconds = _timed(
            lambda: riemann.shared_curvature(pair.loss_fn, pair.post, pair.batches, probes=0)
        )
        curvature, self.curvature_seconds = None, 0.0
        if needs_curvature:
            # Probes are keyed by the seed alone: the same seed gives the same diagonal in every run.
            key = jax.random.fold_in(jax.random.key(seed), _PROBE_SALT)
            curvature, self.curvature_seconds = _timed(
                lambda: riemann.shared_curvature(
                    pair.loss_fn, pair.post, pair.batches, probes=probes, key=key, progress=progress
                )
            )
        self.shared = Shared(pair, gradient, curvature)
        # Per-batch L(W_post) from the gradient pass: measuring each edit then costs one forward.
        self.loss_post = gradient.batch_losses

    def shared_record(self) -> dict[str, Any]:
        """What was computed once for the suite, per shared estimator: passes per batch and seconds."""
        g, c = self.shared.gradient, self.shared.curvature
        spent = {"gradient": {"passes_per_batch": g.cost, "seconds": self.gradient_seconds}}
        if c is not None:
            spent["curvature"] = {"passes_per_batch": c.cost, "seconds": self.curvature_seconds}
        rec = {n: spent[e.needs] for n, e in ESTIMATORS.items() if e.needs in spent}
        return {"probes": self.probes if c is not None else 0, "loss_post": g.loss, "estimators": rec}

    def edited(self, edit: edits.Edit) -> PyTree:
        """``F(ΔW)`` with the edit's own key (:func:`edit_key`) and, if it asks, the shared gradient."""
        key = edit_key(self.seed, edit.spec) if edit.random else None
        return edit(self.delta, key=key, grad=self.shared.gradient.grad if edit.needs_grad else None)

    def score(self, edit: edits.Edit) -> Scored:
        """Every chosen estimator of one edit, its measured change and the edited model's accuracy."""
        pair = self.pair
        t = time.perf_counter()
        edited = self.edited(edit)
        change = _sub(edited, self.delta)
        seconds = {"edit": time.perf_counter() - t}
        estimates = {}
        for name in self.estimators:
            estimates[name], seconds[name] = _timed(lambda n=name: ESTIMATORS[n].score(self.shared, change))
        measured, seconds["measured"] = _timed(
            lambda: riemann.estimate(
                pair.loss_fn, pair.post, change, pair.batches, method="measured", loss_post=self.loss_post
            )
        )
        accuracy, seconds["accuracy"] = _timed(
            lambda: pair.accuracy_fn(_add(pair.pre, edited), pair.batches) if pair.accuracy_fn else None
        )
        return Scored(edit, edited, change, estimates, measured, accuracy, seconds)


def record(scored: Scored, *, seed: int, gain: float) -> dict[str, Any]:
    """One edit's record for ``results.json``: estimates, measured change, the tolerance and the
    classes it gives, accuracy, per-module terms, cost, seconds."""
    edit, estimates, m = scored.edit, scored.estimates, scored.measured
    tol = riemann.choose_tolerance(gain=gain, stderr=m.stderr)
    # The paper's rule when it ran, else the first estimator that has a per-module breakdown.
    modules_source = next((n for n in ("riemann", *estimates) if n in estimates and estimates[n].modules), None)
    return {
        "name": edit.name,
        "spec": edit.spec,
        "params": dict(edit.params),
        "paper_class": edit.info.paper_class,
        "key": {"seed": seed, "derived_from": "fold_in(key(seed), crc32(spec))"} if edit.random else None,
        "estimates": {n: e.value for n, e in estimates.items()},
        "stderr": {**{n: e.stderr for n, e in estimates.items()}, "measured": m.stderr},
        "terms": {n: e.terms for n, e in estimates.items() if "second" in e.terms},  # the quadratic's parts
        "measured": m.value,
        "loss_edited": m.terms["loss_edited"],
        "accuracy": scored.accuracy,
        "tolerance": tol,
        "class": {
            **{n: riemann.classify(e.value, tol) for n, e in estimates.items()},
            "measured": riemann.classify(m.value, tol),
        },
        "modules": estimates[modules_source].modules if modules_source else {},
        "modules_estimator": modules_source,
        "cost": {n: e.cost for n, e in estimates.items()} | {"measured": m.cost},
        "seconds": scored.seconds,
        "change_norm": float(_norm(scored.change)),
    }


class Store(Protocol):
    """Where :func:`analyse` keeps what it has done, so that an interrupted study resumes: the pair
    checks and one record per scored edit, each saved as soon as it exists."""

    def checks(self) -> dict[str, Any] | None: ...

    def save_checks(self, checks: dict[str, Any]) -> None: ...

    def records(self) -> dict[str, dict[str, Any]]: ...

    def save_record(self, record: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class MemoryStore:
    """A :class:`Store` that keeps everything in memory (nothing to resume from)."""

    saved_checks: dict[str, Any] | None = None
    saved_records: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def checks(self) -> dict[str, Any] | None:
        return self.saved_checks

    def save_checks(self, checks: dict[str, Any]) -> None:
        self.saved_checks = checks

    def records(self) -> dict[str, dict[str, Any]]:
        return dict(self.saved_records)

    def save_record(self, record: dict[str, Any]) -> None:
        self.saved_records[record["spec"]] = record


def analyse(
    pair: Pair,
    specs: Sequence[str] | None = None,
    *,
    seed: int = 0,
    probes: int = DEFAULT_PROBES,
    estimators: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    store: Store | None = None,
) -> dict[str, Any]:
    """Run the suite on ``pair`` and return its results record.

    What ``store`` already holds (the pair checks, records of edits in ``specs``) is kept, not
    recomputed; everything new is saved to it as soon as it exists.
    """
    specs = list(default_suite() if specs is None else specs)
    parsed = check_specs(specs)  # every spec checked before any heavy work
    store = MemoryStore() if store is None else store
    t0 = time.perf_counter()
    scorer = Scorer(pair, seed=seed, probes=probes, estimators=estimators, progress=progress)
    checks = store.checks()
    if checks is None:
        checks = pair_checks(pair, scorer.delta, log=log, progress=progress)
        store.save_checks(checks)
    done = {k: v for k, v in store.records().items() if k in {e.spec for e in parsed}}
    if done:
        log(f"[{pair.name}] resuming: {len(done)} of {len(parsed)} edits already scored")
    records = []
    with riemann.progress_bar(progress, desc=f"{pair.name} edits", unit="edit", total=len(parsed) - len(done)) as bar:
        for edit in parsed:
            if edit.spec not in done:
                done[edit.spec] = record(scorer.score(edit), seed=seed, gain=checks["gain"])
                store.save_record(done[edit.spec])
                bar.update(1)
            records.append(done[edit.spec])
    shared = scorer.shared_record()
    return {
        "pair": checks,
        "shared": shared,
        "estimators": {n: ESTIMATORS[n].settings for n in scorer.estimators},
        "edits": records,
        "agreement": {name: agreement_of(records, name, shared=shared) for name in scorer.estimators},
        "elapsed_s": time.perf_counter() - t0,
    }


def agreement_of(
    records: list[dict[str, Any]], estimator: str, *, shared: dict[str, Any] | None = None
) -> dict[str, Any]:
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
        "sign_agreement": float(np.mean(np.sign(pred[nonzero]) == np.sign(meas[nonzero])))
        if nonzero.any()
        else float("nan"),
        "class_agreement": float(np.mean([a == b for a, b in zip(pc, mc)])) if records else float("nan"),
        "confusion": stats.confusion(pc, mc, riemann.CLASSES),
        "misclassified": wrong,
        "passes_per_edit_per_batch": per_edit,
        "passes_once_per_batch": once,
        "seconds": seconds,
        "mean_abs_error": float(np.mean(np.abs(pred - meas))) if records else float("nan"),
    }
