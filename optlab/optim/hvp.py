"""Hessian-vector product engines.

Both engines give ``H_SS v_S``: the Hessian of the loss restricted to a support
``S`` of parameter tensors (rows and columns), times a probe ``v`` on ``S``.
Restricting the rows is what makes a one-tensor product cheap: ``H_kk v_k`` is
``d/dp_k <g_k, v_k>`` and needs no back-propagation through other gradients.

* ``autograd``: double backward, ``autograd.grad(g_S, p_S, v_S)`` on gradients
  built with ``create_graph=True`` from the step's own forward pass (so
  BatchNorm buffers are updated exactly once, as in a plain step). Several
  probes at once with ``is_grads_batched=True`` (vmap over the backward).
* ``func``: ``torch.func`` forward-over-reverse, ``jvp(grad(f), (p,), (v,))``
  with ``f`` the closure re-run through ``functional_call``; ``vmap`` over
  probes (``chunk_size`` bounds memory). The re-run freezes BatchNorm running
  statistics (train-mode batch statistics are still used), so buffers are left
  exactly as the gradient pass left them.

Reference: Pearlmutter, "Fast exact multiplication by the Hessian" (1994);
curvlinops' ``HessianLinearOperator`` for the jvp-of-grad form.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from .closures import BackwardCapture, split_closure_result
from .hparams import unknown_name

__all__ = [
    "CurvatureContext",
    "AutogradEngine",
    "FuncEngine",
    "ENGINES",
    "get_engine",
    "frozen_batchnorm_stats",
    "split_closure_result",
]


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm without touching running stats or ``num_batches_tracked``.

    Sets ``track_running_stats=False`` on train-mode BatchNorm layers for the
    duration: ``F.batch_norm`` then receives no running buffers, normalizes with
    the batch statistics (as in train mode) and updates nothing. Unlike
    ``torch.func.replace_all_batch_norm_modules_`` nothing is deleted.
    """
    changed = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            m.track_running_stats = False
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


@contextlib.contextmanager
def _explain_forward_ad() -> Iterator[None]:
    try:
        yield
    except NotImplementedError as exc:
        if "forward AD" not in str(exc):
            raise
        raise NotImplementedError(
            "engine='func' needs forward-mode AD through every op of the model, and one op lacks it "
            f"({str(exc).splitlines()[0]}). Use engine='autograd' (double backward), or for "
            "torch's weight_norm use optlab.decouple(), which writes it in primitive ops."
        ) from exc


def _batched_grad(
    outputs: list[torch.Tensor], inputs: list[torch.Tensor], cotangents: list[torch.Tensor], chunk_size: int | None
) -> list[torch.Tensor]:
    """``sum_o (d outputs_o / d input)^T c_o`` for each of ``n`` stacked cotangents ``c``.

    Chunks of ``chunk_size`` go through one vmapped backward (``is_grads_batched``);
    a single cotangent takes a plain backward. Inputs the outputs do not depend on
    get zeros. Returns one ``(n, *input.shape)`` tensor per input.
    """
    n = cotangents[0].shape[0]
    chunk = chunk_size or n
    batched = n > 1
    parts = []
    for s in range(0, n, chunk):
        outs = torch.autograd.grad(
            outputs,
            inputs,
            [c[s : s + chunk] if batched else c[0] for c in cotangents],
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=batched,
        )
        m = min(chunk, n - s)
        parts.append(
            [
                torch.zeros(m, *x.shape, dtype=x.dtype, device=x.device)
                if o is None
                else (o if batched else o.unsqueeze(0))
                for o, x in zip(outs, inputs)
            ]
        )
    return [torch.cat(col) if len(col) > 1 else col[0] for col in zip(*parts)]


