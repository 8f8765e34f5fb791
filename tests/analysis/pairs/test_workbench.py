"""The workbench in its miniature configuration: real training, real checkpoints, real cache."""

import json
import shutil

import jax
import numpy as np
import pytest

import riemann
from analysis.hf import checkpoints
from analysis.pairs import workbench


@pytest.fixture
def cache(mini_cache):
    return mini_cache


def test_every_post_training_lowers_its_task_loss(cache):
    manifest = json.loads((cache / "manifest.json").read_text())
    for name in ("lm/arithmetic", "lm/strings", "lm/arithmetic-dpo", "vit/rotated", "vit/inverted", "vit/parity"):
        r = manifest["stages"][name]
        assert r["loss_post"] < r["loss_pre"], name
    assert manifest["stages"]["lm/pre"]["corpus"]["licence"] == "Python Software Foundation License"


def test_pairs_load_like_hf_checkpoints_and_plug_into_the_engine(cache, monkeypatch):
    monkeypatch.setenv("RIEMANN_CACHE", str(cache.parent))
    for name in ("lm/arithmetic", "lm/arithmetic-dpo", "vit/parity"):
        pair = workbench.load_pair(name, "mini", progress=False, log=lambda s: None)
        ck = checkpoints.load(pair.info["checkpoints"]["post"])
        assert ck.names == riemann.leaf_names(pair.post)
        delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
        res = riemann.integrate_path(
            pair.loss_fn, pair.pre, delta, pair.batches, rule="gauss-legendre", n=6, endpoints=True
        )
        assert res.loss_end < res.loss_start, name
        assert res.relative_gap < 1e-2, name
        assert 0.0 <= pair.accuracy_fn(pair.post, pair.batches) <= 1.0


def test_cache_is_reused_and_corruption_is_rebuilt(cache, monkeypatch):
    monkeypatch.setenv("RIEMANN_CACHE", str(cache.parent))
    stage = cache / "vit" / "parity"
    stamp = (stage / "stage.json").stat().st_mtime_ns
    logs = []
    workbench.build("mini", progress=False, log=logs.append)
    assert (stage / "stage.json").stat().st_mtime_ns == stamp and not logs[:-1]  # nothing rebuilt
    weights = stage / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    workbench.build("mini", progress=False, log=logs.append)
    assert any("vit/parity: cached files do not match their hashes; rebuilding" in m for m in logs)
    assert (stage / "stage.json").stat().st_mtime_ns != stamp


def test_interrupted_build_resumes_from_completed_stages(cache, monkeypatch, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(cache.parent, root)
    monkeypatch.setenv("RIEMANN_CACHE", str(root))
    built = root / cache.name
    shutil.rmtree(built / "lm" / "strings")
    (built / "lm" / ".strings.partial-123").mkdir()  # what a killed build leaves behind
    logs = []
    workbench.build("mini", progress=False, log=logs.append)
    rebuilt = [m for m in logs if m.startswith("[workbench] building")]
    assert rebuilt == ["[workbench] building lm/strings …"]
    assert not list((built / "lm").glob(".strings.partial-*"))
    a = json.loads((cache / "lm" / "strings" / "stage.json").read_text())["files"]
    b = json.loads((built / "lm" / "strings" / "stage.json").read_text())["files"]
    assert a["model.safetensors"] == b["model.safetensors"]  # seeded: the same bytes again


def test_unknown_pair_and_size():
    with pytest.raises(ValueError, match="unknown workbench pair 'lm/poetry'"):
        workbench.load_pair("lm/poetry")
    with pytest.raises(ValueError, match="workbench size 'huge'"):
        workbench.configs("huge")


def test_held_out_prompts_never_appear_in_training():
    from analysis.pairs.workbench import language

    for task in ("arithmetic", "strings"):
        train, held = language.task_records(task, language.MINI)
        assert not ({r["prompt"] for r in train} & {r["prompt"] for r in held})
        assert len(held) == language.MINI.eval_examples


def test_tokenizer_round_trips_bytes():
    from analysis.pairs.workbench.corpus import byte_tokenizer

    tok = byte_tokenizer()
    text = "def f(x):\n    return x + 1  # ünïcode"
    ids = tok.encode(text).ids
    assert ids[0] == tok.token_to_id("<s>")
    assert tok.decode(ids[1:]) == text
    assert np.all(np.array(ids) < tok.get_vocab_size())
