"""Built-in vision pairs: a small CLIP-ViT-architecture encoder with a linear classification head,
pre-trained on handwritten digits and fine-tuned on three other tasks — a mirror of the paper's
ViT-B/32 task vectors.

Data: scikit-learn's bundled 8×8 handwritten digits (1,797 images, shipped inside the package;
BSD licence), scaled to 16×16 and three channels. A fixed seeded split keeps 492 images
(12 batches of 41) for evaluation only. Tasks (labels share the 10-way head):

- ``digits`` (pre-training): the digit, 0–9;
- ``rotated``: images rotated by 90°, label the digit;
- ``inverted``: intensities inverted (1 − x), label the digit;
- ``parity``: the original images, label ``digit mod 2`` (0 even, 1 odd).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from analysis.hf import checkpoints
from analysis.pairs import accuracy, data
from analysis.pairs.workbench.train import train

TASKS = ("rotated", "inverted", "parity")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    projection_dim: int = 32
    image_size: int = 16
    patch_size: int = 4
    pre_steps: int = 500
    post_steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    eval_images: int = 492  # held out: eval_batches equal batches (12 × 41)
    eval_batches: int = 12
    seed: int = 0


MINI = VisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    projection_dim=16,
    pre_steps=200,
    post_steps=120,
    batch_size=32,
    eval_images=96,  # 12 × 8
)


def raw_config(cfg: VisionConfig) -> dict[str, Any]:
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "projection_dim": cfg.projection_dim,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "riemann_num_labels": 10,
        "dtype": "float32",
    }


def digits(cfg: VisionConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train and evaluation splits of the digits as ``{"images": [N, 8, 8] in [0, 1], "labels"}``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(cfg.seed).permutation(len(d.target))
    images, labels = d.images[order] / 16.0, d.target[order].astype(np.int32)
    k = cfg.eval_images
    return {"images": images[k:], "labels": labels[k:]}, {"images": images[:k], "labels": labels[:k]}


def task_view(split: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """Pixels [N, 3, 16, 16] (normalised to [−1, 1]) and labels of ``task`` on a split."""
    x, y = split["images"], split["labels"]
    if task == "rotated":
        x = np.rot90(x, k=1, axes=(1, 2))
    elif task == "inverted":
        x = 1.0 - x
    elif task == "parity":
        y = y % 2
    elif task != "digits":
        raise ValueError(f"unknown vision task {task!r}; accepted: digits, {', '.join(TASKS)}")
    x = np.kron(x, np.ones((1, 2, 2)))  # 8×8 → 16×16
    x = np.repeat(x[:, None], 3, axis=1)
    return {"pixel_values": ((x - 0.5) / 0.5).astype(np.float32), "labels": y.astype(np.int32)}


def eval_batches(view: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """``n`` equal batches that cover every evaluation image."""
    size, rest = divmod(len(view["labels"]), n)
    if rest or not size:
        raise ValueError(f"{len(view['labels'])} evaluation images do not split into {n} equal batches")
    return list(data.image_batches(view["pixel_values"], view["labels"], batch_size=size))


def build_stage(
    stage: str, cfg: VisionConfig, out: Path, done: Callable[[str], Path], progress: bool
) -> dict[str, Any]:
    train_split, eval_split = digits(cfg)
    if stage == "pre":
        model = checkpoints.from_config(raw_config(cfg), seed=cfg.seed)
        start = model.params
        task = "digits"
    else:
        model = checkpoints.load(done("pre"))
        start = model.params
        task = stage
    loss = data.image_classification_loss(model.classify)
    view = task_view(train_split, task)
    params, curve = train(
        loss,
        start,
        view,
        steps=cfg.pre_steps if stage == "pre" else cfg.post_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed + (0 if stage == "pre" else 1 + TASKS.index(stage)),
        desc=f"vit {'pre-training' if stage == 'pre' else 'fine-tuning: ' + stage}",
        progress=progress,
        weight_decay=1e-4,
    )
    checkpoints.save(out, model, params)
    ev = eval_batches(task_view(eval_split, task), cfg.eval_batches)
    top1 = accuracy.top1_accuracy_fn(model.classify)
    np.savez_compressed(out / "eval.npz", **{k: np.concatenate([b[k] for b in ev]) for k in ("pixel_values", "labels")})
    result = {
        "task": task,
        "curve": curve[::10],
        "final_train_loss": float(np.mean(curve[-20:])),
        "loss_post": float(np.mean([loss(params, b) for b in ev])),
        "accuracy_post": top1(params, ev),
    }
    if stage != "pre":
        result["loss_pre"] = float(np.mean([loss(start, b) for b in ev]))
        result["accuracy_pre"] = top1(start, ev)
    return result
