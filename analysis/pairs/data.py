"""Evaluation data and losses that plug into ``riemann.integrate_path`` / ``riemann.estimate``.

JSONL inputs, one record per line, in three shapes (detected from the first record):

- ``{"text": …}``: causal LM loss on every predicted token;
- ``{"prompt": …, "response": …}``: loss on the response tokens only (GSM8K-style answers);
- ``{"prompt": …, "chosen": …, "rejected": …}``: the DPO loss against a reference model
  (Rafailov et al., 2023), which the unified-view paper used for EXPO.

Tokenization uses the checkpoint's own ``tokenizer.json`` (a directory's, or a Hub id's snapshot,
fetched without weights) with the ``tokenizers`` library. Sequences are right-padded to fixed
bucket lengths (powers of two from 16 up to ``max_len``) and grouped into batches of a fixed size,
so each loss compiles once per bucket.
Image classification batches are ``{"pixel_values": [B, 3, H, W], "labels": [B]}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import riemann

PyTree = Any
KINDS = {"text": ("text",), "response": ("prompt", "response"), "preference": ("prompt", "chosen", "rejected")}


class DataError(ValueError):
    """A data file or record is unusable; the message names the file and line."""


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The ``tokenizers.Tokenizer`` of a checkpoint: ``path/tokenizer.json`` for a directory or a Hub
    id ``org/name[@revision]`` (resolved without weights, :func:`analysis.hf.hub.resolve`), or
    ``path`` itself if a file. A LoRA adapter without its own ``tokenizer.json`` is refused, naming
    its base (whose tokenizer it uses)."""
    from tokenizers import Tokenizer

    from analysis.hf import hub

    if Path(path).is_file():
        return Tokenizer.from_file(str(path))
    p = hub.resolve(path, weights=False)
    f = p / "tokenizer.json"
    if f.is_file():
        return Tokenizer.from_file(str(f))
    if (p / "adapter_config.json").is_file():
        try:
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (json.JSONDecodeError, AttributeError):
            base = None
        raise DataError(
            f"{hub.describe(path, p)}: a LoRA adapter without its own tokenizer.json; it uses its base "
            f"model's tokenizer, so pass the base{f' ({base})' if base else ''} instead"
        )
    raise DataError(
        f"{hub.describe(path, f)}: tokenizer.json not found; the checkpoint directory must contain its tokenizer"
    )


