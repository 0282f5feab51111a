"""Model registry: every architecture of the four papers plus baselines.

>>> from napari_resolve import models
>>> net = models.build("gp", scale=4)
>>> [m.name for m in models.available()]

One module per paper (``geometry_prior``, ``pathsrgan``, ``mhtcun``, ``srseg``)
and ``baselines``; shared layers live in ``blocks``. A registry name is an
architecture plus default config (``mhtcun-lite`` is ``MHTCUN`` with small
channels); :func:`build` records the name and full config on the model so that
:mod:`napari_resolve.bundle` can rebuild it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from napari_resolve.errors import ResolveError
from napari_resolve.models.base import SRModel, count_parameters

__all__ = ["SRModel", "ModelInfo", "available", "build", "full_config", "register", "count_parameters"]


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[..., SRModel]
    paper: str
    description: str
    defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    paper: str
    description: str
    parameters: int
    defaults: dict


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, paper: str, description: str, **defaults):
    """Class/function decorator adding ``name`` (with ``defaults``) to the registry.

    Stack it to register several configs of one class.
    """

    def deco(factory):
        if name in _REGISTRY:
            raise RuntimeError(f"model name registered twice: {name}")
        _REGISTRY[name] = _Entry(name, factory, paper, description, dict(defaults))
        return factory

    return deco


_MODULES = ("baselines", "geometry_prior", "mhtcun", "pathsrgan", "srseg")


@lru_cache(maxsize=None)
def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"napari_resolve.models.{mod}")


def _entry(name: str) -> _Entry:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ResolveError(f"unknown model {name!r}; available: {known}") from None


def build(name: str, **config) -> SRModel:
    """Build registry model ``name``; ``config`` overrides its defaults."""
    entry = _entry(name)
    full = {**entry.defaults, **config}
    params = inspect.signature(entry.factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(full) - set(params))
        if unknown:
            raise ResolveError(f"model {name!r} has no option(s) {', '.join(unknown)}")
    try:
        model = entry.factory(**full)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ResolveError):
            raise
        raise ResolveError(f"cannot build model {name!r} with {full}: {exc}") from exc
    model.arch = name
    # record every constructor argument, defaults included, so the bundle is self-contained
    model.config = full_config(name, **config)
    return model


def full_config(name: str, **config) -> dict:
    """The config :func:`build` records for ``config``: every constructor argument, defaults
    included (so a bundle written before an option existed reads as that option's default)."""
    entry = _entry(name)
    bound = {
        k: p.default
        for k, p in inspect.signature(entry.factory).parameters.items()
        if p.default is not inspect.Parameter.empty and k != "self"
    }
    return {**bound, **entry.defaults, **config}


@lru_cache(maxsize=None)
def _param_count(name: str) -> int:
    return count_parameters(build(name))


def available() -> list[ModelInfo]:
    """All registered models with the parameter count of their default config."""
    _load_all()
    return [
        ModelInfo(e.name, e.paper, e.description, _param_count(e.name), dict(e.defaults))
        for e in sorted(_REGISTRY.values(), key=lambda e: e.name)
    ]


def info(name: str) -> ModelInfo:
    e = _entry(name)
    return ModelInfo(e.name, e.paper, e.description, _param_count(name), dict(e.defaults))
