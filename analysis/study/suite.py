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
import functools
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

import riemann
from analysis.pairs import split
from analysis.pairs.pair import Pair
from analysis.study import artefact as artefacts
from analysis.study import stats, tolerance
from analysis.study.artefact import delta_of, difference
from analysis.study.checks import pair_checks
from analysis.study.estimators import DEFAULT_PROBES, ESTIMATORS, Shared, check_names, cross_fitted, starts_at_post
from riemann import edits
from riemann.tree_utils import accum_dtype, move_along, tree_vdot, widen

PyTree = Any
# The Hutchinson probes' key is folded from the seed with this constant, apart from every edit key.
_PROBE_SALT = 0x48757463
# The K-FAC collection's sampled labels are keyed by the seed with this constant.
_KFAC_SALT = 0x4B464143
# The saturation curves' random signs: the same seed gives the same curves in the main job and the sweep.
_SATURATION_SALT = 0x53415455
# Above this, the per-test-batch gradients at W_post are not held for the suite (each edit's left
# rule then computes its first node itself): 8 test batches of an 8B model would be 256 GB.
HELD_GRADIENT_BYTES = 1 << 30


def saturation_key(seed: int) -> jax.Array:
    """The key of the saturation curves' random-sign copies for ``seed`` (what the main job and the
    sweep both draw, so that one seed gives the same curves in both)."""
    return jax.random.fold_in(jax.random.key(seed), _SATURATION_SALT)


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


def edit_key(seed: int, name: str, mask: int = 0) -> jax.Array:
    """The key of a random edit's ``mask``-th draw: ``fold_in(fold_in(key(seed), crc32(name)), mask)``.

    It depends on the seed, the edit's *name* (``dare``, ``della``, …) and the mask index only — not
    on its other parameters — so for one seed and mask every DARE edit draws the same uniforms and
    its masks are nested across ``p`` (an entry dropped at ``p = 0.5`` is dropped at ``p = 0.9``):
    a sweep compares like with like. Adding or reordering edits never changes another's result.
    """
    root = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
    return jax.random.fold_in(root, mask)


_F32_EPS = float(np.finfo(np.float32).eps)
KEY_RULE = "fold_in(fold_in(key(seed), crc32(edit name)), mask)"


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
def _norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(tree_vdot(tree, tree))


# W + t·D in each leaf's dtype, as the engine forms its points (for the tolerance's reference).
_move_along = jax.jit(move_along)


@functools.partial(jax.jit, static_argnums=0)
def _loss(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, batch: Any) -> jax.Array:
    return widen(loss_fn(params, batch))


def held_gradient_bytes(params: PyTree, batches: int) -> int:
    """Bytes that one gradient per batch takes, in the accumulation dtype (float32 for 16-bit weights)."""
    return batches * sum(int(np.size(x)) * accum_dtype(jnp.result_type(x)).itemsize for x in jax.tree.leaves(params))


def batch_losses(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, batches: Sequence[Any]) -> np.ndarray:
    """``loss_fn(params, b)`` for every batch, one forward each."""
    return np.array([float(_loss(loss_fn, params, b)) for b in batches], np.float64)


