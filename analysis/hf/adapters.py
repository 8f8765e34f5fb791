"""LoRA adapters (PEFT) as deltas: a base checkpoint is ``W_pre``, base plus adapter is ``W_post``.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``. For every
module it targets, PEFT 0.21 (``peft/tuners/lora/layer.py``, ``Linear.get_delta_weight`` and
``Embedding.get_delta_weight``; ``merge_and_unload``) merges

    W_post = W_pre + scale · B A            (nn.Linear: A [r, in], B [out, r])
    W_post = W_pre + scale · (B A)ᵀ         (nn.Embedding: A [r, vocab], B [dim, r])
    scale  = lora_alpha / r                 (lora_alpha / √r with ``use_rslora``)

with ``r`` and ``lora_alpha`` per module from ``rank_pattern`` / ``alpha_pattern`` (the first
pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", module)``, ``peft.utils.other.get_pattern_key``).
Tensors saved whole — ``modules_to_save`` copies, biases trained with ``bias="all"`` or
``"lora_only"``, embedding copies saved beside an embedding LoRA — replace the base's tensor.
``fan_in_fan_out`` is ignored as PEFT ignores it for ``nn.Linear`` (``dispatch_default`` resets it
to False; only GPT-2's ``Conv1D`` honours it, and no family here has one) and for embeddings
(always transposed). On a base with tied embeddings (no ``lm_head.weight``), a LoRA on ``lm_head``
merges into the shared ``model.embed_tokens.weight`` as PEFT's in-place merge does (after the
embedding's own LoRA, if any); what PEFT unties (a ``modules_to_save`` copy of either module without
``ensure_weight_tying``) or merges twice (LoRAs with ``ensure_weight_tying``) is refused, see
:func:`_check_tied`. Everything else that changes the merged weights (DoRA, LoRA biases, other
variants and initialisations that rewrite the base, other ``peft_type``) is refused, naming the
config key, before any weight is read; the adapter's tensor names and shapes are checked against
the base's safetensors headers, also before any weight is read.

Each merged tensor is computed in float32 and rounded once per LoRA to the parameter's dtype; untargeted
tensors of ``W_post`` are the base's own arrays (JAX arrays are immutable, so sharing is safe).

:func:`read_adapter` gives the factored form (:class:`LoraFactor` per tensor: ``ΔW = scale · left
@ right``) without forming any dense ΔW, and :func:`factored_svd` the exact SVD of ΔW from its
factors. The suite's edits (``riemann.edits``: DARE, magnitude, BitDelta, ...) act on the dense
ΔW = W_post − W_pre, as for any pair; DARE on the factors A, B is a different edit, not DARE on ΔW.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analysis.hf import checkpoints, hub
from analysis.hf.safetensors_file import CheckpointError, TensorInfo, read_header, read_tensor

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLED = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PREFIX = "base_model.model."  # PeftModel → LoraModel → the transformers model
# Config keys read here, and keys that do not change the merged weights (training-time settings, metadata).
READ = {
    "peft_type", "r", "lora_alpha", "use_rslora", "target_modules", "exclude_modules", "layers_to_transform",
    "layers_pattern", "rank_pattern", "alpha_pattern", "modules_to_save", "fan_in_fan_out", "bias",
    "init_lora_weights", "ensure_weight_tying",
}  # fmt: skip
INERT = {
    "base_model_name_or_path", "revision", "task_type", "inference_mode", "lora_dropout", "peft_version",
    "auto_mapping", "megatron_core", "qalora_group_size", "runtime_config",
}  # fmt: skip
INITS = (True, False, "gaussian")  # initialisations that leave the base weights as they are
BIASES = ("none", "all", "lora_only")
# With tie_word_embeddings the base has no lm_head.weight: its output head is the input embedding matrix.
HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


class AdapterError(CheckpointError):
    """An adapter directory is missing, inconsistent with its base, or uses options not implemented."""


def is_adapter(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PEFT adapter directory (it holds ``adapter_config.json``)."""
    return (Path(path) / CONFIG).is_file()


