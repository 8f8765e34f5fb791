# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bring your own checkpoints
#
# Point the toolkit at two Hugging Face model directories — a pre-trained model and its
# post-trained version (Llama-3, Mistral, Qwen2 decoders; CLIP vision with a classifier head) —
# and an evaluation file, plan the memory, analyse edits, and export an edited model.
#
# Set `PRE`, `POST` and `DATA` below (or the environment variables `RIEMANN_PRE`,
# `RIEMANN_POST`, `RIEMANN_DATA`) to your own: for example `Meta-Llama-3-8B`,
# `Meta-Llama-3-8B-Instruct` and a GSM8K JSONL with `{"prompt", "response"}` records. Without
# them, the notebook uses the workbench's `lm/arithmetic` directories — which are ordinary HF
# checkpoints — or, under `RIEMANN_SMOKE=1` (CI), two tiny checkpoints it writes itself.

# %%
import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

import riemann
from analysis import pairs
from analysis.hf import checkpoints
from analysis.perf import plan
from riemann import edits

SMOKE = os.environ.get("RIEMANN_SMOKE") == "1"
WORK = Path(tempfile.mkdtemp(prefix="byo-"))
PRE, POST, DATA = (os.environ.get(f"RIEMANN_{k}") for k in ("PRE", "POST", "DATA"))

if not (PRE and POST and DATA) and SMOKE:
    # Two tiny Llama checkpoints: post = pre + a seeded perturbation, with a byte-level tokenizer.
    from analysis.pairs.workbench import corpus

    tok = corpus.byte_tokenizer()
    raw = {
        "model_type": "llama",
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
    base = checkpoints.from_config(raw, seed=0)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(base.params))))
    tuned = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(next(keys), x.shape, x.dtype), base.params)
    for name, params in (("pre", base.params), ("post", tuned)):
        checkpoints.save(WORK / name, base, params)
        tok.save(str(WORK / name / "tokenizer.json"))
    rng = np.random.default_rng(0)
    records = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a, b in rng.integers(10, 50, (32, 2))]
    (WORK / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    PRE, POST, DATA = str(WORK / "pre"), str(WORK / "post"), str(WORK / "eval.jsonl")
elif not (PRE and POST and DATA):
    from analysis.pairs import workbench

    wb = workbench.load_pair("lm/arithmetic", progress=False, log=lambda s: None)
    PRE, POST = wb.info["checkpoints"]["pre"], wb.info["checkpoints"]["post"]
    DATA = str(Path(POST) / "eval.jsonl")
print(PRE, POST, DATA, sep="\n")

# %% [markdown]
# ## Plan the memory first — from shapes alone
# `analysis.perf.plan` reads `config.json` only. The engine's default keeps a float32 gradient
# accumulator (per-module terms, scores of other directions); forward mode (`mode="forward"`)
# computes each integrand as a Jacobian-vector product instead and needs no gradient memory.
# The same for the paper's models, on an 80 GB and a 141 GB card:

# %%
print(plan.plan(POST, batch=8, seq_len=64, dtype="float32").table())
print()
print(plan.plan("llama-3-8b", batch=1, seq_len=4096, dtype="bfloat16", device_memory_gib=80).table())
print(plan.plan("llama-3-8b", batch=1, seq_len=4096, dtype="bfloat16", device_memory_gib=141).table().splitlines()[-1])

# %% [markdown]
# ## Load the pair
# `pairs.from_checkpoints` checks both architectures from the safetensors headers before reading
# any weights, tokenizes the data with the checkpoint's own `tokenizer.json`, and picks the loss
# from the records: `text` (all tokens), `prompt`/`response` (response tokens), or
# `prompt`/`chosen`/`rejected` (DPO against the pre-trained model).

# %%
pair = pairs.from_checkpoints(PRE, POST, DATA, batch_size=8, max_len=64, max_batches=4)
print(pair.description)
delta = jax.tree.map(lambda a, b: b - a, pair.pre, pair.post)
gain = riemann.estimate(
    pair.loss_fn, pair.post, jax.tree.map(lambda d: -d, delta), pair.batches, method="measured"
).value
print(
    f"L(pre) − L(post) = {gain:.4f}; {pair.info['accuracy_name']} post = {pair.accuracy_fn(pair.post, pair.batches):.3f}"
)

# %% [markdown]
# ## Analyse a few edits — both modes
# Forward mode gives the same value without the gradient accumulator (no per-module breakdown).

# %%
for spec in ("dare:p=0.5", "bitdelta", "lowrank:fraction=0.25", "expo:alpha=0.3"):
    edit = edits.parse(spec)
    change = jax.tree.map(lambda e, d: e - d, edit(delta, key=jax.random.key(0) if edit.random else None), delta)
    term = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches)
    term_fwd = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, mode="forward")
    measured = riemann.estimate(pair.loss_fn, pair.post, change, pair.batches, method="measured")
    cls = riemann.classify(measured.value, riemann.choose_tolerance(gain=gain, stderr=measured.stderr))
    print(
        f"{spec:<24} term {term.value:+.5f} (forward mode {term_fwd.value:+.5f})  measured {measured.value:+.5f}  {cls}"
    )

# %% [markdown]
# The command line does all of this for a whole suite, with every estimator and a report:
#
# ```bash
# riemann run --pre PRE --post POST --data DATA --batch-size 8 --max-len 512 --dtype bfloat16
# ```

# %% [markdown]
# ## Export an edited model
# `checkpoints.save` writes Hugging Face layout (sharded safetensors, `config.json`, tokenizer
# files), atomically, and refuses a non-empty directory. The export loads back with
# `transformers` as well as with `analysis.hf.checkpoints.load`.

# %%
post_ck = checkpoints.load(POST)
edited = edits.dare(delta, 0.5, key=jax.random.key(0))
params = jax.tree.map(lambda p, f: p + f, pair.pre, edited)
out = checkpoints.save(WORK / "dare-0.5", post_ck, params)
print(sorted(p.name for p in out.iterdir()))
back = checkpoints.load(out)
assert all(
    np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(params))
)
