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

    @property
    def total(self) -> PyTree:
        """``Σ_j parts[j] = W_merge − W_base`` (float32), computed in mergekit's order of operations
        (sum of the donors' masked deltas, then ``/ divisor``, then ``· λ``), so
        ``W_base + total`` reproduces mergekit's tensors; equal to the sum of the parts up to
        float32 rounding."""
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
    # mergekit's sparsify.magnitude_outliers: keep ascending ranks [n_bot, n_bot + target_n).
    target_n = int(density * size)
    n_top = int(gamma * size)
    n_bot = max(0, size - target_n - n_top)
    upper = size - n_bot  # the entries kept are the top `upper` minus the top `upper − target_n`
    return upper, max(0, upper - target_n)


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
      (``rescale_norm="density"``: the paper's ``1/p`` per entry). Requires
      ``0 < density ± ε < 1`` when ``density < 1``.
    - ``breadcrumbs`` / ``breadcrumbs_ties`` (Model Breadcrumbs, Davari & Belilovsky, 2024,
      arXiv:2312.06795): drop the ``⌊γ·numel⌋`` largest-magnitude entries (fewer if needed to
      keep the target) and the smallest, keeping ``⌊density·numel⌋`` entries.
    - ``linear`` (model soups, Wortsman et al., 2022, arXiv:2203.05482): mergekit averages the full
      weights, ``W_merge = Σ w_j W_j / Σ w_j``. With normalize (its default) that is
      ``W_base + Σ_j w_j τ_j / Σ w_j``, so ``part_j = w_j τ_j / Σ w``; a zero weight sum is refused
      (mergekit divides by it). Without normalize ``W_merge = Σ w_j W_j`` needs ``base=``, and
      ``part_j = w_j τ_j + (w_j − 1/n)·W_base`` (so that ``Σ part_j = W_merge − W_base``).

    With ``density = 1`` a method leaves deltas unsparsified (and unrescaled), as mergekit does.
    Without consensus, ``D = Σ_j w_j`` (``1`` where ``|Σ w| < 1e-8``). Computation is in float32:
    mergekit computes these methods in the checkpoints' dtype (bfloat16 checkpoints: bfloat16
    arithmetic, ``linear`` alone in float32), so float32 inputs match it exactly and 16-bit ones
    up to their rounding. ``int8_mask`` changes only mergekit's memory use (its mask is boolean
    either way) and is recorded.

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

    def check_density(d: float, leaf: str, j: int) -> None:
        if not 0.0 < d <= 1.0:
            raise ValueError(f"merge: density[{j}]={d!r} for leaf {leaf!r} is outside the accepted range (0, 1]")

    masks = _global_masks(method, spec, leaves, names, densities, gammas, rec) if trim_scope == "global" else None

    parts_flat: list[list[jax.Array]] = [[] for _ in range(n)]
    total_flat: list[jax.Array] = []
    for i, leaf in enumerate(names):
        w = [donor_param(weights, j, leaf, "weight") for j in range(n)]
        if method == "linear":
            norm_on = shared(normalize, leaf, "normalize", True, _flag)
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
        xs = []
        for j in range(n):
            x = c.gathered(jnp.asarray(leaves[j][i]))
            if spec.sparsify is not None:
                res = shared(rescale, leaf, "rescale", spec.rescale, _flag)
                norm = rescale_norm if res else "none"
                if masks is not None:
                    d = rec.values["density"][j]
                    x = _masked_leaf(x, masks[j][i], jnp.float32(d), norm) if d < 1.0 else x.astype(jnp.float32)
                else:
                    d = donor_param(densities, j, leaf, "density")
                    check_density(d, leaf, j)
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
    return Merged(
        parts=tuple(jax.tree_util.tree_unflatten(treedef, p) for p in parts_flat),
        method=method,
        settings=settings,
        _total=jax.tree_util.tree_unflatten(treedef, total_flat),
    )


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
    if kind == "outliers":
        g = donor_param(gammas, j, leaf, "gamma")
        if not 0.0 <= g <= 1.0:
            raise ValueError(f"merge: gamma[{j}]={g!r} for leaf {leaf!r} is outside the accepted range [0, 1]")
    if kind == "della":
        e = donor_param(epsilons, j, leaf, "epsilon")
        if e < 0 or (d < 1.0 and not (d + e < 1.0 and d - e > 0.0)):
            raise ValueError(
                f"merge: epsilon[{j}]={e!r} with density {d!r} for leaf {leaf!r}: keep probabilities "
                f"density ± epsilon must lie in (0, 1) (mergekit's condition) and epsilon ≥ 0"
            )
    if d >= 1.0:  # mergekit returns the tensor as is (no trim, no rescale)
        return x.astype(jnp.float32)
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
        if not 0.0 < d <= 1.0:
            raise ValueError(f"merge: density[{j}]={d!r} is outside the accepted range (0, 1]")
        rec.note("density", d, "*", d, j, len(leaves))
        arrays = [c.gathered(jnp.asarray(x)) for x in per_leaf]
        sizes = [int(np.size(x)) for x in arrays]
        if d >= 1.0:
            out.append([None] * len(arrays))
            continue
        flat = jnp.concatenate([jnp.abs(x.astype(jnp.float32)).ravel() for x in arrays])
        size = int(flat.size)
        if spec.sparsify == "magnitude":
            mask = _top_mask(flat, jnp.int32(_count(d, size)))
        else:
            g = _number(g, "*", f"gamma[{j}]")
            if not 0.0 <= g <= 1.0:
                raise ValueError(f"merge: gamma[{j}]={g!r} is outside the accepted range [0, 1]")
            rec.note("gamma", g, "*", g, j, len(leaves))
            upper, top = _outlier_counts(d, g, size)
            mask = _top_mask(flat, jnp.int32(upper)) & ~_top_mask(flat, jnp.int32(top))
        del flat
        offsets = np.cumsum([0, *sizes])
        out.append([mask[o : o + s].reshape(np.shape(x)) for o, s, x in zip(offsets, sizes, arrays)])
    del method, names
    return out
