"""Merge methods as edits of several deltas, with the semantics of mergekit 0.1.5.

Fine-tune ``i`` of one base has the delta ``τ_i = W_i − W_base``; a merge gives
``W_merge = W_base + Σ_j part_j``. :func:`merge` returns every donor's ``part_j`` (so the
analysis layer can attribute the merged change to its donors) and their sum.

All of mergekit's "generalized task arithmetic" methods are one operator, run per tensor:
sparsify each ``τ_j`` (magnitude trim, breadcrumbs' outlier trim, DARE's Bernoulli mask, DELLA's
MAGPRUNE), optionally rescale it to its former L1 norm, weight it by ``w_j``, elect a sign per
entry and keep the agreeing entries (TIES consensus), sum, optionally divide by the summed weights
of the kept entries, and scale by ``λ``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann.edits import _common as c
from riemann.edits._magnitude import _top_mask

PyTree = Any

METHODS: tuple[str, ...] = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "della",
    "della_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
)


@dataclasses.dataclass(frozen=True)
class _Method:
    sparsify: str | None  # "magnitude", "outliers", "random", "della" or None
    consensus: bool
    normalize: bool  # mergekit's default
    rescale: bool  # mergekit's default


# mergekit/merge_methods/registry.py (0.1.5): the GeneralizedTaskArithmeticMerge instances.
_METHODS = {
    "linear": _Method(None, False, True, False),
    "task_arithmetic": _Method(None, False, False, False),
    "ties": _Method("magnitude", True, True, False),
    "dare_ties": _Method("random", True, False, True),
    "dare_linear": _Method("random", False, False, True),
    "della": _Method("della", True, True, True),
    "della_linear": _Method("della", False, False, True),
    "breadcrumbs": _Method("outliers", False, False, False),
    "breadcrumbs_ties": _Method("outliers", True, False, False),
}
_RANDOM = ("random", "della")
_KIND_METHOD = {"magnitude": "ties", "outliers": "breadcrumbs", "random": "dare_linear", "della": "della"}
_RESCALE_NORMS = ("l1", "l2", "linf", "density")


@dataclasses.dataclass(frozen=True)
class Merged:
    """The result of :func:`merge`.

    Attributes:
      parts: one float32 pytree per donor, donor ``j``'s share of ``W_merge − W_base``: its
        sparsified, rescaled, weighted delta restricted to the entries that agree with the elected
        sign, divided by the divisor (when normalizing) and scaled by ``λ``. For ``linear`` without
        normalization see :func:`merge`.
      method: the mergekit method name.
      settings: every resolved parameter (per-leaf values where a parameter was a callable).
    """

    parts: tuple[PyTree, ...]
    method: str
    settings: dict
    _total: PyTree = dataclasses.field(default=None, repr=False, compare=False)
    compute_dtype: Any = None

    def apply(self, base: PyTree) -> PyTree:
        """The merged weights, formed as mergekit forms them.

        ``compute_dtype=None`` (float32 merge): ``W_base + total`` in float32. With a compute dtype
        ``c`` (say bfloat16): ``(f32(c(W_base)) + total).astype(c)``. For the task-arithmetic
        family ``total`` is mergekit's ``mixed_delta``, a value of dtype ``c`` held in float32, and
        adding two ``c`` values in float32 then rounding once to ``c`` is exactly torch's ``c``
        addition ``base + mixed_delta`` (the float32 sum rounded, double rounding being innocuous
        for 24 ≥ 2·8 + 2 bits), so this is bit for bit mergekit's final add and cast. For
        ``linear`` ``total`` is ``R − c(W_base)`` in float32 with ``R`` mergekit's result, a
        difference of two ``c`` values and exact in float32, so the add gives ``R`` back exactly.
        """
        cd = self.compute_dtype
        if cd is None:
            return jax.tree_util.tree_map(lambda b, t: jnp.asarray(b).astype(jnp.float32) + t, base, self.total)
        return jax.tree_util.tree_map(
            lambda b, t: (jnp.asarray(b).astype(cd).astype(jnp.float32) + t).astype(cd), base, self.total
        )

    @property
    def total(self) -> PyTree:
        """``Σ_j parts[j] = W_merge − W_base`` (float32), computed in mergekit's order of operations
        (sum of the donors' masked deltas, then ``/ divisor``, then ``· λ``), so
        ``W_base + total`` reproduces mergekit's tensors; equal to the sum of the parts up to
        float32 rounding. With a ``compute_dtype`` it is mergekit's change in that dtype (held in
        float32, see :meth:`apply`, the way to form the merged model), and the float32 parts sum to
        it only up to that dtype's rounding."""
        if self._total is not None:
            return self._total
        return jax.tree_util.tree_map(lambda *xs: functools.reduce(jnp.add, xs), *self.parts)


# ----------------------------------------------------------------------------------------------
# Parameter resolution


Value = float | bool | str | Callable[[str], Any]


def _per_donor(value: Any, n: int, arg: str) -> list[Any]:
    """A per-model parameter as ``n`` values (each a constant or a callable of the leaf name)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"merge: {arg} has {len(value)} values for {n} deltas; give one value per delta or a scalar")
    return list(value)


def _at(value: Any, leaf: str, arg: str) -> Any:
    if callable(value):
        try:
            return value(leaf)
        except Exception as e:  # a user callable: say which parameter and leaf it failed on
            raise ValueError(f"merge: {arg}({leaf!r}) raised {type(e).__name__}: {e}") from e
    return value


def _number(value: Any, leaf: str, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"merge: {arg} must be a finite number, got {value!r} for leaf {leaf!r}")
    return float(value)


def _flag(value: Any, leaf: str, arg: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"merge: {arg} must be a bool, got {value!r} for leaf {leaf!r}")
    return bool(value)


class _Recorder:
    """Collects the resolved value of each parameter: a constant once, a callable per leaf."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def note(self, arg: str, raw: Any, leaf: str, value: Any, donor: int | None = None, n: int = 0) -> None:
        if donor is None:
            if callable(raw):
                self.values.setdefault(arg, {})[leaf] = value
            else:
                self.values[arg] = value
            return
        slots = self.values.setdefault(arg, [None] * n)
        if callable(raw):
            if not isinstance(slots[donor], dict):
                slots[donor] = {}
            slots[donor][leaf] = value
        else:
            slots[donor] = value


