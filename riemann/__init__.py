"""riemann — the theory engine of delta parameter editing.

Pure JAX functions over parameter pytrees: quadrature rules on [0, 1], path integrals of the
gradient along straight segments, estimators of an edit's loss change (the paper's Riemann sum,
first and second order, a shared-curvature surrogate computed once for a whole suite, measured),
the saturation curves that say how the loss leaves a shared quadratic along ``ΔW`` and along noise
(and how far the result can be trusted), the diagonal surrogate's trust region along ``±ΔW``, and the
``auto`` estimate that measures where a shared prediction does not hold, the cross-fitted first-order
term of an edit built from the gradient, and the competitive / decreased / improved classification.
Edit operators live in :mod:`riemann.edits`; closed forms of whole edit families (DARE over ``p × k``,
DELLA, EXPO over ``α``) in :mod:`riemann.closed_form`; task-arithmetic weights chosen from one
quadratic in ``λ`` per task in :mod:`riemann.merge_weights`; pytree helpers (inner products, widening to the
accumulation dtype, leaf names) in :mod:`riemann.tree_utils`. The theory, in this project's words:
``docs/theory.md``.

Reference: Tang et al., "A Unified View of Delta Parameter Editing in Post-Trained Large-Scale
Models", arXiv 2410.13841 (2024).
"""

from riemann import closed_form as closed_form
from riemann import kfac as kfac
from riemann import merge_weights as merge_weights
from riemann import tree_utils as tree_utils
from riemann._src.classify import CLASSES as CLASSES
from riemann._src.classify import choose_tolerance as choose_tolerance
from riemann._src.classify import classify as classify
from riemann._src.cross_fit import CrossFit as CrossFit
from riemann._src.cross_fit import batch_gradients as batch_gradients
from riemann._src.cross_fit import cross_fitted_first_order as cross_fitted_first_order
from riemann._src.curvature import SharedCurvature as SharedCurvature
from riemann._src.curvature import shared_curvature as shared_curvature
from riemann._src.estimate import METHODS as METHODS
from riemann._src.estimate import Estimate as Estimate
from riemann._src.estimate import estimate as estimate
from riemann._src.kronrod import NotConverged as NotConverged
from riemann._src.kronrod import integrate_kronrod as integrate_kronrod
from riemann._src.kronrod import kronrod_rule as kronrod_rule
from riemann._src.pacing import pace as pace
from riemann._src.path import integrate_adaptive as integrate_adaptive
from riemann._src.path import integrate_path as integrate_path
from riemann._src.path import integrate_rules as integrate_rules
from riemann._src.progress import progress_bar as progress_bar
from riemann._src.quadrature import RULES as RULES
from riemann._src.quadrature import Quadrature as Quadrature
from riemann._src.quadrature import degree as degree
from riemann._src.quadrature import quadrature as quadrature
from riemann._src.quadrature import refine as refine
from riemann._src.saturation import Curve as Curve
from riemann._src.saturation import Saturation as Saturation
from riemann._src.saturation import saturation as saturation
from riemann._src.steps import MODES as MODES
from riemann._src.steps import lower_path_step as lower_path_step
from riemann._src.stepwise import PathIntegral as PathIntegral
from riemann._src.stepwise import PathState as PathState
from riemann._src.stepwise import advance_path as advance_path
from riemann._src.stepwise import path_result as path_result
from riemann._src.stepwise import path_state as path_state
from riemann._src.trees import leaf_names as leaf_names
from riemann._src.trust import TrustRegion as TrustRegion
from riemann._src.trust import auto_estimate as auto_estimate
from riemann._src.trust import trust_region as trust_region

__version__ = "0.1.0"