def _timed(f: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def family(name: str) -> str:
    """The edit family an edit's metrics are grouped under (``biased_sign`` and ``biased_product``
    are both ``biased``); any other edit is its own family."""
    return FAMILIES.get(name, name)


FAMILIES = {"biased_sign": "biased", "biased_product": "biased"}


@dataclasses.dataclass(frozen=True)
class Scored:
    """One edit, scored over its masks (one for a deterministic edit, ``seeds`` for a random one):
    the norm of the first mask's change ``ΔW~``; each estimator's estimate per mask it ran on (shared
    estimators on every mask, per-edit ones on the first); the measurement and the edited model's
    accuracy per mask; what rounding to the storage dtype left unmoved; seconds per part."""

    edit: edits.Edit
    change_norm: float
    estimates: dict[str, list[riemann.Estimate]]
    measured: list[riemann.Estimate]
    accuracy: list[float | None]
    unmoved: list[float]
    seconds: dict[str, float]


class Scorer:
    """Scores edits of one pair with the chosen estimators.

    The pair is split into calibration and test batches (:mod:`analysis.pairs.split`) unless it
    already is. At construction, from the calibration batches only, it computes what is shared —
    the gradient (and the Hutchinson diagonal) at ``W_post`` — and the classification tolerances
    (:mod:`analysis.study.tolerance`); from the test batches, ``L(W_post)`` per batch and the
    accuracy of ``W_post``. :meth:`score` then costs the per-edit estimators on the first mask and,
    per mask, one forward per test batch (the measurement), the accuracy and the shared estimators.
    """

    def __init__(
        self,
        pair: Pair,
        *,
        seed: int = 0,
        seeds: int = 1,
        probes: int = DEFAULT_PROBES,
        estimators: Sequence[str] | None = None,
        calibration: int = split.DEFAULT_CALIBRATION,
        progress: bool = False,
        gradient_edits: Sequence[edits.Edit] = (),
    ) -> None:
        names = check_names(list(ESTIMATORS) if estimators is None else list(estimators))
        needs_trust = any(ESTIMATORS[n].needs == "trust" for n in names)
        # auto judges (and returns) the kfac-saturated prediction, so it needs what that one needs.
        needs_saturation = needs_trust or any(ESTIMATORS[n].needs == "saturation" for n in names)
        needs_kfac = needs_saturation or any(ESTIMATORS[n].needs == "kfac" for n in names)
        needs_curvature = needs_trust or needs_kfac or any(ESTIMATORS[n].needs == "curvature" for n in names)
        if needs_curvature and probes < 1:
            raise ValueError(f"probes={probes}; the shared-curvature estimator needs at least 1 probe per batch")
        if seeds < 1:
            raise ValueError(f"seeds={seeds}; random edits need at least 1 mask")
        pair = split.split_pair(pair, calibration=calibration, seed=seed)
        self.pair, self.seed, self.seeds, self.probes, self.estimators = pair, seed, seeds, probes, names
        self.delta = delta_of(pair.pre, pair.post)
        cal = pair.calibration
        # The gradient alone (first order) and the probes (shared curvature) are timed apart so
        # that each estimator is charged what it needs; the probes' own gradient is the same g.
        gradient, self.gradient_seconds = _timed(
            lambda: riemann.shared_curvature(pair.loss_fn, pair.post, cal, probes=0)
        )
        # Edits built from the gradient: their first-order term on batches they did not see, each
        # calibration batch's gradient streamed once more (one gradient pass per batch, once).
        predictors = any(_reads_cross_fit(n) for n in names)
        gradient_edits = [e for e in gradient_edits if e.needs_grad] if predictors else []
        self.cross_fits: dict[tuple[str, int], riemann.CrossFit] = {}
        self.cross_fit_seconds = 0.0
        self.can_cross_fit = predictors and len(cal) > 1
        if gradient_edits and self.can_cross_fit:
            builds = {
                (e.spec, m): functools.partial(_built, e, self.delta, edit_key(seed, e.name, m) if e.random else None)
                for e in gradient_edits
                for m in range(self.masks(e))
            }
            self.cross_fits, self.cross_fit_seconds = _timed(
                lambda: riemann.cross_fitted_first_order(
                    builds,
                    riemann.batch_gradients(pair.loss_fn, pair.post, cal),
                    mean=gradient.grad,
                    num_batches=len(cal),
                )
            )
        curvature, self.curvature_seconds = None, 0.0
        if needs_curvature:
            # Probes are keyed by the seed alone: the same seed gives the same diagonal in every run.
            key = jax.random.fold_in(jax.random.key(seed), _PROBE_SALT)
            curvature, self.curvature_seconds = _timed(
                lambda: riemann.shared_curvature(
                    pair.loss_fn, pair.post, cal, probes=probes, key=key, progress=progress
                )
            )
        kfac_factors, kfac_note, self.kfac_seconds = None, None, {}
        self.saturation_seconds = 0.0
        if needs_kfac:
            from analysis.study import kfac

            kind, kfac_note = kfac.output_kind(pair)
            if kind is not None:
                kfac_factors = kfac.collect(
                    pair.template,
                    pair.post,
                    cal,
                    kind,
                    key=jax.random.fold_in(jax.random.key(seed), _KFAC_SALT),
                    ekfac=any(ESTIMATORS[n].needs == "kfac" and n != "kfac" for n in names),
                )
                self.kfac_seconds = kfac_factors.info["seconds"]
        n_test = len(pair.batches)
        ref = _move_along(pair.post, self.delta, np.float32(-tolerance.FRACTION))  # W_post − 0.05·ΔW
        pre_cal, ref_cal = (batch_losses(pair.loss_fn, p, cal) for p in (pair.pre, ref))
        self.loss_pre_calibration = pre_cal  # per-batch L(W_pre) on calibration data, for those that need it
        self.tolerance = tolerance.fixed(pre_cal, gradient.batch_losses, ref_cal, n_test=n_test)
        self.accuracy_tolerance = None
        if pair.accuracy_fn is not None:
            acc = [[pair.accuracy_fn(p, [b]) for b in cal] for p in (pair.pre, pair.post, ref)]
            self.accuracy_tolerance = tolerance.fixed(*acc, n_test=n_test)
        del ref
        # Per-batch L(W_post) on the test batches: measuring each edit then costs one forward.
        self.loss_post = batch_losses(pair.loss_fn, pair.post, pair.batches)
        self.accuracy_post = pair.accuracy_fn(pair.post, pair.batches) if pair.accuracy_fn else None
        # Every edit's path starts at W_post: a per-edit rule with a node there (the paper's left
        # rule) shares that node's gradient on each test batch, computed here once instead of per edit.
        self.start_gradients, self.start_seconds = None, 0.0
        if any(ESTIMATORS[n].needs is None and starts_at_post(ESTIMATORS[n].method) for n in names) and (
            held_gradient_bytes(pair.post, len(pair.batches)) <= HELD_GRADIENT_BYTES
        ):
            self.start_gradients, self.start_seconds = _timed(
                # finished before the clock stops: their time is riemann's, not the next pass's
                lambda: jax.block_until_ready(list(riemann.batch_gradients(pair.loss_fn, pair.post, pair.batches)))
            )
        self.shared = Shared(
            pair,
            gradient,
            curvature,
            tolerance=self.tolerance["value"],
            loss_post=self.loss_post,
            kfac=kfac_factors,
            kfac_note=kfac_note,
            start_gradients=self.start_gradients,
            start_losses=None if self.start_gradients is None else [float(v) for v in self.loss_post],
        )
        if needs_saturation:
            kfac_only = self.shared  # placed on the curves by the quadratic that scores the edits
            sat, self.saturation_seconds = _timed(
                lambda: riemann.saturation(
                    pair.loss_fn,
                    pair.post,
                    self.delta,
                    cal,
                    lambda d: ESTIMATORS["kfac"].score(kfac_only, d).terms["second"],
                    gradient.grad,
                    key=saturation_key(seed),
                    held_out=n_test,
                )
            )
            self.shared = self.shared.replace(saturation=sat)
        self.low_precision = any(jnp.dtype(x.dtype).itemsize < 4 for x in jax.tree.leaves(pair.post))

    def keep_tolerances(self, tolerance: dict[str, Any], accuracy_tolerance: dict[str, Any] | None) -> None:
        """Classify with tolerances fixed earlier (a resumed study keeps its first edits' ones)."""
        self.tolerance, self.accuracy_tolerance = tolerance, accuracy_tolerance
        self.shared = self.shared.replace(tolerance=tolerance["value"])

    def calibration_record(self) -> dict[str, Any]:
        """What was fixed before any edit was scored: the split, the tolerances and their parts."""
        return {
            "split": self.pair.info.get("split"),
            "tolerance": self.tolerance,
            "accuracy_tolerance": self.accuracy_tolerance,
        }

    def shared_record(self) -> dict[str, Any]:
        """What was computed once for the suite, per shared estimator (and per per-edit rule whose first
        node, at ``W_post``, is held: on the test batches, ``data: "test"``): passes per batch and seconds."""
        g, c = self.shared.gradient, self.shared.curvature
        spent = {"gradient": {"passes_per_batch": g.cost, "seconds": self.gradient_seconds}}
        if c is not None:
            spent["curvature"] = {"passes_per_batch": c.cost, "seconds": self.curvature_seconds}
        if c is not None and self.shared.kfac is not None:  # the diagonal (the fallback) plus the collection
            # One forward and one backward product per cotangent set and batch (the top class and
            # each sampled label), counted as gradients; EK-FAC runs the collection twice.
            per = self.shared.kfac.info["backward_products"]
            for n, passes in (("kfac", per), ("ekfac", 2 * per)):
                secs = sum(v for k, v in self.kfac_seconds.items() if n == "ekfac" or k == "kfac")
                spent[n] = {
                    "passes_per_batch": {**c.cost, "gradient": c.cost.get("gradient", 0) + passes},
                    "seconds": self.curvature_seconds + secs,
                }
        elif c is not None:
            spent["kfac"] = spent["curvature"]
        sat = self.shared.saturation
        if "kfac" in spent and sat is not None:  # K-FAC's (or the diagonal's) cost and the curves' forwards
            spent["kfac-saturated"] = {
                "passes_per_batch": {**spent["kfac"]["passes_per_batch"], **sat.cost},
                "seconds": spent["kfac"]["seconds"] + self.saturation_seconds,
            }
            # auto reads its trust from the same curves: kfac-saturated's cost is all it spends once.
            spent["trust"] = spent["kfac-saturated"]
        if self.start_gradients is not None:  # the first node of a per-edit rule, on the test batches
            for n in self.estimators:
                if ESTIMATORS[n].needs is None and starts_at_post(ESTIMATORS[n].method):
                    spent[n] = {"passes_per_batch": {"gradient": 1}, "seconds": self.start_seconds, "data": "test"}
        rec = {n: spent.get(n, spent.get(e.needs)) for n, e in ESTIMATORS.items() if n in spent or e.needs in spent}
        if self.cross_fits:  # the predictors' extra gradient pass per batch (first-order keeps its own term)
            for n, r in rec.items():
                if _reads_cross_fit(n):
                    passes = {**r["passes_per_batch"], "gradient": r["passes_per_batch"].get("gradient", 0) + 1}
                    rec[n] = {"passes_per_batch": passes, "seconds": r["seconds"] + self.cross_fit_seconds}
        return {
            "probes": self.probes if c is not None else 0,
            "data": "calibration",
            "loss_post": g.loss,
            "estimators": rec,
            "saturation": None if sat is None else sat.record(),
        }

    def masks(self, edit: edits.Edit) -> int:
        """How many masks ``edit`` is scored over: ``seeds`` if it is random, else 1."""
        return self.seeds if edit.random else 1

    def edited(self, edit: edits.Edit, mask: int = 0) -> PyTree:
        """``F(ΔW)`` with the key of its ``mask``-th draw (:func:`edit_key`) and, if it asks, the
        shared gradient (from calibration data)."""
        key = edit_key(self.seed, edit.name, mask) if edit.random else None
        return edit(self.delta, key=key, grad=self.shared.gradient.grad if edit.needs_grad else None)

    def artefact(self, edit: edits.Edit, mask: int = 0) -> artefacts.Artefact:
        """The edited model as it would be saved, and the float32 direction that reaches it."""
        pair = self.pair
        out = artefacts.stored(pair.pre, pair.post, self.delta, self.edited(edit, mask))
        artefacts.warn_unmoved(out, f"[{pair.name}] {edit.spec}")
        return out

    def score(self, edit: edits.Edit) -> Scored:
        """Every chosen estimator of one edit, its measured change and the edited model's accuracy,
        over each of its masks."""
        pair = self.pair
        seconds = dict.fromkeys(("edit", *self.estimators, "measured", "accuracy"), 0.0)
        estimates: dict[str, list[riemann.Estimate]] = {n: [] for n in self.estimators}
        measured, accuracy, unmoved, norm = [], [], [], float("nan")
        for mask in range(self.masks(edit)):
            art, t = _timed(lambda m=mask: self.artefact(edit, m))
            seconds["edit"] += t
            if mask == 0:
                norm = float(_norm(art.change))
            unmoved.append(art.unmoved_fraction)
            fit = self.cross_fits.get((edit.spec, mask))
            if fit is None and edit.needs_grad and self.can_cross_fit and mask == 0:
                warnings.warn(
                    f"[{pair.name}] {edit.spec} is built from the gradient but was not given to the scorer "
                    "(Scorer(gradient_edits=...)): its predictions keep the in-sample first-order term, "
                    "and auto measures it",
                    stacklevel=2,
                )
            shared = self.shared
            if fit is not None:
                ratio = len(pair.calibration) / len(pair.batches)
                shared = shared.replace(cross_fit=functools.partial(cross_fitted, fit=fit, held_out=ratio))
            for name in self.estimators:
                if mask == 0 or ESTIMATORS[name].shared:
                    est, t = _timed(lambda n=name, c=art.change, s=shared: ESTIMATORS[n](s, c, edit))
                    # auto judges the cross-fitted prediction itself (Shared.cross_fit), so it returns one
                    if shared.cross_fit is not None and _reads_cross_fit(name) and ESTIMATORS[name].needs != "trust":
                        est = shared.cross_fit(est)
                    estimates[name].append(est)
                    seconds[name] += t
            m, t = _timed(
                lambda c=art.change: riemann.estimate(
                    pair.loss_fn, pair.post, c, pair.batches, method="measured", loss_post=self.loss_post
                )
            )
            measured.append(m)
            seconds["measured"] += t
            acc, t = _timed(lambda p=art.params: pair.accuracy_fn(p, pair.batches) if pair.accuracy_fn else None)
            accuracy.append(acc)
            seconds["accuracy"] += t
        return Scored(edit, norm, estimates, measured, accuracy, unmoved, seconds)

    def record(self, scored: Scored) -> dict[str, Any]:
        """One edit's record for ``results.json`` (see :func:`record`)."""
        acc_tol = self.accuracy_tolerance["value"] if self.accuracy_tolerance else None
        return record(
            scored,
            seed=self.seed,
            tolerance=self.tolerance["value"],
            accuracy_post=self.accuracy_post,
            accuracy_tolerance=acc_tol,
            low_precision=self.low_precision,
        )


def _built(edit: edits.Edit, delta: PyTree, key: jax.Array | None, grad: PyTree) -> PyTree:
    """The change ``F(ΔW) − ΔW`` that ``edit`` makes from the gradient ``grad`` (unrounded)."""
    return difference(delta, edit(delta, key=key, grad=grad))


def _reads_cross_fit(name: str) -> bool:
    """Whether estimator ``name`` takes a gradient-built edit's cross-fitted first-order term: every
    shared predictor but ``first-order`` itself, which stays the paper's in-sample term."""
    return ESTIMATORS[name].needs not in (None, "gradient")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def record(
    scored: Scored,
    *,
    seed: int,
    tolerance: float,
    accuracy_post: float | None = None,
    accuracy_tolerance: float | None = None,
    low_precision: bool = False,
) -> dict[str, Any]:
    """One edit's record for ``results.json``.

    ``measured`` and each ``estimates`` value are means over the masks they were computed on
    (``measured_seeds``, ``estimates_seeds``); ``identity`` compares each quadrature of Eq. 1 with
    the measurement of the *same* mask on the same test batches (the in-sample identity, with
    the adaptive rule's error and whether the gap is within it, allowing the measurement's own
    float32 resolution ``eps·(|L(W_post)| + |L(W_edit)|)``); classes use the pair's fixed
    ``tolerance``; ``class_accuracy`` classifies the accuracy change (a fall beyond the accuracy
    tolerance is ``decreased``)."""
    edit, m0 = scored.edit, scored.measured[0]
    meas = [m.value for m in scored.measured]
    meas_mean, meas_std = _mean_std(meas)
    est = {n: _mean_std([e.value for e in es])[0] for n, es in scored.estimates.items()}
    # Each estimator is judged against the measurement of the masks it was computed on: shared
    # estimators ran on every mask (the mean), per-edit ones on the first.
    measured_for = {n: _mean_std(meas[: len(es)])[0] for n, es in scored.estimates.items()}
    # The measured change is a difference of two float32 losses: it cannot be resolved more finely
    # than their rounding, so a quadrature's gap is judged against its error plus that resolution.
    resolution = _F32_EPS * (abs(m0.terms["loss_post"]) + abs(m0.terms["loss_edited"]))
    identity = {}
    for n, es in scored.estimates.items():
        e = es[0]
        if ESTIMATORS[n].method.get("method") == "riemann":
            gap = e.value - m0.value
            identity[n] = {
                "estimate": e.value,
                "measured": m0.value,
                "gap": gap,
                "error": e.error,
                "resolution": resolution,
                "converged": e.converged,
                # On 16-bit parameters the path's inner points are rounded to the storage dtype:
                # the integrand is not the derivative of the measured loss, so no bound applies.
                "within_error": None if e.error is None or low_precision else bool(abs(gap) <= e.error + resolution),
            }
    accs = scored.accuracy
    acc_mean = None if accs[0] is None else float(np.mean(accs))
    acc_delta = None if acc_mean is None or accuracy_post is None else acc_mean - accuracy_post
    e0 = {n: es[0] for n, es in scored.estimates.items()}
    # The paper's rule when it ran, else the first estimator that has a per-module breakdown.
    modules_source = next((n for n in ("riemann", *e0) if n in e0 and e0[n].modules), None)
    return {
        "name": edit.name,
        "family": family(edit.name),
        "spec": edit.spec,
        "params": dict(edit.params),
        "paper_class": edit.info.paper_class,
        "key": {"seed": seed, "derived_from": KEY_RULE, "masks": len(meas)} if edit.random else None,
        "estimates": est,
        "estimates_seeds": {n: [e.value for e in es] for n, es in scored.estimates.items()},
        "stderr": {**{n: e.stderr for n, e in e0.items()}, "measured": m0.stderr},
        "terms": {n: e.terms for n, e in e0.items() if "second" in e.terms},  # the quadratic's parts
        "measured": meas_mean,
        "measured_seeds": meas,
        "measured_std": meas_std,
        "measured_for": measured_for,
        "loss_edited": float(np.mean([m.terms["loss_edited"] for m in scored.measured])),
        "identity": identity,
        "accuracy": acc_mean,
        "accuracy_seeds": None if acc_mean is None else [float(a) for a in accs],
        "accuracy_delta": acc_delta,
        "tolerance": tolerance,
        "class": {
            **{n: riemann.classify(v, tolerance) for n, v in est.items()},
            "measured": riemann.classify(meas_mean, tolerance),
        },
        "class_measured_for": {n: riemann.classify(v, tolerance) for n, v in measured_for.items()},
        "class_accuracy": None
        if acc_delta is None or accuracy_tolerance is None
        else riemann.classify(-acc_delta, accuracy_tolerance),
        "auto": _auto_record(scored.estimates),
        "unmoved_fraction": float(np.mean(scored.unmoved)),
        "first_order_test": e0["riemann"].terms.get("first") if "riemann" in e0 else None,
        "low_precision": low_precision,
        "modules": e0[modules_source].modules if modules_source else {},
        "modules_estimator": modules_source,
        "cost": {n: e.cost for n, e in e0.items()} | {"measured": m0.cost},
        "seconds": scored.seconds,
        "change_norm": scored.change_norm,
    }


def _auto_record(estimates: dict[str, list[riemann.Estimate]]) -> dict[str, Any] | None:
    """Per mask, what each ``auto``-like estimator (one whose estimates say their ``source``) did:
    returned the shared prediction or measured, with the validity score that decided it."""
    out = {}
    for name, es in estimates.items():
        if es and "source" in es[0].settings:
            out[name] = {
                "source": [e.settings["source"] for e in es],
                "validity": [e.terms["validity"] for e in es],
                "relative_step": [e.terms["relative_step"] for e in es],
                "alignment": [e.terms.get("alignment") for e in es],
                "model_error": [e.terms["model_error"] for e in es],
                "shared": [e.terms["shared"] for e in es],
                "measured_fraction": float(np.mean([e.settings["source"] == "measured" for e in es])),
            }
    return out or None


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
    seeds: int = 1,
    probes: int = DEFAULT_PROBES,
    estimators: Sequence[str] | None = None,
    calibration: int = split.DEFAULT_CALIBRATION,
    progress: bool = True,
    log: Callable[[str], None] = print,
    store: Store | None = None,
) -> dict[str, Any]:
    """Run the suite on ``pair`` and return its results record.

    The pair is split into ``calibration`` calibration batches and the rest as test batches
    (unless it already is); random edits are scored over ``seeds`` masks. What ``store`` already
    holds (the pair checks, records of edits in ``specs``) is kept, not recomputed; everything new
    is saved to it as soon as it exists.
    """
    specs = list(default_suite() if specs is None else specs)
    parsed = check_specs(specs)  # every spec checked before any heavy work
    store = MemoryStore() if store is None else store
    t0 = time.perf_counter()
    scorer = Scorer(
        pair,
        seed=seed,
        seeds=seeds,
        probes=probes,
        estimators=estimators,
        calibration=calibration,
        progress=progress,
        gradient_edits=[e for e in parsed if e.needs_grad],
    )
    pair = scorer.pair
    checks = store.checks()
    if checks is None:
        checks = pair_checks(pair, scorer.delta, log=log, progress=progress, accuracy_post=scorer.accuracy_post)
        checks |= scorer.calibration_record()
        store.save_checks(checks)
    else:  # a resumed study keeps the tolerances its first edits were classified with
        scorer.keep_tolerances(checks["tolerance"], checks["accuracy_tolerance"])
    done = {k: v for k, v in store.records().items() if k in {e.spec for e in parsed}}
    if done:
        log(f"[{pair.name}] resuming: {len(done)} of {len(parsed)} edits already scored")
    records = []
    with riemann.progress_bar(progress, desc=f"{pair.name} edits", unit="edit", total=len(parsed) - len(done)) as bar:
        for edit in parsed:
            if edit.spec not in done:
                done[edit.spec] = scorer.record(scorer.score(edit))
                store.save_record(done[edit.spec])
                bar.update(1)
            records.append(done[edit.spec])
    shared = scorer.shared_record()
    return {
        "pair": checks,
        "shared": shared,
        "estimators": {n: ESTIMATORS[n].settings for n in scorer.estimators},
        "edits": records,
        "agreement": {name: agreement_of(records, name, shared=shared, seed=seed) for name in scorer.estimators},
        "accuracy_correlation": accuracy_correlation(records, seed=seed),
        "first_order_on_test": first_order_on_test(records, seed=seed),
        "elapsed_s": time.perf_counter() - t0,
    }


