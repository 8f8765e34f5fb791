"""Fixtures shared by the analysis tests: one complete run of the main job on the mlp-teacher pair,
and a pair of tiny user checkpoints with data files of each kind."""

import json

import jax
import numpy as np
import pytest

from analysis.cli import main
from analysis.hf import checkpoints
from analysis.pairs.workbench import corpus
from tests.analysis.helpers import MLP_EDITS, llama


@pytest.fixture(scope="session")
def mlp_run(once_per_run):
    """One complete run of every estimator on the mlp-teacher pair, made once per test run (the
    xdist workers share it; tests only read it)."""
    with once_per_run("runs") as root:
        out = root / "full"
        if not (out / "results.json").exists():
            args = ["--pair", "mlp-teacher", "--edits", *MLP_EDITS, "--estimators", "all", "--quiet"]
            assert main(["run", *args, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def user_pair(tmp_path_factory):
    """Two tiny Llama checkpoints (post = pre + a seeded perturbation) with a byte tokenizer, and
    JSONL files of each kind."""
    root = tmp_path_factory.mktemp("user")
    tok = corpus.byte_tokenizer()
    pre = checkpoints.from_config(llama(tok.get_vocab_size()), seed=1)
    keys = iter(jax.random.split(jax.random.key(5), len(jax.tree.leaves(pre.params))))
    post_params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), pre.params)
    for name, params in (("pre", pre.params), ("post", post_params)):
        checkpoints.save(root / name, pre, params)
        tok.save(str(root / name / "tokenizer.json"))
    rng = np.random.default_rng(0)
    recs = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a, b in rng.integers(10, 50, (24, 2))]
    (root / "resp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    prefs = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": str(int(r["response"]) + 1)} for r in recs]
    (root / "pref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    return root
