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

Shipped models: XLA's CPU numerics differ between processors, so the same seeds train somewhat
different models on different machines. The full workbench as trained for the release therefore
ships inside the package (``shipped/``: every stage's files, ``stage.json`` and a ``manifest.json``
with the SHA-256 of each file, the recipe and the machine it was trained on), and
``load_pair(name, "full")`` uses it: read-only, nothing trained, nothing written. Every file is
checked against the manifest on load; a file that fails is an error naming it (a damaged install
is never used, and never silently replaced by a retrained model). Shipped models trained by an
older recipe (a different ``VERSION`` or configuration) are refused the same way.

``RIEMANN_WORKBENCH=cache`` (or ``load_pair(..., source="cache")``) uses the models trained on this
machine in the cache instead, building them first if needed; the mini size always does.
``build("full")`` (``riemann workbench build``) retrains into the cache and records in the cache's
manifest how far each retrained stage lands from the shipped one (:func:`compare`); :func:`ship`
(``riemann workbench build --ship``) copies a full build into ``shipped/`` for a release.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
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

VERSION = "2"  # bump when training code changes results
LANGUAGE_STAGES = ("pre", "arithmetic", "strings", "arithmetic-dpo")
VISION_STAGES = ("pre",) + vision.TASKS
PAIRS = registry.names("workbench")  # the registry is where pairs are named
SIZES = ("full", "mini")
SOURCES = ("shipped", "cache")
SHIPPED = Path(__file__).parent / "shipped"  # the full workbench as trained for the release (see ship)


class ShippedModelError(ValueError):
    """The shipped models are damaged (a file fails its SHA-256) or were trained by another recipe."""


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


