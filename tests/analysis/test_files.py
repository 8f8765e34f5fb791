"""Output files: atomic writes that leave nothing half-written, JSON without NaN, directories that
are never overwritten, and file-name slugs."""

import json
import math

import numpy as np
import pytest

from analysis import files


def test_write_json_is_atomic_and_standard(tmp_path):
    path = files.write_json(
        tmp_path / "r.json", {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(3), "d": math.inf}
    )
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5, "c": [0, 1, 2], "d": None}
    files.write_text(path, "replaced")
    assert path.read_text() == "replaced" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = files.write_text(tmp_path / "keep.txt", "old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)  # fails after the temporary file is written
    with pytest.raises(OSError, match="No space left"):
        files.write_json(path, {"x": 1})
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_output_directories_are_never_reused(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("user data")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        files.fresh_output_dir(tmp_path / "full")
    assert files.fresh_output_dir(tmp_path / "new").is_dir()
    a, b = files.fresh_output_dir(None, root=tmp_path / "runs"), files.fresh_output_dir(None, root=tmp_path / "runs")
    assert a != b and a.parent == b.parent


def test_slug():
    assert files.slug("lm/arithmetic-dpo") == "lm_arithmetic-dpo"
    assert files.slug("dare:p=0.9,k=0.5") == "dare_p_0.9_k_0.5"


def test_only_the_writing_process_writes(tmp_path, monkeypatch):
    from analysis import hosts

    monkeypatch.setattr(hosts, "is_writer", lambda: False)  # as on process 1 of several
    path = files.write_json(tmp_path / "r.json", {"a": 1})
    assert path == tmp_path / "r.json" and not list(tmp_path.iterdir())
