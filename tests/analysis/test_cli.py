"""The command line: bad input refused before any work, ``--help`` without importing JAX, user
checkpoint errors before any weights are read."""

import json
import os
import subprocess
import sys

from analysis.cli import main
from analysis.hf import checkpoints
from analysis.pairs.workbench import corpus
from tests.analysis.helpers import ROOT, llama


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
    done = subprocess.run(
        [sys.executable, "-m", "analysis.cli", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0 and "reproduce" in done.stdout and "export" in done.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, analysis.cli; analysis.cli.build_parser(); print('jax' in sys.modules)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert probe.stdout.strip() == "False"


def test_user_checkpoint_errors_come_before_loading(user_pair, tmp_path, capsys):
    other = checkpoints.save(
        tmp_path / "wide",
        checkpoints.from_config({**llama(corpus.byte_tokenizer().get_vocab_size()), "intermediate_size": 48}),
        copy_from=user_pair / "post",  # its tokenizer: the data is checked first, then the headers
    )
    base = ["run", "--pre", str(user_pair / "pre"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*base, "--post", str(other), "--data", str(user_pair / "resp.jsonl")]) == 2
    assert "differ at tensor model.layers.0.mlp.down_proj.weight" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "1+1=", "response": ""}) + "\n")
    assert main([*base, "--post", str(user_pair / "post"), "--data", str(empty)]) == 2
    assert "record 1 yields no scored tokens" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