# ----------------------------------------------------------------------------------------------
# Per-leaf kernels (float32; compiled once per shape)


def _rescaled(x: jax.Array, masked: jax.Array, norm: str, factor: jax.Array | None) -> jax.Array:
    """mergekit's ``rescaled_masked_tensor``: match ``x``'s norm unless either norm is < 1e-7;
    ``"density"`` divides by the keep probability ``factor`` instead (the papers' rescale)."""
    if norm == "none":
        return masked
    if norm == "density":
        return masked / factor
    if norm == "l1":
        before, after = jnp.sum(jnp.abs(x)), jnp.sum(jnp.abs(masked))
    elif norm == "l2":
        before, after = jnp.sqrt(jnp.sum(x * x)), jnp.sqrt(jnp.sum(masked * masked))
    else:
        before, after = jnp.max(jnp.abs(x), initial=0.0), jnp.max(jnp.abs(masked), initial=0.0)
    small = (before < 1e-7) | (after < 1e-7)
    return jnp.where(small, masked, masked * (before / jnp.where(small, 1.0, after)))


@functools.partial(jax.jit, static_argnames=("norm",))
def _magnitude_leaf(x: jax.Array, count: jax.Array, density: jax.Array, norm: str) -> jax.Array:
    x = x.astype(jnp.float32)
    mask = _top_mask(jnp.abs(x).ravel(), count).reshape(x.shape)
    return _rescaled(x, x * mask.astype(jnp.float32), norm, density)


@functools.partial(jax.jit, static_argnames=("norm",))
def _outliers_leaf(x: jax.Array, upper: jax.Array, top: jax.Array, density: jax.Array, norm: str) -> jax.Array:
    x = x.astype(jnp.float32)
    a = jnp.abs(x).ravel()
    mask = (_top_mask(a, upper) & ~_top_mask(a, top)).reshape(x.shape)
    return _rescaled(x, x * mask.astype(jnp.float32), norm, density)


@functools.partial(jax.jit, static_argnames=("norm",))
def _masked_leaf(x: jax.Array, mask: jax.Array, density: jax.Array, norm: str) -> jax.Array:
    x = x.astype(jnp.float32)
    return _rescaled(x, x * mask.astype(jnp.float32), norm, density)


@functools.partial(jax.jit, static_argnames=("norm",))
def _random_leaf(x: jax.Array, key: jax.Array, density: jax.Array, norm: str) -> jax.Array:
    x = x.astype(jnp.float32)
    keep = c.uniform(key, x.shape) < density.astype(jnp.float32)
    return _rescaled(x, x * keep.astype(jnp.float32), norm, density.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("norm",))
