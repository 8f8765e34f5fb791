"""The sweep's figure for one pair: predicted curves with their spread, measured points on top."""

from __future__ import annotations

from typing import Any

import numpy as np

SHOWN_K = (0.0, -1.0, 0.4)


def _measured_line(ax: Any, x: np.ndarray, measured: list[float], best_pred: float, best_meas: float, colors) -> None:
    """Measured points over a predicted curve, both best points marked, the view fitted to the measurements
    (a quadratic prediction far off the grid's ends would flatten them)."""
    ax.plot(x, measured, "o", color=colors[1], ms=4, label="measured")
    ax.axvline(best_pred, color=colors[0], lw=0.8, ls="--")
    ax.axvline(best_meas, color=colors[1], lw=0.8, ls="--")
    lo, hi = float(np.min(measured)), float(np.max(measured))
    pad = 0.2 * (hi - lo + 1e-9)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel("ΔL")
    ax.legend(fontsize=7)


def _deterministic(ax: Any, r: dict[str, Any], family: str, x: str, colors) -> None:
    """A deterministic family's predicted curve (and its first-order part) with its measured points."""
    curve = r["predicted"][family]
    if "quadratic" in curve:  # sweeps written before these were read through the curves have only the quadratic
        ax.plot(curve[x], curve["mean"], color=colors[0], label="predicted (diagonal quadratic through the curves)")
        ax.plot(curve[x], curve["quadratic"], "--", color=colors[0], lw=0.8, label="gradient + Hessian diagonal")
    else:
        ax.plot(curve[x], curve["mean"], color=colors[0], label="predicted (gradient + Hessian diagonal)")
    ax.plot(curve[x], curve["first"], ":", color=colors[0], label="first-order part")
    pts = [pt for pt in r["points"] if pt["family"] == family]
    ax.plot([pt[x] for pt in pts], [pt["measured"] for pt in pts], "o", color=colors[1], ms=5, label="measured")
    ax.axhline(0.0, color="0.6", lw=0.6)
    ax.set_yscale("symlog", linthresh=1e-3)  # measured and predicted can differ by orders of magnitude
    ax.set_ylabel("ΔL")
    ax.legend(fontsize=7)


def pair_figure(r: dict[str, Any]) -> Any:
    """Six panels: DARE (several k) and drop-only over p; DELLA over the density; EXPO over α;
    BitDelta over its multiple; low rank over the fraction of rank kept; BitDelta over its magnitude bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((ax_d, ax_l, ax_e), (ax_b, ax_r, ax_q)) = plt.subplots(2, 3, figsize=(16, 9))
    pred = r["predicted"]
    p = np.asarray(pred["dare"]["p"])
    mean, sd = np.asarray(pred["dare"]["mean"]), np.asarray(pred["dare"]["sd"])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, k in zip(colors, SHOWN_K):
        j = pred["dare"]["k"].index(k)
        ax_d.plot(p, mean[:, j], color=c, label=f"DARE k={k:g} (predicted)")
        ax_d.fill_between(p, mean[:, j] - sd[:, j], mean[:, j] + sd[:, j], color=c, alpha=0.15)
        pts = [pt for pt in r["points"] if pt["family"] == "dare" and pt["k"] == k]
        if pts:
            ax_d.errorbar(
                [pt["p"] for pt in pts],
                [pt["measured"] for pt in pts],
                yerr=[2 * pt["measured_se"] for pt in pts],
                fmt="o",
                color=c,
                capsize=3,
            )
    c = colors[len(SHOWN_K) % len(colors)]
    dm, ds = np.asarray(pred["drop_only"]["mean"]), np.asarray(pred["drop_only"]["sd"])
    ax_d.plot(p, dm, "--", color=c, label="drop-only (predicted)")
    ax_d.fill_between(p, dm - ds, dm + ds, color=c, alpha=0.1)
    pts = [pt for pt in r["points"] if pt["family"] == "drop_only"]
    ax_d.errorbar(
        [pt["p"] for pt in pts], [pt["measured"] for pt in pts], yerr=[2 * pt["measured_se"] for pt in pts],
        fmt="s", color=c, capsize=3,
    )  # fmt: skip
    ax_d.set_yscale("symlog", linthresh=1e-3)
    ax_d.set_xlabel("drop probability p")
    ax_d.set_ylabel("ΔL (points: measured mean ± 2 SE)")
    ax_d.set_title(f"{r['pair']}: DARE")
    ax_d.legend(fontsize=7)

    d = np.asarray(pred["della"]["density"])
    lm, ls = np.asarray(pred["della"]["mean"]), np.asarray(pred["della"]["sd"])
    ax_l.plot(d, lm, color=colors[0], label=f"DELLA ε={pred['della']['epsilon']:g} (predicted)")
    ax_l.fill_between(d, lm - ls, lm + ls, color=colors[0], alpha=0.15)
    pts = [pt for pt in r["points"] if pt["family"] == "della"]
    ax_l.errorbar(
        [pt["density"] for pt in pts], [pt["measured"] for pt in pts], yerr=[2 * pt["measured_se"] for pt in pts],
        fmt="o", color=colors[0], capsize=3, label="measured",
    )  # fmt: skip
    ax_l.set_xlabel("density (kept fraction)")
    ax_l.set_ylabel("ΔL")
    ax_l.set_title("DELLA")
    ax_l.legend(fontsize=7)

    a = np.asarray(pred["expo"]["alpha"])
    if "saturated" in pred["expo"]:  # sweeps written before the saturation curves have only the quadratic
        ax_e.plot(a, pred["expo"]["saturated"], color=colors[0], label="predicted (through the curve along ΔW)")
        ax_e.plot(a, pred["expo"]["cubic"], "--", color=colors[0], lw=0.8, label="quadratic, cubic through L(W_pre)")
    else:
        ax_e.plot(a, pred["expo"]["cubic"], color=colors[0], label="predicted (cubic through L(W_pre))")
    ax_e.plot(a, pred["expo"]["quadratic"], ":", color=colors[0], label="predicted (quadratic)")
    ax_e.axhline(0.0, color="0.6", lw=0.6)
    ex = r["expo"]
    _measured_line(ax_e, a, ex["measured"], ex["predicted_best_alpha"], ex["measured_best_alpha"], colors)
    ax_e.set_xlabel("α (W_post + α·ΔW)")
    ax_e.set_title("EXPO")

    m = np.asarray(pred["bitdelta"]["multiple"])
    ax_b.plot(m, pred["bitdelta"]["mean"], color=colors[0], label="predicted (quadratic in m)")
    bd = r["bitdelta"]
    _measured_line(ax_b, m, bd["measured"], bd["predicted_best_multiple"], bd["measured_best_multiple"], colors)
    ax_b.set_xlabel("multiple m of mean |ΔW| (m = 1: BitDelta)")
    ax_b.set_title("BitDelta")

    _deterministic(ax_r, r, "lowrank", "fraction", colors)
    ax_r.set_xlabel("fraction of each matrix's rank kept (1: ΔW itself)")
    ax_r.set_title("low rank (truncated SVD)")
    _deterministic(ax_q, r, "bitdelta_bits", "bits", colors)
    ax_q.set_xlabel("magnitude bits B (2^B blocks of |ΔW|; B = 0: BitDelta)")
    ax_q.set_title("BitDelta, multi-bit magnitudes")
    fig.tight_layout()
    return fig
