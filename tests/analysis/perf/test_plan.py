"""Memory planning from shapes alone."""

import json

import jax
import pytest

from analysis.cli import main
from analysis.perf import plan

GiB = 1024**3


def test_llama3_8b_counts_and_modes():
    p = plan.plan("llama-3-8b", batch=1, seq_len=4096, dtype="bfloat16", device_memory_gib=80)
    assert p.num_params == 8_030_261_248
    acc, fwd = p.parts["accumulate"], p.parts["forward"]
    assert acc["accumulator (float32)"] == 4 * p.num_params and acc["W_post"] == 2 * p.num_params
    assert "accumulator (float32)" not in fwd and "gradient" not in fwd
    # The full-accumulator mode does not fit an 80 GB card; forward-mode products do.
    assert not p.fits("accumulate") and p.fits("forward") and p.recommended() == "forward"
    assert plan.plan("llama-3-8b", device_memory_gib=141).recommended() == "accumulate"
    assert plan.plan("llama-3-70b", device_memory_gib=141).recommended() is None
    assert "use the forward mode" in p.table()


def test_activations_grow_with_tokens_and_remat_saves_memory():
    small = plan.plan("mistral-7b-v0.3", batch=1, seq_len=1024)
    big = plan.plan("mistral-7b-v0.3", batch=4, seq_len=1024)
    assert big.total("accumulate") > small.total("accumulate")
    no_remat = plan.plan("mistral-7b-v0.3", batch=4, seq_len=1024, remat=False)
    assert no_remat.parts["accumulate"]["activations"] > big.parts["accumulate"]["activations"]
    assert big.device_memory is None and big.fits("accumulate") is None


def test_plan_reads_a_checkpoint_config_without_weights(tmp_path, capsys):
    cfg = {**plan.PRESETS["qwen2-7b"], "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # no weight files at all
    p = plan.plan(tmp_path, batch=2, seq_len=512, dtype="float32")
    assert p.family == "qwen2" and p.parts["accumulate"]["W_post"] == 4 * p.num_params
    assert main(["plan", str(tmp_path), "--memory", "24"]) == 0
    assert "device memory 24 GiB" in capsys.readouterr().out


def test_gemma_is_planned_with_its_wider_attention_and_extra_norms():
    p = plan.plan("gemma-2-9b", batch=1, seq_len=4096, dtype="bfloat16", device_memory_gib=141)
    assert p.family == "gemma2" and p.num_params == 9_241_705_984 and p.recommended() == "accumulate"
    # The same shapes read as a Llama (hidden-wide attention, two norms) need fewer activations.
    llama = {**plan.PRESETS["gemma-2-9b"], "model_type": "llama", "head_dim": 3584 // 16}
    as_llama = plan.plan(llama, batch=1, seq_len=4096, remat=False)
    assert (
        as_llama.parts["accumulate"]["activations"]
        < plan.plan("gemma-2-9b", remat=False).parts["accumulate"]["activations"]
    )


def test_bad_input_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="not a preset"):
        plan.plan(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        plan.plan("llama-3-8b", dtype="int8")
    assert main(["plan", "gpt-5"]) == 2
    assert "not a preset" in capsys.readouterr().err


SMALL = {
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}


def test_xla_compiles_the_engines_step_from_shapes_and_reports_its_plan():
    n = plan.plan(SMALL, dtype="float32").num_params
    batch_bytes = 2 * 64 * (4 + 4)  # int32 ids and float32 mask, 2 × 64 tokens
    acc = plan.compiled(SMALL, mode="accumulate", batch=2, seq_len=64, dtype="float32")
    fwd = plan.compiled(SMALL, mode="forward", batch=2, seq_len=64, dtype="float32")
    # Arguments are exactly what the step takes: accumulator, W_post and the direction (+ t, w, batch).
    assert acc.argument_bytes == 3 * 4 * n + 2 * 4 + batch_bytes
    assert fwd.argument_bytes == 2 * 4 * n + 4 + batch_bytes
    # The donated accumulator comes back in place; the rest of the output is a few scalars.
    assert acc.alias_bytes == 4 * n and acc.output_bytes - acc.alias_bytes < 1024
    assert acc.suite_delta_bytes == 4 * n and acc.total == acc.step + 4 * n
    assert acc.temp_bytes > 0 and acc.step > fwd.step
    longer = plan.compiled(SMALL, mode="accumulate", batch=2, seq_len=256, dtype="float32")
    assert longer.temp_bytes > acc.temp_bytes  # activations grow with tokens
    assert "XLA (cpu), accumulate step" in acc.line()
    # bfloat16 attention mixes in float32 internals, which the suite's strict promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        half = plan.compiled(SMALL, mode="forward", batch=2, seq_len=64, dtype="bfloat16")
    assert half.argument_bytes == 2 * 2 * n + 4 + batch_bytes


def test_xla_plan_on_the_command_line_and_bad_modes(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(SMALL))
    with jax.numpy_dtype_promotion("standard"):
        assert main(["plan", str(cfg), "--seq-len", "32", "--xla", "--memory", "1"]) == 0
    out = capsys.readouterr().out
    assert "XLA (cpu), accumulate step" in out and "XLA (cpu), forward step" in out and out.count("— fits") >= 3
    with pytest.raises(ValueError, match="mode='backward'"):
        plan.compiled(SMALL, mode="backward")


def test_xla_plan_of_a_clip_encoder_takes_pixels():
    clip = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 16,
        "patch_size": 8,
        "projection_dim": 8,
        "hidden_act": "quick_gelu",
    }
    n = plan.plan(clip, dtype="float32").num_params
    pixels = 4 * 3 * 16 * 16 * 4
    assert plan.compiled(clip, mode="accumulate", batch=4, dtype="float32").argument_bytes == 3 * 4 * n + 2 * 4 + pixels
    assert plan.compiled(clip, mode="forward", batch=4, dtype="float32").argument_bytes == 2 * 4 * n + 4 + pixels


def test_plan_names_the_engines_modes_without_importing_it():
    import riemann

    assert plan.MODES == riemann.MODES