def _della_leaf(x: jax.Array, key: jax.Array, density: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
    x = x.astype(jnp.float32)
    # mergekit ranks along dim 1 (a 0-/1-D tensor is one row): for an HF (out, in) matrix, within
    # each output unit's incoming weights.
    rows = x.reshape(1, -1) if x.ndim < 2 else jnp.moveaxis(x, 1, -1)
    moved = rows.shape
    rows = rows.reshape(-1, moved[-1])
    n = rows.shape[-1]
    rank = jnp.argsort(jnp.argsort(jnp.abs(rows), axis=-1, stable=True), axis=-1, stable=True)
    frac = rank.astype(jnp.float32) / (n - 1) if n > 1 else jnp.zeros(rows.shape, jnp.float32)
    d, e = density.astype(jnp.float32), eps.astype(jnp.float32)
    prob = (d - e) + frac * 2.0 * e
    keep = c.uniform(key, rows.shape) < prob
    rows = _rescaled(rows, rows * keep.astype(jnp.float32), norm, prob)
    rows = rows.reshape(moved)
    return rows.reshape(x.shape) if x.ndim < 2 else jnp.moveaxis(rows, -1, 1)


def _seq_sum(xs: jax.Array) -> jax.Array:
    """Sum over the leading (donor) axis in donor order, as torch's ``sum(dim=0)`` accumulates."""
    total = xs[0]
    for i in range(1, xs.shape[0]):
        total = total + xs[i]
    return total


@functools.partial(jax.jit, static_argnames=("consensus", "normalize"))
def _combine(
    xs: jax.Array, w: jax.Array, lam: jax.Array, consensus: str | None, normalize: bool
) -> tuple[jax.Array, jax.Array]:
    """mergekit's ``GeneralizedTaskArithmeticMerge.merge_group`` after sparsification: ``xs`` are
    the donors' weighted (sparsified) deltas stacked on axis 0. Returns (parts, total)."""
    wb = w.reshape((w.shape[0],) + (1,) * (xs.ndim - 1))
    if consensus is None:
        masked = xs
        divisor = _seq_sum(w)
        divisor = jnp.where(jnp.abs(divisor) < 1e-8, 1.0, divisor)
    else:
        sign = jnp.sign(xs)
        weight_of = _seq_sum(xs) if consensus == "sum" else _seq_sum(sign)
        majority = jnp.where(weight_of >= 0, 1.0, -1.0)
        mask = (sign == majority[None]).astype(xs.dtype)
        masked = xs * mask
        divisor = _seq_sum(wb * mask)
        divisor = jnp.where(divisor == 0, 1.0, divisor)
    total = _seq_sum(masked)
    lam = lam.astype(xs.dtype)
    if normalize:
        total = total / divisor
        masked = masked / (divisor if consensus is None else divisor[None])
    return masked * lam, total * lam


@jax.jit
def _linear(xs: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    wb = w.reshape((w.shape[0],) + (1,) * (xs.ndim - 1))
    weighted = xs * wb
    return weighted, _seq_sum(weighted)


# ----------------------------------------------------------------------------------------------
# mergekit's arithmetic in a 16-bit dtype (compute_dtype): every tensor operation rounds to the dtype,
# reductions (torch's sum over bfloat16/float16 on CPU) accumulate in float32 and round once.


def _r(x: jax.Array, cd: Any) -> jax.Array:
    """Round a float32 result to the compute dtype, held in float32 again."""
    return x.astype(cd).astype(jnp.float32)


def _rescaled_in(x: jax.Array, masked: jax.Array, norm: str, factor: float, cd: Any) -> jax.Array:
    """:func:`_rescaled` as mergekit runs it on ``cd`` tensors (``x``, ``masked``: ``cd`` values in float32)."""
    if norm == "none":
        return masked
    if norm == "density":
        return _r(masked / _r(jnp.float32(factor), cd), cd)
    if norm == "l1":
        before, after = _r(jnp.sum(jnp.abs(x)), cd), _r(jnp.sum(jnp.abs(masked)), cd)
    elif norm == "l2":
        before, after = _r(jnp.sqrt(jnp.sum(x * x)), cd), _r(jnp.sqrt(jnp.sum(masked * masked)), cd)
    else:
        before, after = jnp.max(jnp.abs(x), initial=0.0), jnp.max(jnp.abs(masked), initial=0.0)
    if float(before) < 1e-7 or float(after) < 1e-7:
        return masked
    return _r(masked * _r(before / after, cd), cd)


def _sparsify_in(
    kind: str, x: jax.Array, d: float, g: float, e: float, norm: str, key: jax.Array | None, cd: Any
) -> jax.Array:
    """mergekit's sparsify on a ``cd`` tensor (``x``: ``cd`` values in float32)."""
    if d >= 1.0:
        return x
    size = x.size
    if kind == "magnitude":
        if d <= 0 or size == 0:
            return jnp.zeros_like(x)
        mask = _top_mask(jnp.abs(x).ravel(), jnp.int32(_count(d, size))).reshape(x.shape)
    elif kind == "outliers":
        upper, top = _outlier_counts(d, g, size)
        a = jnp.abs(x).ravel()
        mask = (_top_mask(a, jnp.int32(upper)) & ~_top_mask(a, jnp.int32(top))).reshape(x.shape)
    elif kind == "random":
        if d <= 0:
            return jnp.zeros_like(x)
        # mergekit draws torch.bernoulli(full(density)) in bfloat16 (float16 and float32: float32)
        p = _r(jnp.float32(d), cd) if cd == jnp.bfloat16 else jnp.float32(d)
        mask = c.uniform(key, x.shape) < p
        return _rescaled_in(x, jnp.where(mask, x, 0.0), norm, d, cd)
    else:  # della: ranks and probabilities in the work dtype (bfloat16 stays bfloat16)
        if d <= 0:
            return jnp.zeros_like(x)
        wd = cd if cd == jnp.bfloat16 else jnp.float32
        rows = x.reshape(1, -1) if x.ndim < 2 else jnp.moveaxis(x, 1, -1)
        moved = rows.shape
        rows = rows.reshape(-1, moved[-1])
        rank = jnp.argsort(jnp.argsort(jnp.abs(rows), axis=-1, stable=True), axis=-1, stable=True)
        ranks = (rank + 1).astype(wd).astype(jnp.float32)
        lo, hi = jnp.min(ranks, axis=-1, keepdims=True), jnp.max(ranks, axis=-1, keepdims=True)
        rn = jnp.clip(_r(_r(ranks - lo, wd) / jnp.where(hi > lo, _r(hi - lo, wd), 1.0), wd), 0.0, 1.0)
        prob = _r(jnp.float32(d - e) + _r(_r(rn * 2.0, wd) * jnp.float32(e), wd), wd)
        keep = c.uniform(key, rows.shape) < prob
        factor = jnp.where(keep, prob, 1.0)
        rows = _rescaled_in(rows, jnp.where(keep, rows, 0.0), norm if norm != "density" else "none", d, cd)
        if norm == "density":
            rows = _r(rows / factor, cd)
        rows = rows.reshape(moved)
        return rows.reshape(x.shape) if x.ndim < 2 else jnp.moveaxis(rows, -1, 1)
    return _rescaled_in(x, jnp.where(mask, x, 0.0), norm, d, cd)


def _seq_sum_in(xs: jax.Array, cd: Any) -> jax.Array:
    """torch's ``sum(dim=0)`` of a ``cd`` stack: float32 accumulation in order, one rounding."""
    return _r(_seq_sum(xs), cd)


def _combine_in(
    xs: jax.Array, w: jax.Array, lam: float, consensus: str | None, normalize: bool, cd: Any
) -> tuple[jax.Array, jax.Array]:
    """:func:`_combine` in ``cd`` (``xs``: the weighted deltas, ``w``: the weights, ``cd`` values
    in float32). Returns float32 shares (for attribution) and mergekit's ``cd`` change."""
    wb = w.reshape((w.shape[0],) + (1,) * (xs.ndim - 1))
    if consensus is None:
        masked = xs
        divisor = _seq_sum_in(w, cd)
        divisor = jnp.where(jnp.abs(divisor) < 1e-8, 1.0, divisor)
    else:
        sign = jnp.sign(xs)
        weight_of = _seq_sum_in(xs, cd) if consensus == "sum" else _seq_sum(sign)
        majority = jnp.where(weight_of >= 0, 1.0, -1.0)
        mask = sign == majority[None]
        masked = jnp.where(mask, xs, 0.0)
        divisor = _seq_sum_in(jnp.where(mask, wb, 0.0), cd)
        divisor = jnp.where(divisor == 0, 1.0, divisor)
    total = _seq_sum_in(masked, cd)
    parts = masked
    if normalize:
        total = _r(total / divisor, cd)
        parts = masked / (divisor if consensus is None else divisor[None])
    if lam != 1:
        total = _r(total * jnp.float32(lam), cd)
    return parts * jnp.float32(lam), total


def _compute_dtype(compute_dtype: Any, leaf_dtypes: list[Any], leaf: str) -> Any:
    if compute_dtype is None:
        return None
    if isinstance(compute_dtype, str) and compute_dtype == "inputs":
        cd = functools.reduce(jnp.promote_types, leaf_dtypes)
    else:
        try:
            cd = jnp.dtype(compute_dtype)
        except TypeError as err:
            raise ValueError(
                f"merge: compute_dtype={compute_dtype!r}; accepted: None, 'inputs' or a float dtype"
            ) from err
    if cd not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)):
        raise ValueError(f"merge: compute_dtype {cd} for leaf {leaf!r}; accepted: bfloat16, float16, float32")
    return None if cd == jnp.float32 else cd


