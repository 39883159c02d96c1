"""Checks applied when a plugin registers an item: wrong shapes of plugin code
are rejected at registration with an error naming the plugin, the item and the
problem, not deep inside a training run."""
from __future__ import annotations

import inspect
from typing import Any

from .hparams import HParam
from .rules import CurvatureEstimator, Stepper


class PluginError(ValueError):
    pass


def _fail(kind: str, name: str, plugin: str, problem: str) -> None:
    raise PluginError(f"plugin {plugin!r}: {kind} {name!r} rejected: {problem}")


def _check_method(kind, name, plugin, cls, method: str, required: list[str]) -> None:
    fn = getattr(cls, method, None)
    if fn is None or not callable(fn):
        _fail(kind, name, plugin, f"missing method {method}()")
    base = {"estimator": CurvatureEstimator, "stepper": Stepper}[kind]
    if fn is getattr(base, method):
        _fail(kind, name, plugin, f"does not implement {method}()")
    params = list(inspect.signature(fn).parameters)
    missing = [r for r in required if r not in params]
    if missing:
        _fail(kind, name, plugin, f"{method}{inspect.signature(fn)} lacks argument(s) {missing}; "
              f"expected {method}({', '.join(required)}, ...)")


def _check_hparams(kind, name, plugin, cls) -> None:
    hp = getattr(cls, "hparams", None)
    if not isinstance(hp, dict) or not all(isinstance(v, HParam) for v in hp.values()):
        _fail(kind, name, plugin, "hparams must be a dict of optlab.hparams.HParam")


def validate_item(kind: str, name: str, item: Any, plugin: str) -> None:
    if kind == "estimator":
        if not (inspect.isclass(item) and issubclass(item, CurvatureEstimator)):
            _fail(kind, name, plugin, "must be a subclass of optlab.CurvatureEstimator")
        _check_hparams(kind, name, plugin, item)
        _check_method(kind, name, plugin, item, "estimate", ["self", "ctx", "indices", "group", "generator"])
    elif kind == "stepper":
        if not (inspect.isclass(item) and issubclass(item, Stepper)):
            _fail(kind, name, plugin, "must be a subclass of optlab.Stepper")
        _check_hparams(kind, name, plugin, item)
        _check_method(kind, name, plugin, item, "step", ["self", "params", "grads", "states", "group"])
    elif kind in ("preset", "baseline"):
        if not callable(item):
            _fail(kind, name, plugin, "must be callable as fn(model, **hparams)")
        params = list(inspect.signature(item).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            _fail(kind, name, plugin, "first argument must be the model: fn(model, **hparams)")
    elif not callable(item):
        _fail(kind, name, plugin, "must be callable")
