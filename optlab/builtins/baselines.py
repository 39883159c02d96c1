"""Baseline optimizers that are not assembled from rules: torch.optim and pytorch_optimizer.

``fn(model, **hparams) -> Optimizer``; ``fn.create_graph`` says that ``step`` reads
``p.grad`` with a double-backward graph (see ``optlab_register_baselines``).
"""

from __future__ import annotations

from typing import Any

import torch


def torch_sgd(model, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD (momentum, optional Nesterov)."""
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
    )


def torch_adamw(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    """torch.optim.AdamW."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _pto():
    try:
        import pytorch_optimizer
    except ImportError as exc:
        raise ImportError(
            "this baseline needs the 'baselines' extra: pip install -c constraints.txt "
            "'optlab[baselines]' (pytorch_optimizer)"
        ) from exc
    return pytorch_optimizer


def pto_adahessian(
    model, lr=0.15, betas=(0.9, 0.999), weight_decay=0.0, hessian_power=1.0, update_period=1, num_samples=1, eps=1e-4
):
    """pytorch_optimizer.AdaHessian (Hutchinson on ``p.grad`` built with create_graph)."""
    return _pto().AdaHessian(
        model.parameters(),
        lr=lr,
        betas=tuple(betas),
        weight_decay=weight_decay,
        hessian_power=hessian_power,
        update_period=update_period,
        num_samples=num_samples,
        eps=eps,
    )


def pto_sophiah(model, lr=0.06, betas=(0.96, 0.99), weight_decay=0.0, p=0.01, update_period=10, num_samples=1):
    """pytorch_optimizer.SophiaH (Sophia with Hutchinson curvature)."""
    return _pto().SophiaH(
        model.parameters(),
        lr=lr,
        betas=tuple(betas),
        weight_decay=weight_decay,
        p=p,
        update_period=update_period,
        num_samples=num_samples,
    )


def pto_apollo(model, lr=0.01, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-6):
    """pytorch_optimizer.APOLLO (quasi-Newton diagonal, Ma 2020)."""
    return _pto().APOLLO(model.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)


def _reads_graph_every_step(fn: Any) -> Any:
    """Mark a baseline that reads a double-backward graph from ``p.grad`` on every step
    (its closure's backward runs with ``create_graph=True``)."""
    fn.create_graph = True
    return fn


pto_adahessian = _reads_graph_every_step(pto_adahessian)
pto_sophiah = _reads_graph_every_step(pto_sophiah)

BASELINES = {
    "torch-sgd": torch_sgd,
    "torch-adamw": torch_adamw,
    "pto-adahessian": pto_adahessian,
    "pto-sophiah": pto_sophiah,
    "pto-apollo": pto_apollo,
}
