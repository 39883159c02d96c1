"""Data-parallel training: what a ``RuleOptimizer`` needs to stay correct under DDP.

With ``R`` replicas, each holding a local batch of equal size, the objective is
the mean loss over the concatenated batch, ``L = (1/R) sum_r L_r``. Then

* its gradient is the average of the local gradients, ``g = (1/R) sum_r g_r``;
* its Hessian-vector product is the average of the local ones,
  ``H v = (1/R) sum_r H_r v`` -- *for one vector v shared by all ranks*.

The optimizer therefore (see :meth:`optlab.optimizer.RuleOptimizer.step`):

* on steps that refresh no curvature, lets DDP's reducer average the gradients
  during the backward (bucketed all-reduce overlapped with the backward), as
  ``loss.backward(); opt.step()`` with ``torch.optim.SGD`` would;
* on refresh steps, runs forward and backward under ``ddp.no_sync()`` with
  ``create_graph=True`` (DDP's reducer cannot carry a double-backward graph),
  averages the gradients itself in one coalesced all-reduce
  (:meth:`Replicas.average`), and averages every Hessian-vector product
  (:class:`AveragedHVPContext`) and finally every curvature estimate, so each
  rank holds the same ``D``.

**Probes are identical on every rank.** The generator of a stochastic estimator
lives in the optimizer state; it is broadcast from the group's first rank when
the optimizer is attached to DDP and advances identically afterwards. A shared
probe is what makes the averaged product ``(1/R) sum_r H_r v`` equal to ``H v``
of the global batch, so 2-rank training computes exactly the estimate
single-process training on the concatenated batch computes (tested to 1e-6 in
float64). Independent per-rank probes would average ``R`` probes for the price
of one (variance / R), but the average of ``z_r * (H_r z_r)`` is no estimate of
the global batch's products and non-linear estimators (``|H_kk 1|``) would
average rectified local quantities; raise ``probes`` for lower variance instead.
Estimators built on output-Jacobian products (``ggn_*``) work on the local
outputs and their estimates are averaged: exact for ``ggn_exact_diag`` (the GGN
is a sum over samples), unbiased for ``ggn_mc`` (the sampled labels of
different ranks come from the shared stream applied to different samples).

Not supported, and refused with an error: ``nn.DataParallel``, FSDP (sharded
parameters: each rank would estimate curvature of a shard) and a DDP model
whose process group differs from the one given to the optimizer.

:class:`SyncBatchNorm` is a BatchNorm over the global batch that works on CPU
(gloo) and is twice differentiable (torch's ``nn.SyncBatchNorm`` is GPU-only and
its backward has no derivative, so no Hessian-vector product passes through it).

References: Li et al., "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training" (VLDB 2020) for the reducer; Pearlmutter (1994) for HVPs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function
from torch.nn.parallel import DistributedDataParallel

from .compiled import unwrap_compiled
from .hvp import CurvatureContext

__all__ = [
    "check_ddp_known",
    "check_ddp_forward",
    "Replicas",
    "unwrap",
    "check_supported",
    "AveragedHVPContext",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "differentiable_all_reduce",
]


def _is_fsdp(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(module, (FullyShardedDataParallel, FSDPModule))


def _is_sharded(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(p, DTensor)


def check_supported(model: nn.Module, what: str = "optlab") -> None:
    """Refuse wrappers optlab cannot be correct under (a clear error, never silent divergence)."""
    for name, m in model.named_modules():
        where = "the model itself" if not name else f"submodule {name!r}"
        if isinstance(m, nn.DataParallel):
            raise TypeError(
                f"{what}: {where} is torch.nn.DataParallel, which is not supported (its replicas are "
                "re-created every forward and curvature graphs cannot follow them). Use one process per "
                "device with DistributedDataParallel: optlab.optimizer(name, DDP(model))."
            )
        if _is_fsdp(m):
            raise TypeError(
                f"{what}: {where} is wrapped by FSDP, which is not supported: parameters are sharded, "
                "so each rank would estimate curvature of its shard only. Use DistributedDataParallel."
            )
        if name and isinstance(m, DistributedDataParallel):
            raise TypeError(
                f"{what}: {where} is a DistributedDataParallel nested inside the model; "
                "wrap the whole model once and pass that DDP module."
            )
    for n, p in model.named_parameters():
        if _is_sharded(p):
            raise TypeError(
                f"{what}: parameter {n!r} is a sharded DTensor (FSDP2 / tensor parallel), "
                "which is not supported. Use DistributedDataParallel."
            )


def unwrap(model: nn.Module) -> tuple[nn.Module, DistributedDataParallel | None]:
    """``(module whose parameters are optimized, its DDP wrapper or None)``; refuses what is unsupported.

    ``torch.compile`` wrappers are seen through on either side of DDP
    (``DDP(torch.compile(m))``, ``torch.compile(DDP(m))``): the optimized module is the eager ``m``
    (:mod:`optlab.optim.compiled`)."""
    model = unwrap_compiled(model)
    if isinstance(model, DistributedDataParallel):
        module = unwrap_compiled(model.module)
        check_supported(module)
        return module, model
    check_supported(model)
    return model, None


def group_ranks(group) -> list[int]:
    return list(dist.get_process_group_ranks(group))


class Replicas:
    """The DDP wrapper of an optimizer's model and the collectives over its process group.

    Args:
        ddp: the ``DistributedDataParallel`` whose ``module`` the optimizer optimizes.
        params: the optimizer's parameters (must be exactly the DDP module's trainable ones).
        process_group: the group to average over; must be DDP's own (``None``: DDP's).
    """

    def __init__(self, ddp: DistributedDataParallel, params: list[torch.Tensor], process_group=None):
        group = ddp.process_group
        if process_group is not None and group_ranks(process_group) != group_ranks(group):
            raise ValueError(
                f"the process group given to the optimizer (ranks {group_ranks(process_group)}) is not the "
                f"DistributedDataParallel model's (ranks {group_ranks(group)}); gradients and curvature "
                "must be averaged over the replicas DDP synchronizes. Pass process_group=None to use DDP's."
            )
        mine = {id(p) for p in params}
        theirs = {id(p) for p in ddp.module.parameters() if p.requires_grad}
        if mine != theirs:
            raise ValueError(
                "the DistributedDataParallel model wraps other parameters than the optimizer "
                f"optimizes ({len(theirs)} vs {len(mine)} trainable tensors); build the optimizer "
                "from the DDP model itself: optlab.optimizer(name, ddp_model)."
            )
        self.ddp = ddp
        self.group = group
        self.size = dist.get_world_size(group)
        self.src = group_ranks(group)[0]
        #: DDP forwards seen since the last optimizer step (the closure must call the DDP model)
        self.forwards = 0
        self._hook = ddp.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.forwards += 1

    def close(self) -> None:
        self._hook.remove()

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """``ddp.no_sync()`` for a refresh step's forward and backward.

        DDP skips its buffer broadcast on the forward after a ``no_sync`` forward;
        the flag is restored so the next step broadcasts buffers as a plain step would.
        """
        with self.ddp.no_sync():
            yield
        self.ddp.require_forward_param_sync = True

    def average(self, tensors: list[torch.Tensor | None], like: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Mean over ranks of each tensor, in one coalesced all-reduce (``t / R``, summed, as DDP does).

        ``like[i]`` (a parameter) gives the slot's shape and dtype. A ``None`` entry
        (a parameter unused on this rank) counts as zeros; it stays ``None`` only if
        it is ``None`` on every rank.
        """
        if not tensors:
            return []
        dtype, device = like[0].dtype, like[0].device
        used = torch.tensor([t is not None for t in tensors], dtype=dtype, device=device)
        buf = torch.cat(
            [
                (t.detach().reshape(-1).to(dtype) / self.size)
                if t is not None
                else torch.zeros(q.numel(), dtype=dtype, device=device)
                for t, q in zip(tensors, like)
            ]
            + [used]
        )
        dist.all_reduce(buf, group=self.group)
        out, pos = [], 0
        any_used = buf[-len(tensors) :].tolist()
        for _t, q, u in zip(tensors, like, any_used):
            chunk = buf[pos : pos + q.numel()].view(q.shape)
            pos += q.numel()
            out.append(chunk.to(q.dtype) if u > 0 else None)
        return out

    def broadcast_(self, tensor: torch.Tensor) -> None:
        dist.broadcast(tensor, src=self.src, group=self.group)


