"""Quadrature rules on [0, 1] for path integrals.

The paper (Tang et al., 2024, Eq. 1) approximates the line integral
``∫_0^1 <∇L(W + t·ΔW~), ΔW~> dt`` by a left Riemann sum with C = 5 nodes. This module gives that
rule and the standard better ones, all as ``(nodes, weights)`` on [0, 1] with weights summing to 1,
so that ``Σ_i w_i f(t_i) ≈ ∫_0^1 f(t) dt``.

``n`` is always the number of nodes, i.e. the number of gradient evaluations a rule costs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RULES: tuple[str, ...] = ("left", "right", "midpoint", "trapezoid", "simpson", "gauss-legendre")


class Quadrature(NamedTuple):
    """Nodes and weights of a rule on [0, 1]; unpacks as ``nodes, weights``."""

    nodes: np.ndarray
    weights: np.ndarray


def _check(rule: str, n: int) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown quadrature rule {rule!r}; accepted rules: {', '.join(RULES)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n (number of nodes) must be an integer >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"n (number of nodes) must be >= 1, got {n}")
    if rule == "trapezoid" and n < 2:
        raise ValueError(f"rule 'trapezoid' needs n >= 2 nodes (both endpoints), got {n}")
    if rule == "simpson" and (n < 3 or n % 2 == 0):
        raise ValueError(f"rule 'simpson' needs an odd n >= 3 (an even number of intervals), got {n}")


def degree(rule: str, n: int) -> int:
    """Highest polynomial degree the rule with ``n`` nodes integrates exactly.

    Left and right Riemann sums: 0. Midpoint and trapezoid: 1. Composite Simpson: 3.
    Gauss–Legendre with n nodes: 2n − 1.

    Example:
      >>> degree("left", 5), degree("simpson", 5), degree("gauss-legendre", 8)
      (0, 3, 15)
    """
    _check(rule, n)
    return {"left": 0, "right": 0, "midpoint": 1, "trapezoid": 1, "simpson": 3}.get(rule, 2 * n - 1)


def quadrature(rule: str = "left", n: int = 5) -> Quadrature:
    """Nodes and weights of a quadrature rule on [0, 1].

    Rules (``n`` = number of nodes):

    - ``left``: ``t_c = c/n``, ``w_c = 1/n`` for c = 0…n−1 — the paper's Riemann sum (Eq. 1, C = n);
      it never evaluates the end point.
    - ``right``: ``t_c = (c+1)/n``, ``w_c = 1/n``.
    - ``midpoint``: ``t_c = (c + ½)/n``, ``w_c = 1/n``.
    - ``trapezoid``: ``t_c = c/(n−1)``, weights ``h·(½, 1, …, 1, ½)`` with ``h = 1/(n−1)``.
    - ``simpson``: composite Simpson on ``n − 1`` (even) intervals, weights ``h/3·(1, 4, 2, …, 4, 1)``.
    - ``gauss-legendre``: Legendre–Gauss nodes mapped from [−1, 1] to [0, 1], weights halved.

    Args:
      rule: one of :data:`RULES`.
      n: number of nodes (gradient evaluations), at least 1 (2 for trapezoid, odd ≥ 3 for Simpson).

    Returns:
      ``Quadrature(nodes, weights)``: float64 arrays of length ``n``; weights sum to 1.

    Example:
      >>> nodes, weights = quadrature("left", 5)
      >>> nodes.tolist(), weights.tolist()
      ([0.0, 0.2, 0.4, 0.6, 0.8], [0.2, 0.2, 0.2, 0.2, 0.2])
      >>> nodes, weights = quadrature("gauss-legendre", 3)
      >>> float(weights @ nodes**5)  # exact up to degree 2n - 1 = 5: ∫ t^5 dt = 1/6
      0.1666...
    """
    _check(rule, n)
    n = int(n)
    if rule == "left":
        nodes = np.arange(n) / n
        weights = np.full(n, 1.0 / n)
    elif rule == "right":
        nodes = np.arange(1, n + 1) / n
        weights = np.full(n, 1.0 / n)
    elif rule == "midpoint":
        nodes = (np.arange(n) + 0.5) / n
        weights = np.full(n, 1.0 / n)
    elif rule == "trapezoid":
        h = 1.0 / (n - 1)
        nodes = np.arange(n) / (n - 1)  # division, not k·h, so the last node is exactly 1.0
        weights = np.full(n, h)
        weights[[0, -1]] = h / 2
    elif rule == "simpson":
        h = 1.0 / (n - 1)
        nodes = np.arange(n) / (n - 1)
        weights = np.where(np.arange(n) % 2 == 1, 4.0, 2.0) * h / 3
        weights[[0, -1]] = h / 3
    else:
        x, w = np.polynomial.legendre.leggauss(n)
        nodes = (x + 1.0) / 2.0
        weights = w / 2.0
    # Make the end nodes exact (0 and 1 are representable) and the weights sum to 1 to the last bit
    # that float64 allows, so Σw = 1 holds for every rule, unlike some libraries' trapezoids.
    weights = weights / weights.sum()
    return Quadrature(nodes.astype(np.float64), weights.astype(np.float64))


def refine(rule: str, n: int) -> int:
    """The next node count whose node set contains the current one (for adaptive refinement).

    Left, right, trapezoid and Simpson halve the step (``2n`` or ``2n − 1`` nodes); midpoint
    divides each cell in three (``3n``), the smallest split that keeps the old midpoints. Gauss–
    Legendre has no nested refinement; it doubles ``n`` and its nodes are all new.

    Example:
      >>> refine("left", 5), refine("trapezoid", 5), refine("midpoint", 5), refine("gauss-legendre", 4)
      (10, 9, 15, 8)
    """
    _check(rule, n)
    if rule in ("left", "right"):
        return 2 * n
    if rule in ("trapezoid", "simpson"):
        return 2 * n - 1
    if rule == "midpoint":
        return 3 * n
    return 2 * n
