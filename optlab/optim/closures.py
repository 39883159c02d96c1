"""The three ways a training loop hands the loss to an optlab optimizer.

1. **forward-only closure** (optlab's): ``opt.step(lambda: loss_fn(model(x), y))``;
   the optimizer differentiates (``(loss, outputs)`` for Gauss-Newton estimators).
2. **torch-standard closure** (``torch.optim.LBFGS``'s, Lightning's): the closure
   calls ``opt.zero_grad()`` and ``loss.backward()`` itself and returns the loss.
   On steps that need a double-backward graph, :class:`BackwardCapture` intercepts
   that ``backward()`` call (a ``TorchFunctionMode`` sees ``Tensor.backward``) and
   the optimizer differentiates the captured loss itself.
3. **backward-first**: ``loss.backward(create_graph=opt.needs_graph()); opt.step()``
   (frameworks that own the backward; gradient accumulation; ``GradScaler``).

:func:`closure_mix_in` gives a ``torch.optim`` optimizer styles 1-3 as well.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from .compiled import eager

__all__ = ["BackwardCapture", "STYLES", "closure_mix_in", "ClosureStyles", "StepAccounting", "clip_grad_norm"]

STYLES = """\
  forward-only:     opt.step(lambda: loss_fn(model(x), y))
  torch-standard:   def closure():
                        opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); return loss
                    opt.step(closure)
  backward-first:   loss = loss_fn(model(x), y)
                    loss.backward(create_graph=opt.needs_graph()); opt.step()"""


def split_closure_result(result) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A closure returns the scalar loss, or ``(loss, outputs)`` when an estimator
    needs the model outputs (the Gauss-Newton family)."""
    outputs = None
    if isinstance(result, (tuple, list)):
        if len(result) != 2:
            raise TypeError(
                f"the closure must return the loss or a pair (loss, outputs); got a sequence of length {len(result)}"
            )
        result, outputs = result
    if not isinstance(result, torch.Tensor):
        raise TypeError(f"the closure must return the loss as a scalar tensor; got {type(result).__name__}")
    if result.numel() != 1:
        raise ValueError(
            f"the loss must be a scalar; got a tensor of shape {tuple(result.shape)} (reduce it, e.g. with .mean())"
        )
    return result.reshape(()), outputs


class BackwardCapture(TorchFunctionMode):
    """Inside the context, ``loss.backward(...)`` records ``loss`` instead of running.

    Several calls are summed (a closure with several losses). ``gradient=`` other
    than for a scalar is refused. ``torch.autograd.backward(loss)`` is not seen
    (it is no ``Tensor`` method); :meth:`check_no_backward` catches it afterwards.
    """

    def __init__(self):
        super().__init__()
        self.losses: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:
            t = args[0]
            gradient = kwargs.get("gradient", args[1] if len(args) > 1 else None)
            if gradient is not None:
                t = (t * gradient).sum()
            elif t.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            self.losses.append(t.reshape(()))
            return None
        return func(*args, **kwargs)

    @property
    def loss(self) -> torch.Tensor | None:
        if not self.losses:
            return None
        return self.losses[0] if len(self.losses) == 1 else torch.stack(self.losses).sum()


def grad_marks(params) -> list:
    """Identity and version of every ``p.grad``: a closure ran ``backward()`` iff they change."""
    return [None if p.grad is None else (id(p.grad), p.grad._version) for p in params]


def grads_written(params) -> bool:
    return any(p.grad is not None for p in params)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float | None) -> torch.Tensor | None:
    """``torch.nn.utils.clip_grad_norm_`` on ``p.grad`` (the pre-clip total 2-norm is returned);
    ``None`` when ``max_norm`` is ``None``."""
    if max_norm is None:
        return None
    return torch.nn.utils.clip_grad_norm_(params, max_norm).detach()


def check_max_grad_norm(name: str, max_grad_norm):
    if max_grad_norm is not None and not (
        isinstance(max_grad_norm, (int, float))
        and not isinstance(max_grad_norm, bool)
        and 0 < max_grad_norm < float("inf")
    ):
        raise ValueError(
            f"{name}: invalid max_grad_norm={max_grad_norm!r}; expected None (no clipping) or a finite number > 0"
        )


#: the phases of a step that :class:`StepAccounting` times
TIMED_PHASES = ("forward_backward", "curvature", "update")


@runtime_checkable
class StepAccounting(Protocol):
    """What every optimizer built by :func:`optlab.optimizer` reports about its steps, so a
    runner treats presets and baselines alike: ``timings`` (seconds accumulated per phase of
    :data:`TIMED_PHASES`), and ``hvp_count`` / ``vjp_count`` (Hessian-vector and
    output-Jacobian-transpose products of optlab's estimators so far; 0 for baselines, whose
    own curvature work, e.g. AdaHessian's, is not counted)."""

    timings: dict[str, float]

    @property
    def hvp_count(self) -> int: ...

    @property
    def vjp_count(self) -> int: ...


