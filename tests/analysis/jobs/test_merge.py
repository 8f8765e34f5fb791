"""``riemann merge`` and ``riemann export --merge`` on tiny checkpoints: the report's files and
numbers, per-donor terms that sum to the Riemann estimate, the identity merge, the exported
weights, the built-in suite in a reduced form, and refusals before any weights are read."""

import json
import re
import shutil
import warnings

import jax
import numpy as np
import pytest
import yaml

from analysis import files, pairs
from analysis.cli import main
from analysis.hf import checkpoints, safetensors_file
from analysis.jobs import merge
from analysis.study import artefact, merges
from tests.analysis.merge_helpers import garble, make_models

pytestmark = pytest.mark.isolated  # a child pytest process (tests/conftest.py)

FAST = ["--batch-size", "2", "--calibration-batches", "2", "--quiet"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("merge-job"))


def _yaml(root, path, method="ties", n=3, per=None, **top):
    per = {"weight": 0.6, "density": 0.5} if per is None else per
    cfg = {
        "merge_method": method,
        "base_model": str(root / "base"),
        "models": [{"model": str(root / f"ft{i}"), "parameters": dict(per)} for i in range(n)],
        **top,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def merged_run(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("merge-out") / "r"
    cfg = _yaml(models, out.parent / "ties.yml", parameters={"lambda": 1.2})
    data = [str(models / f"data{i}.jsonl") for i in range(3)]
    assert main(["merge", str(cfg), "--data", *data, *FAST, "--out", str(out)]) == 0
    return out


def test_merge_report_files_and_per_donor_terms(merged_run):
    rec = json.loads((merged_run / "merge.json").read_text())
    (m,) = rec["merges"]
    assert m["config"]["merge_method"] == "ties" and m["config"]["resolved"]["shared"]["lambda"] == 1.2
    assert [t["task"] for t in m["tasks"]] == ["ft0", "ft1", "ft2"]
    for t in m["tasks"]:
        values = [*t["estimates"].values(), t["measured"]]
        assert all(np.isfinite(values))
        assert set(t["class"]) == {"riemann", "first-order", "second-order", "measured"}
        # Linearity: ⟨ḡ, Σ_j part_j − τ_i⟩ = Σ_j ⟨ḡ, part_j⟩ (own: part_i − τ_i), to float32 rounding;
        # rounding is computed on its own (float32 checkpoints: the stored merge is the float merge).
        total = sum(t["donors"].values()) + t["rounding"]
        assert total == pytest.approx(t["estimates"]["riemann"], rel=1e-4, abs=1e-7)
        assert abs(t["rounding"]) <= 1e-4 * abs(t["estimates"]["riemann"]) + 1e-7
        assert sum(t["modules"].values()) == pytest.approx(t["estimates"]["riemann"], rel=1e-4, abs=1e-7)
        assert t["own"] == t["task"] and 0.0 <= t["accuracy"] <= 1.0
    md = (merged_run / "merge.md").read_text()
    for t in m["tasks"]:  # the Markdown's numbers are the JSON's
        row = next(
            line for line in md.splitlines() if line.startswith(f"| {t['task']} | {t['estimates']['riemann']:+.4g}")
        )
        assert f"| {t['measured']:+.4g} |" in row
        donor_row = [line for line in md.splitlines() if line.startswith(f"| {t['task']} | ") and "**" in line]
        assert f"**{t['donors'][t['task']]:+.4g}**" in donor_row[0]
    assert (merged_run / "merge.png").stat().st_size > 10_000


@pytest.mark.filterwarnings(
    "ignore::analysis.study.artefact.UnmovedWarning"
)  # tiny float32 moves: rounding is what is tested
def test_same_basenames_and_rounding_per_method(models, tmp_path):
    """Two donors named ``…/a/final`` and ``…/b/final`` keep one term each; for several methods the
    independently computed rounding plus the donors' terms is the Riemann estimate, within
    rel 1e-4 + abs 1e-7 (float32 sums of ~10⁴ products in different orders)."""
    for src, dst in (("base", "base"), ("ft0", "a/final"), ("ft1", "b/final")):
        shutil.copytree(models / src, tmp_path / dst)
    refs = [str(tmp_path / "a/final"), str(tmp_path / "b/final")]
    assert merge.labels(refs) == ["a/final", "b/final"]
    per = {
        "ties": {"weight": 0.6, "density": 0.5},
        "dare_ties": {"weight": 0.6, "density": 0.5},
        "linear": {"weight": 0.6},
        "breadcrumbs": {"weight": 0.6, "density": 0.8, "gamma": 0.05},
    }
    tasks = None
    for method, params in per.items():
        cfg = {
            "merge_method": method,
            "base_model": str(tmp_path / "base"),
            "models": [{"model": r, "parameters": params} for r in refs],
            **({"parameters": {"weight": 0.3}} if method == "linear" else {}),
        }
        plan = merges.check(merges.read(cfg))
        if tasks is None:
            data = [str(models / "data0.jsonl"), str(models / "data1.jsonl")]
            tasks = merge.tasks_from_checkpoints(plan, data, batch_size=2, calibration=2)
            assert [t.name for t in tasks] == ["a/final", "b/final"]
        rec = merge.score_merge(plan, tasks)
        for t in rec["tasks"]:
            assert set(t["donors"]) >= {"a/final", "b/final"} and t["own"] == t["task"]
            total = sum(t["donors"].values()) + t["rounding"]
            assert total == pytest.approx(t["estimates"]["riemann"], rel=1e-4, abs=1e-7), (method, t["task"])


def test_a_single_model_at_weight_one_is_no_change(models):
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(models / "base"),
        "models": [{"model": str(models / "ft0"), "parameters": {"weight": 1.0}}],
    }
    plan = merges.check(merges.read(cfg))
    pair = pairs.from_checkpoints(models / "base", models / "ft0", models / "data0.jsonl", batch_size=2)
    (row,) = merge.score_merge(plan, [merge.task_of(pair, "ft0", calibration=2)])["tasks"]
    assert row["change_norm"] == 0.0 and row["measured"] == 0.0
    assert row["estimates"] == {"riemann": 0.0, "first-order": 0.0, "second-order": 0.0}
    assert set(row["class"].values()) == {"competitive"}


def test_export_writes_the_model_riemann_merge_scores(models, tmp_path):
    """bfloat16 config: every checkpoint loaded in bfloat16 before its delta is taken (as riemann merge
    and mergekit load them), the merge rounded once; equal to the artefact score_merge measures."""
    cfg = _yaml(models, tmp_path / "m.yml", method="dare_ties", n=2, random_seed=7, dtype="bfloat16")
    assert main(["export", "--merge", str(cfg), "--out", str(tmp_path / "x"), "--quiet"]) == 0
    got = checkpoints.load(tmp_path / "x")
    plan = merges.check(merges.read(cfg))
    # What riemann merge scores: pairs loaded in the config's dtype (pairs.from_checkpoints(dtype=...)),
    # τ_i = delta_of(pre, post_i), the merge's artefact rounded to each fine-tune's dtype.
    base = checkpoints.load(models / "base", dtype="bfloat16").params
    posts = [checkpoints.load(models / f"ft{i}", dtype="bfloat16").params for i in (0, 1)]
    deltas = [artefact.delta_of(base, p) for p in posts]
    total = merge.merged_from_deltas(plan, base, deltas).total
    for post, delta in zip(posts, deltas):
        scored = artefact.stored(base, post, delta, total).params
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(scored)):
            assert a.dtype == b.dtype == jax.numpy.bfloat16
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert main(["export", "--merge", str(cfg), "--out", str(tmp_path / "x"), "--quiet"]) == 2  # never overwritten


