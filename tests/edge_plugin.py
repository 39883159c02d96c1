"""A task whose best learning rate lies beyond a small grid, and a gated SGD, for the grid-extension
tests (tests/test_protocol.py).

Installed for the tests' subprocesses the way any third-party plugin is: an ``optlab`` entry point
in a ``*.dist-info`` folder on ``PYTHONPATH`` (like ``nproc_plugin``).

* task ``edge-quadratic``: least squares with X = I (d = 4 rows, ``w*`` fixed): the full-batch
  gradient-descent step on the mean squared error contracts the error by ``|1 - lr * 2/d|``, so
  the validation loss after any number of steps is smallest at ``lr = d/2 = 2`` (exact in one
  step) and grows beyond ``lr = d = 4`` (divergent oscillation). A grid ``lr = [2/9, 2/3]``
  selects its largest value (an edge); one geometric extension adds 2.0, which wins and is
  again the largest tried; the second adds 6.0, which loses: the selection leaves the edge.
* model ``linear1``: ``Linear(d, 1, bias=False)``, output squeezed to shape ``(n,)``.
* baseline ``gated-sgd``: ``torch.optim.SGD`` (momentum 0) that, when built with ``gate`` (a
  directory), writes ``started-<lr>`` there and waits while ``hold-<lr>`` exists: a test holds
  the extension's trials, waits for their ``started`` file (an event, not a sleep), and kills
  the driver while they run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from optlab.plugin.hookspecs import hookimpl
from optlab.training.tasks import Task

D = 4
W_STAR = torch.tensor([1.0, -2.0, 0.5, 3.0])


def _mse(out, y, reduction="mean"):
    return F.mse_loss(out.reshape(y.shape), y, reduction=reduction)


def edge_quadratic(seed: int = 0) -> Task:
    """X = I (4 x 4), y = X w*; the same rows for train, validation and test (a deterministic landscape)."""
    x = torch.eye(D)
    y = x @ W_STAR
    return Task(
        "edge-quadratic",
        x,
        y,
        x.clone(),
        y.clone(),
        num_classes=1,
        loss_fn=_mse,
        loss="mse",
        x_val=x.clone(),
        y_val=y.clone(),
    )


class _Linear1(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, 1, bias=False)

    def forward(self, x):
        return self.lin(x).squeeze(-1).unsqueeze(-1)


def linear1(info, decouple: bool = False):
    """``Linear(4, 1, bias=False)``; outputs shape (n, 1) (the runner's accuracy reads argmax over it)."""
    return _Linear1()


def gated_sgd(model, lr=0.1, gate: str = ""):
    """torch.optim.SGD without momentum; with ``gate``, announce the start and wait while held (only for
    this plugin's model: the grid's spec check builds every optimizer once on a probe model)."""
    if gate and isinstance(model, _Linear1):
        d = Path(gate)
        (d / f"started-{lr:g}").write_text(str(os.getpid()))
        while (d / f"hold-{lr:g}").exists():
            time.sleep(0.05)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)


@hookimpl
def optlab_register_tasks(register):
    register("edge-quadratic", edge_quadratic)


@hookimpl
def optlab_register_models(register):
    register("linear1", linear1)


@hookimpl
def optlab_register_baselines(register):
    register("gated-sgd", gated_sgd)
