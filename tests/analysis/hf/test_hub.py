"""Hub ids ``org/name[@revision]`` wherever a checkpoint directory is accepted, resolved from a cache
the tests lay out as huggingface_hub does (blobs by SHA-256, snapshots of links, refs). The network
is forbidden, pointed at a closed port, or at a fake Hub on 127.0.0.1 (``fake_hub.py``) that serves
what huggingface_hub's own download asks for, so the download path runs for real."""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from analysis.cli import _fingerprint, main
from analysis.hf import checkpoints, hub
from analysis.hf.safetensors_file import CheckpointError
from analysis.pairs.user import from_checkpoints
from tests.analysis.helpers import finish_processes, free_port, hosts_env, results, start_process
from tests.analysis.hf.fake_hub import FakeHub

pytestmark = pytest.mark.isolated  # a child pytest process (tests/conftest.py)

BASE = "a" * 40
INSTRUCT = "b" * 40
OLDER = "c" * 40


def publish(cache, repo_id, src, commit, refs=("main",)):
    """Put directory ``src`` into ``cache`` as snapshot ``commit`` of ``repo_id``, laid out like
    huggingface_hub: content in ``blobs/<sha256>``, relative links in ``snapshots/<commit>/``, and
    each name in ``refs`` pointing at the commit."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (storage / "blobs" / digest).write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.join("..", "..", "blobs", digest))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # as huggingface_hub writes it: no newline
    return snapshot


def tree(root):
    """Every path under ``root`` with its kind, link target, size and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (os.readlink(p) if p.is_symlink() else None, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def hub_cache(user_pair, tmp_path_factory):
    """A Hub cache holding org/base (pre; main and tag v1.0 → BASE), org/instruct (post at INSTRUCT,
    which main points at, and pre's files at OLDER, which no ref names), and org/pickled (config and a
    pickle only)."""
    cache = tmp_path_factory.mktemp("hub") / "hub"
    publish(cache, "org/base", user_pair / "pre", BASE, refs=("main", "v1.0"))
    publish(cache, "org/instruct", user_pair / "post", INSTRUCT)
    publish(cache, "org/instruct", user_pair / "pre", OLDER, refs=())
    pickled = tmp_path_factory.mktemp("pickled")
    (pickled / "config.json").write_text((user_pair / "pre" / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    publish(cache, "org/pickled", pickled, BASE)
    return cache


@pytest.fixture
def offline(hub_cache, monkeypatch):
    """Network forbidden, the test cache named by HF_HUB_CACHE; returns the cache."""
    for name in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def same_params(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_ids_are_told_from_paths():
    assert hub.parse("org/name") == hub.HubId("org/name")
    assert hub.parse("meta-llama/Meta-Llama-3-8B@v1.0") == hub.HubId("meta-llama/Meta-Llama-3-8B", "v1.0")
    assert hub.parse("org/name@refs/pr/1") == hub.HubId("org/name", "refs/pr/1")
    for not_an_id in ("./missing/dir", "a/b/c", "name", "/abs/dir", "org/-name", "org/na--me", "org/name@../x", "org/"):
        assert hub.parse(not_an_id) is None, not_an_id
    assert hub.parse(Path("org/name")) is None  # a Path is always a path


def test_load_by_id_revision_commit_and_tag(user_pair, offline):
    direct = checkpoints.load(user_pair / "pre")
    for ref in ("org/base", "org/base@main", f"org/base@{BASE}", "org/base@v1.0"):
        ck = checkpoints.load(ref)
        assert ck.path == offline / "models--org--base" / "snapshots" / BASE, ref
        assert ck.hub_id == f"org/base@{BASE}", ref
        assert same_params(ck.params, direct.params), ref
    # A commit no ref points at is still reachable by its hash.
    older = checkpoints.load(f"org/instruct@{OLDER}")
    assert older.path.name == OLDER and same_params(older.params, direct.params)
    assert checkpoints.load(user_pair / "pre").hub_id is None  # a directory stays a directory
    assert hub.resolve(user_pair / "pre") == user_pair / "pre"


def test_shortened_commits_are_refused(offline):
    with pytest.raises(CheckpointError, match=r"'org/base@aaaaaaa'.*shortened commit hash; give all 40 hex digits"):
        hub.resolve("org/base@aaaaaaa")


def test_hf_hub_cache_wins_over_hf_home(hub_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "hub").symlink_to(hub_cache)  # HF_HOME's cache is <HF_HOME>/hub
    monkeypatch.setenv("HF_HOME", str(home))
    assert hub.cache_dir() == home / "hub"
    assert hub.resolve("org/base") == home / "hub" / "models--org--base" / "snapshots" / BASE
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))  # read at each call, and first
    assert hub.cache_dir() == tmp_path / "empty"
    with pytest.raises(CheckpointError, match=f"cache {tmp_path / 'empty'}"):
        hub.resolve("org/base")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"


def test_pair_by_ids(user_pair, offline):
    assert checkpoints.check_pair("org/base", "org/instruct@main") == "llama"
    pre, post = checkpoints.load_pair("org/base", "org/instruct")
    assert same_params(pre.params, checkpoints.load(user_pair / "pre").params)
    assert same_params(post.params, checkpoints.load(user_pair / "post").params)
    assert (pre.hub_id, post.hub_id) == (f"org/base@{BASE}", f"org/instruct@{INSTRUCT}")
    assert set(checkpoints.tensor_index("org/base")) == set(pre.names)
    pair = from_checkpoints("org/base", "org/instruct", user_pair / "resp.jsonl", batch_size=2, max_batches=1)
    assert pair.name == "base→instruct" and same_params(pair.post, post.params)
    assert pair.info["checkpoints"]["pre"] == str(offline / "models--org--base" / "snapshots" / BASE)
    assert pair.info["checkpoints"]["post_hub_id"] == f"org/instruct@{INSTRUCT}"
    assert f"org/base@{BASE} → org/instruct@{INSTRUCT}" in pair.description


def test_riemann_run_from_the_cache(user_pair, offline, tmp_path):
    before = tree(offline)
    out = tmp_path / "run"
    args = ["run", "--pre", "org/base", "--post", "org/instruct", "--data", str(user_pair / "resp.jsonl")]
    fast = ["--batch-size", "2", "--edits", "dare:p=0.5", "--estimators", "riemann", "first-order"]
    assert main([*args, *fast, "--out", str(out), "--quiet"]) == 0
    (pair,) = results(out)["pairs"]
    assert pair["pair"]["name"] == "base→instruct"
    settings = json.loads((out / "run.json").read_text())["settings"]["checkpoints"]
    assert (settings["pre"], settings["post"]) == ("org/base", "org/instruct")  # each process resolves the id
    assert tree(offline) == before  # loading wrote nothing into the cache
    # Several processes compare what they read by content: a snapshot of links reads as its directory.
    assert _fingerprint(str(hub.resolve("org/base"))) == _fingerprint(str(user_pair / "pre"))


def test_export_and_plan_take_ids(offline, tmp_path, capsys):
    out = tmp_path / "edited"
    ids = ["--pre", "org/base", "--post", "org/instruct"]
    assert main(["export", *ids, "--edit", "dare:p=0.5", "--out", str(out)]) == 0
    assert (out / "tokenizer.json").is_file() and not (out / "tokenizer.json").is_symlink()
    capsys.readouterr()
    assert main(["plan", "org/base", "--memory", "24"]) == 0
    assert "device memory 24 GiB" in capsys.readouterr().out


def test_missing_id_or_revision_names_id_revision_and_cache(offline):
    with pytest.raises(CheckpointError) as e:
        checkpoints.load("org/absent")
    msg = str(e.value)
    assert "'org/absent'" in msg and "at revision main" in msg and f"cache {offline}" in msg
    assert "HF_HUB_OFFLINE is set" in msg and "HF_HUB_CACHE" in msg and "HF_HOME" in msg
    with pytest.raises(CheckpointError, match=f"org/base at revision v9 \\(cache {offline}\\) is not cached"):
        checkpoints.check_pair("org/base@v9", "org/instruct")
    with pytest.raises(CheckpointError, match=f"org/base at revision {'d' * 40}"):
        checkpoints.load(f"org/base@{'d' * 40}")


def test_pickle_only_snapshot_is_refused(offline):
    with pytest.raises(CheckpointError, match=r"org/pickled .* no safetensors weights, only pickle-based ones"):
        checkpoints.load("org/pickled")
    assert hub.resolve("org/pickled", weights=False).name == BASE  # its config.json still plans


def test_neither_a_directory_nor_an_id_is_named(tmp_path):
    for bad in ("./missing/dir", "a/b/c", str(tmp_path / "missing")):
        with pytest.raises(CheckpointError, match=f"{bad!r}: no such directory, and not a Hub id org/name"):
            checkpoints.load(bad)
    with pytest.raises(CheckpointError, match="no such directory"):
        checkpoints.check_pair(tmp_path / "missing", tmp_path)


def test_unreachable_hub_is_said_quickly(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    before = tree(hub_cache)
    start = time.monotonic()
    with pytest.raises(CheckpointError) as e:
        hub.resolve("org/absent@main")
    msg = str(e.value)
    assert "'org/absent@main'" in msg and "at revision main" in msg and f"cache {hub_cache}" in msg
    assert "the Hub at http://127.0.0.1:9 could not be reached" in msg and "ConnectError" in msg
    assert time.monotonic() - start < 30
    # What the cache holds is used without asking the Hub; a pickle-only snapshot stays refused.
    assert hub.resolve("org/base").name == BASE
    with pytest.raises(CheckpointError, match="only pickle-based ones"):
        hub.resolve("org/pickled")
    assert tree(hub_cache) == before


def test_each_process_resolves_in_its_own_cache_and_contents_are_compared(user_pair, hub_cache, tmp_path):
    # Process 1's cache holds other files under the same id: both processes refuse, before any weights.
    other = tmp_path / "other-cache"
    publish(other, "org/base", user_pair / "pre", BASE)
    publish(other, "org/instruct", user_pair / "pre", INSTRUCT)
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    args = ["run", "--pre", "org/base", "--post", "org/instruct", "--data", str(user_pair / "resp.jsonl")]
    cmd = [sys.executable, "-m", "analysis.cli", *args, "--edits", "dare:p=0.5", "--out", str(tmp_path / "o")]
    done = finish_processes(
        [
            start_process(cmd, {**hosts_env(port, 2, i), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}, logs)
            for i, cache in enumerate((hub_cache, other))
        ]
    )
    assert [rc for rc, _, _ in done] == [2, 2], done
    assert all("processes [1] were given other arguments, checkpoints or data" in err for _, _, err in done), done
    assert not (tmp_path / "o").exists()


def test_a_lora_adapter_by_hub_id(offline, user_pair, tmp_path):
    """An adapter repo as ``post``: resolved like any id, merged on the base id, named by its own id."""
    from analysis.hf import adapters
    from analysis.hf.safetensors_file import write_file

    pre = checkpoints.load(user_pair / "pre")
    hidden = dict(zip(pre.names, jax.tree.leaves(pre.params)))["model.embed_tokens.weight"].shape[1]
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(2):
        key = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.3, (2, hidden)).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.3, (hidden, 2)).astype(np.float32)
    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})
    )
    write_file(src / "adapter_model.safetensors", tensors)
    lora = "d" * 40
    publish(offline, "org/lora", src, lora)
    before = tree(offline)
    assert checkpoints.check_pair("org/base", "org/lora") == pre.family
    a, b = checkpoints.load_pair("org/base", "org/lora")
    _, want = checkpoints.load_adapter(user_pair / "pre", src)
    assert b.hub_id == f"org/lora@{lora}" and a.hub_id == f"org/base@{BASE}"
    for x, y in zip(jax.tree.leaves(b.params), jax.tree.leaves(want.params)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # No tokenizer in the adapter repo: the base snapshot's.
    assert adapters.tokenizer_source("org/base", "org/lora") == hub.resolve("org/base")
    assert tree(offline) == before


# Downloads, from a fake Hub: org/name's main holds pre's files next to a pickle, a subfolder, a
# README and .gitattributes; an older commit (refs/pr/1) holds post's files.


@pytest.fixture(scope="module")
def fake_hub(user_pair):
    def files(src):
        return {f.name: f.read_bytes() for f in sorted(src.iterdir())}

    extra = {
        "pytorch_model.bin": b"\x80\x04not really a pickle",
        "original/x.pth": b"\x80\x04nor this",
        "README.md": b"# org/name\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }
    with FakeHub() as fake:
        fake.older = fake.add("org/name", files(user_pair / "post"), refs=("refs/pr/1",))
        fake.main = fake.add("org/name", {**files(user_pair / "pre"), **extra})
        config = (user_pair / "pre" / "config.json").read_bytes()
        fake.pickled = fake.add("org/pickled", {"config.json": config, "pytorch_model.bin": extra["pytorch_model.bin"]})
        yield fake


@pytest.fixture
def online(fake_hub, tmp_path, monkeypatch):
    """The network allowed, HF_ENDPOINT the fake Hub (its log emptied), an empty cache; returns the cache."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    fake_hub.log.clear()
    return tmp_path / "hub"


def test_download_fetches_only_safetensors_configs_and_tokenizer_into_the_hub_layout(user_pair, online, fake_hub):
    ck = checkpoints.load("org/name")
    assert same_params(ck.params, checkpoints.load(user_pair / "pre").params)
    storage = online / "models--org--name"
    assert ck.path == storage / "snapshots" / fake_hub.main and ck.hub_id == f"org/name@{fake_hub.main}"
    # Only what the loader reads was fetched: the pickle, the subfolder, README and .gitattributes never were.
    wanted = sorted(f.name for f in (user_pair / "pre").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(wanted)
    asked = fake_hub.requests()
    assert not [p for p in asked if "pytorch_model.bin" in p or "original" in p or "README" in p or ".git" in p]
    got = sorted(p.rsplit("/", 1)[-1] for p in fake_hub.requests("hub", "GET") if "/resolve/" in p)
    assert got == [w for w in wanted if not w.endswith(".safetensors")]  # weights come from the CDN
    assert len(fake_hub.requests("cdn", "GET")) == 1
    # The Hub's cache layout: refs/main names the commit, the snapshot links into blobs (by sha256
    # for LFS files, by git blob id for the others).
    assert (storage / "refs" / "main").read_text() == fake_hub.main
    assert sorted(p.name for p in ck.path.iterdir()) == wanted
    for name in wanted:
        link = ck.path / name
        assert link.is_symlink() and os.readlink(link).startswith("../../blobs/"), name
        assert link.read_bytes() == (user_pair / "pre" / name).read_bytes(), name
    weights = (user_pair / "pre" / "model.safetensors").read_bytes()
    assert os.readlink(ck.path / "model.safetensors") == "../../blobs/" + hashlib.sha256(weights).hexdigest()
    # Cached now: a second load asks the Hub nothing at all, not even which commit main is.
    fake_hub.log.clear()
    again = checkpoints.load("org/name")
    assert fake_hub.requests() == [] and again.path == ck.path and same_params(again.params, ck.params)
    assert hub.resolve("org/name", weights=False) == ck.path and fake_hub.requests() == []


def test_download_by_ref_or_commit_and_missing_revisions_or_repos(user_pair, online, fake_hub):
    post = checkpoints.load(user_pair / "post").params
    pr = checkpoints.load("org/name@refs/pr/1")  # a revision with slashes: quoted in URLs, a path under refs/
    storage = online / "models--org--name"
    assert pr.path == storage / "snapshots" / fake_hub.older and same_params(pr.params, post)
    assert (storage / "refs" / "refs" / "pr" / "1").read_text() == fake_hub.older
    fake_hub.log.clear()
    assert checkpoints.load(f"org/name@{fake_hub.older}").path == pr.path and fake_hub.requests() == []
    # A commit not cached is downloaded without asking which commit a ref is, and writes no ref.
    by_commit = checkpoints.load(f"org/name@{fake_hub.main}")
    assert by_commit.hub_id == f"org/name@{fake_hub.main}" and by_commit.path.name == fake_hub.main
    assert not [p for p in fake_hub.requests() if "/revision/" in p]
    assert not (storage / "refs" / "main").exists()
    # The Hub's 404 RevisionNotFound, for a branch or a commit, and its RepoNotFound (401 for anonymous).
    for rev in ("v9", "d" * 40):
        with pytest.raises(CheckpointError) as e:
            checkpoints.load(f"org/name@{rev}")
        assert str(e.value) == f"'org/name@{rev}': org/name has no revision '{rev}' on {fake_hub.url}"
        assert not (storage / "refs" / rev).exists() and not (storage / "snapshots" / rev).exists()
    with pytest.raises(CheckpointError, match=f"'org/absent': no such directory, and {fake_hub.url} has no model repo"):
        checkpoints.load("org/absent")


def test_pickle_only_repo_on_the_hub_is_refused_naming_the_id(online, fake_hub):
    with pytest.raises(CheckpointError) as e:
        checkpoints.load("org/pickled")
    msg = str(e.value)
    assert msg.startswith("'org/pickled': org/pickled at revision main on the Hub has no model.safetensors")
    assert "never unpickles" in msg
    assert not [p for p in fake_hub.requests() if "pytorch_model.bin" in p]
    snapshot = online / "models--org--pickled" / "snapshots" / fake_hub.pickled
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json"]
    fake_hub.log.clear()
    assert hub.resolve("org/pickled", weights=False) == snapshot and fake_hub.requests() == []  # it still plans


def test_partly_cached_snapshot_gets_the_rest_downloaded(user_pair, online, fake_hub, tmp_path):
    only_config = tmp_path / "config-only"
    only_config.mkdir()
    (only_config / "config.json").write_text((user_pair / "pre" / "config.json").read_text())
    snapshot = publish(online, "org/name", only_config, fake_hub.main)
    config_link = os.readlink(snapshot / "config.json")
    ck = checkpoints.load("org/name")
    assert ck.path == snapshot and same_params(ck.params, checkpoints.load(user_pair / "pre").params)
    assert not [p for p in fake_hub.requests("hub", "GET") if p.endswith("config.json")]  # had it already
    assert fake_hub.requests("cdn", "GET") and os.readlink(snapshot / "config.json") == config_link


def test_the_environment_now_wins_over_huggingface_hubs_own_reading_at_import(online, fake_hub, monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at its import (say by transformers, while it was set);
    # unset since, it still counts here as unset.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.resolve("org/name").name == fake_hub.main
    assert constants.HF_HUB_OFFLINE is True  # and is left as it was


def weight_downloads(fake):
    """Every request for a weight file's bytes: a GET of ``*.safetensors`` from the Hub, or any GET
    from the CDN (where the Hub redirects LFS files)."""
    hub_gets = [p for p in fake.requests("hub", "GET") if p.endswith(".safetensors")]
    return hub_gets + fake.requests("cdn", "GET")


def a_lora(user_pair, tmp_path, **config):
    """A LoRA adapter directory on user_pair's pre (q_proj of two layers, rank 2) with extra ``config``."""
    from analysis.hf.safetensors_file import write_file

    hidden = json.loads((user_pair / "pre" / "config.json").read_text())["hidden_size"]
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(2):
        key = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.3, (2, hidden)).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.3, (hidden, 2)).astype(np.float32)
    src = tmp_path / f"adapter-{len(list(tmp_path.glob('adapter-*')))}"
    src.mkdir()
    raw = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], **config}
    (src / "adapter_config.json").write_text(json.dumps(raw))
    write_file(src / "adapter_model.safetensors", tensors)
    return src