def _sign_agreement(pred: np.ndarray, meas: np.ndarray) -> float:
    nonzero = meas != 0
    return float(np.mean(np.sign(pred[nonzero]) == np.sign(meas[nonzero]))) if nonzero.any() else float("nan")


def _sign_agreement_rows(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    nonzero = meas != 0
    count = nonzero.sum(axis=1)
    same = ((np.sign(pred) == np.sign(meas)) & nonzero).sum(axis=1)
    return np.where(count > 0, same / np.maximum(count, 1), np.nan)


def _class_agreement(pc: np.ndarray, mc: np.ndarray) -> float:
    return float(np.mean(pc == mc)) if len(pc) else float("nan")


def metrics(
    pred: Sequence[float], meas: Sequence[float], pc: Sequence[str], mc: Sequence[str], *, seed: int = 0
) -> dict[str, Any]:
    """Spearman, class agreement, sign agreement and median ``|log(|pred|/|meas|)|`` of predictions
    against measurements, each with its bootstrap 95 % interval over edits (``<name>_ci95``)."""
    cols = (np.asarray(pred, np.float64), np.asarray(meas, np.float64), np.asarray(pc), np.asarray(mc))
    # Each statistic of one set of edits, and of many resamples at once (a row each) for its interval.
    fns: dict[str, tuple[Callable[..., float], Callable[..., np.ndarray]]] = {
        "spearman": (lambda p, m, a, b: stats.spearman(p, m), lambda p, m, a, b: stats.spearman_rows(p, m)),
        "class_agreement": (lambda p, m, a, b: _class_agreement(a, b), lambda p, m, a, b: np.mean(a == b, axis=1)),
        "sign_agreement": (lambda p, m, a, b: _sign_agreement(p, m), lambda p, m, a, b: _sign_agreement_rows(p, m)),
        "median_abs_log_ratio": (
            lambda p, m, a, b: stats.median_abs_log_ratio(p, m),
            lambda p, m, a, b: stats.median_abs_log_ratio_rows(p, m),
        ),
    }
    out: dict[str, Any] = {"edits": len(cols[0])}
    for name, (fn, rows) in fns.items():
        out[name] = fn(*cols) if len(cols[0]) else float("nan")
        out[f"{name}_ci95"] = stats.bootstrap_ci(fn, *cols, seed=seed, rows=rows)
    return out


def agreement_of(
    records: list[dict[str, Any]], estimator: str, *, shared: dict[str, Any] | None = None, seed: int = 0
) -> dict[str, Any]:
    """How one estimator agrees with the measured change on the test batches — the measurement of
    the masks it was computed on (every mask for shared estimators, the first for per-edit ones):
    :func:`metrics` overall and per edit family (``by_family``), Pearson, the confusion matrix,
    the edits it misclassifies, for quadratures the in-sample identity (gaps within the stated
    error), and its cost over the suite (passes and seconds)."""
    pred = np.array([r["estimates"][estimator] for r in records])
    meas = np.array([r.get("measured_for", {}).get(estimator, r["measured"]) for r in records])
    pc = [r["class"][estimator] for r in records]
    mc = [r.get("class_measured_for", {}).get(estimator, r["class"]["measured"]) for r in records]
    per_edit = records[0]["cost"][estimator] if records else {}
    once = {}
    seconds = float(sum(r["seconds"].get(estimator, 0.0) for r in records))
    if shared is not None and estimator in shared["estimators"]:
        once = dict(shared["estimators"][estimator]["passes_per_batch"])
        seconds += float(shared["estimators"][estimator]["seconds"])
    fams = [r.get("family", family(r["name"])) for r in records]
    by_family = {}
    for f in dict.fromkeys(fams):
        idx = [i for i, g in enumerate(fams) if g == f]
        by_family[f] = metrics(pred[idx], meas[idx], [pc[i] for i in idx], [mc[i] for i in idx], seed=seed)
    out = {
        **metrics(pred, meas, pc, mc, seed=seed),
        "pearson": stats.pearson(pred, meas),
        "confusion": stats.confusion(pc, mc, riemann.CLASSES),
        "misclassified": [r["spec"] for r, a, b in zip(records, pc, mc) if a != b],
        "by_family": by_family,
        "passes_per_edit_per_batch": per_edit,
        "passes_once_per_batch": once,
        "seconds": seconds,
        "mean_abs_error": float(np.mean(np.abs(pred - meas))) if records else float("nan"),
    }
    autos = [(r.get("auto") or {}).get(estimator) for r in records]
    if records and all(a is not None for a in autos):
        # Over edits, each counted by the share of its masks that were measured.
        out["measured_fraction"] = float(np.mean([a["measured_fraction"] for a in autos]))
        out["measured_edits"] = [r["spec"] for r, a in zip(records, autos) if a["measured_fraction"] > 0]
    ident = [r["identity"][estimator] for r in records if estimator in r.get("identity", {})]
    if ident:
        gaps = np.abs([i["gap"] for i in ident])
        out["identity"] = {
            "median_abs_gap": float(np.median(gaps)),
            "max_abs_gap": float(np.max(gaps)),
        }
        if all(i["error"] is not None for i in ident):
            specs = [r["spec"] for r in records if estimator in r.get("identity", {})]
            out["identity"] |= {
                "within_error": float(np.mean([i["within_error"] for i in ident])),
                "outside_error": [s for s, i in zip(specs, ident) if not i["within_error"]],
                "not_converged": [s for s, i in zip(specs, ident) if not i["converged"]],
            }
    return out


def accuracy_correlation(records: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Any] | None:
    """Spearman correlation between the measured loss change and the accuracy change over the
    edits (negative when loss and accuracy agree: a loss that rises with falling accuracy), with
    its bootstrap 95 % interval; ``None`` when no accuracy was recorded."""
    rows = [(r["measured"], r["accuracy_delta"]) for r in records if r.get("accuracy_delta") is not None]
    if not rows:
        return None
    dl, da = (np.array(c, np.float64) for c in zip(*rows))
    return {
        "spearman": stats.spearman(dl, da),
        "spearman_ci95": stats.bootstrap_ci(stats.spearman, dl, da, seed=seed, rows=stats.spearman_rows),
        "edits": len(rows),
    }


def first_order_on_test(records: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Any] | None:
    """:func:`metrics` of the first-order term computed with the *test* batches' own gradient (the
    paper's left rule has it at its ``t = 0`` node) against the first mask's measurement.

    The ``first-order`` estimator uses the calibration gradient, the quadratures the test batches
    themselves; this isolates how much of their difference is the data and how much the method.
    ``None`` when the paper's rule did not run."""
    rows = [r for r in records if r.get("first_order_test") is not None]
    if not rows:
        return None
    pred = [r["first_order_test"] for r in rows]
    meas = [r["measured_seeds"][0] for r in rows]
    tol = [r["tolerance"] for r in rows]
    pc = [riemann.classify(v, t) for v, t in zip(pred, tol)]
    mc = [riemann.classify(v, t) for v, t in zip(meas, tol)]
    return metrics(pred, meas, pc, mc, seed=seed)
