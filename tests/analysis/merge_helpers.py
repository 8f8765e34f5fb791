"""Tiny merge inputs for the merge tests: a Llama base and fine-tunes of it, saved as checkpoints,
with a prompt/response data file per task."""

import json
from pathlib import Path

import jax
import numpy as np

from analysis.hf import checkpoints
from analysis.pairs.workbench import corpus
from tests.analysis.helpers import llama


def make_models(root: Path, tasks: int = 3) -> Path:
    """``root/base`` and ``root/ft<i>`` (base + a seeded perturbation each), with a byte tokenizer,
    and ``root/data<i>.jsonl`` (24 prompt/response records each)."""
    tok = corpus.byte_tokenizer()
    base = checkpoints.from_config(llama(tok.get_vocab_size()), seed=1)
    checkpoints.save(root / "base", base)
    tok.save(str(root / "base" / "tokenizer.json"))
    leaves = len(jax.tree.leaves(base.params))
    for i in range(tasks):
        keys = jax.random.split(jax.random.key(10 + i), leaves)
        noise = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, jax.tree.leaves(base.params))]
        noise = jax.tree.unflatten(jax.tree.structure(base.params), noise)
        params = jax.tree.map(lambda x, n: x + 0.05 * n, base.params, noise)
        checkpoints.save(root / f"ft{i}", base, params)
        tok.save(str(root / f"ft{i}" / "tokenizer.json"))
        rng = np.random.default_rng(i)
        op = "+-*"[i % 3]
        pairs = rng.integers(10, 50, (24, 2))
        recs = [{"prompt": f"{a}{op}{b}=", "response": str(eval(f"{a}{op}{b}"))} for a, b in pairs]
        (root / f"data{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def garble(model_dir: Path) -> None:
    """Overwrite every tensor's bytes with 0xFF (NaN in float32), keeping the header: a reader of
    the headers sees a valid checkpoint, a reader of the weights sees garbage."""
    for f in model_dir.glob("*.safetensors"):
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        f.write_bytes(raw[: 8 + n] + b"\xff" * (len(raw) - 8 - n))
