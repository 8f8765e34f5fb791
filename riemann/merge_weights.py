"""Task-arithmetic weights from shared statistics: the merge ``W_base + Σ_j λ_j τ_j`` scored for
every ``λ`` from one gradient and ``n`` Hessian-vector products per task and batch.

- :func:`task_statistics` → :class:`TaskStatistics`: task ``i``'s quadratic in ``λ``,
  ``ΔL_i(λ) ≈ b_iᵀ(λ − e_i) + ½(λ − e_i)ᵀQ_i(λ − e_i)`` with ``b_ij = ⟨g_i, τ_j⟩`` and
  ``Q_i,jk = ⟨τ_j, H_i τ_k⟩`` at the task's own fine-tune.
- :func:`predict_changes`: every task's predicted ``ΔL_i(λ)`` and its gradient in ``λ``;
  :func:`shared_curve`: the same along one weight shared by every task vector.
- :func:`recommend_weights` → :class:`Recommendation`: the ``λ`` of lowest predicted worst-task
  (min-max) or mean ``ΔL`` within a box, the box being the quadratics' trust region.

A module of its own rather than part of :mod:`riemann.closed_form`: the closed forms there score
the edit families of *one* delta from its scalars, while a merge weighs *several* fine-tunes, each
scored at its own post-trained point, and comes with an optimiser over the weights.
The formula, its cost and where it stops holding: ``docs/theory.md``, §12.
"""

from riemann._src.merge_weights import OBJECTIVES as OBJECTIVES
from riemann._src.merge_weights import Recommendation as Recommendation
from riemann._src.merge_weights import TaskStatistics as TaskStatistics
from riemann._src.merge_weights import predict_changes as predict_changes
from riemann._src.merge_weights import recommend_weights as recommend_weights
from riemann._src.merge_weights import shared_curve as shared_curve
from riemann._src.merge_weights import task_statistics as task_statistics
