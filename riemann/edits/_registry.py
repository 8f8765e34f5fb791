"""Registry of edit operators and compact specs such as ``dare:p=0.9,k=0.5``.

An :class:`Edit` is an edit operator bound to its hyper-parameters (as optax binds a
transformation to its settings): ``edit(delta, key=..., grad=...)`` returns ``F(delta)``, and
``edit.spec`` / ``edit.to_dict()`` record exactly what was run. :func:`register` adds an
operator, user-defined ones included, after checking that its parameters carry annotations the
spec parser understands (as mergekit's method registry does).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

PyTree = Any
_SCALARS = (bool, int, float, str)
_RESERVED = {"key", "grad"}


@dataclasses.dataclass(frozen=True)
class Param:
    """One hyper-parameter of an edit: name, accepted scalar types, default (``REQUIRED`` if none)."""

    name: str
    types: tuple[type, ...]
    default: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def convert(self, value: Any, edit: str) -> Any:
        """Coerce a Python value or a spec string to this parameter's type, or raise ValueError."""
        if isinstance(value, str) and str not in self.types:
            text = value.strip()
            if text.lower() == "none" and type(None) in self.types:
                return None
            for t in self.types:
                try:
                    if t is bool:
                        low = text.lower()
                        if low in ("true", "yes", "1", "on"):
                            return True
                        if low in ("false", "no", "0", "off"):
                            return False
                        continue
                    if t is int:
                        return int(text)
                    if t is float:
                        return float(text)
                except ValueError:
                    continue
            raise ValueError(f"{edit}: {self.name}={value!r} is not {self.type_name}")
        if value is None and type(None) in self.types:
            return None
        if isinstance(value, bool) and bool not in self.types:
            raise ValueError(f"{edit}: {self.name}={value!r} is not {self.type_name}")
        if isinstance(value, int) and int not in self.types and float in self.types:
            return float(value)
        if not isinstance(value, tuple(t for t in self.types if t is not type(None))):
            raise ValueError(f"{edit}: {self.name}={value!r} is not {self.type_name}")
        return value

    @property
    def type_name(self) -> str:
        return " or ".join("None" if t is type(None) else t.__name__ for t in self.types)


@dataclasses.dataclass(frozen=True)
class EditInfo:
    """A registered edit operator and what is known about it."""

    name: str
    fn: Callable[..., PyTree]
    params: dict[str, Param]
    reference: str
    paper_class: str
    summary: str
    random: bool | Callable[[Mapping[str, Any]], bool]
    needs_grad: bool
    multi: bool
    validate: Callable[..., None] | None
    takes_key: bool
    # The change is ΔW times independent per-parameter random factors (a mask): across ΔW it is
    # noise, which riemann.Saturation's random-sign copies stand for. A flag, or a predicate of the
    # parameters (as for random).
    noise: bool | Callable[[Mapping[str, Any]], bool] = False


REGISTRY: dict[str, EditInfo] = {}


def _types_of(hint: Any) -> tuple[type, ...] | None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        out: list[type] = []
        for arg in typing.get_args(hint):
            sub = _types_of(arg)
            if sub is not None:
                out.extend(sub)
            elif typing.get_origin(arg) is not Mapping:
                return None  # e.g. ndim's tuples: the whole parameter is Python's
        # Scalars beside a mapping (DARE's per-leaf rates): a spec sets the scalar, Python either.
        return tuple(out) if out else None
    if hint is type(None) or hint in _SCALARS:
        return (hint,)
    return None


