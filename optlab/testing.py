"""The conformance kit for plugin authors (import it in your own tests).

``check_estimator`` / ``check_stepper`` / ``check_selector`` run an item on the
tiny float64 problems of :mod:`optlab.plugin.kit_problems` under what the item declares
(``requires``) and compare it with dense references -- the checks every
built-in passes. The problems and references are re-exported here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .api import estimator, selector, stepper
from .optim.hparams import unknown_name
from .optim.hvp import get_engine
from .optim.optimizer import RuleOptimizer
from .optim.rules import Rule, Schedule, check_estimate, check_requires
from .optim.selectors import Selector, named_parameters_with_owner, rest
from .plugin.kit_problems import (
    PROBLEMS,
    Problem,
    block_slices,
    dense_ggn,
    dense_hessian,
    empirical_fisher_reference,
    fd_hessian,
    flat,
    make_problem,
    output_hessian,
    unflat,
)

__all__ = [
    "check_estimator",
    "check_stepper",
    "check_selector",
    "Problem",
    "PROBLEMS",
    "make_problem",
    "dense_hessian",
    "fd_hessian",
    "dense_ggn",
    "flat",
    "unflat",
    "block_slices",
    "output_hessian",
    "empirical_fisher_reference",
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


def check_stepper(stepper_cls, hparams: dict | None = None, steps: int = 6, *, engine: str | None = None) -> None:
    """A stepper must keep dtype, leave buffers as a plain step does, and resume bit-for-bit.

    Curvature steppers get ``rowsum_hvp`` on the channel-wise parameters every step; the
    optimizer runs on the engine the stepper declares in ``requires`` (default ``autograd``).
    """
    engine, outputs = _estimator_setup(stepper_cls, engine)

    def build(pb):
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

    for dtype in (torch.float64, torch.float32):
        a, b = make_problem("mlp_bn1d", dtype=dtype), make_problem("mlp_bn1d", dtype=dtype)
        oa = build(a)
        ref = copy.deepcopy(a.model)
        oa.step(a.closure if outputs else a.loss)
        ref(a.x)  # a plain train-mode forward on the same parameters and batch
        for (n, x), y in zip(a.model.named_buffers(), ref.buffers()):
            assert torch.equal(x, y), f"{stepper_cls.__name__}: buffer {n} differs from a plain step's"
        for _ in range(steps - 1):
            oa.step(a.closure if outputs else a.loss)
        assert all(p.dtype == dtype for p in a.model.parameters()), f"{stepper_cls.__name__} changed dtype"
        ob = build(b)
        for _ in range(steps // 2):
            ob.step(b.closure if outputs else b.loss)
        sd_model, sd_opt = b.model.state_dict(), ob.state_dict()
        c = make_problem("mlp_bn1d", seed=1, dtype=dtype)  # other init, same batch
        c.x, c.y = a.x, a.y
        c.model.load_state_dict(sd_model)
        oc = build(c)
        oc.load_state_dict(sd_opt)
        for _ in range(steps - steps // 2):
            oc.step(c.closure if outputs else c.loss)
        for (n, pa), pc in zip(a.model.state_dict().items(), c.model.state_dict().values()):
            assert torch.equal(pa, pc), f"{stepper_cls.__name__}: resume differs at {n} ({dtype})"


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
    rtol: float = 1e-8,
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
    target on every entry (unbiasedness).
    """
    engine, outputs = _estimator_setup(est_cls, engine)
    if reference is None:
        target = target or est_cls.target
        if not target:
            raise ValueError(
                f"check_estimator: {est_cls.__name__} declares no target; pass target= (one of "
                f"{', '.join(ESTIMATOR_TARGETS)}) or reference="
            )
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