# ----------------------------------------------------------------------------------------------


def _check_trees(deltas: Sequence[PyTree], base: PyTree | None) -> list[str]:
    if isinstance(deltas, (dict, str)) or not isinstance(deltas, Sequence) or len(deltas) == 0:
        raise ValueError("merge: deltas must be a non-empty sequence of delta pytrees (one per fine-tune)")
    ref_flat, ref_def = jax.tree_util.tree_flatten_with_path(deltas[0])
    names = [trees.path_name(p) for p, _ in ref_flat]
    others = [(f"deltas[{i}]", d) for i, d in enumerate(deltas)]
    if base is not None:
        others.append(("base", base))
    for label, tree in others:
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        if treedef != ref_def:
            mine = [trees.path_name(p) for p, _ in flat]
            missing = [n for n in names if n not in set(mine)][:5]
            extra = [n for n in mine if n not in set(names)][:5]
            raise ValueError(
                f"merge: deltas[0] and {label} differ in tree structure; leaves only in deltas[0]: {missing}, "
                f"only in {label}: {extra}"
            )
        for name, (_, ref), (_, x) in zip(names, ref_flat, flat):
            if np.shape(ref) != np.shape(x):
                raise ValueError(
                    f"merge: leaf {name!r} has shape {np.shape(x)} in {label}, {np.shape(ref)} in deltas[0]"
                )
            if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
                raise ValueError(
                    f"merge: leaf {name!r} of {label} has dtype {jnp.result_type(x)}; merges act on floats"
                )
    return names


def _count(density: float, size: int) -> int:
    # mergekit's sparsify.magnitude: k = max(1, int(density · numel)) (floor, at least one).
    return max(1, int(density * size)) if size else 0


def _outlier_counts(density: float, gamma: float, size: int) -> tuple[int, int]:
    # mergekit's sparsify.magnitude_outliers keeps the ascending ranks indices[n_bot : n_bot + target_n]
    # with Python's slice semantics (a negative stop counts from the end; a stop past the end clips),
    # for any density and gamma.
    target_n = int(density * size)
    n_top = int(gamma * size)
    n_bot = max(0, size - target_n - n_top)
    start, stop, _ = slice(n_bot, n_bot + target_n).indices(size)
    stop = max(stop, start)
    # the entries kept are the top `size − start` minus the top `size − stop`
    return size - start, size - stop


def check_parameters(method: str, *, density: float = 1.0, gamma: float = 0.01, epsilon: float = 0.15) -> None:
    """Refuse exactly the per-tensor parameters on which mergekit 0.1.5 fails, before any weight is read.

    The parameters are one donor's values for one tensor. mergekit accepts any density for the
    magnitude and breadcrumbs trims (``≤ 0`` drops everything, though breadcrumbs' slice of the
    sorted entries can keep some with a large gamma; ``≥ 1`` leaves the delta unchanged) and any
    gamma. DARE fails on ``density < 0`` (``torch.bernoulli`` needs probabilities in [0, 1]).
    DELLA with ``0 < density < 1`` needs ``density ± epsilon`` in (0, 1) (mergekit's own check) and
    keep probabilities in [0, 1] (a negative epsilon passes that check, then torch fails on it);
    ``density ≤ 0`` drops everything and ``density ≥ 1`` leaves the delta unchanged, whatever
    epsilon. Every value must be a finite number.

    Raises:
      ValueError: naming the parameter, when mergekit would fail.

    Example:
      >>> check_parameters("ties", density=0.0)
      >>> check_parameters("della", density=0.5, epsilon=0.6)
      Traceback (most recent call last):
      ...
      ValueError: merge: epsilon=0.6 with density=0.5 for 'della': density ± epsilon must lie in (0, 1)
    """
    if method not in _METHODS:
        raise ValueError(f"merge: unknown method {method!r}; accepted: {', '.join(METHODS)}")
    kind = _METHODS[method].sparsify
    for arg, v in (("density", density), ("gamma", gamma), ("epsilon", epsilon)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"merge: {arg} must be a finite number, got {v!r}")
    d, e = float(density), float(epsilon)
    if kind == "random" and d < 0:
        raise ValueError(f"merge: density={d!r} for {method!r}: DARE keeps each entry with probability density, ≥ 0")
    if kind == "della" and 0 < d < 1:
        if not (d + e < 1 and d - e > 0):
            raise ValueError(
                f"merge: epsilon={e!r} with density={d!r} for {method!r}: density ± epsilon must lie in (0, 1)"
            )
        if not (d + e >= 0 and d - e <= 1):
            raise ValueError(
                f"merge: epsilon={e!r} with density={d!r} for {method!r}: the keep probabilities "
                "density ± epsilon must lie in [0, 1]"
            )


