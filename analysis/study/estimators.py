"""The estimators a study can run, in one registry read by the suite, the report, the plots and
the command line alike.

Each entry says what the estimator computes, what it costs, whether its passes are shared by the
whole suite (computed once per pair) or spent per edit, how it is drawn, and how it scores one
edit's change ``ΔW~`` from the pair and the shared quantities. Users add their own with
:func:`register_estimator`. The theory behind each one: ``docs/theory.md``, §2 (Eq. 1), §4 (first
order vs the computed term) and §5 (second order, the Hutchinson diagonal).

This module imports nothing heavy, so that ``riemann --help`` can list the estimators instantly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

DEFAULT_PROBES = 8  # Hutchinson probes per batch for the shared curvature
DEFAULT_SEEDS = 3  # masks per random edit in the main job (measured, and scored by the shared estimators, on each)
DEFAULT_SWEEP_SEEDS = 5  # masks per measured random point of `riemann sweep` (a standard error needs several)

# What the bare `riemann run` computes: the paper's term, the shared predictors and `auto` (with the
# measurement every run makes). The per-edit quadratures and second order cost 3–5× the whole run on
# their own; `--estimators all` adds them.
DEFAULT_ESTIMATORS = ("riemann", "first-order", "shared-curvature", "kfac-saturated", "auto")

if TYPE_CHECKING:
    import riemann
    from analysis.pairs.pair import Pair

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Shared:
    """What is computed once per pair and shared by every edit's estimators: the gradient at
    ``W_post`` (``riemann.shared_curvature(..., probes=0)``, which also holds the per-batch
    ``L(W_post)``) and, when an estimator needs them, the Hutchinson Hessian diagonal, the
    K-FAC factors, the saturation curves (:func:`riemann.saturation`, on the same calibration
    batches: they also hold ``auto``'s error envelopes), the pair's classification tolerance, the
    per-batch ``L(W_post)`` on the test batches and, for a per-edit rule with a node at ``t = 0``,
    the per-test-batch gradients there."""

    pair: Pair
    gradient: riemann.SharedCurvature
    curvature: riemann.SharedCurvature | None = None
    tolerance: float | None = None
    loss_post: Any = None
    # K-FAC / EK-FAC factors of the Linear weights (analysis.study.kfac.Factors), or None with the
    # reason in kfac_note when the pair's model or loss does not allow them.
    kfac: Any = None
    kfac_note: str | None = None
    # The pair's saturation curves along ΔW and random-sign copies (riemann.Saturation), or None
    # when no estimator asked for them.
    saturation: Any = None
    # For the edit being scored, when it is built from the gradient and was cross-fitted: the map
    # from an estimate to the same with its first-order term cross-fitted. Set per edit by the scorer.
    cross_fit: Callable[[riemann.Estimate], riemann.Estimate] | None = None
    # ∇L_b(W_post) and L_b(W_post) on each *test* batch, where every edit's path starts: a per-edit
    # quadrature with a node at t = 0 (the paper's left rule) reads them instead of a pass per edit.
    # None when no such estimator runs or they would not fit (Scorer: HELD_GRADIENT_BYTES).
    start_gradients: Any = None
    start_losses: Any = None

    @functools.cached_property
    def cache(self) -> dict[str, Any]:
        """What is derived from these fields once and reused by every edit (the structured
        curvatures); a :func:`dataclasses.replace` copy starts empty (see :meth:`replace`)."""
        return {}

    def replace(self, **changes: Any) -> Shared:
        """A copy with ``changes``, keeping :attr:`cache` when they leave what it is derived from
        (the gradient, the diagonal, the K-FAC factors) alone."""
        new = dataclasses.replace(self, **changes)
        if not changes.keys() & {"gradient", "curvature", "kfac"}:
            new.cache.update(self.cache)
        return new


@dataclasses.dataclass(frozen=True)
class Estimator:
    """One registered estimator.

    Attributes:
      name: the name used in results, reports and ``--estimators``.
      method: what it computes, recorded in ``results.json``: ``method`` and, for quadratures,
        ``rule``, ``n``, ``mode`` (for per-edit estimators, the keywords of ``riemann.estimate``).
      description: one line for the report.
      cost: the cost model in words, per batch (for the command line and the README).
      marker: the Matplotlib marker of its points.
      needs: ``"gradient"`` (the shared gradient), ``"curvature"`` (the shared Hessian diagonal),
        ``"kfac"`` (K-FAC factors of the Linear weights with the Hessian diagonal for every other
        leaf), ``"saturation"`` (K-FAC's and the saturation curves), ``"trust"`` (those and the
        tolerance: it measures the edits it does not trust) or ``None`` (nothing shared: passes
        are spent per edit).
      score: ``score(shared, change) -> riemann.Estimate`` (with ``edit=`` when ``takes_edit``).
      takes_edit: ``score`` is also given the edit (:class:`riemann.edits.Edit`, or ``None`` for a
        bare change), for what the change alone does not say: how it was made.
    """

    name: str
    method: Mapping[str, Any]
    description: str
    cost: str
    marker: str
    needs: str | None
    score: Callable[..., riemann.Estimate]
    takes_edit: bool = False

    def __call__(self, shared: Shared, change: PyTree, edit: Any = None) -> riemann.Estimate:
        """Score ``change`` (made by ``edit``, when known)."""
        return self.score(shared, change, edit=edit) if self.takes_edit else self.score(shared, change)

    @property
    def shared(self) -> bool:
        """Whether the estimator spends no pass per edit (it scores from shared quantities)."""
        return self.needs is not None

    @property
    def settings(self) -> dict[str, Any]:
        """What ``results.json`` records of it: its method, and ``shared: True`` when shared."""
        return {**self.method, "shared": True} if self.shared else dict(self.method)


ESTIMATORS: dict[str, Estimator] = {}
NEEDS = (None, "gradient", "curvature", "trust", "kfac", "saturation")


def register_estimator(estimator: Estimator) -> Estimator:
    """Add ``estimator`` to :data:`ESTIMATORS`; refuses a name already taken or an unknown ``needs``."""
    if estimator.name in ESTIMATORS:
        raise ValueError(f"an estimator named {estimator.name!r} is already registered")
    if estimator.needs not in NEEDS:
        raise ValueError(
            f"estimator {estimator.name!r}: needs={estimator.needs!r}; expected one of {', '.join(map(repr, NEEDS))}"
        )
    ESTIMATORS[estimator.name] = estimator
    return estimator


def check_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` if every one is registered (and there is at least one), else a ``ValueError``
    listing the unknown and the accepted names. ``["all"]`` is every registered estimator."""
    if list(names) == ["all"]:
        return list(ESTIMATORS)
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        raise ValueError(f"unknown estimator(s) {unknown}; accepted: {', '.join(ESTIMATORS)}")
    return list(names)


def starts_at_post(method: Mapping[str, Any]) -> bool:
    """Whether a per-edit estimator's quadrature has a node at ``t = 0``, where its integrand is the
    gradient at ``W_post`` that every edit shares (the paper's left rule; not Gauss–Legendre's or
    the adaptive rule's nodes)."""
    import numpy as np

    import riemann

    if method.get("method") != "riemann" or method.get("rule", "left") == "gauss-kronrod":
        return False
    nodes, _ = riemann.quadrature(method.get("rule", "left"), method.get("n", 5))
    return bool(np.any(nodes == 0.0))


def per_edit(name: str, description: str, cost: str, marker: str, **method: Any) -> Estimator:
    """An estimator that runs ``riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, **method)``
    for every edit; a rule with a node at ``t = 0`` reads the gradient there from
    :attr:`Shared.start_gradients` when the scorer holds them."""

    def score(shared: Shared, change: PyTree) -> riemann.Estimate:
        import riemann

        p = shared.pair
        known = {}
        if shared.start_gradients is not None and starts_at_post(method):
            known = {"start_gradients": shared.start_gradients, "start_losses": shared.start_losses}
        return riemann.estimate(p.loss_fn, p.post, change, p.batches, **method, **known)

    return Estimator(name, method, description, cost, marker, None, score)


def cross_fitted(est: riemann.Estimate, fit: riemann.CrossFit, held_out: float = 0.0) -> riemann.Estimate:
    """``est`` with its first-order term moved from in-sample to cross-fitted: less ``fit.bias`` (per
    leaf too), so that what ``est`` rounded (a 16-bit edit's stored change) is kept. ``terms`` keep
    the in-sample term (``first_in_sample``) and the cross-fit's standard error for held-out
    batches, ``stderr·√(1 + held_out)`` with ``held_out = n_calibration/n_test`` (``first_stderr``:
    what ``auto`` adds, times its band, to the error)."""
    import numpy as np

    first = float(est.terms["first"])
    value = est.value - fit.bias
    moved = {k: fit.in_sample_modules.get(k, 0.0) - fit.modules.get(k, 0.0) for k in fit.modules}
    return dataclasses.replace(
        est,
        value=value,
        batch_values=np.array([value]),
        modules={k: v - moved.get(k, 0.0) for k, v in est.modules.items()},
        terms={
            **est.terms,
            "first": first - fit.bias,
            "first_in_sample": first,
            "first_stderr": fit.stderr * float(np.sqrt(1.0 + held_out)),
        },
        settings={**est.settings, "first_order": "cross-fitted", "cross_fit_folds": len(fit.folds)},
    )


def _first_order(shared: Shared, change: PyTree) -> riemann.Estimate:
    return shared.gradient.first_order(change)


def _auto(shared: Shared, change: PyTree, edit: Any = None) -> riemann.Estimate:
    """``kfac-saturated``'s prediction where the saturation curves' error envelopes trust it, else
    measured. An edit built from the calibration gradient (``needs_grad``: the biased ΔW·∇L
    split) was selected by that gradient, so the in-sample first-order term is biased toward it
    (the winner's curse), in a way no envelope measured along ΔW or noise can see: it is judged with
    its cross-fitted first-order term, whose standard error (× the band) joins the envelope, when
    the scorer made one (:attr:`Shared.cross_fit`), and else always measured."""
    import riemann

    if shared.saturation is None or shared.tolerance is None:
        raise ValueError("the auto estimator needs the saturation curves and the tolerance; none were computed")
    p = shared.pair
    built_from_gradient = edit is not None and edit.needs_grad
    finish = shared.cross_fit if built_from_gradient and shared.cross_fit is not None else (lambda est: est)
    if built_from_gradient and shared.cross_fit is None:
        predicted = auto_surrogate(shared)(change, edit)
        m = riemann.estimate(p.loss_fn, p.post, change, p.batches, method="measured", loss_post=shared.loss_post)
        placed = {k: predicted.terms[k] for k in ("relative_step", "alignment")}
        info = {"validity": float("inf"), **placed, "model_error": float("inf")}
        return dataclasses.replace(
            m,
            method="auto",
            terms={**m.terms, **info, "noise": False, "shared": predicted.value},
            settings={
                **m.settings,
                "source": "measured",
                "tolerance": float(shared.tolerance),
                "reason": "built from the calibration gradient",
            },
        )
    return riemann.auto_estimate(
        None,
        shared.saturation,
        p.loss_fn,
        p.post,
        change,
        p.batches,
        tolerance=shared.tolerance,
        loss_post=shared.loss_post,
        surrogate=lambda c: finish(_saturated(shared, c, edit)),
        noise=edit is not None and edit.noise,
    )


def auto_surrogate(shared: Shared) -> Callable[..., riemann.Estimate]:
    """The shared prediction ``auto`` judges and returns: ``kfac-saturated``'s (K-FAC's quadratic,
    or the diagonal one where the pair has no factors, through the saturation curves), as
    ``surrogate(change, edit=None)``."""
    return lambda change, edit=None: _saturated(shared, change, edit)


def _shared_curvature(shared: Shared, change: PyTree) -> riemann.Estimate:
    if shared.curvature is None:
        raise ValueError("the shared-curvature estimator needs the Hutchinson diagonal; none was computed")
    return shared.curvature.estimate(change)


register_estimator(
    per_edit(
        "riemann",
        "the paper's computed Eq. 1 term: left rule, C = 5, gradients inside the segment (the first, at W_post, "
        "computed once for the suite where the per-batch gradients fit in 1 GiB)",
        "4 gradients per batch per edit and 1 per batch once per pair (the first node, at W_post); "
        "5 per edit where the per-batch gradients would not fit in 1 GiB",
        "o",
        method="riemann",
        rule="left",
        n=5,
    )
)
register_estimator(
    Estimator(
        "first-order",
        {"method": "first-order"},
        "⟨∇L(W_post), ΔW~⟩ alone — what the zero-expectation argument is about (gradient shared by the suite)",
        "1 gradient per batch, once per pair",
        "s",
        "gradient",
        _first_order,
    )
)
register_estimator(
    Estimator(
        "shared-curvature",
        {"method": "shared-curvature"},
        "first order + ½·Σ diag(H)·ΔW~², diag(H) by Hutchinson probes at W_post, computed once for the suite",
        "probes HVPs per batch, once per pair",
        "v",
        "curvature",
        _shared_curvature,
    )
)


def _structured_curvature(shared: Shared, which: str) -> Any:
    """The pair's :class:`riemann.kfac.StructuredCurvature` for ``which`` (``"kfac"``, ``"ekfac"``):
    the factors, and for every other leaf the sampled Fisher's diagonal collected with them (the
    Hutchinson Hessian diagonal where the pair has no factors). Built once per :class:`Shared`."""
    cache = shared.cache
    if which in cache:
        return cache[which]
    import jax

    import riemann
    from riemann.kfac import StructuredCurvature

    if shared.curvature is None:
        raise ValueError(f"the {which} estimator needs the Hutchinson diagonal (its fallback); none was computed")
    f = shared.kfac
    factors = {} if f is None else (f.kronecker if which == "kfac" else f.eigen)
    if f is not None and not factors:
        raise ValueError(f"the {which} estimator needs its factors; the shared K-FAC collection did not make them")
    diagonal = shared.curvature.diagonal
    if f is not None and f.diagonal:
        leaves, treedef = jax.tree_util.tree_flatten(diagonal)
        names = riemann.leaf_names(diagonal)
        diagonal = treedef.unflatten(
            [f.diagonal[n].astype(x.dtype) if n in f.diagonal else x for n, x in zip(names, leaves)]
        )
    settings = {"factored": f is not None, "layers": len(factors), "probes": shared.curvature.probes}
    if f is None:
        settings["note"] = shared.kfac_note
    else:
        settings |= {k: f.info[k] for k in ("kind", "fisher", "draws")}
    cache[which] = StructuredCurvature(
        grad=shared.gradient.grad, factors=factors, diagonal=diagonal, name=which, settings=settings
    )
    return cache[which]


def _structured(which: str) -> Callable[[Shared, PyTree], riemann.Estimate]:
    def score(shared: Shared, change: PyTree) -> riemann.Estimate:
        return _structured_curvature(shared, which).estimate(change)

    return score


register_estimator(
    per_edit(
        "second-order",
        "first order + ½⟨ΔW~, HΔW~⟩, one Hessian-vector product per edit",
        "1 HVP per batch per edit",
        "^",
        method="second-order",
    )
)
# Its per-module terms are not reported (the paper's rule supplies them), so forward-mode products
# serve: the same value without a gradient accumulator.
register_estimator(
    per_edit(
        "gauss-legendre",
        "Gauss–Legendre quadrature of the same integral, 8 nodes",
        "8 jvps per batch per edit",
        "D",
        method="riemann",
        rule="gauss-legendre",
        n=8,
        mode="forward",
    )
)
# The most accurate per-edit estimator: it states its own error, and says when it did not meet it.
register_estimator(
    per_edit(
        "gauss-kronrod",
        "adaptive Gauss–Kronrod 7/15 quadrature of the same integral, bisecting the worst panel until its "
        "stated error is within 1 % of the value (at most 105 evaluations per batch); reports the error and "
        "whether it converged",
        "15–105 jvps per batch per edit (15 per panel)",
        "P",
        method="riemann",
        rule="gauss-kronrod",
        rtol=1e-2,
        max_evaluations=105,
        mode="forward",
    )
)
register_estimator(
    Estimator(
        "auto",
        {"method": "auto"},
        "the kfac-saturated prediction where its validity score (that predictor's error at this step length "
        "and alignment, measured once along ΔW, random-sign copies and the gradient-sign copy with a "
        "band covering what 2 known standard errors would (a Student-t multiple of the estimated one), over the "
        "distance to a class boundary) is below 1; else measured. An edit built from the gradient is judged with its "
        "cross-fitted first-order term, whose standard error joins the envelope",
        "kfac-saturated's passes, once per pair; 1 forward per batch per edit it measures",
        "*",
        "trust",
        _auto,
        takes_edit=True,
    )
)
# Run when named (or with all): the Gauss–Newton quadratic with Kronecker-factored blocks for every Linear
# weight, the Hutchinson diagonal elsewhere (analysis.study.kfac; riemann.kfac).
register_estimator(
    Estimator(
        "kfac",
        {"method": "kfac"},
        "first order + ½⟨ΔW~, GΔW~⟩ with G ≈ A ⊗ S (K-FAC, sampled Fisher) per Linear weight, the Fisher "
        "diagonal elsewhere (diag(H) where the pair has no factors)",
        "2 gradients per batch (the top class and a sampled label) + the diagonal's probes, once per pair",
        "<",
        "kfac",
        _structured("kfac"),
    )
)
register_estimator(
    Estimator(
        "ekfac",
        {"method": "ekfac"},
        "first order + ½ Σ λ·(Q_Sᵀ ΔW~ Q_A)² (EK-FAC: K-FAC's eigenbasis, diagonal re-fitted per example) per "
        "Linear weight, the Fisher diagonal elsewhere",
        "4 gradients per batch (K-FAC's, twice) + the diagonal's probes, once per pair",
        ">",
        "kfac",
        _structured("ekfac"),
    )
)


def _saturated(shared: Shared, change: PyTree, edit: Any = None) -> riemann.Estimate:
    sat = shared.saturation
    curvature = _structured_curvature(shared, "kfac")
    if sat is None:
        est = curvature.estimate(change)
        return dataclasses.replace(
            est, method="kfac-saturated", settings={**est.settings, "saturated": False, "note": "no saturation curves"}
        )
    rho, cos = sat.place(change)
    # An edit that is independent per-parameter noise across ΔW (DARE, DELLA) has only a chance
    # part along S⊥, which the random-sign copies' curve already holds on average.
    b = 0.0 if edit is not None and edit.noise else sat.place_gradient(change)
    est = curvature.estimate(change, saturate=lambda q: sat.phi(q, cos * rho, b))
    return dataclasses.replace(
        est,
        method="kfac-saturated",
        terms={**est.terms, "relative_step": rho, "alignment": cos, "gradient_part": b},
        settings={**est.settings, "saturated": True, "saturation_probes": sat.noise.directions},
    )


# The shared predictor the main job leads with: K-FAC's quadratic, its part along ΔW read through how
# the loss actually grows along ΔW, its part along the gradient-sign copy of ΔW through how it grows
# there, and the rest through how it grows along noise (riemann.saturation).
register_estimator(
    Estimator(
        "kfac-saturated",
        {"method": "kfac-saturated"},
        "first order + φ(½⟨ΔW~, GΔW~⟩): K-FAC's quadratic (Fisher diagonal elsewhere) through the pair's "
        "saturation curves φ — the measured even part of the loss along ΔW, along random-sign copies of it and "
        "along its gradient-sign copy, and the odd part along ΔW, each part of the "
        "change read on its own curve; for an edit built from the gradient, the first order cross-fitted",
        "K-FAC's 2 gradients + 113 forwards per batch + the diagonal's probes, once per pair (1 gradient more when "
        "the suite has an edit built from the gradient)",
        "X",
        "saturation",
        _saturated,
        takes_edit=True,
    )
)
