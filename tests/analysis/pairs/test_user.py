"""Pairs from user checkpoints (decoders with response and preference data, CLIP classifiers),
through ``riemann run --pre/--post/--data``."""

import json

import jax
import numpy as np
import pytest

from analysis.cli import main
from analysis.hf import checkpoints
from tests.analysis.helpers import results


def test_run_on_user_checkpoints(user_pair, tmp_path):
    out = tmp_path / "user"
    args = [
        "run",
        "--pre",
        str(user_pair / "pre"),
        "--post",
        str(user_pair / "post"),
        "--data",
        str(user_pair / "resp.jsonl"),
        "--batch-size",
        "2",  # 24 records: 12 batches, 4 calibrate and 8 test
        "--edits",
        "dare:p=0.5",
        "bitdelta",
        "expo:alpha=0.5",
        "--estimators",  # the bare run's, and Gauss–Legendre for the in-sample identity
        "riemann",
        "first-order",
        "shared-curvature",
        "auto",
        "gauss-legendre",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    (pair,) = results(out)["pairs"]
    assert pair["pair"]["num_batches"] == 8 and pair["pair"]["accuracy_name"] == "token accuracy (teacher-forced)"
    for r in pair["edits"]:
        same_mask = r["identity"]["gauss-legendre"]  # the first mask: estimate and measurement of one model
        assert same_mask["estimate"] == pytest.approx(same_mask["measured"], rel=1e-2, abs=1e-4)
    # Recomputing layers in the backward pass changes memory, not numbers: gradients, Hessian-vector
    # products and forward-mode products alike (K-FAC's factors with remat: tests/analysis/study/test_kfac.py).
    rem = tmp_path / "remat"
    rem_args = [*args[: args.index("--estimators") + 1], "riemann", "shared-curvature", "gauss-legendre"]
    assert main([*rem_args, "--remat", "--out", str(rem), "--quiet"]) == 0
    (again,) = results(rem)["pairs"]
    assert len(again["edits"]) == len(pair["edits"]) == 3
    for r, q in zip(pair["edits"], again["edits"]):
        assert q["measured"] == pytest.approx(r["measured"], rel=1e-5)
        assert set(q["estimates"]) == {"riemann", "shared-curvature", "gauss-legendre"}
        for name, value in q["estimates"].items():
            assert value == pytest.approx(r["estimates"][name], rel=1e-4, abs=1e-7), name
    assert json.loads((rem / "run.json").read_text())["settings"]["checkpoints"]["remat"] is True
    pref = tmp_path / "pref"
    assert (
        main(
            [
                *args[:5],
                "--data",
                str(user_pair / "pref.jsonl"),
                "--batch-size",
                "2",
                "--edits",
                "expo:alpha=0.5",
                "--out",
                str(pref),
                "--quiet",
                "--estimators",
                "riemann",
                "first-order",
            ]
        )
        == 0
    )
    (pair,) = results(pref)["pairs"]
    assert pair["pair"]["accuracy_name"] == "implicit-reward accuracy" and pair["pair"]["accuracy_pre"] == 0.5
    assert set(pair["edits"][0]["estimates"]) == {"riemann", "first-order"}


def test_run_on_user_clip_classifiers(tmp_path):
    from analysis.pairs.workbench import vision

    base = checkpoints.from_config(vision.raw_config(vision.MINI), seed=0)
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(base.params))))
    tuned = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), base.params)
    checkpoints.save(tmp_path / "pre", base)
    checkpoints.save(tmp_path / "post", base, tuned)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "eval.npz",
        pixel_values=rng.random((40, 3, 16, 16)).astype(np.float32),
        labels=rng.integers(0, 10, 40),
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--pre",
                str(tmp_path / "pre"),
                "--post",
                str(tmp_path / "post"),
                "--data",
                str(tmp_path / "eval.npz"),
                "--batch-size",
                "3",  # 40 images: 13 batches, 4 calibrate and 9 test
                "--edits",
                "dare:p=0.5",
                "expo:alpha=0.5",
                "--estimators",
                "riemann",
                "auto",
                "gauss-legendre",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    (pair,) = results(out)["pairs"]
    assert pair["pair"]["num_batches"] == 9 and pair["pair"]["accuracy_name"] == "top-1 accuracy"
    for r in pair["edits"]:
        same_mask = r["identity"]["gauss-legendre"]  # the first mask: estimate and measurement of one model
        assert same_mask["estimate"] == pytest.approx(same_mask["measured"], rel=1e-2, abs=1e-5)
