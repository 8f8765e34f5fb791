"""mergekit merge configurations, read and checked before any weights are read.

A configuration is mergekit's YAML (0.1.5): ``models: [{model, parameters}]``, ``base_model``,
``merge_method``, top-level ``parameters``, ``dtype``, ``random_seed``, ``tokenizer_source``. Its
parameters mean what they mean in mergekit:

- a scalar applies to every tensor;
- a list of numbers is a *gradient* over the layers: the tensors of layer ``i`` of ``L`` take the
  value at ``t = i / (L − 1)`` (``t = 1`` when ``L = 1``), linearly interpolated between the list's
  evenly spaced points; tensors outside the layers (embeddings, final norm, head) take ``t = 0``,
  as mergekit's planner evaluates them (``mergekit/plan.py``); a list of booleans or strings picks
  ``values[int(t·(len − 1))]``;
- ``{filter, value}`` (or a list of them) applies ``value`` to the tensors whose name contains
  ``filter`` (``*`` or no filter: every tensor), the first match winning; a tensor no filter
  matches falls back to the top-level ``parameters``, then to the method's default;
- per-model parameters (``weight``, ``density``, ``gamma``, ``epsilon``) are looked up in the
  model's own ``parameters`` first, then the top-level ones; shared ones (``lambda``,
  ``normalize``, ``rescale``, ``int8_mask``) in the top-level ``parameters`` only, and, as in
  mergekit, may vary by tensor too (filters, gradients): the engine takes them per leaf.

``random_seed`` is a riemann extension: the key of the DARE/DELLA masks
(``jax.random.key(random_seed)``). mergekit 0.1.5 ignores it in the YAML (its seed is the
``--random-seed`` command-line option, and its masks come from torch's RNG), so a random method's
merge here is one draw of the same law as mergekit's, not its draw.

What mergekit does with the base model listed among ``models``: the task-arithmetic family
(``task_arithmetic``, ``ties``, ``dare_*``, ``della*``, ``breadcrumbs*``) merges only the non-base
models, so a listed base is no donor and its parameters are unused; ``linear`` always merges the
base as one more input (appended when not listed), weighted by its own ``weight`` (or the top-level
one) — here a donor whose delta is zero. Both are matched, and recorded.

Refused, naming the key and what is accepted: unknown keys, ``slices``/``modules`` and
``passthrough`` (they restack layers: no delta on one architecture), methods this toolkit does not
merge, a model listed twice, parameters the method does not take or shared parameters set per
model (mergekit silently ignores them there), ``tokenizer_source: union`` and ``tokenizer:``
(vocabulary surgery), an ``out_dtype`` other than ``dtype``, and, before any weights are read
(:func:`check`): missing models, models of another architecture (from their configs), parameters
without a value for some tensor or with a value mergekit refuses or fails on for some tensor
(:func:`check_ranges`), then models of another shape (from the safetensors headers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

MERGEKIT_VERSION = "0.1.5"
KEYS = (
    "models",
    "base_model",
    "merge_method",
    "parameters",
    "dtype",
    "out_dtype",
    "random_seed",
    "tokenizer_source",
    "chat_template",
)
MODEL_KEYS = ("model", "parameters")
DTYPES = ("float32", "bfloat16", "float16")
SHARED = ("lambda", "normalize", "rescale", "int8_mask")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What mergekit's method takes: its per-model parameters with their defaults (``None``:
    required), its shared ones with theirs, whether the base is one of its inputs (``linear``)."""

    per_model: Mapping[str, float | None]
    shared: Mapping[str, Any]
    base_is_input: bool = False


def _gta(normalize: bool, rescale: bool, **extra: float) -> MethodSpec:
    return MethodSpec(
        {"weight": None, "density": 1.0, **extra},
        {"int8_mask": False, "normalize": normalize, "rescale": rescale, "lambda": 1.0},
    )


