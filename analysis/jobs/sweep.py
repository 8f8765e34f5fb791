"""Whole curves of edits predicted from one set of shared passes, and checked at a few measured points.

For each pair (default: the main job's workbench pairs) the sweep computes, on the calibration
batches only, the gradient and Hutchinson diagonal at ``W_post`` and one Hessian-vector product
along ``ΔW`` (:func:`riemann.closed_form.delta_statistics`), and the saturation curves of the diagonal
quadratic along ``ΔW`` and random-sign copies of it (:func:`riemann.saturation`, forward passes), and
from them predicts, with no pass per point:

- DARE's expected ``ΔL`` (through the curves) and the first-order spread over masks on a ``p × k``
  grid (20 × 10 = 200 points), and drop-only over ``p``;
- DELLA's over the density at ``ε = 0.1`` (through the curves);
- EXPO's ``ΔL(α)`` on ``α ∈ [−1, 2]`` (through the curve along ``ΔW``) and its best ``α``;
- BitDelta's ``ΔL`` over its multiple ``m ∈ [0, 3]`` (``ΔW~(m) = x0 + m·x1`` is affine in ``m``, so
  the second-order model is a quadratic in ``m``: three more Hessian-vector products per batch) and
  its best multiple;
- low rank's ``ΔL`` over the fraction of each matrix's rank kept (:func:`riemann.closed_form.lowrank_curve`:
  one SVD per matrix, then every rank from suffix sums, against the gradient and diagonal; through the
  curves by each point's part along ``ΔW``);
- BitDelta's over its magnitude bits ``B = 0 … 8`` (:func:`riemann.closed_form.bitdelta_bits_curve`:
  the edit itself, a pass over the parameters per point, against the gradient and diagonal; through
  the curves likewise);
- DARE's drop rate per module at a fixed budget of kept entries
  (:func:`riemann.closed_form.dare_allocation`), measured against the uniform rate on the same masks.

It then measures, on the test batches, a handful of DARE, drop-only and DELLA points over
``seeds`` masks each (keyed as the main job keys them, so masks nest across ``p``) and every EXPO
and BitDelta grid point and a few low-rank fractions and bit counts (deterministic: one
measurement each), and reports how often the predicted mean lies within two standard errors
of the measured mean, the predicted against the measured best ``α`` and multiple, and the seconds
each part took.
Writes ``sweep.json``, ``sweep.md`` and one ``<pair>-sweep.png`` per pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import riemann
from analysis import files
from analysis.pairs import Pair, split
from analysis.study import suite
from analysis.study.estimators import DEFAULT_SWEEP_SEEDS
from riemann import closed_form, edits

Loader = Callable[[str], Pair]
DEFAULT_SEEDS = DEFAULT_SWEEP_SEEDS
DARE_P = tuple(float(p) for p in np.round(np.append(np.linspace(0.05, 0.95, 19), 0.99), 4))
DARE_K = (-1.0, -0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8)
DELLA_DENSITY = tuple(float(d) for d in np.round(np.linspace(0.2, 0.8, 7), 4))
DELLA_EPSILON = 0.1
EXPO_ALPHA = tuple(float(a) for a in np.round(np.linspace(-1.0, 2.0, 31), 4))
BITDELTA_MULTIPLE = tuple(float(m) for m in np.round(np.linspace(0.0, 3.0, 31), 4))
# The measured points: where the curves bend and where the quadratic model is expected to fail.
MEASURED_DARE = tuple((p, k) for k in (0.0, -1.0) for p in (0.3, 0.7, 0.9, 0.99))
MEASURED_DROP = (0.3, 0.7)
MEASURED_DELLA = (0.3, 0.7)
# Fraction 0 keeps no factor (the edit itself needs at least one): the curve's end, predicted only.
LOWRANK_FRACTION = tuple(float(f) for f in np.round(np.linspace(0.0, 1.0, 21), 4))
BITDELTA_BITS = tuple(range(9))
MEASURED_LOWRANK = (0.1, 0.25, 0.5, 0.75)
MEASURED_BITS = (0, 1, 2, 4, 8)
# Kept fractions at which DARE's per-module allocation is measured against the uniform rate.
ALLOCATION_KEEP = (0.1, 0.3)


def _timed(f: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def _measured(scorer: suite.Scorer, changes: Iterable[Any]) -> dict[str, Any]:
    """The measured ``ΔL`` of each change on the test batches, and their mean, spread and standard
    error (NaN for a single change)."""
    pair = scorer.pair
    v = np.asarray(
        [
            riemann.estimate(
                pair.loss_fn, pair.post, c, pair.batches, method="measured", loss_post=scorer.loss_post
            ).value
            for c in changes
        ]
    )
    std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return {
        "measured_seeds": v.tolist(),
        "measured": float(v.mean()),
        "measured_std": std,
        "measured_se": std / float(np.sqrt(len(v))),
    }


def _measure(scorer: suite.Scorer, spec: str, seeds: int) -> dict[str, Any]:
    """The measured ``ΔL`` of ``spec`` over ``seeds`` masks (one if deterministic)."""
    edit = edits.parse(spec)
    masks = range(seeds if edit.random else 1)
    return {"spec": edit.spec, **_measured(scorer, (scorer.artefact(edit, m).change for m in masks))}


def _measure_edit(scorer: suite.Scorer, edit: Callable[[jax.Array], Any], seeds: int) -> dict[str, Any]:
    """The measured ``ΔL`` of ``edit(key)`` (an edited ``ΔW``) over ``seeds`` masks, keyed as the main
    job keys DARE (:func:`analysis.study.suite.edit_key`), so it shares the uniform rate's masks."""
    from analysis.study import artefact as artefacts

    pair = scorer.pair
    keys = (suite.edit_key(scorer.seed, "dare", m) for m in range(seeds))
    return _measured(scorer, (artefacts.stored(pair.pre, pair.post, scorer.delta, edit(k)).change for k in keys))


