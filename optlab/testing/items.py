"""The conformance checks of a plugin's tasks and models, and of a whole installed plugin
(:func:`check_plugin`, what ``optlab plugins --check`` runs)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..optim.rules import EstimateError
from ..optim.selectors import Rest
from ..plugin.kit_problems import make_problem
from .parts import check_estimator, check_selector, check_stepper

if TYPE_CHECKING:
    from ..training.tasks import Task

__all__ = ["check_task", "check_model", "check_plugin", "ItemCheck"]


def check_task(task_fn: Callable, **options) -> Task:
    """A task function must return a :class:`~optlab.tasks.Task` whose splits agree in sample counts
    and input shape, with finite inputs, labels in ``[0, num_classes)`` (for ``cross_entropy``), a
    loss named ``cross_entropy`` or ``mse`` whose ``loss_fn`` gives a finite scalar, and the same data
    when built twice with the same seed. Returns the task (built with ``seed=0``)."""
    from ..training.tasks import Task

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
    from ..training.tasks import build_model

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

    from ..plugin import registry

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
    from ..api import optimizer

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