# mergekit 0.1.5, mergekit/merge_methods/registry.py and generalized_task_arithmetic.py.
SPECS: dict[str, MethodSpec] = {
    "linear": MethodSpec({"weight": None}, {"normalize": True}, base_is_input=True),
    "task_arithmetic": _gta(False, False),
    "ties": _gta(True, False),
    "dare_ties": _gta(False, True),
    "dare_linear": _gta(False, True),
    "della": _gta(True, True, epsilon=0.15),
    "della_linear": _gta(False, True, epsilon=0.15),
    "breadcrumbs": _gta(False, False, gamma=0.01),
    "breadcrumbs_ties": _gta(False, False, gamma=0.01),
}
RANDOM = ("dare_ties", "dare_linear", "della", "della_linear")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class ConfigError(ValueError):
    """A merge configuration this toolkit cannot score as mergekit would merge it."""


@dataclasses.dataclass(frozen=True)
class Donor:
    """One model of ``models``: its reference as written, its index there and its parameters."""

    model: str
    index: int
    parameters: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """A read configuration. ``donors`` are the models whose deltas are merged, in the config's
    order (a listed base excluded for the task-arithmetic family); ``base_input`` says whether the
    base is merged as one more input (``linear``), with ``base_parameters`` its own parameters."""

    source: str
    method: str
    base: str
    donors: tuple[Donor, ...]
    parameters: Mapping[str, Any]
    dtype: str | None
    random_seed: int
    tokenizer_source: str | None
    base_listed: bool
    base_input: bool
    base_parameters: Mapping[str, Any]
    raw: Mapping[str, Any]

    @property
    def random(self) -> bool:
        return self.method in RANDOM

    def record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "merge_method": self.method,
            "base_model": self.base,
            "models": [d.model for d in self.donors],
            "base_listed_among_models": self.base_listed,
            "base_merged_as_input": self.base_input,
            "dtype": self.dtype,
            "random_seed": self.random_seed,
            "tokenizer_source": self.tokenizer_source,
            "config": _plain(self.raw),
        }


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML mapping at ``path`` (``yaml.safe_load``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such merge configuration file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping with models, base_model and merge_method; got {type(raw).__name__}")
    return raw


def read(config: str | os.PathLike | Mapping[str, Any], *, source: str | None = None) -> MergeConfig:
    """A mergekit configuration (a YAML file, or the mapping it holds) read and checked as far as
    it can be without the checkpoints; see the module's docstring for what is refused."""
    if isinstance(config, Mapping):
        raw, where = dict(config), source or "<config>"
    else:
        raw, where = load_yaml(config), source or str(config)

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}")

    if "slices" in raw or "modules" in raw:
        key = "slices" if "slices" in raw else "modules"
        raise fail(
            f"{key!r} is not supported: it restacks layers of several models, so the merged model has no delta "
            "on one architecture to score; list whole models under 'models'"
        )
    unknown = [k for k in raw if k not in KEYS and k != "tokenizer"]
    if unknown:
        raise fail(f"unknown key(s) {unknown}; accepted: {', '.join(KEYS)}")
    if "tokenizer" in raw:
        raise fail(
            "'tokenizer' (vocabulary surgery) is not supported: the merged embeddings would not be W_base + Σ parts; "
            "accepted: tokenizer_source: base, or one of the models"
        )
    method = raw.get("merge_method")
    if method == "passthrough":
        raise fail("merge_method 'passthrough' copies tensors instead of merging deltas; it is not supported")
    if method not in SPECS:
        raise fail(f"merge_method {method!r} is not supported; accepted: {', '.join(SPECS)}")
    spec = SPECS[method]
    base = raw.get("base_model")
    if not isinstance(base, str) or not base:
        raise fail("base_model is missing; riemann merge needs the base every model's delta is taken from")
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise fail("'models' must be a non-empty list of {model, parameters}")
    entries: list[Donor] = []
    for i, m in enumerate(models):
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, Mapping):
            raise fail(f"models[{i}]: expected a mapping with keys {', '.join(MODEL_KEYS)}; got {m!r}")
        bad = [k for k in m if k not in MODEL_KEYS]
        if bad:
            raise fail(f"models[{i}]: unknown key(s) {bad}; accepted: {', '.join(MODEL_KEYS)}")
        if not isinstance(m.get("model"), str) or not m["model"]:
            raise fail(f"models[{i}]: 'model' must be a checkpoint directory or Hub id")
        params = m.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise fail(f"models[{i}].parameters: expected a mapping; got {params!r}")
        for k, v in params.items():
            if k in spec.shared:
                raise fail(
                    f"models[{i}].parameters.{k}: {k!r} is a shared parameter of {method}; set it under the top-level "
                    "'parameters' (mergekit ignores it here)"
                )
            if k not in spec.per_model:
                raise fail(
                    f"models[{i}].parameters.{k}: {method} takes no parameter {k!r}; accepted per model: "
                    f"{', '.join(spec.per_model)}"
                )
            _check_setting(v, _kind(spec, k), fail, f"models[{i}].parameters.{k}")
        entries.append(Donor(m["model"], i, dict(params)))
    seen: dict[str, int] = {}
    for d in entries:
        key = _identity(d.model)
        if key in seen:
            raise fail(
                f"models[{d.index}] ({d.model}) repeats models[{seen[key]}]; list each model once "
                "(mergekit refuses duplicate merge inputs)"
            )
        seen[key] = d.index
    shared = raw.get("parameters") or {}
    if not isinstance(shared, Mapping):
        raise fail(f"parameters: expected a mapping; got {shared!r}")
    for k, v in shared.items():
        if k not in spec.shared and k not in spec.per_model:
            raise fail(
                f"parameters.{k}: {method} takes no parameter {k!r}; accepted: "
                f"{', '.join([*spec.per_model, *spec.shared])}"
            )
        _check_setting(v, _kind(spec, k), fail, f"parameters.{k}")
    dtype = raw.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise fail(f"dtype {dtype!r}; accepted: {', '.join(DTYPES)}")
    out_dtype = raw.get("out_dtype")
    if out_dtype is not None and out_dtype != dtype:
        raise fail(
            f"out_dtype {out_dtype!r} differs from dtype {dtype!r}; the merge is scored as stored in one dtype: "
            "give out_dtype equal to dtype, or leave it out"
        )
    seed = raw.get("random_seed", 0)
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise fail(f"random_seed {seed!r}; expected a non-negative integer")
    base_key = _identity(base)
    listed = [d for d in entries if _identity(d.model) == base_key]
    tok = raw.get("tokenizer_source")
    if tok is not None:
        if tok == "union":
            raise fail(
                "tokenizer_source 'union' rebuilds the vocabulary (vocabulary surgery), which is not supported; "
                "accepted: base, or one of the models"
            )
        if tok != "base" and _identity(str(tok)) not in {*seen, base_key}:
            raise fail(f"tokenizer_source {tok!r}; accepted: base, or one of the models ({', '.join(seen)})")
    donors = tuple(d for d in entries if _identity(d.model) != base_key)
    if not donors:
        raise fail("'models' lists no model besides the base; nothing to merge")
    return MergeConfig(
        source=where,
        method=method,
        base=base,
        donors=donors,
        parameters=dict(shared),
        dtype=dtype,
        random_seed=seed,
        tokenizer_source=None if tok is None else str(tok),
        base_listed=bool(listed),
        base_input=spec.base_is_input,
        base_parameters=dict(listed[0].parameters) if listed else {},
        raw=raw,
    )


