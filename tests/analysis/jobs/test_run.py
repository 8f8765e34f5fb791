"""The main job's run directory: results, report and figures written, a complete run never
overwritten, a killed run resumed to the same numbers, foreign directories refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from analysis.cli import main
from analysis.jobs import run
from tests.analysis.helpers import MLP_EDITS, ROOT, numbers, results


def test_run_writes_results_report_and_figures(mlp_run):
    res = results(mlp_run)
    assert res["settings"]["edits"] == MLP_EDITS and res["settings"]["seed"] == 0
    assert {"jax", "flax", "optax", "python"} <= set(res["versions"])
    (pair,) = res["pairs"]
    for r in pair["edits"]:
        assert set(r["estimates"]) == {
            "riemann",
            "first-order",
            "shared-curvature",
            "second-order",
            "gauss-legendre",
            "gauss-kronrod",
            "auto",
            "kfac",
            "ekfac",
            "kfac-saturated",
        }
        assert set(r["class"]) == set(r["estimates"]) | {"measured"}
        same_mask = r["identity"]["gauss-legendre"]  # the first mask's estimate and measurement
        assert same_mask["estimate"] == pytest.approx(same_mask["measured"], rel=2e-3, abs=1e-4)
        assert same_mask["measured"] == r["measured_seeds"][0]
        assert sum(r["modules"].values()) == pytest.approx(r["estimates"]["riemann"], rel=1e-4, abs=1e-7)
        assert 0.0 <= r["accuracy"] <= 1.0
    agree = pair["agreement"]
    assert agree["gauss-legendre"]["spearman"] > 0.99
    # Shared estimators are charged their one-off passes; per-edit ones their per-edit passes.
    assert agree["first-order"]["passes_once_per_batch"] == {"gradient": 1, "hvp": 0}
    # The probes' first gives the gradient; the suite's biased ΔW·∇L split adds one gradient per batch,
    # streamed again for its cross-fitted first-order term (first-order itself keeps the in-sample one).
    assert "biased_product:k=1.5" in MLP_EDITS
    assert agree["shared-curvature"]["passes_once_per_batch"] == {"gradient": 1, "hvp": 8}
    # The left rule's first node is the gradient at W_post, the same for every edit: once per test batch.
    assert agree["riemann"]["passes_per_edit_per_batch"]["gradient"] == 4
    assert agree["riemann"]["passes_once_per_batch"] == {"gradient": 1}
    assert pair["shared"]["estimators"]["riemann"]["data"] == "test"
    # Gauss-Legendre's per-module terms are not reported, so it runs on forward-mode products.
    assert agree["gauss-legendre"]["passes_per_edit_per_batch"] == {"gradient": 0, "jvp": 8, "hvp": 0, "forward": 0}
    assert all(r["modules_estimator"] == "riemann" for r in pair["edits"])
    # Completeness rules run in forward mode except Gauss-Legendre, whose breakdown attributes the gain.
    assert sum(pair["pair"]["gain_modules"].values()) == pytest.approx(
        pair["pair"]["completeness"]["gauss-legendre:8"]["value"], rel=1e-4
    )
    assert res["summary"]["best"] in agree
    # Shared estimators' seconds split into the passes made once and the rest per edit; the break-even
    # is where the per-edit saving against measuring has paid for the passes made once.
    summ = res["summary"]
    per_measured = summ["measured_seconds"] / len(pair["edits"])
    assert summ["measured_seconds_per_edit"] == pytest.approx(per_measured)
    for n in ("riemann", "first-order", "shared-curvature", "kfac-saturated", "auto"):
        e = summ["estimators"][n]
        assert e["seconds_shared"] == pytest.approx(pair["shared"]["estimators"][n]["seconds"])
        assert e["seconds_per_edit"] == pytest.approx((e["seconds"] - e["seconds_shared"]) / len(pair["edits"]))
        saved = per_measured - e["seconds_per_edit"]
        assert e["break_even_edits"] == (pytest.approx(e["seconds_shared"] / saved) if saved > 0 else None)
    assert "seconds_shared" not in summ["estimators"]["gauss-legendre"]  # per edit only: nothing made once
    assert "Per edit, beyond the passes made once" in (mlp_run / "report.md").read_text()
    # Held out: calibration and test batches recorded and disjoint; one tolerance fixed for the pair.
    checks = pair["pair"]
    split = checks["split"]
    assert len(split["test_batches"]) >= 8 and set(split["calibration_batches"]).isdisjoint(split["test_batches"])
    assert checks["num_batches"] == len(split["test_batches"])
    assert {r["tolerance"] for r in pair["edits"]} == {checks["tolerance"]["value"]}
    assert res["settings"]["seeds"] == 3
    for r in pair["edits"]:
        assert len(r["measured_seeds"]) == (3 if r["key"] else 1)
        assert r["measured"] == pytest.approx(sum(r["measured_seeds"]) / len(r["measured_seeds"]), rel=1e-12)
        assert isinstance(r["identity"]["gauss-kronrod"]["converged"], bool)
    for stat in ("spearman", "class_agreement", "sign_agreement", "median_abs_log_ratio"):
        lo, hi = agree["riemann"][f"{stat}_ci95"]
        assert lo <= agree["riemann"][stat] <= hi, stat
    assert set(agree["riemann"]["by_family"]) == {r["family"] for r in pair["edits"]}
    assert -1.0 <= pair["accuracy_correlation"]["spearman"] <= 1.0
    kronrod = agree["gauss-kronrod"]["identity"]
    assert kronrod["not_converged"] == [] and kronrod["within_error"] == 1.0 and kronrod["outside_error"] == []
    report = (mlp_run / "report.md").read_text()
    assert "### In-sample identity" in report and "Per edit family" in report
    assert "## The paper's claims on these pairs" in report and "## Pair `mlp-teacher`" in report
    for png in (
        "frontier.png",
        "mlp-teacher-calibration.png",
        "mlp-teacher-confusion.png",
        "mlp-teacher-line_profile.png",
    ):
        assert (mlp_run / png).stat().st_size > 10_000, png
    assert json.loads((mlp_run / "run.json").read_text())["status"] == "complete"


def test_a_complete_run_is_never_overwritten(mlp_run, capsys):
    before = (mlp_run / "results.json").read_bytes()
    assert main(["run", "--pair", "mlp-teacher", "--edits", *MLP_EDITS, "--out", str(mlp_run), "--quiet"]) == 2
    assert "holds a complete run" in capsys.readouterr().err
    assert (mlp_run / "results.json").read_bytes() == before


def test_killed_run_resumes_to_the_same_numbers(mlp_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "analysis.cli",
        "run",
        "--pair",
        "mlp-teacher",
        "--edits",
        *MLP_EDITS,
        "--estimators",
        "all",
        "--out",
        str(out),
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    edits_dir = out / "progress" / "mlp-teacher" / "edits"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if edits_dir.is_dir() and len(list(edits_dir.glob("*.json"))) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    scored = len(list(edits_dir.glob("*.json")))
    assert 3 <= scored < len(MLP_EDITS), "the run should have been killed part way"
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not (out / "results.json").exists()
    # Other arguments are refused rather than mixed into the unfinished run.
    assert (
        main(["run", "--pair", "mlp-teacher", "--edits", *MLP_EDITS, "--out", str(out), "--seed", "1", "--quiet"]) == 2
    )
    assert main(cmd[3:]) == 0
    assert numbers(results(out)) == numbers(results(mlp_run))


def test_prepare_refuses_foreign_directories(tmp_path):
    settings = run.RunSettings(pairs=("mlp-teacher",), edits=("dare:p=0.5",))
    out, resumed = run.prepare(tmp_path / "a", settings)
    assert not resumed and json.loads((out / "run.json").read_text())["status"] == "running"
    again, resumed = run.prepare(out, settings)
    assert again == out and resumed
    with pytest.raises(FileExistsError, match="differing: edits"):
        run.prepare(out, run.RunSettings(pairs=("mlp-teacher",), edits=("dare:p=0.6",)))


def _mini_run(out, pairs, jobs):
    args = ["run", "--size", "mini", "--pair", *pairs, "--edits", "dare:p=0.5", "bitdelta", "expo:alpha=-0.2"]
    return main([*args, "expo:alpha=0.2", "--probes", "2", "--out", str(out), "--quiet", "--jobs", str(jobs)])


def test_run_on_mini_workbench_pairs(mini_cache, tmp_path, capsys):
    # The two pairs side by side, each in a worker process of its own.
    out = tmp_path / "wb"
    assert _mini_run(out, ["lm/arithmetic-dpo", "vit/rotated"], jobs=2) == 0
    printed = capsys.readouterr().out
    assert "[riemann] pair vit/rotated" in printed and "[vit/rotated] completeness" in printed
    res = results(out)
    assert res["processes"]["pairs_at_once"] == 2
    assert [p["pair"]["name"] for p in res["pairs"]] == ["lm/arithmetic-dpo", "vit/rotated"]
    for p in res["pairs"]:
        assert p["pair"]["loss_post"] < p["pair"]["loss_pre"]
        assert len(p["pair"]["line_profile"]["loss"]) == 31
        # Every rule estimates the same exact change L(post) − L(pre): value − gap is that change,
        # up to float32 rounding of the endpoint losses (evaluated by differently compiled steps).
        exact = p["pair"]["loss_post"] - p["pair"]["loss_pre"]
        for rule, c in p["pair"]["completeness"].items():
            assert c["value"] - c["gap"] == pytest.approx(exact, abs=4e-6 * max(1.0, abs(p["pair"]["loss_pre"]))), rule
        comp = p["pair"]["completeness"]
        assert comp["gauss-legendre:8"]["relative_gap"] < comp["left:5"]["relative_gap"]
        for r in p["edits"]:
            assert r["accuracy"] is not None
    assert "## Pair `vit/rotated`" in (out / "report.md").read_text()
    # A pair's numbers do not depend on the process it ran in, nor on the pair beside it.
    alone = tmp_path / "alone"
    assert _mini_run(alone, ["vit/rotated"], jobs=1) == 0
    (vit,) = results(alone)["pairs"]
    assert numbers({"pairs": [vit]}) == numbers({"pairs": res["pairs"][1:]})
    assert vit["pair"]["completeness"] == res["pairs"][1]["pair"]["completeness"]
