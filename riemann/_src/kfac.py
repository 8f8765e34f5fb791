"""Kronecker-factored Gauss–Newton curvature per weight matrix (K-FAC) and its eigenvalue-corrected
variant (EK-FAC), and the local quadratic of an edit scored against it with no further passes.

For a linear map ``y = x Wᵀ`` with ``W`` of shape (out, in), inputs ``a`` and output gradients
``δ`` (labels sampled from the model's own predictive distribution, so that ``E[δδᵀ]`` is the
Fisher, equal to the Gauss–Newton matrix for softmax cross-entropy), K-FAC (Martens & Grosse,
"Optimizing Neural Networks with Kronecker-factored Approximate Curvature", ICML 2015) keeps the
weight's block of the Gauss–Newton matrix as a Kronecker product

    G_W ≈ A ⊗ S,   A = E[a aᵀ] (in × in),   S = E[δ δᵀ] (out × out),
    ⟨X, G_W X⟩ ≈ tr(S X A Xᵀ)     for a change X of shape (out, in).

EK-FAC (George et al., "Fast Approximate Natural Gradient Descent in a Kronecker-factored
Eigenbasis", NeurIPS 2018) keeps the eigenbases ``Q_A``, ``Q_S`` of the two factors and re-fits the
diagonal in that basis from per-example gradients ``G_n``:

    ⟨X, G_W X⟩ ≈ Σ_ij λ_ij ((Q_Sᵀ X Q_A)_ij)²,   λ_ij = E_n[((Q_Sᵀ G_n Q_A)_ij)²].

For a fixed basis the diagonal ``diag(Qᵀ G Q)`` is the Frobenius-closest approximation of the form
``Q D Qᵀ``, and K-FAC's own eigen-decomposition ``λ = λ_S λ_Aᵀ`` is one such ``D``: EK-FAC is never
further from the block than K-FAC. Keeping only the ``r`` leading eigen-directions of each factor
(:func:`compress`) makes an edit's quadratic cost ``O(r·out·in)`` and the stored factors
``r·(out + in + r)`` numbers per matrix; directions dropped contribute nothing (an under-estimate that
vanishes at full rank).

This module is pure JAX over arrays and pytrees; which leaves are linear weights and how ``a`` and
``δ`` are collected is the caller's business (``analysis.study.kfac`` does it for the toolkit's models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann._src.estimate import Estimate

PyTree = Any


class KroneckerFactor(NamedTuple):
    """``G_W ≈ A ⊗ S`` for a weight ``W`` of shape (out, in): ``a`` is (in, in), ``s`` is (out, out),
    both symmetric positive semi-definite."""

    a: jax.Array
    s: jax.Array


class EigenFactor(NamedTuple):
    """``G_W ≈ (Q_A ⊗ Q_S) diag(vec λ) (Q_A ⊗ Q_S)ᵀ`` for ``W`` of shape (out, in): ``qa`` is
    (in, r_a), ``qs`` is (out, r_s) with orthonormal columns ordered by decreasing eigenvalue of their
    Kronecker factor, ``lam`` is (r_s, r_a). K-FAC in its eigenbasis has ``lam = λ_S λ_Aᵀ``; EK-FAC
    re-fits ``lam`` from per-example gradients."""

    qa: jax.Array
    qs: jax.Array
    lam: jax.Array


Factor = KroneckerFactor | EigenFactor


def quadratic(factor: Factor, x: jax.Array) -> jax.Array:
    """``⟨X, G_W X⟩`` under ``factor`` for a change ``x`` of shape (out, in), in float32 (float64 for
    float64 inputs). Traceable.

    Kronecker: ``tr(S X A Xᵀ) = Σ (S X) ⊙ (X A)``; eigen: ``Σ λ ⊙ (Q_Sᵀ X Q_A)²``.

    Example:
      >>> import jax.numpy as jnp
      >>> f = KroneckerFactor(a=jnp.eye(2), s=2.0 * jnp.eye(3))
      >>> float(quadratic(f, jnp.ones((3, 2))))          # 2 · ‖X‖²
      12.0
      >>> float(quadratic(eigen(f), jnp.ones((3, 2))))
      12.0
    """
    x = trees.widen(x)
    if isinstance(factor, KroneckerFactor):
        a, s = factor.a.astype(x.dtype), factor.s.astype(x.dtype)
        return jnp.sum((s @ x) * (x @ a))
    if isinstance(factor, EigenFactor):
        y = factor.qs.astype(x.dtype).T @ x @ factor.qa.astype(x.dtype)
        return jnp.sum(factor.lam.astype(x.dtype) * jnp.square(y))
    raise TypeError(f"factor must be a KroneckerFactor or an EigenFactor, got {type(factor).__name__}")


def _eigh_desc(m: jax.Array) -> tuple[jax.Array, jax.Array]:
    w, q = jnp.linalg.eigh(m)
    return w[::-1], q[:, ::-1]


def eigen(factor: KroneckerFactor, *, rank: int | None = None) -> EigenFactor:
    """K-FAC in its eigenbasis, ``λ = λ_S λ_Aᵀ`` (exactly ``A ⊗ S`` at full rank), keeping the
    ``rank`` leading directions of each factor when given (see :func:`compress`)."""
    wa, qa = _eigh_desc(factor.a)
    ws, qs = _eigh_desc(factor.s)
    out = EigenFactor(qa=qa, qs=qs, lam=jnp.outer(ws, wa))
    return out if rank is None else compress(out, rank)


def compress(factor: Factor, rank: int) -> EigenFactor:
    """Keep the ``rank`` leading eigen-directions of each Kronecker factor (``min(rank, dim)``):
    an edit then costs ``O(rank·out·in)`` and the factor ``rank·(out + in + rank)`` numbers. The
    dropped directions contribute nothing, so the quadratic of a positive semi-definite factor can
    only fall; at full rank nothing changes."""
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank={rank!r}; expected a positive integer (eigen-directions kept per factor)")
    if isinstance(factor, KroneckerFactor):
        return eigen(factor, rank=rank)
    ra, rs = min(rank, factor.qa.shape[1]), min(rank, factor.qs.shape[1])
    return EigenFactor(qa=factor.qa[:, :ra], qs=factor.qs[:, :rs], lam=factor.lam[:rs, :ra])


def factor_size(factor: Factor) -> int:
    """Numbers stored by ``factor``."""
    return int(sum(np.prod(x.shape) for x in factor))


@dataclasses.dataclass(frozen=True)
class StructuredCurvature:
    """The gradient at ``W_post`` with a per-leaf curvature: a Kronecker (or eigen) factor for the
    leaves named in ``factors``, the Hessian diagonal for every other leaf.

    Attributes:
      grad: ``g`` (a pytree like the parameters).
      factors: ``{leaf name: factor}`` for weight matrices of shape (out, in).
      diagonal: a pytree like ``grad`` with the Hessian-diagonal estimate, used for the leaves
        without a factor (``None``: those leaves get no quadratic term, which is refused unless
        every leaf has a factor).
      name: the method recorded in each estimate (``"kfac"``, ``"ekfac"`` …).
      settings: what produced the factors, recorded in each estimate.
    """

    grad: PyTree
    factors: Mapping[str, Factor]
    diagonal: PyTree | None = None
    name: str = "kfac"
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        names = trees.leaf_names(self.grad)
        shapes = dict(zip(names, (jnp.shape(x) for x in jax.tree_util.tree_leaves(self.grad))))
        unknown = sorted(set(self.factors) - set(shapes))
        if unknown:
            raise ValueError(f"factors name leaves the gradient does not have: {unknown[:5]}")
        for n, f in self.factors.items():
            shape = shapes[n]
            dims = (f.s.shape[0], f.a.shape[0]) if isinstance(f, KroneckerFactor) else (f.qs.shape[0], f.qa.shape[0])
            if len(shape) != 2 or tuple(shape) != dims:
                raise ValueError(f"leaf {n!r} has shape {tuple(shape)}; its factor is for a (out, in) = {dims} matrix")
        if self.diagonal is None and len(self.factors) < len(names):
            missing = [n for n in names if n not in self.factors]
            raise ValueError(f"leaves {missing[:5]} have no factor and no diagonal was given to fall back on")

    def per_leaf(self) -> list[Factor | None]:
        """The factor of each leaf in flattening order (``None`` where the diagonal serves)."""
        return [self.factors.get(n) for n in trees.leaf_names(self.grad)]

    def estimate(self, change: PyTree, *, saturate: Callable[[float], float] | None = None) -> Estimate:
        """``⟨g, ΔW~⟩ + ½ Σ_leaves q(ΔW~_leaf)``: ``q`` the factor's quadratic where the leaf has one,
        ``Σ diag(H) ΔW~²`` elsewhere. No passes over data.

        ``saturate`` maps the whole second-order term ``Q = ½ Σ q`` to what replaces it, ``φ(Q)``
        (a saturation curve): the value is then ``⟨g, ΔW~⟩ + φ(Q)``, each leaf's second-order part
        is scaled by ``φ(Q)/Q``, and ``terms`` add ``second_saturated`` and ``saturation``
        (``φ(Q)/Q``)."""
        per_leaf = self.per_leaf()
        firsts, quads = _terms_jit(self.grad, self.diagonal, per_leaf, change)
        first = np.asarray(jax.device_get(firsts), np.float64)
        quad = np.asarray(jax.device_get(quads), np.float64)
        kinds = np.array([f is not None for f in per_leaf], bool)
        second = float(0.5 * quad.sum())
        terms = {
            "first": float(first.sum()),
            "second": second,
            "curvature": float(quad.sum()),
            "curvature_factored": float(quad[kinds].sum()) if kinds.any() else 0.0,
        }
        value_per_leaf = first + 0.5 * quad
        value = float(value_per_leaf.sum())
        if saturate is not None:
            phi = float(saturate(second))
            scale = phi / second if second > 0 else 1.0
            value_per_leaf = first + 0.5 * quad * scale
            value = terms["first"] + phi
            terms |= {"second_saturated": phi, "saturation": scale}
        return Estimate(
            method=self.name,
            value=value,
            batch_values=np.array([value]),
            modules=dict(zip(trees.leaf_names(self.grad), value_per_leaf.tolist())),
            terms=terms,
            cost={"gradient": 0, "hvp": 0, "forward": 0},
            settings={"shared": True, **self.settings},
        )


def quadratic_terms(
    grad: PyTree, diagonal: PyTree | None, factors: list[Factor | None], change: PyTree
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per leaf ``⟨g, x⟩`` and ``⟨x, G x⟩`` (the factor's quadratic, or ``Σ diag ⊙ x²`` where the
    factor is ``None``; zero where there is no diagonal either). Traceable."""
    gl = jax.tree_util.tree_leaves(grad)
    cl = jax.tree_util.tree_leaves(change)
    dl = jax.tree_util.tree_leaves(diagonal) if diagonal is not None else [None] * len(gl)
    firsts = trees.leaf_vdots(grad, change)
    quads = []
    for f, x, d in zip(factors, cl, dl):
        if f is not None:
            quads.append(quadratic(f, x))
        elif d is not None:
            w = trees.widen(x)
            quads.append(jnp.sum(d.astype(w.dtype) * jnp.square(w)))
        else:
            quads.append(jnp.zeros((), trees.widen(x).dtype))
    return firsts, quads


_terms_jit = jax.jit(quadratic_terms)
