"""Where one process stands in a trial that runs on several processes: :class:`RankContext`."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from optlab.optim.ddp import convert_sync_batchnorm, group_ranks

__all__ = ["RankContext"]


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class RankContext:
    """Where this process stands in a trial that runs on ``world`` processes (``optlab.training``).

    The runner trains on *global* batches of ``batch_size`` samples, drawn exactly as a
    single process draws them; rank ``r`` of ``R`` trains on the contiguous slice
    :meth:`shard` ``[r B/R, (r+1) B/R)`` of every one (``B`` divisible by ``R``), so the
    mean loss of the DDP model is the global batch's. Per-step statistics (loss sum,
    correct count, sample count) are summed over ranks (:meth:`sum`), so every rank sees
    the same numbers and stops on the same step when the loss is not finite. Only rank 0
    (:attr:`is_writer`) writes checkpoints and the result; it alone reads the checkpoint and
    hands it to the others (:meth:`from_writer`), so every rank resumes from the same state.

    ``RankContext()`` (one process) is a no-op: :meth:`wrap` returns the model, :meth:`sum`
    its input, :meth:`from_writer` the writer's value.
    """

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None, group=None):
        """``device``: this process's device (``cuda:r`` for process r on GPUs; None: the run's ``device``)."""
        if not 0 <= rank < world:
            raise ValueError(f"invalid rank={rank!r} for world={world!r}; expected 0 <= rank < world")
        self.rank, self.world, self.group = rank, world, group
        self.device = device
        #: set by :meth:`wrap`: whether BatchNorm layers were converted to :class:`SyncBatchNorm`
        self.sync_batchnorm = False

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` samples: ``[n r // R, n (r+1) // R)``."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward calls: ``model`` itself on one process; otherwise
        ``DistributedDataParallel(model)`` with every BatchNorm converted to :class:`SyncBatchNorm`
        (statistics of the global batch, so R ranks compute what one process computes; torch's
        own ``nn.SyncBatchNorm`` is CUDA-only and has no double backward). Conversion keeps the
        parameter and buffer objects, so ``model`` (which checkpoints and evaluation use) sees them."""
        if not self.distributed:
            return model
        if _has_batchnorm(model):
            converted = convert_sync_batchnorm(model, self.group)
            if converted is not model:  # the model is itself a BatchNorm layer: nothing to train around it
                raise TypeError("a model that is a single BatchNorm layer cannot be converted in place")
            self.sync_batchnorm = True
        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, process_group=self.group)

    def sum(self, values: list[float]) -> list[float]:
        """Elementwise sum over ranks of a few numbers (float64, one all-reduce)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return t.tolist()

    def from_writer(self, compute):
        """``compute()`` on rank 0 (which alone touches files), its value on every rank (pickled broadcast)."""
        if not self.distributed:
            return compute()
        box = [compute() if self.is_writer else None]
        dist.broadcast_object_list(box, src=group_ranks(self.group or dist.group.WORLD)[0], group=self.group)
        return box[0]

    def describe(self) -> dict:
        """What the trial record stores about the processes (``distributed``)."""
        return {
            "nproc": self.world,
            "backend": dist.get_backend(self.group) if self.distributed else None,
            "sync_batchnorm": self.sync_batchnorm,
            "launcher": "torch.distributed.run",
        }