class ClosureStyles:
    """Mix-in for a ``torch.optim.Optimizer``: ``step`` serves all three styles.

    ``create_graph`` (class attribute): the optimizer reads ``p.grad`` with a graph
    on every step (AdaHessian-like baselines); ``max_grad_norm`` clips before the
    update and ``last_grad_norm`` records the pre-clip norm. It also keeps the
    :class:`StepAccounting` of a step (``timings``: closure forward and backward,
    then clipping and the wrapped optimizer's update; no curvature phase).
    """

    create_graph = False
    max_grad_norm: float | None = None
    last_grad_norm: torch.Tensor | None = None
    timings: dict[str, float]
    hvp_count = 0
    vjp_count = 0

    def needs_graph(self) -> bool:
        return self.create_graph

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def step(self, closure=None):
        name = type(self).__name__
        if self.create_graph and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise NotImplementedError(
                f"{name} reads a double-backward graph from p.grad on every step, which DistributedDataParallel "
                "cannot carry. Use an optlab preset (e.g. 'adahessian', 'sophia'), which averages gradients and "
                "curvature over ranks itself."
            )
        params = self._params()
        loss = None
        t0 = time.perf_counter()
        if closure is not None:
            marks = grad_marks(params)
            with torch.enable_grad():
                if self.create_graph:  # compiled regions have no double backward: run them eagerly
                    with eager(), BackwardCapture() as cap:
                        result = closure()
                    captured = cap.loss
                else:
                    result, captured = closure(), None
            if captured is not None:  # torch-standard closure, backward deferred to here
                with eager():
                    captured.backward(create_graph=True)
                loss = captured
            elif grad_marks(params) != marks:  # torch-standard closure: its backward already ran
                loss = None if result is None else split_closure_result(result)[0]
            else:  # forward-only closure: p.grad is set to this loss's gradient
                loss = split_closure_result(result)[0]
                if not loss.requires_grad:
                    raise ValueError(
                        f"{name}: the loss returned by the closure does not require grad and the "
                        "closure ran no backward(); the closures it takes:\n" + STYLES
                    )
                for p in params:
                    p.grad = None
                loss.backward(create_graph=self.create_graph)
        elif self.create_graph:
            missing = [p for p in params if p.grad is not None and p.grad.grad_fn is None and p.requires_grad]
            if missing or not grads_written(params):
                raise RuntimeError(
                    f"{name} needs gradients built with create_graph=True: "
                    "loss.backward(create_graph=opt.needs_graph()); opt.step(), or a closure:\n" + STYLES
                )
        t1 = time.perf_counter()
        self.last_grad_norm = None
        if self.max_grad_norm is not None:
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm).detach()
        self._torch_step()
        if self.create_graph:  # break the grad -> graph -> param reference cycle
            for p in params:
                if p.grad is not None:
                    p.grad = p.grad.detach()
        self.timings["forward_backward"] += t1 - t0
        self.timings["update"] += time.perf_counter() - t1
        return None if loss is None else loss.detach()


_MIXED: dict[type, type] = {}
_MIXED_ATTRS = (
    "create_graph",
    "max_grad_norm",
    "last_grad_norm",
    "hvp_count",
    "vjp_count",
    "needs_graph",
    "_params",
    "step",
)


def closure_mix_in(
    opt: torch.optim.Optimizer, *, create_graph: bool = False, max_grad_norm: float | None = None
) -> torch.optim.Optimizer:
    """Give ``opt`` (a ``torch.optim.Optimizer``) the three step styles, in place.

    Its class becomes a direct subclass of ``type(opt)`` with the same name whose
    ``step`` is :meth:`ClosureStyles.step` (calling the original ``step`` for the
    update), so ``isinstance`` checks, ``state_dict`` and LR schedulers are unaffected.
    It gains the :class:`StepAccounting` attributes (``timings``, ``hvp_count = vjp_count = 0``).
    """
    check_max_grad_norm(type(opt).__name__, max_grad_norm)
    cls = type(opt)
    if not getattr(cls, "_optlab_closure_styles", False):
        if cls not in _MIXED:
            body = {k: ClosureStyles.__dict__[k] for k in _MIXED_ATTRS}
            body.update(
                __module__=cls.__module__, __doc__=cls.__doc__, _optlab_closure_styles=True, _torch_step=cls.step
            )
            _MIXED[cls] = type(cls.__name__, (cls,), body)
        opt.__class__ = _MIXED[cls]
    mixed: Any = opt  # now a ClosureStyles subclass of the optimizer's class
    mixed.create_graph = create_graph
    mixed.max_grad_norm = max_grad_norm
    mixed.timings = dict.fromkeys(TIMED_PHASES, 0.0)
    return mixed