def merge(
    method: str,
    deltas: Sequence[PyTree],
    *,
    weight: Any = 1.0,
    density: Any = 1.0,
    gamma: Any = 0.01,
    epsilon: Any = 0.15,
    lambda_: Any = 1.0,
    normalize: Any = None,
    rescale: Any = None,
    consensus: Any = "sum",
    trim_scope: str = "tensor",
    int8_mask: Any = False,
    base: PyTree | None = None,
    key: jax.Array | None = None,
    rescale_norm: str = "l1",
    compute_dtype: Any = None,
) -> Merged:
    """Merge fine-tunes of one base, given as deltas ``τ_j = W_j − W_base``, as mergekit 0.1.5 does.

    Every method except ``linear`` is mergekit's generalized task arithmetic, per tensor::

        s_j = rescale(sparsify(τ_j, density_j))      # per method, below; rescale to ‖τ_j‖₁ if rescale
        x_j = w_j · s_j
        m_j = [sign(x_j) = elected sign]              # consensus methods only, else m_j = 1
        part_j = λ · m_j · x_j / D                    # D = Σ_j w_j m_j if normalize, else 1
        W_merge = W_base + Σ_j part_j

    - ``task_arithmetic`` (Ilharco et al., 2023, arXiv:2212.04089): no sparsification, no consensus;
      normalize off by default.
    - ``ties`` (Yadav et al., 2023, arXiv:2306.01708): magnitude trim to the top
      ``max(1, ⌊density·numel⌋)`` entries of each tensor (``trim_scope="global"``: of each donor's
      whole delta, as the paper's code), sign election by summed mass, disjoint mean
      (normalize on by default). mergekit elects the sign of ``Σ_j w_j s_j`` (weights applied
      before the election, the paper elects on unweighted trimmed deltas), gives ties and zero sums
      the sign ``+``, and falls back to ``D = 1`` where no donor agrees.
    - ``dare_ties`` / ``dare_linear`` (DARE, Yu et al., 2024, arXiv:2311.03099): keep each entry
      with probability ``density`` (Bernoulli). mergekit rescales survivors so the tensor keeps its
      L1 norm (``‖τ‖₁/‖s‖₁``), not by the paper's ``1/density``: ``rescale_norm="density"``
      selects the paper's factor.
    - ``della`` / ``della_linear`` (DELLA, Deep et al., 2024, arXiv:2406.11617): MAGPRUNE; within
      each row (mergekit ranks along dim 1) entry of magnitude rank ``r`` (0 = smallest of ``n``) is
      kept with probability ``p = density − ε + 2ε·r/(n − 1)``; mergekit rescales to the L1 norm
      (``rescale_norm="density"``: the paper's ``1/p`` per entry).
    - ``breadcrumbs`` / ``breadcrumbs_ties`` (Model Breadcrumbs, Davari & Belilovsky, 2024,
      arXiv:2312.06795): drop the ``⌊γ·numel⌋`` largest-magnitude entries (fewer if needed to
      keep the target) and the smallest, keeping ``⌊density·numel⌋`` entries.
    - ``linear`` (model soups, Wortsman et al., 2022, arXiv:2203.05482): mergekit averages the full
      weights, ``W_merge = Σ w_j W_j / Σ w_j``. With normalize (its default) that is
      ``W_base + Σ_j w_j τ_j / Σ w_j``, so ``part_j = w_j τ_j / Σ w``; a zero weight sum is refused
      (mergekit divides by it). Without normalize ``W_merge = Σ w_j W_j`` needs ``base=``, and
      ``part_j = w_j τ_j + (w_j − 1/n)·W_base`` (so that ``Σ part_j = W_merge − W_base``).

    A density ``≥ 1`` leaves a delta unsparsified (and unrescaled), ``≤ 0`` drops it (breadcrumbs:
    mergekit's slice of the sorted entries, see :func:`check_parameters`), as mergekit does;
    parameters mergekit fails on are refused (:func:`check_parameters`, callable per tensor
    before any weight is read). Without consensus, ``D = Σ_j w_j`` (``1`` where ``|Σ w| < 1e-8``).
    ``int8_mask`` changes only mergekit's memory use (its mask is boolean either way) and is recorded.

    Dtype: by default (``compute_dtype=None``) everything is float32, which is mergekit's merge of
    float32 checkpoints. mergekit computes in the checkpoints' dtype (config ``dtype``): with
    ``compute_dtype=jnp.bfloat16`` (or ``"inputs"``: the deltas' dtype) every step rounds as
    mergekit's does: the delta ``model − base`` rounded to bf16, trims and rescale in bf16 (norms
    accumulated in float32 and rounded), bf16 weights and products, the sign election and the sums
    over donors accumulated in float32 and rounded once, bf16 division by the divisor, ``· λ`` in
    float32 rounded; ``linear`` averages the bf16 checkpoints in float32 (fused multiply-adds) and
    rounds once (it needs ``base=``). Pass the deltas as float32 differences of the bf16
    checkpoints (exact), and form the model with :meth:`Merged.apply` ``(base)``: bit for bit
    mergekit's tensor for ``linear`` and ``task_arithmetic``, and for the trims except where
    magnitudes tie exactly at a trim threshold (torch's CPU sort is not stable, so mergekit keeps an
    unspecified subset of tied entries; we keep the lowest indices). ``total`` is then mergekit's
    bf16 change (held in float32), and the float32 ``parts`` (shares for attribution, computed from
    the bf16 masked deltas) sum to it only up to bf16 rounding. DARE/DELLA draw with our keys.

    Args:
      method: one of :data:`METHODS`.
      deltas: one delta pytree per fine-tune, identical structure and shapes, floating leaves.
      weight, density, gamma, epsilon: per-model parameters: a scalar for all donors or one value
        per donor; each value may be a callable ``f(leaf_name) -> float`` (mergekit's per-layer
        gradients and per-tensor filters). ``gamma`` is used by breadcrumbs, ``epsilon`` by DELLA.
      lambda_, normalize, rescale, int8_mask, consensus: shared parameters, constants or callables
        of the leaf name. ``None`` for ``normalize``/``rescale`` is the method's mergekit default.
        ``consensus`` (``"sum"``, mergekit's, or ``"count"``: majority of signs) applies to the
        consensus methods.
      trim_scope: ``"tensor"`` (mergekit) or ``"global"`` (top-k over all of a donor's
        parameters; magnitude and breadcrumbs methods, scalar density per donor).
      base: ``W_base``, needed only by ``linear`` without normalize.
      key: JAX PRNG key, required by the DARE and DELLA methods; donor ``j``'s leaf ``name`` uses
        ``leaf_key(fold_in(key, j), name)``, so results depend on neither traversal order nor sharding.
      rescale_norm: ``"l1"`` (mergekit), ``"l2"``, ``"linf"``, or ``"density"`` (the papers'
        ``1/density``, ``1/p``).
      compute_dtype: ``None`` (float32), ``"inputs"`` or a dtype (bfloat16, float16, float32): the
        dtype whose arithmetic mergekit runs, see above.

    Returns:
      A :class:`Merged` with float32 ``parts`` (one tree per donor) and ``total``.

    Example:
      >>> import jax.numpy as jnp
      >>> a, b = {"w": jnp.array([3.0, -1.0, 0.5])}, {"w": jnp.array([1.0, -2.0, -4.0])}
      >>> m = merge("ties", [a, b], density=1.0)
      >>> [float(v) for v in m.total["w"]]     # signs elected by mass; agreeing entries averaged
      [2.0, -1.5, -4.0]
      >>> [float(v) for v in m.parts[0]["w"]]  # donor 0's share: its agreeing entries / divisor
      [1.5, -0.5, 0.0]
    """
    if method not in _METHODS:
        raise ValueError(f"merge: unknown method {method!r}; accepted: {', '.join(METHODS)}")
    spec = _METHODS[method]
    names = _check_trees(deltas, base)
    n = len(deltas)
    random = spec.sparsify in _RANDOM
    if random:
        key = c.as_key(key, f"merge({method!r})")
    if trim_scope not in ("tensor", "global"):
        raise ValueError(f"merge: trim_scope={trim_scope!r}; accepted: 'tensor', 'global'")
    if trim_scope == "global" and spec.sparsify not in ("magnitude", "outliers"):
        raise ValueError(
            f"merge: trim_scope='global' applies to magnitude trimming (ties, breadcrumbs), not {method!r}"
        )
    if trim_scope == "global" and compute_dtype is not None:
        raise ValueError("merge: trim_scope='global' is not mergekit's and has no compute_dtype path; use float32")
    if rescale_norm not in _RESCALE_NORMS:
        raise ValueError(f"merge: rescale_norm={rescale_norm!r}; accepted: {', '.join(_RESCALE_NORMS)}")
    if method == "linear" and rescale is not None and rescale is not False:
        raise ValueError("merge: linear has no rescale (mergekit's linear takes weight and normalize only)")

    weights = _per_donor(weight, n, "weight")
    densities = _per_donor(density, n, "density")
    gammas = _per_donor(gamma, n, "gamma")
    epsilons = _per_donor(epsilon, n, "epsilon")
    rec = _Recorder()
    leaves = [jax.tree_util.tree_leaves(d) for d in deltas]
    base_leaves = jax.tree_util.tree_leaves(base) if base is not None else None
    donor_keys = [jax.random.fold_in(key, j) for j in range(n)] if random else None

    def donor_param(values: list[Any], j: int, leaf: str, arg: str) -> float:
        v = _number(_at(values[j], leaf, f"{arg}[{j}]"), leaf, f"{arg}[{j}]")
        rec.note(arg, values[j], leaf, v, j, n)
        return v

    def shared(raw: Any, leaf: str, arg: str, default: Any, kind: Callable[[Any, str, str], Any]) -> Any:
        v = _at(raw, leaf, arg)
        v = default if v is None else kind(v, leaf, arg)
        rec.note(arg, raw, leaf, v)
        return v

    masks = _global_masks(method, spec, leaves, names, densities, gammas, rec) if trim_scope == "global" else None

    parts_flat: list[list[jax.Array]] = [[] for _ in range(n)]
    total_flat: list[jax.Array] = []
    resolved: set[str] = set()
    for i, leaf in enumerate(names):
        w = [donor_param(weights, j, leaf, "weight") for j in range(n)]
        cd = _compute_dtype(compute_dtype, [jnp.result_type(leaves[j][i]) for j in range(n)], leaf)
        resolved.add("float32" if cd is None else str(jnp.dtype(cd)))
        if method == "linear":
            norm_on = shared(normalize, leaf, "normalize", True, _flag)
            if cd is not None:
                total_flat.append(_linear_in(leaves, base_leaves, i, leaf, w, norm_on, cd))
            xs = jnp.stack([c.gathered(jnp.asarray(leaves[j][i])).astype(jnp.float32) for j in range(n)])
            wa = jnp.asarray(w, jnp.float32)
            weighted, total = _linear(xs, wa)
            if norm_on:
                s = sum(w)  # mergekit sums the float32 weights: the same value up to rounding
                wsum = jnp.sum(wa)
                if s == 0 or float(wsum) == 0:
                    raise ValueError(f"merge: linear with normalize: the weights of leaf {leaf!r} sum to zero")
                parts, total = weighted / wsum, total / wsum
            else:
                if base is None:
                    raise ValueError("merge: linear without normalize averages full weights and needs base=W_base")
                b = c.gathered(jnp.asarray(base_leaves[i])).astype(jnp.float32)
                parts = weighted + (wa - jnp.float32(1.0 / n)).reshape((n,) + (1,) * b.ndim) * b[None]
                total = total + (jnp.sum(wa) - 1.0) * b
            for j in range(n):
                parts_flat[j].append(parts[j])
            if cd is None:
                total_flat.append(total)
            continue

        norm_on = shared(normalize, leaf, "normalize", spec.normalize, _flag)
        lam = shared(lambda_, leaf, "lambda", 1.0, _number)
        shared(int8_mask, leaf, "int8_mask", False, _flag)
        cons = None
        if spec.consensus:
            cons = shared(consensus, leaf, "consensus", "sum", lambda v, lf, a: v)
            if cons not in ("sum", "count"):
                raise ValueError(f"merge: consensus={cons!r} for leaf {leaf!r}; accepted: 'sum', 'count'")
        if cd is not None:
            parts, total = _gta_leaf_in(
                spec,
                leaves,
                i,
                leaf,
                w,
                lam,
                cons,
                norm_on,
                cd,
                locals_=(shared, donor_param, densities, gammas, epsilons, donor_keys, rescale, rescale_norm),
            )
            for j in range(n):
                parts_flat[j].append(parts[j])
            total_flat.append(total)
            continue
        xs = []
        for j in range(n):
            x = c.gathered(jnp.asarray(leaves[j][i]))
            if spec.sparsify is not None:
                res = shared(rescale, leaf, "rescale", spec.rescale, _flag)
                norm = rescale_norm if res else "none"
                if masks is not None:
                    d = rec.values["density"][j]
                    x = (
                        x.astype(jnp.float32)
                        if masks[j][i] is None
                        else _masked_leaf(x, masks[j][i], jnp.float32(d), norm)
                    )
                else:
                    d = donor_param(densities, j, leaf, "density")
                    x = _sparsify(spec.sparsify, x, d, j, leaf, norm, donor_param, gammas, epsilons, donor_keys)
            xs.append(x.astype(jnp.float32) * jnp.float32(w[j]))
        parts, total = _combine(jnp.stack(xs), jnp.asarray(w, jnp.float32), jnp.float32(lam), cons, norm_on)
        del xs
        for j in range(n):
            parts_flat[j].append(parts[j])
        total_flat.append(total)

    treedef = jax.tree_util.tree_structure(deltas[0])
    settings = {"method": method, **rec.values, "trim_scope": trim_scope}
    if spec.sparsify is not None:
        settings["rescale_norm"] = rescale_norm
    if random:
        settings["key"] = np.asarray(jax.random.key_data(key)).tolist()
    one = None
    if compute_dtype is not None:
        if len(resolved) > 1:
            raise ValueError(f"merge: compute_dtype={compute_dtype!r} resolves to {sorted(resolved)}; give one dtype")
        settings["compute_dtype"] = resolved.pop() if resolved else "float32"
        one = None if settings["compute_dtype"] == "float32" else jnp.dtype(settings["compute_dtype"])
    return Merged(
        parts=tuple(jax.tree_util.tree_unflatten(treedef, p) for p in parts_flat),
        method=method,
        settings=settings,
        _total=jax.tree_util.tree_unflatten(treedef, total_flat),
        compute_dtype=one,
    )


