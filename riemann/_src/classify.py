"""The paper's three classes of delta edits, and a rule for the tolerance that separates them.

Tang et al. (2024, §3) read the sign of the approximation term: > 0 predicts a worse model
(*decreased*), ≈ 0 a model as good as the post-trained one (*competitive*), < 0 a better one
(*improved*; ``docs/theory.md``, §2). "≈ 0" needs a tolerance; the paper gives none. :func:`choose_tolerance` derives
one from the data:

    tolerance = max(fraction · |L(W_post) − L(W_pre)|,  z · stderr,  floor)

- ``fraction · gain``: an edit is competitive when it gives back at most ``fraction``
  (default 5 %) of what post-training gained on this loss — the scale on which "as good as the
  post-trained model" is meaningful, and independent of the loss's units.
- ``z · stderr``: a change within ``z`` (default 2) paired standard errors of zero across the
  evaluation batches cannot be told apart from zero with this data.
- ``floor``: an absolute minimum, for example float32 round-off.
"""

from __future__ import annotations

import math

CLASSES: tuple[str, ...] = ("competitive", "decreased", "improved")


def classify(value: float, tolerance: float) -> str:
    """Class of an edit from its (estimated or measured) loss change.

    ``"decreased"`` if ``value > tolerance`` (the loss rises: performance decreases),
    ``"improved"`` if ``value < −tolerance``, else ``"competitive"``.

    Example:
      >>> classify(0.3, 0.1), classify(-0.05, 0.1), classify(-0.3, 0.1)
      ('decreased', 'competitive', 'improved')
    """
    tolerance = float(tolerance)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    value = float(value)
    if math.isnan(value):
        raise ValueError("value is NaN; cannot classify a non-finite loss change")
    if value > tolerance:
        return "decreased"
    if value < -tolerance:
        return "improved"
    return "competitive"


def choose_tolerance(
    *,
    gain: float | None = None,
    stderr: float | None = None,
    fraction: float = 0.05,
    z: float = 2.0,
    floor: float = 0.0,
) -> float:
    """Tolerance for :func:`classify`: ``max(fraction·|gain|, z·stderr, floor)``.

    Args:
      gain: the post-training gain ``L(W_pre) − L(W_post)`` on the same loss and data (its sign
        is ignored). ``None`` leaves out that term.
      stderr: the paired standard error of the measured (or estimated) change across batches.
        ``None`` or NaN (a single batch) leaves out that term.
      fraction: share of the gain an edit may give back and still count as competitive.
      z: how many standard errors count as indistinguishable from zero.
      floor: absolute minimum tolerance.

    Example:
      >>> choose_tolerance(gain=-1.2, stderr=0.01)   # max(0.05·1.2, 2·0.01)
      0.06
      >>> choose_tolerance(gain=0.1, stderr=0.01)    # noise dominates: 2·0.01
      0.02
    """
    for name, v in (("fraction", fraction), ("z", z), ("floor", floor)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if gain is None and (stderr is None or math.isnan(stderr)) and floor == 0.0:
        raise ValueError("choose_tolerance needs gain, a finite stderr, or floor > 0")
    terms = [floor]
    if gain is not None:
        if not math.isfinite(gain):
            raise ValueError(f"gain must be finite, got {gain}")
        terms.append(fraction * abs(gain))
    if stderr is not None and not math.isnan(stderr):
        if stderr < 0 or not math.isfinite(stderr):
            raise ValueError(f"stderr must be a finite number >= 0, got {stderr}")
        terms.append(z * stderr)
    return float(round(max(terms), 15))
