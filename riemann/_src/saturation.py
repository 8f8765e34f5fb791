"""How a loss leaves its shared quadratic as a step grows, measured once per pair with forward
passes of the loss itself: the map ``φ`` from a quadratic prediction to a loss change, and how far
the result can be trusted.

A second-order model ``⟨g, x⟩ + Q(x)``, ``Q(x) = ½⟨x, Gx⟩``, is exact only near ``W_post``. How the
loss grows beyond it depends on the direction. Two families of directions bracket what edits of a
delta ``ΔW`` do:

- **coherent**: ``ΔW`` itself (EXPO's steps, and the part of any change along ``ΔW``);
- **noise**: random-sign copies ``ε ⊙ ΔW`` (``ε = ±1`` per parameter), which is what DARE's
  rescaled masks are in the limit of many parameters, scaled by ``(1 − k)√(p/(1 − p))``;
- **gradient** (when ``grad`` is given): the gradient-sign copy ``S = sign(g) ⊙ |ΔW|`` with its part
  along ``ΔW`` taken out, ``S⊥ = S − κ·ΔW``, ``κ = ⟨S, ΔW⟩/‖ΔW‖²``. An edit selected by the gradient
  (the biased ΔW·∇L split, gradient-saliency pruning) moves along it. The gradient lies in the top of
  the Hessian's spectrum, and no shared curvature sees it there: a Kronecker factorisation pairs a
  layer's inputs and output gradients as if independent, which they are least along the mean
  gradient itself, and a diagonal drops the coupling altogether. Along ``S⊥`` the exact quadratic is
  50–300× K-FAC's on the pairs this was built on; the curve measures what the loss actually does.

Along each, on the calibration batches, the *even part* of the measured change

    C(s) = ½ [L(W_post + s·d) + L(W_post − s·d)] − L(W_post)

is set against the shared quadratic of the same step, ``Q(s) = s²·Q(d)``, over a grid of step
multiples ``s``. The curve ``φ(Q(s)) = C(s)`` is then the loss change an edit of quadratic ``Q``
would see along that family. Along ``ΔW`` the curve also keeps the *odd part* beyond the gradient's
term,

    O(s) = ½ [L(W_post + s·d) − L(W_post − s·d)] − s·⟨g, d⟩,

the cubic and higher odd orders of the loss along ``d`` (between ``W_post`` and ``W_pre`` the loss
is not symmetric about ``W_post``). Along random-sign copies it has mean zero over the signs. Along
``S⊥``, which the calibration gradient chose, it is selected like the first-order term (on
``vit/rotated`` it would move the biased split the wrong way, by ∓2.4 at ``k = 0.5, 1.5``), and
cross-fitting it would take a curve per batch: there it stays in the error. It holds what no curvature at
``W_post`` can: a confident token's loss growing exponentially in its margin before it grows
linearly, and the network's own non-linearity (layer norms, attention), which the cross-entropy of
the linearised network does not see. It needs nothing but ``loss_fn``: any loss works.

An edit's change ``x`` splits into ``a·ΔW`` along ``ΔW`` (``a = c·ρ``, with ``ρ = ‖x‖/‖ΔW‖`` and
``c = cos(x, ΔW)``), ``b·S⊥`` along the gradient-sign direction (``b = ⟨x, S⊥⟩/‖S⊥‖²``) and the rest.
Each part is read on its own curve::

    ⟨g, x⟩ + φ_coherent(Q∥) + O_coherent(a) + φ_gradient(Q_g) + φ_noise(Q(x) − Q∥ − Q_g),
    Q∥ = a²·Q(ΔW),  Q_g = b²·Q(S⊥).

The parts are orthogonal in the plain inner product, not in ``G``'s: the cross terms
``2ab⟨ΔW, G S⊥⟩`` and those with the rest stay in what the noise curve reads, which can make it
negative (a negative ``q`` passes through ``φ`` as it is). Odd cross terms (``a²`` times the rest,
and so on) are in no curve.

**Trust.** Each measured direction also gives the model's error there, on the calibration batches:
at every grid step as fitted and, at each inner step, with that step left out of the fit (a curve
through every grid point is exact there in-sample; left out, the step shows what interpolating
misses across the two neighbouring intervals, which errs on the safe side). The largest over directions,
signs and both fits, plus what the test batches may add — a band around the mean change, its
standard error ``sd·√(1/n_calibration + 1/n_held_out)`` (``sd`` the change's spread over
calibration batches, pooled over directions and signs) times the Student-t quantile with
``n_calibration − 1`` degrees of freedom that covers what ``band`` known standard errors would
(``band_quantile``; ``sd`` is estimated from a handful of batches: 3.31 for ``band = 2`` and
4 batches; no band at all can be set from one batch, so then the envelope is infinite and nothing
is trusted) — made non-decreasing in ``s``, is an envelope ``e(s)``. It gives an edit the error

    ê = e_coherent(|c|·ρ) + e_gradient(|b|) + e_noise(ρ_rest) + [structured] |φ_coherent(Q⊥) − φ_noise(Q⊥)|

with ``ρ_rest`` the length of what is left after the parts along ``ΔW`` and ``S⊥`` (relative to
``‖ΔW‖``) and ``Q⊥ = Q(x) − Q∥ − Q_g``. The last term is the doubt about an edit whose component across ``ΔW`` is
*structured* (low rank, BitDelta, magnitude trim): it may saturate like ``ΔW`` rather than like
noise. Edits that *are* noise across ``ΔW`` (DARE, DELLA: each entry of ``ΔW`` times an independent
random factor) are judged by the envelopes alone. :func:`riemann.auto_estimate` trusts the
prediction when ``ê`` is smaller than its distance to the nearest class boundary.

With parameters in a 16-bit dtype, steps that rounding changes (``‖W + s·d − W‖`` off ``s·‖d‖`` by
more than 1 %) are left out of the grid; so is, for ``φ`` below the grid, any point whose ``|C|`` is
under ``10⁻⁴·|L(W_post)|``, where float32 losses no longer resolve it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann._src.curvature import rademacher
from riemann._src.pacing import pace

PyTree = Any
# Relative lengths along ±ΔW (s = 1 backwards is W_pre; EXPO's α = ±1 is the suite's longest).
DEFAULT_COHERENT_STEPS: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
# Multiples of a random-sign copy: DARE's noise is the copy times (1 − k)√(p/(1 − p)), 0.33 at
# p = 0.1 and k = 0, 19.9 at p = 0.99 and k = −1.
DEFAULT_NOISE_STEPS: tuple[float, ...] = tuple(float(s) for s in np.geomspace(0.01, 100.0, 21))
# Multiples of S⊥, whose length is at most ‖ΔW‖: the biased ΔW·∇L split at k, with a fraction q of
# entries in the scaled group, moves (1 − k)/(2(1 − q)) of it (1 − k at q = ½; 2 at k = −1).
DEFAULT_GRADIENT_STEPS: tuple[float, ...] = (*DEFAULT_COHERENT_STEPS, 1.5, 2.0)
DEFAULT_BAND = 2.0  # the band's coverage, in known standard errors of the held-out mean (band_quantile)
RESOLUTION = 1e-4  # |C| below this fraction of |L(W_post)| is not held below the grid
PRECISION = 0.01  # a step that rounding moves by more than this fraction is left out of the grid


@dataclasses.dataclass(frozen=True)
class Curve:
    """The even part ``C`` of the measured change against the quadratic ``Q`` along one family of
    directions (along ``ΔW``, its odd part ``O`` too), and the prediction's error there.

    Attributes:
      steps: step multiples ``s`` (increasing; relative to ``‖ΔW‖``).
      quadratic: ``Q(s)``, the shared quadratic of the step, mean over directions.
      loss: ``C(s)``, mean over directions and batches.
      errors: the envelope ``e(s)`` (non-decreasing): the largest ``|ΔL − model|`` over directions,
        signs and the fits with and without each inner step, plus the band, ``band_quantile(band,
        n)·se`` (``se`` from the spread over batches pooled over them), at steps ``≤ s``.
      directions: how many directions (one for ``ΔW``; the probes for noise).
      floor: the smallest ``|C|`` resolved (float resolution of the loss); below the grid ``φ`` holds
        the ratio of the first point above it.
      odd: ``O(s) = ½[L(W + s·d) − L(W − s·d)] − s·⟨g, d⟩``, the odd part beyond the first order,
        along ``ΔW``; ``None`` where it stays in :attr:`errors` (random-sign copies, whose odd part
        has mean zero over the signs; ``S⊥``, whose odd part the gradient that chose it biases).

    A grid ends early where the loss stops being finite (one that overflows far from ``W_post``),
    and starts late where 16-bit parameters round its first steps away.
    """

    steps: np.ndarray
    quadratic: np.ndarray
    loss: np.ndarray
    errors: np.ndarray
    directions: int
    floor: float = 0.0
    odd: np.ndarray | None = None

    @property
    def unit(self) -> float:
        """``Q(d)``: the quadratic of one step (``s = 1``) along the family, mean over directions."""
        return float(self.quadratic[0] / self.steps[0] ** 2)

    def __call__(self, q: float) -> float:
        """``φ(q)``: the loss change along this family of a step whose quadratic is ``q``.

        ``C/Q`` is interpolated linearly in ``log Q`` between grid points and held below the grid at
        the first point resolved above :attr:`floor`; beyond the grid ``C`` follows the last
        segment's log–log slope (never decreasing). A non-positive or non-finite ``q`` is returned as
        it is, and so is every ``q`` when the quadratic of the family is not positive (a curvature
        that is not one)."""
        q = float(q)
        qs, cs = self.quadratic, self.loss
        if not np.isfinite(q) or q <= 0.0 or not np.all(qs > 0):
            return q
        resolved = np.abs(cs) >= self.floor
        start = int(np.argmax(resolved)) if resolved.any() else len(qs) - 1
        qs, cs = qs[start:], cs[start:]
        ratio = cs / qs
        if q <= qs[0]:
            return q * float(ratio[0])
        if q >= qs[-1]:
            if len(qs) >= 2 and cs[-1] > 0 and cs[-2] > 0:
                slope = max(0.0, float(np.log(cs[-1] / cs[-2]) / np.log(qs[-1] / qs[-2])))
                return float(cs[-1] * (q / qs[-1]) ** slope)
            return q * float(ratio[-1])
        return q * float(np.interp(np.log(q), np.log(qs), ratio))

    def odd_at(self, step: float) -> float:
        """``O(s)`` at a signed step (``O(−s) = −O(s)``): linear in ``s`` between grid points, cubic
        below the grid (the first odd order beyond the gradient), and beyond it proportional to ``s``
        (far from ``W`` the loss grows about linearly on each side). 0 for a family without one."""
        s = float(step)
        if self.odd is None or not np.isfinite(s) or s == 0.0:
            return 0.0
        x, grid, o = abs(s), self.steps, self.odd
        if x <= grid[0]:
            v = o[0] * (x / grid[0]) ** 3
        elif x >= grid[-1]:
            v = o[-1] * (x / grid[-1])
        else:
            v = np.interp(x, grid, o)
        return float(v if s > 0 else -v)

    def error(self, step: float) -> float:
        """``ê(s)``: between grid steps a power law through the two neighbouring grid values (linear
        in log–log; linear in ``s`` where the lower one is 0 or not below the upper), so never above
        the next grid value nor below the previous one; below the grid the first value scaled by ``s/s₀``
        (the band, from the spread of the first-order term over batches, is first order in the
        step); beyond it the last value scaled by ``(s/s_last)³``."""
        s = float(step)
        if not s >= 0:
            raise ValueError(f"step={step!r}; expected a length ≥ 0")
        grid, e = self.steps, self.errors
        if not np.all(np.isfinite(e)):  # a band from one batch (or a record that lost it): unknown
            return float("inf")
        if s <= grid[0]:
            return float(e[0] * (s / grid[0]))
        if s > grid[-1]:
            return float(e[-1] * (s / grid[-1]) ** 3)
        i = int(np.searchsorted(grid, s))
        lo, hi = float(e[i - 1]), float(e[i])
        if lo <= 0.0 or hi <= lo:
            return float(lo + (hi - lo) * (s - grid[i - 1]) / (grid[i] - grid[i - 1]))
        slope = np.log(hi / lo) / np.log(grid[i] / grid[i - 1])
        return float(lo * (s / grid[i - 1]) ** slope)

    def record(self) -> dict[str, Any]:
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Saturation:
    """The pair's saturation curves and what they were measured on (:func:`saturation`).

    Attributes:
      coherent: along ``±s·ΔW``.
      noise: along ``±s·(ε ⊙ ΔW)``, random-sign copies.
      delta: ``ΔW`` (a reference, for placing a change: its length and alignment).
      scale: ``‖ΔW‖``.
      band: known standard errors of the held-out mean whose coverage the envelope's band has.
      cost: forward passes per calibration batch, spent once.
      gradient: along ``±s·S⊥``, the gradient-sign copy of ``ΔW`` less its part along ``ΔW``
        (``None`` when not measured: every change is then read as having no part there).
      grad: the gradient ``S`` was made from (a reference, for placing a change).
      gradient_shift: ``κ = ⟨S, ΔW⟩/‖ΔW‖²``, so that ``S⊥ = S − κ·ΔW``.
      gradient_scale: ``‖S⊥‖``.
      quantile: the multiple of an estimated standard error the envelopes take for ``band``
        (``band_quantile`` of the calibration batches; ``inf`` from one batch; ``None``: ``band``
        itself, as in records written before it).
    """

    coherent: Curve
    noise: Curve
    delta: PyTree
    scale: float
    band: float
    cost: dict[str, int]
    gradient: Curve | None = None
    grad: PyTree = None
    gradient_shift: float = 0.0
    gradient_scale: float = 0.0
    quantile: float | None = None

    def place(self, change: PyTree) -> tuple[float, float]:
        """``(ρ, c)``: the change's length relative to ``‖ΔW‖`` and its cosine with ``ΔW``
        (``c = 0`` for a zero change)."""
        norm, dot = (float(v) for v in jax.device_get(_norm_and_dot(change, self.delta)))
        if not np.isfinite(norm):
            return float("nan"), 0.0
        cos = dot / (norm * self.scale) if norm > 0 else 0.0
        return norm / self.scale, float(np.clip(cos, -1.0, 1.0))

    def place_gradient(self, change: PyTree) -> float:
        """``b = ⟨x, S⊥⟩/‖S⊥‖²``: the change's part along the gradient-sign direction, in multiples
        of ``S⊥`` (0 when that curve was not measured)."""
        if self.gradient is None or self.gradient_scale == 0:
            return 0.0
        if self.grad is None:
            raise ValueError(
                "these curves have a gradient curve but no gradient to place a change by: "
                "Saturation.from_record(record, delta, grad=...) with the gradient they were measured with"
            )
        s_dot, d_dot = (float(v) for v in jax.device_get(_gradient_dots(change, self.delta, self.grad)))
        b = (s_dot - self.gradient_shift * d_dot) / self.gradient_scale**2
        return b if np.isfinite(b) else 0.0

    def _gradient_part(self, gradient: float) -> float:
        return 0.0 if self.gradient is None else float(gradient) ** 2 * self.gradient.unit

    def split(self, q: float, along: float, gradient: float = 0.0) -> tuple[float, float]:
        """``(Q∥, Q⊥)``: the quadratic of the change's part along ``ΔW``, ``a²·Q(ΔW)`` for a part
        ``a·ΔW`` (``along = a = c·ρ``), and the rest of ``q`` less the part along ``S⊥``
        (``b²·Q(S⊥)`` for a part ``b·S⊥``, ``gradient = b``)."""
        parallel = float(along) ** 2 * self.coherent.unit
        return parallel, float(q) - parallel - self._gradient_part(gradient)

    def phi(self, q: float, along: float, gradient: float = 0.0) -> float:
        """``φ_coherent(Q∥) + O_coherent(a) + φ_gradient(Q_g) + φ_noise(Q⊥)`` for a
        change of quadratic ``q`` whose part along ``ΔW`` is ``a·ΔW`` (``along = a``) and along ``S⊥``
        is ``b·S⊥`` (``gradient = b``): everything beyond the first-order term ``⟨g, x⟩``."""
        parallel, across = self.split(q, along, gradient)
        out = self.coherent(parallel) + self.coherent.odd_at(along) + self.noise(across)
        if self.gradient is not None:
            out += self.gradient(self._gradient_part(gradient))
        return out

    def error(self, relative_step: float, cos: float, q: float, *, noise: bool = False, gradient: float = 0.0) -> float:
        """``ê`` for a change of relative length ``ρ``, alignment ``c``, part ``gradient·S⊥`` along
        the gradient-sign direction and quadratic ``q`` (module docstring); ``noise=True`` declares
        its component across ``ΔW`` to be independent per-parameter noise, which the noise curve
        stands for."""
        rho, cos, b = float(relative_step), float(cos), float(gradient) if self.gradient is not None else 0.0
        if not np.isfinite(rho):
            return float("inf")
        g_len = abs(b) * self.gradient_scale / self.scale  # relative to ‖ΔW‖, like ρ
        rest = np.sqrt(max(0.0, (1.0 - cos**2) * rho**2 - g_len**2))
        err = self.coherent.error(abs(cos) * rho) + self.noise.error(rest)
        if self.gradient is not None:
            err += self.gradient.error(abs(b))
        if not noise:
            _, across = self.split(q, cos * rho, b)
            err += abs(self.coherent(across) - self.noise(across))
        return float(err)

    def judge(
        self,
        change: PyTree,
        value: float,
        quadratic: float,
        tolerance: float,
        *,
        noise: bool = False,
        placed: tuple[float, float] | None = None,
        gradient: float | None = None,
        first_stderr: float = 0.0,
    ) -> dict:
        """The validity record of a shared prediction ``value`` of ``change`` (whose quadratic is
        ``quadratic``): ``validity = ê / margin``, ``margin`` the distance from ``value`` to the
        nearest class boundary ``±tolerance`` (``inf`` on a boundary or for a non-finite value).
        ``placed``: ``(ρ, c)`` and ``gradient``: ``b`` when already known (:meth:`place`,
        :meth:`place_gradient`, each a pass over the parameters). ``first_stderr``: the standard
        error of a first-order term estimated apart (a cross-fitted one); the band's multiple of it
        (:attr:`quantile`) joins ``ê``."""
        if not tolerance >= 0:
            raise ValueError(f"tolerance={tolerance!r}; expected a number ≥ 0")
        if not first_stderr >= 0:
            raise ValueError(f"first_stderr={first_stderr!r}; expected a standard error ≥ 0")
        rho, cos = self.place(change) if placed is None else placed
        b = self.place_gradient(change) if gradient is None else float(gradient)
        err = self.error(rho, cos, quadratic, noise=noise, gradient=b)
        if first_stderr:
            err += (self.band if self.quantile is None else self.quantile) * float(first_stderr)
        margin = min(abs(value - tolerance), abs(value + tolerance))
        ok = np.isfinite(err) and np.isfinite(value) and margin > 0
        return {
            "validity": float(err / margin) if ok else float("inf"),
            "relative_step": rho,
            "alignment": cos,
            "gradient_part": b,
            "model_error": err,
            "noise": bool(noise),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], delta: PyTree = None, grad: PyTree = None) -> Saturation:
        """The curves back from :meth:`record` (``results.json``, ``sweep.json``): ``φ`` and the
        errors as measured. ``delta`` (``ΔW``) is needed only to :meth:`place` a change, ``grad``
        (the gradient the curves were measured with) only to :meth:`place_gradient` it."""

        def curve(r: dict[str, Any], odd: bool = False) -> Curve:
            arrays = {k: np.asarray(r[k], np.float64) for k in ("steps", "quadratic", "loss", "errors")}
            # Only the curve along ΔW has an odd part (records before it: none).
            part = np.asarray(r["odd"], np.float64) if odd and r.get("odd") is not None else None
            return Curve(**arrays, directions=int(r["directions"]), floor=float(r.get("floor", 0.0)), odd=part)

        # results.json writes an infinite quantile (one calibration batch) as null; records before it
        # have no quantile at all
        quantile = record.get("quantile", None)
        quantile = float("inf") if "quantile" in record and quantile is None else quantile

        return cls(
            coherent=curve(record["coherent"], odd=True),
            noise=curve(record["noise"]),
            delta=delta,
            scale=float(record["scale"]),
            band=float(record["band"]),
            cost=dict(record["cost"]),
            gradient=curve(record["gradient"]) if record.get("gradient") else None,
            grad=grad,
            gradient_shift=float(record.get("gradient_shift", 0.0)),
            gradient_scale=float(record.get("gradient_scale", 0.0)),
            quantile=None if quantile is None else float(quantile),
        )

    def record(self) -> dict[str, Any]:
        """What ``results.json`` keeps: the curves, ``‖ΔW‖``, ``κ`` and ``‖S⊥‖``, the band and the cost."""
        return {
            "coherent": self.coherent.record(),
            "noise": self.noise.record(),
            "gradient": None if self.gradient is None else self.gradient.record(),
            "scale": self.scale,
            "gradient_shift": self.gradient_shift,
            "gradient_scale": self.gradient_scale,
            "band": self.band,
            **({} if self.quantile is None else {"quantile": self.quantile}),
            "cost": self.cost,
        }


@jax.jit
def _norm_and_dot(change: PyTree, delta: PyTree) -> tuple[jax.Array, jax.Array]:
    return jnp.sqrt(trees.tree_vdot(change, change)), trees.tree_vdot(change, delta)


def _loss_at(loss_fn: Any, params: PyTree, direction: PyTree, t: jax.Array, batch: Any) -> jax.Array:
    return trees.widen(loss_fn(trees.move_along(params, direction, t), batch))


_loss_at_jit = jax.jit(_loss_at, static_argnums=0)


def _gradient_sign(delta: PyTree, grad: PyTree) -> PyTree:
    # In the accumulation dtype: S and S⊥ = S − κ·ΔW are formed exactly from 16-bit deltas.
    return jax.tree.map(lambda d, g: jnp.abs(trees.widen(d)) * jnp.sign(trees.widen(g)), delta, grad)


@jax.jit
def _gradient_dots(change: PyTree, delta: PyTree, grad: PyTree) -> tuple[jax.Array, jax.Array]:
    """``(⟨x, S⟩, ⟨x, ΔW⟩)`` with ``S = sign(g) ⊙ |ΔW|``, never held as a whole."""
    return trees.tree_vdot(change, _gradient_sign(delta, grad)), trees.tree_vdot(change, delta)


@jax.jit
def _gradient_copy(delta: PyTree, grad: PyTree, shift: jax.Array) -> PyTree:
    """``S⊥ = sign(g) ⊙ |ΔW| − κ·ΔW`` in one compiled function (keeps ``ΔW``'s sharding), in the
    accumulation dtype so that it is orthogonal to ``ΔW`` to that precision."""
    return jax.tree.map(lambda s, d: s - shift.astype(s.dtype) * trees.widen(d), _gradient_sign(delta, grad), delta)


@jax.jit
def _signed_copy(delta: PyTree, key: jax.Array) -> PyTree:
    """``ε ⊙ ΔW`` with Rademacher ``ε`` (per leaf name): drawn and multiplied in one compiled
    function, so the signs are never held beside the copy (a model-size array at 8B) and the copy
    keeps ``ΔW``'s sharding."""
    return jax.tree.map(lambda x, e: x * e.astype(x.dtype), delta, rademacher(delta, key))


@jax.jit
def _realised(params: PyTree, direction: PyTree, t: jax.Array) -> jax.Array:
    """``‖W + t·d − W‖`` as the parameters' dtype stores it (16-bit weights round small steps)."""
    moved = trees.move_along(params, direction, t)
    diff = jax.tree.map(lambda a, b: trees.widen(a) - trees.widen(b), moved, params)
    return jnp.sqrt(trees.tree_vdot(diff, diff))


def band_quantile(band: float, batches: int) -> float:
    """The multiple of a standard error *estimated* from ``batches`` batches that covers what
    ``band`` *known* standard errors cover for a normal mean: the Student-t quantile with
    ``batches − 1`` degrees of freedom at ``Φ(band)`` (for ``band = 2``: 3.31 with 4 batches, 2.43
    with 8, 2.0 in the limit); ``inf`` for a single batch (no spread to estimate), 0 for ``band = 0``.

    Example:
      >>> round(band_quantile(2.0, 4), 2), round(band_quantile(2.0, 8), 2), band_quantile(2.0, 1)
      (3.31, 2.43, inf)
    """
    from scipy import stats

    if band == 0:
        return 0.0
    if batches < 2:
        return float("inf")
    return float(stats.t.isf(stats.norm.sf(band), batches - 1))  # upper tails: no rounding to 1


def _leave_one_out(curve: Curve) -> Iterable[tuple[Any, Curve]]:
    """``(steps, curve)`` pairs to judge the model by: every step on the whole curve, then each
    inner step on the curve without it. The ends would be extrapolation, which the envelope's growth
    beyond the grid stands for; on a grid of two steps there is no inner one, and each end is left
    out in turn (a single step has nothing to leave out)."""
    yield slice(None), curve
    n = len(curve.steps)
    for k in range(1, n - 1) if n > 2 else range(n) if n == 2 else ():
        keep = np.arange(n) != k
        yield (
            [k],
            dataclasses.replace(
                curve,
                steps=curve.steps[keep],
                quadratic=curve.quadratic[keep],
                loss=curve.loss[keep],
                errors=curve.errors[keep],
                odd=None if curve.odd is None else curve.odd[keep],
            ),
        )


def _check_steps(name: str, steps: Sequence[float]) -> np.ndarray:
    s = np.asarray(list(steps), np.float64)
    if s.ndim != 1 or len(s) == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0) or np.any(np.diff(s) <= 0):
        raise ValueError(f"{name}={list(steps)!r}; expected increasing step multiples > 0")
    return s


