"""The parts of a :class:`~optlab.optim.optimizer.RuleOptimizer` step as functions, the way
``torch.optim.SGD.step`` calls the functional ``sgd``: the refresh step's forward (closure
styles), gradients read from ``p.grad`` (backward-first style), unscaling, the loss-scaled HVP
context, and the update kernel :func:`apply_rules`.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from .closures import STYLES, BackwardCapture, grad_marks, grads_written
from .hvp import split_closure_result
from .rules import Schedule

__all__ = [
    "rule_key",
    "check_loss",
    "refresh_forward",
    "graph_grads_from_p_grad",
    "unscale_grads",
    "ScaledHVPContext",
    "apply_rules",
]


def rule_key(group) -> str:
    """Key of a rule's own state (step, round-robin position, counts) in the optimizer's ``state``."""
    return f"rule:{group['rule']}"


def check_loss(loss) -> None:
    if not loss.requires_grad:
        raise ValueError(
            "the loss returned by the closure does not require grad; did the closure run under torch.no_grad()?"
        )


def refresh_forward(name: str, engine, closure, params, replicas, marks):
    """Run the closure for a refresh step: under ``no_sync`` with DDP, with any
    ``loss.backward()`` it calls captured (torch-standard style) instead of run.
    Returns ``(loss, outputs)``."""
    sync = replicas.no_sync() if replicas is not None else contextlib.nullcontext()
    with sync, torch.enable_grad(), BackwardCapture() as cap:
        result = closure()
    if cap.loss is not None:  # torch-standard closure; it may return a detached copy (Lightning)
        if engine.name == "func":
            raise ValueError(
                f"{name}: engine='func' re-runs the closure to take Hessian-vector products, so the "
                "closure must not call backward(); pass a forward-only closure or use engine='autograd'. "
                "The styles:\n" + STYLES
            )
        if grads_written(params):
            raise RuntimeError(
                f"{name}: the closure calls backward() without zeroing the gradients first, i.e. it "
                "accumulates onto earlier gradients, and this step refreshes curvature from one loss. "
                "Call opt.zero_grad() in the closure, or accumulate in the backward-first style "
                "(loss.backward(create_graph=opt.needs_graph()) per micro-batch, then opt.step()). "
                "The styles:\n" + STYLES
            )
        loss = cap.loss
        outputs = None
        try:
            outputs = split_closure_result(result)[1] if result is not None else None
        except (TypeError, ValueError):
            outputs = None
    else:
        if grad_marks(params) != marks:
            raise RuntimeError(
                f"{name}: the closure computed gradients with torch.autograd.backward(); on a curvature "
                "step the optimizer needs the loss's graph. Call loss.backward() (intercepted on such steps) "
                "or return the loss without backward. The styles:\n" + STYLES
            )
        loss, outputs = split_closure_result(result)
    check_loss(loss)
    return loss, outputs


def graph_grads_from_p_grad(name: str, engine, refreshing_groups, params, distributed: bool) -> list:
    """Backward-first refresh step: ``p.grad`` of every refreshing group must carry its graph
    (``create_graph=True``); returns every parameter's ``p.grad``."""
    if not engine.needs_graph:
        raise ValueError(
            f"{name}: engine='func' takes Hessian-vector products by re-running a "
            "closure; the backward-first style needs engine='autograd' (or pass a closure)."
        )
    for group in refreshing_groups:
        for n, p in zip(group["param_names"], group["params"]):
            if p.grad is None or p.grad.grad_fn is None:
                hint = (
                    "; under DDP run that forward and backward inside `with opt.refresh_context():` "
                    "(DDP cannot carry create_graph=True)"
                    if distributed
                    else ""
                )
                raise RuntimeError(
                    f"{name}: this step refreshes curvature and needs the loss, so call opt.step(closure) "
                    "with a closure, or build gradients with a graph, but "
                    f"{n!r} has {'no gradient' if p.grad is None else 'a gradient without graph'}: call "
                    f"loss.backward(create_graph=opt.needs_graph()) before opt.step(){hint}. The styles:\n" + STYLES
                )
    return [p.grad for p in params]


def unscale_grads(params, scale) -> None:
    """``p.grad /= scale`` (``GradScaler``'s loss scale; the graph of a gradient keeps it too)."""
    inv = 1.0 / scale
    for p in params:
        if p.grad is not None:
            p.grad = p.grad * inv.to(p.grad.dtype)


class ScaledHVPContext:
    """Hessian-vector products of a loss multiplied by ``1/inv`` (``GradScaler``), rescaled."""

    def __init__(self, inner, inv: float):
        self._inner, self._inv = inner, inv

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        if name in ("_inner", "_inv"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    def hvp_batched(self, vs, chunk_size=None):
        return {i: t * self._inv for i, t in self._inner.hvp_batched(vs, chunk_size=chunk_size).items()}

    def hvp(self, vs):
        return {i: t * self._inv for i, t in self._inner.hvp(vs).items()}

    def dense_block(self, indices, chunk_size=None):
        return self._inner.dense_block(indices, chunk_size=chunk_size) * self._inv

    def loss_and_grad_at(self, deltas, *, grad=True):
        loss, grads = self._inner.loss_and_grad_at(deltas, grad=grad)
        return loss * self._inv, {i: g * self._inv for i, g in grads.items()}


def apply_rules(name: str, param_groups, rules, state, plan, curvature, loss) -> None:
    """The update kernel: for each rule's group, advance its step counter (and round-robin
    position from ``plan``), record the age of fresh curvature, and call its stepper with the
    gradients, the curvature of the tensors refreshed this step (``None`` for the others) and,
    when the stepper declares them, the step's loss and the schedule. Call under ``no_grad``."""
    for gi, group in enumerate(param_groups):
        rule = rules[group["rule"]]
        st = state[rule_key(group)]
        st["step"] += 1
        if gi in plan:
            st["rr_pos"] = plan[gi][1]
        params = group["params"]
        states = [state[p] for p in params]
        curv = None
        if rule.curvature is not None:
            est = curvature.get(gi, {})
            curv = [est.get(i) for i in range(len(params))]
            for i, s in enumerate(states):
                if curv[i] is not None:
                    s["curvature_step"] = st["step"]
        extra = {}
        if rule.stepper.needs_loss:  # loss-aware steppers (adaptive damping, trust regions)
            if loss is None:
                raise RuntimeError(
                    f"{name}: stepper {rule.stepper.name!r} of rule {rule.name!r} needs the step's loss "
                    "(needs_loss = True), but this step has none: call opt.step(closure) with a closure "
                    "that returns the loss. The styles:\n" + STYLES
                )
            extra["loss"] = loss.detach()
        if rule.stepper.needs_schedule:  # the schedule's period, through the documented argument
            sched = Schedule(group.get("every", 1), group.get("schedule", "all"), group.get("period"))
            extra["schedule"] = dataclasses.replace(sched, period=sched.period or len(params))
        rule.stepper.step(
            params, [p.grad for p in params], states, group, curvature=curv, rule_step=st["step"], **extra
        )
