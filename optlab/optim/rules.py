"""Rules, the plugin contracts they hold, and ``partition``.

An optimizer is a list of rules::

    Rule(name, selector, curvature, stepper, hparams={...}, schedule=Schedule(...))

``partition(model, rules)`` gives every trainable parameter exactly one rule and
returns one ``param_group`` per rule, carrying that rule's hyperparameters
(validated against what its stepper, estimator and schedule declare).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .hparams import HParam, choice, optional, positive_int, resolve, unknown_name
from .selectors import Rest, Selector, named_parameters_with_owner

if TYPE_CHECKING:  # the engines sit above the contracts; estimators only receive a context
    from .hvp import CurvatureContext

__all__ = [
    "Stepper",
    "CurvatureEstimator",
    "Schedule",
    "Rule",
    "partition",
    "SCHEDULE_HPARAMS",
    "REQUIREMENTS",
    "EstimateError",
    "check_estimate",
    "check_requires",
]

#: what an item may declare in ``requires`` and the values each key takes:
#: ``engine`` -- the HVP engine it needs (``ctx`` methods that only one engine offers);
#: ``closure`` -- ``"loss_outputs"`` if it reads the model outputs, so the closure must return
#: ``(loss, outputs)`` (Gauss-Newton estimators), ``"loss"`` (the default) if the loss suffices.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "engine": ("autograd", "func"),
    "closure": ("loss", "loss_outputs"),
}


def check_requires(requires: Any) -> dict[str, str]:
    """Validate an item's ``requires`` declaration against :data:`REQUIREMENTS`; returns it as a dict."""
    if not isinstance(requires, Mapping):
        raise ValueError(f"requires must be a dict such as {{'engine': 'func'}}; got {requires!r}")
    for key, value in requires.items():
        if key not in REQUIREMENTS:
            raise ValueError(unknown_name("requirement", key, REQUIREMENTS))
        if value not in REQUIREMENTS[key]:
            raise ValueError(f"requires[{key!r}]: " + unknown_name(key, value, REQUIREMENTS[key]))
    return dict(requires)


class Stepper:
    """Turns a gradient (+ a fresh curvature estimate) into an in-place update.

    Subclasses set ``name``, ``hparams`` (``{name: HParam}``) and implement
    :meth:`step`. State lives in the per-parameter ``states`` dicts (the
    optimizer's ``state[p]``) so ``state_dict`` round-trips resume exactly.
    """

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, HParam]] = {}
    needs_curvature: ClassVar[bool] = False
    #: if True, ``step`` also receives ``loss=``: the step's loss (detached scalar, at the
    #: parameters before this update) -- for adaptive damping and trust regions
    needs_loss: ClassVar[bool] = False
    #: if True, ``step`` also receives ``schedule=``: the rule's refresh :class:`Schedule` with
    #: ``period`` resolved (the round-robin period; the number of tensors when not set) -- the
    #: schedule's hyperparameters stay the schedule's, a stepper reads them only from here
    needs_schedule: ClassVar[bool] = False
    #: what the stepper needs to run (see :data:`REQUIREMENTS`); validation and the kit run it so
    requires: ClassVar[dict[str, str]] = {}

    def step(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor | None],
        states: list[dict],
        group: Mapping[str, Any],
        *,
        curvature: list[torch.Tensor | None] | None = None,
        rule_step: int = 0,
        loss: torch.Tensor | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        """Update ``params`` in place. ``curvature[i]``: a fresh estimate on refresh steps,
        else ``None``; ``rule_step``: this rule's step count from 1; ``loss``: the step's
        loss, passed only to steppers with ``needs_loss = True``; ``schedule``: the rule's
        refresh schedule (period resolved), passed only to steppers with ``needs_schedule = True``.
        ``group`` holds the stepper's own hyperparameters (and the other parts'; read only yours)."""
        raise NotImplementedError


