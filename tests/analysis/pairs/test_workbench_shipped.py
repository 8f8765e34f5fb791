"""The full workbench shipped inside the package: verified on load, read-only, never a cache; the
comparison of a retrained build with it; the evaluation splits (12 batches per pair)."""

import json
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from analysis import cli
from analysis.pairs import data, workbench
from analysis.pairs.workbench import language, vision

QUIET = {"progress": False, "log": lambda s: None}


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_shipped_manifest_hashes_match_the_files():
    manifest = workbench.verify_shipped()
    assert manifest is not None, "the package ships no workbench (analysis/pairs/workbench/shipped/)"
    present = {p.relative_to(workbench.SHIPPED).as_posix() for p in workbench.SHIPPED.rglob("*") if p.is_file()}
    assert present - {"manifest.json"} == set(manifest["files"])
    for rel, digest in manifest["files"].items():
        assert workbench._sha256(workbench.SHIPPED / rel) == digest, rel
    assert manifest["recipe"] == workbench.recipe_key("full")
    assert manifest["trained_on"]["cpu"] and manifest["trained_on"]["jax"]
    assert set(manifest["stages"]) == {f"lm/{s}" for s in workbench.LANGUAGE_STAGES} | {
        f"vit/{s}" for s in workbench.VISION_STAGES
    }


def test_a_shipped_pair_loads_without_the_cache_and_writes_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RIEMANN_CACHE", str(cache))
    monkeypatch.delenv("RIEMANN_WORKBENCH", raising=False)

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped pair was built")

    monkeypatch.setattr(workbench, "build", no_build)
    before = _snapshot(workbench.SHIPPED)
    for name in ("lm/arithmetic", "vit/rotated"):
        pair = workbench.load_pair(name, "full", **QUIET)
        assert pair.info["source"] == "shipped"
        for path in pair.info["checkpoints"].values():
            assert path.startswith(str(workbench.SHIPPED))
        assert len(pair.batches) == 12
        assert len({len(next(iter(b.values()))) for b in pair.batches}) == 1  # equal batches
        if name.startswith("vit"):  # the shipped pair scores what its stage recorded
            recorded = pair.info["post_stage"]["accuracy_post"]
            assert pair.accuracy_fn(pair.post, pair.batches) == pytest.approx(recorded, abs=0.02)
        loss_pre = np.mean([float(pair.loss_fn(pair.pre, b)) for b in pair.batches[:2]])
        loss_post = np.mean([float(pair.loss_fn(pair.post, b)) for b in pair.batches[:2]])
        assert loss_post < loss_pre, name
    assert not cache.exists() or not any(cache.iterdir())
    assert _snapshot(workbench.SHIPPED) == before


def test_a_tampered_shipped_file_is_refused_by_name(tmp_path, monkeypatch):
    copy = tmp_path / "shipped"
    shutil.copytree(workbench.SHIPPED, copy)
    monkeypatch.setattr(workbench, "SHIPPED", copy)
    monkeypatch.setenv("RIEMANN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RIEMANN_WORKBENCH", raising=False)
    weights = copy / "vit" / "parity" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    weights.write_bytes(bytes(blob))
    with pytest.raises(workbench.ShippedModelError, match=re.escape(str(weights)) + ".*SHA-256"):
        workbench.load_pair("vit/rotated", "full", **QUIET)  # any pair: the whole set is checked
    assert not (tmp_path / "cache").exists()  # refused, not silently retrained
    weights.unlink()
    with pytest.raises(workbench.ShippedModelError, match=re.escape(str(weights)) + ": a shipped file is missing"):
        workbench.verify_shipped(copy)


def test_shipped_models_of_another_recipe_are_refused(tmp_path):
    copy = tmp_path / "shipped"
    copy.mkdir()
    (copy / "manifest.json").write_text(json.dumps({"recipe": "0123456789abcdef", "version": "0", "files": {}}))
    with pytest.raises(workbench.ShippedModelError, match="refresh them with `riemann workbench build --ship`"):
        workbench.verify_shipped(copy)
    assert workbench.verify_shipped(tmp_path / "nothing") is None


def test_source_is_checked():
    with pytest.raises(ValueError, match="workbench source 'elsewhere'"):
        workbench.locate("mini", "elsewhere")