class CurvatureContext:
    """Hessian-vector products for one rule's parameters at the current step."""

    engine: str = ""

    def __init__(self, params: list[torch.Tensor], names: list[str]):
        self.params = params
        self.names = names
        self.hvp_count = 0
        #: number of output-Jacobian-transpose products (Gauss-Newton estimators)
        self.vjp_count = 0
        #: number of loss (and gradient) evaluations at perturbed parameters (:meth:`loss_and_grad_at`)
        self.eval_count = 0
        self._model: nn.Module | None = None
        self._closure: Callable | None = None

    def _bind(self, model: nn.Module | None, closure: Callable | None) -> CurvatureContext:
        self._model, self._closure = model, closure
        return self

    def loss_and_grad_at(
        self, deltas: dict[int, torch.Tensor], *, grad: bool = True
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The step's loss at perturbed parameters, ``L(theta + delta)``, and its gradient there.

        ``deltas`` maps rule-local indices to perturbations shaped like those
        parameters (the support ``S``); every other parameter keeps its value. Returns
        the detached scalar loss and ``{i: dL/dp_i (theta + delta)}`` for ``i`` in ``S``
        (``{}`` with ``grad=False``). The closure is re-run on the step's batch with
        the perturbed tensors swapped in by ``torch.func.functional_call``: the
        parameters themselves, their ``.grad`` and the step's graph are untouched, and
        BatchNorm uses the batch statistics with running statistics frozen (as the
        ``func`` engine does). Works on both engines and with every closure style (a
        ``loss.backward()`` inside the closure is intercepted, not run, and ``.grad`` is
        restored after a ``zero_grad()`` in it); needs a closure
        (not the backward-first style). For finite-difference and line-search
        estimators, e.g. ``H_kk 1 ~ (g_k(theta + h 1_k) - g_k(theta - h 1_k)) / 2h``.
        Each call adds one to ``eval_count``.
        """
        if self._closure is None or self._model is None:
            raise ValueError(
                "loss_and_grad_at() re-runs the step's closure, and this step has none (the "
                "backward-first style): call opt.step(closure) with a closure that runs the forward "
                "pass and returns the loss"
            )
        idx = list(deltas)
        for i in idx:
            p, d = self.params[i], deltas[i]
            if not isinstance(d, torch.Tensor) or d.shape != p.shape:
                raise ValueError(
                    f"loss_and_grad_at: the perturbation of {self.names[i]!r} must be a tensor of shape "
                    f"{tuple(p.shape)}; got {type(d).__name__} {tuple(getattr(d, 'shape', ()))}"
                )
        point = [(self.params[i].detach() + deltas[i].to(self.params[i].dtype)).requires_grad_(grad) for i in idx]
        wrapper = _ClosureModule(self._model, self._closure)
        swap = {"model." + self.names[i]: t for i, t in zip(idx, point)}
        saved = [(p, p.grad) for p in self._model.parameters()]  # a closure's zero_grad() must not clear them
        try:
            with torch.enable_grad(), frozen_batchnorm_stats(self._model), BackwardCapture() as cap:
                result = functional_call(wrapper, swap, (), strict=False)
        finally:
            for p, g in saved:
                p.grad = g
        loss = cap.loss if cap.loss is not None else split_closure_result(result)[0]
        self.eval_count += 1
        if not grad:
            return loss.detach(), {}
        gs = torch.autograd.grad(loss, point, allow_unused=True)
        return loss.detach(), {i: torch.zeros_like(t) if g is None else g.detach() for i, t, g in zip(idx, point, gs)}

    @property
    def outputs(self) -> torch.Tensor:
        """The model outputs of this step's batch (detached)."""
        raise NotImplementedError

    def output_vjp_batched(self, us: torch.Tensor, chunk_size: int | None = None) -> dict[int, torch.Tensor]:
        """``J_S^T u`` for each of ``n`` output cotangents ``us`` (shape ``(n, *outputs.shape)``)."""
        raise NotImplementedError

    def output_loss_grad(self) -> torch.Tensor:
        """``d loss / d outputs`` (shape of ``outputs``, detached): with ``output_vjp_batched``
        this gives per-sample gradients (e.g. for an empirical Fisher)."""
        raise NotImplementedError

    def _need_outputs(self, outputs):
        if outputs is None:
            raise ValueError(
                "this curvature estimator needs the model outputs: make the closure return "
                "(loss, outputs), e.g. lambda: (F.cross_entropy(out := model(x), y), out). The torch-standard "
                "and backward-first step styles pass no outputs: use an HVP-based estimator there "
                "(e.g. estimator='hutchinson')."
            )
        return outputs

    def hvp(self, vs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """``H_SS v_S`` for the support ``S = vs.keys()`` (rule-local indices)."""
        out = self.hvp_batched({i: v.unsqueeze(0) for i, v in vs.items()})
        return {i: t[0] for i, t in out.items()}

    def hvp_batched(self, vs: dict[int, torch.Tensor], chunk_size: int | None = None) -> dict[int, torch.Tensor]:
        """Like :meth:`hvp` for ``n`` probes stacked along a leading dimension."""
        raise NotImplementedError

    def dense_block(self, indices: list[int], chunk_size: int | None = None) -> torch.Tensor:
        """The dense Hessian block ``H_SS`` over the tensors ``indices`` (flattened, in that
        order), from HVPs with the one-hot basis -- ``sum(numel)`` products."""
        sizes = [self.params[i].numel() for i in indices]
        ref = self.params[indices[0]]
        eye = torch.eye(sum(sizes), dtype=ref.dtype, device=ref.device)
        basis = {i: cols.reshape(-1, *self.params[i].shape) for i, cols in zip(indices, eye.split(sizes, dim=1))}
        res = self.hvp_batched(basis, chunk_size=chunk_size)
        return torch.cat([res[i].reshape(sum(sizes), -1) for i in indices], dim=1)


class _AutogradContext(CurvatureContext):
    engine = "autograd"

    def __init__(self, params, names, grads, outputs=None, loss=None):
        super().__init__(params, names)
        self.grads = grads
        self._outputs = outputs
        self._loss = loss
        for i, g in enumerate(grads):
            if g is None:
                raise ValueError(
                    f"parameter {names[i]!r} does not take part in the loss, so its curvature is "
                    "undefined; exclude it from the rule's selector (or freeze it)."
                )

    def hvp_batched(self, vs, chunk_size=None):
        idx = list(vs)
        live = [i for i in idx if self.grads[i].requires_grad]
        if live:
            res = dict(
                zip(
                    idx,
                    _batched_grad(
                        [self.grads[i] for i in live], [self.params[i] for i in idx], [vs[i] for i in live], chunk_size
                    ),
                )
            )
        else:  # the loss is at most linear in these tensors
            res = {i: torch.zeros_like(vs[i]) for i in idx}
        self.hvp_count += next(iter(vs.values())).shape[0]
        return res

    @property
    def outputs(self):
        return self._need_outputs(self._outputs).detach()

    def output_loss_grad(self):
        out = self._need_outputs(self._outputs)
        return torch.autograd.grad(self._loss, out, retain_graph=True)[0].detach()

    def output_vjp_batched(self, us, chunk_size=None):
        out = self._need_outputs(self._outputs)
        res = dict(enumerate(_batched_grad([out], self.params, [us], chunk_size)))
        self.vjp_count += us.shape[0]
        return res


class _FuncContext(CurvatureContext):
    engine = "func"

    def __init__(self, params, names, model, closure):
        super().__init__(params, names)
        self.model = model
        self.closure = closure
        self._outputs = None

    def _fn_of(self, idx: list[int], which: int) -> Callable:
        """``theta_S -> loss`` (which=0) or ``theta_S -> outputs`` (which=1)."""
        names = ["model." + self.names[i] for i in idx]
        wrapper = _ClosureModule(self.model, self.closure)

        def f(*ps):
            with frozen_batchnorm_stats(self.model):
                res = split_closure_result(functional_call(wrapper, dict(zip(names, ps)), (), strict=False))
            return res[0] if which == 0 else self._need_outputs(res[1])

        return f

    @property
    def outputs(self):
        if self._outputs is None:
            with torch.no_grad(), frozen_batchnorm_stats(self.model):
                self._outputs = self._need_outputs(split_closure_result(self.closure())[1]).detach()
        return self._outputs

    def output_loss_grad(self):
        with torch.enable_grad(), frozen_batchnorm_stats(self.model):
            loss, out = split_closure_result(self.closure())
            return torch.autograd.grad(loss, self._need_outputs(out))[0].detach()

    def output_vjp_batched(self, us, chunk_size=None):
        idx = list(range(len(self.params)))
        primals = tuple(p.detach() for p in self.params)
        with torch.no_grad():
            _, pullback = vjp(self._fn_of(idx, 1), *primals)
            outs = vmap(pullback, chunk_size=chunk_size)(us)
        self.vjp_count += us.shape[0]
        return dict(zip(idx, outs))

    def hvp_batched(self, vs, chunk_size=None):
        idx = list(vs)
        f = self._fn_of(idx, 0)
        primals = tuple(self.params[i].detach() for i in idx)
        g = grad(f, argnums=tuple(range(len(idx))))

        def one(*tangents):
            return jvp(g, primals, tangents)[1]

        with torch.no_grad(), _explain_forward_ad():  # no_grad: no outer graphs over other params
            outs = vmap(one, chunk_size=chunk_size)(*(vs[i] for i in idx))
        self.hvp_count += next(iter(vs.values())).shape[0]
        return dict(zip(idx, outs))


class _ClosureModule(nn.Module):
    """Lets ``functional_call`` swap the model's parameters while a closure runs."""

    def __init__(self, model: nn.Module, closure: Callable):
        super().__init__()
        self.model = model
        self._closure = closure

    def forward(self):
        return self._closure()


class AutogradEngine:
    """Double backward; needs gradients built with ``create_graph=True``."""

    name = "autograd"
    needs_graph = True

    def context(self, *, model, closure, params, names, grads=None, outputs=None, loss=None) -> CurvatureContext:
        if grads is None:  # standalone use (diagnostics): own forward, buffers untouched
            with torch.enable_grad(), frozen_batchnorm_stats(model):
                loss, outputs = split_closure_result(closure())
                grads = list(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True))
        return _AutogradContext(params, names, grads, outputs, loss)._bind(model, closure)


class FuncEngine:
    """``torch.func`` forward-over-reverse; re-runs the closure, needs no graph from the step."""

    name = "func"
    needs_graph = False

    def context(self, *, model, closure, params, names, grads=None, outputs=None, loss=None) -> CurvatureContext:
        return _FuncContext(params, names, model, closure)._bind(model, closure)


ENGINES = {"autograd": AutogradEngine(), "func": FuncEngine()}


def get_engine(name: str):
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(unknown_name("HVP engine", name, ENGINES)) from None