def read_jsonl(path: str | os.PathLike) -> tuple[str, list[dict[str, str]]]:
    """Records of a JSONL file and their kind (``text``, ``response`` or ``preference``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    records, kind = [], None
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{i}: expected a JSON object")
            if kind is None:
                kind = next((k for k in ("preference", "response", "text") if all(f in rec for f in KINDS[k])), None)
                if kind is None:
                    raise DataError(
                        f"{path}:{i}: a record needs 'text', or 'prompt' and 'response', or 'prompt', "
                        f"'chosen' and 'rejected'; found keys {sorted(rec)}"
                    )
            missing = [k for k in KINDS[kind] if not isinstance(rec.get(k), str)]
            if missing:
                raise DataError(f"{path}:{i}: missing or non-string field(s) {missing} (file has {kind} records)")
            records.append({k: rec[k] for k in KINDS[kind]})
    if not records:
        raise DataError(f"{path}: no records")
    return str(kind), records


def _bucket(n: int, max_len: int) -> int:
    b = 16
    while b < n and b < max_len:
        b *= 2
    return min(b, max_len)


def _encode(tok: Any, text: str, special: bool) -> list[int]:
    return list(tok.encode(text, add_special_tokens=special).ids)


def tokenize(
    tok: Any,
    kind: str,
    records: Sequence[dict[str, str]],
    *,
    max_len: int = 512,
    source: str = "data",
    eos_id: int | None = None,
) -> list[dict[str, Any]]:
    """Token ids and a target mask per record (per side for preference records).

    ``mask[t] = 1`` where token ``t`` is a scored target (predicted from tokens < t): every token
    but the first for ``text``; the response tokens for ``response`` and preference records.
    ``eos_id`` (if given) is appended to every response and scored, so a model learns to stop.
    Sequences longer than ``max_len`` are cut at the end.
    """
    out = []
    for i, rec in enumerate(records, start=1):
        if kind == "text":
            ids = _encode(tok, rec["text"], True)[:max_len]
            item = {"ids": ids, "mask": [0] + [1] * (len(ids) - 1)}
            n_scored = len(ids) - 1
        else:
            prompt = _encode(tok, rec["prompt"], True)
            sides = ("response",) if kind == "response" else ("chosen", "rejected")
            item, n_scored = {}, None
            for side in sides:
                resp = _encode(tok, rec[side], False) + ([eos_id] if eos_id is not None else [])
                ids = (prompt + resp)[:max_len]
                mask = ([0] * len(prompt) + [1] * len(resp))[:max_len]
                key = "" if kind == "response" else f"{side}_"
                item[f"{key}ids"], item[f"{key}mask"] = ids, mask
                n_scored = sum(mask) if n_scored is None else min(n_scored, sum(mask))
        if not n_scored:
            raise DataError(
                f"{source}: record {i} yields no scored tokens (empty text or response, or prompt ≥ max_len)"
            )
        out.append(item)
    return out


def _pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    a = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        a[i, : len(r)] = r
    return a


def make_batches(
    items: Sequence[dict[str, Any]], *, batch_size: int, max_len: int = 512
) -> list[dict[str, np.ndarray]]:
    """Group tokenized items into fixed-size batches padded to bucket lengths.

    Items are grouped by bucket (stable order within a bucket); a last partial batch of a bucket
    is filled with all-masked padding rows, which change no loss.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    sides = ["chosen_", "rejected_"] if "chosen_ids" in items[0] else [""]
    by_bucket: dict[int, list[dict[str, Any]]] = {}
    for it in items:
        n = max(len(it[f"{s}ids"]) for s in sides)
        by_bucket.setdefault(_bucket(n, max_len), []).append(it)
    batches = []
    for length in sorted(by_bucket):
        group = by_bucket[length]
        for start in range(0, len(group), batch_size):
            chunk = list(group[start : start + batch_size])
            chunk += [{f"{s}{k}": [] for s in sides for k in ("ids", "mask")}] * (batch_size - len(chunk))
            batch = {}
            for s in sides:
                batch[f"{s}input_ids"] = _pad([c[f"{s}ids"] for c in chunk], length)
                batch[f"{s}loss_mask"] = _pad([c[f"{s}mask"] for c in chunk], length).astype(np.float32)
            batches.append(batch)
    return batches


