"""Checks applied when a plugin registers an item: wrong shapes of plugin code
are rejected at registration with an error naming the plugin, the item and the
problem, not deep inside a training run."""

from __future__ import annotations

import inspect
from typing import Any

from optlab.optim.hparams import HParam
from optlab.optim.rules import CurvatureEstimator, EstimateError, Schedule, Stepper, check_estimate, check_requires


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
        _fail(
            kind,
            name,
            plugin,
            f"{method}{inspect.signature(fn)} lacks argument(s) {missing}; "
            f"expected {method}({', '.join(required)}, ...)",
        )


def _check_hparams(kind, name, plugin, cls) -> None:
    hp = getattr(cls, "hparams", None)
    if not isinstance(hp, dict) or not all(isinstance(v, HParam) for v in hp.values()):
        _fail(kind, name, plugin, "hparams must be a dict of optlab.optim.hparams.HParam")


def _check_requires(kind, name, plugin, cls) -> dict[str, str]:
    try:
        return check_requires(getattr(cls, "requires", {}))
    except ValueError as exc:
        _fail(kind, name, plugin, f"requires: {exc}")
        raise  # unreachable


def _smoke_estimator(name: str, plugin: str, cls) -> None:
    """Run the estimator once on a tiny float64 MLP+BatchNorm problem, under the engine and
    closure it declares in ``requires`` (default: ``autograd``, a closure returning the loss only)."""
    import torch

    from optlab.optim.hvp import get_engine
    from optlab.optim.selectors import by_predicate, is_norm_affine

    from .kit_problems import make_problem

    requires = _check_requires("estimator", name, plugin, cls)
    pb = make_problem("mlp_bn1d")
    names, params = pb.params(by_predicate(is_norm_affine, "norm"))
    closure = pb.closure if requires.get("closure") == "loss_outputs" else pb.loss
    ctx = get_engine(requires.get("engine", "autograd")).context(
        model=pb.model, closure=closure, params=params, names=names
    )
    hp = {k: v.default for k, v in cls.hparams.items()}
    try:
        out = cls().estimate(ctx, [0, 1], hp, torch.Generator().manual_seed(0))
    except Exception as exc:
        hint = (
            "; if it reads the model outputs, declare requires = {'closure': 'loss_outputs'}"
            if "outputs" in str(exc) and "closure" not in requires
            else ""
        )
        _fail("estimator", name, plugin, f"estimate() raised {type(exc).__name__}: {exc}{hint}")
    try:
        check_estimate(out, [0, 1], params, names)
    except EstimateError as exc:
        _fail("estimator", name, plugin, f"{exc} (on a tiny float64 test problem)")


def _smoke_stepper(name: str, plugin: str, cls) -> None:
    """One step on two float64 tensors with a gradient (and a positive curvature)."""
    import torch

    _check_requires("stepper", name, plugin, cls)
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)]
    before = [p.clone() for p in params]
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    curv = [torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.1 for p in params]
    group = {k: v.default for k, v in cls.hparams.items()}
    group.setdefault("lr", 0.1)
    try:
        extra: dict = {"loss": torch.tensor(1.0, dtype=torch.float64)} if getattr(cls, "needs_loss", False) else {}
        if getattr(cls, "needs_schedule", False):
            extra["schedule"] = Schedule(1, "round_robin", period=len(params))
        cls().step(params, grads, [{} for _ in params], group, curvature=curv, rule_step=1, **extra)
    except Exception as exc:
        _fail("stepper", name, plugin, f"step() raised {type(exc).__name__}: {exc}")
    for p, b in zip(params, before):
        if p.dtype != torch.float64 or p.shape != b.shape:
            _fail("stepper", name, plugin, f"step() changed a parameter to {p.dtype} {tuple(p.shape)}; update in place")
        if not torch.isfinite(p).all():
            _fail("stepper", name, plugin, "step() produced non-finite parameters on a tiny test problem")


def check_item(kind: str, name: str, item: Any, plugin: str) -> None:
    """Registration checks of one plugin item (its base class, declared hyperparameters, method
    signatures; a third-party part also runs once on a tiny problem): a failure raises :class:`PluginError`."""
    if kind == "estimator":
        if not (inspect.isclass(item) and issubclass(item, CurvatureEstimator)):
            _fail(kind, name, plugin, "must be a subclass of optlab.CurvatureEstimator")
        _check_hparams(kind, name, plugin, item)
        _check_method(kind, name, plugin, item, "estimate", ["self", "ctx", "indices", "group", "generator"])
        if plugin != "builtins":  # built-ins are covered by the test suite; third-party items run once here
            _smoke_estimator(name, plugin, item)
    elif kind == "stepper":
        if not (inspect.isclass(item) and issubclass(item, Stepper)):
            _fail(kind, name, plugin, "must be a subclass of optlab.Stepper")
        _check_hparams(kind, name, plugin, item)
        _check_method(
            kind,
            name,
            plugin,
            item,
            "step",
            ["self", "params", "grads", "states", "group"]
            + (["loss"] if getattr(item, "needs_loss", False) else [])
            + (["schedule"] if getattr(item, "needs_schedule", False) else []),
        )
        if plugin != "builtins":
            _smoke_stepper(name, plugin, item)
    elif kind in ("preset", "baseline"):
        if not callable(item):
            _fail(kind, name, plugin, "must be callable as fn(model, **hparams)")
        params = list(inspect.signature(item).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            _fail(kind, name, plugin, "first argument must be the model: fn(model, **hparams)")
    elif kind in ("executor", "sink"):
        method, shape = {
            "executor": ("run", "run(root, trials, threads) yielding (trial_id, status)"),
            "sink": ("write", "write(record) and close()"),
        }[kind]
        if not inspect.isclass(item) or not callable(getattr(item, method, None)):
            _fail(kind, name, plugin, f"must be a class with {shape}")
        if kind == "sink" and not callable(getattr(item, "close", None)):
            _fail(kind, name, plugin, f"must be a class with {shape}")
    elif not callable(item):
        _fail(kind, name, plugin, "must be callable")