def _allocations(scorer: suite.Scorer, curvature: riemann.SharedCurvature, seeds: int) -> list[dict[str, Any]]:
    """DARE's per-module allocation (:func:`riemann.closed_form.dare_allocation`) at each kept
    fraction of :data:`ALLOCATION_KEEP`, measured against the uniform rate on the same masks."""
    rows = []
    for keep in ALLOCATION_KEEP:
        al = closed_form.dare_allocation(curvature, scorer.delta, keep)
        allocated = _measure_edit(scorer, lambda key, a=al: edits.dare(scorer.delta, a.p, key=key), seeds)
        uniform = _measure_edit(scorer, lambda key, q=keep: edits.dare(scorer.delta, 1.0 - q, key=key), seeds)
        diff = np.subtract(allocated["measured_seeds"], uniform["measured_seeds"])  # paired: same masks
        rates = np.array(list(al.p.values()))
        rows.append(
            {
                "keep": keep,
                "p": al.p,
                "p_range": [float(rates.min()), float(rates.max())],
                "predicted": al.predicted,
                "predicted_uniform": al.uniform_predicted,
                "allocated": allocated,
                "uniform": uniform,
                "difference": float(diff.mean()),
                "difference_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                "allocation_better": bool(diff.mean() < 0),
            }
        )
    return rows


def _check(point: dict[str, Any], predicted: float, sd: float) -> dict[str, Any]:
    """The point with its prediction and whether the prediction lies within 2 SE of the measured mean."""
    se = point["measured_se"]
    return {
        **point,
        "predicted": predicted,
        "predicted_sd": sd,
        "within_2se": bool(abs(predicted - point["measured"]) <= 2 * se) if np.isfinite(se) else None,
        "ratio": predicted / point["measured"] if point["measured"] != 0 else float("nan"),
    }


def _bitdelta_line(pair: Pair, delta: Any, batches: Sequence[Any]) -> closed_form.LineQuadratic:
    """BitDelta's ΔL over its multiple ``m``: its change is affine in ``m`` (``F_m = m·F_1`` on the
    edited leaves, ``ΔW`` elsewhere), ``ΔW~(m) = (F_0 − ΔW) + m·(F_1 − F_0)``."""
    f0, f1 = (edits.bitdelta(delta, multiple=m) for m in (0.0, 1.0))
    x0 = jax.tree.map(lambda f, d: f - d, f0, delta)
    x1 = jax.tree.map(lambda a, b: a - b, f1, f0)
    return closed_form.line_quadratic(pair.loss_fn, pair.post, x0, x1, batches)