def _curve(
    loss_fn: Any,
    params: PyTree,
    make: Callable[[int], PyTree],
    count: int,
    batches: list[Any],
    base: np.ndarray,
    steps: np.ndarray,
    first: Callable[[PyTree], float],
    quadratic: Callable[[PyTree], float],
    *,
    quantile: float,
    held_out: int,
    low_precision: bool,
    odd: bool,
) -> Curve:
    """Measure one family: per direction, sign, step and batch, ``L(params ± s·d) − L(params)``.
    Directions are made one at a time (``make(i)``), so at most one copy of ``ΔW`` is alive.
    ``odd``: keep the odd part beyond the first order (one direction, ``ΔW``) as model, not error.
    ``quantile``: the band's multiple of the standard error (:func:`band_quantile`)."""
    n = len(batches)
    changes = np.empty((count, 2, len(steps), n))  # direction, sign (+, −), step, batch
    precise = np.ones(len(steps), bool)
    firsts, quads = [], []
    for i in range(count):
        d = make(i)
        firsts.append(first(d))
        quads.append(float(quadratic(d)))
        norm = float(_norm_and_dot(d, d)[0])
        for j, sign in enumerate((1.0, -1.0)):
            out = [[pace(_loss_at_jit(loss_fn, params, d, trees.scalar(sign * s), b)) for b in batches] for s in steps]
            changes[i, j] = np.asarray(jax.device_get(out), np.float64) - base
            if low_precision:
                got = np.array([float(_realised(params, d, trees.scalar(sign * s))) for s in steps])
                precise &= np.abs(got - steps * norm) <= PRECISION * steps * norm
        del d
    # A loss that overflows far out (a float32 exp) ends the curve at the last step finite everywhere;
    # beyond it φ extrapolates and the envelope grows as a cube.
    finite = np.all(np.isfinite(changes), axis=(0, 1, 3))
    last = len(steps) if finite.all() else int(np.argmin(finite))
    keep = precise & (np.arange(len(steps)) < last)
    if not keep.any():
        why = "rounds every step away" if not precise.any() else f"is not finite at the first step ({steps[0]:g})"
        raise FloatingPointError(f"the loss along a saturation direction {why}")
    steps, changes = steps[keep], changes[:, :, keep]
    even = 0.5 * (changes[:, 0] + changes[:, 1]).mean(axis=-1)  # direction, step
    # The odd part beyond the gradient's term (module docstring: kept along ΔW alone).
    # From a single step it would be exact in-sample with nothing to leave out: there it stays error.
    keep_odd = odd and len(steps) > 1
    odd_part = 0.5 * (changes[:, 0] - changes[:, 1]).mean(axis=-1) - np.outer(firsts, steps) if keep_odd else None
    curve = Curve(
        steps=steps,
        quadratic=steps**2 * float(np.mean(quads)),
        loss=even.mean(axis=0),
        errors=np.zeros_like(steps),
        directions=count,
        floor=RESOLUTION * float(np.mean(np.abs(base))),
        odd=None if odd_part is None else odd_part.mean(axis=0),
    )
    # The model each direction is judged by: its own first-order term and quadratic, through φ (and
    # the odd part). Its error at a step is the largest over directions and signs, in-sample and, at
    # an inner step, with that step left out of the grid: what interpolating across a gap misses,
    # which in-sample a curve through every grid point cannot show. The spread over batches is pooled
    # over directions and signs (each alone has n − 1 degrees of freedom, and the largest of several
    # such estimates is biased upwards).
    spread = np.sqrt(1.0 / n + 1.0 / held_out)
    errors = np.zeros_like(steps)
    for at, fit in _leave_one_out(curve):
        for i in range(count):
            for j, sign in enumerate((1.0, -1.0)):
                model = np.array(
                    [sign * s * firsts[i] + fit(s**2 * quads[i]) + fit.odd_at(sign * s) for s in steps[at]]
                )
                errors[at] = np.maximum(errors[at], np.abs(changes[i, j][at].mean(axis=-1) - model))
    if n > 1:
        band = quantile * np.sqrt(changes.var(axis=-1, ddof=1).mean(axis=(0, 1))) * spread
    else:  # a single batch has no spread: no band asked for, or an unknown one
        band = np.full_like(errors, 0.0 if quantile == 0 else np.inf)
    return dataclasses.replace(curve, errors=np.maximum.accumulate(errors + band))


