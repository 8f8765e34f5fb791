"""Figures of ``riemann merge``: the task-interference matrix of one merge, and predicted against
measured ``ΔL`` over many (merge, task) rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no backend chosen here

    return Figure(figsize=(width, height), layout="constrained")


def interference_matrix(merge: dict[str, Any], ax: Any) -> None:
    """Rows: tasks; columns: each donor's term ``⟨ḡ_i, part_j⟩`` (the task's own model:
    ``⟨ḡ_i, part_i − τ_i⟩``), then the predicted (Riemann) and measured totals; signed colour
    scale (red: the loss rises)."""
    tasks = merge["tasks"]
    donors = list(tasks[0]["donors"])
    m = np.array([[t["donors"][d] for d in donors] + [t["estimates"]["riemann"], t["measured"]] for t in tasks])
    lim = float(np.nanmax(np.abs(m))) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(m.shape[1]), [*donors, "predicted", "measured"], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), [t["task"] for t in tasks], fontsize=8)
    ax.axvline(len(donors) - 0.5, color="k", lw=1.5)
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, f"{v:+.3g}", ha="center", va="center", fontsize=7)
    ax.set_title(f"{merge['name']}: ΔL on each task by donor (Riemann sum, C = 5)", fontsize=9)
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="ΔL term")


def merge_figure(merge: dict[str, Any]) -> Any:
    """One merge's interference matrix."""
    tasks = merge["tasks"]
    fig = _figure(2.2 + 1.1 * (len(tasks[0]["donors"]) + 2), 1.6 + 0.6 * len(tasks))
    interference_matrix(merge, fig.add_subplot(1, 1, 1))
    return fig


def suite_figure(merges: Sequence[dict[str, Any]], estimators: Sequence[str], shown: Sequence[int]) -> Any:
    """Predicted against measured ``ΔL`` for each estimator over every (merge, task) row, and the
    interference matrices of the merges ``shown``."""
    fig = _figure(4.2 * max(len(estimators), len(shown)), 8.5)
    axes = fig.subplots(2, max(len(estimators), len(shown)), squeeze=False)
    meas = np.array([t["measured"] for m in merges for t in m["tasks"]])
    for ax, name in zip(axes[0], estimators):
        pred = np.array([t["estimates"][name] for m in merges for t in m["tasks"]])
        ax.scatter(meas, pred, s=12)
        lo, hi = float(min(meas.min(), pred.min())), float(max(meas.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("measured ΔL (test batches)")
        ax.set_ylabel(f"predicted ΔL ({name})")
        ax.set_title(name, fontsize=9)
    for ax in axes[0][len(estimators) :]:
        ax.axis("off")
    for ax, i in zip(axes[1], shown):
        interference_matrix(merges[i], ax)
    for ax in axes[1][len(shown) :]:
        ax.axis("off")
    return fig