def token_logprobs(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """``log p(ids[t] | ids[<t])`` for t ≥ 1, shape [B, T − 1], in float32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def causal_lm_loss(forward: Callable[[PyTree, jax.Array], jax.Array]) -> Callable[[PyTree, dict[str, Any]], jax.Array]:
    """``loss(params, batch)``: mean next-token cross-entropy over the batch's scored tokens.

    Build it once per model and reuse the returned function: the engine compiles once per
    (loss function, shapes).
    """

    def loss(params: PyTree, batch: dict[str, Any]) -> jax.Array:
        lp = token_logprobs(forward(params, batch["input_ids"]), batch["input_ids"])
        mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
        return -jnp.sum(lp * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    return loss


def sequence_logprob(
    forward: Callable[[PyTree, jax.Array], jax.Array], params: PyTree, ids: jax.Array, mask: jax.Array
) -> jax.Array:
    """Summed log-probability of each sequence's scored tokens, shape [B]."""
    return jnp.sum(token_logprobs(forward(params, ids), ids) * mask[:, 1:].astype(jnp.float32), axis=-1)


def dpo_batches(
    batches: Sequence[dict[str, np.ndarray]], forward: Callable[[PyTree, jax.Array], jax.Array], reference: PyTree
) -> list[dict[str, Any]]:
    """Attach the reference model's sequence log-probabilities to preference batches (computed
    once, since the reference model is fixed along any path)."""
    ref = jax.jit(lambda p, ids, m: sequence_logprob(forward, p, ids, m))
    out = []
    for b in batches:
        out.append(
            {
                **b,
                "ref_chosen": riemann.pace(ref(reference, b["chosen_input_ids"], b["chosen_loss_mask"])),
                "ref_rejected": riemann.pace(ref(reference, b["rejected_input_ids"], b["rejected_loss_mask"])),
                "valid": (b["chosen_loss_mask"].sum(-1) > 0).astype(np.float32),
            }
        )
    return out


def dpo_loss(
    forward: Callable[[PyTree, jax.Array], jax.Array], beta: float = 0.1
) -> Callable[[PyTree, dict[str, Any]], jax.Array]:
    """DPO loss ``−log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])``
    averaged over the batch's real (non-padding) pairs; batches from :func:`dpo_batches`."""

    def loss(params: PyTree, batch: dict[str, Any]) -> jax.Array:
        chosen = sequence_logprob(forward, params, batch["chosen_input_ids"], batch["chosen_loss_mask"])
        rejected = sequence_logprob(forward, params, batch["rejected_input_ids"], batch["rejected_loss_mask"])
        margin = beta * ((chosen - batch["ref_chosen"]) - (rejected - batch["ref_rejected"]))
        valid = batch["valid"]
        return -jnp.sum(jax.nn.log_sigmoid(margin) * valid) / jnp.maximum(jnp.sum(valid), 1.0)

    return loss


def jsonl_batches(
    path: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    max_len: int = 512,
    limit: int | None = None,
) -> tuple[str, list[dict[str, np.ndarray]]]:
    """Read, tokenize and batch a JSONL file in one call; returns ``(kind, batches)``.
    ``tokenizer_dir`` is a checkpoint directory, a Hub id or a ``tokenizer.json`` (:func:`load_tokenizer`)."""
    kind, records = read_jsonl(path)
    records = records[:limit] if limit else records
    items = tokenize(load_tokenizer(tokenizer_dir), kind, records, max_len=max_len, source=str(path))
    return kind, make_batches(items, batch_size=batch_size, max_len=max_len)


def image_classification_loss(
    classify: Callable[[PyTree, jax.Array], jax.Array],
) -> Callable[[PyTree, dict[str, Any]], jax.Array]:
    """Mean softmax cross-entropy of ``classify(params, pixel_values)`` against ``labels``."""

    def loss(params: PyTree, batch: dict[str, Any]) -> jax.Array:
        logits = classify(params, batch["pixel_values"]).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][:, None], axis=-1))

    return loss


def image_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size batches of ``{"pixel_values", "labels"}``; a last partial batch is dropped."""
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"images must be [N, C, H, W] with C in (1, 3), got shape {images.shape}")
    for start in range(0, len(images) - batch_size + 1, batch_size):
        yield {"pixel_values": images[start : start + batch_size], "labels": labels[start : start + batch_size]}


def global_batches(
    batches: Sequence[dict[str, Any]], mesh: jax.sharding.Mesh, axis: str | None
) -> list[dict[str, Any]]:
    """Batches as arrays laid out over ``mesh``: the batch axis split over mesh axis ``axis`` where it
    divides it (data parallelism), else every array replicated. Each process places only the rows
    its own devices hold (``jax.make_array_from_callback``), whatever the mesh's device order, so
    the same function serves one host and many; every process passes the same host batches."""
    size = mesh.shape[axis] if axis is not None else 1

    def place(x: Any) -> jax.Array:
        x = np.asarray(x)
        split = size > 1 and x.ndim > 0 and x.shape[0] % size == 0
        sharding = jax.sharding.NamedSharding(mesh, jax.P(axis) if split else jax.P())
        return jax.make_array_from_callback(x.shape, sharding, lambda index: np.array(x[index]))  # a copy each

    return [{k: place(v) for k, v in b.items()} for b in batches]
