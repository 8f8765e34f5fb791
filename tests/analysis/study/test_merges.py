"""mergekit configurations: parameters mean what mergekit's own resolver makes of them, and every
refusal comes from the YAML or the headers, before any weights are read."""

import shutil
import warnings

import pytest
import yaml

from analysis.study import merges
from tests.analysis.merge_helpers import garble, make_models

pytestmark = pytest.mark.isolated  # a child pytest process (tests/conftest.py)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = make_models(tmp_path_factory.mktemp("merge-models"))
    for d in ("base", "ft0", "ft1", "ft2"):  # headers intact, weights garbage: nothing here may read them
        garble(root / d)
    return root


def _mergekit():
    """mergekit's config, method registry and parameter resolver (importing it warns about NumPy
    internals that torch touches: not ours to fix)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mergekit.config import MergeConfiguration
        from mergekit.merge_methods import registry
        from mergekit.parameter_resolver import resolve_parameter
    return MergeConfiguration, registry, resolve_parameter


def _config(root, method="ties", **extra):
    return {
        "merge_method": method,
        "base_model": str(root / "base"),
        "models": [
            {"model": str(root / "ft0"), "parameters": {"weight": 0.5, "density": 0.5}},
            {"model": str(root / "ft1"), "parameters": {"weight": 0.5, "density": 0.5}},
        ],
        **extra,
    }


GRADIENT_YAML = """
merge_method: della
base_model: BASE
models:
  - model: FT0
    parameters:
      weight: [0, 0.3, 0.7, 1]
      density:
        - filter: self_attn
          value: [0.2, 0.9]
        - filter: mlp
          value: 0.4
      epsilon: 0.05
  - model: FT1
    parameters:
      weight:
        - filter: lm_head
          value: 2
        - value: [1, 0]
parameters:
  density: 0.75
  lambda: 1.5
  normalize: false
  rescale: true
"""


@pytest.mark.isolated  # imports mergekit: a child process (tests/conftest.py)
def test_parameters_resolve_as_mergekit_resolves_them(models):
    """Gradients over layers, filters by substring and the fallback to the top-level parameters, on
    every tensor of the checkpoint, against mergekit 0.1.5's own ``resolve_parameter``."""
    MergeConfiguration, registry, resolve_parameter = _mergekit()
    text = GRADIENT_YAML.replace("BASE", str(models / "base"))
    text = text.replace("FT0", str(models / "ft0")).replace("FT1", str(models / "ft1"))
    plan = merges.check(merges.read(yaml.safe_load(text)))
    theirs = MergeConfiguration.model_validate(yaml.safe_load(text))
    spec = {p.name: p for p in registry.get("della").spec.parameters}
    assert plan.layers == 2
    checked = 0
    for j, model in enumerate(theirs.models):
        for name in plan.names:
            # mergekit's planner: t = i/(L − 1) inside layer i, 0 for tensors outside the layers.
            t = int(name.split("layers.")[1].split(".")[0]) / (plan.layers - 1) if "layers." in name else 0
            for p in ("weight", "density", "epsilon"):
                want = resolve_parameter(spec[p], (model.parameters, theirs.parameters), tensor_name=name, t=t)
                assert plan.per_model[j][p][name] == pytest.approx(want, abs=1e-12), (j, p, name)
                checked += 1
    assert checked == 2 * 3 * len(plan.names)
    for p in ("lambda", "normalize", "rescale", "int8_mask"):
        want = resolve_parameter(spec[p], (theirs.parameters,), tensor_name=plan.names[0], t=0)
        assert plan.shared[p] == want
    # A few values spelled out: the gradient's ends, a filtered gradient, the top-level fallback.
    w0, d0, w1 = plan.per_model[0]["weight"], plan.per_model[0]["density"], plan.per_model[1]["weight"]
    assert w0["model.layers.0.mlp.up_proj.weight"] == 0 and w0["model.layers.1.mlp.up_proj.weight"] == 1
    assert w0["lm_head.weight"] == 0  # outside the layers: t = 0
    assert d0["model.layers.1.self_attn.q_proj.weight"] == pytest.approx(0.9)
    assert d0["model.layers.0.mlp.down_proj.weight"] == 0.4 and d0["model.norm.weight"] == 0.75
    assert w1["lm_head.weight"] == 2 and w1["model.layers.1.input_layernorm.weight"] == 0
    kw = plan.kwargs()
    assert kw["lambda_"] == 1.5 and kw["normalize"] is False and len(kw["weight"]) == 2
    assert kw["weight"][0]("model.layers.1.mlp.up_proj.weight") == 1


@pytest.mark.isolated  # imports mergekit: a child process (tests/conftest.py)
def test_method_table_is_mergekits():
    _, registry, _ = _mergekit()

    for name, spec in merges.SPECS.items():
        theirs = {p.name: p for p in registry.get(name).spec.parameters}
        ours = {**spec.per_model, **spec.shared}
        assert set(theirs) == set(ours), name
        for p, default in spec.shared.items():
            assert theirs[p].default == default, (name, p)
        for p, default in spec.per_model.items():
            if default is not None:
                assert theirs[p].default == default, (name, p)


