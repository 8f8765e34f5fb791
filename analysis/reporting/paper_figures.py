"""Figures of the reproductions (``analysis.jobs.reproduce``). Each takes an experiment record and,
optionally, the axes to draw on (an array shaped rows × panels, e.g. from ``plt.subplots``), and
returns the Matplotlib figure; none selects a backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from analysis.study.claims import param


def _grid(nrows: int, ncols: int, w: float = 4.0, h: float = 3.2, axes: Any = None) -> tuple[Any, Any]:
    if axes is not None:
        axes = np.asarray(axes, dtype=object)
        if axes.size != nrows * ncols:
            raise ValueError(f"this figure needs {nrows} × {ncols} axes, got {axes.size}")
        axes = axes.reshape(nrows, ncols)
        return axes[0, 0].figure, axes
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return fig, axes


def dare_grid(record: dict[str, Any], axes: Any = None) -> Any:
    """Per pair: accuracy, measured ΔL and the term over p, one line per k (Fig. 1/2)."""
    pairs = record["pairs"]
    fig, axes = _grid(len(pairs), 3, axes=axes)
    for row, res in zip(axes, pairs):
        ks = sorted({param(r, "k") for r in res["edits"]})
        for k in ks:
            rs = sorted((r for r in res["edits"] if param(r, "k") == k), key=lambda r: param(r, "p"))
            ps = [param(r, "p") for r in rs]
            row[0].plot(ps, [r["accuracy"] for r in rs], marker=".", label=f"k = {k:g}")
            row[1].plot(ps, [r["measured"] for r in rs], marker=".", label=f"k = {k:g}")
            row[2].plot(ps, [r["estimates"]["riemann"] for r in rs], marker=".", label=f"k = {k:g}")
        row[0].axhline(res["accuracy_post"], color="gray", ls="--", lw=0.8)
        for ax, what in zip(row, (res["accuracy_name"], "measured ΔL", "term (left, C = 5)")):
            ax.set_title(f"{res['pair']}: {what}", fontsize=9)
            ax.set_xlabel("drop rate p")
            ax.grid(alpha=0.3)
        row[1].set_yscale("symlog", linthresh=1e-2)
        row[2].set_yscale("symlog", linthresh=1e-2)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def table1(record: dict[str, Any], axes: Any = None) -> Any:
    """Accuracy and measured ΔL over k for the three rescaling variants (Table 1)."""
    res = record["pairs"][0]
    fig, axes = _grid(1, 3, axes=axes)
    labels = {"dare": "Random (p = 0.5)", "biased_sign": "Biased ΔW", "biased_product": "Biased ΔW·∇L"}
    for variant, label in labels.items():
        rs = [r for r in res["edits"] if r["name"] == variant]
        ks = [param(r, "k") for r in rs]
        axes[0, 0].plot(ks, [r["accuracy"] for r in rs], marker="o", label=label)
        axes[0, 1].plot(ks, [r["measured"] for r in rs], marker="o", label=label)
        axes[0, 2].plot(
            ks, [r["estimates"]["first-order"] for r in rs], marker="o", ls=":", label=f"{label}, first order"
        )
        axes[0, 2].plot(ks, [r["estimates"]["riemann"] for r in rs], marker="s", label=f"{label}, term")
    axes[0, 0].axhline(res["accuracy_post"], color="gray", ls="--", lw=0.8)
    for ax, what in zip(axes[0], (res["accuracy_name"], "measured ΔL", "predicted ΔL")):
        ax.set_title(f"{res['pair']}: {what}", fontsize=9)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0, 1].set_yscale("symlog", linthresh=1e-2)
    axes[0, 2].set_yscale("symlog", linthresh=1e-2)
    axes[0, 0].legend(fontsize=7)
    axes[0, 2].legend(fontsize=6)
    fig.tight_layout()
    return fig


def module_boxes(record: dict[str, Any], axes: Any = None) -> Any:
    """Box plots of the per-module terms of each edit (Fig. 3)."""
    pairs = record["pairs"]
    fig, axes = _grid(len(pairs), 1, w=11.0, h=3.6, axes=axes)
    for ax, res in zip(axes[:, 0], pairs):
        data = [np.array(list(r["modules"].values())) for r in res["edits"]]
        ax.boxplot(data, tick_labels=[r["spec"] for r in res["edits"]], showfliers=True, flierprops={"markersize": 2})
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_ylabel("per-module term")
        ax.set_title(f"{res['pair']}: per-module approximation terms", fontsize=9)
        ax.tick_params(axis="x", labelrotation=35, labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _lines(
    record: dict[str, Any],
    x: Callable[[dict[str, Any]], float],
    group: Callable[[dict[str, Any]], str],
    xlabel: str,
    ys: tuple[str, ...],
    axes: Any = None,
) -> Any:
    pairs = record["pairs"]
    fig, axes = _grid(len(pairs), len(ys), axes=axes)
    for row, res in zip(axes, pairs):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in res["edits"]:
            groups.setdefault(group(r), []).append(r)
        for g, rs in groups.items():
            rs = sorted(rs, key=x)
            for ax, y in zip(row, ys):
                vals = [
                    r["accuracy"] if y == "accuracy" else r["measured"] if y == "measured" else r["estimates"][y]
                    for r in rs
                ]
                ax.plot([x(r) for r in rs], vals, marker=".", label=g or None)
        for ax, y in zip(row, ys):
            name = {
                "accuracy": res["accuracy_name"],
                "measured": "measured ΔL",
                "riemann": "term (left, C = 5)",
                "first-order": "first-order term",
            }[y]
            ax.set_title(f"{res['pair']}: {name}", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if y == "accuracy" and res["accuracy_post"] is not None:
                ax.axhline(res["accuracy_post"], color="gray", ls="--", lw=0.8)
            if y != "accuracy":
                ax.axhline(0.0, color="gray", lw=0.6)
        if len(groups) > 1:
            row[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


FIGURES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "fig1": dare_grid,
    "fig2": dare_grid,
    "table1": table1,
    "fig3": module_boxes,
    "fig4": lambda rec, axes=None: _lines(
        rec,
        lambda r: param(r, "magnitude_bits"),
        lambda r: "",
        "magnitude bits",
        ("accuracy", "measured", "riemann"),
        axes,
    ),
    "fig5": lambda rec, axes=None: _lines(
        rec,
        lambda r: param(r, "multiple"),
        lambda r: str(param(r, "magnitudes")),
        "multiple m of mean |ΔW|",
        ("accuracy", "measured", "riemann"),
        axes,
    ),
    "fig6": lambda rec, axes=None: _lines(
        rec, lambda r: param(r, "alpha"), lambda r: "", "α", ("riemann", "measured", "accuracy"), axes
    ),
    "fig7": lambda rec, axes=None: _lines(
        rec,
        lambda r: param(r, "alpha"),
        lambda r: "",
        "α (< 0 interpolation, > 0 extrapolation)",
        ("measured", "accuracy", "first-order"),
        axes,
    ),
}
