"""LoRA adapters as deltas against the reference implementation: PEFT 0.21 on transformers (CPU).

Every base model and adapter here is tiny, random, and written by the test itself: PEFT's
``get_peft_model`` + ``save_pretrained`` for the parity cases, hand-written safetensors files for
the refusals. Merged tensors are compared with PEFT's ``merge_and_unload()`` in float32 at
rtol 1e-6, atol 1e-7; tensors the adapter leaves alone must be the base's own arrays.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the parity reference: the test extra installs torch (CPU), transformers and peft
import transformers

from analysis.cli import main
from analysis.hf import adapters, checkpoints
from analysis.hf.safetensors_file import write_file
from tests.analysis.helpers import results
from tests.analysis.hf.parity import IDS, TINY_DECODER, randomize_

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"),
    pytest.mark.isolated,  # PEFT (and accelerate) run in a child process (tests/conftest.py)
]

DECODER = TINY_DECODER
RTOL, ATOL = 1e-6, 1e-7
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {
    # several targets, per-module ranks and alphas (rank_pattern / alpha_pattern by suffix and by path)
    "llama-patterns": (
        "llama",
        {},
        dict(
            r=4,
            lora_alpha=8,
            target_modules=ALL,
            rank_pattern={"q_proj": 2, "layers.1.mlp.down_proj": 6},
            alpha_pattern={"v_proj": 3.0},
        ),
        {},
    ),
    # rank-stabilised scale, a whole lm_head saved, only layer 1 adapted
    "llama-rslora-modules-to-save": (
        "llama",
        {},
        dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "up_proj"], layers_to_transform=[1]),
        {"modules_to_save": ["lm_head"]},
    ),
    # a regex target, and trained biases (bias="all") saved whole
    "llama-regex-bias": (
        "llama",
        {"attention_bias": True},
        dict(r=4, lora_alpha=16, target_modules=r".*\.(q_proj|k_proj|down_proj)", bias="all"),
        {},
    ),
    # fan_in_fan_out=True, which PEFT ignores for nn.Linear; written into the saved config by hand
    "llama-fan-in-fan-out": ("llama", {}, dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"]), {"fan": True}),
    # tied embeddings with a LoRA on the embedding itself
    "qwen2-tied-embedding": (
        "qwen2",
        {"tie_word_embeddings": True},
        dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"]),
        {},
    ),
    # tied embeddings with a LoRA on lm_head (the Unsloth recipe): merged into the shared matrix
    "qwen2-tied-lm-head": (
        "qwen2",
        {"tie_word_embeddings": True},
        dict(r=4, lora_alpha=8, target_modules=["lm_head", "q_proj"]),
        {},
    ),
    # tied embeddings with LoRAs on both: both deltas on the one matrix, embed_tokens' first (PEFT's order)
    "llama-tied-embedding-and-lm-head": (
        "llama",
        {"tie_word_embeddings": True},
        dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head", "o_proj"], rank_pattern={"lm_head": 2}),
        {},
    ),
    # tied embeddings, the embedding saved whole with ensure_weight_tying: PEFT keeps lm_head tied to it
    "qwen2-tied-modules-to-save-ensure-tying": (
        "qwen2",
        {"tie_word_embeddings": True},
        dict(r=4, lora_alpha=8, target_modules=["q_proj"], ensure_weight_tying=True),
        {"modules_to_save": ["embed_tokens"]},
    ),
    # exclude_modules as a list (by suffix and by full name), trained biases of LoRA'd modules only
    "llama-exclude-list-lora-only-bias": (
        "llama",
        {"attention_bias": True},
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            exclude_modules=["v_proj", "model.layers.1.self_attn.k_proj"],
            bias="lora_only",
        ),
        {},
    ),
    # exclude_modules as a regex, layers_to_transform counted in layers_pattern
    "llama-exclude-regex-layers-pattern": (
        "llama",
        {},
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "up_proj", "down_proj"],
            exclude_modules=r".*\.down_proj",
            layers_to_transform=[1],
            layers_pattern="layers",
        ),
        {},
    ),
    # Phi-3's fused projections as targets
    "phi3-fused": ("phi3", {}, dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "gate_up_proj", "o_proj"]), {}),
}


# What the cases are named for: the modules each adapter has LoRA factors for (layer.module, or the
# tensor), the base tensors replaced whole, and the base tensor each factor merges into where it differs.
_L = "model.layers.{}.{}.weight"


def _in(layers, *modules):
    return {_L.format(i, m) for i in layers for m in modules}


_LORA_ONLY = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj")
CLAIMS = {
    "qwen2-tied-lm-head": (
        {"lm_head.weight", *_in((0, 1), "self_attn.q_proj")},
        {adapters.EMBED},  # PEFT saves the base matrix beside a LoRA on lm_head: the base's own
        {"lm_head.weight": adapters.EMBED},
    ),
    "llama-tied-embedding-and-lm-head": (
        {adapters.EMBED, "lm_head.weight", *_in((0, 1), "self_attn.o_proj")},
        {adapters.EMBED},
        {"lm_head.weight": adapters.EMBED},
    ),
    "qwen2-tied-modules-to-save-ensure-tying": (_in((0, 1), "self_attn.q_proj"), {adapters.EMBED}, {}),
    "llama-exclude-list-lora-only-bias": (
        _in((0,), *_LORA_ONLY) | _in((1,), "self_attn.q_proj", "self_attn.o_proj"),
        {n.replace(".weight", ".bias") for n in _in((0,), *_LORA_ONLY) | _in((1,), *_LORA_ONLY[::2])},
        {},
    ),
    "llama-exclude-regex-layers-pattern": (_in((1,), "self_attn.q_proj", "mlp.up_proj"), set(), {}),
}


def _hf_decoder(kind, **overrides):
    torch.manual_seed(0)
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**DECODER, **overrides}))
    if kind == "phi3":  # Phi3Config's default pad_token_id lies outside a tiny vocabulary
        return transformers.Phi3ForCausalLM(transformers.Phi3Config(**{**DECODER, "pad_token_id": None, **overrides}))
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**DECODER, **overrides}))


def _peft_case(case, tmp_path):
    """A saved base, a saved PEFT adapter on it (trained = randomised), and PEFT's model of both."""
    kind, overrides, lora, extra = CASES[case]
    hf = _hf_decoder(kind, **overrides)
    randomize_(hf.parameters(), 1, 0.05)  # fresh models have zero biases and unit norms
    hf.eval()
    hf.save_pretrained(tmp_path / "base")
    from peft import LoraConfig, PeftModel, get_peft_model  # imported in the child process only

    model = get_peft_model(hf, LoraConfig(task_type="CAUSAL_LM", modules_to_save=extra.get("modules_to_save"), **lora))
    # lora_B starts at zero: "train" every adapter tensor, saved whole copies and biases included.
    trained = [p for n, p in model.named_parameters() if p.requires_grad]
    randomize_(trained, 2, 0.1)
    model.save_pretrained(tmp_path / "adapter")
    if extra.get("fan"):
        cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**cfg, "fan_in_fan_out": True}))
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
        model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    model.eval()
    return tmp_path / "base", tmp_path / "adapter", model