def _identity(ref: str) -> str:
    """What two references to one model share: the resolved directory, or the Hub id as written."""
    p = Path(ref)
    return str(p.resolve()) if p.exists() else ref.rstrip("/")


def same_model(a: str, b: str) -> bool:
    """Whether two references name one model (one resolved directory, or one Hub id as written)."""
    return _identity(a) == _identity(b)


def _kind(spec: MethodSpec, name: str) -> type:
    default = spec.shared.get(name, spec.per_model.get(name))
    return bool if isinstance(default, bool) else float


def _check_setting(value: Any, kind: type, fail: Callable[[str], ConfigError], where: str) -> None:
    """Refuse a setting mergekit's ``ParameterSetting`` would not parse, or values of the wrong type."""
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(c, Mapping) for c in value):
        for j, c in enumerate(value):
            bad = [k for k in c if k not in ("value", "filter")]
            if bad or "value" not in c:
                raise fail(f"{where}[{j}]: a conditional takes 'value' and optionally 'filter'; got keys {list(c)}")
            if c.get("filter") is not None and not isinstance(c["filter"], str):
                raise fail(f"{where}[{j}].filter: expected a substring of tensor names, or '*'; got {c['filter']!r}")
            _check_setting(c["value"], kind, fail, f"{where}[{j}].value")
        return
    scalars = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise fail(f"{where}: an empty list; expected a value, a gradient [v0, …, vn] or {{filter, value}} entries")
    for v in scalars:
        try:
            _validate(v, kind)
        except (TypeError, ValueError):
            accepted = "true or false" if kind is bool else "a number"
            raise fail(
                f"{where}: {v!r} is not {accepted}; expected a value, a gradient [v0, …, vn] or "
                "{filter, value} entries"
            ) from None


