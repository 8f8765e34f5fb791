"""Closed forms: an edit family's expected loss change predicted for every parameter value from a
few shared statistics, with no forward or backward pass per point.

- :func:`delta_statistics` → :class:`DeltaStatistics`: ``b = ⟨g, ΔW⟩``, ``q = ⟨ΔW, HΔW⟩``,
  ``s = Σ diag(H)·ΔW²``, ``r = Σ g²·ΔW²`` and the gain, from the shared gradient and Hutchinson
  diagonal and one Hessian-vector product per batch.
- :func:`dare_moments` (DARE, its k-extension, drop-only), :func:`della_moments` (DELLA's
  MAGPRUNE): the mean ΔL over masks and the first-order spread; :func:`dare_factors`;
  :func:`dare_allocation`: DARE's drop rate per module that minimises the predicted mean ΔL at a
  fixed number of kept entries.
- :func:`expo_curve`, :func:`best_alpha`: EXPO's ``ΔL(α)`` and the best ``α`` on a grid.
- :func:`line_quadratic` → :class:`LineQuadratic`: ``ΔL(θ)`` of any family of changes ``x0 + θ·x1``
  (BitDelta's multiple), exact for a quadratic loss.
- :func:`lowrank_curve`: low rank's ``ΔL`` at every rank (or fraction, or energy) from one SVD per
  matrix; :func:`bitdelta_bits_curve`: BitDelta's at every magnitude-bit count from the edit itself
  (a pass over the parameters per point, no model pass); both optionally read through a
  :class:`riemann.Saturation`. :func:`lowrank_parts` and :func:`bitdelta_bits_parts` give their
  parts (:class:`CurveParts`), to read both ways from one SVD.

The formulas and where they fail: ``docs/theory.md``, §11.
"""

from riemann._src.closed_form import CurveParts as CurveParts
from riemann._src.closed_form import DareAllocation as DareAllocation
from riemann._src.closed_form import DeltaStatistics as DeltaStatistics
from riemann._src.closed_form import LineQuadratic as LineQuadratic
from riemann._src.closed_form import best_alpha as best_alpha
from riemann._src.closed_form import bitdelta_bits_curve as bitdelta_bits_curve
from riemann._src.closed_form import bitdelta_bits_parts as bitdelta_bits_parts
from riemann._src.closed_form import dare_allocation as dare_allocation
from riemann._src.closed_form import dare_factors as dare_factors
from riemann._src.closed_form import dare_moments as dare_moments
from riemann._src.closed_form import della_moments as della_moments
from riemann._src.closed_form import delta_statistics as delta_statistics
from riemann._src.closed_form import expo_curve as expo_curve
from riemann._src.closed_form import line_quadratic as line_quadratic
from riemann._src.closed_form import lowrank_curve as lowrank_curve
from riemann._src.closed_form import lowrank_parts as lowrank_parts
