"""A float64 task and model for the multi-process runner tests (tests/test_nproc.py).

Installed for the test's subprocesses the way any third-party plugin is: an ``optlab``
entry point in a ``*.dist-info`` folder on ``PYTHONPATH`` (see ``plugin_env`` there), so
``optlab train --nproc 2`` and every torchrun process load it through the registry.

* task ``blobs64``: 3 Gaussian blobs in 6 dimensions, float64, fixed splits
  (``n`` training samples; 64 validation, 64 test);
* model ``mlp64``: ``Linear(6, 8) - [BatchNorm1d(8)] - Tanh - Linear(8, 3)`` in float64
  (``bn=True`` adds the BatchNorm; ``decouple=True`` weight-normalizes the linear layers).
"""

from __future__ import annotations

import torch
from torch import nn

from optlab.optim.modeltools import decouple as _decouple
from optlab.plugin.hookspecs import hookimpl
from optlab.training.tasks import Task


def blobs64(seed: int = 0, n: int = 256) -> Task:
    """Three Gaussian blobs (float64); the data do not depend on the run seed."""
    g = torch.Generator().manual_seed(1234)
    centres = torch.randn(3, 6, generator=g, dtype=torch.float64) * 1.5
    total = n + 128
    y = torch.arange(total) % 3
    x = centres[y] + torch.randn(total, 6, generator=g, dtype=torch.float64)
    return Task(
        "blobs64",
        x[:n],
        y[:n],
        x[n + 64 :],
        y[n + 64 :],
        num_classes=3,
        x_val=x[n : n + 64],
        y_val=y[n : n + 64],
    )


def mlp64(info, decouple: bool = False, bn: bool = False) -> nn.Module:
    """A float64 MLP; no bias before the BatchNorm (its gradient would be rounding noise)."""
    d = info["input_shape"][0]
    layers = [nn.Linear(d, 8, bias=not bn)] + ([nn.BatchNorm1d(8)] if bn else [])
    model = nn.Sequential(*layers, nn.Tanh(), nn.Linear(8, info["num_classes"])).double()
    return _decouple(model) if decouple else model


@hookimpl
def optlab_register_tasks(register):
    register("blobs64", blobs64)


@hookimpl
def optlab_register_models(register):
    register("mlp64", mlp64)