def recipe_key(size: str) -> str:
    """What decides the trained models apart from the machine: the code version and the
    configurations (not the corpus bytes of this Python nor the library versions, which
    :func:`build_key` adds for the cache)."""
    lang, vis = configs(size)
    blob = json.dumps(
        {"version": VERSION, "size": size, "language": dataclasses.asdict(lang), "vision": dataclasses.asdict(vis)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    if built_any or not (root / "manifest.json").is_file():
        manifest = {
            "key": root.name,
            "size": size,
            "python": sys.version.split()[0],
            "machine": machine(),
            "stages": {
                f"{f}/{s}": json.loads((root / f / s / "stage.json").read_text())["result"] for f, s, _, _ in stages
            },
            "build_seconds_this_run": time.perf_counter() - t0,
        }
    else:
        manifest = json.loads((root / "manifest.json").read_text())  # every stage verified and described
        if size != "full" or not (SHIPPED / "manifest.json").is_file():
            return root
        if manifest.get("shipped", {}).get("manifest_sha256") == _sha256(SHIPPED / "manifest.json"):
            return root
    if size == "full" and (SHIPPED / "manifest.json").is_file():
        manifest["shipped"] = {
            "path": str(SHIPPED),
            "manifest_sha256": _sha256(SHIPPED / "manifest.json"),
            "stages": compare(root, SHIPPED),
        }
    files.write_json(root / "manifest.json", manifest)
    return root


def machine() -> dict[str, Any]:
    """Where a build ran: CPU model, core count, platform and the numerical libraries' versions."""
    import flax
    import jax
    import jaxlib
    import optax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
    }


def _weights(stage_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(stage_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def relative_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """``‖a − b‖ / ‖b‖`` over all tensors together (float64); the tensor names must agree."""
    if set(a) != set(b):
        raise ValueError(f"the models hold different tensors: {sorted(set(a) ^ set(b))}")
    diff = sum(float(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2)) for k in b)
    norm = sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in b)
    return float(np.sqrt(diff / norm))


def compare(retrained: Path, shipped: Path) -> dict[str, dict[str, Any]]:
    """How far each stage of the build at ``retrained`` lands from the one at ``shipped`` (both laid
    out as ``<family>/<stage>/``): ``loss_post``, ``accuracy_post`` (and ``heldout_loss`` for a
    pre-training) as ``{"shipped": …, "retrained": …}``, and ``relative_distance``
    ``‖W_retrained − W_shipped‖ / ‖W_shipped‖`` over all parameters. Stages only one side has are
    left out."""
    out: dict[str, dict[str, Any]] = {}
    for meta in sorted(shipped.glob("*/*/stage.json")):
        family, stage = meta.parent.parent.name, meta.parent.name
        other = retrained / family / stage
        if not (other / "stage.json").is_file():
            continue
        a = json.loads(meta.read_text())["result"]
        b = json.loads((other / "stage.json").read_text())["result"]
        row: dict[str, Any] = {
            k: {"shipped": a[k], "retrained": b.get(k)}
            for k in ("loss_post", "accuracy_post", "heldout_loss")
            if k in a
        }
        row["relative_distance"] = relative_distance(_weights(other), _weights(meta.parent))
        out[f"{family}/{stage}"] = row
    return out


def ship(root: Path, dest: Path | None = None) -> Path:
    """Copy the full build at ``root`` (from ``build("full")``) into ``dest`` (default: the
    package's ``shipped/``), replacing what was there, with a ``manifest.json`` listing the SHA-256
    of every file, the recipe, each stage's metrics and the machine the build ran on."""
    dest = SHIPPED if dest is None else Path(dest)
    root = Path(root)
    if not root.name.startswith("full-"):
        raise ValueError(f"{root}: not a full workbench build; only the full size ships")
    stages = [("lm", s) for s in LANGUAGE_STAGES] + [("vit", s) for s in VISION_STAGES]
    for family, stage in stages:
        if not _verified(root / family / stage):
            raise ValueError(f"{root / family / stage}: missing or not matching its hashes; build it first")
    built = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").is_file() else {}
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    hashes: dict[str, str] = {}
    results: dict[str, Any] = {}
    for family, stage in stages:
        shutil.copytree(root / family / stage, tmp / family / stage)
        for f in sorted((tmp / family / stage).iterdir()):
            hashes[f"{family}/{stage}/{f.name}"] = _sha256(f)
        result = json.loads((tmp / family / stage / "stage.json").read_text())["result"]
        results[f"{family}/{stage}"] = {k: v for k, v in result.items() if k != "curve"}
    manifest = {
        "recipe": recipe_key("full"),
        "version": VERSION,
        "build": root.name,
        "trained_on": built.get("machine") or machine(),
        "build_seconds": built.get("build_seconds_this_run"),
        "stages": results,
        "files": hashes,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def verify_shipped(root: Path | None = None) -> dict[str, Any] | None:
    """The shipped manifest at ``root`` (default :data:`SHIPPED`) once every file it lists matches
    its SHA-256 and its recipe is this code's; ``None`` when nothing is shipped there. Raises
    :class:`ShippedModelError` naming the first file that is missing or fails its hash."""
    root = SHIPPED if root is None else Path(root)
    if not (root / "manifest.json").is_file():
        return None
    hint = "reinstall the package, or set RIEMANN_WORKBENCH=cache to train the workbench on this machine instead"
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        listed = manifest["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ShippedModelError(f"{root / 'manifest.json'}: unreadable shipped manifest ({e}); {hint}") from e
    if manifest.get("recipe") != recipe_key("full"):
        raise ShippedModelError(
            f"{root}: the shipped models were trained by recipe {manifest.get('recipe')} (workbench version "
            f"{manifest.get('version')}), this code trains recipe {recipe_key('full')} (version {VERSION}): refresh "
            "them with `riemann workbench build --ship`, or set RIEMANN_WORKBENCH=cache"
        )
    for rel, digest in listed.items():
        path = root / rel
        if not path.is_file():
            raise ShippedModelError(f"{path}: a shipped file is missing; {hint}")
        if _sha256(path) != digest:
            raise ShippedModelError(f"{path}: does not match its SHA-256 in the shipped manifest; {hint}")
    return manifest


def locate(size: str, source: str | None = None, *, progress: bool = True, log: Any = print) -> tuple[Path, str]:
    """Where the models of ``size`` come from: ``(directory, "shipped" or "cache")``. ``source``
    (default ``$RIEMANN_WORKBENCH``, else ``shipped``) picks the shipped full models when the
    package has them (verified), the cache (built first if needed) otherwise."""
    source = source or os.environ.get("RIEMANN_WORKBENCH") or "shipped"
    if source not in SOURCES:
        raise ValueError(f"workbench source {source!r} (RIEMANN_WORKBENCH); accepted: {', '.join(SOURCES)}")
    configs(size)
    if source == "shipped" and size == "full" and verify_shipped(SHIPPED) is not None:
        return SHIPPED, "shipped"
    return build(size, progress=progress, log=log), "cache"


def _stage(root: Path, family: str, stage: str) -> Path:
    return root / family / stage


def load_pair(
    name: str, size: str = "full", *, progress: bool = True, log: Any = print, source: str | None = None
) -> Pair:
    """A workbench pair: the shipped full models, or (``source="cache"``, ``RIEMANN_WORKBENCH=cache``,
    or the mini size) the cache's, built first if the cache lacks them (or holds corrupt files)."""
    from analysis.hf import checkpoints
    from analysis.pairs import data

    if name not in PAIRS:
        raise ValueError(f"unknown workbench pair {name!r}; accepted: {', '.join(PAIRS)}")
    root, origin = locate(size, source, progress=progress, log=log)
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
        batches = vision.eval_batches({"pixel_values": ev["pixel_values"], "labels": ev["labels"]}, vis.eval_batches)
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
            "source": origin,
            "size": size,
            "pre_stage": meta,
            "post_stage": post_meta,
            "checkpoints": {"pre": str(pre.path), "post": str(post.path)},
        },
        template=post,
    )
