"""The 8B-scale script runs end to end in its tiny configuration on the CPU, so it does not rot
between GPU runs."""

import json
import math

import jax
import pytest

from analysis.perf import plan, scale


def test_tiny_run_reports_every_figure():
    # bfloat16 gradients pass through jax.nn.dot_product_attention's own float32 internals, which
    # the suite's strict promotion refuses in the backward pass; users run with standard promotion.
    updates = []
    with jax.numpy_dtype_promotion("standard"):
        res = scale.run(
            tiny=True,
            tokens=256,
            edits_limit=4,
            on_update=lambda r: updates.append(r["suite_edits"] if "suite" in r else -1),
        )
        forward = scale.run(tiny=True, tokens=256, edits_limit=1, mode="forward")
    for key in ("tokens_per_s", "achieved_tflops", "step_s", "path_integral_value", "suite_s"):
        assert math.isfinite(res[key]), key
    for key in ("tokens_per_s", "achieved_tflops", "step_s", "suite_s"):
        assert res[key] > 0, key
    assert res["mode"] in ("accumulate", "forward") and res["suite_edits"] == 4
    assert res["params"] > res["matmul_params"] > 0 and res["tokens_per_step"] == 128
    for row in res["suite"]:
        assert math.isfinite(row["term"]) and math.isfinite(row["measured"])
    # Partial figures are handed out after every phase: device, build, integral, each edit, end, other mode.
    assert updates[:3] == [-1, -1, -1] and updates[3:7] == [1, 2, 3, 4] and len(updates) == 10
    # XLA's own plan for both modes, from shapes, comes last.
    assert set(res["xla_plan_gib"]) == {"accumulate", "forward", "leaves"}
    assert res["xla_plan_gib"]["accumulate"] > res["xla_plan_gib"]["forward"] > 0
    # Without a device memory limit both modes "fit", so the other one is timed as well and gives
    # the same integral (jvp vs gradient, both in bfloat16).
    assert set(res["modes"]) == {"accumulate", "forward"}
    assert math.isclose(
        res["modes"]["forward"]["path_integral_value"], res["path_integral_value"], rel_tol=0.05, abs_tol=1e-4
    )
    # Interpolating halfway back towards pre changes the loss by the integral's value; with a small
    # random delta both are small and finite.
    assert abs(res["path_integral_value"]) < 1.0
    assert forward["mode"] == "forward" and set(forward["modes"]) == {"forward"}
    assert math.isclose(forward["path_integral_value"], res["path_integral_value"], rel_tol=0.05, abs_tol=1e-4)


def test_model_flops_match_a_count_by_hand():
    raw = plan.PRESETS["llama-3-8b"]
    # Llama-3-8B: 8.03 B parameters, of which the input embedding is 128256 × 4096.
    n_matmul = 8_030_261_248 - 128256 * 4096
    flops = scale.forward_flops(raw, n_matmul, tokens=4096, seq=4096)
    # per token 2·N for the products, causal attention QKᵀ + AV = 2 · 2 · (T/2) · d per layer
    by_hand = 4096 * (2 * n_matmul + 32 * 2 * 2 * (4096 / 2) * 4096)
    assert flops == pytest.approx(by_hand, rel=1e-12)
    assert 6.4e13 < flops < 6.6e13  # ≈ 2 · 7.5e9 · 4096 + 4.4e12


def test_main_writes_the_figures_atomically(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    out = tmp_path / "scale.json"
    with jax.numpy_dtype_promotion("standard"):
        assert scale.main(["--tiny", "--tokens", "64", "--edits", "1", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    printed = json.loads(capsys.readouterr().out)
    assert saved == printed and saved["suite_edits"] == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "argv, message",
    [(["--tokens", "0"], "--tokens must be ≥ 1"), (["--tokens", "100", "--batch", "3"], "multiple of --batch")],
)
def test_main_refuses_bad_sizes(argv, message, capsys):
    with pytest.raises(SystemExit):
        scale.main(argv)
    assert message in capsys.readouterr().err


def test_an_accumulator_that_does_not_fit_falls_back_to_forward_mode(monkeypatch):
    """The plan is an estimate: when the device refuses the accumulator mode's memory, the run
    records the error and measures everything in forward mode instead of losing the lease."""
    import riemann

    real = riemann.integrate_path

    def no_room_for_the_accumulator(*args, mode="accumulate", **kw):
        if mode == "accumulate":
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 32.00GiB")
        return real(*args, mode=mode, **kw)

    monkeypatch.setattr(riemann, "integrate_path", no_room_for_the_accumulator)
    with jax.numpy_dtype_promotion("standard"):
        res = scale.run(tiny=True, tokens=128, edits_limit=2)
    assert res["mode"] == "forward" and res["suite_edits"] == 2
    assert "RESOURCE_EXHAUSTED" in res["modes"]["accumulate"]["error"]
    assert math.isfinite(res["modes"]["forward"]["path_integral_value"])
    with pytest.raises(jax.errors.JaxRuntimeError):  # an explicit --mode is not second-guessed
        scale.run(tiny=True, tokens=128, edits_limit=1, mode="accumulate")