@pytest.mark.parametrize("case", list(CASES))
def test_merged_weights_and_logits_match_peft(case, tmp_path):
    base, adapter, model = _peft_case(case, tmp_path)
    ids = torch.tensor(IDS, dtype=torch.long)
    with torch.no_grad():
        peft_logits = model(ids).logits.numpy()
        hf = model.merge_and_unload()
        merged_logits = hf(ids).logits.numpy()
        merged = {k: v.numpy() for k, v in hf.state_dict().items()}
    pre, post = checkpoints.load_adapter(base, adapter)
    lora = adapters.read_adapter(base, adapter)
    if case in CLAIMS:
        factors, replaced, into = CLAIMS[case]
        assert (set(lora.factors), set(lora.replaced)) == (factors, replaced)
        assert {n: f.into for n, f in lora.factors.items() if f.into} == into
    if case == "phi3-fused":
        assert {n.split(".")[-2] for n in lora.factors} == {"qkv_proj", "gate_up_proj", "o_proj"}
    touched = {f.tensor for f in lora.factors.values()} | set(lora.replaced)
    assert lora.factors and all(n in post.names for n in touched)
    for name, a, b in zip(post.names, jax.tree.leaves(pre.params), jax.tree.leaves(post.params)):
        if name in touched:
            np.testing.assert_allclose(np.asarray(b), merged[name], rtol=RTOL, atol=ATOL, err_msg=name)
        else:  # the base's own array, bit for bit, in both PEFT's merge and ours
            assert b is a, name
            assert np.array_equal(np.asarray(a), merged[name]), name
    for f in lora.factors.values():
        assert not np.array_equal(np.asarray(_leaf(post, f.tensor)), np.asarray(_leaf(pre, f.tensor))), f.name
    ours = np.asarray(jax.jit(post.forward)(post.params, jnp.asarray(IDS)))
    np.testing.assert_allclose(ours, merged_logits, rtol=1e-4, atol=1e-4)
    shared = [f.name for f in lora.factors.values() if f.tensor == adapters.EMBED and adapters.HEAD not in pre.names]
    if shared:
        # PEFT's unmerged forward adapts the input embedding and the output head separately (a LoRA on
        # one leaves the other the base matrix); merge_and_unload changes the one shared matrix, the
        # only thing a tied checkpoint holds.
        assert np.abs(peft_logits - merged_logits).max() > 1e-2
    else:
        np.testing.assert_allclose(ours, peft_logits, rtol=1e-4, atol=1e-4)
    # The factored form is the same delta (the sum of the deltas on a shared matrix).
    for tensor in {f.tensor for f in lora.factors.values()}:
        delta = np.asarray(_leaf(post, tensor)) - np.asarray(_leaf(pre, tensor))
        dense = sum(f.dense() for f in lora.factors.values() if f.tensor == tensor)
        np.testing.assert_allclose(dense, delta, rtol=1e-4, atol=1e-6, err_msg=tensor)