def test_every_pair_evaluates_on_twelve_equal_batches(mini_cache, monkeypatch):
    monkeypatch.setenv("RIEMANN_CACHE", str(mini_cache.parent))
    for name in workbench.PAIRS:
        pair = workbench.load_pair(name, "mini", **QUIET)
        assert pair.info["source"] == "cache"
        sizes = [len(next(iter(b.values()))) for b in pair.batches]
        assert sizes == [8] * 12, name
        if "labels" not in pair.batches[0]:  # language: no padding rows fill a batch
            mask = "loss_mask" if "loss_mask" in pair.batches[0] else "chosen_loss_mask"
            assert all(np.all(b[mask].sum(axis=1) > 0) for b in pair.batches), name


@pytest.mark.parametrize("task", ["arithmetic", "strings"])
def test_full_language_held_out_sets_fill_twelve_batches(task):
    cfg = language.LanguageConfig()
    tok = language.corpus.byte_tokenizer()
    train, held = language.task_records(task, cfg)
    assert len(held) == cfg.eval_examples == 12 * cfg.eval_batch
    assert not ({r["prompt"] for r in train} & {r["prompt"] for r in held})
    items = data.tokenize(tok, "response", held, max_len=cfg.task_len, eos_id=tok.token_to_id("</s>"))
    assert len(data.make_batches(items, batch_size=cfg.eval_batch, max_len=cfg.task_len)) == 12


def test_full_vision_held_out_set_fills_twelve_batches():
    cfg = vision.VisionConfig()
    train, held = vision.digits(cfg)
    assert len(vision.eval_batches(vision.task_view(held, "rotated"), cfg.eval_batches)) == 12
    assert len(held["labels"]) == cfg.eval_images == 492 and len(train["labels"]) + 492 == 1797
    with pytest.raises(ValueError, match="do not split into 5 equal batches"):
        vision.eval_batches(vision.task_view(held, "rotated"), 5)


def test_compare_a_retrained_build_with_the_shipped_one(mini_cache, tmp_path):
    other = tmp_path / mini_cache.name
    shutil.copytree(mini_cache, other)
    stage = other / "vit" / "parity"
    weights = load_file(stage / "model.safetensors")
    save_file({k: v * np.float32(1.25) for k, v in weights.items()}, stage / "model.safetensors")
    meta = json.loads((stage / "stage.json").read_text())
    meta["result"]["accuracy_post"] = 0.125
    (stage / "stage.json").write_text(json.dumps(meta))

    rows = workbench.compare(other, mini_cache)
    assert set(rows) == {f"lm/{s}" for s in workbench.LANGUAGE_STAGES} | {f"vit/{s}" for s in workbench.VISION_STAGES}
    assert rows["vit/parity"]["relative_distance"] == pytest.approx(0.25, rel=1e-6)
    assert rows["vit/parity"]["accuracy_post"]["retrained"] == 0.125
    shipped = json.loads((mini_cache / "vit" / "parity" / "stage.json").read_text())["result"]
    assert rows["vit/parity"]["accuracy_post"]["shipped"] == shipped["accuracy_post"]
    assert rows["lm/arithmetic"]["relative_distance"] == 0.0
    assert rows["lm/pre"]["heldout_loss"]["shipped"] == rows["lm/pre"]["heldout_loss"]["retrained"]
    with pytest.raises(ValueError, match="different tensors"):
        workbench.relative_distance({"a": np.ones(2)}, {"b": np.ones(2)})


def test_ship_writes_a_verifiable_manifest(mini_cache, tmp_path):
    with pytest.raises(ValueError, match="only the full size ships"):
        workbench.ship(mini_cache, tmp_path / "refused")
    fake = tmp_path / "full-0000000000000000"  # a mini build under a full build's name
    shutil.copytree(mini_cache, fake)
    dest = workbench.ship(fake, tmp_path / "shipped")
    manifest = workbench.verify_shipped(dest)
    assert manifest["build"] == fake.name and manifest["trained_on"]["cpu"]
    assert "lm/arithmetic/model.safetensors" in manifest["files"]
    assert not list(tmp_path.glob(".shipped.*"))
    assert cli.main(["workbench", "build", "--size", "mini", "--ship", "--quiet"]) == 2