def _linear_in(
    leaves: list[list[Any]], base_leaves: list[Any] | None, i: int, leaf: str, w: list[float], normalize: bool, cd: Any
) -> jax.Array:
    """mergekit's linear on ``cd`` checkpoints: ``Σ w_j W_j (/ Σ w_j)`` accumulated in float32 from
    zero, in input order, rounded once to ``cd``; returned as ``R − W_base`` (exact in float32)."""
    if base_leaves is None:
        raise ValueError("merge: linear with compute_dtype forms the full weights W_j = W_base + τ_j and needs base=")
    b = c.gathered(jnp.asarray(base_leaves[i])).astype(cd).astype(jnp.float32)
    # torch's addcmul_ fuses multiply and add (one rounding per step): on the host in float64, where
    # the product of a cd value and a float32 weight and its sum with the float32 accumulator are exact.
    bh = np.asarray(b, np.float64)
    wf = np.asarray(w, np.float64).astype(np.float32)
    acc = np.zeros(bh.shape, np.float32)
    for j, wj in enumerate(wf):
        full = np.asarray(_r(b + c.gathered(jnp.asarray(leaves[j][i])).astype(jnp.float32), cd), np.float64)
        acc = (acc.astype(np.float64) + full * np.float64(wj)).astype(np.float32)
    if normalize:
        den = functools.reduce(np.add, wf)
        if float(den) == 0:
            raise ValueError(f"merge: linear with normalize: the weights of leaf {leaf!r} sum to zero")
        acc = acc / den
    acc = jnp.asarray(acc)
    return _r(acc, cd) - b


