"""The main job end to end: run directories, resumption after a kill, the command line on the
workbench and on user checkpoints, export, and every bad input refused before heavy work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from analysis import checkpoints, run
from analysis.cli import main
from analysis.workbench import corpus

MLP_EDITS = ["dare:p=0.3", "dare:p=0.9", "dare:p=0.99", "dare:p=0.5,k=-1", "bitdelta", "bitdelta:magnitude_bits=4",
             "magnitude:keep=0.3", "lowrank:fraction=0.25", "expo:alpha=-0.2", "expo:alpha=0.2", "biased_product:k=1.5",
             "della:density=0.3,epsilon=0.1"]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _numbers(results: dict) -> list:
    return [(r["spec"], r["estimates"], r["measured"], r["class"], r["accuracy"]) for p in results["pairs"] for r in p["edits"]]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(["run", "--pair", "mlp-teacher", "--edits", *MLP_EDITS, "--out", str(out), "--quiet"]) == 0
    return out


def test_run_writes_results_report_and_figures(mlp_run):
    res = _results(mlp_run)
    assert res["settings"]["edits"] == MLP_EDITS and res["settings"]["seed"] == 0
    assert {"jax", "flax", "optax", "python"} <= set(res["versions"])
    (pair,) = res["pairs"]
    for r in pair["edits"]:
        assert set(r["estimates"]) == {"riemann", "first-order", "shared-curvature", "second-order", "gauss-legendre"}
        assert set(r["class"]) == set(r["estimates"]) | {"measured"}
        assert r["estimates"]["gauss-legendre"] == pytest.approx(r["measured"], rel=2e-3, abs=1e-4)
        assert sum(r["modules"].values()) == pytest.approx(r["estimates"]["riemann"], rel=1e-4, abs=1e-7)
        assert 0.0 <= r["accuracy"] <= 1.0
    agree = pair["agreement"]
    assert agree["gauss-legendre"]["spearman"] > 0.99
    # Shared estimators are charged their one-off passes; per-edit ones their per-edit passes.
    assert agree["first-order"]["passes_once_per_batch"] == {"gradient": 1, "hvp": 0}
    assert agree["shared-curvature"]["passes_once_per_batch"] == {"gradient": 0, "hvp": 8}
    assert agree["riemann"]["passes_per_edit_per_batch"]["gradient"] == 5
    # Gauss-Legendre's per-module terms are not reported, so it runs on forward-mode products.
    assert agree["gauss-legendre"]["passes_per_edit_per_batch"] == {"gradient": 0, "jvp": 8, "hvp": 0, "forward": 0}
    assert all(r["modules_estimator"] == "riemann" for r in pair["edits"])
    # Completeness rules run in forward mode except Gauss-Legendre, whose breakdown attributes the gain.
    assert sum(pair["pair"]["gain_modules"].values()) == pytest.approx(pair["pair"]["completeness"]["gauss-legendre:8"]["value"], rel=1e-4)
    assert res["summary"]["best"] in agree
    report = (mlp_run / "report.md").read_text()
    assert "## The paper's claims on these pairs" in report and "## Pair `mlp-teacher`" in report
    for png in ("frontier.png", "mlp-teacher-calibration.png", "mlp-teacher-confusion.png", "mlp-teacher-line_profile.png"):
        assert (mlp_run / png).stat().st_size > 10_000, png
    assert json.loads((mlp_run / "run.json").read_text())["status"] == "complete"


def test_a_complete_run_is_never_overwritten(mlp_run, capsys):
    before = (mlp_run / "results.json").read_bytes()
    assert main(["run", "--pair", "mlp-teacher", "--edits", *MLP_EDITS, "--out", str(mlp_run), "--quiet"]) == 2
    assert "holds a complete run" in capsys.readouterr().err
    assert (mlp_run / "results.json").read_bytes() == before


def test_killed_run_resumes_to_the_same_numbers(mlp_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "analysis.cli", "run", "--pair", "mlp-teacher", "--edits", *MLP_EDITS, "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
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
    assert main(["run", "--pair", "mlp-teacher", "--edits", *MLP_EDITS, "--out", str(out), "--seed", "1", "--quiet"]) == 2
    assert main(["run", "--pair", "mlp-teacher", "--edits", *MLP_EDITS, "--out", str(out), "--quiet"]) == 0
    assert _numbers(_results(out)) == _numbers(_results(mlp_run))


def test_bad_input_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["run", "--pair", "mlp-teacher", "--out", str(tmp_path), "--edits", "dare:p=0.5"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"
    cases = [
        (["--edits", "dare:p=2"], "p=2.0 is outside"),
        (["--edits", "prune:p=0.5"], "unknown edit 'prune'"),
        (["--edits", "dare:p=0.5", "dare:p=0.50"], "repeats"),
        (["--pair", "lm/poetry"], "unknown pair(s) ['lm/poetry']"),
        (["--estimators", "third-order"], "unknown estimator(s) ['third-order']"),
        (["--pre", str(tmp_path)], "missing --post, --data"),
        (["--probes", "0"], "--probes 0"),
    ]
    for args, message in cases:
        assert main(["run", "--out", str(tmp_path / "new"), *args]) == 2, args
        assert message in capsys.readouterr().err, args
        assert not (tmp_path / "new").exists()


def test_help_is_instant():
    done = subprocess.run([sys.executable, "-m", "analysis.cli", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0 and "reproduce" in done.stdout and "export" in done.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys, analysis.cli; print('jax' in sys.modules)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert probe.stdout.strip() == "False"


# --- user checkpoints -------------------------------------------------------------------------

def _llama(vocab: int) -> dict:
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 10000.0, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def user_pair(tmp_path_factory):
    """Two tiny Llama checkpoints (post = pre + a seeded perturbation) with a byte tokenizer, and
    JSONL files of each kind."""
    root = tmp_path_factory.mktemp("user")
    tok = corpus.byte_tokenizer()
    pre = checkpoints.from_config(_llama(tok.get_vocab_size()), seed=1)
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


def test_run_on_user_checkpoints(user_pair, tmp_path):
    out = tmp_path / "user"
    args = ["run", "--pre", str(user_pair / "pre"), "--post", str(user_pair / "post"), "--data", str(user_pair / "resp.jsonl"),
            "--batch-size", "8", "--edits", "dare:p=0.5", "bitdelta", "expo:alpha=0.5", "--out", str(out), "--quiet"]
    assert main(args) == 0
    (pair,) = _results(out)["pairs"]
    assert pair["pair"]["num_batches"] == 3 and pair["pair"]["accuracy_name"] == "token accuracy (teacher-forced)"
    for r in pair["edits"]:
        assert r["estimates"]["gauss-legendre"] == pytest.approx(r["measured"], rel=1e-2, abs=1e-4)
    # Recomputing layers in the backward pass changes memory, not numbers.
    rem = tmp_path / "remat"
    assert main([*args[:-3], "--remat", "--out", str(rem), "--quiet"]) == 0
    (again,) = _results(rem)["pairs"]
    assert len(again["edits"]) == len(pair["edits"]) == 3
    for r, q in zip(pair["edits"], again["edits"]):
        assert q["measured"] == pytest.approx(r["measured"], rel=1e-5)
        for name, value in r["estimates"].items():
            assert q["estimates"][name] == pytest.approx(value, rel=1e-4, abs=1e-7), name
    assert json.loads((rem / "run.json").read_text())["settings"]["checkpoints"]["remat"] is True
    pref = tmp_path / "pref"
    assert main([*args[:5], "--data", str(user_pair / "pref.jsonl"), "--edits", "expo:alpha=0.5", "--out", str(pref),
                 "--quiet", "--estimators", "riemann", "first-order"]) == 0
    (pair,) = _results(pref)["pairs"]
    assert pair["pair"]["accuracy_name"] == "implicit-reward accuracy" and pair["pair"]["accuracy_pre"] == 0.5
    assert set(pair["edits"][0]["estimates"]) == {"riemann", "first-order"}


def test_user_checkpoint_errors_come_before_loading(user_pair, tmp_path, capsys):
    other = checkpoints.save(tmp_path / "wide", checkpoints.from_config({**_llama(corpus.byte_tokenizer().get_vocab_size()),
                                                                          "intermediate_size": 48}))
    base = ["run", "--pre", str(user_pair / "pre"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*base, "--post", str(other), "--data", str(user_pair / "resp.jsonl")]) == 2
    assert "differ at tensor model.layers.0.mlp.down_proj.weight" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "1+1=", "response": ""}) + "\n")
    assert main([*base, "--post", str(user_pair / "post"), "--data", str(empty)]) == 2
    assert "record 1 yields no scored tokens" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_writes_the_edited_model(user_pair, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--pre", str(user_pair / "pre"), "--post", str(user_pair / "post"), "--edit", "expo:alpha=0.5",
                 "--out", str(out), "--quiet"]) == 0
    pre, post, got = (checkpoints.load(p) for p in (user_pair / "pre", user_pair / "post", out))
    for a, b, c in zip(jax.tree.leaves(pre.params), jax.tree.leaves(post.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a) + 1.5 * (np.asarray(b) - np.asarray(a)), rtol=1e-5, atol=1e-6)
    assert (out / "tokenizer.json").is_file()
    assert main(["export", "--pre", str(user_pair / "pre"), "--post", str(user_pair / "post"), "--edit", "dare:p=0.5",
                 "--out", str(out), "--quiet"]) == 2  # never overwritten


# --- the workbench ------------------------------------------------------------------------------

def test_run_on_mini_workbench_pairs(mini_cache, tmp_path):
    out = tmp_path / "wb"
    assert main(["run", "--size", "mini", "--pair", "lm/arithmetic-dpo", "vit/rotated", "--edits", "dare:p=0.5", "bitdelta",
                 "expo:alpha=-0.2", "expo:alpha=0.2", "--probes", "2", "--out", str(out), "--quiet"]) == 0
    res = _results(out)
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


def test_prepare_refuses_foreign_directories(tmp_path):
    settings = run.RunSettings(pairs=("mlp-teacher",), edits=("dare:p=0.5",))
    out, resumed = run.prepare(tmp_path / "a", settings)
    assert not resumed and json.loads((out / "run.json").read_text())["status"] == "running"
    again, resumed = run.prepare(out, settings)
    assert again == out and resumed
    with pytest.raises(FileExistsError, match="differing: edits"):
        run.prepare(out, run.RunSettings(pairs=("mlp-teacher",), edits=("dare:p=0.6",)))


def test_reproductions_on_the_mini_workbench(mini_cache, tmp_path, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", "fig4", "table1", "--size", "mini", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Fig. 4" in printed and "paper:" in printed and "ours:" in printed
    fig4 = json.loads((out / "fig4.json").read_text())
    assert [p["pair"] for p in fig4["pairs"]] == ["lm/arithmetic", "vit/rotated"]
    for p in fig4["pairs"]:
        assert [r["spec"] for r in p["edits"]] == [f"bitdelta:magnitude_bits={b}" for b in range(6)]
        # More magnitude bits can only bring the edit closer to ΔW (nested blocks): the change shrinks.
        norms = [r["change_norm"] for r in p["edits"]]
        assert all(a >= b - 1e-6 for a, b in zip(norms, norms[1:]))
    table = json.loads((out / "table1.json").read_text())
    assert {r["name"] for r in table["pairs"][0]["edits"]} == {"dare", "biased_sign", "biased_product"}
    assert (out / "fig4.png").stat().st_size > 10_000 and "**Paper:**" in (out / "table1.md").read_text()
    stamp = (out / "fig4.json").stat().st_mtime_ns
    assert main(["reproduce", "fig4", "--size", "mini", "--out", str(out), "--quiet"]) == 0  # kept, not recomputed
    assert (out / "fig4.json").stat().st_mtime_ns == stamp
    assert main(["reproduce", "fig9", "--out", str(tmp_path / "x")]) == 2
    assert "unknown experiment(s) ['fig9']" in capsys.readouterr().err


def test_run_on_user_clip_classifiers(tmp_path):
    from analysis.workbench import vision

    base = checkpoints.from_config(vision.raw_config(vision.MINI), seed=0)
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(base.params))))
    tuned = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), base.params)
    checkpoints.save(tmp_path / "pre", base)
    checkpoints.save(tmp_path / "post", base, tuned)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", pixel_values=rng.random((40, 3, 16, 16)).astype(np.float32),
             labels=rng.integers(0, 10, 40))
    out = tmp_path / "out"
    assert main(["run", "--pre", str(tmp_path / "pre"), "--post", str(tmp_path / "post"), "--data", str(tmp_path / "eval.npz"),
                 "--batch-size", "10", "--edits", "dare:p=0.5", "expo:alpha=0.5", "--out", str(out), "--quiet"]) == 0
    (pair,) = _results(out)["pairs"]
    assert pair["pair"]["num_batches"] == 4 and pair["pair"]["accuracy_name"] == "top-1 accuracy"
    for r in pair["edits"]:
        assert r["estimates"]["gauss-legendre"] == pytest.approx(r["measured"], rel=1e-2, abs=1e-5)


def test_plotting_functions_draw_on_given_axes(mlp_run):
    import matplotlib.pyplot as plt

    from analysis import plots

    res = _results(mlp_run)
    pair = res["pairs"][0]
    fig, ax = plt.subplots(figsize=(6, 5))
    assert plots.calibration(pair, ax=ax) is fig and plots.line_profile(pair, ax=ax) is fig
    assert plots.frontier(res, ax=ax) is fig
    fig2, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    assert plots.confusions(pair, axes) is fig2
    with pytest.raises(ValueError, match="needs 5 axes"):
        plots.confusions(pair, axes[:2])
    plt.close("all")
