"""The built-in workbench: real pre-trained / post-trained pairs the toolkit trains itself,
offline, seeded, in minutes on two CPU cores, cached on disk.

Pairs (``PAIRS``):

- ``lm/arithmetic``, ``lm/strings``: a Llama-architecture decoder pre-trained on CPython
  standard-library sources, post-trained on two-digit addition / word reversal (loss: response
  cross-entropy on held-out prompts; accuracy: exact match by greedy decoding).
- ``lm/arithmetic-dpo``: the arithmetic model (as "pre") and its DPO-trained successor (as
  "post"), with the DPO loss against the arithmetic model as reference — the setting of the
  paper's EXPO analysis (Zephyr SFT → DPO); accuracy: DPO's implicit-reward accuracy.
- ``vit/rotated``, ``vit/inverted``, ``vit/parity``: a CLIP-ViT-architecture encoder with a
  classification head, pre-trained on handwritten digits and fine-tuned per task (top-1 accuracy).

Cache: ``$RIEMANN_CACHE`` or ``~/.cache/riemann``, one directory per hash of the configuration,
the corpus, the code version and the jax/flax/optax versions. Each stage (one trained model) is
written atomically with ``stage.json``, which records its metrics and the SHA-256 of each file;
an interrupted build resumes from the completed stages, and a stage whose files no longer match
their hashes is rebuilt, never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from analysis import files
from analysis.pairs import accuracy, registry
from analysis.pairs.pair import Pair
from analysis.pairs.workbench import language, vision

VERSION = "1"  # bump when training code changes results
LANGUAGE_STAGES = ("pre", "arithmetic", "strings", "arithmetic-dpo")
VISION_STAGES = ("pre",) + vision.TASKS
PAIRS = registry.names("workbench")  # the registry is where pairs are named
SIZES = ("full", "mini")


def cache_root() -> Path:
    return Path(os.environ.get("RIEMANN_CACHE") or Path.home() / ".cache" / "riemann")


def configs(size: str) -> tuple[language.LanguageConfig, vision.VisionConfig]:
    if size not in SIZES:
        raise ValueError(f"workbench size {size!r}; accepted: {', '.join(SIZES)}")
    return (language.LanguageConfig(), vision.VisionConfig()) if size == "full" else (language.MINI, vision.MINI)


def build_key(size: str) -> str:
    import flax
    import jax
    import optax

    lang, vis = configs(size)
    text, info = language.corpus.stdlib_corpus(lang.corpus_chars)
    blob = json.dumps(
        {
            "version": VERSION,
            "size": size,
            "language": dataclasses.asdict(lang),
            "vision": dataclasses.asdict(vis),
            "corpus": info["sha256"],
            "versions": [jax.__version__, flax.__version__, optax.__version__, np.__version__],
        },
        sort_keys=True,
    )
    return f"{size}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(stage_dir: Path) -> bool:
    meta = stage_dir / "stage.json"
    if not meta.is_file():
        return False
    try:
        hashes = json.loads(meta.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return False
    present = {p.name for p in stage_dir.iterdir() if p.name != "stage.json"}
    if present != set(hashes):
        return False
    return all(_sha256(stage_dir / name) == digest for name, digest in hashes.items())


def build(size: str = "full", *, progress: bool = True, log: Any = print) -> Path:
    """Build (or verify and reuse) every workbench model; returns the cache directory."""
    lang, vis = configs(size)
    root = cache_root() / build_key(size)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages = [("lm", s, language, lang) for s in LANGUAGE_STAGES] + [("vit", s, vision, vis) for s in VISION_STAGES]
    built_any = False
    for family, stage, module, cfg in stages:
        target = root / family / stage
        if target.exists() and _verified(target):
            continue
        if target.exists():
            log(f"[workbench] {family}/{stage}: cached files do not match their hashes; rebuilding")
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{stage}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.parent / f".{stage}.partial-{os.getpid()}"
        t = time.perf_counter()
        log(f"[workbench] building {family}/{stage} …")
        built_any = True
        result = module.build_stage(stage, cfg, tmp / "model", lambda s, f=family: root / f / s, progress)
        result["seconds"] = time.perf_counter() - t
        hashes = {p.name: _sha256(p) for p in (tmp / "model").iterdir()}
        (tmp / "model" / "stage.json").write_text(json.dumps({"result": result, "files": hashes}, indent=2))
        # Each stage is one directory renamed into place: a reader sees all of it or none.
        os.replace(tmp / "model", target)
        shutil.rmtree(tmp, ignore_errors=True)
        summary = {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in result.items()
            if k in ("loss_pre", "loss_post", "accuracy_pre", "accuracy_post", "heldout_loss", "seconds")
        }
        log(f"[workbench] {family}/{stage}: {summary}")
    if not built_any and (root / "manifest.json").is_file():
        return root  # every stage verified; the manifest already describes them
    manifest = {
        "key": root.name,
        "size": size,
        "python": sys.version.split()[0],
        "stages": {
            f"{f}/{s}": json.loads((root / f / s / "stage.json").read_text())["result"] for f, s, _, _ in stages
        },
        "build_seconds_this_run": time.perf_counter() - t0,
    }
    files.write_json(root / "manifest.json", manifest)
    return root


def _stage(root: Path, family: str, stage: str) -> Path:
    return root / family / stage


def load_pair(name: str, size: str = "full", *, progress: bool = True, log: Any = print) -> Pair:
    """A workbench pair, built first if the cache lacks it (or holds corrupt files)."""
    from analysis.hf import checkpoints
    from analysis.pairs import data

    if name not in PAIRS:
        raise ValueError(f"unknown workbench pair {name!r}; accepted: {', '.join(PAIRS)}")
    root = build(size, progress=progress, log=log)
    family, task = name.split("/")
    lang, vis = configs(size)
    pre_dir = _stage(root, family, "arithmetic" if task == "arithmetic-dpo" else "pre")  # DPO starts from the SFT model
    meta = json.loads((pre_dir / "stage.json").read_text())["result"]
    post_meta = json.loads((_stage(root, family, task) / "stage.json").read_text())["result"]
    pre = checkpoints.load(pre_dir)
    post = checkpoints.load(_stage(root, family, task))
    if family == "lm":
        tok = data.load_tokenizer(_stage(root, family, task))
        eos = tok.token_to_id("</s>")
        kind, records = data.read_jsonl(_stage(root, family, task) / "eval.jsonl")
        items = data.tokenize(tok, kind, records, max_len=lang.task_len, eos_id=eos)
        batches = data.make_batches(items, batch_size=lang.eval_batch, max_len=lang.task_len)
        if kind == "preference":
            batches = data.dpo_batches(batches, pre.forward, pre.params)
            loss_fn = data.dpo_loss(pre.forward, beta=lang.dpo_beta)
            acc = accuracy.reward_accuracy_fn(pre.forward)
            acc_name = "implicit-reward accuracy"
        else:
            loss_fn = data.causal_lm_loss(pre.forward)
            acc = accuracy.exact_match_fn(pre.forward, tok, records, max_new=language.TASK_NEW_TOKENS[task])
            acc_name = "exact match (greedy)"
        desc = (
            f"Llama-architecture decoder ({lang.num_hidden_layers} layers, hidden {lang.hidden_size}) pre-trained on "
            "CPython standard-library sources (byte-level tokenizer); post-trained on "
            f"{post_meta['task']}"
        )
    else:
        ev = np.load(_stage(root, family, task) / "eval.npz")
        batches = vision.eval_batches({"pixel_values": ev["pixel_values"], "labels": ev["labels"]})
        loss_fn = data.image_classification_loss(pre.classify)
        acc = accuracy.top1_accuracy_fn(pre.classify)
        acc_name = "top-1 accuracy"
        desc = (
            f"CLIP-ViT-architecture encoder ({vis.num_hidden_layers} layers, hidden {vis.hidden_size}) with a "
            f"10-way head, pre-trained on digits, fine-tuned on {task} digits"
        )
    return Pair(
        name=name,
        description=desc,
        pre=pre.params,
        post=post.params,
        loss_fn=loss_fn,
        batches=batches,
        accuracy_fn=acc,
        info={
            "accuracy_name": acc_name,
            "cache": str(root),
            "size": size,
            "pre_stage": meta,
            "post_stage": post_meta,
            "checkpoints": {"pre": str(pre.path), "post": str(post.path)},
        },
        template=post,
    )
