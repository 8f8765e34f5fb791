"""Task-arithmetic weights chosen from shared statistics: one quadratic in ``λ`` per task.

Task arithmetic merges fine-tunes ``j = 1..n`` of one base, ``W(λ) = W_base + Σ_j λ_j τ_j`` with
``τ_j = W_post_j − W_base``. Seen from task ``i``'s own fine-tune the merge is the change
``d_i(λ) = W(λ) − W_post_i = Σ_j λ_j τ_j − τ_i = T(λ − e_i)`` (``T`` the matrix whose columns are
the ``τ_j``, ``e_i`` the ``i``-th unit vector), linear in ``λ``. The second-order model at
``W_post_i`` (``docs/theory.md``, §5) is therefore a quadratic in ``λ``:

    ΔL_i(λ) = L_i(W(λ)) − L_i(W_post_i) ≈ b_iᵀ(λ − e_i) + ½ (λ − e_i)ᵀ Q_i (λ − e_i),
    b_i,j = ⟨g_i, τ_j⟩,   Q_i,jk = ⟨τ_j, H_i τ_k⟩,

with ``g_i`` and ``H_i`` the gradient and Hessian of ``L_i`` at ``W_post_i`` (batch means). Per task
and batch this costs one gradient and ``n`` Hessian-vector products ``H_i τ_k`` (one linearisation
of the gradient, applied ``n`` times), after which every ``λ`` — and every merge of the same
models — is a few ``n × n`` products: a grid, a 1-D curve or an optimiser over ``λ`` spend no
further pass. ``recommend_weights`` minimises the predicted worst-task (min-max) or mean ``ΔL_i``
over a box of ``λ``.

Validity: the model is exact for a quadratic loss and otherwise local to each ``W_post_i``. The
step it extrapolates over is ``‖d_i(λ)‖ = √((λ − e_i)ᵀ G (λ − e_i))`` with the Gram matrix
``G_jk = ⟨τ_j, τ_k⟩``, a sizeable fraction of ``‖τ_i‖`` for any real merge (at ``λ = 0`` it is the
whole fine-tune), so the box on ``λ`` acts as the trust region and a recommendation on its
boundary says the model wants to go further than it was allowed to. ``H_i`` is the Hessian, not a
Gauss-Newton matrix, so ``Q_i`` may be indefinite; the optimiser does not assume convexity.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from riemann._src import trees
from riemann._src.pacing import pace
from riemann._src.progress import progress_bar

PyTree = Any
OBJECTIVES: tuple[str, ...] = ("worst", "mean")


@dataclasses.dataclass(frozen=True)
class TaskStatistics:
    """The quadratic in ``λ`` of one task, ``ΔL_i(λ) ≈ bᵀ(λ − e_own) + ½(λ − e_own)ᵀQ(λ − e_own)``.

    Attributes:
      own: the index ``i`` of this task's own fine-tune among the ``n`` task vectors.
      b: ``[n]``, ``b_j = ⟨g_i, τ_j⟩`` (batch mean).
      Q: ``[n, n]``, ``Q_jk = ⟨τ_j, H_i τ_k⟩`` (batch mean, symmetrised).
      gram: ``[n, n]``, ``⟨τ_j, τ_k⟩``: ``‖d_i(λ)‖² = (λ − e_own)ᵀ gram (λ − e_own)``.
      loss_post: ``L_i(W_post_i)`` on the batches.
      batch_b: ``[B, n]``, ``b`` on each batch.
      batch_Q: ``[B, n, n]``, ``Q`` on each batch (symmetrised).
      asymmetry: ``‖Q̃ − Q̃ᵀ‖_F / ‖Q̃‖_F`` of the unsymmetrised batch mean ``Q̃`` (rounding only: the
        Hessian is symmetric).
    """

    own: int
    b: np.ndarray
    Q: np.ndarray
    gram: np.ndarray
    loss_post: float
    batch_b: np.ndarray
    batch_Q: np.ndarray
    asymmetry: float

    @property
    def n(self) -> int:
        """The number of task vectors ``λ`` weighs."""
        return len(self.b)

    def predict(self, lam: Any) -> np.ndarray:
        """Predicted ``ΔL_i`` at ``lam`` (``[..., n]``; leading dimensions broadcast)."""
        return _quad(self.b, self.Q, self.own, _lam(lam, self.n))

    def batch_predictions(self, lam: Any) -> np.ndarray:
        """``[..., B]``: the prediction with each batch's ``b`` and ``Q``; their mean is :meth:`predict`."""
        u = _lam(lam, self.n) - np.eye(self.n)[self.own]
        return np.einsum("...j,bj->...b", u, self.batch_b) + 0.5 * np.einsum("...j,bjk,...k->...b", u, self.batch_Q, u)

    def stderr(self, lam: Any) -> np.ndarray:
        """Standard error of :meth:`predict` across batches (NaN with a single batch)."""
        per = self.batch_predictions(lam)
        nb = per.shape[-1]
        return np.std(per, axis=-1, ddof=1) / np.sqrt(nb) if nb > 1 else np.full(per.shape[:-1], np.nan)

    def step_ratio(self, lam: Any) -> np.ndarray:
        """``‖d_i(λ)‖ / ‖τ_own‖``: how far from ``W_post_i`` the model extrapolates, in units of the fine-tune."""
        u = _lam(lam, self.n) - np.eye(self.n)[self.own]
        d2 = np.einsum("...j,jk,...k->...", u, self.gram, u)
        return np.sqrt(np.maximum(d2, 0.0) / max(float(self.gram[self.own, self.own]), np.finfo(np.float64).tiny))

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (no per-batch arrays)."""
        return {
            "own": self.own,
            "b": self.b.tolist(),
            "Q": self.Q.tolist(),
            "gram": self.gram.tolist(),
            "loss_post": self.loss_post,
            "num_batches": int(self.batch_b.shape[0]),
            "asymmetry": self.asymmetry,
            "min_eigenvalue_Q": float(np.linalg.eigvalsh(self.Q)[0]),
        }


def _lam(lam: Any, n: int) -> np.ndarray:
    a = np.asarray(lam, np.float64)
    if a.ndim == 0 or a.shape[-1] != n:
        raise ValueError(f"λ has shape {a.shape}; expected a last dimension of {n} (one weight per task vector)")
    return a


def _quad(b: np.ndarray, q: np.ndarray, own: int, lam: np.ndarray) -> np.ndarray:
    u = lam - np.eye(len(b))[own]
    return u @ b + 0.5 * np.einsum("...j,jk,...k->...", u, q, u)


def _task_step(loss_fn: Any, post: PyTree, taus: tuple[PyTree, ...], batch: Any) -> tuple[jax.Array, ...]:
    """Loss, ``[⟨g, τ_j⟩]_j`` and ``[⟨τ_j, Hτ_k⟩]_kj`` on one batch: the gradient is linearised once
    and the linear map applied to each ``τ_k`` (tangents in the parameters' dtype, products wide)."""
    (loss, g), lin = jax.linearize(lambda p: jax.value_and_grad(loss_fn)(p, batch), post)
    dt = trees.accum_dtype(*(jnp.result_type(x) for x in jax.tree.leaves(post)))
    b = jnp.stack([trees.tree_vdot(g, t).astype(dt) for t in taus])
    rows = []
    for t in taus:
        _, ht = lin(jax.tree.map(lambda x, p: x.astype(p.dtype), t, post))
        rows.append(jnp.stack([trees.tree_vdot(s, ht).astype(dt) for s in taus]))
    return trees.widen(loss).astype(dt), b, jnp.stack(rows)


_task_jit = jax.jit(_task_step, static_argnums=0)


@jax.jit
def _gram(taus: tuple[PyTree, ...]) -> jax.Array:
    dt = trees.accum_dtype(*(jnp.result_type(x) for x in jax.tree.leaves(taus)))
    return jnp.stack([jnp.stack([trees.tree_vdot(a, c).astype(dt) for c in taus]) for a in taus])


def task_statistics(
    loss_fn: Any,
    post: PyTree,
    taus: Sequence[PyTree],
    batches: Iterable[Any],
    *,
    own: int,
    progress: bool = False,
) -> TaskStatistics:
    """:class:`TaskStatistics` of task ``own`` at its fine-tune ``post`` on ``batches``.

    Per batch: one gradient and ``len(taus)`` Hessian-vector products, reduced at once to
    ``1 + n + n²`` scalars (memory stays that of one Hessian-vector product).

    Args:
      loss_fn: task ``own``'s loss, ``loss_fn(params, batch) -> scalar``.
      post: its fine-tune ``W_post_own = W_base + taus[own]``.
      taus: the task vectors ``τ_j = W_post_j − W_base`` of every model in the merge, each like
        ``post`` (or in its accumulation dtype: float32 task vectors for 16-bit weights).
      batches: calibration batches, each counting equally.
      own: the index of ``post``'s own task vector in ``taus``.
      progress: show a progress bar.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, x: 0.5 * jnp.sum(x * p["w"] ** 2)      # g = x⊙w, H = diag(x)
      >>> taus = [{"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 2.0])}]
      >>> st = task_statistics(loss, {"w": jnp.array([1.0, 0.0])}, taus, [jnp.array([1.0, 3.0])], own=0)
      >>> st.b.tolist(), st.Q.tolist()
      ([1.0, 0.0], [[1.0, 0.0], [0.0, 12.0]])
      >>> float(st.predict([1.0, 0.5]))     # ½·3·(0.5·2)²: the second model's half step, exact here
      1.5
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch) -> scalar, got {loss_fn!r}")
    taus = tuple(taus)
    n = len(taus)
    if n == 0:
        raise ValueError("taus is empty; expected the task vectors τ_j = W_post_j − W_base of the models merged")
    if isinstance(own, bool) or not isinstance(own, (int, np.integer)) or not 0 <= own < n:
        raise ValueError(f"own={own!r}; expected the index (0..{n - 1}) of this task's vector in taus")
    if not jax.tree.leaves(post):
        raise ValueError("post has no array leaves; expected a pytree of floating arrays")
    for j, t in enumerate(taus):
        trees.check_compatible(post, t, ("post", f"taus[{j}]"), wide=True)
    trees.check_finite(post, "post")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; expected at least one batch for loss_fn(params, batch) (task statistics)")
    outs = []
    with progress_bar(progress, desc=f"task {own} statistics", unit="batch", total=len(batches), leave=False) as bar:
        for batch in batches:
            outs.append(pace(_task_jit(loss_fn, post, taus, batch)))
            bar.update(1)
    got = jax.device_get(outs)
    losses = np.asarray([o[0] for o in got], np.float64)
    bb = np.asarray([o[1] for o in got], np.float64).reshape(len(batches), n)
    qq = np.asarray([o[2] for o in got], np.float64).reshape(len(batches), n, n)  # [batch, k, j] = ⟨τ_j, Hτ_k⟩
    bad = ~(np.isfinite(losses) & np.isfinite(bb).all(1) & np.isfinite(qq).all((1, 2)))
    if bad.any():
        raise FloatingPointError(
            f"non-finite loss, gradient or Hessian-vector product at post (task {own}, batch {int(np.argmax(bad))})"
        )
    raw = qq.mean(axis=0)
    norm = float(np.linalg.norm(raw))
    asym = float(np.linalg.norm(raw - raw.T) / norm) if norm > 0 else 0.0
    sym = 0.5 * (qq + np.swapaxes(qq, 1, 2))
    return TaskStatistics(
        own=int(own),
        b=bb.mean(axis=0),
        Q=sym.mean(axis=0),
        gram=np.asarray(jax.device_get(_gram(taus)), np.float64),
        loss_post=float(losses.mean()),
        batch_b=bb,
        batch_Q=sym,
        asymmetry=asym,
    )


def _check(stats: Sequence[TaskStatistics]) -> tuple[list[TaskStatistics], int]:
    stats = list(stats)
    if not stats:
        raise ValueError("stats is empty; expected one TaskStatistics per task (task_statistics)")
    n = stats[0].n
    for t, s in enumerate(stats):
        if not isinstance(s, TaskStatistics):
            raise TypeError(f"stats[{t}] is {type(s).__name__}; expected TaskStatistics (task_statistics)")
        if s.n != n:
            raise ValueError(f"stats[{t}] weighs {s.n} task vectors, stats[0] weighs {n}; they must be the same merge")
    return stats, n


def predict_changes(stats: Sequence[TaskStatistics], lam: Any) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``ΔL_i(λ)`` of every task and their gradients in ``λ``.

    Args:
      stats: one :class:`TaskStatistics` per task (``T`` of them, all over the same ``n`` task vectors).
      lam: ``[..., n]`` weights; leading dimensions broadcast.

    Returns:
      ``(values [..., T], gradients [..., T, n])`` with
      ``∇_λ ΔL_i = b_i + Q_i (λ − e_i)``.

    Example:
      >>> import numpy as np
      >>> st = TaskStatistics(own=0, b=np.array([-1.0, 0.0]), Q=np.eye(2), gram=np.eye(2), loss_post=0.0,
      ...                     batch_b=np.array([[-1.0, 0.0]]), batch_Q=np.eye(2)[None], asymmetry=0.0)
      >>> v, g = predict_changes([st], [0.0, 1.0])
      >>> v.tolist(), g.tolist()        # u = λ − e_0 = (−1, 1): 1 + ½·2; b + u
      ([2.0], [[-2.0, 1.0]])
    """
    stats, n = _check(stats)
    a = _lam(lam, n)
    eye = np.eye(n)
    vals, grads = [], []
    for s in stats:
        u = a - eye[s.own]
        qu = u @ s.Q  # Q symmetric
        vals.append(u @ s.b + 0.5 * np.sum(qu * u, axis=-1))
        grads.append(s.b + qu)
    return np.stack(vals, axis=-1), np.stack(grads, axis=-2)


def shared_curve(stats: Sequence[TaskStatistics], grid: Any) -> np.ndarray:
    """``[len(grid), T]``: predicted ``ΔL_i`` of the merge with one weight ``λ_j = s`` shared by every
    task vector, for each ``s`` in ``grid``."""
    stats, n = _check(stats)
    s = np.asarray(grid, np.float64).reshape(-1, 1)
    return predict_changes(stats, s * np.ones((1, n)))[0]


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The ``λ`` of lowest predicted objective within the box, and where it sits.

    Attributes:
      lam: ``[n]`` recommended weights.
      predicted: ``[T]`` predicted ``ΔL_i`` at ``lam``.
      value: the objective at ``lam`` (the largest or the mean of ``predicted``).
      objective: ``"worst"`` or ``"mean"``.
      shared: whether one weight was shared by every task vector.
      lower, upper: ``[n]`` the box.
      at_lower, at_upper: ``[n]`` which weights sit on the box (the model wanted to go further).
      step_ratio: ``[T]`` ``‖d_i(λ)‖ / ‖τ_i‖``, how far each task's model is extrapolated.
      stderr: ``[T]`` standard error of ``predicted`` across calibration batches.
    """

    lam: np.ndarray
    predicted: np.ndarray
    value: float
    objective: str
    shared: bool
    lower: np.ndarray
    upper: np.ndarray
    at_lower: np.ndarray
    at_upper: np.ndarray
    step_ratio: np.ndarray
    stderr: np.ndarray

    @property
    def on_boundary(self) -> bool:
        """Whether any weight sits on the box."""
        return bool(self.at_lower.any() or self.at_upper.any())

    def record(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "lam": self.lam.tolist(),
            "predicted": self.predicted.tolist(),
            "value": self.value,
            "objective": self.objective,
            "shared": self.shared,
            "bounds": [self.lower.tolist(), self.upper.tolist()],
            "at_lower": self.at_lower.tolist(),
            "at_upper": self.at_upper.tolist(),
            "on_boundary": self.on_boundary,
            "step_ratio": self.step_ratio.tolist(),
            "stderr": self.stderr.tolist(),
        }


def _objective(values: np.ndarray, objective: str) -> np.ndarray:
    return values.max(axis=-1) if objective == "worst" else values.mean(axis=-1)


def _shared_exact(stats: list[TaskStatistics], lo: float, hi: float, objective: str) -> float:
    """The exact minimiser over ``[lo, hi]`` of the worst (or mean) of the 1-D quadratics
    ``ΔL_i(s·1)``: the upper envelope is piecewise quadratic, so its minimum is at an end, a
    stationary point of one piece, or a crossing of two."""
    n = stats[0].n
    one = np.ones(n)
    coef = []  # ΔL_i(s) = c0 + c1·s + c2·s², u = s·1 − e_i
    for st in stats:
        e = np.eye(n)[st.own]
        coef.append((-st.b @ e + 0.5 * e @ st.Q @ e, st.b @ one - e @ st.Q @ one, 0.5 * one @ st.Q @ one))
    c = np.asarray(coef)
    if objective == "mean":
        c = c.mean(axis=0, keepdims=True)
    cand = [lo, hi]
    for _, c1, c2 in c:
        if c2 != 0:
            cand.append(-c1 / (2 * c2))
    if objective == "worst":
        for p, q in itertools.combinations(range(len(c)), 2):
            d = c[p] - c[q]
            roots = np.roots(d[::-1]) if np.any(d[1:] != 0) else []
            cand += [float(r.real) for r in roots if abs(r.imag) <= 1e-12 * (1 + abs(r.real))]
    s = np.clip(np.asarray(cand, np.float64), lo, hi)
    vals = c[:, 0] + np.outer(s, c[:, 1]) + np.outer(s**2, c[:, 2])
    return float(s[int(np.argmin(vals.max(axis=1)))])


def _smooth(
    stats: list[TaskStatistics], x: np.ndarray, temp: float, objective: str
) -> tuple[float, np.ndarray, np.ndarray]:
    """Value, gradient and Hessian at ``x`` of the mean, or of the log-sum-exp ``temp·log Σ exp(ΔL_i/temp)``
    (a smooth upper bound of the worst task within ``temp·log T``)."""
    v, g = predict_changes(stats, x)
    qs = np.stack([s.Q for s in stats])
    if objective == "mean":
        return float(v.mean()), g.mean(axis=0), qs.mean(axis=0)
    m = v.max()
    w = np.exp((v - m) / temp)
    z = w.sum()
    p = w / z
    gbar = p @ g
    hess = np.einsum("t,tjk->jk", p, qs) + (np.einsum("t,tj,tk->jk", p, g, g) - np.outer(gbar, gbar)) / temp
    return float(m + temp * np.log(z)), gbar, hess


def _projected_newton(
    f: Any, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, tol: float, max_iter: int = 200
) -> np.ndarray:
    """Minimise a smooth ``f`` (value, gradient, Hessian) over the box ``[lo, hi]``: Newton steps on
    the variables not held by a bound (Bertsekas' projected Newton), the reduced Hessian shifted
    to positive definite where it is not, an Armijo search along the projection arc."""
    x = np.clip(x0, lo, hi)
    val, g, h = f(x)
    for _ in range(max_iter):
        pg = x - np.clip(x - g, lo, hi)
        if np.linalg.norm(pg) <= tol:
            break
        eps = min(float(np.linalg.norm(pg)), 1e-3 * float(np.min(hi - lo)))
        held = ((x <= lo + eps) & (g > 0)) | ((x >= hi - eps) & (g < 0))
        free = ~held
        d = -g.copy()
        d[held] = 0.0
        if free.any():
            hf = h[np.ix_(free, free)]
            hf = 0.5 * (hf + hf.T)
            ev = np.linalg.eigvalsh(hf)
            scale = max(float(np.abs(ev).max()), 1e-300)
            shift = max(0.0, -float(ev[0])) + 1e-10 * scale if ev[0] <= 1e-10 * scale else 0.0
            d[free] = -np.linalg.solve(hf + shift * np.eye(int(free.sum())), g[free])
        step, improved = 1.0, False
        for _ in range(60):
            xn = np.clip(x + step * d, lo, hi)
            vn, gn, hn = f(xn)
            dec = float(g @ (xn - x))  # the first-order change along the projection arc
            if (dec < 0 and vn <= val + 1e-4 * dec) or (dec >= 0 and vn < val):
                improved = True
                break
            step *= 0.5
        if not improved:  # the Newton direction failed: a projected-gradient step with its own search
            step = 1.0 / max(float(np.linalg.norm(h, 2)), 1e-300)
            for _ in range(60):
                xn = np.clip(x - step * g, lo, hi)
                vn, gn, hn = f(xn)
                if vn < val:
                    improved = True
                    break
                step *= 0.5
        if not improved:
            break
        x, val, g, h = xn, vn, gn, hn
    return x


def _seeds(n: int, lo: np.ndarray, hi: np.ndarray, budget: int = 20000) -> np.ndarray:
    per = int(np.clip(np.floor(budget ** (1.0 / n)), 2, 11))
    if per**n <= budget:
        axes = [np.linspace(lo[j], hi[j], per) for j in range(n)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, n)
    else:  # too many dimensions for a full grid: a seeded uniform sample, its corners' centre and the diagonal
        pts = lo + (hi - lo) * np.random.default_rng(0).random((budget, n))
    diag = lo + np.linspace(0.0, 1.0, 11)[:, None] * (hi - lo)
    units = np.clip(np.eye(n), lo, hi)
    return np.concatenate([pts, diag, units])


def recommend_weights(
    stats: Sequence[TaskStatistics],
    *,
    objective: str = "worst",
    bounds: tuple[Any, Any] = (0.0, 1.0),
    shared: bool = False,
    starts: int = 8,
) -> Recommendation:
    """The weights ``λ`` in the box ``bounds`` that minimise the predicted worst-task (``max_i ΔL_i``)
    or mean ΔL of the merge ``W_base + Σ_j λ_j τ_j``.

    ``shared=True``: one weight for every task vector (``λ = s·1``, as mergekit users often pick),
    solved exactly (the worst of 1-D quadratics is minimised at an end, a stationary point or a
    crossing). Otherwise the worst task is smoothed by a log-sum-exp whose temperature falls by
    10× per stage to ``1e-12`` of the objective's scale (the bound it adds, ``temp·log T``, vanishes
    with it), minimised over the box by projected Newton from the ``starts`` best points of a
    grid over the box (no convexity is assumed: ``Q_i`` of a Hessian may be indefinite).

    The box is the trust region: the quadratics are local to each ``W_post_i``, so keep it to
    weights where they were validated; :attr:`Recommendation.at_lower`/``at_upper`` say where
    the optimum sits on it, and :attr:`Recommendation.step_ratio` how far each task is extrapolated.

    Args:
      stats: one :class:`TaskStatistics` per task (:func:`task_statistics`).
      objective: ``"worst"`` (min-max over tasks) or ``"mean"``.
      bounds: ``(lower, upper)``, scalars or ``[n]`` arrays.
      shared: one weight shared by every task vector.
      starts: local searches from the best grid points (vector weights only).

    Example:
      >>> import numpy as np
      >>> def task(i, a):      # ΔL_i = ½‖λ − a‖² − ½‖e_i − a‖²: the quadratic with minimiser a
      ...     e = np.eye(2)[i]
      ...     return TaskStatistics(own=i, b=e - a, Q=np.eye(2), gram=np.eye(2), loss_post=0.0,
      ...                           batch_b=(e - a)[None], batch_Q=np.eye(2)[None], asymmetry=0.0)
      >>> rec = recommend_weights([task(0, np.array([0.2, 0.2])), task(1, np.array([0.6, 0.6]))])
      >>> np.round(rec.lam, 6).tolist(), np.round(rec.predicted, 6).tolist()   # where the two losses cross
      ([0.5, 0.5], [-0.25, -0.25])
    """
    stats, n = _check(stats)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}; accepted: {', '.join(OBJECTIVES)}")
    lo = np.broadcast_to(np.asarray(bounds[0], np.float64), (n,)).copy()
    hi = np.broadcast_to(np.asarray(bounds[1], np.float64), (n,)).copy()
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        raise ValueError(f"bounds=({lo.tolist()}, {hi.tolist()}); expected finite lower < upper for every weight")
    if shared:
        if not (np.all(lo == lo[0]) and np.all(hi == hi[0])):
            raise ValueError("shared=True needs one scalar bound on each side (every task vector gets the same weight)")
        lam = np.full(n, _shared_exact(stats, float(lo[0]), float(hi[0]), objective))
    else:
        seeds = _seeds(n, lo, hi)
        seed_vals = _objective(predict_changes(stats, seeds)[0], objective)
        order = np.argsort(seed_vals, kind="stable")[: max(int(starts), 1)]
        scale = max(float(np.abs(seed_vals).max()), float(np.abs(np.stack([s.Q for s in stats])).max()), 1e-300)
        best, best_val = None, np.inf
        for i in order:
            x = seeds[i]
            temps = [None] if objective == "mean" else [scale * 10.0**-k for k in range(1, 13)]
            for temp in temps:
                x = _projected_newton(lambda y, t=temp: _smooth(stats, y, t, objective), x, lo, hi, tol=1e-12 * scale)
            v = float(_objective(predict_changes(stats, x)[0], objective))
            if v < best_val:
                best, best_val = x, v
        lam = best
    values, _ = predict_changes(stats, lam)
    tol = 1e-9 * max(1.0, float(np.max(hi - lo)))
    lam = np.where(np.abs(lam - lo) <= tol, lo, np.where(np.abs(lam - hi) <= tol, hi, lam))
    return Recommendation(
        lam=lam,
        predicted=values,
        value=float(_objective(values, objective)),
        objective=objective,
        shared=bool(shared),
        lower=lo,
        upper=hi,
        at_lower=lam <= lo,
        at_upper=lam >= hi,
        step_ratio=np.asarray([s.step_ratio(lam) for s in stats], np.float64),
        stderr=np.asarray([s.stderr(lam) for s in stats], np.float64),
    )
