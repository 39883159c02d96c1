"""``torch.compile``: compiled plain steps, eager refresh steps.

A model compiled with ``torch.compile`` (inductor, or any ``aot_autograd``
backend) cannot be differentiated twice: torch raises "torch.compile with
aot_autograd does not currently support double backward" when a gradient is
built with ``create_graph=True`` through it. Steps that refresh no curvature
need only first derivatives, so they run compiled; a refresh step (with the
default ``every=50``, one step in 50) runs every ``torch.compile`` region
eagerly under :func:`eager` (``torch.compiler.set_stance("force_eager")``): the
same parameters, the same forward, computed by the original Python module.

What the optimizer does by itself:

* closure styles (forward-only and torch-standard, :mod:`optlab.optim.closures`):
  a refresh step runs its closure, gradient and curvature under :func:`eager`;
* backward-first: the forward and ``backward(create_graph=...)`` run in the
  user's code, before ``opt.step()``, so they must be inside
  ``with opt.refresh_context():``, which is :func:`eager` on refresh steps (and
  DDP's ``no_sync`` under DDP). Without it, torch's double-backward error is raised
  from the user's ``backward``;
* ``torch.optim`` optimizers made to take optlab closures with ``create_graph=True``
  (AdaHessian-like, a graph every step) run every closure eagerly: nothing is compiled.

``optlab.optimizer(name, torch.compile(model))`` is accepted: the optimizer
unwraps the compiled module (:func:`unwrap_compiled`), so parameter names and
state dicts are the eager model's. DDP may wrap a compiled model or be compiled
(``DDP(torch.compile(m))`` or ``torch.compile(DDP(m))``).

Reference: PyTorch docs, "torch.compiler.set_stance" and "torch.compile
troubleshooting" (double backward is unsupported by AOTAutograd).
"""

from __future__ import annotations

import contextlib
from typing import cast

import torch
from torch import nn

__all__ = ["eager", "is_compiled", "unwrap_compiled"]


def _optimized_module_type():
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return None
    return OptimizedModule


def is_compiled(module: nn.Module) -> bool:
    """``module`` is the result of ``torch.compile(nn.Module)``."""
    cls = _optimized_module_type()
    return cls is not None and isinstance(module, cls)


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The eager module behind ``torch.compile(module)`` (``_orig_mod``), or ``module`` itself."""
    while is_compiled(module):
        module = cast(nn.Module, module._orig_mod)
    return module


def eager():
    """Context in which every ``torch.compile`` region runs as plain eager PyTorch
    (``torch.compiler.set_stance("force_eager")``), so that double backward works.
    A no-op context inside a region being traced by ``torch.compile`` (the stance
    cannot be changed there)."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")