def register(
    name: str,
    *,
    reference: str,
    paper_class: str,
    random: bool | Callable[[Mapping[str, Any]], bool] = False,
    needs_grad: bool = False,
    multi: bool = False,
    validate: Callable[..., None] | None = None,
    noise: bool | Callable[[Mapping[str, Any]], bool] = False,
) -> Callable[[Callable[..., PyTree]], Callable[..., PyTree]]:
    """Decorator that registers an edit ``fn(delta, [grad,] *params, key=None, ...)``.

    Every parameter after ``delta`` (and ``grad`` when ``needs_grad``), other than ``key``, must be
    annotated with scalars (``float``, ``int``, ``bool``, ``str``, optionally ``| None``) so that
    specs can be parsed; parameters of other types (e.g. ``ndim`` tuples) are reachable from
    Python but not from specs. ``validate(**params)`` checks values before any work. ``noise``
    declares that the edit multiplies each entry of the delta by an independent random factor (a
    mask, as DARE and DELLA do), so that across the delta its change is noise; like ``random``, a
    flag or a predicate of the parameters.

    Example:
      >>> import jax
      >>> @register("halve_demo", reference="none: an example", paper_class="decreased")
      ... def halve_demo(delta, factor: float = 0.5):
      ...     return jax.tree.map(lambda x: factor * x, delta)
      >>> parse("halve_demo:factor=0.25").spec
      'halve_demo:factor=0.25'
      >>> _ = REGISTRY.pop("halve_demo")
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"edit name {name!r}: use lowercase letters, digits and underscores")
    if paper_class not in ("competitive", "decreased", "improved"):
        raise ValueError(f"paper_class={paper_class!r}; accepted: competitive, decreased, improved")

    def deco(fn: Callable[..., PyTree]) -> Callable[..., PyTree]:
        if name in REGISTRY and REGISTRY[name].fn is not fn:
            raise ValueError(f"an edit named {name!r} is already registered")
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        positional = list(sig.parameters)[: 2 if needs_grad else 1]
        params: dict[str, Param] = {}
        for pname, p in sig.parameters.items():
            if pname in positional or pname in _RESERVED:
                continue
            if pname not in hints:
                raise TypeError(f"edit {name!r}: parameter {pname!r} has no type annotation")
            ts = _types_of(hints[pname])
            if ts is None:
                continue  # Python-only parameter (not settable from a spec)
            params[pname] = Param(pname, ts, p.default)
        summary = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        REGISTRY[name] = EditInfo(
            name,
            fn,
            params,
            reference,
            paper_class,
            summary,
            random,
            needs_grad,
            multi,
            validate,
            "key" in sig.parameters,
            noise,
        )
        return fn

    return deco


@dataclasses.dataclass(frozen=True)
class Edit:
    """An edit bound to its hyper-parameters. Call it on a delta: ``edit(delta, key=..., grad=...)``."""

    name: str
    params: Mapping[str, Any]

    @property
    def info(self) -> EditInfo:
        return REGISTRY[self.name]

    @property
    def random(self) -> bool:
        """True when the result depends on the key (``register``'s ``random``: a flag, or a predicate
        of the parameters for edits that are random only in some settings)."""
        rnd = self.info.random
        return bool(rnd(self.params) if callable(rnd) else rnd)

    @property
    def needs_grad(self) -> bool:
        return self.info.needs_grad

    @property
    def noise(self) -> bool:
        """True when the change is the delta times independent per-parameter random factors, with
        any mean part along the delta itself."""
        noise = self.info.noise
        return bool(noise(self.params) if callable(noise) else noise)

    @property
    def spec(self) -> str:
        """Canonical spec string, parameters in signature order: ``dare:p=0.9,k=0.5``."""
        order = [p for p in self.info.params if p in self.params]
        body = ",".join(f"{p}={_fmt(self.params[p])}" for p in order)
        return f"{self.name}:{body}" if body else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "spec": self.spec}

    def __call__(self, delta: PyTree, *, key: Any = None, grad: PyTree = None) -> PyTree:
        info = self.info
        kwargs = dict(self.params)
        if info.takes_key:
            kwargs["key"] = key
        if info.needs_grad:
            if grad is None:
                raise ValueError(f"{self.spec}: this edit needs grad= (∇L at W_post, shaped like delta)")
            return info.fn(delta, grad, **kwargs)
        if info.multi:
            deltas = delta if isinstance(delta, (list, tuple)) else [delta]
            return info.fn(deltas, **kwargs)
        return info.fn(delta, **kwargs)

    def __hash__(self) -> int:
        return hash(self.spec)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def make(name: str, **params: Any) -> Edit:
    """Bind a registered edit to its parameters, checking names, types and ranges now.

    Example:
      >>> make("dare", p=0.9, k=0.5).spec
      'dare:p=0.9,k=0.5'
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown edit {name!r}; registered edits: {', '.join(sorted(REGISTRY))}")
    info = REGISTRY[name]
    unknown = [p for p in params if p not in info.params]
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; accepted: {', '.join(info.params)}")
    bound = {p: info.params[p].convert(v, name) for p, v in params.items()}
    missing = [p for p, spec in info.params.items() if spec.required and p not in bound]
    if missing:
        raise ValueError(f"{name}: missing required parameter(s) {missing}")
    if info.validate is not None:
        info.validate(**bound)
    return Edit(name, types.MappingProxyType(bound))


def parse(spec: str) -> Edit:
    """Parse a compact spec ``name:param=value,param=value`` (e.g. ``dare:p=0.9,k=0.5``,
    ``bitdelta:magnitude_bits=2``, ``expo:alpha=-0.3``) into an :class:`Edit`.

    Example:
      >>> e = parse("dare:p=0.9, k=0.5")
      >>> e.spec, e.random
      ('dare:p=0.9,k=0.5', True)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"edit spec must be a non-empty string like 'dare:p=0.9,k=0.5', got {spec!r}")
    name, _, body = spec.strip().partition(":")
    params: dict[str, str] = {}
    if body.strip():
        for item in body.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"edit spec {spec!r}: {item.strip()!r} is not of the form param=value")
            if key.strip() in params:
                raise ValueError(f"edit spec {spec!r}: parameter {key.strip()!r} given twice")
            params[key.strip()] = value.strip()
    return make(name.strip(), **params)
