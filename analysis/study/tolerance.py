"""The classification tolerance, fixed from calibration data before any edit is scored.

An edit is *competitive* when its loss change is within the tolerance of zero, *decreased* above
it, *improved* below it (``riemann.classify``). The tolerance is

    tol = max(fraction · |gain|,  t_{(1+level)/2, n_cal − 1} · s / √n_test)

- ``gain = mean L(W_pre) − mean L(W_post)`` over the calibration batches: an edit may give back
  ``fraction`` (5 %) of what post-training gained and still count as competitive;
- ``s``, the standard deviation over the ``n_cal`` calibration batches of the *paired* per-batch
  difference ``L_b(W_ref) − L_b(W_post)``, where ``W_ref = W_post − fraction·ΔW`` steps back along
  the post-training direction by the share the gain part tolerates: the paired noise of a loss
  change at the scale where "competitive" is decided. ``t·s/√n_test`` is the half-width of a
  ``level`` (95 %) Student-t interval for the mean of such a difference over the ``n_test`` test
  batches (``n_cal − 1`` degrees of freedom, because ``s`` is estimated from ``n_cal`` batches).

Every estimator and the measurement are classified with this one number, so a class disagreement
is a disagreement of values, never of tolerances. The same rule on the task accuracy (per-batch
accuracy at ``W_pre``, ``W_post`` and ``W_ref``) gives the accuracy tolerance; there ``gain`` is
negative when post-training raised the accuracy, and only its size counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.study import stats

FRACTION = 0.05
LEVEL = 0.95


def fixed(
    pre: Sequence[float],
    post: Sequence[float],
    reference: Sequence[float],
    *,
    n_test: int,
    fraction: float = FRACTION,
    level: float = LEVEL,
) -> dict[str, Any]:
    """The tolerance from per-calibration-batch values (losses, or accuracies) at ``W_pre``,
    ``W_post`` and the reference ``W_ref = W_post − fraction·ΔW``, for comparisons of means over
    ``n_test`` test batches.

    Returns ``{"value", "gain_part", "noise_part", "gain", "t_quantile", "dof", "n_calibration",
    "n_test", "fraction", "level", "reference"}``; with one calibration batch there is no spread to
    estimate and the noise part is 0 (``dof`` 0).

    Example:
      >>> tol = fixed([2.0, 2.2, 1.8, 2.0], [0.5, 0.6, 0.4, 0.5], [0.6, 0.66, 0.5, 0.58], n_test=8)
      >>> round(tol["gain_part"], 4), round(tol["noise_part"], 4), tol["dof"]
      (0.075, 0.0215, 3)
    """
    pre_a, post_a, ref_a = (np.asarray(v, np.float64) for v in (pre, post, reference))
    if not len(pre_a) == len(post_a) == len(ref_a) or len(post_a) < 1:
        raise ValueError(
            "pre, post and reference need the same, non-zero number of calibration values; "
            f"got {len(pre_a)}, {len(post_a)} and {len(ref_a)}"
        )
    if n_test < 1:
        raise ValueError(f"n_test={n_test}; expected at least one test batch")
    if not 0.0 < level < 1.0 or fraction < 0.0:
        raise ValueError(f"level={level} (expected in (0, 1)), fraction={fraction} (expected ≥ 0)")
    gain = float(pre_a.mean() - post_a.mean())
    dof = len(post_a) - 1
    t = stats.t_quantile((1.0 + level) / 2.0, dof) if dof >= 1 else float("nan")
    noise = t * float(np.std(ref_a - post_a, ddof=1)) / float(np.sqrt(n_test)) if dof >= 1 else 0.0
    gain_part = fraction * abs(gain)
    return {
        "value": max(gain_part, noise),
        "gain_part": gain_part,
        "noise_part": noise,
        "gain": gain,
        "t_quantile": t,
        "dof": dof,
        "n_calibration": len(post_a),
        "n_test": n_test,
        "fraction": fraction,
        "level": level,
        "reference": f"W_post − {fraction:g}·ΔW",
    }
