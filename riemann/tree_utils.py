"""Pytree helpers the engine uses, for code built on it (the optax way: ``optax.tree_utils``).

- :func:`tree_vdot`, :func:`leaf_vdots`: ``⟨a, b⟩`` over all leaves, or per leaf, accumulated in
  float32 (or float64) whatever the leaves' dtypes.
- :func:`widen`, :func:`widen_tree`, :func:`zeros_like_wide`, :func:`accum_dtype`: the accumulation
  dtype (float32 for 16-bit and 32-bit floats, float64 for float64) and casts to it.
- :func:`leaf_names`, :func:`path_name`: dotted leaf names (``model.layers.0.mlp.up_proj.weight``),
  which are the Hugging Face tensor names for parameter trees keyed by them.
- :func:`move_along`: ``start + t · direction`` computed wide and cast back to each leaf's dtype.
- :func:`check_compatible`, :func:`check_finite`, :func:`nonfinite_leaves`: errors that name the leaf.
"""

from riemann._src.trees import accum_dtype as accum_dtype
from riemann._src.trees import check_compatible as check_compatible
from riemann._src.trees import check_finite as check_finite
from riemann._src.trees import leaf_names as leaf_names
from riemann._src.trees import leaf_vdots as leaf_vdots
from riemann._src.trees import move_along as move_along
from riemann._src.trees import nonfinite_leaves as nonfinite_leaves
from riemann._src.trees import path_name as path_name
from riemann._src.trees import tree_vdot as tree_vdot
from riemann._src.trees import widen as widen
from riemann._src.trees import widen_tree as widen_tree
from riemann._src.trees import zeros_like_wide as zeros_like_wide