class CurvatureEstimator:
    """Estimates a per-parameter curvature tensor (shaped like each parameter).

    ``estimate(ctx, indices, group, generator)`` returns ``{i: tensor}`` for the
    rule-local parameter indices asked for. ``ctx`` is an
    :class:`optlab.optim.hvp.CurvatureContext`: Hessian-vector products restricted to
    a support, and (for Gauss-Newton estimators) the model output.
    """

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, HParam]] = {}
    stochastic: ClassVar[bool] = False
    #: the dense reference the estimate is checked against by :func:`optlab.testing.check_estimator`:
    #: ``"hessian_diag"``, ``"hessian_rowsum"`` (per-tensor block row sums ``H_kk 1``), ``"ggn_diag"``,
    #: ``"empirical_fisher_diag"``, or ``""`` (pass ``reference=`` to the kit)
    target: ClassVar[str] = ""
    #: what the estimator needs to run, e.g. ``{"engine": "func"}`` or ``{"closure": "loss_outputs"}``
    #: (see :data:`REQUIREMENTS`); registration validation and the conformance kit run it so
    requires: ClassVar[dict[str, str]] = {}

    def estimate(
        self, ctx: CurvatureContext, indices: list[int], group: Mapping[str, Any], generator: torch.Generator | None
    ) -> dict[int, torch.Tensor]:
        """``{i: estimate}`` for the rule-local ``indices``. ``ctx`` (:class:`optlab.optim.hvp.CurvatureContext`):
        ``params``/``names`` of the rule, ``hvp``/``hvp_batched``/``dense_block`` (Hessian-vector
        products on a support), ``outputs``/``output_loss_grad``/``output_vjp_batched`` (Gauss-Newton),
        ``loss_and_grad_at`` (the loss and gradient at perturbed parameters), ``hvp_count``/``vjp_count``.
        ``group``: the rule's resolved hyperparameters; ``generator``: seeded, for stochastic estimators."""
        raise NotImplementedError


class EstimateError(ValueError):
    """An estimator returned something that is not ``{index: tensor shaped like the parameter}``."""


def check_estimate(
    out: Any, indices: list[int], params: list[torch.Tensor], names: list[str], *, who: str = "", finite: bool = True
) -> dict[int, torch.Tensor]:
    """Check what ``CurvatureEstimator.estimate`` returned for the rule-local ``indices``.

    It must be a dict with a tensor for every index asked for, each with its
    parameter's shape and dtype, and (``finite=True``) finite entries. The
    :class:`EstimateError` names ``who`` (e.g. ``"estimator 'x'"``), the tensor
    and, for non-finite values, the first offending entries. Returns
    ``{i: tensor.detach()}`` for the indices asked for.
    """
    pre = f"{who}: " if who else ""
    if not isinstance(out, Mapping):
        raise EstimateError(
            f"{pre}estimate() must return {{index: tensor}} for the indices asked for "
            f"({list(indices)}); got {type(out).__name__}"
        )
    missing = [names[i] for i in indices if i not in out]
    if missing:
        raise EstimateError(
            f"{pre}estimate() returned no estimate for {missing} (asked for indices "
            f"{list(indices)}, got {sorted(out, key=str)})"
        )
    for i in indices:
        t, p = out[i], params[i]
        if not isinstance(t, torch.Tensor) or t.shape != p.shape or t.dtype != p.dtype:
            raise EstimateError(
                f"{pre}estimate() returned {type(t).__name__} {tuple(getattr(t, 'shape', ()))} "
                f"{getattr(t, 'dtype', '')} for {names[i]!r}; expected a tensor of shape {tuple(p.shape)} "
                f"and dtype {p.dtype} (one tensor shaped like each parameter)"
            )
        if finite:
            bad = (~torch.isfinite(t.detach())).nonzero()
            if len(bad):
                entries = [tuple(e) if len(e) > 1 else e[0] for e in bad[:5].tolist()]
                values = t.detach()[tuple(bad[:5].T)].tolist()
                raise EstimateError(
                    f"{pre}estimate() returned non-finite values for {names[i]!r} at "
                    f"{len(bad)} entr{'y' if len(bad) == 1 else 'ies'}: first {entries} = {values}"
                )
    return {i: out[i].detach() for i in indices}


SCHEDULE_HPARAMS: dict[str, HParam] = {
    "every": positive_int(1, "refresh curvature on steps 1, 1+every, 1+2*every, ..."),
    "schedule": choice(
        "all",
        ("all", "round_robin"),
        "'all': every tensor of the rule on each refresh; 'round_robin': one tensor per refresh",
    ),
    "period": optional(positive_int(None, "round-robin slots (default: number of tensors in the rule)")),
}


@dataclass(frozen=True)
class Schedule:
    """When and which tensors of a rule refresh their curvature."""

    every: int = 1
    schedule: str = "all"
    period: int | None = None

    def indices(self, step: int, rr_pos: int, n: int) -> tuple[list[int], int]:
        """Tensors to refresh at (1-based) ``step`` and the next round-robin position."""
        if n == 0 or (step - 1) % self.every != 0:
            return [], rr_pos
        if self.schedule == "all":
            return list(range(n)), rr_pos
        period = self.period or n
        return ([rr_pos] if rr_pos < n else []), (rr_pos + 1) % period


