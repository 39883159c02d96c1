"""Lightning: optlab presets under automatic optimization, one process or ``strategy="ddp"``.

Lightning calls ``optimizer.step(closure)`` with a closure that runs
``training_step`` and ``loss.backward()`` -- the torch-standard closure, which a
:class:`~optlab.optimizer.RuleOptimizer` serves (on curvature steps the
backward is captured and taken with a graph, under ``no_sync`` with DDP).
Under DDP the optimizer must know the wrapper Lightning builds after
``configure_optimizers``: :class:`OptlabCallback` attaches it
(``opt.distribute(ddp)``) when training starts::

    import lightning.pytorch as pl
    from optlab.integrations.lightning import OptlabCallback

    class Module(pl.LightningModule):
        ...
        def configure_optimizers(self):
            return optlab.optimizer("sgd-ph", self, lr=0.1)

    pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", callbacks=[OptlabCallback()]).fit(Module(), loader)

Clip with ``optlab.optimizer(..., max_grad_norm=...)``, not ``Trainer(gradient_clip_val=...)``:
on curvature steps the gradients exist only inside ``opt.step``. ``accumulate_grad_batches > 1``
with a curvature preset is refused on curvature steps (use the backward-first style in a
manual-optimization loop). Other strategies than DDP (FSDP, DeepSpeed) are refused.
"""

from __future__ import annotations

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "optlab.integrations.lightning needs the 'lightning' extra: pip install -c constraints.txt 'optlab[lightning]'"
    ) from exc

from torch.nn.parallel import DistributedDataParallel

from optlab.optim.optimizer import RuleOptimizer

__all__ = ["OptlabCallback"]


class OptlabCallback(pl.Callback):
    """Attaches every optlab optimizer of the trainer to the strategy's DDP wrapper.

    Single process: nothing to do. ``strategy="ddp"`` / ``"ddp_spawn"``: calls
    ``opt.distribute(trainer.strategy.model)``, which also broadcasts the
    estimators' generator states from rank 0. Any other multi-process strategy
    raises a ``TypeError`` naming it.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapped = trainer.strategy.model
        ddp = wrapped if isinstance(wrapped, DistributedDataParallel) else None
        for opt in trainer.optimizers:
            if not isinstance(opt, RuleOptimizer):
                continue
            if ddp is not None:
                opt.distribute(ddp)
            elif trainer.world_size > 1:
                raise TypeError(
                    f"{opt.name}: Lightning strategy {type(trainer.strategy).__name__} is not supported with "
                    f"{trainer.world_size} processes; use strategy='ddp' (or 'ddp_spawn')."
                )
