"""Hugging Face checkpoints in and out: ``load(path)`` and ``save(out_dir, model, params)``.

``load`` reads ``config.json`` to pick the family (Llama / Mistral / Qwen2 / Qwen3 / Phi-3 / Gemma-2 /
Gemma-3 text decoders, CLIP vision), checks every tensor name, shape and dtype from the safetensors
headers before reading any data (all problems reported at once), then streams tensors one at a time
to the device (optionally with a sharding per tensor). ``params`` is a nested dict whose dotted paths
are the HF tensor names, so ``riemann`` and its edits speak those names.

``save`` writes an HF-layout directory (sharded safetensors + index + config + tokenizer files)
into a temporary directory next to ``out_dir`` and renames it into place, so a reader never sees
a partial checkpoint; it refuses an existing non-empty ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from analysis.hf import hub
from analysis.hf.models._common import ConfigError
from analysis.hf.models.clip import CLIPVisionConfig, CLIPVisionModelWithProjection
from analysis.hf.models.gemma import FAMILIES as GEMMAS
from analysis.hf.models.gemma import GemmaConfig, GemmaForCausalLM
from analysis.hf.models.llama import FAMILIES as DECODERS
from analysis.hf.models.llama import LlamaConfig, LlamaForCausalLM
from analysis.hf.safetensors_file import CheckpointError, TensorInfo, read_header, read_slice, read_tensor, write_file
from riemann.tree_utils import leaf_names

PyTree = Any
PICKLE_FILES = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "model.pt",
    "model.pth",
    "tf_model.h5",
    "flax_model.msgpack",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
# Tensors a checkpoint may hold that our model deliberately does not use.
IGNORED = {
    "decoder": ("rotary_emb.inv_freq",),
    "clip": ("text_model.", "text_projection.", "logit_scale", "vision_model.embeddings.position_ids"),
}


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: ``params`` keyed by HF names, its config, and a pure ``forward``."""

    path: Path | None
    family: str
    config: Any
    raw_config: dict[str, Any]
    params: PyTree
    graphdef: Any
    state: Any
    # For a checkpoint loaded by Hub id: ``org/name@<commit>``, naming exactly the files read.
    hub_id: str | None = None

    def module(self, params: PyTree | None = None) -> nnx.Module:
        """The NNX module holding ``params`` (default: the loaded ones)."""
        state = jax.tree.map(lambda x: x, self.state)
        nnx.replace_by_pure_dict(state, self.params if params is None else params)
        return nnx.merge(self.graphdef, state)

    def forward(self, params: PyTree, inputs: jax.Array) -> jax.Array:
        """Logits [batch, seq, vocab] from int32 ids [batch, seq] (decoders), or image embeddings
        [batch, projection_dim] from pixels [batch, 3, H, W] (CLIP vision). Pure and jit-able."""
        return self.module(params)(inputs)

    def classify(self, params: PyTree, pixel_values: jax.Array) -> jax.Array:
        """Logits of a CLIP model's classification head."""
        return self.module(params).classify(pixel_values)

    @property
    def names(self) -> list[str]:
        return leaf_names(self.params)


def family_of(raw: dict[str, Any], source: str = "config.json") -> str:
    mt = raw.get("model_type")
    if mt in DECODERS or mt in GEMMAS:
        return str(mt)
    if mt in ("clip", "clip_vision_model"):
        return "clip"
    if mt == "gemma3":
        # Gemma3ForConditionalGeneration: a vision tower and projector besides the text model, whose
        # tensors live under another prefix (language_model.); only the text-only model is built.
        raise ConfigError(
            f"{source}: model_type='gemma3' (Gemma3ForConditionalGeneration, text and vision) is not supported; "
            "use a text-only checkpoint with model_type='gemma3_text' (Gemma3ForCausalLM)"
        )
    raise ConfigError(
        f"{source}: unknown architecture model_type={mt!r}; supported: {', '.join(DECODERS + GEMMAS)}, "
        "clip, clip_vision_model"
    )


def build(
    raw: dict[str, Any],
    *,
    dtype: Any = None,
    source: str = "config.json",
    remat: bool = False,
    rngs: nnx.Rngs | None = None,
    abstract: bool = True,
) -> tuple[str, Any, nnx.Module]:
    """Family, parsed config and NNX module (abstract shapes only unless ``abstract=False``)."""
    family = family_of(raw, source)
    if family == "clip":
        cfg: Any = CLIPVisionConfig.from_dict(raw, source=source)
        cls: Any = CLIPVisionModelWithProjection
    elif family in GEMMAS:
        cfg, cls = GemmaConfig.from_dict(raw, source=source), GemmaForCausalLM
    else:
        cfg, cls = LlamaConfig.from_dict(raw, source=source), LlamaForCausalLM

    def make() -> nnx.Module:
        return cls(cfg, dtype=dtype, rngs=rngs, remat=remat)

    return family, cfg, (nnx.eval_shape(make) if abstract else make())