@dataclass
class Rule:
    """A class of parameters and how to update it."""

    name: str
    selector: Selector
    curvature: CurvatureEstimator | None
    stepper: Stepper
    hparams: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule | None = None
    #: message for the warning issued when the selector matches nothing
    if_empty: str | None = None

    def parts(self) -> list[tuple[str, Mapping[str, HParam]]]:
        """``(owner, declared hyperparameters)`` of each part: the stepper, the estimator and,
        for a rule that refreshes curvature or has a schedule, the schedule."""
        out: list[tuple[str, Mapping[str, HParam]]] = [(f"stepper {self.stepper.name!r}", self.stepper.hparams)]
        if self.curvature is not None:
            out.append((f"estimator {self.curvature.name!r}", self.curvature.hparams))
        if self.curvature is not None or self.schedule is not None:
            out.append(("the refresh schedule", SCHEDULE_HPARAMS))
        return out

    def owners(self) -> dict[str, str]:
        """Hyperparameter name -> the part that declares it. A name declared by two parts is
        an error naming both (a value could not tell which part it is for)."""
        owner: dict[str, str] = {}
        for who, specs in self.parts():
            for k in specs:
                if k in owner:
                    raise ValueError(
                        f"rule {self.name!r}: hyperparameter {k!r} is declared by both {owner[k]} and {who}; "
                        "a value could not tell which one it is for -- rename it in one of them"
                    )
                owner[k] = who
        return owner

    def resolved_hparams(self) -> dict[str, Any]:
        """The stepper's and the estimator's hyperparameters: their declared defaults, overridden by
        ``hparams`` (the schedule's come from ``schedule``; see :func:`partition`)."""
        owners = self.owners()
        specs = dict(self.stepper.hparams)
        if self.curvature is not None:
            specs.update(self.curvature.hparams)  # disjoint from the stepper's: owners() checked it
        unknown = [k for k in self.hparams if k not in specs]
        if unknown and unknown[0] in owners:
            raise TypeError(
                f"rule {self.name!r}: {unknown[0]!r} belongs to {owners[unknown[0]]}; "
                f"set it through the rule's Schedule, not its hparams"
            )
        return resolve(f"rule {self.name!r}", specs, self.hparams)


def partition(model: nn.Module, rules: list[Rule]) -> list[dict]:
    """One ``param_group`` per rule; every trainable parameter in exactly one group.

    Frozen parameters (``requires_grad=False``) are left out. A parameter matched
    by two rules, or by none (with no ``rest()`` rule), raises an error naming it.
    """
    if not rules:
        raise ValueError("partition() needs at least one rule")
    names = [r.name for r in rules]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"rule names must be unique; repeated: {sorted(dup)}")
    rest_rules = [r for r in rules if isinstance(r.selector, Rest)]
    if len(rest_rules) > 1:
        raise ValueError(f"at most one rule may use rest(); got {[r.name for r in rest_rules]}")

    members: dict[str, list] = {r.name: [] for r in rules}
    for info in named_parameters_with_owner(model):
        if not info.param.requires_grad:
            continue
        hits = [r.name for r in rules if not isinstance(r.selector, Rest) and r.selector.matches(info)]
        if len(hits) > 1:
            raise ValueError(
                f"parameter {info.name!r} is matched by several rules: {hits}; "
                "make the selectors disjoint (e.g. with & ~other)."
            )
        if not hits:
            if not rest_rules:
                raise ValueError(
                    f"parameter {info.name!r} (shape {tuple(info.param.shape)}, "
                    f"in {type(info.owner).__name__}) is matched by no rule "
                    f"{names}; add a rule with selector rest()."
                )
            hits = [rest_rules[0].name]
        members[hits[0]].append(info)

    groups = []
    for r in rules:
        hp = r.resolved_hparams()
        if r.schedule is not None:
            hp.update(
                resolve(
                    f"rule {r.name!r}",
                    SCHEDULE_HPARAMS,
                    {"every": r.schedule.every, "schedule": r.schedule.schedule, "period": r.schedule.period},
                )
            )
        if not members[r.name]:
            warnings.warn(
                r.if_empty
                or f"rule {r.name!r} ({r.selector.description}) matches no parameter of {type(model).__name__}.",
                UserWarning,
                stacklevel=3,
            )
        groups.append(
            {
                "params": [i.param for i in members[r.name]],
                "param_names": [i.name for i in members[r.name]],
                "rule": r.name,
                **hp,
            }
        )
    return groups
