"""The conformance checks of a plugin's parts: selectors, steppers (also against a formula) and
curvature estimators, on the tiny float64 problems of :mod:`optlab.plugin.kit_problems`."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..api import estimator, selector, stepper
from ..optim.hparams import unknown_name
from ..optim.hvp import get_engine
from ..optim.optimizer import RuleOptimizer
from ..optim.rules import Rule, Schedule, check_estimate, check_requires
from ..optim.selectors import Selector, named_parameters_with_owner, rest
from ..plugin.kit_problems import (
    Problem,
    block_slices,
    dense_ggn,
    dense_hessian,
    empirical_fisher_reference,
    flat,
    make_problem,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "check_selector",
    "check_stepper",
    "check_stepper_formula",
    "check_estimator",
    "SELECTOR_PROBLEMS",
    "ESTIMATOR_TARGETS",
]

SELECTOR_PROBLEMS = ("mlp_bn1d", "cnn_bn2d", "residual", "ln_mlp", "gn_cnn", "wn_linear")
ESTIMATOR_TARGETS = ("hessian_diag", "hessian_rowsum", "ggn_diag", "empirical_fisher_diag")


def check_selector(
    selector: Selector,
    problems: tuple[str, ...] = SELECTOR_PROBLEMS,
    *,
    reference: Callable[[str, torch.Tensor, nn.Module], bool] | None = None,
    allow_empty: bool = False,
) -> None:
    """A selector must be deterministic, return only real parameter names in model order, and
    partition the parameters with its complement -- on BatchNorm, LayerNorm, GroupNorm and
    weight-normed problems. It must select something on at least one problem (unless
    ``allow_empty``), and with ``reference(name, param, owner) -> bool`` exactly what that predicate
    selects."""
    total = 0
    for name in problems:
        pb = make_problem(name)
        got = selector.select(pb.model)
        again = selector.select(pb.model)
        assert got == again, f"{selector!r} is not deterministic on {name}"
        order = [n for n, _ in pb.model.named_parameters()]
        assert all(n in order for n in got), f"{selector!r} returned unknown names on {name}"
        assert got == [n for n in order if n in set(got)], f"{selector!r} breaks model order on {name}"
        complement = (~selector).select(pb.model)
        assert set(got).isdisjoint(complement) and set(got) | set(complement) == set(order), (
            f"{selector!r} and its complement do not partition {name}'s parameters"
        )
        if reference is not None:
            want = [i.name for i in named_parameters_with_owner(pb.model) if reference(i.name, i.param, i.owner)]
            assert got == want, f"{selector!r} on {name}: selected {got}, the reference selects {want}"
        total += len(got)
    assert allow_empty or total, (
        f"{selector!r} selected no parameter on any of {list(problems)}; pass allow_empty=True if that is intended"
    )


def _estimator_setup(cls, engine: str | None) -> tuple[str, bool]:
    requires = check_requires(getattr(cls, "requires", {}))
    if engine is None:
        engine = requires.get("engine", "autograd")
    elif "engine" in requires and requires["engine"] != engine:
        raise ValueError(f"{cls.__name__} requires engine {requires['engine']!r}; got engine={engine!r}")
    return engine, requires.get("closure") == "loss_outputs"


#: ``reference(param, grad, curvature, state, group, *, step, loss, schedule, num_tensors) -> new param``
ReferenceUpdate = Callable[..., torch.Tensor]


def check_stepper(
    stepper_cls,
    hparams: dict | None = None,
    steps: int = 6,
    *,
    engine: str | None = None,
    reference: ReferenceUpdate | None = None,
    refresh_every: int = 2,
    rtol: float = 1e-12,
    positive_curvature: bool = False,
) -> None:
    """A stepper must keep dtype, leave buffers as a plain step does, resume bit-for-bit, and move the
    parameters; with ``reference`` its update must be the formula the reference computes.

    Curvature steppers get ``rowsum_hvp`` on the channel-wise parameters every step; the
    optimizer runs on the engine the stepper declares in ``requires`` (default ``autograd``).

    ``reference`` (your formula, written independently of the stepper, e.g. from the paper) is called
    once per tensor and step as ``reference(param, grad, curvature, state, group, *, step, loss,
    schedule, num_tensors)`` and returns the parameter after the update; ``state`` is a dict the
    reference owns for that tensor (empty at the first step), ``curvature`` is ``None`` on steps
    without a refresh, ``step`` counts from 1, ``loss`` and ``schedule`` are what a stepper declaring
    ``needs_loss`` / ``needs_schedule`` receives (else ``None``), ``group`` the hyperparameters
    (declared defaults updated with ``hparams``). The kit drives the stepper directly in float64 for
    ``steps`` steps on two tensors with seeded gradients, signed curvature estimates on every
    ``refresh_every``-th step (from step 1) and decreasing-then-increasing losses, and compares every
    parameter after every step to ``rtol`` (relative to the parameter's largest entry);
    ``positive_curvature=True`` draws the estimates positive (for a stepper that assumes so). See
    :func:`check_stepper_formula`.
    """
    if reference is not None:
        check_stepper_formula(
            stepper_cls,
            reference,
            hparams,
            steps=steps,
            refresh_every=refresh_every,
            rtol=rtol,
            positive_curvature=positive_curvature,
        )
    engine, outputs = _estimator_setup(stepper_cls, engine)
    for dtype in (torch.float64, torch.float32):
        _check_plain_step(stepper_cls, hparams, engine, outputs, steps, dtype)
        _check_resume(stepper_cls, hparams, engine, outputs, steps, dtype)


def _stepper_optimizer(pb: Problem, stepper_cls, hparams: dict | None, engine: str) -> RuleOptimizer:
    """An optimizer on problem ``pb`` whose rule ``x`` runs the stepper: on the channel-wise parameters
    with ``rowsum_hvp`` every step for a curvature stepper (SGD for the rest), else on every parameter."""
    st = stepper_cls()
    if st.needs_curvature:
        rules = [
            Rule(
                "x",
                selector("channelwise"),
                estimator("rowsum_hvp"),
                st,
                dict(hparams or {}),
                schedule=Schedule(1, "all"),
            ),
            Rule("rest", rest(), None, stepper("sgd"), {}),
        ]
    else:
        rules = [Rule("x", rest(), None, st, dict(hparams or {}))]
    return RuleOptimizer(pb.model, rules, engine=engine)


def _check_plain_step(stepper_cls, hparams: dict | None, engine: str, outputs: bool, steps: int, dtype) -> None:
    """After one step the buffers are a plain train-mode forward's; after ``steps`` the dtype is kept
    and (float64, nonzero ``lr``/``tau``) some parameter of the rule moved."""
    a = make_problem("mlp_bn1d", dtype=dtype)
    oa = _stepper_optimizer(a, stepper_cls, hparams, engine)
    ref = copy.deepcopy(a.model)
    oa.step(a.closure if outputs else a.loss)
    ref(a.x)  # a plain train-mode forward on the same parameters and batch
    for (n, x), y in zip(a.model.named_buffers(), ref.buffers()):
        assert torch.equal(x, y), f"{stepper_cls.__name__}: buffer {n} differs from a plain step's"
    start = [p.detach().clone() for p in oa.param_groups[0]["params"]]
    for _ in range(steps - 1):
        oa.step(a.closure if outputs else a.loss)
    assert all(p.dtype == dtype for p in a.model.parameters()), f"{stepper_cls.__name__} changed dtype"
    if dtype == torch.float64 and any(oa.param_groups[0].get(k, 0) for k in ("lr", "tau")):
        moved = any(not torch.equal(p, s0) for p, s0 in zip(oa.param_groups[0]["params"], start))
        assert moved, (
            f"{stepper_cls.__name__}: {steps - 1} steps with nonzero gradients left every parameter of its rule "
            f"unchanged (hyperparameters {_group_summary(oa.param_groups[0])})"
        )


def _check_resume(stepper_cls, hparams: dict | None, engine: str, outputs: bool, steps: int, dtype) -> None:
    """``steps // 2`` steps, ``state_dict`` into a fresh model and optimizer, the rest: the parameters
    equal ``steps`` uninterrupted steps' bit for bit."""
    a, b = make_problem("mlp_bn1d", dtype=dtype), make_problem("mlp_bn1d", dtype=dtype)
    oa = _stepper_optimizer(a, stepper_cls, hparams, engine)
    for _ in range(steps):
        oa.step(a.closure if outputs else a.loss)
    ob = _stepper_optimizer(b, stepper_cls, hparams, engine)
    for _ in range(steps // 2):
        ob.step(b.closure if outputs else b.loss)
    sd_model, sd_opt = b.model.state_dict(), ob.state_dict()
    c = make_problem("mlp_bn1d", seed=1, dtype=dtype)  # other init, same batch
    c.x, c.y = a.x, a.y
    c.model.load_state_dict(sd_model)
    oc = _stepper_optimizer(c, stepper_cls, hparams, engine)
    oc.load_state_dict(sd_opt)
    for _ in range(steps - steps // 2):
        oc.step(c.closure if outputs else c.loss)
    for (n, pa), pc in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(pa, pc), f"{stepper_cls.__name__}: resume differs at {n} ({dtype})"


def _group_summary(group: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in group.items() if k not in ("params", "param_names", "rule"))


def check_stepper_formula(
    stepper_cls,
    reference: ReferenceUpdate,
    hparams: dict | None = None,
    *,
    steps: int = 6,
    refresh_every: int = 2,
    rtol: float = 1e-12,
    seed: int = 0,
    positive_curvature: bool = False,
) -> None:
    """Compare ``stepper_cls``'s update with ``reference`` (see :func:`check_stepper`) in float64.

    Fails, naming the step, tensor and largest difference, when they differ; also fails when the
    reference never changes a parameter (a comparison that could not catch a do-nothing stepper).
    """
    who = stepper_cls.__name__
    g = torch.Generator().manual_seed(seed)
    shapes = [(4,), (2, 3)]
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    refs = [p.clone() for p in params]
    group = {k: v.default for k, v in stepper_cls.hparams.items()}
    group.update(hparams or {})
    stepper = stepper_cls()
    states: list[dict] = [{} for _ in params]
    ref_states: list[dict] = [{} for _ in params]
    needs_loss, needs_schedule = (
        getattr(stepper_cls, "needs_loss", False),
        getattr(stepper_cls, "needs_schedule", False),
    )
    schedule = Schedule(refresh_every, "all", period=len(params)) if needs_schedule else None
    moved = False
    for t in range(1, steps + 1):
        grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        refresh = (t - 1) % refresh_every == 0
        curv: list = [torch.randn(s, generator=g, dtype=torch.float64) if refresh else None for s in shapes]
        if positive_curvature:
            curv = [None if c is None else c.abs() + 0.1 for c in curv]
        loss = torch.tensor(1.0 + abs(t - steps / 2) / steps, dtype=torch.float64)  # falls, then rises
        extra: dict = {}
        if needs_loss:
            extra["loss"] = loss.clone()
        if needs_schedule:
            extra["schedule"] = schedule
        stepper.step(
            params,
            [x.clone() for x in grads],
            states,
            dict(group),
            curvature=[None if c is None else c.clone() for c in curv] if stepper_cls.needs_curvature else None,
            rule_step=t,
            **extra,
        )
        for i, (p, r) in enumerate(zip(params, refs)):
            new = _reference_update(
                reference,
                r,
                grads[i],
                None if not stepper_cls.needs_curvature else curv[i],
                ref_states[i],
                group,
                step=t,
                loss=loss if needs_loss else None,
                schedule=schedule,
                num_tensors=len(params),
            )
            moved = moved or not torch.equal(new, r)
            refs[i] = new
            err = (p - new).abs().max().item()
            scale = max(new.abs().max().item(), 1e-300)
            assert err <= rtol * scale, (
                f"{who}: step {t} (curvature {'refreshed' if refresh else 'not refreshed'}), tensor {i} "
                f"{tuple(p.shape)}: the update differs from the reference by {err:.3e} (relative "
                f"{err / scale:.2e} > rtol {rtol:.0e}); stepper {p.flatten()[:4].tolist()} vs reference "
                f"{new.flatten()[:4].tolist()} (first entries); hyperparameters {_group_summary(group)}"
            )
    assert moved, (
        f"check_stepper: the reference for {who} never changed a parameter in {steps} steps "
        f"(hyperparameters {_group_summary(group)}): it could not tell a stepper that does nothing"
    )


def _reference_update(reference, param, grad, curvature, state: dict, group: dict, **keywords) -> torch.Tensor:
    """``reference``'s updated parameter (on copies of what it is given), checked to be a tensor of the
    parameter's shape, in float64."""
    new = reference(
        param.clone(),
        grad.clone(),
        None if curvature is None else curvature.clone(),
        state,
        dict(group),
        **{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in keywords.items()},
    )
    if not isinstance(new, torch.Tensor) or new.shape != param.shape:
        raise TypeError(
            f"check_stepper: reference must return the updated parameter, a tensor of shape "
            f"{tuple(param.shape)}; got {type(new).__name__} {tuple(getattr(new, 'shape', ()))}"
        )
    return new.to(torch.float64)


def _reference(target: str, pb: Problem, params: list[torch.Tensor], hp: dict) -> list[torch.Tensor]:
    sl = block_slices(params)
    if target == "ggn_diag":
        ref = dense_ggn(pb.outputs, pb.y, params, loss=hp.get("loss", "cross_entropy"), model=pb.model)
        return [ref.diagonal()[s] for s in sl]
    if target in ("hessian_diag", "hessian_rowsum"):
        ref = dense_hessian(pb.loss, params, model=pb.model)
        return [ref[s, s].sum(1) if target == "hessian_rowsum" else ref.diagonal()[s] for s in sl]
    if target == "empirical_fisher_diag":
        return [w.reshape(-1) for w in empirical_fisher_reference(pb, params)]
    raise ValueError(
        "check_estimator: "
        + unknown_name("target", target, ESTIMATOR_TARGETS)
        + " Or pass reference=(problem, params) -> list of tensors."
    )


def check_estimator(
    est_cls,
    hparams: dict | None = None,
    target: str | None = None,
    problems=("mlp_bn1d", "cnn_bn2d", "residual", "wn_linear"),
    draws: int = 0,
    rtol: float | None = None,
    reference: Callable | None = None,
    *,
    engine: str | None = None,
) -> None:
    """Compare an estimator with the dense float64 reference on the tiny problems.

    ``target`` (default: the class's ``target``): ``hessian_diag``, ``hessian_rowsum``
    (per-tensor block row sums), ``ggn_diag`` or ``empirical_fisher_diag`` -- or pass
    ``reference(problem, params) -> list[tensor]`` for another target. With
    ``hparams={"absolute": True}`` the target's absolute value is compared.
    The estimator runs under what it declares in ``requires``: its engine (default
    ``autograd``; ``engine=`` overrides) and a closure returning the loss, or
    ``(loss, outputs)`` if it declares ``{"closure": "loss_outputs"}``. Every output
    is checked for shape, dtype and finiteness (:func:`optlab.optim.rules.check_estimate`,
    naming the tensor and entries). Deterministic estimators must match to ``rtol``;
    with ``draws > 0`` the mean over draws must lie within 4 standard errors of the
    target on every entry (unbiasedness). ``rtol`` defaults to the class attribute ``check_rtol``
    if it has one (an estimator that approximates its target, e.g. by finite differences, declares
    the accuracy it promises), else 1e-8.
    """
    if rtol is None:
        rtol = float(getattr(est_cls, "check_rtol", 1e-8))
    engine, outputs = _estimator_setup(est_cls, engine)
    if reference is None:
        target = target or est_cls.target
        if not target:  # optlab 0.1.0's default, kept for one release
            warnings.warn(
                f"check_estimator: {est_cls.__name__} declares no target and none was passed; comparing with "
                "'hessian_diag', the default of optlab 0.1.0, which is deprecated and goes in 0.3.0: declare "
                f"target = 'hessian_diag' on the class or pass target= (one of {', '.join(ESTIMATOR_TARGETS)}) "
                "or reference=",
                DeprecationWarning,
                stacklevel=2,
            )
            target = "hessian_diag"
    est = est_cls()
    hp = {k: v.default for k, v in est.hparams.items()}
    hp.update(hparams or {})
    sel = selector("channelwise")
    for name in problems:
        pb = make_problem(name)
        names, params = pb.params(sel)
        if reference is not None:
            want = [w.reshape(-1) for w in reference(pb, params)]
        else:
            want = _reference(target, pb, params, hp)
        if hp.get("absolute"):
            want = [w.abs() for w in want]
        gen = torch.Generator().manual_seed(0)
        n = max(draws, 1)
        samples = []
        idx = list(range(len(params)))
        for _ in range(n):
            ctx = get_engine(engine).context(
                model=pb.model, closure=pb.closure if outputs else pb.loss, params=params, names=names
            )
            got = est.estimate(ctx, idx, hp, gen if est.stochastic else None)
            got = check_estimate(got, idx, params, names, who=f"{est_cls.__name__} on {name} ({engine})")
            samples.append(flat([got[i] for i in idx]))
        target_vec = flat(want)
        S = torch.stack(samples)
        if draws:
            se = S.std(0) / n**0.5
            z = (S.mean(0) - target_vec).abs() / se.clamp_min(1e-12)
            assert (z < 4).all(), f"{est_cls.__name__} biased on {name}: max z = {z.max():.2f}"
        else:
            err = (S[0] - target_vec).norm() / target_vec.norm().clamp_min(1e-30)
            assert err < rtol, f"{est_cls.__name__} on {name}: relative error {err:.2e} > {rtol:.0e}"
