"""Memory planning from shapes alone."""

import json

import pytest

from analysis import plan
from analysis.cli import main

GiB = 1024**3


def test_llama3_8b_counts_and_modes():
    p = plan.plan("llama-3-8b", batch=1, seq_len=4096, dtype="bfloat16", device_memory_gib=80)
    assert p.num_params == 8_030_261_248
    acc, fwd = p.parts["accumulator"], p.parts["forward"]
    assert acc["accumulator (float32)"] == 4 * p.num_params and acc["W_post"] == 2 * p.num_params
    assert "accumulator (float32)" not in fwd and "gradient" not in fwd
    # The full-accumulator mode does not fit an 80 GB card; forward-mode products do.
    assert not p.fits("accumulator") and p.fits("forward") and p.recommended() == "forward"
    assert plan.plan("llama-3-8b", device_memory_gib=141).recommended() == "accumulator"
    assert plan.plan("llama-3-70b", device_memory_gib=141).recommended() is None
    assert "use the forward mode" in p.table()


def test_activations_grow_with_tokens_and_remat_saves_memory():
    small = plan.plan("mistral-7b-v0.3", batch=1, seq_len=1024)
    big = plan.plan("mistral-7b-v0.3", batch=4, seq_len=1024)
    assert big.total("accumulator") > small.total("accumulator")
    no_remat = plan.plan("mistral-7b-v0.3", batch=4, seq_len=1024, remat=False)
    assert no_remat.parts["accumulator"]["activations"] > big.parts["accumulator"]["activations"]
    assert big.device_memory is None and big.fits("accumulator") is None


def test_plan_reads_a_checkpoint_config_without_weights(tmp_path, capsys):
    cfg = {**plan.PRESETS["qwen2-7b"], "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # no weight files at all
    p = plan.plan(tmp_path, batch=2, seq_len=512, dtype="float32")
    assert p.family == "qwen2" and p.parts["accumulator"]["W_post"] == 4 * p.num_params
    assert main(["plan", str(tmp_path), "--memory", "24"]) == 0
    assert "device memory 24 GiB" in capsys.readouterr().out


def test_bad_input_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="not a preset"):
        plan.plan(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        plan.plan("llama-3-8b", dtype="int8")
    assert main(["plan", "gpt-5"]) == 2
    assert "not a preset" in capsys.readouterr().err