def _gta_leaf_in(
    spec: _Method,
    leaves: list[list[Any]],
    i: int,
    leaf: str,
    w: list[float],
    lam: float,
    cons: str | None,
    norm_on: bool,
    cd: Any,
    locals_: tuple,
) -> tuple[jax.Array, jax.Array]:
    """One tensor of a task-arithmetic-family merge with mergekit's ``cd`` arithmetic."""
    shared, donor_param, densities, gammas, epsilons, donor_keys, rescale, rescale_norm = locals_
    n = len(leaves)
    wc = np.asarray(w, np.float64).astype(cd).astype(np.float32)  # torch.tensor(weights, dtype=cd)
    xs = []
    for j in range(n):
        x = _r(c.gathered(jnp.asarray(leaves[j][i])).astype(jnp.float32), cd)  # model − base, in cd
        if spec.sparsify is not None:
            res = shared(rescale, leaf, "rescale", spec.rescale, _flag)
            norm = rescale_norm if res else "none"
            d = donor_param(densities, j, leaf, "density")
            g = donor_param(gammas, j, leaf, "gamma") if spec.sparsify == "outliers" else 0.01
            e = donor_param(epsilons, j, leaf, "epsilon") if spec.sparsify == "della" else 0.15
            try:
                check_parameters(_KIND_METHOD[spec.sparsify], density=d, gamma=g, epsilon=e)
            except ValueError as err:
                raise ValueError(f"{err} (donor {j}, leaf {leaf!r})") from None
            k = c.leaf_key(donor_keys[j], leaf) if donor_keys is not None else None
            x = _sparsify_in(spec.sparsify, x, d, g, e, norm, k, cd)
        xs.append(_r(x * jnp.float32(wc[j]), cd))
    return _combine_in(jnp.stack(xs), jnp.asarray(wc), lam, cons, norm_on, cd)