def sweep_pair(
    pair: Pair,
    *,
    seed: int = 0,
    seeds: int = DEFAULT_SEEDS,
    probes: int = suite.DEFAULT_PROBES,
    calibration: int = split.DEFAULT_CALIBRATION,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Predict the DARE, drop-only, DELLA, EXPO, BitDelta (multiple and bits) and low-rank curves of
    ``pair`` from shared passes on its calibration batches, and measure a few points of each on its
    test batches."""
    t0 = time.perf_counter()
    scorer, setup_s = _timed(
        lambda: suite.Scorer(
            pair, seed=seed, seeds=seeds, probes=probes, estimators=["shared-curvature"], calibration=calibration
        )
    )
    pair = scorer.pair
    cal = pair.calibration
    curvature = scorer.shared.curvature
    loss_pre_cal = float(np.mean(scorer.loss_pre_calibration))
    stats, stats_s = _timed(
        lambda: closed_form.delta_statistics(
            pair.loss_fn, pair.post, scorer.delta, cal, curvature, loss_pre=loss_pre_cal
        )
    )
    line, line_s = _timed(lambda: _bitdelta_line(pair, scorer.delta, cal))
    # How the loss leaves the diagonal quadratic along ΔW and along random-sign copies of it (the
    # main job's curves, on the sweep's quadratic): the random edits' means are read through them.
    sat, sat_s = _timed(
        lambda: riemann.saturation(
            pair.loss_fn,
            pair.post,
            scorer.delta,
            cal,
            lambda x: curvature.estimate(x).terms["second"],
            curvature.grad,
            key=suite.saturation_key(seed),
            held_out=len(pair.batches),
            gradient_steps=None,  # no swept family is built from the gradient
        )
    )
    # What the predictions need, and nothing else the scorer sets up (tolerances, accuracies, the
    # test losses): first calls, so compilation is included.
    shared_parts = {
        "gradient": scorer.gradient_seconds,
        "hutchinson_diagonal": scorer.curvature_seconds,
        "hvp_along_delta": stats_s,
        "bitdelta_line": line_s,
        "saturation_curves": sat_s,
    }
    shared_s = float(sum(shared_parts.values()))

    # --- predictions: no pass per point --------------------------------------------------------
    grid_p, grid_k = np.meshgrid(np.asarray(DARE_P), np.asarray(DARE_K), indexing="ij")
    (mean, sd), dare_s = _timed(lambda: closed_form.dare_moments(stats, grid_p, grid_k, saturation=sat))

    def predict() -> dict[str, Any]:
        # The random edits' means through the saturation curves ("mean"), and the quadratic model's
        # ("quadratic") for comparison.
        dare_quadratic, _ = closed_form.dare_moments(stats, grid_p, grid_k)
        drop = np.asarray(DARE_P)
        drop_mean, drop_sd = closed_form.dare_moments(stats, drop, 0.0, rescale=False, saturation=sat)
        drop_quadratic, _ = closed_form.dare_moments(stats, drop, 0.0, rescale=False)
        # One pass of DELLA's sums per density: its mean through the curves is the noise curve's φ
        # of the quadratic mean (della_moments(..., saturation=sat) reads it the same way).
        della = [closed_form.della_moments(curvature, scorer.delta, d, DELLA_EPSILON) for d in DELLA_DENSITY]
        return {
            "dare": {
                "p": list(DARE_P),
                "k": list(DARE_K),
                "mean": mean.tolist(),
                "quadratic": dare_quadratic.tolist(),
                "sd": sd.tolist(),
            },
            "drop_only": {
                "p": list(DARE_P),
                "mean": drop_mean.tolist(),
                "quadratic": drop_quadratic.tolist(),
                "sd": drop_sd.tolist(),
            },
            "della": {
                "density": list(DELLA_DENSITY),
                "epsilon": DELLA_EPSILON,
                "mean": [sat.noise(m) for m, _ in della],
                "quadratic": [m for m, _ in della],
                "sd": [s for _, s in della],
            },
            "expo": {
                "alpha": list(EXPO_ALPHA),
                # through the curve along ΔW (its even and odd parts); the quadratic model's two versions kept
                "saturated": closed_form.expo_curve(stats, EXPO_ALPHA, saturation=sat).tolist(),
                "cubic": closed_form.expo_curve(stats, EXPO_ALPHA).tolist(),
                "quadratic": closed_form.expo_curve(stats, EXPO_ALPHA, cubic=False).tolist(),
                "best_alpha": closed_form.best_alpha(stats, EXPO_ALPHA, saturation=sat),
                "best_alpha_quadratic": closed_form.best_alpha(stats, EXPO_ALPHA),
            },
            "bitdelta": {
                "multiple": list(BITDELTA_MULTIPLE),
                "mean": line(BITDELTA_MULTIPLE).tolist(),
                "coefficients": [line.c0, line.c1, line.c2],
                "best_multiple": line.best(BITDELTA_MULTIPLE),
            },
        }

    predicted, predict_s = _timed(predict)

    # Low rank and BitDelta's bits: each point's quadratic read through the curves by its part along
    # ΔW ("mean"), as the main job reads a structured edit, and the quadratic model's, from one pass.
    def deterministic(parts: closed_form.CurveParts, x: str, grid: Sequence[Any]) -> dict[str, Any]:
        return {
            x: list(grid),
            "mean": parts.values(sat).tolist(),
            "quadratic": parts.values().tolist(),
            "first": parts.first.tolist(),
            "sd": [0.0] * len(grid),  # deterministic: no spread over masks
        }

    predicted["lowrank"], lowrank_s = _timed(
        lambda: deterministic(
            closed_form.lowrank_parts(curvature, scorer.delta, fractions=LOWRANK_FRACTION),
            "fraction",
            LOWRANK_FRACTION,
        )
    )
    predicted["bitdelta_bits"], bits_s = _timed(
        lambda: deterministic(
            closed_form.bitdelta_bits_parts(curvature, scorer.delta, BITDELTA_BITS), "bits", BITDELTA_BITS
        )
    )
    predict_s += dare_s + lowrank_s + bits_s
    n_predicted = len(DARE_P) * len(DARE_K) + len(DARE_P) + len(DELLA_DENSITY) + len(EXPO_ALPHA)
    n_predicted += len(BITDELTA_MULTIPLE) + len(LOWRANK_FRACTION) + len(BITDELTA_BITS)
    log(f"[{pair.name}] {n_predicted} points predicted in {predict_s:.2f} s after {shared_s:.1f} s of shared passes")

    # --- measurements ----------------------------------------------------------------------------
    # Each measured point, its spec and where its prediction sits on its family's predicted curve.
    planned = [
        ({"family": "dare", "p": p, "k": k}, f"dare:p={p:g},k={k:g}", (DARE_P.index(p), DARE_K.index(k)))
        for p, k in MEASURED_DARE
    ]
    planned += [
        ({"family": "drop_only", "p": p}, f"dare:p={p:g},rescale=false", DARE_P.index(p)) for p in MEASURED_DROP
    ]
    planned += [
        ({"family": "della", "density": d}, f"della:density={d:g},epsilon={DELLA_EPSILON:g}", DELLA_DENSITY.index(d))
        for d in MEASURED_DELLA
    ]
    planned += [
        ({"family": "lowrank", "fraction": f}, f"lowrank:fraction={f:g}", LOWRANK_FRACTION.index(f))
        for f in MEASURED_LOWRANK
    ]
    planned += [
        ({"family": "bitdelta_bits", "bits": b}, f"bitdelta:magnitude_bits={b}", BITDELTA_BITS.index(b))
        for b in MEASURED_BITS
    ]
    points = []
    measure_s = 0.0
    masks = 0
    with riemann.progress_bar(progress, desc=f"{pair.name} measured points", unit="point", total=len(planned)) as bar:
        for fields, spec, at in planned:
            got, t = _timed(lambda s=spec: _measure(scorer, s, seeds))
            measure_s += t
            masks += len(got["measured_seeds"])
            curve = predicted[fields["family"]]
            mean, sd = (float(np.asarray(curve[key])[at]) for key in ("mean", "sd"))
            points.append(fields | _check(got, mean, sd))
            bar.update(1)
    expo_measured, expo_s = _timed(lambda: [_measure(scorer, f"expo:alpha={a:g}", 1)["measured"] for a in EXPO_ALPHA])
    measure_s += expo_s
    masks += len(EXPO_ALPHA)
    bit_measured, bit_s = _timed(
        lambda: [_measure(scorer, f"bitdelta:multiple={m:g}", 1)["measured"] for m in BITDELTA_MULTIPLE]
    )
    measure_s += bit_s
    masks += len(BITDELTA_MULTIPLE)
    bit_best = BITDELTA_MULTIPLE[int(np.argmin(bit_measured))]
    bit_step = BITDELTA_MULTIPLE[1] - BITDELTA_MULTIPLE[0]
    best_i = int(np.argmin(expo_measured))
    measured_best = EXPO_ALPHA[best_i] if expo_measured[best_i] < 0 else 0.0
    step = EXPO_ALPHA[1] - EXPO_ALPHA[0]
    helps = measured_best != 0.0
    allocation, allocation_s = _timed(lambda: _allocations(scorer, curvature, seeds))
    checked = [pt["within_2se"] for pt in points if pt["within_2se"] is not None]
    per_measurement = measure_s / max(masks, 1)
    return {
        "pair": pair.name,
        "split": pair.info.get("split"),
        "seeds": seeds,
        "probes": probes,
        "statistics": {
            "b": stats.b,
            "q": stats.q,
            "s": stats.s,
            "r": stats.r,
            "gain": stats.gain,
            "loss_post": stats.loss_post,
            "data": "calibration",
        },
        "predicted": predicted,
        "saturation": sat.record(),
        "points": points,
        "expo": {
            "alpha": list(EXPO_ALPHA),
            "measured": expo_measured,
            "predicted_best_alpha": predicted["expo"]["best_alpha"],
            "measured_best_alpha": measured_best,
            "some_alpha_helps": helps,
            # A helping α predicted where none helps (or the reverse) counts as a miss.
            "best_within_one_step": bool(abs(predicted["expo"]["best_alpha"] - measured_best) <= step + 1e-9),
        },
        "bitdelta": {
            "multiple": list(BITDELTA_MULTIPLE),
            "measured": bit_measured,
            "predicted_best_multiple": predicted["bitdelta"]["best_multiple"],
            "measured_best_multiple": bit_best,
            "best_within_one_step": bool(abs(predicted["bitdelta"]["best_multiple"] - bit_best) <= bit_step + 1e-9),
        },
        "allocation": allocation,
        "within_2se": {"hits": int(sum(checked)), "of": len(checked)},
        "seconds": {
            "shared": shared_s,
            "shared_parts": shared_parts,
            "shared_passes_per_calibration_batch": {
                "gradient": 5,
                "hvp": probes + 4,
                "forward": 1 + sat.cost["forward"],
            },
            "scorer_setup_other": setup_s - scorer.gradient_seconds - scorer.curvature_seconds,
            "predict": predict_s,
            "predict_dare_grid": dare_s,
            "predict_lowrank": lowrank_s,
            "predict_bitdelta_bits": bits_s,
            "dare_grid_points": len(DARE_P) * len(DARE_K),
            "points_predicted": n_predicted,
            "measure": measure_s,
            "allocation": allocation_s,
            "measurements": masks,
            "per_measurement": per_measurement,
            "ten_measurements": 10 * per_measurement,
        },
        "elapsed_s": time.perf_counter() - t0,
    }


def _quadratic_ratio(r: dict[str, Any], pt: dict[str, Any]) -> str:
    """`` (x)``: the plain quadratic's predicted / measured at a low-rank or bits point; empty when an
    older ``sweep.json`` kept no quadratic, or nothing was measured."""
    family, field = ("lowrank", "fraction") if pt["family"] == "lowrank" else ("bitdelta_bits", "bits")
    curve = r["predicted"][family]
    if "quadratic" not in curve or not pt.get("measured"):
        return ""
    return f" ({curve['quadratic'][curve[field].index(pt[field])] / pt['measured']:.3g})"


def markdown(record: dict[str, Any]) -> str:
    """The sweep's report: per pair, the statistics, the checked points and the timings."""
    lines = [
        "# Closed-form sweeps",
        "",
        f"Seed {record['seed']}; {record['seeds']} masks per measured random point; shared passes on the "
        "calibration batches only, measurements on the test batches. DARE's, drop-only's and DELLA's predictions "
        "are the second-order model's mean over masks read through the pair's saturation curves (E[ΔL] ≈ μ·b + "
        "φ_ΔW(½μ²·s) + O_ΔW(μ) + φ_noise(½v·s): the mean part on the curve along ΔW, even and odd part, the noise "
        "on the curve along random-sign copies, both measured once; the plain quadratic μ·b + ½(μ²·q + v·s) is "
        "kept in sweep.json as 'quadratic'); the ± is the first-order term's spread over masks; EXPO's ΔL(α) is "
        "α·b + φ_ΔW(½α²·s) + O_ΔW(α), the loss measured along ±ΔW up to |α| = 1 (W_pre included) and "
        "extrapolated beyond; "
        "'within 2 SE' compares the predicted mean with the measured mean over masks. Low rank (a fraction of each "
        "matrix's rank kept) and BitDelta's magnitude bits are deterministic: their prediction is "
        "⟨g, X⟩ + φ(½ Σ diag(H)·X²) of the edit's exact change X, the part a·ΔW along ΔW (a = ⟨X, ΔW⟩/‖ΔW‖²) "
        "read on the curve along ΔW and the rest on the noise curve; the plain quadratic is kept as 'quadratic' "
        "and in parentheses below. Each is measured once.",
        "",
    ]
    for r in record["pairs"]:
        st, sec, ex, bd = r["statistics"], r["seconds"], r["expo"], r["bitdelta"]
        m1 = bd["multiple"].index(1.0)
        lines += [
            f"## {r['pair']}",
            "",
            f"- Statistics (calibration): b = ⟨g, ΔW⟩ = {st['b']:+.4g}, q = ⟨ΔW, HΔW⟩ = {st['q']:.4g}, "
            f"s = Σ diag(H)·ΔW² = {st['s']:.4g}, r = Σ g²·ΔW² = {st['r']:.4g}, gain = {st['gain']:.4g}.",
            f"- Time: {sec['points_predicted']} points predicted in {sec['predict']:.3f} s (the "
            f"{sec['dare_grid_points']}-point DARE grid in {1e3 * sec['predict_dare_grid']:.2f} ms; the rest is mostly "
            f"compiling DELLA's ranking) after {sec['shared']:.1f} s of shared passes (first calls, compilation "
            f"included); one warm measurement costs "
            f"{sec['per_measurement']:.3f} s, so 10 cost {sec['ten_measurements']:.2f} s.",
            f"- Predicted mean within 2 SE of the measured mean at {r['within_2se']['hits']} of "
            f"{r['within_2se']['of']} random points.",
            f"- EXPO: predicted best α = {ex['predicted_best_alpha']:g}, "
            f"measured best α = {ex['measured_best_alpha']:g}"
            + f" ({'' if ex['some_alpha_helps'] else 'no α on the grid lowers the loss; '}"
            + f"{'within' if ex['best_within_one_step'] else 'not within'} one grid step).",
            f"- BitDelta: predicted best multiple = {bd['predicted_best_multiple']:g}, measured best = "
            f"{bd['measured_best_multiple']:g} ({'within' if bd['best_within_one_step'] else 'not within'} one grid "
            f"step); at m = 1 (BitDelta itself) predicted {r['predicted']['bitdelta']['mean'][m1]:+.4g}, measured "
            f"{bd['measured'][m1]:+.4g}.",
            f"- Low rank: {len(r['predicted']['lowrank']['fraction'])} fractions of each matrix's rank predicted in "
            f"{sec['predict_lowrank']:.2f} s (one SVD per matrix, then every rank from suffix sums; first call); "
            "predicted / measured "
            + ", ".join(
                f"{pt['ratio']:.3g}{_quadratic_ratio(r, pt)} at {pt['fraction']:g}"
                for pt in r["points"]
                if pt["family"] == "lowrank"
            )
            + ".",
            f"- BitDelta bits: B = 0…{r['predicted']['bitdelta_bits']['bits'][-1]} predicted in "
            f"{sec['predict_bitdelta_bits']:.2f} s (the edit applied once per B, no model pass; first calls); "
            "predicted / measured "
            + ", ".join(
                f"{pt['ratio']:.3g}{_quadratic_ratio(r, pt)} at B = {pt['bits']}"
                for pt in r["points"]
                if pt["family"] == "bitdelta_bits"
            )
            + ".",
            "",
        ]
        if r.get("allocation"):
            lines += [
                "DARE's drop rate per module at a fixed budget (`riemann.closed_form.dare_allocation`: keep ∝ "
                "√(Σ diag(H)·ΔW² per entry), from the shared diagonal) against the uniform rate, on the same masks; "
                "difference = allocated − uniform, paired over masks.",
                "",
                "| kept | rates | predicted allocated / uniform | measured allocated | measured uniform "
                "| difference ± SE |",
                "|---|---|---|---|---|---|",
            ]
            for a in r["allocation"]:
                lo, hi = a["p_range"]
                lines.append(
                    f"| {a['keep']:g} | p {lo:.3g}–{hi:.3g} | {a['predicted']:+.4g} / {a['predicted_uniform']:+.4g} | "
                    f"{a['allocated']['measured']:+.4g} | {a['uniform']['measured']:+.4g} | "
                    f"{a['difference']:+.4g} ± {a['difference_se']:.2g} |"
                )
            lines.append("")
        lines += [
            "| edit | predicted | ± sd | measured mean | ± SE | predicted / measured | within 2 SE |",
            "|---|---|---|---|---|---|---|",
        ]
        for pt in r["points"]:
            ok = "—" if pt["within_2se"] is None else ("yes" if pt["within_2se"] else "no")
            se = "—" if np.isnan(pt["measured_se"]) else f"{pt['measured_se']:.3g}"  # deterministic: one measurement
            lines.append(
                f"| `{pt['spec']}` | {pt['predicted']:+.4g} | {pt['predicted_sd']:.3g} | {pt['measured']:+.4g} | "
                f"{se} | {pt['ratio']:.3g} | {ok} |"
            )
        lines.append("")
    return "\n".join(lines)


def sweep(
    names: Sequence[str],
    load_pair: Loader,
    out: Path,
    *,
    seed: int = 0,
    seeds: int = DEFAULT_SEEDS,
    probes: int = suite.DEFAULT_PROBES,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Sweep every pair of ``names`` and write ``sweep.json``, ``sweep.md`` and the figures into ``out``."""
    if seeds < 2:
        raise ValueError(f"seeds={seeds}; a sweep needs at least 2 masks per random point for a standard error")
    t0 = time.perf_counter()
    results = []
    for name in names:
        log(f"[sweep] {name}")
        results.append(sweep_pair(load_pair(name), seed=seed, seeds=seeds, probes=probes, progress=progress, log=log))
    record = {"seed": seed, "seeds": seeds, "probes": probes, "pairs": results, "elapsed_s": time.perf_counter() - t0}
    import matplotlib.pyplot as plt

    from analysis.reporting import sweep_figures

    files.write_json(out / "sweep.json", record)  # the numbers first: a figure cannot lose them
    files.write_text(out / "sweep.md", markdown(record))
    for r in results:
        fig = sweep_figures.pair_figure(r)
        files.save_figure(fig, out / f"{r['pair'].replace('/', '_')}-sweep.png")
        plt.close(fig)
    return record