def test_the_merge_engine_merges_every_method_read():
    merge = pytest.importorskip("riemann.edits.merge")
    assert set(merges.SPECS) == set(merge.METHODS)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"slices": []}, "'slices' is not supported"),
        ({"merge_method": "passthrough"}, "'passthrough'"),
        ({"merge_method": "slerp"}, "merge_method 'slerp' is not supported; accepted: linear, task_arithmetic"),
        ({"merge_metod": "ties"}, "unknown key(s) ['merge_metod']; accepted: models"),
        ({"base_model": None}, "base_model is missing"),
        ({"models": []}, "'models' must be a non-empty list"),
        ({"tokenizer_source": "union"}, "tokenizer_source 'union'"),
        ({"tokenizer": {"source": "base"}}, "'tokenizer' (vocabulary surgery)"),
        ({"dtype": "float8"}, "dtype 'float8'; accepted: float32, bfloat16, float16"),
        ({"out_dtype": "float16"}, "out_dtype 'float16' differs from dtype None"),
        ({"random_seed": -1}, "random_seed -1"),
        ({"parameters": {"gamma": 0.1}}, "parameters.gamma: ties takes no parameter 'gamma'; accepted: weight,"),
        ({"parameters": {"normalize": 1.5}}, "parameters.normalize: 1.5 is not true or false"),
        ({"parameters": {"density": [{"filter": "mlp", "vale": 1}]}}, "a conditional takes 'value'"),
    ],
)
def test_configs_are_refused_naming_the_key(models, change, message):
    cfg = {k: v for k, v in {**_config(models), **change}.items() if v is not None}
    with pytest.raises(merges.ConfigError) as e:
        merges.check(merges.read(cfg, source="c.yml"))
    assert message in str(e.value) and str(e.value).startswith("c.yml: ")


def test_model_level_refusals(models):
    cfg = _config(models)
    cfg["models"][1]["parameters"] = {"weight": 1, "lambda": 2}
    with pytest.raises(merges.ConfigError, match=r"models\[1\]\.parameters\.lambda: 'lambda' is a shared parameter"):
        merges.read(cfg)
    cfg = _config(models)
    cfg["models"].append({"model": str(models / "ft0") + "/"})
    with pytest.raises(merges.ConfigError, match=r"models\[2\] .* repeats models\[0\]"):
        merges.read(cfg)
    cfg = _config(models)
    cfg["models"][1] = {"model": str(models / "nope"), "parameters": {"weight": 1}}
    with pytest.raises(merges.ConfigError, match=r"models\[1\] '.*nope'"):
        merges.check(merges.read(cfg))
    cfg = _config(models)
    cfg["models"][1]["parameters"] = {"density": 0.3}  # weight is required, as in mergekit
    with pytest.raises(merges.ConfigError, match=r"parameter 'weight' has no value for tensor"):
        merges.check(merges.read(cfg))
    cfg = _config(models)
    cfg["models"][1]["parameters"]["weight"] = [{"filter": "mlp", "value": 1}]  # no match elsewhere, no fallback
    with pytest.raises(merges.ConfigError, match=r"models\[1\].*'weight' has no value for tensor lm_head.weight"):
        merges.check(merges.read(cfg))
    # Ranges mergekit refuses or fails on, per tensor, naming the key, the model and the tensor.
    cfg = _config(models, "della")
    cfg["models"][1]["parameters"] = {"weight": 1, "density": [{"filter": "mlp", "value": 0.1}, {"value": 0.5}]}
    with pytest.raises(
        merges.ConfigError,
        match=r"models\[1\]\.parameters\.density of models\[1\] .*tensor model\.layers\.0\.mlp\..*: .*epsilon=0\.15 "
        r"with density=0\.1 for 'della': density ± epsilon must lie in \(0, 1\)",
    ):
        merges.check(merges.read(cfg))
    cfg = _config(models, "dare_ties")
    cfg["models"][0]["parameters"]["density"] = -0.1
    refused = r"models\[0\]\.parameters\.density .*density=-0\.1 for 'dare_ties': DARE keeps each entry"
    with pytest.raises(merges.ConfigError, match=refused):
        merges.check(merges.read(cfg))


SHARED_PER_TENSOR_YAML = """
merge_method: ties
base_model: BASE
models:
  - model: FT0
    parameters: {weight: 0.7, density: 0.5}
  - model: FT1
    parameters: {weight: 0.4, density: 0.6}
parameters:
  lambda:
    - filter: mlp
      value: [0.5, 1.5]
    - value: 1.2
  normalize:
    - filter: self_attn
      value: false
    - value: true
"""