def _sparsify(
    kind: str,
    x: jax.Array,
    d: float,
    j: int,
    leaf: str,
    norm: str,
    donor_param: Callable[..., float],
    gammas: list[Any],
    epsilons: list[Any],
    donor_keys: list[jax.Array] | None,
) -> jax.Array:
    g = donor_param(gammas, j, leaf, "gamma") if kind == "outliers" else 0.01
    e = donor_param(epsilons, j, leaf, "epsilon") if kind == "della" else 0.15
    try:
        check_parameters(_KIND_METHOD[kind], density=d, gamma=g, epsilon=e)
    except ValueError as err:
        raise ValueError(f"{err} (donor {j}, leaf {leaf!r})") from None
    if d >= 1.0:  # mergekit returns the tensor as is (no trim, no rescale)
        return x.astype(jnp.float32)
    if d <= 0.0 and kind != "outliers":  # mergekit: zeros (DARE: a keep probability of 0)
        return jnp.zeros(x.shape, jnp.float32)
    da = jnp.float32(d)
    if kind == "magnitude":
        return _magnitude_leaf(x, jnp.int32(_count(d, x.size)), da, norm)
    if kind == "outliers":
        upper, top = _outlier_counts(d, g, x.size)
        return _outliers_leaf(x, jnp.int32(upper), jnp.int32(top), da, norm)
    k = c.leaf_key(donor_keys[j], leaf)
    if kind == "random":
        return _random_leaf(x, k, da, norm)
    return _della_leaf(x, k, da, jnp.float32(e), norm)


def _global_masks(
    method: str,
    spec: _Method,
    leaves: list[list[Any]],
    names: list[str],
    densities: list[Any],
    gammas: list[Any],
    rec: _Recorder,
) -> list[list[jax.Array]]:
    """Per-donor masks ranking ``|τ_j|`` over all its leaves together (the TIES paper's top-k)."""
    out = []
    for j, per_leaf in enumerate(leaves):
        d, g = densities[j], gammas[j]
        if callable(d) or (spec.sparsify == "outliers" and callable(g)):
            raise ValueError("merge: trim_scope='global' needs a constant density (and gamma) per delta")
        d = _number(d, "*", f"density[{j}]")
        rec.note("density", d, "*", d, j, len(leaves))
        arrays = [c.gathered(jnp.asarray(x)) for x in per_leaf]
        sizes = [int(np.size(x)) for x in arrays]
        if d >= 1.0:
            out.append([None] * len(arrays))
            continue
        flat = jnp.concatenate([jnp.abs(x.astype(jnp.float32)).ravel() for x in arrays])
        size = int(flat.size)
        if spec.sparsify == "magnitude":
            mask = _top_mask(flat, jnp.int32(_count(d, size) if d > 0 else 0))
        else:
            g = _number(g, "*", f"gamma[{j}]")
            rec.note("gamma", g, "*", g, j, len(leaves))
            upper, top = _outlier_counts(d, g, size)
            mask = _top_mask(flat, jnp.int32(upper)) & ~_top_mask(flat, jnp.int32(top))
        del flat
        offsets = np.cumsum([0, *sizes])
        out.append([mask[o : o + s].reshape(np.shape(x)) for o, s, x in zip(offsets, sizes, arrays)])
    del method, names
    return out
