"""A pair from what a user holds: two Hugging Face checkpoints (directories or Hub ids; or a base and a
LoRA adapter) and an evaluation file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from analysis.hf import adapters, checkpoints, hub
from analysis.pairs import accuracy, data
from analysis.pairs.pair import Pair


def from_checkpoints(
    pre: str | os.PathLike,
    post: str | os.PathLike,
    data_file: str | os.PathLike,
    *,
    batch_size: int = 8,
    max_len: int = 512,
    max_batches: int | None = None,
    dtype: Any = None,
    dpo_beta: float = 0.1,
    name: str | None = None,
    remat: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis: str | None = None,
) -> Pair:
    """A pair from two HF checkpoints and an evaluation file.

    ``pre`` and ``post`` are directories or Hub ids ``org/name[@revision]``, resolved to the snapshot
    directories of the local Hub cache (:func:`analysis.hf.hub.resolve`); ``info["checkpoints"]``
    then also names each id pinned to its commit.

    ``post`` may instead be a PEFT LoRA adapter directory (``adapter_config.json``) trained on
    ``pre``: ``W_post`` is then ``pre`` with the adapter merged (:mod:`analysis.hf.adapters`), and the
    tokenizer is the adapter's if it ships one, else the base's.

    Decoders (Llama/Mistral/Qwen2) take a JSONL file: ``{"text"}`` records give the LM loss on all
    tokens, ``{"prompt", "response"}`` the loss on response tokens (accuracy: teacher-forced token
    accuracy), ``{"prompt", "chosen", "rejected"}`` the DPO loss with ``pre`` as the reference
    model (accuracy: implicit-reward accuracy). CLIP vision checkpoints with a classification head
    (``riemann_num_labels``) take an ``.npz`` file with ``pixel_values`` [N, 3, H, W] and
    ``labels`` [N] (cross-entropy, top-1 accuracy).

    ``remat`` recomputes each layer in the backward pass instead of storing its activations (less
    memory for long sequences, about one more forward pass per gradient).

    With a ``mesh`` (one device or many, one process or several), parameters are sharded over mesh
    axis ``axis`` along their first dimension where it divides it (FSDP; replicated otherwise, see
    :func:`analysis.hf.checkpoints.fsdp`), each process reading only its slices, and batches are
    split over the same axis (:func:`analysis.pairs.data.global_batches`).

    Everything that can be checked cheaply is checked before any weights are read, and what needs
    no tensor header — the configurations and adapter options, the data file, its tokens — before a
    Hub id's weights are even downloaded (:func:`analysis.hf.checkpoints.check_configs`); then the
    architectures from the file headers. Errors name the file and what was expected.
    """
    given = {"pre": pre, "post": post}
    data_file = Path(data_file)
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches}; expected a positive number of evaluation batches")
    family = checkpoints.check_configs(pre, post)  # configs only: Hub ids fetch no weights yet
    placed = None if mesh is None else checkpoints.fsdp(mesh, axis)
    if family == "clip":
        if data_file.suffix != ".npz":
            raise data.DataError(f"{data_file}: a CLIP pair needs an .npz file with pixel_values and labels")
        try:
            with np.load(data_file) as f:
                images, labels = f["pixel_values"], f["labels"]
        except (KeyError, ValueError, OSError) as e:
            raise data.DataError(
                f"{data_file}: expected arrays 'pixel_values' [N, 3, H, W] and 'labels' [N] ({e})"
            ) from None
        batches = list(data.image_batches(images, labels, batch_size=batch_size))[:max_batches]
        if not batches:
            raise data.DataError(f"{data_file}: {len(images)} images give no full batch of {batch_size}")
        config = hub.resolve(pre, weights=False) / "config.json"
        if "riemann_num_labels" not in json.loads(config.read_text()):
            raise ValueError(
                f"{hub.describe(pre, config)}: no classification head (riemann_num_labels); CLIP pairs are "
                "scored by cross-entropy of a head fine-tuned with the encoder"
            )
        found = _locate(given)
        a, b = checkpoints.load_pair(pre, post, dtype=dtype, remat=remat, sharding=placed)
        loss_fn = data.image_classification_loss(a.classify)
        acc, acc_name, kind = accuracy.top1_accuracy_fn(a.classify), "top-1 accuracy", "images"
    else:
        kind, records = data.read_jsonl(data_file)
        tok = data.load_tokenizer(adapters.tokenizer_source(pre, post))
        items = data.tokenize(tok, kind, records, max_len=max_len, source=str(data_file))
        batches = data.make_batches(items, batch_size=batch_size, max_len=max_len)[:max_batches]
        found = _locate(given)
        a, b = checkpoints.load_pair(pre, post, dtype=dtype, remat=remat, sharding=placed)
        if kind == "preference":
            if mesh is not None and jax.process_count() > 1:  # riemann run refuses it before reading weights
                raise data.DataError(
                    f"{data_file}: preference (DPO) data runs in one process; several processes "
                    "take text or prompt/response records"
                )
            batches = data.dpo_batches(batches, a.forward, a.params)
            loss_fn = data.dpo_loss(a.forward, beta=dpo_beta)
            acc, acc_name = accuracy.reward_accuracy_fn(a.forward), "implicit-reward accuracy"
        else:
            loss_fn = data.causal_lm_loss(a.forward)
            acc, acc_name = accuracy.token_accuracy_fn(a.forward), "token accuracy (teacher-forced)"
    if mesh is not None:
        batches = data.global_batches(batches, mesh, axis)
    pre, post = found["pre"].path, found["post"].path
    desc = (
        f"{family} checkpoints {found['pre'].pinned or pre} → {found['post'].pinned or post}, evaluated on {data_file} "
        f"({kind}, {len(batches)} batches of {batch_size})"
    )
    return Pair(
        name=name or f"{Path(given['pre']).name}→{Path(given['post']).name}",
        description=desc,
        pre=a.params,
        post=b.params,
        loss_fn=loss_fn,
        batches=batches,
        accuracy_fn=acc,
        info={
            "accuracy_name": acc_name,
            "checkpoints": {
                "pre": str(pre),
                "post": str(post),
                **{f"{k}_hub_id": v.pinned for k, v in found.items() if v.pinned is not None},
            },
            "data": str(data_file),
            "kind": kind,
            "family": family,
        },
        template=b,
    )


def _locate(given: dict[str, str | os.PathLike]) -> dict[str, hub.Located]:
    """Each checkpoint's directory and pinned id, its weights downloaded if it is a Hub id not yet
    cached (after every check that needs no weights)."""
    return {k: hub.locate(v) for k, v in given.items()}
