"""Tiny float64 test problems and dense references (no plugin machinery).

* tiny reference problems (MLP+BatchNorm1d, CNN+BatchNorm2d, residual block
  with two BatchNorms, LayerNorm and GroupNorm nets, weight-normed linear and
  conv nets), :func:`make_problem`;
* dense Hessian / GGN references built from *verified paths*: HVP columns by
  autograd double backward (``torch.func.hessian`` over several native
  BatchNorm layers was seen to be wrong in torch 2.13), cross-checked with
  central finite differences of the gradient; the empirical Fisher by a loop of
  per-sample gradients.

This module sits below the registry: registration-time validation runs plugin
items on these problems, and the conformance kit (:mod:`optlab.testing`)
compares them with these references. It imports nothing that reads the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optlab.optim.hparams import unknown_name
from optlab.optim.hvp import frozen_batchnorm_stats
from optlab.optim.modeltools import decouple
from optlab.optim.selectors import NORM_TYPES, Selector, named_parameters_with_owner

__all__ = [
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


@dataclass
class Problem:
    """A tiny model, a batch and a loss: ``loss()`` runs forward on the batch."""

    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable = F.cross_entropy

    def loss(self) -> torch.Tensor:
        return self.loss_fn(self.model(self.x), self.y)

    def outputs(self) -> torch.Tensor:
        return self.model(self.x)

    def closure(self):
        """``(loss, outputs)`` -- what a closure returns when estimators need the outputs."""
        out = self.model(self.x)
        return self.loss_fn(out, self.y), out

    def params(self, selector: Selector | None = None) -> tuple[list[str], list[torch.Tensor]]:
        infos = [i for i in named_parameters_with_owner(self.model) if selector is None or selector.matches(i)]
        return [i.name for i in infos], [i.param for i in infos]


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        h = torch.tanh(self.bn1(self.conv1(x)))
        h = torch.tanh(self.bn2(self.conv2(h)) + x)
        return self.head(h.mean(dim=(2, 3)))


def _mlp_bn():
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)), (10, 5)


def _cnn_bn():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ), (6, 2, 5, 5)


def _residual():
    return _Residual(3), (6, 3, 4, 4)


def _ln_mlp():
    return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)), (10, 5)


def _gn_cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ), (6, 2, 4, 4)


def _wn_linear():
    return decouple(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))), (10, 5)


def _wn_conv():
    return decouple(
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    ), (6, 2, 4, 4)


PROBLEMS = {
    "mlp_bn1d": _mlp_bn,
    "cnn_bn2d": _cnn_bn,
    "residual": _residual,
    "ln_mlp": _ln_mlp,
    "gn_cnn": _gn_cnn,
    "wn_linear": _wn_linear,
    "wn_conv": _wn_conv,
}


def make_problem(name: str, seed: int = 0, dtype=torch.float64) -> Problem:
    """One of :data:`PROBLEMS`, in ``dtype`` (float64 for maths), train mode."""
    if name not in PROBLEMS:
        raise ValueError(unknown_name("problem", name, PROBLEMS))
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, xshape = PROBLEMS[name]()
    model = model.to(dtype).train()
    with torch.no_grad():  # non-trivial affine parameters so blocks are generic
        for m in model.modules():
            w, b = getattr(m, "weight", None), getattr(m, "bias", None)
            if isinstance(m, NORM_TYPES) and isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor):
                w.copy_(1 + 0.3 * torch.randn(w.shape, generator=g, dtype=dtype))
                b.copy_(0.2 * torch.randn(b.shape, generator=g, dtype=dtype))
    x = torch.randn(xshape, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (xshape[0],), generator=g)
    return Problem(name, model, x, y)


def flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def unflat(v: torch.Tensor, like) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    i = 0
    for t in like:
        out.append(v[i : i + t.numel()].reshape(t.shape))
        i += t.numel()
    return out


def dense_hessian(
    loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], model: nn.Module | None = None
) -> torch.Tensor:
    """Dense Hessian of ``loss_fn()`` w.r.t. ``params`` from HVP columns (double backward).

    Column j is ``H e_j``; all columns come from one batched backward. BatchNorm
    running statistics of ``model`` are left untouched.
    """
    ctx = frozen_batchnorm_stats(model) if model is not None else torch.enable_grad()
    with ctx, torch.enable_grad():
        g = flat(torch.autograd.grad(loss_fn(), params, create_graph=True))
        n = g.numel()
        eye = torch.eye(n, dtype=g.dtype, device=g.device)
        cols = torch.autograd.grad(g, params, eye, is_grads_batched=True, allow_unused=True)
    full = [c if c is not None else torch.zeros(n, *p.shape, dtype=g.dtype) for c, p in zip(cols, params)]
    return torch.cat([c.reshape(n, -1) for c in full], dim=1)  # row j = (H e_j)^T = column j (H symmetric)


def fd_hessian(
    loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], model: nn.Module | None = None, h: float = 1e-5
) -> torch.Tensor:
    """Dense Hessian by central differences of the gradient (a cross-check, float64)."""

    def grad_at() -> torch.Tensor:
        ctx = frozen_batchnorm_stats(model) if model is not None else torch.enable_grad()
        with ctx, torch.enable_grad():
            return flat(torch.autograd.grad(loss_fn(), params))

    theta = [p.detach().clone() for p in params]
    n = sum(p.numel() for p in params)
    cols = []
    with torch.no_grad():
        for j in range(n):
            e = torch.zeros(n, dtype=theta[0].dtype)
            e[j] = h
            for p, t, d in zip(params, theta, unflat(e, theta)):
                p.copy_(t + d)
            gp = grad_at()
            for p, t, d in zip(params, theta, unflat(e, theta)):
                p.copy_(t - d)
            gm = grad_at()
            cols.append((gp - gm) / (2 * h))
        for p, t in zip(params, theta):
            p.copy_(t)
    return torch.stack(cols, dim=1)


def output_hessian(outputs: torch.Tensor, loss: str) -> torch.Tensor:
    """Dense Hessian of the mean-reduced loss w.r.t. the flattened outputs (closed form).

    Cross-entropy: block-diagonal ``(diag(p_n) - p_n p_n^T) / N``; MSE: ``2/(N C) I``.
    """
    if loss == "mse":
        m = outputs.numel()
        return 2.0 / m * torch.eye(m, dtype=outputs.dtype)
    n = outputs.shape[0]
    p = outputs.detach().softmax(-1)
    return torch.block_diag(*[(torch.diag(q) - torch.outer(q, q)) / n for q in p])


def dense_ggn(
    outputs_fn: Callable[[], torch.Tensor],
    y: torch.Tensor,
    params: list[torch.Tensor],
    loss: str = "cross_entropy",
    model: nn.Module | None = None,
) -> torch.Tensor:
    """Dense GGN ``J^T H_out J`` from a verified Jacobian (autograd rows), float64."""
    ctx = frozen_batchnorm_stats(model) if model is not None else torch.enable_grad()
    with ctx, torch.enable_grad():
        out = outputs_fn()
        m = out.numel()
        eye = torch.eye(m, dtype=out.dtype)
        rows = torch.autograd.grad(out.reshape(-1), params, eye, is_grads_batched=True, allow_unused=True)
    J = torch.cat(
        [
            (r if r is not None else torch.zeros(m, *p.shape, dtype=out.dtype)).reshape(m, -1)
            for r, p in zip(rows, params)
        ],
        dim=1,
    )
    return J.T @ output_hessian(out, loss) @ J


def block_slices(params: list[torch.Tensor]) -> list[slice]:
    out, i = [], 0
    for p in params:
        out.append(slice(i, i + p.numel()))
        i += p.numel()
    return out


def empirical_fisher_reference(pb: Problem, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """``(1/N) sum_n g_n^2`` with g_n the gradient of sample n's loss in the full-batch forward
    (BatchNorm coupling included), by a loop of autograd calls: a reference for plugins."""
    with frozen_batchnorm_stats(pb.model), torch.enable_grad():
        out = pb.model(pb.x)
        n = out.shape[0]
        acc = [torch.zeros_like(p) for p in params]
        for i in range(n):
            li = pb.loss_fn(out[i : i + 1], pb.y[i : i + 1])
            gs = torch.autograd.grad(li, params, retain_graph=True)
            for a, g in zip(acc, gs):
                a.add_(g.pow(2) / n)
    return acc