def _validate(v: Any, kind: type) -> Any:
    if isinstance(v, (Mapping, list)):
        raise TypeError(v)
    if kind is bool:
        if not isinstance(v, bool):
            raise TypeError(v)
        return v
    if isinstance(v, bool):
        raise TypeError(v)
    return float(v)  # mergekit's float parameters take numbers and numeric strings ("1e-3")


def evaluate_setting(tensor_name: str, setting: Any, t: float, kind: type = float) -> Any:
    """A setting's value for one tensor at layer position ``t`` — mergekit's ``evaluate_setting``:
    conditionals by substring of the name (first match), gradients interpolated at ``t``;
    ``None`` when no conditional matches."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if not isinstance(setting, list):
        return _validate(setting, kind)
    if not setting:
        return None
    if all(not isinstance(e, Mapping) for e in setting):
        values = [_validate(e, kind) for e in setting]
        if kind is bool:
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return _validate((1 - frac) * values[i0] + frac * values[i1], kind)
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor_name and f in tensor_name):
            return evaluate_setting(tensor_name, cond["value"], t, kind)
    return None


def layer_position(name: str, num_layers: int) -> float:
    """mergekit's ``t`` for a tensor: ``i / (L − 1)`` for a tensor of layer ``i`` of ``L``
    (``1`` when ``L = 1``), ``0`` for the tensors outside the layers.

    Example:
      >>> layer_position("model.layers.2.mlp.up_proj.weight", 5), layer_position("lm_head.weight", 5)
      (0.5, 0)
    """
    m = _LAYER.search(name)
    if m is None:
        return 0
    return int(m.group(1)) / (num_layers - 1) if num_layers > 1 else 1


def num_layers(names: Sequence[str]) -> int:
    """How many layers the tensor names hold (distinct ``layers.<i>.`` indices)."""
    return len({int(m.group(1)) for n in names if (m := _LAYER.search(n))})


@dataclasses.dataclass(frozen=True)
class Plan:
    """A configuration checked against its checkpoints' headers: where each model is, the
    architecture, the tensor names, and every parameter's value on every tensor."""

    config: MergeConfig
    base: Path
    donors: tuple[Path, ...]
    family: str
    names: tuple[str, ...]
    layers: int
    per_model: tuple[dict[str, dict[str, float]], ...]  # per donor: parameter → tensor → value
    shared: dict[str, Any]  # parameter → one value, or tensor → value where it varies by tensor
    base_weight: dict[str, float] | None  # linear: the base's weight per tensor

    def record(self) -> dict[str, Any]:
        summary = [{p: _summary(v) for p, v in values.items()} for values in self.per_model]
        return {
            **self.config.record(),
            "family": self.family,
            "layers": self.layers,
            "tensors": len(self.names),
            "resolved": {
                "per_model": summary,
                "shared": {p: _summary(v) if isinstance(v, dict) else v for p, v in self.shared.items()},
                "base_weight": None if self.base_weight is None else _summary(self.base_weight),
                "rule": "mergekit 0.1.5: the model's parameters, then the top-level ones, then the method's default; "
                "gradients over t = layer/(L − 1), t = 0 outside the layers; filters by substring, first match",
            },
        }

    def kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`riemann.edits.merge.merge` for this plan: per-model parameters as
        one callable ``f(leaf_name) -> float`` per donor (and one more for the base as an input of
        ``linear``), shared parameters as scalars, or as one callable of the leaf name where they
        vary by tensor."""
        spec = SPECS[self.config.method]
        tables = list(self.per_model)
        if self.base_weight is not None:
            tables.append({"weight": self.base_weight, **{p: {} for p in spec.per_model if p != "weight"}})
        out: dict[str, Any] = {}
        for p in spec.per_model:
            out[p] = [_lookup(t[p], p) for t in tables]
        for p, v in self.shared.items():
            out["lambda_" if p == "lambda" else p] = _lookup(v, p) if isinstance(v, dict) else v
        return out


def _lookup(table: dict[str, Any], what: str) -> Callable[[str], Any]:
    def f(name: str) -> Any:
        try:
            return table[name]
        except KeyError:
            raise KeyError(f"no {what} for tensor {name!r}; the checked tensors are the checkpoint's") from None

    return f


def _summary(values: Mapping[str, float]) -> Any:
    vs = set(values.values())
    return next(iter(vs)) if len(vs) == 1 else {"min": min(vs), "max": max(vs), "per_tensor": dict(values)}


def resolve_parameter(
    name: str, sources: Sequence[Mapping[str, Any]], tensor: str, t: float, default: Any, kind: type
) -> Any:
    """The value of parameter ``name`` for ``tensor``: the first source whose setting gives one,
    else ``default`` (mergekit's ``resolve_parameter``; a required parameter has ``default=None``
    and resolves to ``None``)."""
    for src in sources:
        if name in src:
            v = evaluate_setting(tensor, src[name], t, kind)
            if v is not None:
                return v
    return default


def header_names(path: str | os.PathLike) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The family and ``{tensor name: shape}`` a checkpoint directory holds, from ``config.json`` and
    its safetensors headers alone (no weights read)."""
    import json

    from analysis.hf import checkpoints

    raw = json.loads((Path(path) / "config.json").read_text())
    family, _, module = checkpoints.build(raw, source=str(Path(path) / "config.json"))
    expected = checkpoints.expected_tensors(module)
    checkpoints.check_tensors(family, expected, checkpoints.tensor_index(path), Path(path))
    return family, {n: tuple(x.shape) for n, x in expected.items()}