def tokenizer_source(pre: str | os.PathLike, post: str | os.PathLike) -> Path:
    """Where a pair's tokenizer lives: ``post`` itself, unless it is an adapter without its own
    ``tokenizer.json``, whose tokenizer is the base's. Hub ids are resolved without weights (configs
    and tokenizer files only), so the data can be tokenized before any weights are downloaded."""
    pre, post = hub.resolve(pre, weights=False), hub.resolve(post, weights=False)
    return pre if is_adapter(post) and not (post / "tokenizer.json").is_file() else post


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """The parts of a ``LoraConfig`` that decide the merged weights (``peft/tuners/lora/config.py``)."""

    r: int
    lora_alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...] | str
    exclude_modules: tuple[str, ...] | str | None
    layers_to_transform: tuple[int, ...] | int | None
    layers_pattern: tuple[str, ...] | None
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    modules_to_save: tuple[str, ...]
    bias: str
    ensure_weight_tying: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = CONFIG) -> LoraSettings:
        """Parsed and checked settings; a key we do not implement is refused by name."""
        if raw.get("peft_type") != "LORA":
            raise AdapterError(f"{source}: peft_type={raw.get('peft_type')!r}; accepted: 'LORA'")
        for key, value in raw.items():
            if key not in READ and key not in INERT and value not in (None, False, {}, [], ""):
                raise AdapterError(
                    f"{source}: {key}={value!r} is not implemented (it changes the merged weights beyond "
                    f"W + scale·BA); accepted: {key}=null or false"
                )
        if raw.get("init_lora_weights", True) not in INITS:
            raise AdapterError(
                f"{source}: init_lora_weights={raw['init_lora_weights']!r} rewrites the base weights at "
                f"initialisation, so the adapter is not relative to the base; accepted: true, false, 'gaussian'"
            )
        if raw.get("bias", "none") not in BIASES:
            raise AdapterError(f"{source}: bias={raw['bias']!r}; accepted: {', '.join(map(repr, BIASES))}")
        targets = raw.get("target_modules")
        if targets is None or (isinstance(targets, str) and targets.lower() == "all-linear"):
            raise AdapterError(
                f"{source}: target_modules={targets!r}; accepted: a list of module names or a regex "
                "(as PEFT saves after expanding its defaults)"
            )
        r = raw.get("r", 8)
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise AdapterError(f"{source}: r={r!r}; accepted: an integer ≥ 1")
        layers, pattern = raw.get("layers_to_transform"), raw.get("layers_pattern")
        return cls(
            r=r,
            lora_alpha=float(raw.get("lora_alpha", 8)),
            use_rslora=bool(raw.get("use_rslora", False)),
            target_modules=targets if isinstance(targets, str) else tuple(targets),
            exclude_modules=_names(raw.get("exclude_modules")),
            layers_to_transform=layers if isinstance(layers, int | None) else tuple(layers),
            layers_pattern=(pattern,) if isinstance(pattern, str) else (tuple(pattern) if pattern else None),
            rank_pattern=dict(raw.get("rank_pattern") or {}),
            alpha_pattern=dict(raw.get("alpha_pattern") or {}),
            modules_to_save=tuple(raw.get("modules_to_save") or ()),
            bias=raw.get("bias", "none"),
            ensure_weight_tying=bool(raw.get("ensure_weight_tying", False)),
        )

    def targets(self, module: str) -> bool:
        """Whether PEFT puts a LoRA on ``module`` (``peft.tuners.tuners_utils.check_target_module_exists``)."""
        ex = self.exclude_modules
        if ex is not None:
            if isinstance(ex, str) and re.fullmatch(ex, module):
                return False
            if not isinstance(ex, str) and (module in ex or any(module.endswith(f".{e}") for e in ex)):
                return False
        if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in self.modules_to_save):
            return False
        if isinstance(self.target_modules, str):
            found = re.fullmatch(self.target_modules, module) is not None
        else:
            found = module in self.target_modules or any(module.endswith(f".{t}") for t in self.target_modules)
        layers = self.layers_to_transform
        if found and layers is not None and layers != ():
            if not self.layers_pattern:
                match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
            else:
                match = None
                for p in self.layers_pattern:
                    match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module)
                    if match is not None:
                        break
            if match is None:
                return False
            index = int(match.group("idx"))
            return index == layers if isinstance(layers, int) else index in layers
        return found

    def rank(self, module: str) -> int:
        return int(self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r))

    def scale(self, module: str) -> float:
        """``lora_alpha / r``, or ``lora_alpha / √r`` with ``use_rslora`` (``LoraLayer.update_layer``)."""
        alpha = float(self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha))
        r = self.rank(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _names(value: Any) -> tuple[str, ...] | str | None:
    return value if value is None or isinstance(value, str) else tuple(value)


def _pattern_key(patterns: dict[str, Any], module: str) -> str:
    """``peft.utils.other.get_pattern_key``: the first pattern matching the end of ``module``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


@dataclasses.dataclass(frozen=True)
class LoraFactor:
    """One tensor's low-rank delta ``ΔW = scale · left @ right`` (left [out, r], right [r, in]):
    ``left = B, right = A`` for a linear layer, ``left = Aᵀ, right = Bᵀ`` for an embedding.

    ``name`` is the tensor the adapter trained; ``into`` the base tensor the delta merges into when
    that differs (a LoRA on ``lm_head`` of a base with tied embeddings: ``model.embed_tokens.weight``).
    """

    name: str
    left: np.ndarray
    right: np.ndarray
    scale: float
    into: str | None = None

    @property
    def tensor(self) -> str:
        """The base tensor this delta is added to."""
        return self.into or self.name

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    def dense(self) -> np.ndarray:
        """The dense ΔW in float32 (for checks; the point of the factored form is not to need it)."""
        return (self.left.astype(np.float32) @ self.right.astype(np.float32)) * np.float32(self.scale)


@dataclasses.dataclass(frozen=True)
class Adapter:
    """An adapter in factored form: per-tensor LoRA factors, and the tensors it replaces whole."""

    path: Path
    settings: LoraSettings
    factors: dict[str, LoraFactor]
    replaced: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class AdapterPlan:
    """What :func:`check_adapter` found in the headers: the base's family, the settings, each LoRA'd
    tensor's factor entries and the tensors replaced whole (nothing read yet)."""

    family: str
    settings: LoraSettings
    factors: dict[str, tuple[TensorInfo, TensorInfo, bool]]  # name → (A, B, is_embedding)
    replaced: dict[str, TensorInfo]  # base tensor → the adapter's whole copy
    into: dict[str, str] = dataclasses.field(default_factory=dict)  # factor name → base tensor, where they differ
    copies: tuple[tuple[str, TensorInfo], ...] = ()  # further whole copies of a replaced tensor (must be equal)


def _read_config(adapter: Path, ref: str | os.PathLike | None = None) -> dict[str, Any]:
    """``adapter/adapter_config.json``; errors name ``ref`` too where it is a Hub id."""
    ref = adapter if ref is None else ref
    if not (adapter / CONFIG).is_file():
        raise AdapterError(f"{hub.describe(ref, adapter)}: no {CONFIG} (expected a PEFT adapter directory)")
    source = hub.describe(ref, adapter / CONFIG)
    try:
        raw = json.loads((adapter / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{source}: expected a JSON object")
    return raw


def check_adapter_config(base: str | os.PathLike, adapter: str | os.PathLike) -> tuple[str, LoraSettings]:
    """The base's family and the adapter's settings, from ``config.json`` and ``adapter_config.json``
    alone: Hub ids are resolved with ``weights=False``, so an option not implemented (DoRA, ...) or
    a base of an unknown architecture is refused before any weights are downloaded. Errors name the
    Hub id as given and the file."""
    path = hub.resolve(adapter, weights=False)
    settings = LoraSettings.from_dict(_read_config(path, adapter), source=hub.describe(adapter, path / CONFIG))
    return checkpoints.config_family(base), settings


def _weights_file(adapter: Path) -> Path:
    if (adapter / WEIGHTS).is_file():
        return adapter / WEIGHTS
    pickled = [f for f in PICKLED if (adapter / f).is_file()]
    if pickled:
        raise AdapterError(
            f"{adapter}: only pickle-based adapter weights ({', '.join(pickled)}); they can run arbitrary code when "
            f"loaded, so this toolkit reads safetensors only. Convert once where you trust the file, e.g. "
            f"PeftModel.from_pretrained(base, dir).save_pretrained(new_dir), which writes {WEIGHTS}."
        )
    raise AdapterError(f"{adapter}: no {WEIGHTS}")


_ROLES = ((".lora_A.weight", "A", False), (".lora_B.weight", "B", False))
_ROLES += ((".lora_embedding_A", "A", True), (".lora_embedding_B", "B", True))


def _role(key: str, source: Path) -> tuple[str, str, bool]:
    """(role, base tensor name, is_embedding) of a key in the adapter file; role "A", "B" or "full"."""
    k = key.removeprefix(PREFIX)
    for suffix, role, emb in _ROLES:
        if k.endswith(suffix):
            return role, k.removesuffix(suffix) + ".weight", emb
    parts = k.split(".")
    if any(p.startswith("lora_") or p == "trainable_tokens_delta" for p in parts):
        raise AdapterError(
            f"{source}: tensor {key!r} belongs to a LoRA variant not implemented here; accepted: "
            "lora_A/lora_B (linear), lora_embedding_A/lora_embedding_B (embedding) and whole tensors"
        )
    return "full", ".".join(p for p in parts if p not in ("base_layer", "modules_to_save")), False


def check_adapter(base: str | os.PathLike, adapter: str | os.PathLike) -> AdapterPlan:
    """Check an adapter against its base from ``adapter_config.json`` and safetensors headers alone
    (no weights read): options implemented, every adapter tensor present in the base with matching
    shapes and the configured rank, every targeted module present in the file. Errors name the
    offending config key or adapter tensor. The configs are checked first
    (:func:`check_adapter_config`), before Hub ids' weights are downloaded."""
    _, settings = check_adapter_config(base, adapter)
    base, adapter = hub.resolve(base), hub.resolve(adapter)
    weights = _weights_file(adapter)
    family, shapes = checkpoints._header_shapes(base)
    infos, _ = read_header(weights)
    # A tied base (no lm_head.weight, as written with tie_word_embeddings) has one matrix for both
    # embed_tokens and lm_head; PEFT's merge adds a LoRA on either module to that shared matrix.
    tied = HEAD not in shapes and EMBED in shapes
    halves: dict[str, dict[str, TensorInfo]] = {}
    kinds: dict[str, bool] = {}
    into: dict[str, str] = {}
    replaced: dict[str, TensorInfo] = {}
    copies: list[tuple[str, TensorInfo]] = []
    for key, info in infos.items():
        role, name, emb = _role(key, weights)
        target = EMBED if tied and name == HEAD else name
        if target not in shapes:
            raise AdapterError(
                f"{weights}: tensor {key!r} is for {name}, which the base {base} does not have "
                f"(its tensors are e.g. {sorted(shapes)[:3]})"
            )
        if not np.issubdtype(info.dtype, np.floating) and info.dtype.name != "bfloat16":
            raise AdapterError(f"{weights}: tensor {key!r} has dtype {info.dtype}; expected floating point")
        if tied and target == EMBED:
            _check_tied(key, role, name, settings, weights, base)
        if role == "full":
            if info.shape != shapes[target]:
                raise AdapterError(f"{weights}: tensor {key!r} has shape {info.shape}, base {name} {shapes[target]}")
            if target in replaced:
                copies.append((target, info))
            else:
                replaced[target] = info
        else:
            halves.setdefault(name, {})[role] = info
            if target != name:
                into[name] = target
            if kinds.setdefault(name, emb) != emb:
                raise AdapterError(f"{weights}: tensor {key!r}: {name} has both linear and embedding LoRA factors")
    factors = {}
    for name, pair in halves.items():
        module = name.removesuffix(".weight")
        missing = {"A", "B"} - set(pair)
        if missing:
            raise AdapterError(f"{weights}: {module} has lora_{''.join(pair)} but no lora_{''.join(missing)}")
        a, b, emb = pair["A"], pair["B"], kinds[name]
        shape = shapes[into.get(name, name)]
        if len(shape) != 2:
            raise AdapterError(
                f"{weights}: LoRA on {name} {shape}: only 2-D weights (linear, embedding) are supported; "
                "convolutions are not implemented"
            )
        if not settings.targets(module):
            raise AdapterError(f"{weights}: LoRA tensors for {module}, which {CONFIG} does not target")
        r = settings.rank(module)
        # Linear: A [r, in], B [out, r] with W [out, in]; embedding: A [r, vocab], B [dim, r] with W [vocab, dim].
        want_a, want_b = ((r, shape[0]), (shape[1], r)) if emb else ((r, shape[1]), (shape[0], r))
        for info, want in ((a, want_a), (b, want_b)):
            if info.shape != want:
                raise AdapterError(
                    f"{weights}: tensor {info.name!r} has shape {info.shape}; base {name} {shape} with rank {r} "
                    f"(from {CONFIG}: r / rank_pattern) needs {want}"
                )
        factors[name] = (a, b, emb)
    untrained = sorted(
        n.removesuffix(".weight")
        for n in [*shapes, *([HEAD] if tied else [])]
        if n.endswith(".weight") and n not in factors and settings.targets(n.removesuffix(".weight"))
    )
    if untrained:
        raise AdapterError(f"{weights}: {CONFIG} targets {untrained[:3]} but the file has no LoRA tensors for them")
    if not factors and not replaced:
        raise AdapterError(f"{weights}: no LoRA tensors")
    return AdapterPlan(family, settings, factors, replaced, into, tuple(copies))


def _check_tied(key: str, role: str, name: str, settings: LoraSettings, weights: Path, base: Path) -> None:
    """Refuse what PEFT's ``merge_and_unload`` does to a tied embed_tokens/lm_head pair that one
    shared matrix cannot hold (``peft/tuners/tuners_utils.py``, ``_unload_and_optionally_merge``).

    A ``modules_to_save`` copy of either module replaces that module only: PEFT unties the pair
    (the other keeps the base matrix) and sets ``tie_word_embeddings=False``; with
    ``ensure_weight_tying`` it saves one copy for both and they stay tied. A LoRA on either is added
    to the shared matrix in place (both, in module order, when both carry one); but with
    ``ensure_weight_tying`` lm_head's LoRA is embed_tokens' transposed, and the merge adds that one
    delta twice while the unmerged model uses it once. The ``base_layer`` copies PEFT saves beside
    an embedding or lm_head LoRA are the base's matrix and are loaded as such."""
    whole = role == "full" and "base_layer" not in key.removeprefix(PREFIX).split(".")
    if whole and not settings.ensure_weight_tying:
        raise AdapterError(
            f"{weights}: tensor {key!r} replaces {name} whole (modules_to_save), but the base {base} has "
            f"tie_word_embeddings (lm_head is {EMBED}): PEFT's merge_and_unload unties them, new {name} and the "
            "base's matrix for the other, which a tied checkpoint cannot hold. Accepted: modules_to_save with "
            "ensure_weight_tying=true (both stay the saved matrix), a LoRA on embed_tokens or lm_head, or an "
            "untied base (tie_word_embeddings=false, lm_head.weight saved)"
        )
    if role != "full" and settings.ensure_weight_tying:
        raise AdapterError(
            f"{weights}: tensor {key!r}: a LoRA on {name} with ensure_weight_tying=true on a base with "
            "tie_word_embeddings: PEFT's merge_and_unload adds the tied delta twice (once for embed_tokens, once "
            "for lm_head) while its unmerged model adds it once, so there is no one merge to match. Accepted: "
            "ensure_weight_tying=false (the default; each LoRA merged into the shared matrix once)"
        )


def read_adapter(base: str | os.PathLike, adapter: str | os.PathLike) -> Adapter:
    """The adapter in factored form, after :func:`check_adapter` (the base's weights are not read)."""
    plan = check_adapter(base, adapter)
    factors = {}
    for name, (a, b, emb) in plan.factors.items():
        av, bv = read_tensor(a), read_tensor(b)
        left, right = (av.T, bv.T) if emb else (bv, av)
        scale = plan.settings.scale(name.removesuffix(".weight"))
        factors[name] = LoraFactor(name, left, right, scale, plan.into.get(name))
    replaced = {name: read_tensor(info) for name, info in plan.replaced.items()}
    for name, info in plan.copies:  # lm_head and embed_tokens saved whole, tied: one matrix
        if not np.array_equal(read_tensor(info), replaced[name]):
            raise AdapterError(f"{info.name!r} and {plan.replaced[name].name!r} both replace {name} but differ")
    return Adapter(hub.resolve(adapter), plan.settings, factors, replaced)


@jax.jit
def _merge(w: jax.Array, left: jax.Array, right: jax.Array, scale: jax.Array) -> jax.Array:
    # The order of PEFT's get_delta_weight, (B @ A) * scale, then W += ΔW; in float32, rounded once.
    delta = (left.astype(jnp.float32) @ right.astype(jnp.float32)) * scale
    return (w.astype(jnp.float32) + delta).astype(w.dtype)


def load_adapter(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    *,
    dtype: Any = None,
    sharding: Callable[[str, tuple[int, ...]], Any] | None = None,
    remat: bool = False,
) -> tuple[checkpoints.Checkpoint, checkpoints.Checkpoint]:
    """``(pre, post)``: the base checkpoint and base + adapter merged as PEFT's ``merge_and_unload``.

    Everything is checked from headers first (:func:`check_adapter`). ``post`` shares the base's
    arrays for every tensor the adapter leaves alone; its ``path`` is where its tokenizer lives
    (:func:`tokenizer_source`), its config the base's. Keywords as :func:`analysis.hf.checkpoints.load`.
    """
    lora = read_adapter(base, adapter)
    pre = checkpoints.load(base, dtype=dtype, sharding=sharding, remat=remat)
    leaves = dict(zip(pre.names, jax.tree.leaves(pre.params)))
    for name, full in lora.replaced.items():
        where = sharding(name, full.shape) if sharding else None
        leaves[name] = jax.device_put(full.astype(leaves[name].dtype), where)
    # PEFT's order (named_modules): on a shared matrix, the embedding's own LoRA before lm_head's.
    order = {n: i for i, n in enumerate(pre.names)}
    for f in sorted(lora.factors.values(), key=lambda f: (order[f.tensor], f.into is not None)):
        leaves[f.tensor] = _merge(leaves[f.tensor], jnp.asarray(f.left), jnp.asarray(f.right), jnp.float32(f.scale))
    params = jax.tree.unflatten(jax.tree.structure(pre.params), list(leaves.values()))
    post = dataclasses.replace(
        pre, path=tokenizer_source(base, adapter), params=params, hub_id=hub.locate(adapter).pinned
    )
    return pre, post


def factored_svd(factor: LoraFactor, rank: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(U, S, Vᵀ)`` of ``ΔW = scale · left @ right`` truncated to ``rank`` (default: the adapter's
    r), without forming ΔW: ``left = Q₁R₁``, ``rightᵀ = Q₂R₂`` (thin QR), the r × r core
    ``scale · R₁R₂ᵀ = U_c S V_cᵀ``, so ``U = Q₁U_c`` and ``Vᵀ = V_cᵀQ₂ᵀ``. Cost O((out + in)·r²);
    exact, so truncating ΔW to rank ≥ r loses nothing.

    >>> f = LoraFactor("w", np.ones((4, 1), np.float32), np.full((1, 3), 2.0, np.float32), 0.5)
    >>> u, s, vt = factored_svd(f)
    >>> bool(np.allclose((u * s[None]) @ vt, f.dense())), bool(np.isclose(s[0], np.linalg.norm(f.dense())))
    (True, True)
    """
    most = min(factor.left.shape[0], factor.right.shape[1], factor.rank)
    k = most if rank is None else rank
    if not 1 <= k <= most:
        raise ValueError(f"{factor.name}: rank={k}; accepted: 1 to {most} (the adapter's rank, at most min(out, in))")
    q1, r1 = jnp.linalg.qr(jnp.asarray(factor.left, jnp.float32))
    q2, r2 = jnp.linalg.qr(jnp.asarray(factor.right, jnp.float32).T)
    uc, s, vct = jnp.linalg.svd((r1 @ r2.T) * jnp.float32(factor.scale), full_matrices=False)
    return (q1 @ uc)[:, :k], s[:k], (vct @ q2.T)[:k]