class AveragedHVPContext(CurvatureContext):
    """A curvature context whose Hessian-vector products are averaged over the replicas.

    ``hvp_batched`` returns ``(1/R) sum_r H_r v`` (the global batch's ``H v`` for a
    probe shared by all ranks); output products (``outputs``, ``output_vjp_batched``,
    ``output_loss_grad``) stay local (their estimates are averaged by the optimizer).
    """

    def __init__(self, inner: CurvatureContext, replicas: Replicas, model: nn.Module):
        super().__init__(inner.params, inner.names)
        self.inner = inner
        self.replicas = replicas
        self._cross_rank_norm = any(
            isinstance(m, SyncBatchNorm) or isinstance(m, nn.SyncBatchNorm) for m in model.modules()
        )
        self.engine = inner.engine

    @property
    def hvp_count(self):
        return self.inner.hvp_count

    @hvp_count.setter
    def hvp_count(self, value):
        if hasattr(self, "inner"):
            self.inner.hvp_count = value

    @property
    def vjp_count(self):
        return self.inner.vjp_count

    @vjp_count.setter
    def vjp_count(self, value):
        if hasattr(self, "inner"):
            self.inner.vjp_count = value

    def hvp_batched(self, vs, chunk_size=None):
        out = self.inner.hvp_batched(vs, chunk_size=chunk_size)
        keys = list(out)
        avg = self.replicas.average([out[k] for k in keys], [out[k] for k in keys])
        return dict(zip(keys, avg))

    def loss_and_grad_at(self, deltas, *, grad=True):
        """:meth:`CurvatureContext.loss_and_grad_at` of the global batch: loss and gradient averaged over ranks."""
        loss, grads = self.inner.loss_and_grad_at(deltas, grad=grad)
        keys = list(grads)
        avg = self.replicas.average(
            [loss.reshape(1)] + [grads[k] for k in keys], [loss.reshape(1)] + [grads[k] for k in keys]
        )
        self.eval_count = self.inner.eval_count
        return avg[0].reshape(()), dict(zip(keys, avg[1:]))

    def _local_outputs_only(self):
        if self._cross_rank_norm:
            raise NotImplementedError(
                "Gauss-Newton estimators (output-Jacobian products) under DDP need per-sample outputs that "
                "depend on the local batch only, but this model normalizes over all ranks (SyncBatchNorm), "
                "so a rank's output products mix samples of other ranks. Use an HVP-based estimator, e.g. "
                "optlab.optimizer('sophia', model, estimator='hutchinson') (Sophia-H)."
            )

    @property
    def outputs(self):
        self._local_outputs_only()
        return self.inner.outputs

    def output_vjp_batched(self, us, chunk_size=None):
        self._local_outputs_only()
        return self.inner.output_vjp_batched(us, chunk_size=chunk_size)

    def output_loss_grad(self):
        self._local_outputs_only()
        return self.inner.output_loss_grad()


