"""The user-facing entry points: build optimizers from registered presets."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .optim.hparams import PART_DEFAULT, unknown_name
from .optim.optimizer import RuleOptimizer
from .optim.rules import CurvatureEstimator, Rule, Stepper
from .optim.selectors import Selector, named_parameters_with_owner
from .plugin import registry

__all__ = [
    "OptimizerEntry",
    "optimizer_entry",
    "optimizer",
    "explain",
    "selector",
    "estimator",
    "stepper",
    "preset_rules",
    "preset_hparams",
    "optimizer_names",
]


def selector(name: str, *args, **options) -> Selector:
    """A registered selector, e.g. ``selector("regex", r"^fc\\.")``; ``name`` may be qualified
    (``"builtins:regex"``)."""
    return registry.get("selector", name)(*args, **options)


def estimator(name: str) -> CurvatureEstimator:
    """A registered curvature estimator, by short or qualified name (``"fisher:empirical_fisher_diag"``)."""
    return registry.get("estimator", name)()


def stepper(name: str) -> Stepper:
    """A registered stepper, by short or qualified name (``"fisher:levenberg_newton"``)."""
    return registry.get("stepper", name)()


#: the registry kinds an optimizer name is looked up in (together: a preset and a baseline sharing a
#: short name are ambiguous like two presets)
OPTIMIZER_KINDS = ("preset", "baseline")

#: the ways a training loop may hand the loss to an optimizer (see :mod:`optlab.optim.closures`)
CLOSURE_STYLES = ("forward-only", "torch-standard", "backward-first")


@dataclass(frozen=True)
class OptimizerEntry:
    """Everything the api, the grid and the runner need to know about one optimizer name.

    ``kind``: ``"preset"`` (``builder(model, **hparams) -> list[Rule]``, run by a
    :class:`RuleOptimizer`) or ``"baseline"`` (``builder(model, **hparams) ->
    torch.optim.Optimizer``, given optlab's step styles by :func:`optlab.optim.closures.closure_mix_in`).
    ``hparams``: the declared keyword hyperparameters with their defaults
    (``inspect.Parameter.empty`` for one without default); ``open_hparams``: the builder
    also forwards other names to the parts it builds (a preset's estimator options), checked
    when the rules are resolved. Step protocol: ``create_graph`` -- every step reads ``p.grad``
    built with a double-backward graph (AdaHessian-like baselines; presets build what they need
    themselves); ``closure_styles`` -- every optimizer serves all of :data:`CLOSURE_STYLES`;
    ``takes_engine`` -- ``engine=`` and ``seed=`` apply (presets' HVP engine and estimator seed).
    """

    name: str
    kind: Literal["preset", "baseline"]
    builder: Any
    plugin: str
    hparams: dict[str, Any]
    open_hparams: bool
    create_graph: bool
    closure_styles: tuple[str, ...] = CLOSURE_STYLES

    @property
    def takes_engine(self) -> bool:
        return self.kind == "preset"

    @property
    def defaults(self) -> dict[str, Any]:
        """The declared hyperparameters that have a default."""
        return {k: v for k, v in self.hparams.items() if v is not inspect.Parameter.empty}

    def check_names(self, hparams: dict) -> None:
        """Unknown hyperparameter names raise a ``TypeError`` naming the valid ones."""
        if self.open_hparams:
            return  # validated later against the rules' declared hyperparameters
        for k in hparams:
            if k not in self.hparams:
                raise TypeError(f"{self.name}: " + unknown_name("hyperparameter", k, list(self.hparams)))


def optimizer_entry(name: str) -> OptimizerEntry:
    """The registry entry of preset or baseline ``name`` (short, or qualified ``<plugin>:<name>``);
    an unknown name lists the valid ones, an ambiguous short name lists the qualified choices."""
    known = {e.name for e in registry.entries(OPTIMIZER_KINDS)}
    if isinstance(name, str) and registry.SEP not in name and name not in known:
        raise registry.RegistryError(unknown_name("optimizer", name, optimizer_names()))
    entry = registry.entry(OPTIMIZER_KINDS, name, what="optimizer")
    params = list(inspect.signature(entry.item).parameters.values())[1:]
    declared = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return OptimizerEntry(
        name=name,
        kind="preset" if entry.kind == "preset" else "baseline",
        builder=entry.item,
        plugin=entry.plugin,
        hparams={
            k: _part_default(name, entry.item, k, entry.plugin) if v is PART_DEFAULT else v for k, v in declared.items()
        },
        open_hparams=any(p.kind == p.VAR_KEYWORD for p in params),
        create_graph=bool(getattr(entry.item, "create_graph", False)),
    )


def _part_default(name: str, builder, key: str, plugin: str | None = None) -> Any:
    """The default that the first part named in ``builder.defaults_from`` declares for ``key``."""
    parts = getattr(builder, "defaults_from", ())
    for kind, part in parts:
        with registry.owned_by(plugin):
            spec = getattr(registry.get(kind, part), "hparams", {}).get(key)
        if spec is not None:
            return spec.default
    where = ", ".join(f"{kind} {part!r}" for kind, part in parts) or "none (no @defaults_from)"
    raise registry.RegistryError(
        f"{name}: {key}=PART_DEFAULT, but no part it takes defaults from declares {key!r} (parts: {where})"
    )


def preset_hparams(name: str) -> dict[str, Any]:
    """The keyword hyperparameters of a preset or baseline with their defaults."""
    return dict(optimizer_entry(name).hparams)


def optimizer_names() -> list[str]:
    """Presets and baselines: short names, and qualified ones where several plugins share a short name."""
    return registry.names(OPTIMIZER_KINDS)


def preset_rules(name: str, model: nn.Module, **hparams) -> list[Rule]:
    entry = optimizer_entry(name)
    if entry.kind != "preset":
        raise ValueError(f"{name!r} is a baseline optimizer, not a preset built from rules")
    entry.check_names(hparams)
    with registry.owned_by(entry.plugin):
        rules = entry.builder(model, **hparams)
    _check_forwarded(entry, rules, hparams)
    return rules


def _check_forwarded(entry: OptimizerEntry, rules: list[Rule], hparams: dict) -> None:
    """A name the preset does not declare must be declared by a part of one of its rules (the
    preset forwards it there). If none does, say which registered parts own it and how to pick one."""
    for k in hparams:
        if k in entry.hparams or any(k in r.owners() for r in rules):
            continue
        used = sorted({r.curvature.name for r in rules if r.curvature is not None})
        owners = [
            (kind, n)
            for kind in ("estimator", "stepper")
            for n, e in sorted(registry.items(kind).items())
            if k in getattr(e.item, "hparams", {})
        ]
        if not owners:  # valid: the preset's own names and those of the parts it forwarded k to
            parts = [dict(r.stepper.hparams, **(r.curvature.hparams if r.curvature else {})) for r in rules]
            forwarded = {n for r, p in zip(rules, parts) if k in r.hparams for n in p}
            valid = sorted(set(entry.hparams) | forwarded)
            raise TypeError(f"{entry.name}: " + unknown_name("hyperparameter", k, valid))
        (kind, first), others = owners[0], owners[1:]
        also = f" (and {', '.join(f'{kd} {n!r}' for kd, n in others)})" if others else ""
        uses = f" with estimator {', '.join(map(repr, used))}" if used else ""
        if kind == "estimator" and kind in entry.hparams:
            how = f"pick one: {kind}={first!r} (command line: --hp {kind}={first}), or drop {k}"
        else:
            how = f"{entry.name} has no part that takes it; drop {k}"
        raise TypeError(f"{entry.name}{uses} has no hyperparameter {k!r}: {k} belongs to {kind} {first!r}{also}; {how}")


def optimizer(
    name: str,
    model: nn.Module,
    *,
    engine: str = "autograd",
    seed: int | None = None,
    max_grad_norm: float | None = None,
    process_group=None,
    **hparams,
) -> torch.optim.Optimizer:
    """``optlab.optimizer("sgd-ph", model, lr=0.1, ...)``: a real ``torch.optim.Optimizer``.

    Presets (built from rules) return a :class:`RuleOptimizer`; baselines return
    their plugin's optimizer, given the same step styles (forward-only closure,
    torch-standard closure, backward-first; see :mod:`optlab.optim.closures`).
    ``model`` may be ``DistributedDataParallel`` (see :mod:`optlab.optim.ddp`).
    ``engine`` picks the HVP engine (``"autograd"`` or ``"func"``); ``seed`` seeds
    stochastic estimators; ``max_grad_norm`` clips the gradient norm before the
    update (``opt.last_grad_norm`` is the norm before clipping).
    """
    if not isinstance(name, str):
        raise TypeError(
            f"optlab.optimizer: the first argument is the optimizer's name, a string such as "
            f"'sgd-ph'; got {type(name).__name__} {name!r}. Valid: {', '.join(optimizer_names())}."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"optlab.optimizer needs the nn.Module whose parameters it optimizes; got {type(model).__name__}"
        )
    entry = optimizer_entry(name)
    entry.check_names(hparams)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"{name}: {type(_unwrapped(model)).__name__} has no trainable parameter (none with "
            "requires_grad=True); there is nothing to optimize"
        )
    if entry.kind == "baseline":
        _check_baseline_hparams(name, hparams)
        from .optim.closures import closure_mix_in
        from .optim.ddp import unwrap

        module, ddp = unwrap(model)
        if entry.create_graph and ddp is not None:
            raise NotImplementedError(
                f"{name} reads a double-backward graph from p.grad on every step, which DistributedDataParallel "
                "cannot carry. Use an optlab preset instead (e.g. 'adahessian', 'sophia'): they average "
                "gradients and curvature over ranks themselves."
            )
        if process_group is not None:
            raise ValueError(
                f"{name}: process_group applies to optlab presets only; a baseline under DDP "
                "relies on DDP's own gradient averaging."
            )
        with registry.owned_by(entry.plugin):
            opt = entry.builder(module, **hparams)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"baseline {name!r} returned {type(opt).__name__}, not a torch.optim.Optimizer")
        return closure_mix_in(opt, create_graph=entry.create_graph, max_grad_norm=max_grad_norm)
    with registry.owned_by(entry.plugin):
        rules = entry.builder(_unwrapped(model), **hparams)
    _check_forwarded(entry, rules, hparams)
    return RuleOptimizer(
        model,
        rules,
        engine=engine,
        seed=seed,
        name=name,
        max_grad_norm=max_grad_norm,
        process_group=process_group,
    )


def _check_baseline_hparams(name: str, hparams: dict) -> None:
    """The checks presets get from their declarations, for baselines' common hyperparameters:
    lr and weight decay finite and >= 0, momentum and betas in [0, 1), eps > 0."""
    import math

    def real(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    rules = {
        "lr": (lambda x: real(x) and x >= 0, "a finite number >= 0"),
        "weight_decay": (lambda x: real(x) and x >= 0, "a finite number >= 0"),
        "momentum": (lambda x: real(x) and 0 <= x < 1, "a number in [0, 1)"),
        "eps": (lambda x: real(x) and x > 0, "a finite number > 0"),
        "betas": (
            lambda x: isinstance(x, (list, tuple)) and len(x) == 2 and all(real(b) and 0 <= b < 1 for b in x),
            "two numbers in [0, 1)",
        ),
    }
    for key, (ok, valid) in rules.items():
        if key in hparams and not ok(hparams[key]):
            raise ValueError(f"{name}: invalid {key}={hparams[key]!r}; expected {valid}.")


def _unwrapped(model: nn.Module) -> nn.Module:
    from .optim.ddp import unwrap

    return unwrap(model)[0]


def explain(model: nn.Module, name: str, *, file=None, **hparams) -> list[dict]:
    """Print (and return) which rule every parameter of ``model`` goes to under preset ``name``."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rules = preset_rules(name, model, **hparams)
        from .optim.rules import partition

        groups = partition(model, rules)
    by_rule = {r.name: r for r in rules}
    where = {n: g["rule"] for g in groups for n in g["param_names"]}
    rows = []
    for info in named_parameters_with_owner(model):
        rname = where.get(info.name)
        r = by_rule.get(rname)
        rows.append(
            {
                "parameter": info.name,
                "shape": tuple(info.param.shape),
                "module": type(info.owner).__name__,
                "rule": rname or "(frozen)",
                "stepper": r.stepper.name if r else "-",
                "curvature": (r.curvature.name if r and r.curvature else "-"),
            }
        )
    cols = ["parameter", "shape", "module", "rule", "stepper", "curvature"]
    width = {c: max(len(c), *(len(str(row[c])) for row in rows)) if rows else len(c) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(row[c]).ljust(width[c]) for c in cols) for row in rows]
    counts: dict[Any, int] = {}
    for row in rows:
        counts[row["rule"]] = counts.get(row["rule"], 0) + 1
    lines.append(f"{name}: " + ", ".join(f"{k}: {v} tensors" for k, v in counts.items()))
    lines += [f"warning: {w.message}" for w in caught]
    print("\n".join(lines), file=file)
    return rows
