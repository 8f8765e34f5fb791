"""The sweep's figure for one pair: predicted curves with their spread, measured points on top."""

from __future__ import annotations

from typing import Any

import numpy as np

SHOWN_K = (0.0, -1.0, 0.4)


def pair_figure(r: dict[str, Any]) -> Any:
    """Four panels: DARE (several k) and drop-only over p; DELLA over the density; EXPO over α;
    BitDelta over its multiple."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_d, ax_l, ax_e, ax_b) = plt.subplots(1, 4, figsize=(20, 4.4))
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
    ax_e.plot(a, pred["expo"]["cubic"], color=colors[0], label="predicted (cubic through L(W_pre))")
    ax_e.plot(a, pred["expo"]["quadratic"], ":", color=colors[0], label="predicted (quadratic)")
    ax_e.plot(a, r["expo"]["measured"], "o", color=colors[1], ms=4, label="measured")
    ax_e.axvline(r["expo"]["predicted_best_alpha"], color=colors[0], lw=0.8, ls="--")
    ax_e.axvline(r["expo"]["measured_best_alpha"], color=colors[1], lw=0.8, ls="--")
    ax_e.axhline(0.0, color="0.6", lw=0.6)
    ax_e.set_xlabel("α (W_post + α·ΔW)")
    ax_e.set_ylabel("ΔL")
    ax_e.set_title("EXPO")
    lo, hi = np.min(r["expo"]["measured"]), np.max(r["expo"]["measured"])
    ax_e.set_ylim(lo - 0.2 * (hi - lo + 1e-9), hi + 0.2 * (hi - lo + 1e-9))
    ax_e.legend(fontsize=7)

    m = np.asarray(pred["bitdelta"]["multiple"])
    ax_b.plot(m, pred["bitdelta"]["mean"], color=colors[0], label="predicted (quadratic in m)")
    ax_b.plot(m, r["bitdelta"]["measured"], "o", color=colors[1], ms=4, label="measured")
    ax_b.axvline(r["bitdelta"]["predicted_best_multiple"], color=colors[0], lw=0.8, ls="--")
    ax_b.axvline(r["bitdelta"]["measured_best_multiple"], color=colors[1], lw=0.8, ls="--")
    ax_b.set_xlabel("multiple m of mean |ΔW| (m = 1: BitDelta)")
    ax_b.set_ylabel("ΔL")
    ax_b.set_title("BitDelta")
    lo, hi = np.min(r["bitdelta"]["measured"]), np.max(r["bitdelta"]["measured"])
    ax_b.set_ylim(lo - 0.2 * (hi - lo + 1e-9), hi + 0.2 * (hi - lo + 1e-9))
    ax_b.legend(fontsize=7)
    fig.tight_layout()
    return fig
