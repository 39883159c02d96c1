"""Hugging Face ``transformers``: optlab presets under ``Trainer``, one process or DDP (``torchrun``).

``Trainer`` owns the backward (``accelerator.backward(loss)`` per micro-batch, then
clipping, then ``optimizer.step()``): optlab's *backward-first* style. On steps that
refresh curvature the gradients must carry their graph, so :class:`OptlabTrainer`
runs that step's forward and backward inside ``opt.refresh_context()`` (eager
``torch.compile`` regions; under DDP ``no_sync``, the optimizer averages gradients and
curvature itself) with ``create_graph=True`` added to ``accelerator.backward``, and
``scaled_dot_product_attention`` on its math backend (the fused CPU/flash kernels have no
double backward; ``attn_implementation="flash_attention_2"`` and the like are refused there). Other
steps are exactly the ``Trainer``'s own::

    from optlab.integrations.transformers import OptlabTrainer

    trainer = OptlabTrainer(model=model, args=TrainingArguments(..., max_grad_norm=1.0),
                            train_dataset=ds, optimizer_name="sgd-ph",
                            optimizer_hparams={"lr": 0.1, "every": 10})
    trainer.train()

* ``args.max_grad_norm`` becomes the optimizer's ``max_grad_norm`` (clipping after the
  gradients are complete and averaged over ranks, before the steppers; curvature from the
  unclipped loss) and the ``Trainer``'s own clipping and norm measurement are switched off
  (``_clip_grad_norm``/``_get_grad_norm`` return ``None``): on a refresh step
  under DDP the gradients are averaged only inside ``opt.step``, and clipping gradients
  that carry a graph in place would corrupt it. ``grad_norm`` in the logs is
  ``opt.last_grad_norm`` (the norm before clipping), as the ``Trainer`` logs it.
* ``gradient_accumulation_steps > 1`` works: every micro-batch of a refresh step is
  taken with a graph, so the curvature is that of the accumulated loss (the README's
  backward-first accumulation).
* Refused with an error: DeepSpeed and FSDP (the optimizer needs whole parameters and
  their gradients' graph), ``fp16`` (``GradScaler``) with a preset that estimates
  curvature (use ``bf16``), ``optimizers=(...)`` together with ``optimizer_name``, and any
  multi-process wrapper other than ``DistributedDataParallel``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "optlab.integrations.transformers needs the 'hf' extra: pip install -c constraints.txt 'optlab[hf]'"
    ) from exc

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from optlab.api import optimizer as build_optimizer
from optlab.api import optimizer_entry

__all__ = ["OptlabTrainer", "optlab_optimizer"]


#: the Trainer's gradient-norm steps, replaced: the optimizer clips and measures the norm itself
_GRAD_NORM_HOOKS = ("_clip_grad_norm", "_get_grad_norm")


def optlab_optimizer(opt: Any) -> Any:
    """The optlab optimizer inside ``opt`` (``accelerate`` wraps it in ``AcceleratedOptimizer``),
    or ``None`` when ``opt`` is not one (it has no ``needs_graph``)."""
    seen = 0
    while opt is not None and not hasattr(opt, "needs_graph") and seen < 8:
        opt = getattr(opt, "optimizer", None)
        seen += 1
    return opt if opt is not None and hasattr(opt, "needs_graph") else None


def _estimates_curvature(opt: torch.optim.Optimizer) -> bool:
    return bool(getattr(opt, "needs_closure", False) or getattr(opt, "create_graph", False))


@contextlib.contextmanager
def _backward_with_graph(accelerator: Any) -> Iterator[None]:
    """``accelerator.backward(loss, **kw)`` called with ``create_graph=True`` inside the block."""
    plain = accelerator.backward

    def backward(loss, **kwargs):
        kwargs["create_graph"] = True
        return plain(loss, **kwargs)

    accelerator.backward = backward  # an instance attribute, shadowing the method
    try:
        yield
    finally:
        del accelerator.backward


class OptlabTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose optimizer is the optlab preset (or baseline) ``optimizer_name``.

    Args:
        optimizer_name: a name of ``optlab.optimizer_names()`` (``"sgd-ph"``, ``"adahessian"``, ...).
        optimizer_hparams: its hyperparameters; ``lr`` defaults to ``args.learning_rate``.
        optimizer_seed: seed of stochastic curvature estimators (default ``args.seed``).
        *args, **kwargs: as for ``transformers.Trainer``.

    ``args.max_grad_norm`` is moved into the optimizer (see the module docstring). ``lr_scheduler_type``
    and warm-up act on ``group["lr"]`` as for any ``torch.optim`` optimizer.
    """

    def __init__(
        self,
        *args: Any,
        optimizer_name: str,
        optimizer_hparams: dict[str, Any] | None = None,
        optimizer_seed: int | None = None,
        **kwargs: Any,
    ):
        if not isinstance(optimizer_name, str):
            raise TypeError(f"OptlabTrainer: optimizer_name must be an optlab optimizer name; got {optimizer_name!r}")
        optimizer_entry(optimizer_name)  # an unknown name fails here, listing the valid ones
        missing = [m for m in _GRAD_NORM_HOOKS if not callable(getattr(transformers.Trainer, m, None))]
        if missing:  # without them the Trainer would clip gradients that carry a graph, in place
            raise ImportError(
                f"OptlabTrainer needs transformers.Trainer.{'/'.join(missing)} (transformers >= 5.24); "
                f"installed: transformers {transformers.__version__}. pip install -c constraints.txt 'optlab[hf]'"
            )
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers and optimizers[0] is not None:
            raise ValueError(
                f"OptlabTrainer: optimizer_name={optimizer_name!r} builds the optimizer; do not also pass "
                f"optimizers=({type(optimizers[0]).__name__}, ...)."
            )
        self.optimizer_name = optimizer_name
        self.optimizer_hparams = dict(optimizer_hparams or {})
        self.optimizer_seed = optimizer_seed
        super().__init__(*args, **kwargs)
        #: gradient clipping threshold taken over from ``args.max_grad_norm`` (``None``: none)
        self.optlab_max_grad_norm = self.args.max_grad_norm if (self.args.max_grad_norm or 0) > 0 else None
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            raise NotImplementedError(
                f"OptlabTrainer ({optimizer_name}): DeepSpeed and FSDP shard parameters and gradients, and "
                "optlab's curvature needs whole parameters and gradients with their graph; use plain DDP "
                "(torchrun without deepspeed/fsdp arguments)."
            )

    # ------------------------------------------------------------------ the optimizer
    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """Build ``optlab.optimizer(optimizer_name, model, ...)`` once (the Trainer calls this)."""
        if self.optimizer is None:
            hparams = dict(self.optimizer_hparams)
            entry = optimizer_entry(self.optimizer_name)
            if "lr" not in hparams and ("lr" in entry.hparams or entry.open_hparams):
                hparams["lr"] = self.args.learning_rate
            model = self.model
            seed = self.optimizer_seed if self.optimizer_seed is not None else self.args.seed
            self.optimizer = build_optimizer(
                self.optimizer_name, model, seed=seed, max_grad_norm=self.optlab_max_grad_norm, **hparams
            )
            if self.args.fp16 and _estimates_curvature(self.optimizer):
                raise NotImplementedError(
                    f"OptlabTrainer ({self.optimizer_name}): fp16 (GradScaler) is not supported with a preset "
                    "that estimates curvature (the scaled double-backward graph goes through accelerate's "
                    "scaler untested); use bf16=True, or fp16 with a curvature-free optimizer such as 'sgd'."
                )
        return self.optimizer

    # ------------------------------------------------------------------ one micro-batch
    def training_step(self, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The ``Trainer``'s step; on curvature-refresh steps inside ``opt.refresh_context()`` with
        ``create_graph=True`` (every micro-batch of an accumulated step)."""
        opt = optlab_optimizer(self.optimizer)
        if opt is None:
            return super().training_step(model, inputs, *args, **kwargs)
        self._attach(model, opt)
        if not opt.needs_graph():
            return super().training_step(model, inputs, *args, **kwargs)
        attention = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        if attention not in (None, "eager", "sdpa"):
            raise NotImplementedError(
                f"OptlabTrainer ({self.optimizer_name}): attn_implementation={attention!r} has no double "
                "backward, which curvature-refresh steps need; load the model with attn_implementation='sdpa' "
                "or 'eager'."
            )
        context = opt.refresh_context() if hasattr(opt, "refresh_context") else contextlib.nullcontext()
        with context, sdpa_kernel(SDPBackend.MATH), _backward_with_graph(self.accelerator):
            return super().training_step(model, inputs, *args, **kwargs)

    def _attach(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Under DDP, tell the optimizer the wrapper (once): gradients and curvature of refresh
        steps are then averaged over ranks and the estimators' generators broadcast from rank 0."""
        if getattr(self, "_optlab_attached", None) is model:
            return
        world = self.args.world_size
        if isinstance(model, DistributedDataParallel):
            if not hasattr(opt, "distribute"):
                if _estimates_curvature(opt):
                    raise NotImplementedError(
                        f"OptlabTrainer: {self.optimizer_name} reads a double-backward graph from p.grad, which "
                        "DistributedDataParallel cannot carry; use an optlab preset (e.g. 'adahessian', 'sophia')."
                    )
            else:
                opt.distribute(model)
        elif world > 1:
            raise TypeError(
                f"OptlabTrainer ({self.optimizer_name}): the Trainer runs {world} processes but wraps the model "
                f"in {type(model).__name__}, not DistributedDataParallel; only DDP is supported."
            )
        self._optlab_attached = model

    # ------------------------------------------------------------------ clipping and logging
    def _clip_grad_norm(self, model: nn.Module) -> None:
        """No clipping here: the optimizer clips (``max_grad_norm``) once the gradients are complete,
        i.e. after its own all-reduce on refresh steps, and never in place on a gradient's graph."""
        return None

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> None:
        """Not measured here (that would touch the graph-carrying gradients of refresh steps, and read
        un-averaged ones under DDP); :meth:`log` reports ``opt.last_grad_norm`` after the step."""
        return None

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds ``grad_norm`` (the optimizer's pre-clip norm) where the Trainer would have logged it."""
        opt = optlab_optimizer(self.optimizer)
        norm = getattr(opt, "last_grad_norm", None)
        if "loss" in logs and "grad_norm" not in logs and norm is not None:
            logs = dict(logs, grad_norm=float(norm))
        super().log(logs, *args, **kwargs)