# ---------------------------------------------------------------------- SyncBatchNorm
class _AllReduceSum(Function):
    """``all_reduce(SUM)`` that autograd, double backward and ``vmap`` pass through.

    Its derivative is itself (the transpose of a sum over ranks is a sum over ranks),
    so the backward re-applies it; the vmap rule all-reduces the whole batch at once
    (every rank vmaps over the same number of probes).
    """

    @staticmethod
    def forward(tensor, group):
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.group = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group), None

    @staticmethod
    def jvp(ctx, tangent, _):
        return _AllReduceSum.apply(tangent, ctx.group)

    @staticmethod
    def vmap(info, in_dims, tensor, group):
        return _AllReduceSum.apply(tensor, group), in_dims[0]


def differentiable_all_reduce(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``tensor`` over the ranks of ``group``, differentiable to any order."""
    return _AllReduceSum.apply(tensor, group if group is not None else dist.group.WORLD)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Train-mode BatchNorm with statistics of the global batch; CPU and GPU, twice differentiable.

    ``mean = sum_r sum_i x / N``, ``var = sum_r sum_i (x - mean)^2 / N`` (biased,
    N = global count per channel; two all-reduces, the second on centred values
    for accuracy), then ``(x - mean) / sqrt(var + eps) * weight + bias``. Running
    statistics update as ``nn.BatchNorm`` with the global mean and unbiased
    variance. Without an initialized process group (or in eval mode) it is
    ``F.batch_norm``. With equal local batches, R ranks compute exactly what one
    ``BatchNorm`` computes on the concatenated batch. Any input rank >= 2 (N, C, ...).
    """

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        process_group=None,
        device=None,
        dtype=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D input")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        group = (
            self.process_group
            if self.process_group is not None
            else (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        )
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype, device=input.device)
        total = differentiable_all_reduce(torch.cat([input.sum(dims), count]), group)
        n = total[-1]
        mean = total[:-1] / n
        centred = input - mean.reshape(shape)
        var = differentiable_all_reduce(centred.pow(2).sum(dims), group) / n
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                nn_ = float(n)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * nn_ / max(nn_ - 1, 1), alpha=f)
        return out


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every ``BatchNorm*d`` (and torch's ``nn.SyncBatchNorm``) by :class:`SyncBatchNorm`,
    keeping parameters, buffers and ``requires_grad`` (like ``nn.SyncBatchNorm.convert_sync_batchnorm``)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, process_group
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def check_ddp_known(replicas: Replicas | None, independent: bool, name: str) -> None:
    """A step under an initialized multi-process group must know the DDP model (``replicas``), or
    have been told each process trains its own (``independent``): else nothing would be averaged."""
    if (
        replicas is None
        and not independent
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    ):
        raise RuntimeError(
            f"{name}: torch.distributed is initialized with {dist.get_world_size()} processes but the "
            "optimizer does not know the DistributedDataParallel model, so gradients and curvature would "
            "not be averaged. Build it from the DDP model (optlab.optimizer(name, DDP(model))), or call "
            "opt.distribute(ddp_model) after wrapping (for Lightning: "
            "callbacks=[optlab.integrations.lightning.OptlabCallback()]); opt.distribute(None) if each process deliberately trains its own model."  # noqa: E501
        )


def check_ddp_forward(replicas: Replicas | None, name: str) -> None:
    """The loss of a step under DDP came through the DDP model's forward (else DDP averages nothing)."""
    if replicas is not None and replicas.forwards == 0:
        raise RuntimeError(
            f"{name}: no forward pass of the DistributedDataParallel model ran since the last step; "
            "the loss must come from the DDP model (ddp_model(x)), not from its .module, or DDP "
            "averages nothing."
        )