def _leaf(ck, name):
    return dict(zip(ck.names, jax.tree.leaves(ck.params)))[name]


def test_case_settings_are_what_they_claim(tmp_path):
    """The cases exercise what they are named for: per-module ranks and scales, rslora, layers."""
    base, adapter, _ = _peft_case("llama-patterns", tmp_path / "a")
    s = adapters.read_adapter(base, adapter)
    q0, d1 = s.factors["model.layers.0.self_attn.q_proj.weight"], s.factors["model.layers.1.mlp.down_proj.weight"]
    v0, d0 = s.factors["model.layers.0.self_attn.v_proj.weight"], s.factors["model.layers.0.mlp.down_proj.weight"]
    assert (q0.rank, q0.scale) == (2, 4.0) and (d1.rank, d1.scale) == (6, 8 / 6) and (d0.rank, d0.scale) == (4, 2.0)
    assert (v0.rank, v0.scale) == (4, 0.75)
    base, adapter, _ = _peft_case("llama-rslora-modules-to-save", tmp_path / "b")
    s = adapters.read_adapter(base, adapter)
    assert sorted(s.factors) == ["model.layers.1.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"]
    assert all(f.scale == pytest.approx(4 / np.sqrt(8)) for f in s.factors.values())
    assert list(s.replaced) == ["lm_head.weight"]


def test_factored_svd_matches_numpy_on_the_dense_product():
    rng = np.random.default_rng(3)
    for out, inp, r in ((48, 32, 6), (5, 40, 8), (40, 7, 3)):
        f = adapters.LoraFactor(
            "w", rng.normal(size=(out, r)).astype(np.float32), rng.normal(size=(r, inp)).astype(np.float32), 0.7
        )
        dense = 0.7 * (f.left.astype(np.float64) @ f.right.astype(np.float64))
        u_ref, s_ref, vt_ref = np.linalg.svd(dense, full_matrices=False)
        most = min(out, inp, r)
        u, s, vt = (np.asarray(x, np.float64) for x in adapters.factored_svd(f))
        np.testing.assert_allclose(s, s_ref[:most], rtol=1e-5)
        np.testing.assert_allclose((u * s) @ vt, dense, atol=1e-5 * s_ref[0])
        np.testing.assert_allclose(u.T @ u, np.eye(most), atol=1e-5)
        np.testing.assert_allclose(vt @ vt.T, np.eye(most), atol=1e-5)
        k = most - 1  # truncation: the best rank-k approximation (Eckart–Young), as numpy's
        u, s, vt = (np.asarray(x, np.float64) for x in adapters.factored_svd(f, rank=k))
        best = (u_ref[:, :k] * s_ref[:k]) @ vt_ref[:k]
        np.testing.assert_allclose((u * s) @ vt, best, atol=1e-5 * s_ref[0])
    with pytest.raises(ValueError, match="rank=9"):
        adapters.factored_svd(f, rank=9)


# Refusals, on a base written by our own code and adapter files written by hand.


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from tests.analysis.helpers import llama

    root = tmp_path_factory.mktemp("base")
    return checkpoints.save(root / "base", checkpoints.from_config(llama(64), seed=0))


def _adapter(path, config=None, tensors=None, garbage=False):
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none", **(config or {})}
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    if garbage:  # a config refusal must come before this file is opened
        (path / "adapter_model.safetensors").write_bytes(b"not read")
    elif tensors is not None:
        write_file(path / "adapter_model.safetensors", tensors)
    return path