def check_ranges(method: str, values: Mapping[str, float], fail: Callable[[str], Exception]) -> None:
    """Refuse one donor's per-model parameters on one tensor (``values``: parameter → value) where
    mergekit 0.1.5 refuses or fails on them: the engine's own ``check_parameters`` when it has
    one, else mergekit's conditions (``mergekit/sparsify.py``): DARE's Bernoulli mask needs
    ``density ≥ 0``, DELLA with ``0 < density < 1`` needs ``density ± epsilon`` inside ``(0, 1)``.
    ``fail(message)`` builds the error naming the key, model and tensor.

    Example:
      >>> check_ranges("della", {"weight": 1.0, "density": 0.5, "epsilon": 0.6}, ValueError)
      Traceback (most recent call last):
      ...
      ValueError: merge: epsilon=0.6 with density=0.5 for 'della': density ± epsilon must lie in (0, 1)
    """
    from riemann.edits import merge as engine

    extra = {k: v for k, v in values.items() if k != "weight"}
    engine_check = getattr(engine, "check_parameters", None)
    if engine_check is not None:
        try:
            engine_check(method, **extra)
        except ValueError as e:
            raise fail(str(e)) from None
    d = values.get("density", 1.0)
    if method in ("dare_ties", "dare_linear") and d < 0:
        raise fail(f"density {d:g}: mergekit's Bernoulli mask needs a probability ≥ 0 (torch.bernoulli fails)")
    if method in ("della", "della_linear") and 0 < d < 1:
        eps = values["epsilon"]
        if not (0 < d - eps and d + eps < 1):
            raise fail(f"epsilon {eps:g} with density {d:g}: mergekit requires density ± epsilon inside (0, 1)")