@pytest.mark.isolated  # imports mergekit: a child process (tests/conftest.py)
def test_shared_parameters_per_tensor_resolve_as_mergekit_resolves_them(models):
    """``lambda`` and ``normalize`` varying by filter and layer: mergekit accepts them; the plan
    passes one callable of the leaf name to the engine, equal to mergekit's resolution per tensor."""
    MergeConfiguration, registry, resolve_parameter = _mergekit()
    text = SHARED_PER_TENSOR_YAML.replace("BASE", str(models / "base"))
    text = text.replace("FT0", str(models / "ft0")).replace("FT1", str(models / "ft1"))
    plan = merges.check(merges.read(yaml.safe_load(text)))
    theirs = MergeConfiguration.model_validate(yaml.safe_load(text))
    spec = {p.name: p for p in registry.get("ties").spec.parameters}
    kw = plan.kwargs()
    assert callable(kw["lambda_"]) and callable(kw["normalize"]) and kw["rescale"] is False
    for name in plan.names:
        t = int(name.split("layers.")[1].split(".")[0]) / (plan.layers - 1) if "layers." in name else 0
        for p, ours in (("lambda", kw["lambda_"]), ("normalize", kw["normalize"])):
            want = resolve_parameter(spec[p], (theirs.parameters,), tensor_name=name, t=t)
            assert ours(name) == pytest.approx(want, abs=1e-12), (p, name)
    assert kw["lambda_"]("model.layers.1.mlp.up_proj.weight") == 1.5 and kw["lambda_"]("lm_head.weight") == 1.2
    assert plan.record()["resolved"]["shared"]["lambda"]["max"] == 1.5


def test_hub_models_are_located_config_only_before_any_weights(models, monkeypatch):
    """Every model is located config-only and every config-level refusal (architecture, parameter
    ranges) comes before the first resolution with weights (which, for a Hub id, downloads them)."""
    from analysis.hf import hub

    calls = []
    real = hub.resolve

    def spy(ref, *, weights=True):
        calls.append((str(ref), weights))
        return real(ref, weights=weights)

    monkeypatch.setattr(hub, "resolve", spy)
    cfg = _config(models, "della")
    cfg["models"][1]["parameters"] = {"weight": 1, "density": 0.9, "epsilon": 0.2}
    with pytest.raises(merges.ConfigError, match="epsilon=0.2 with density=0.9"):
        merges.check(merges.read(cfg))
    assert calls and not any(w for _, w in calls)
    assert {r for r, _ in calls} >= {str(models / "base"), str(models / "ft0"), str(models / "ft1")}
    calls.clear()
    merges.check(merges.read(_config(models)))
    first = next(i for i, (_, w) in enumerate(calls) if w)
    assert {r for r, _ in calls[:first]} >= {str(models / "base"), str(models / "ft0"), str(models / "ft1")}


def test_other_architectures_are_refused_from_headers(models, tmp_path):
    from analysis.hf import checkpoints
    from analysis.pairs.workbench import corpus
    from tests.analysis.helpers import llama

    wide = checkpoints.save(
        tmp_path / "wide",
        checkpoints.from_config({**llama(corpus.byte_tokenizer().get_vocab_size()), "intermediate_size": 48}),
    )
    garble(wide)
    cfg = _config(models)
    cfg["models"][1]["model"] = str(wide)
    with pytest.raises(merges.ConfigError, match=r"models\[1\] .* is not a fine-tune of base_model .* differ at"):
        merges.check(merges.read(cfg))
    bad = tmp_path / "vit"
    shutil.copytree(models / "ft1", bad)
    (bad / "config.json").write_text('{"model_type": "gpt2"}')
    cfg["models"][1]["model"] = str(bad)
    with pytest.raises(merges.ConfigError, match=r"unknown architecture model_type='gpt2'"):
        merges.check(merges.read(cfg))


def test_the_base_among_the_models_is_what_mergekit_makes_of_it(models):
    cfg = _config(models)
    cfg["models"].insert(0, {"model": str(models / "base"), "parameters": {"weight": 7}})
    c = merges.read(cfg)
    # Task-arithmetic family: only non-base models are merged; the listed base is no donor.
    assert c.base_listed and not c.base_input
    assert [d.model for d in c.donors] == [str(models / "ft0"), str(models / "ft1")]
    pair = [cfg["models"][0], {"model": str(models / "ft0"), "parameters": {"weight": 1}}]
    lin = merges.check(merges.read({**cfg, "merge_method": "linear", "models": pair}))
    assert lin.base_weight is not None and set(lin.base_weight.values()) == {7.0}
    assert len(lin.kwargs()["weight"]) == 2  # ft0 and the base as an input
    with pytest.raises(merges.ConfigError, match="merges base_model .* as one more input"):
        merges.check(merges.read({**cfg, "merge_method": "linear", "models": pair[1:]}))
    only_base = {**cfg, "models": cfg["models"][:1]}
    with pytest.raises(merges.ConfigError, match="lists no model besides the base"):
        merges.read(only_base)


def test_yaml_files_are_read(tmp_path, models):
    f = tmp_path / "m.yml"
    f.write_text(yaml.safe_dump(_config(models, random_seed=3, dtype="float32", tokenizer_source="base")))
    c = merges.read(f)
    assert c.random_seed == 3 and c.dtype == "float32" and c.tokenizer_source == "base" and c.source == str(f)
    (tmp_path / "bad.yml").write_text("models: [")
    with pytest.raises(merges.ConfigError, match="not valid YAML"):
        merges.read(tmp_path / "bad.yml")