def saturation(
    loss_fn: Any,
    params: PyTree,
    delta: PyTree,
    batches: Iterable[Any],
    quadratic: Callable[[PyTree], float],
    grad: PyTree,
    *,
    key: jax.Array,
    probes: int = 2,
    coherent_steps: Sequence[float] = DEFAULT_COHERENT_STEPS,
    noise_steps: Sequence[float] = DEFAULT_NOISE_STEPS,
    gradient_steps: Sequence[float] | None = DEFAULT_GRADIENT_STEPS,
    held_out: int | None = None,
    band: float = DEFAULT_BAND,
) -> Saturation:
    """Measure how ``loss_fn`` leaves the shared quadratic along ``±s·ΔW``, random-sign copies and
    the gradient-sign direction ``S⊥`` (module docstring).

    Costs ``1 + 2·len(coherent_steps) + 2·probes·len(noise_steps) + 2·len(gradient_steps)`` forward
    passes per batch, once, and holds one copy of ``ΔW`` at a time.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (any loss).
      params: ``W_post``, where ``grad`` and ``quadratic`` were computed.
      delta: ``ΔW``, floating leaves like ``params`` (or float32 for 16-bit parameters).
      batches: the calibration batches ``grad`` and ``quadratic`` were computed on.
      quadratic: ``x -> ½⟨x, G x⟩``, the shared quadratic the predictions will use (K-FAC's, a
        diagonal's); no passes over data.
      grad: ``∇L(W_post)`` on ``batches``, like ``params``.
      key: PRNG key of the random signs (probe ``j``: ``fold_in(key, j)``, drawn per leaf name).
      probes: random-sign copies.
      coherent_steps, noise_steps, gradient_steps: step multiples, increasing (``gradient_steps=None``:
        no gradient curve; neither is there one where ``S⊥`` is zero, a zero gradient or one whose
        signs follow ``ΔW``'s).
      held_out: how many batches predictions will be judged on (default: as many as ``batches``).
      band: the coverage of the band added to the model's largest error at each step, in known
        standard errors of the held-out mean; the spread over batches (pooled over directions and
        signs) estimates the standard error, so the band is ``band_quantile`` times it (infinite
        with a single calibration batch, which has no spread to estimate; ``band=0``: no band).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import riemann
      >>> loss = lambda p, x: jnp.sum(x * jnp.cosh(p["w"]))        # grows faster than its quadratic
      >>> w, d = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
      >>> q = lambda x: 0.5 * float(jnp.sum(x["w"] ** 2))            # its exact Hessian at 0
      >>> sat = riemann.saturation(loss, w, d, [jnp.ones(2)], q, {"w": jnp.zeros(2)},
      ...                          key=jax.random.key(0), coherent_steps=[1.0], noise_steps=[1.0])
      >>> round(sat.coherent(1.0), 4), round(2 * (float(jnp.cosh(1.0)) - 1), 4)   # φ(Q(1)) = C(1)
      (1.0862, 1.0862)
    """
    if probes < 1:
        raise ValueError(f"probes={probes}; at least 1 random-sign copy of ΔW is needed")
    if not band >= 0:
        raise ValueError(f"band={band!r}; expected a number of standard errors ≥ 0")
    cs, ns = _check_steps("coherent_steps", coherent_steps), _check_steps("noise_steps", noise_steps)
    gs = None if gradient_steps is None else _check_steps("gradient_steps", gradient_steps)
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; the saturation curves need at least one calibration batch")
    held_out = len(batches) if held_out is None else int(held_out)
    if held_out < 1:
        raise ValueError(f"held_out={held_out}; expected the number of batches predictions are judged on (≥ 1)")
    trees.check_compatible(params, delta, ("params", "delta"), wide=True)
    for name, leaf in zip(trees.leaf_names(delta), jax.tree.leaves(delta)):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(f"delta leaf {name!r} has dtype {jnp.result_type(leaf)}; expected floating point")
    scale = float(_norm_and_dot(delta, delta)[0])
    if not np.isfinite(scale) or scale == 0:
        raise ValueError(f"delta has norm {scale}; expected a finite, non-zero ΔW = W_post − W_pre")
    zero = trees.scalar(0.0)
    base = np.asarray(jax.device_get([_loss_at_jit(loss_fn, params, delta, zero, b) for b in batches]), np.float64)
    if not np.all(np.isfinite(base)):
        raise FloatingPointError("the loss at params is not finite on every batch")
    low = any(jnp.dtype(jnp.result_type(x)).itemsize < 4 for x in jax.tree.leaves(params))

    def first(d: PyTree) -> float:
        return float(trees.tree_vdot(grad, d))

    def copy(j: int) -> PyTree:
        return _signed_copy(delta, jax.random.fold_in(key, j))

    quantile = band_quantile(float(band), len(batches))
    kw = {"quantile": quantile, "held_out": held_out, "low_precision": low}
    coherent = _curve(loss_fn, params, lambda _: delta, 1, batches, base, cs, first, quadratic, odd=True, **kw)
    noise = _curve(loss_fn, params, copy, probes, batches, base, ns, first, quadratic, odd=False, **kw)
    gradient, shift, g_scale = None, 0.0, 0.0
    if gs is not None:
        trees.check_compatible(params, grad, ("params", "grad"), wide=True)
        shift = float(_gradient_dots(delta, delta, grad)[0]) / scale**2
        along = _gradient_copy(delta, grad, trees.scalar(shift))  # the one copy the curve measures along
        g_scale = float(_norm_and_dot(along, along)[0])
        # Below this S is ΔW's own signs (or zero) up to rounding: there is no direction left to measure.
        if np.isfinite(g_scale) and g_scale > 1e-6 * scale:
            gradient = _curve(loss_fn, params, lambda _: along, 1, batches, base, gs, first, quadratic, odd=False, **kw)
        else:
            g_scale = 0.0
        del along
    return Saturation(
        coherent=coherent,
        noise=noise,
        delta=delta,
        scale=scale,
        band=float(band),
        cost={"forward": 1 + 2 * len(cs) + 2 * probes * len(ns) + (0 if gradient is None else 2 * len(gs))},
        gradient=gradient,
        grad=None if gradient is None else grad,
        gradient_shift=shift,
        gradient_scale=g_scale,
        quantile=quantile,
    )
