"""Loading and export on checkpoints the tests write themselves; every bad input named."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.hf import checkpoints
from analysis.hf.models._common import ConfigError
from analysis.hf.safetensors_file import CheckpointError, read_header, read_slice, read_tensor, write_file

LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}


@pytest.fixture
def ckpt_dir(tmp_path):
    model = checkpoints.from_config(LLAMA, seed=1)
    return checkpoints.save(tmp_path / "ck", model)


def test_round_trip_is_exact(ckpt_dir, tmp_path):
    a = checkpoints.load(ckpt_dir)
    b = checkpoints.load(checkpoints.save(tmp_path / "again", a, max_shard_bytes=4000))
    assert (tmp_path / "again" / "model.safetensors.index.json").is_file()
    assert a.names == b.names
    assert "model.layers.1.self_attn.o_proj.weight" in a.names
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ids = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
    np.testing.assert_array_equal(a.forward(a.params, ids), b.forward(b.params, ids))


def test_save_refuses_non_empty_directory_and_leaves_nothing_partial(ckpt_dir, tmp_path):
    ck = checkpoints.load(ckpt_dir)
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        checkpoints.save(target, ck)
    assert (target / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_loading_never_writes_into_the_input(ckpt_dir):
    before = {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()}
    checkpoints.load(ckpt_dir)
    assert {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()} == before


def test_sharding_callback_places_each_tensor(ckpt_dir):
    mesh = jax.make_mesh((8,), ("fsdp",))
    rep = jax.sharding.NamedSharding(mesh, jax.P())
    col = jax.sharding.NamedSharding(mesh, jax.P(None, "fsdp"))
    ck = checkpoints.load(ckpt_dir, sharding=lambda name, shape: col if len(shape) == 2 and shape[1] % 8 == 0 else rep)
    w = dict(zip(ck.names, jax.tree.leaves(ck.params)))["model.layers.0.mlp.up_proj.weight"]
    assert w.sharding.spec == jax.P(None, "fsdp")
    # Each device's slice is read from the file on its own; the values are the file's.
    plain = checkpoints.load(ckpt_dir)
    fsdp = checkpoints.load(ckpt_dir, sharding=checkpoints.fsdp(mesh, "fsdp"), dtype="bfloat16")
    for name, a, b in zip(plain.names, jax.tree.leaves(plain.params), jax.tree.leaves(fsdp.params)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a).astype(jnp.bfloat16), err_msg=name)
        divisible = np.shape(a)[0] % 8 == 0
        assert b.sharding.spec == (jax.P("fsdp") if divisible else jax.P()), name


def test_read_slice_reads_the_slice(ckpt_dir):
    infos, _ = read_header(ckpt_dir / "model.safetensors")
    info = infos["model.layers.0.mlp.down_proj.weight"]
    whole = read_tensor(info)
    for index in ((slice(4, 8), slice(None)), (slice(None), slice(8, 16)), (slice(0, 16, 3), slice(1, 2))):
        np.testing.assert_array_equal(read_slice(info, index), whole[index])


def test_a_mesh_that_does_not_divide_a_tensor_is_named_before_any_data_is_read(ckpt_dir):
    three = jax.sharding.Mesh(np.array(jax.devices()[:3]), ("fsdp",))
    with pytest.raises(CheckpointError) as err:
        checkpoints.load(ckpt_dir, sharding=lambda name, shape: jax.sharding.NamedSharding(three, jax.P("fsdp")))
    msg = str(err.value)
    assert "the sharding does not divide these tensors evenly" in msg
    assert "model.embed_tokens.weight (64, 16): axis 0 (64) is not divisible by mesh axes ('fsdp',) of size 3" in msg
    assert msg.count("is not divisible") == len(checkpoints.load(ckpt_dir).names)  # every tensor, at once
    eight = jax.make_mesh((8,), ("fsdp",))
    with pytest.raises(CheckpointError, match=r"model.norm.weight \(16,\): spec .* more entries than the tensor"):
        checkpoints.load(ckpt_dir, sharding=lambda name, shape: jax.sharding.NamedSharding(eight, jax.P(None, "fsdp")))


def _rewrite(path, drop=None, reshape=None):
    infos, _ = read_header(path)
    tensors = {}
    for n, i in infos.items():
        if n == drop:
            continue
        a = np.array(read_tensor(i))
        tensors[n] = a[:-1] if n == reshape else a
    write_file(path, tensors)


def test_missing_unexpected_and_misshaped_reported_at_once(ckpt_dir):
    f = ckpt_dir / "model.safetensors"
    infos, _ = read_header(f)
    tensors = {n: np.array(read_tensor(i)) for n, i in infos.items() if n != "model.norm.weight"}
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:-1]
    tensors["model.extra.weight"] = np.zeros(3, np.float32)
    write_file(f, tensors)
    with pytest.raises(CheckpointError) as e:
        checkpoints.load(ckpt_dir)
    msg = str(e.value)
    assert "missing tensors ['model.norm.weight']" in msg
    assert "unexpected tensors ['model.extra.weight']" in msg
    assert "model.layers.0.mlp.up_proj.weight: file (31, 16), model (32, 16)" in msg


def test_truncated_and_corrupt_files(ckpt_dir):
    f = ckpt_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated: tensor '.*' ends at byte"):
        checkpoints.load(ckpt_dir)
    f.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CheckpointError, match="corrupt header length"):
        checkpoints.load(ckpt_dir)
    f.write_bytes(data[:8] + b"{" * 16 + data[24:])
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        checkpoints.load(ckpt_dir)


def test_missing_shard_is_named(ckpt_dir, tmp_path):
    ck = checkpoints.load(ckpt_dir)
    out = checkpoints.save(tmp_path / "sharded", ck, max_shard_bytes=4000)
    shard = sorted(out.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}: shard listed in model.safetensors.index.json is missing"):
        checkpoints.load(out)


def test_pickle_files_are_refused_with_an_explanation(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="only pickle-based weights .*pytorch_model.bin.*safetensors only"):
        checkpoints.load(tmp_path)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"model_type": "gpt2"}, "unknown architecture model_type='gpt2'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3 rope scaling needs 'low_freq_factor'"),
    ],
)
def test_unsupported_configs_are_refused(tmp_path, change, match):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, **change}))
    with pytest.raises(ConfigError, match=match):
        checkpoints.load(tmp_path)


def test_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        checkpoints.load(tmp_path)


def test_pair_from_different_architectures_is_refused(ckpt_dir, tmp_path):
    other = checkpoints.save(tmp_path / "wide", checkpoints.from_config({**LLAMA, "intermediate_size": 48}))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.down_proj.weight: pre \(16, 32\), post \(16, 48\)"):
        checkpoints.load_pair(ckpt_dir, other)
    pre, post = checkpoints.load_pair(ckpt_dir, ckpt_dir)
    assert pre.names == post.names


def test_loaded_params_do_not_alias_the_file(ckpt_dir):
    ck = checkpoints.load(ckpt_dir)
    before = [np.asarray(x).copy() for x in jax.tree.leaves(ck.params)]
    f = ckpt_dir / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-4096:] = b"\x7f" * 4096  # overwrite the tail of the data section in place
    with open(f, "r+b") as fh:
        fh.write(data)
    for a, b in zip(before, jax.tree.leaves(ck.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
