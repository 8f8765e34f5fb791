"""K-FAC and EK-FAC factors of every linear layer of the toolkit's models, collected on the
calibration batches at ``W_post`` (the engine's side: :mod:`riemann.kfac`).

One forward and one backward per batch give, for every :class:`~analysis.hf.models._common.Linear`
of the model, its inputs ``a`` (recorded by a tap the layer calls while a collection runs) and its
output gradients ``δ`` (the gradient of a zero perturbation the tap adds to its output). The
backward pass is seeded with labels *sampled from the model's own predictive distribution*, so
that ``E[δδᵀ]`` is the Fisher, which for softmax cross-entropy equals the Gauss–Newton matrix:
the cotangent on the logits of position ``t`` with loss weight ``w_t`` is ``√w_t (p_t − e_y)``,
``y ~ p_t`` — with the top class's share kept exactly and the label drawn among the other classes
(:func:`_cotangents`), which is unbiased and does not starve on a confident model, and with a random
sign per position, so that products of different positions cancel in expectation. Then, with ``P``
the rows (tokens) that reach the loss,

    A = (1/P) Σ_rows a aᵀ,   S = Σ_rows δ δᵀ,   G_W ≈ A ⊗ S          (K-FAC)
    λ = Σ_examples (Q_Sᵀ G_n Q_A)²,  G_n = Σ_{rows of n} δ aᵀ        (EK-FAC, a second pass)

each averaged over batches (the loss is the mean of the batch losses). Leaves that are not a Linear
weight (norms, embeddings, biases, CLIP's patch convolution) get the diagonal of the same sampled
Fisher, from the parameter gradient of the same backward pass (:func:`_taps`): positive, where a
Hutchinson estimate of the Hessian diagonal is not (DARE at ``p = 0.99`` multiplies those leaves'
noise tenfold, and negative diagonal entries then turned whole predictions negative).

What it supports: pairs whose ``template`` is a loaded checkpoint of this toolkit and whose loss
is the mean next-token cross-entropy of :func:`analysis.pairs.data.causal_lm_loss` (decoders) or
the softmax cross-entropy of :func:`analysis.pairs.data.image_classification_loss` (CLIP with a
head) — checked on the first calibration batch against the pair's own ``loss_fn``. Anything else
(a user's plain ``loss_fn``, the DPO loss) gets no factors: the ``kfac`` / ``ekfac`` estimators
then score with the Hessian diagonal alone and say so (``settings["factored"] = False``).
Collection rebuilds the model with ``remat`` off (the taps record inside one trace), so a model
loaded with per-layer remat or the scan over layers gives the same factors at the memory of a
plain backward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import riemann
from analysis.hf.models._common import Linear, linear_tap
from riemann.kfac import EigenFactor, KroneckerFactor

PyTree = Any
KINDS = ("causal-lm", "classification")
FISHER = ("sampled", "exact")


@dataclasses.dataclass(frozen=True)
class Factors:
    """What a collection produced: K-FAC factors per Linear weight (``{leaf name: KroneckerFactor}``),
    EK-FAC factors (``{leaf name: EigenFactor}``, empty unless asked), how they were made, and the
    Fisher diagonal of every other leaf (``{leaf name: array}``, from the same backward pass)."""

    kronecker: dict[str, KroneckerFactor]
    eigen: dict[str, EigenFactor]
    info: dict[str, Any]
    diagonal: dict[str, jax.Array] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class _Graph:
    """A checkpoint as a static argument of ``jax.jit`` (hashed by identity: one compile per collection)."""

    ckpt: Any


def output_kind(pair: Any) -> tuple[str | None, str]:
    """``(kind, why)``: how the pair's loss reads the model's output (``"causal-lm"``,
    ``"classification"``), or ``None`` with the reason K-FAC cannot be collected for it."""
    from analysis.hf.checkpoints import Checkpoint

    ckpt = getattr(pair, "template", None)
    if not isinstance(ckpt, Checkpoint):
        return None, "the pair has no model checkpoint (a plain loss_fn): the Hessian diagonal serves every leaf"
    batch = (pair.calibration or pair.batches)[0]
    if not isinstance(batch, dict):
        return None, "batches are not dictionaries of model inputs"
    if ckpt.family == "clip":
        if not getattr(ckpt.config, "num_labels", None) or not {"pixel_values", "labels"} <= set(batch):
            return None, "a CLIP pair without a classification head and labels"
        kind, what = "classification", "softmax cross-entropy of the classification head"
    elif {"input_ids", "loss_mask"} <= set(batch):
        kind, what = "causal-lm", "mean next-token cross-entropy over scored tokens"
    else:
        return None, f"batches with keys {sorted(batch)} (e.g. a DPO loss): no softmax output whose Fisher to sample"
    ours = float(jax.jit(lambda p, b: own_loss(ckpt.module(p), kind, b))(pair.post, batch))
    theirs = float(jax.jit(pair.loss_fn)(pair.post, batch))
    if not abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)):
        return None, f"the pair's loss ({theirs:.6g}) is not the {what} ({ours:.6g}) on the first calibration batch"
    return kind, what


def _logits_and_weights(module: nnx.Module, kind: str, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
    """The logits the loss reads (``[B, T, V]`` or ``[B, C]``) and each position's loss weight
    ``w`` (the loss is ``Σ w·CE``)."""
    if kind == "classification":
        logits = module.classify(batch["pixel_values"])
        b = logits.shape[0]
        return logits, jnp.full((b,), 1.0 / b, jnp.float32)
    ids = batch["input_ids"]
    logits = module(ids)
    mask = batch["loss_mask"].astype(jnp.float32)
    w = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)  # logits at t predict ids[t + 1]
    return logits, w / jnp.maximum(jnp.sum(w), 1.0)


def own_loss(module: nnx.Module, kind: str, batch: dict[str, Any]) -> jax.Array:
    """The loss as this module reads it (to check it is the pair's loss)."""
    logits, w = _logits_and_weights(module, kind, batch)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if kind == "classification":
        target = batch["labels"]
    else:
        ids = batch["input_ids"]
        target = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
    nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    return jnp.sum(w * nll)


def _row_weights(kind: str, w: jax.Array) -> jax.Array:
    """Per position 1 where the position can reach the loss (up to each row's last scored position)."""
    if kind == "classification":
        return jnp.ones(w.shape, jnp.float32)
    t = jnp.arange(w.shape[1], dtype=jnp.int32)[None, :]
    last = jnp.max(jnp.where(w > 0, t, -1), axis=1, keepdims=True)
    return (t <= last).astype(jnp.float32)


def _cotangents(logits: jax.Array, w: jax.Array, key: jax.Array, fisher: str, draws: int) -> jax.Array:
    """``[K, *logits.shape]``: K cotangents whose outer products average to ``w·(diag p − ppᵀ)``.

    ``"sampled"`` splits the Fisher ``F = Σ_k p_k (p − e_k)(p − e_k)ᵀ`` at the top class ``m``: its
    term ``p_m (p − e_m)(p − e_m)ᵀ`` is kept exactly (one cotangent ``√p_m (p − e_m)``), and the rest,
    ``(1 − p_m)·E_{k ≠ m, k ∝ p_k}[(p − e_k)(p − e_k)ᵀ]``, is sampled ``draws`` times from the other
    classes (cotangents ``√((1 − p_m)/draws) (p − e_k)``). Unbiased, like one label drawn from ``p``,
    but every draw lands where the Fisher's mass is: on a confident model (``p_m → 1``) a plain draw
    is almost always ``m``, whose cotangent is nearly zero, so a few hundred positions may draw no
    other class at all and the factors come out an order of magnitude low."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    sw = jnp.sqrt(w)[..., None]
    c = p.shape[-1]
    if fisher == "exact":
        eye = jnp.eye(c, dtype=jnp.float32)
        cts = jnp.sqrt(jnp.moveaxis(p, -1, 0))[..., None] * (p[None] - eye.reshape((c,) + (1,) * (p.ndim - 1) + (c,)))
        return (sw[None] * cts).astype(logits.dtype)
    # In log space: on a confident token 1 − p_m is below float32's resolution near 1, and the
    # other classes' probabilities below its smallest normal.
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top = jnp.argmax(logp, axis=-1)
    is_top = jax.nn.one_hot(top, c, dtype=jnp.bool_)
    # 1 − p_m as the other classes' sum: log p_m itself rounds to 0 once 1 − p_m < 6e-8.
    rest_mass = jnp.sum(jnp.where(is_top, 0.0, jnp.exp(logp)), axis=-1, keepdims=True)
    keys = jax.random.split(key, draws)
    labels = jax.vmap(lambda k: jax.random.categorical(k, jnp.where(is_top, -jnp.inf, logp), axis=-1))(keys)
    spread = jnp.sqrt(jnp.maximum(rest_mass, 0.0) / draws)[None]
    others = spread * (p[None] - jax.nn.one_hot(labels, c, dtype=jnp.float32))
    first = jnp.sqrt(1.0 - rest_mass) * jnp.where(is_top, -rest_mass, p)  # √p_m (p − e_m)
    cts = jnp.concatenate([first[None], others], axis=0)
    return (sw[None] * cts).astype(logits.dtype)


def _num_outputs(graph: _Graph, params: PyTree, kind: str, batch: dict[str, Any]) -> int:
    """Classes (or vocabulary entries) per position: the exact Fisher's cotangent sets."""
    shape = jax.eval_shape(lambda: _logits_and_weights(graph.ckpt.module(params), kind, batch)[0])
    return int(shape.shape[-1])


def _linear_names(module: nnx.Module) -> dict[int, str]:
    """``{id(layer): its weight's leaf name}`` for every Linear of ``module``."""
    return {
        id(m): riemann.tree_utils.path_name(p) + ".weight" for p, m in nnx.iter_graph(module) if isinstance(m, Linear)
    }


def _taps(graph: _Graph, params: PyTree, kind: str, batch: dict[str, Any], key: jax.Array, fisher: str, draws: int):
    """Per Linear weight name: inputs ``a`` [rows, in], output gradients ``δ`` [K, rows, out], and the
    rows' lead shape and row weights; and per other leaf, the Fisher diagonal of this batch.

    The diagonal of a leaf without a factor is ``Σ_k (Σ_t ξ_t J_tᵀ c_{k,t})²`` over the K cotangent
    sets ``c_k``, with an independent sign ``ξ_t = ±1`` per position: the signs make every
    cross-position product vanish in expectation (the stratified cotangents do not have mean zero),
    so it is unbiased for ``diag(Σ_t J_tᵀ F_t J_t)`` and, unlike a Hutchinson estimate of the Hessian
    diagonal, never negative."""
    flat, treedef = jax.tree_util.tree_flatten(params)
    leaf_names = riemann.leaf_names(params)
    linear = set(_linear_names(graph.ckpt.module(params)).values())
    free = [i for i, n in enumerate(leaf_names) if n not in linear]

    leads: dict[str, tuple[int, ...]] = {}

    def run(eps: dict[str, jax.Array] | None, others: list[jax.Array]):
        leaves = list(flat)
        for i, x in zip(free, others):
            leaves[i] = x
        module = graph.ckpt.module(jax.tree_util.tree_unflatten(treedef, leaves))
        if hasattr(module, "remat"):
            module.remat = False  # the taps record inside this trace; a scan or checkpoint would hide them
        names = _linear_names(module)
        seen: dict[str, jax.Array] = {}

        def tap(m: nnx.Module, x2d: jax.Array, y: jax.Array) -> jax.Array:
            n = names.get(id(m))
            if n is None:
                raise ValueError("a Linear outside the model's own graph was called during K-FAC collection")
            if n in seen:
                raise ValueError(f"{n} is applied more than once per forward pass; K-FAC collection needs one use")
            leads[n] = tuple(y.shape[:-1])
            seen[n] = y if eps is None else x2d
            return y if eps is None else y + eps[n]

        with linear_tap(tap):
            out = _logits_and_weights(module, kind, batch)
        return out, seen

    others = [flat[i] for i in free]
    shapes = jax.eval_shape(lambda: run(None, others)[1])
    eps = {n: jnp.zeros(s.shape, s.dtype) for n, s in shapes.items()}
    (logits, w), vjp_fn, seen = jax.vjp(run, eps, others, has_aux=True)
    label_key, sign_key = jax.random.split(key)
    cts = _cotangents(logits, w, label_key, fisher, draws)
    signs = jax.random.rademacher(sign_key, w.shape, jnp.float32)[None, ..., None].astype(cts.dtype)
    deltas, grads = jax.vmap(lambda ct: vjp_fn((ct, jnp.zeros_like(w))))(cts * signs)
    rows = _row_weights(kind, w)
    out = {}
    for n, a in seen.items():
        lead = leads[n]
        d = deltas[n].reshape(deltas[n].shape[0], -1, deltas[n].shape[-1])
        rw = rows.reshape(-1) if tuple(lead) == rows.shape else jnp.ones((a.shape[0],), jnp.float32)
        out[n] = (a.astype(jnp.float32), d.astype(jnp.float32), rw, lead)
    diagonal = {leaf_names[i]: jnp.sum(jnp.square(g.astype(jnp.float32)), axis=0) for i, g in zip(free, grads)}
    return out, diagonal


@functools.partial(jax.jit, static_argnums=(0, 2, 5, 6))
def _kfac_step(graph, params, kind, batch, key, fisher, draws):
    out = {}
    taps, diagonal = _taps(graph, params, kind, batch, key, fisher, draws)
    for n, (a, d, rw, _) in taps.items():
        a_cov = (a * rw[:, None]).T @ a / jnp.maximum(jnp.sum(rw), 1.0)
        s_cov = jnp.einsum("kro,krp->op", d, d)
        out[n] = (a_cov, s_cov)
    return out, diagonal


@functools.partial(jax.jit, static_argnums=(0, 2, 5, 6))
def _ekfac_step(graph, params, kind, batch, key, fisher, draws, bases):
    out = {}
    taps, _ = _taps(graph, params, kind, batch, key, fisher, draws)
    for n, (a, d, rw, lead) in taps.items():
        qa, qs = bases[n]
        b = lead[0] if lead else 1
        at = (a * rw[:, None]) @ qa  # rows that do not reach the loss carry no gradient anyway
        dt = jnp.einsum("kro,os->krs", d, qs)
        at = at.reshape(b, -1, at.shape[-1])
        dt = dt.reshape(dt.shape[0], b, -1, dt.shape[-1])
        g = jnp.einsum("kbts,bti->kbsi", dt, at)  # per-example gradients in the eigenbasis
        out[n] = jnp.sum(jnp.square(g), axis=(0, 1))
    return out


def collect(
    ckpt: Any,
    params: PyTree,
    batches: Sequence[dict[str, Any]],
    kind: str,
    *,
    key: jax.Array,
    ekfac: bool = True,
    fisher: str = "sampled",
    draws: int = 1,
) -> Factors:
    """K-FAC (and, with ``ekfac``, EK-FAC) factors of every Linear weight of ``ckpt``'s model at
    ``params``, averaged over ``batches``.

    Args:
      ckpt: an :class:`analysis.hf.checkpoints.Checkpoint` (its graph; ``params`` its parameter tree).
      params: the point (``W_post``).
      batches: calibration batches (each counts equally, as in the mean loss).
      kind: ``"causal-lm"`` or ``"classification"`` (:func:`output_kind`).
      key: PRNG key for the sampled labels (batch ``b`` uses ``fold_in(key, b)``; the EK-FAC pass
        reuses the same labels).
      ekfac: also run the second pass that re-fits the diagonal in the Kronecker eigenbasis.
      fisher: ``"sampled"`` (the top class exactly, plus ``draws`` labels per position drawn among
        the other classes: ``1 + draws`` backward products) or ``"exact"`` (every class, weighted by
        its probability: the exact Fisher for one output per example; ``C`` backward products).
      draws: sampled labels per position (besides the top class).

    Returns:
      :class:`Factors`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; accepted: {', '.join(KINDS)}")
    if fisher not in FISHER:
        raise ValueError(f"fisher={fisher!r}; accepted: {', '.join(FISHER)}")
    if fisher == "exact" and kind != "classification":
        raise ValueError("fisher='exact' enumerates classes per example; it is exact only for classification")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; K-FAC needs at least one calibration batch")
    nb = len(batches)
    graph = _Graph(ckpt)
    t0 = time.perf_counter()
    sums: dict[str, list[jax.Array]] = {}
    diag_sums: dict[str, jax.Array] = {}
    for b, batch in enumerate(batches):
        step, diag = _kfac_step(graph, params, kind, batch, jax.random.fold_in(key, b), fisher, int(draws))
        for n, (a, s) in step.items():
            if n in sums:
                sums[n] = [sums[n][0] + a, sums[n][1] + s]
            else:
                sums[n] = [a, s]
        for n, v in diag.items():
            diag_sums[n] = diag_sums[n] + v if n in diag_sums else v
    kron = {n: KroneckerFactor(a=a / nb, s=s / nb) for n, (a, s) in sums.items()}
    backward = (1 + int(draws)) if fisher == "sampled" else _num_outputs(graph, params, kind, batches[0])
    diagonal = {n: v / nb for n, v in diag_sums.items()}
    jax.block_until_ready((kron, diagonal))
    seconds = {"kfac": time.perf_counter() - t0}
    eig: dict[str, EigenFactor] = {}
    if ekfac:
        ke = {n: riemann.kfac.eigen(f) for n, f in kron.items()}
        bases = {n: (f.qa, f.qs) for n, f in ke.items()}
        lam: dict[str, jax.Array] = {}
        for b, batch in enumerate(batches):
            step = _ekfac_step(graph, params, kind, batch, jax.random.fold_in(key, b), fisher, int(draws), bases)
            for n, v in step.items():
                lam[n] = lam[n] + v if n in lam else v
        eig = {n: EigenFactor(qa=ke[n].qa, qs=ke[n].qs, lam=lam[n] / nb) for n in ke}
        jax.block_until_ready(eig)
        seconds["ekfac"] = time.perf_counter() - t0 - seconds["kfac"]
    info = {
        "kind": kind,
        "fisher": fisher,
        "draws": int(draws),
        "batches": nb,
        "layers": len(kron),
        "seconds": seconds,
        # One forward and this many backward products per batch (the cotangent sets), twice for EK-FAC.
        "backward_products": backward,
        "passes_per_batch": {"gradient": backward * (2 if ekfac else 1)},
    }
    return Factors(kron, eig, info, diagonal)
