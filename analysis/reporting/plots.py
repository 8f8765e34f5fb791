"""Figures of a suite's results. Each function takes an optional Matplotlib axes and returns
the figure; none selects a backend (set ``MPLBACKEND=Agg`` for headless runs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.study.estimators import ESTIMATORS


def _marker(name: str) -> str:
    return ESTIMATORS[name].marker if name in ESTIMATORS else "x"


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def calibration(results: dict[str, Any], ax: Any = None) -> Any:
    """Predicted vs measured loss change for every edit and estimator of one pair's results
    (``analysis.study.suite.analyse``), with the identity line.

    Axes use a symmetric-log scale so that small competitive edits and large decreased ones are
    both visible.
    """
    fig, ax = _axes(ax, (6.5, 5.5))
    recs = results["edits"]
    meas = np.array([r["measured"] for r in recs])
    for name in results["agreement"]:
        marker = _marker(name)
        pred = np.array([r["estimates"][name] for r in recs])
        # Against the measurement of the masks the estimator ran on (the first, for per-edit ones).
        own = np.array([r.get("measured_for", {}).get(name, r["measured"]) for r in recs])
        rho = results["agreement"][name]["spearman"]
        ax.scatter(own, pred, marker=marker, s=22, alpha=0.75, label=f"{name} (Spearman {rho:.3f})")
    lo, hi = float(np.min(meas)) if len(meas) else 0.0, float(np.max(meas)) if len(meas) else 1.0
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--", label="predicted = measured")
    linthresh = max(1e-4, float(np.percentile(np.abs(meas), 20)) if len(meas) else 1e-3)
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_xlabel("measured ΔL = L(W_edit) − L(W_post)")
    ax.set_ylabel("predicted ΔL")
    ax.set_title(f"{results['pair']['name']}: predictions vs measured loss change")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def line_profile(results: dict[str, Any], ax: Any = None) -> Any:
    """Loss along ``W_pre + t·ΔW``: t = 0 is the pre-trained model, 1 the post-trained one."""
    fig, ax = _axes(ax, (6.0, 4.0))
    prof = results["pair"]["line_profile"]
    ax.plot(prof["t"], prof["loss"], marker=".")
    for t, label in ((0.0, "pre"), (1.0, "post")):
        ax.axvline(t, color="gray", lw=0.8, ls=":")
        ax.annotate(label, (t, max(prof["loss"])), ha="center", va="top", fontsize=8)
    ax.set_xlabel("t  (W_pre + t·ΔW;  t > 1: EXPO extrapolation, t < 1: interpolation)")
    ax.set_ylabel("loss")
    ax.set_title(f"{results['pair']['name']}: loss along the pre→post line")
    ax.grid(alpha=0.3)
    return fig


def confusion(results: dict[str, Any], estimator: str, ax: Any = None) -> Any:
    """Class confusion matrix of one estimator against the measured classes (one pair's results)."""
    import riemann

    fig, ax = _axes(ax, (4.2, 3.8))
    m = np.array(results["agreement"][estimator]["confusion"])
    ax.imshow(m, cmap="Blues", vmin=0)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center")
    ax.set_xticks(range(3), riemann.CLASSES, rotation=20)
    ax.set_yticks(range(3), riemann.CLASSES)
    ax.set_xlabel(f"predicted ({estimator})")
    ax.set_ylabel("measured")
    ax.set_title(f"{estimator}: {results['agreement'][estimator]['class_agreement']:.0%} agree", fontsize=9)
    return fig


def confusions(results: dict[str, Any], axes: Any = None) -> Any:
    """One confusion matrix per estimator, side by side (one pair's results); ``axes``: one per
    estimator, optional."""
    names = list(results["agreement"])
    if axes is None:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4), squeeze=False)
    else:
        axes = np.asarray(axes, dtype=object).reshape(1, -1)
        if axes.shape[1] != len(names):
            raise ValueError(f"confusions needs {len(names)} axes (one per estimator), got {axes.shape[1]}")
        fig = axes[0, 0].figure
    for ax, name in zip(axes[0], names):
        confusion(results, name, ax=ax)
    fig.suptitle(f"{results['pair']['name']}: predicted vs measured class")
    fig.tight_layout()
    return fig


def frontier(results: dict[str, Any], ax: Any = None) -> Any:
    """Cost–accuracy frontier of a run: seconds spent per edit (shared passes amortised over the
    suite) against the Spearman correlation with the measured change, one point per estimator
    and pair with its 95 % bootstrap interval over edits as an error bar, and measuring each edit
    for reference (correlation 1 by definition)."""
    fig, ax = _axes(ax, (6.5, 4.5))
    colors = {}
    for res in results["pairs"]:
        edits = max(len(res["edits"]), 1)
        pair = res["pair"]["name"]
        for name, a in res["agreement"].items():
            line = ax.scatter(
                a["seconds"] / edits,
                a["spearman"],
                marker=_marker(name),
                s=40,
                color=colors.get(name),
                label=name if name not in colors else None,
            )
            colors.setdefault(name, line.get_facecolor()[0])
            ci = a.get("spearman_ci95")
            if ci is not None and all(v is not None and v == v for v in ci):
                x, y = a["seconds"] / edits, a["spearman"]
                ax.errorbar(
                    x,
                    y,
                    yerr=[[max(y - ci[0], 0.0)], [max(ci[1] - y, 0.0)]],
                    fmt="none",
                    ecolor=colors[name],
                    alpha=0.6,
                )
            ax.annotate(
                pair,
                (a["seconds"] / edits, a["spearman"]),
                fontsize=6,
                alpha=0.6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        meas = sum(r["seconds"]["measured"] for r in res["edits"]) / edits
        ax.scatter(meas, 1.0, marker="*", s=80, color="black", label="measured" if res is results["pairs"][0] else None)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per edit (shared passes amortised over the suite)")
    ax.set_ylabel("Spearman with measured ΔL")
    ax.set_title("What each estimator costs and how well it ranks the edits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
