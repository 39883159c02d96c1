"""The conformance kit for plugin authors (import it in your own tests).

``check_estimator`` / ``check_stepper`` / ``check_selector`` run an item on the
tiny float64 problems of :mod:`optlab.plugin.kit_problems` under what the item declares
(``requires``) and compare it with dense references -- the checks every
built-in passes. The problems and references are re-exported here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .api import estimator, selector, stepper
from .optim.hparams import unknown_name
from .optim.hvp import get_engine
from .optim.optimizer import RuleOptimizer
from .optim.rules import EstimateError, Rule, Schedule, check_estimate, check_requires
from .optim.selectors import Rest, Selector, named_parameters_with_owner, rest
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

if TYPE_CHECKING:
    from .training.tasks import Task

__all__ = [
    "check_estimator",
    "check_stepper",
    "check_stepper_formula",
    "check_task",
    "check_model",
    "check_plugin",
    "ItemCheck",
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
            new = reference(
                r.clone(),
                grads[i].clone(),
                None if curv[i] is None or not stepper_cls.needs_curvature else curv[i].clone(),
                ref_states[i],
                dict(group),
                step=t,
                loss=loss.clone() if needs_loss else None,
                schedule=schedule,
                num_tensors=len(params),
            )
            if not isinstance(new, torch.Tensor) or new.shape != r.shape:
                raise TypeError(
                    f"check_stepper: reference must return the updated parameter, a tensor of shape "
                    f"{tuple(r.shape)}; got {type(new).__name__} {tuple(getattr(new, 'shape', ()))}"
                )
            new = new.to(torch.float64)
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


# ------------------------------------------------------------------ tasks, models, and a whole plugin
def check_task(task_fn: Callable, **options) -> Task:
    """A task function must return a :class:`~optlab.tasks.Task` whose splits agree in sample counts
    and input shape, with finite inputs, labels in ``[0, num_classes)`` (for ``cross_entropy``), a
    loss named ``cross_entropy`` or ``mse`` whose ``loss_fn`` gives a finite scalar, and the same data
    when built twice with the same seed. Returns the task (built with ``seed=0``)."""
    from .training.tasks import Task

    task = task_fn(seed=0, **options)
    assert isinstance(task, Task), f"task function returned {type(task).__name__}, not optlab.tasks.Task"
    who = f"task {task.name!r}"
    assert task.loss in ("cross_entropy", "mse"), f"{who}: loss {task.loss!r}; expected 'cross_entropy' or 'mse'"
    assert isinstance(task.num_classes, int) and task.num_classes >= 1, f"{who}: num_classes={task.num_classes!r}"
    splits = [("train", task.x_train, task.y_train), ("test", task.x_test, task.y_test)]
    if task.x_val is not None:
        splits.append(("val", task.x_val, task.y_val))
    for split, x, y in splits:
        assert x.shape[0] == y.shape[0] > 0, f"{who}: {split} has {x.shape[0]} inputs and {y.shape[0]} labels"
        assert tuple(x.shape[1:]) == task.input_shape, f"{who}: {split} inputs {tuple(x.shape[1:])} != train's"
        assert torch.isfinite(x).all(), f"{who}: non-finite {split} inputs"
        if task.loss == "cross_entropy":
            assert not y.is_floating_point() and 0 <= int(y.min()) and int(y.max()) < task.num_classes, (
                f"{who}: {split} labels must be integers in [0, {task.num_classes})"
            )
    out = torch.zeros(4, task.num_classes, dtype=task.x_train.dtype)
    loss = task.loss_fn(out, task.y_train[:4])
    assert loss.ndim == 0 and torch.isfinite(loss), f"{who}: loss_fn gave {loss!r} on zero outputs"
    again = task_fn(seed=0, **options)
    assert torch.equal(again.x_train, task.x_train) and torch.equal(again.y_test, task.y_test), (
        f"{who}: built twice with seed 0, the data differ; draw only from generators seeded from seed"
    )
    return task


def check_model(model_fn: Callable, task_info: dict, **options) -> None:
    """A model function must build (the same weights under the same ``torch.manual_seed``), map a
    batch of ``task_info["input_shape"]`` inputs to ``(batch, num_classes)`` finite outputs, give every
    trainable parameter a gradient, and -- with ``decouple=True`` (weight-normalized) -- compute the
    same function at initialization (``g = ||w||``)."""
    from .training.tasks import build_model

    def build(decouple: bool):
        torch.manual_seed(0)
        return build_model(model_fn, task_info, decouple=decouple, **options)

    model = build(False)
    assert isinstance(model, nn.Module), f"model function returned {type(model).__name__}, not an nn.Module"
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, *task_info["input_shape"], generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert tuple(out.shape) == (4, task_info["num_classes"]), (
        f"outputs of shape {tuple(out.shape)} for 4 inputs of {task_info['input_shape']}; "
        f"expected (4, {task_info['num_classes']})"
    )
    assert torch.isfinite(out).all(), "non-finite outputs at initialization"
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters that get no gradient: {missing}"
    twin = build(False)
    for (n, a), b in zip(initial.items(), twin.state_dict().values()):
        assert torch.equal(a, b), f"built twice under torch.manual_seed(0), {n} differs"
    dec = build(True)
    dec.eval()
    twin.eval()
    with torch.no_grad():
        assert torch.allclose(dec(x), twin(x), rtol=1e-4, atol=1e-5), "decouple=True changes the initial function"


@dataclass(frozen=True)
class ItemCheck:
    """The outcome of the conformance check of one registered item: ``status`` is ``pass``,
    ``fail`` (``detail`` says why) or ``skip`` (not checked; ``detail`` says why)."""

    plugin: str
    kind: str
    name: str
    status: str
    detail: str = ""


def check_plugin(plugin: str) -> list[ItemCheck]:
    """Run the conformance kit on every item plugin ``plugin`` registers (by its registered name,
    e.g. ``"fisher"``), as ``optlab plugins --check`` does. Items the plugin registered that failed
    validation at load (and were skipped) are failures, as is a plugin that failed to import."""
    import warnings

    from .plugin import registry

    out = [
        ItemCheck(plugin, kind or "plugin", name or plugin, "fail", f"rejected at load: {msg}")
        for p, kind, name, msg in registry.rejected()
        if p == plugin
    ]
    entries = [e for k in registry.KINDS for e in registry.entries(k) if e.plugin == plugin]
    tasks: list[Task | str] = []  # the plugin's tasks that built (a name: one whose data is not here)
    for e in entries:
        if e.kind == "task":  # first, so that models are checked on their plugin's own tasks
            entries.remove(e)
            entries.insert(0, e)
    for e in entries:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with registry.owned_by(plugin):
                    status, detail = _check_entry(e, tasks)
            except (AssertionError, EstimateError) as exc:
                status, detail = "fail", str(exc).splitlines()[0] if str(exc) else "assertion failed"
            except Exception as exc:
                status, detail = "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        notes = sorted(
            {f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, DeprecationWarning)}
        )
        if notes:
            detail = "; ".join([detail, *notes]) if detail else "; ".join(notes)
        out.append(ItemCheck(plugin, e.kind, e.qualified, status, detail))
    return out


def _check_entry(e, tasks: list) -> tuple[str, str]:
    """(status, detail) of one registry entry; ``tasks`` collects the plugin's tasks that built."""
    from .api import optimizer

    if e.kind == "selector":
        try:
            sel = e.item()
        except TypeError as exc:
            return "skip", f"its factory needs options ({exc}); check it with check_selector in your tests"
        if isinstance(sel, Rest):
            return "skip", "rest() is resolved by partition() (whatever no other rule selects)"
        check_selector(sel, allow_empty=True)
        return "pass", "check_selector"
    if e.kind == "estimator":
        if not e.item.target:
            return "skip", "declares no target; check it with check_estimator(..., reference=) in your tests"
        draws = 600 if e.item.stochastic else 0  # unbiasedness: 4 standard errors on every entry
        hp = {"absolute": False} if "absolute" in e.item.hparams else {}  # E|x| != |E x|: the signed estimate
        problems = ("mlp_bn1d", "wn_linear") if draws else ("mlp_bn1d", "cnn_bn2d", "residual", "wn_linear")
        check_estimator(e.item, hp, draws=draws, problems=problems)
        return "pass", f"check_estimator (target {e.item.target}{f', unbiased over {draws} draws' if draws else ''})"
    if e.kind == "stepper":
        check_stepper(e.item)
        return "pass", "check_stepper (no reference formula: pass reference= in your tests)"
    if e.kind == "task":
        try:
            tasks.append(check_task(e.item))
        except OSError as exc:  # its data is not on this machine
            tasks.append(e.qualified)  # a task of the plugin that could not be built
            return "skip", f"data not available: {exc}"
        return "pass", "check_task"
    if e.kind == "model":
        built = [t.info for t in tasks if not isinstance(t, str)]
        infos = built or [{"input_shape": (1, 8, 8), "num_classes": 10, "name": "digits"}]
        errors = []
        for info in infos:
            try:
                check_model(e.item, info)
                return "pass", f"check_model on {info['name']!r} inputs {tuple(info['input_shape'])}"
            except AssertionError:
                raise
            except Exception as exc:  # made for other inputs: try the next task's
                errors.append(f"{info['name']} {tuple(info['input_shape'])}: {type(exc).__name__}: {exc}")
        why = "; ".join(errors)[:300]
        if not built or len(built) < len(tasks):  # its task may be one whose data is not here
            return "skip", f"takes none of the inputs of the tasks that could be built here ({why})"
        raise AssertionError(f"does not run on the inputs of its plugin's tasks: {why}")
    if e.kind in ("preset", "baseline"):
        pb = make_problem("mlp_bn1d")
        start = [p.detach().clone() for p in pb.model.parameters()]
        opt = optimizer(e.qualified, pb.model)
        losses = [float(opt.step(pb.closure)) for _ in range(3)]
        assert all(torch.isfinite(torch.tensor(losses))), f"non-finite losses in 3 steps: {losses}"
        assert any(not torch.equal(p, p0) for p, p0 in zip(pb.model.parameters(), start)), (
            "3 steps with its default hyperparameters changed no parameter"
        )
        return "pass", "builds and takes 3 finite steps on a tiny MLP+BatchNorm"
    return "skip", f"no conformance check for {e.kind}s"