def test_bad_input_is_refused_before_any_weights_are_downloaded(user_pair, online, fake_hub, tmp_path, capsys):
    """Refusals that need no tensor header come before a Hub id's weights are fetched: an adapter
    option not implemented (DoRA), a malformed data file, a pre and post of different architectures."""

    def files(src, **config):
        out = {f.name: f.read_bytes() for f in sorted(src.iterdir())}
        if config:
            out["config.json"] = json.dumps({**json.loads(out["config.json"]), **config}).encode()
        return out

    dora = fake_hub.add("org/dora", files(a_lora(user_pair, tmp_path, use_dora=True)))
    fake_hub.add("org/mistral", files(user_pair / "post", model_type="mistral"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "response": "2"}\nnot json\n')
    good = str(user_pair / "resp.jsonl")
    cases = [
        (["--post", "org/dora", "--data", good], "use_dora=True is not implemented"),
        (["--post", "org/name@refs/pr/1", "--data", str(bad)], f"{bad}:2: not valid JSON"),
        (["--post", "org/mistral", "--data", good], "is llama but post (org/mistral) is mistral"),
    ]
    for args, message in cases:
        fake_hub.log.clear()
        out = str(tmp_path / "run")
        assert main(["run", "--pre", "org/name", *args, "--edits", "dare:p=0.5", "--out", out, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert fake_hub.requests("hub", "GET"), args  # the configs did come from the Hub
        assert weight_downloads(fake_hub) == [], (args, weight_downloads(fake_hub))
    # The DoRA refusal names the id typed, then the snapshot file (finding: not the cache path alone).
    snapshot = online / "models--org--dora" / "snapshots" / dora
    fake_hub.log.clear()
    with pytest.raises(CheckpointError) as e:
        checkpoints.check_pair("org/name", "org/dora")
    assert str(e.value).startswith(f"org/dora ({snapshot / 'adapter_config.json'}): use_dora=True is not implemented")
    # The library entry points too: the pair from checkpoints, and loading the pair.
    for call in (
        lambda: from_checkpoints("org/name", "org/name@refs/pr/1", bad),
        lambda: from_checkpoints("org/name", "org/mistral", good),
        lambda: checkpoints.load_pair("org/name", "org/dora"),
    ):
        with pytest.raises(ValueError):
            call()
    assert weight_downloads(fake_hub) == []


def test_tokenizers_by_hub_id_and_adapters_without_one(user_pair, online, fake_hub, tmp_path, monkeypatch):
    from analysis.pairs import data

    # From the Hub: the tokenizer files come with the configs, no weights.
    kind, batches = data.jsonl_batches(user_pair / "resp.jsonl", "org/name", batch_size=4)
    want = data.jsonl_batches(user_pair / "resp.jsonl", user_pair / "pre", batch_size=4)[1]
    assert kind == "response" and len(batches) == len(want)
    assert all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(batches, want))
    assert weight_downloads(fake_hub) == []
    assert data.load_tokenizer("org/name").get_vocab_size() == data.load_tokenizer(user_pair / "pre").get_vocab_size()
    # From the cache: an adapter repo without tokenizer.json is refused naming its base.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    publish(online, "org/lora", a_lora(user_pair, tmp_path, base_model_name_or_path="org/name"), "e" * 40)
    with pytest.raises(data.DataError) as e:
        data.jsonl_batches(user_pair / "resp.jsonl", "org/lora")
    msg = str(e.value)
    assert msg.startswith("org/lora (") and "LoRA adapter without its own tokenizer.json" in msg
    assert "pass the base (org/name) instead" in msg
    with pytest.raises(data.DataError, match="tokenizer.json not found"):
        data.load_tokenizer(tmp_path)


def test_fingerprint_covers_only_what_the_loader_reads(user_pair, tmp_path):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(user_pair / "pre", a)
    shutil.copytree(user_pair / "pre", b)
    (b / "added_tokens.json").write_text('{"<extra>": 99}')  # written by another tool: not read here
    (b / "notes.txt").write_text("scratch")
    assert _fingerprint(str(a)) == _fingerprint(str(b))
    raw = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**raw, "rms_norm_eps": 1e-3}))
    assert _fingerprint(str(a)) != _fingerprint(str(b))