def _read_config(path: Path, ref: str | os.PathLike | None = None) -> dict[str, Any]:
    """``path/config.json``; errors name ``ref`` too where it is a Hub id (:func:`hub.describe`)."""
    cfg_path = path / "config.json"
    ref = path if ref is None else ref
    if not cfg_path.is_file():
        raise CheckpointError(f"{hub.describe(ref, path)}: no config.json (expected a Hugging Face model directory)")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{hub.describe(ref, cfg_path)}: not valid JSON ({e})") from None


def tensor_index(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint directory or Hub id (single file or sharded with an index), from
    the headers alone."""
    path = hub.resolve(path)
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        infos: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise CheckpointError(f"{path / shard}: shard listed in {index.name} is missing")
            shard_infos, _ = read_header(path / shard)
            for name in shard_infos:
                if weight_map.get(name) != shard:
                    raise CheckpointError(
                        f"{path / shard}: tensor {name!r} is not listed for this shard in {index.name}"
                    )
            infos.update(shard_infos)
        missing = sorted(set(weight_map) - set(infos))
        if missing:
            raise CheckpointError(f"{index}: tensors listed but not found in their shards: {missing[:5]}")
        return infos
    if single.is_file():
        return read_header(single)[0]
    pickled = [f for f in PICKLE_FILES if (path / f).exists()]
    if pickled:
        raise CheckpointError(
            f"{path}: only pickle-based weights ({', '.join(pickled)}); they can run arbitrary code when loaded, so "
            "this toolkit reads safetensors only. Convert once where you trust the file, e.g. "
            "model.save_pretrained(dir) with transformers, which writes safetensors by default."
        )
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _ignored(family: str, name: str) -> bool:
    prefixes = IGNORED["clip" if family == "clip" else "decoder"]
    return any(name.startswith(p) or name.endswith(p) for p in prefixes)


def expected_tensors(module: nnx.Module) -> dict[str, jax.ShapeDtypeStruct]:
    _, state = nnx.split(module)
    pure = nnx.to_pure_dict(state)
    return dict(zip(leaf_names(pure), jax.tree.leaves(pure)))


def check_tensors(family: str, expected: dict[str, Any], infos: dict[str, TensorInfo], source: Path) -> None:
    """All missing, unexpected and mis-shaped tensors at once."""
    problems = []
    missing = [n for n in expected if n not in infos]
    unexpected = [n for n in infos if n not in expected and not _ignored(family, n)]
    shape = [
        f"{n}: file {infos[n].shape}, model {tuple(expected[n].shape)}"
        for n in expected
        if n in infos and tuple(infos[n].shape) != tuple(expected[n].shape)
    ]
    dtypes = [
        f"{n}: {infos[n].dtype}" for n in expected if n in infos and not jnp.issubdtype(infos[n].dtype, jnp.floating)
    ]
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shape:
        problems.append("shape mismatches: " + "; ".join(shape))
    if dtypes:
        problems.append("non-floating tensors: " + "; ".join(dtypes))
    if problems:
        raise CheckpointError(f"{source}: does not match its config.json ({family}): " + " | ".join(problems))


def load(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    sharding: Callable[[str, tuple[int, ...]], Any] | None = None,
    remat: bool = False,
) -> Checkpoint:
    """Load an HF checkpoint (safetensors only) from a directory or the Hub.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` or a sharded index, or a Hub id
        ``org/name[@revision]`` (see :func:`analysis.hf.hub.resolve`; ``.path`` is then the snapshot
        directory and ``.hub_id`` the id pinned to its commit).
      dtype: parameter dtype (default: as stored in the file, tensor by tensor).
      sharding: optional ``sharding(name, shape) -> jax.sharding.Sharding`` for each tensor.
      remat: rematerialise each layer in the backward pass (less memory, one more forward).
    """
    where = hub.locate(path)
    ref, path = path, where.path
    raw = _read_config(path, ref)
    family, cfg, module = build(raw, dtype=dtype, source=hub.describe(ref, path / "config.json"), remat=remat)
    infos = tensor_index(path)
    expected = expected_tensors(module)
    check_tensors(family, expected, infos, path)
    graphdef, state = nnx.split(module)
    placements = {name: sharding(name, infos[name].shape) for name in expected} if sharding else {}
    check_placements(placements, infos, path)
    flat = []
    for name in expected:
        info = infos[name]
        target = info.dtype if dtype is None else jnp.dtype(dtype)
        if placements.get(name) is None:
            host = read_tensor(info)  # a private copy: the device array may alias it on the CPU
            flat.append(jax.device_put(host if host.dtype == target else host.astype(target)))
            del host
        else:
            flat.append(_place(info, placements[name], target))
    params = jax.tree.unflatten(jax.tree.structure(nnx.to_pure_dict(state)), flat)
    # The abstract state is kept (shapes only) to rebuild modules around any params.
    return Checkpoint(path, family, cfg, raw, params, graphdef, state, hub_id=where.pinned)


def _place(info: TensorInfo, where: jax.sharding.Sharding, dtype: Any) -> jax.Array:
    """The tensor as a (possibly multi-process) array laid out by ``where``, each process reading from
    the file only the slices its own devices hold, each distinct slice once."""
    read: dict[tuple[tuple[Any, Any, Any], ...], np.ndarray] = {}

    def slice_of(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in read:
            part = read_slice(info, index)
            read[key] = part if part.dtype == dtype else part.astype(dtype)
        return read[key]

    return jax.make_array_from_callback(info.shape, where, slice_of)


def fsdp(mesh: jax.sharding.Mesh, axis: str | None) -> Callable[[str, tuple[int, ...]], jax.sharding.Sharding]:
    """A ``sharding`` for :func:`load`: each tensor split along its first dimension over mesh axis
    ``axis`` where that axis divides it (FSDP), replicated over the mesh otherwise."""
    size = mesh.shape[axis] if axis is not None else 1

    def place(name: str, shape: tuple[int, ...]) -> jax.sharding.Sharding:
        split = size > 1 and len(shape) > 0 and shape[0] % size == 0
        return jax.sharding.NamedSharding(mesh, jax.P(axis) if split else jax.P())

    return place


def check_placements(placements: dict[str, Any], infos: dict[str, TensorInfo], source: Path) -> None:
    """Every tensor whose shape its sharding cannot split evenly (a mesh axis that does not divide
    the dimension it shards, or a spec longer than the tensor's rank), all at once, before any data
    is read."""
    problems = []
    for name, where in placements.items():
        if not isinstance(where, jax.sharding.NamedSharding):
            continue
        shape, spec = infos[name].shape, tuple(where.spec)
        if len(spec) > len(shape):
            problems.append(f"{name} {shape}: spec {where.spec} has more entries than the tensor has axes")
            continue
        for dim, axes in enumerate(spec):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            size = math.prod(where.mesh.shape[a] for a in names)
            if size > 1 and shape[dim] % size:
                problems.append(
                    f"{name} {shape}: axis {dim} ({shape[dim]}) is not divisible by mesh axes {names} of size {size}"
                )
    if problems:
        raise CheckpointError(f"{source}: the sharding does not divide these tensors evenly: " + "; ".join(problems))


def from_config(raw: dict[str, Any], *, seed: int = 0, dtype: Any = None, remat: bool = False) -> Checkpoint:
    """A freshly initialised model (for building pairs to train) with the same interface as ``load``."""
    family, cfg, module = build(raw, dtype=dtype, remat=remat, rngs=nnx.Rngs(seed), abstract=False)
    graphdef, state = nnx.split(module)
    return Checkpoint(None, family, cfg, raw, nnx.to_pure_dict(state), graphdef, state)


def save(
    out_dir: str | os.PathLike,
    model: Checkpoint,
    params: PyTree | None = None,
    *,
    max_shard_bytes: int = 5 * 2**30,
    dtype: Any = None,
    copy_from: str | os.PathLike | None = None,
) -> Path:
    """Write ``params`` (default: the model's own) as an HF checkpoint directory.

    Tensors are written under their HF names, in shards of at most ``max_shard_bytes`` with a
    ``model.safetensors.index.json`` when more than one; ``config.json`` is the model's, and
    tokenizer/processor files are copied from ``copy_from`` (default: the directory the model was
    loaded from). The directory appears atomically; an existing non-empty ``out_dir`` is refused.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not empty; refusing to overwrite")
    params = model.params if params is None else params
    names = leaf_names(params)
    leaves = jax.tree.leaves(params)
    expected = dict(zip(model.names, (np.shape(x) for x in jax.tree.leaves(model.params))))
    got = dict(zip(names, (np.shape(x) for x in leaves)))
    if got != expected:
        bad = sorted(set(expected) ^ set(got)) or [n for n in expected if expected[n] != got[n]]
        raise ValueError(f"params do not match the model's tensors (names or shapes), first: {bad[:5]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for name, leaf in zip(names, leaves):
            arr = np.asarray(jax.device_get(leaf))
            if dtype is not None:
                arr = arr.astype(jnp.dtype(dtype))
            if shards[-1] and size + arr.nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = arr
            size += arr.nbytes
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_file(tmp / fname, shard)
            total += sum(a.nbytes for a in shard.values())
            weight_map.update({n: fname for n in shard})
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        raw = dict(model.raw_config)
        if dtype is not None:
            raw["dtype"] = jnp.dtype(dtype).name
        (tmp / "config.json").write_text(json.dumps(raw, indent=2))
        src = Path(copy_from) if copy_from is not None else model.path
        if src is not None:
            for f in TOKENIZER_FILES:
                if (src / f).is_file():
                    shutil.copy2(src / f, tmp / f)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _header_shapes(path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    raw = _read_config(path)
    family, _, module = build(raw, source=str(path / "config.json"))
    expected = expected_tensors(module)
    check_tensors(family, expected, tensor_index(path), path)
    return family, {n: tuple(x.shape) for n, x in expected.items()}


def config_family(ref: str | os.PathLike) -> str:
    """The family ``ref``'s ``config.json`` names, its config parsed (no weights: a Hub id is
    resolved with ``weights=False``); errors name the id as given and the file."""
    path = hub.resolve(ref, weights=False)
    family, _, _ = build(_read_config(path, ref), source=hub.describe(ref, path / "config.json"))
    return family


def check_configs(pre: str | os.PathLike, post: str | os.PathLike) -> str:
    """What :func:`check_pair` can check from the configurations alone, resolving Hub ids with
    ``weights=False`` (so nothing but configs and tokenizer files is downloaded): both configs
    parse and name one family, or ``post`` is a LoRA adapter whose ``adapter_config.json`` options
    are implemented (:func:`analysis.hf.adapters.check_adapter_config`). Returns the family."""
    from analysis.hf import adapters  # imports this module

    if adapters.is_adapter(hub.resolve(post, weights=False)):
        return adapters.check_adapter_config(pre, post)[0]
    fa, fb = config_family(pre), config_family(post)
    if fa != fb:
        raise ValueError(f"pre ({pre}) is {fa} but post ({post}) is {fb}; a delta needs one architecture")
    return fa


def check_pair(pre: str | os.PathLike, post: str | os.PathLike) -> str:
    """Check, from ``config.json`` and the safetensors headers alone (no weights read), that two
    checkpoints (directories or Hub ids) share family, tensor names and shapes — the delta is only
    defined between identical architectures. Returns the family; the error names the first
    mismatching tensor. A PEFT LoRA adapter as ``post`` is checked against ``pre`` as its base
    (:func:`analysis.hf.adapters.check_adapter`). The configurations are checked first
    (:func:`check_configs`), before Hub ids' weights are downloaded for their headers."""
    from analysis.hf import adapters  # imports this module

    check_configs(pre, post)
    if adapters.is_adapter(hub.resolve(post, weights=False)):
        return adapters.check_adapter(pre, post).family
    fa, sa = _header_shapes(hub.resolve(pre))
    fb, sb = _header_shapes(hub.resolve(post))
    if fa != fb:
        raise ValueError(f"pre ({pre}) is {fa} but post ({post}) is {fb}; a delta needs one architecture")
    for name in sorted(set(sa) | set(sb)):
        if sa.get(name) != sb.get(name):
            raise ValueError(
                f"pre ({pre}) and post ({post}) differ at tensor {name}: pre {sa.get(name)}, post {sb.get(name)}"
            )
    return fa


def load_pair(pre: str | os.PathLike, post: str | os.PathLike, **kwargs: Any) -> tuple[Checkpoint, Checkpoint]:
    """Load a pre/post pair (directories or Hub ids) after :func:`check_pair` (so a mismatch is
    reported before any weights are read); ``post`` may be a LoRA adapter on the base ``pre``
    (:func:`load_adapter`)."""
    from analysis.hf import adapters  # imports this module

    if adapters.is_adapter(hub.resolve(post, weights=False)):
        return adapters.load_adapter(pre, post, **kwargs)
    check_pair(pre, post)
    return load(pre, **kwargs), load(post, **kwargs)


def load_adapter(base: str | os.PathLike, adapter: str | os.PathLike, **kwargs: Any) -> tuple[Checkpoint, Checkpoint]:
    """``(pre, post)`` from a base checkpoint and a PEFT LoRA adapter directory on it, ``post`` merged as
    PEFT's ``merge_and_unload``; keywords as :func:`load`. See :mod:`analysis.hf.adapters`."""
    from analysis.hf import adapters  # imports this module

    return adapters.load_adapter(base, adapter, **kwargs)
