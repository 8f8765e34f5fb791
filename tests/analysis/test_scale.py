"""The 8B-scale script runs end to end in its tiny configuration on the CPU, so it does not rot
between GPU runs."""

import math

import jax

from analysis import scale


def test_tiny_run_reports_every_figure():
    # bfloat16 gradients pass through jax.nn.dot_product_attention's own float32 internals, which
    # the suite's strict promotion refuses in the backward pass; users run with standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        res = scale.run(tiny=True, tokens=256, edits_limit=4)
        forward = scale.run(tiny=True, tokens=256, edits_limit=1, mode="forward")
    for key in ("tokens_per_s", "achieved_tflops", "step_s", "path_integral_value", "suite_s"):
        assert math.isfinite(res[key]), key
    for key in ("tokens_per_s", "achieved_tflops", "step_s", "suite_s"):
        assert res[key] > 0, key
    assert res["mode"] in ("accumulate", "forward") and res["suite_edits"] == 4
    assert res["params"] > 0 and res["tokens_per_step"] == 128
    for row in res["suite"]:
        assert math.isfinite(row["term"]) and math.isfinite(row["measured"])
    # Interpolating halfway back towards pre changes the loss by the integral's value; with a small
    # random delta both are small and finite.
    assert abs(res["path_integral_value"]) < 1.0
    assert forward["mode"] == "forward"
    assert math.isclose(forward["path_integral_value"], res["path_integral_value"], rel_tol=0.05, abs_tol=1e-4)