@pytest.mark.isolated  # runs mergekit: a child process (tests/conftest.py)
@pytest.mark.parametrize("method,dtype", [("ties", "float32"), ("task_arithmetic", "bfloat16")])
def test_export_is_mergekits_merge(models, tmp_path, method, dtype):
    """``ties`` on float32 checkpoints and ``task_arithmetic`` loaded in bfloat16, against mergekit
    0.1.5's own ``run_merge`` in-process: bit for bit (the engine follows mergekit's order of
    operations, in bfloat16 its roundings too, see tests/analysis/test_mergekit_parity.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mk_merge = pytest.importorskip("mergekit.merge")
        mk_config = pytest.importorskip("mergekit.config")
        mk_options = pytest.importorskip("mergekit.options")
    root = tmp_path / "m"
    for d in ("base", "ft0", "ft1", "ft2"):  # mergekit finds the architecture in config.json's "architectures"
        shutil.copytree(models / d, root / d)
        c = json.loads((root / d / "config.json").read_text())
        (root / d / "config.json").write_text(json.dumps({**c, "architectures": ["LlamaForCausalLM"]}))
    per = {"weight": 0.6} if method == "task_arithmetic" else None
    cfg = _yaml(root, tmp_path / "t.yml", method=method, n=3, per=per, dtype=dtype, parameters={"lambda": 0.9})
    assert main(["export", "--merge", str(cfg), "--out", str(tmp_path / "ours"), "--quiet"]) == 0
    options = mk_options.MergeOptions(
        cuda=False, lazy_unpickle=False, copy_tokenizer=False, quiet=True, write_model_card=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = mk_config.MergeConfiguration.model_validate(yaml.safe_load(cfg.read_text()))
        mk_merge.run_merge(config, str(tmp_path / "theirs"), options)

    def read(d):
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            infos, _ = safetensors_file.read_header(f)
            out |= {n: safetensors_file.read_tensor(i) for n, i in infos.items()}
        return out

    ours, theirs = read(tmp_path / "ours"), read(tmp_path / "theirs")
    assert set(ours) == set(theirs)
    for n in theirs:
        assert ours[n].dtype == theirs[n].dtype and str(ours[n].dtype) == dtype, n
        np.testing.assert_array_equal(ours[n].view(np.uint8), theirs[n].view(np.uint8), err_msg=n)


def test_refusals_come_before_any_weights_are_read(models, tmp_path, capsys):
    bad = tmp_path / "garbled"
    for d in ("base", "ft0", "ft1", "ft2"):
        shutil.copytree(models / d, bad / d)
        garble(bad / d)
    data = [str(models / f"data{i}.jsonl") for i in range(3)]
    cfg = _yaml(bad, tmp_path / "g.yml")
    assert main(["merge", str(cfg), "--data", *data[:2], "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "--data: 2 files for 3 models" in capsys.readouterr().err
    assert main(["merge", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "needs --data" in capsys.readouterr().err
    cfg2 = _yaml(bad, tmp_path / "h.yml", method="slerp")
    assert main(["merge", str(cfg2), "--data", data[0], "--out", str(tmp_path / "o")]) == 2
    assert "merge_method 'slerp' is not supported; accepted: linear" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert main(["merge", str(cfg), "--data", data[0], "--out", str(tmp_path / "full"), "--quiet"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", "--merge", str(cfg2), "--out", str(tmp_path / "e")]) == 2
    assert "slerp" in capsys.readouterr().err
    # Data that does not tokenize, a --dtype against the config's, a parameter mergekit fails on.
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1="}\n')
    assert main(["merge", str(cfg), "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl" in capsys.readouterr().err
    cfg3 = _yaml(bad, tmp_path / "d.yml", dtype="bfloat16")
    assert main(["merge", str(cfg3), "--data", data[0], "--dtype", "float32", "--out", str(tmp_path / "o")]) == 2
    assert "--dtype float32 differs from the config's dtype bfloat16" in capsys.readouterr().err
    assert main(["export", "--merge", str(cfg3), "--dtype", "float16", "--out", str(tmp_path / "e")]) == 2
    assert "--dtype float16 differs" in capsys.readouterr().err
    cfg4 = _yaml(bad, tmp_path / "e.yml", method="della")  # density 0.5 ± the default epsilon 0.15: fine
    raw = yaml.safe_load(cfg4.read_text())
    raw["models"][2]["parameters"]["epsilon"] = 0.6
    cfg4.write_text(yaml.safe_dump(raw))
    assert main(["merge", str(cfg4), "--data", data[0], "--out", str(tmp_path / "o")]) == 2
    assert "models[2].parameters.epsilon" in capsys.readouterr().err
    # Options of the other mode: refused, naming them.
    assert main(["merge", str(cfg), "--data", data[0], "--family", "vision", "--size", "mini"]) == 2
    assert "--family, --size: not used with a merge configuration" in capsys.readouterr().err
    assert main(["merge", "--batch-size", "4", "--data", data[0], "--quiet"]) == 2
    assert "--data, --batch-size: not used with the built-in suite" in capsys.readouterr().err
    assert main(["merge", "--configs", "ties-d0.3", "nope", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--configs: unknown configuration(s) nope; accepted: linear, task_arithmetic-w0.5" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


def test_the_builtin_suite_in_a_reduced_form(models, tmp_path, monkeypatch):
    """Two of the built-in configurations on a family of two tiny fine-tunes: the suite's own
    configs, reader, scoring, agreement statistics and report."""
    root = tmp_path / "wb"
    for src, dst in (("base", "pre"), ("ft0", "ft0"), ("ft1", "ft1")):
        shutil.copytree(models / src, root / "tiny" / dst)
    monkeypatch.setitem(merge.FAMILIES, "tiny", ("tiny/ft0", "tiny/ft1"))
    names = {"tiny/ft0": "data0.jsonl", "tiny/ft1": "data1.jsonl"}

    def load(name):
        return pairs.from_checkpoints(root / "tiny" / "pre", root / name, models / names[name], batch_size=2, name=name)

    rec = merge.suite_run(
        files.fresh_output_dir(tmp_path / "out"),
        load,
        root,
        families=["tiny"],
        configs=["ties-d0.3", "task_arithmetic-w0.5"],
        progress=False,
        log=lambda s: None,
    )
    assert rec["rows"] == 4 and [m["name"] for m in rec["merges"]] == ["tiny/ties-d0.3", "tiny/task_arithmetic-w0.5"]
    for m in rec["merges"]:
        for t in m["tasks"]:
            assert np.isfinite([*t["estimates"].values(), t["measured"]]).all()
    md = (tmp_path / "out" / "merge.md").read_text()
    for n, s in rec["summary"].items():
        lo, hi = s["spearman_ci95"]
        tlo, thi = s["spearman_ci95_tasks"]
        assert set(s["spearman_within_task"]) == {"tiny/ft0", "tiny/ft1"} and s["tasks"] == 2
        head = rf"\| {n} \| {s['spearman']:.3f} \| \[{lo:.3f}, {hi:.3f}\] \| \[{tlo:.3f}, {thi:.3f}\] \| "
        assert re.search(head + rf"{s['spearman_within_task_mean']:.3f} ", md), n
    assert "95 % CI (rows) | 95 % CI (tasks) | within-task Spearman" in md
    assert json.loads((tmp_path / "out" / "merge.json").read_text())["summary"] == json.loads(
        json.dumps(rec["summary"])
    )
    assert (tmp_path / "out" / "merge.png").stat().st_size > 10_000
    assert sum(rec["measured_classes"].values()) == rec["rows"]
    # The family's task-arithmetic weights, recommended and measured against the shared grid.
    w = rec["weights"]["tiny"]
    assert w["pairs"] == ["tiny/ft0", "tiny/ft1"] and w["grid"]["shared"]["points"] == 16
    for kind in ("shared", "vector"):
        r = w["recommended"][kind]
        assert all(0.0 <= x <= 1.5 for x in r["recommendation"]["lam"])
        assert np.isfinite([r["measured_objective"], r["predicted_objective"], r["gap_percent"]]).all()
        assert f"| {kind} | " in md and f"{r['gap_percent']:+.1f} %" in md
    assert "## Choosing task-arithmetic weights: tiny" in md


def test_builtin_linear_is_not_an_average_and_a_missed_lambda_is_explained(tmp_path):
    cfgs = merge.suite_configs(tmp_path, "language")
    assert cfgs["linear"]["models"][0]["parameters"] == {"weight": 2.0}
    assert cfgs["linear"]["models"][1]["parameters"] == {"weight": 1.0}
    rec = {
        "lam": [0.9],
        "step_ratio": [0.9, 0.4],
        "predicted_objective": 0.011,
    }
    w = {
        "pairs": ["lm/arithmetic", "lm/strings"],
        "bounds": [0.0, 1.5],
        "wall_s": {"total": 1.0},
        "grid": {
            "shared": {
                "points": 16,
                "best_lam": [0.3, 0.3],
                "best_measured_objective": 2.0,
                "predicted_at_best": [0.001, 0.002],
            }
        },
        "recommended": {
            "shared": {
                "recommendation": rec,
                "predicted_objective": 0.011,
                "measured_objective": 11.3,
                "gap_percent": 465.0,
            }
        },
        "reference": {},
    }
    md = "\n".join(merge.markdown_weights("language", w))
    assert "**Why the shared recommendation misses the best grid point by +465.0 %:**" in md
    assert "predicts a worst-task ΔL of 0.011 where 11.3 is measured" in md
    assert "predicts 0.002 where 2 is measured" in md
    assert "moves ‖d‖ = 0.9‖τ‖ (lm/arithmetic), far outside the region" in md
    w["recommended"]["shared"]["gap_percent"] = 4.0
    assert "Why" not in "\n".join(merge.markdown_weights("language", w))