def _q_tensors(layers=(0, 1), r=2, prefix="base_model.model."):
    rng = np.random.default_rng(0)
    out = {}
    for i in layers:
        m = f"{prefix}model.layers.{i}.self_attn.q_proj"
        out[f"{m}.lora_A.weight"] = rng.normal(size=(r, 16)).astype(np.float32)
        out[f"{m}.lora_B.weight"] = rng.normal(size=(16, r)).astype(np.float32)
    return out


@pytest.mark.parametrize(
    "config, message",
    [
        ({"use_dora": True}, "use_dora=True is not implemented"),
        ({"peft_type": "LOKR"}, "peft_type='LOKR'; accepted: 'LORA'"),
        ({"lora_bias": True}, "lora_bias=True is not implemented"),
        ({"target_parameters": ["mlp.experts.down_proj"]}, "target_parameters=['mlp.experts.down_proj']"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa' rewrites the base weights"),
        ({"trainable_token_indices": [1, 2]}, "trainable_token_indices=[1, 2] is not implemented"),
        ({"bias": "some"}, "bias='some'; accepted: 'none', 'all', 'lora_only'"),
        ({"target_modules": "all-linear"}, "target_modules='all-linear'"),
    ],
)
def test_unimplemented_options_are_refused_before_any_weights(base_dir, tmp_path, config, message):
    adapter = _adapter(tmp_path / "a", config, garbage=True)
    with pytest.raises(adapters.AdapterError, match=re.escape(message)):
        checkpoints.load_adapter(base_dir, adapter)


def test_adapter_files_inconsistent_with_the_base_are_refused_naming_the_key(base_dir, tmp_path):
    def refused(tensors, message, config=None):
        d = tmp_path / f"a{len(list(tmp_path.iterdir()))}"
        with pytest.raises(adapters.AdapterError, match=re.escape(message)):
            checkpoints.check_pair(base_dir, _adapter(d, config, tensors))

    t = _q_tensors()
    assert checkpoints.check_pair(base_dir, _adapter(tmp_path / "ok", None, t)) == "llama"
    ghost = {**t, **{k.replace("layers.1", "layers.7"): v for k, v in t.items() if "layers.1" in k}}
    refused(ghost, "'base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight' is for model.layers.7.")
    wide = {**t, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 17), np.float32)}
    refused(wide, "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' has shape (2, 17)")
    refused(_q_tensors(r=3), "with rank 2 (from adapter_config.json: r / rank_pattern) needs (2, 16)")
    half = {k: v for k, v in t.items() if not k.endswith("layers.1.self_attn.q_proj.lora_B.weight")}
    refused(half, "model.layers.1.self_attn.q_proj has lora_A but no lora_B")
    refused(_q_tensors(layers=(0,)), "targets ['model.layers.1.self_attn.q_proj'] but the file has no LoRA")
    refused(
        t,
        "LoRA tensors for model.layers.0.self_attn.q_proj, which adapter_config.json does not target",
        {
            "target_modules": ["q_proj"],
            "layers_to_transform": [1],
        },
    )
    dora = {**t, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": np.ones(16, np.float32)}
    refused(dora, "'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector' belongs to a LoRA variant")
    head = {**t, "base_model.model.lm_head.weight": np.zeros((64, 15), np.float32)}
    refused(head, "'base_model.model.lm_head.weight' has shape (64, 15), base lm_head.weight (64, 16)")


def test_missing_or_pickled_weights_are_refused_and_never_unpickled(base_dir, tmp_path):
    with pytest.raises(adapters.AdapterError, match="no adapter_model.safetensors"):
        checkpoints.load_adapter(base_dir, _adapter(tmp_path / "none"))
    pickled = _adapter(tmp_path / "bin")
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(adapters.AdapterError, match=r"only pickle-based adapter weights \(adapter_model.bin\)"):
        checkpoints.load_adapter(base_dir, pickled)
    with pytest.raises(adapters.AdapterError, match="no adapter_config.json"):
        adapters.read_adapter(base_dir, tmp_path)


def test_riemann_run_and_export_take_an_adapter_as_post(user_pair, tmp_path):
    """The CLI end to end: ``--post`` an adapter directory (no tokenizer of its own: the base's)."""
    pre = checkpoints.load(user_pair / "pre")
    hidden = _leaf(pre, "model.embed_tokens.weight").shape[1]
    rng = np.random.default_rng(1)
    tensors = {}
    for i in range(2):
        for m, (out, inp) in (("self_attn.q_proj", (hidden, hidden)), ("mlp.down_proj", (hidden, 2 * hidden))):
            key = f"base_model.model.model.layers.{i}.{m}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.3, (4, inp)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.3, (out, 4)).astype(np.float32)
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"]}
    adapter = _adapter(tmp_path / "adapter", cfg, tensors)
    out = tmp_path / "run"
    args = ["run", "--pre", str(user_pair / "pre"), "--post", str(adapter), "--data", str(user_pair / "resp.jsonl")]
    fast = ["--batch-size", "2", "--edits", "dare:p=0.5", "expo:alpha=0.5", "--out", str(out), "--quiet"]
    assert main([*args, *fast]) == 0
    (pair,) = results(out)["pairs"]
    assert pair["pair"]["num_batches"] == 8 and len(pair["edits"]) == 2
    for r in pair["edits"]:
        assert np.isfinite(r["measured"]) and all(np.isfinite(v) for v in r["estimates"].values())
    exported = tmp_path / "exported"
    ex = ["export", "--pre", str(user_pair / "pre"), "--post", str(adapter), "--edit", "expo:alpha=0.5"]
    assert main([*ex, "--out", str(exported), "--quiet"]) == 0
    _, post = checkpoints.load_adapter(user_pair / "pre", adapter)
    got = checkpoints.load(exported)
    for a, b, c in zip(jax.tree.leaves(pre.params), jax.tree.leaves(post.params), jax.tree.leaves(got.params)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(np.asarray(c), a + 1.5 * (b - a), rtol=1e-5, atol=1e-6)
    assert (exported / "tokenizer.json").is_file()


def test_merge_is_float32_rounded_once_to_the_parameter_dtype(base_dir, tmp_path):
    adapter = _adapter(tmp_path / "a", None, _q_tensors())
    pre, post = checkpoints.load_adapter(base_dir, adapter, dtype="bfloat16")
    f = adapters.read_adapter(base_dir, adapter).factors["model.layers.0.self_attn.q_proj.weight"]
    got = _leaf(post, f.name)
    assert got.dtype == jnp.bfloat16
    want = (np.asarray(_leaf(pre, f.name), np.float32) + f.dense()).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert _leaf(post, "model.layers.0.self_attn.k_proj.weight") is _leaf(pre, "model.layers.0.self_attn.k_proj.weight")


@pytest.mark.parametrize(
    "lora, message",
    [
        # PEFT's merge_and_unload swaps in the saved embedding and keeps the base matrix as lm_head: untied
        (
            dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
            "replaces model.embed_tokens.weight whole (modules_to_save), but the base",
        ),
        # ... and the other way round: the saved lm_head, the base matrix as embedding
        (
            dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
            "replaces lm_head.weight whole (modules_to_save)",
        ),
        # PEFT's merge adds the tied delta twice, its unmerged model once
        (
            dict(target_modules=["q_proj", "embed_tokens"], ensure_weight_tying=True),
            "with ensure_weight_tying=true on a base with tie_word_embeddings",
        ),
    ],
    ids=["modules-to-save-embed-tokens", "modules-to-save-lm-head", "lora-ensure-weight-tying"],
)
def test_tied_embeddings_that_peft_unties_or_merges_twice_are_refused(tmp_path, lora, message):
    hf = _hf_decoder("qwen2", tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "base")
    from peft import LoraConfig, get_peft_model

    get_peft_model(hf, LoraConfig(task_type="CAUSAL_LM", r=2, **lora)).save_pretrained(tmp_path / "adapter")
    with pytest.raises(adapters.AdapterError, match=re.escape(message)) as e:
        checkpoints.check_pair(tmp_path / "base", tmp_path / "adapter")
    assert "tie_word_embeddings" in str(e.value)


def test_a_lora_on_a_convolution_is_refused(tmp_path):
    raw = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1}
    raw |= {"num_attention_heads": 4, "image_size": 16, "patch_size": 8, "projection_dim": 8}
    ck = checkpoints.from_config(raw, seed=0)
    base = checkpoints.save(tmp_path / "clip", ck)
    (conv,) = [n for n in ck.names if n.endswith("patch_embedding.weight")]
    m = "base_model.model." + conv.removesuffix(".weight")
    tensors = {f"{m}.lora_A.weight": np.zeros((2, 3, 8, 8), np.float32)}  # PEFT's Conv2d LoRA: A [r, c, k, k]
    tensors[f"{m}.lora_B.weight"] = np.zeros((32, 2, 1, 1), np.float32)  # B [out, r, 1, 1]
    adapter = _adapter(tmp_path / "a", {"target_modules": ["patch_embedding"]}, tensors)
    with pytest.raises(adapters.AdapterError, match="only 2-D weights .* convolutions are not implemented"):
        checkpoints.check_pair(base, adapter)