def check(config: MergeConfig) -> Plan:
    """Check ``config`` with no weights read, in this order: every model located config-only (a Hub
    id fetches its ``config.json``, no weights), one architecture with the base from the configs,
    every per-model parameter given a value on every tensor (``weight`` is required, as in mergekit)
    in the range mergekit takes (:func:`check_ranges`), shared parameters resolved per tensor;
    then the safetensors headers (names and shapes; a Hub id's weights are downloaded for them)."""
    from analysis.hf import checkpoints, hub

    where = config.source

    def locate(ref: str, what: str, weights: bool) -> Path:
        try:
            return hub.resolve(ref, weights=weights)
        except ValueError as e:
            raise ConfigError(f"{where}: {what} {ref!r}: {e}") from None

    refs = [(config.base, "base_model"), *((d.model, f"models[{d.index}]") for d in config.donors)]
    for ref, what in refs:  # every model located, configs only, before any header or weight
        locate(ref, what, False)
    for d in config.donors:
        try:
            checkpoints.check_configs(config.base, d.model)
        except ValueError as e:
            raise ConfigError(
                f"{where}: models[{d.index}] ({d.model}) is not a fine-tune of base_model ({config.base}): {e}"
            ) from None
    raw = json.loads((hub.resolve(config.base, weights=False) / "config.json").read_text())
    family, _, module = checkpoints.build(raw, source=f"{config.base}/config.json")
    names = tuple(checkpoints.expected_tensors(module))
    layers = num_layers(names)
    spec = SPECS[config.method]
    top = config.parameters
    per_model = []
    for d in config.donors:
        values: dict[str, dict[str, float]] = {}
        for p, default in spec.per_model.items():
            values[p] = {}
            for n in names:
                v = resolve_parameter(p, (d.parameters, top), n, layer_position(n, layers), default, float)
                if v is None:
                    raise ConfigError(
                        f"{where}: models[{d.index}] ({d.model}): parameter {p!r} has no value for tensor {n} (no "
                        f"filter matches it here or under the top-level parameters); mergekit requires {p!r}"
                    )
                values[p][n] = v
        for n in names:

            def fail(msg: str, d: Donor = d, n: str = n) -> ConfigError:
                keys = [k for k in spec.per_model if k != "weight" and (k in d.parameters or k in top)]
                key = " / ".join(
                    f"models[{d.index}].parameters.{k}" if k in d.parameters else f"parameters.{k}" for k in keys
                )
                return ConfigError(
                    f"{where}: {key or 'parameters'} of models[{d.index}] ({d.model}), tensor {n}: {msg}"
                )

            check_ranges(config.method, {p: values[p][n] for p in spec.per_model}, fail)
        per_model.append(values)
    shared: dict[str, Any] = {}
    for p, default in spec.shared.items():
        kind = bool if isinstance(default, bool) else float
        got = {n: resolve_parameter(p, (top,), n, layer_position(n, layers), default, kind) for n in names}
        shared[p] = got if len(set(got.values())) > 1 else got[names[0]]
    base_weight = None
    if config.base_input:
        base_weight = {}
        for n in names:
            v = resolve_parameter("weight", (config.base_parameters, top), n, layer_position(n, layers), None, float)
            if v is None:
                raise ConfigError(
                    f"{where}: {config.method} merges base_model ({config.base}) as one more input, and it has no "
                    f"'weight' for tensor {n} (mergekit: missing required parameter weight); give the base a "
                    "weight among the models or under the top-level parameters"
                )
            base_weight[n] = v
    # Only now the headers: for a Hub id they need its weights downloaded.
    base = locate(config.base, "base_model", True)
    donors = tuple(locate(d.model, f"models[{d.index}]", True) for d in config.donors)
    for d, path in zip(config.donors, donors):
        try:
            checkpoints.check_pair(base, path)
        except ValueError as e:
            raise ConfigError(
                f"{where}: models[{d.index}] ({d.model}) is not a fine-tune of base_model ({config.base}): {e}"
            ) from None
    family, shapes = header_names(base)
    if tuple(shapes) != names:
        raise ConfigError(f"{where}: base_model ({config.base}): its tensors differ from what its config.json builds")
    return Plan(config, base, donors, family, names, layers, tuple(per_model), shared, base_weight)
