"""Kronecker-factored Gauss–Newton curvature (K-FAC) and its eigenvalue-corrected variant (EK-FAC)
per weight matrix: an edit's local quadratic from factors computed once, with no pass per edit.

- :class:`KroneckerFactor` ``(a, s)``: ``G_W ≈ A ⊗ S`` for ``W`` of shape (out, in);
  :class:`EigenFactor` ``(qa, qs, lam)``: ``G_W ≈ Σ λ_ij`` along the Kronecker eigenbasis.
- :func:`quadratic`: ``⟨X, G_W X⟩`` (``tr(S X A Xᵀ)``, or ``Σ λ (Q_Sᵀ X Q_A)²``).
- :func:`eigen`, :func:`compress`: K-FAC in its eigenbasis; keep the ``r`` leading directions
  (``O(r·out·in)`` per edit).
- :class:`StructuredCurvature`: gradient + factors for the weight matrices + the Hessian diagonal
  for every other leaf; ``.estimate(change)`` scores an edit.
- :func:`quadratic_terms`: the per-leaf first and quadratic terms (traceable).

The theory: ``docs/theory.md``, §5.
"""

from riemann._src.kfac import EigenFactor as EigenFactor
from riemann._src.kfac import KroneckerFactor as KroneckerFactor
from riemann._src.kfac import StructuredCurvature as StructuredCurvature
from riemann._src.kfac import compress as compress
from riemann._src.kfac import eigen as eigen
from riemann._src.kfac import factor_size as factor_size
from riemann._src.kfac import quadratic as quadratic
from riemann._src.kfac import quadratic_terms as quadratic_terms
