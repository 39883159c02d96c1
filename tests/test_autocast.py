"""``torch.autocast`` on CPU with bfloat16 (README: "torch.autocast works"), every preset, and
SyncBatchNorm's statistics under autocast in a real 2-process gloo group.

Tolerances are measured, not guessed (CPU, torch 2.13, this file's problem, 5 steps): the
largest relative gap between the autocast and the float32 loss on any step was 1.04 % for
``adahessian`` (its Hutchinson estimate squares a bf16 HVP) and <= 0.03 % for every other preset.
Parameters are not compared entry by entry: sign-like updates (Adam's first steps, Lion, Sophia's
clipping) flip on entries whose gradient is near zero, so the parameter gap is 1-40 % of the
displacement while the losses agree.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import optlab
from optlab.optim.ddp import SyncBatchNorm, convert_sync_batchnorm
from optlab.plugin import registry

PRESETS = sorted(registry.items("preset"))
LOSS_RTOL = {"adahessian": 0.03}  # measured 1.04 %
DEFAULT_LOSS_RTOL = 0.005  # measured <= 0.03 %


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _train(name, autocast, steps=5):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    model = _model()
    kw = {"every": 1} if name in ("sophia", "adahessian", "sgd-ph") else {}  # curvature on every step
    opt = optlab.optimizer(name, model, seed=0, **kw)
    losses = []
    for _ in range(steps):

        def closure():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(x)
                loss = F.cross_entropy(out, y)
            assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
            return loss, out

        losses.append(float(opt.step(closure)))
    return model, losses


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_trains_under_cpu_bf16_autocast_like_float32(name):
    m32, l32 = _train(name, autocast=False)
    m16, l16 = _train(name, autocast=True)
    assert all(math.isfinite(v) for v in l16), l16
    for p in m16.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
    p0 = torch.cat([p.detach().flatten() for p in _model().parameters()])
    moved = torch.cat([p.detach().flatten() for p in m16.parameters()])
    assert (moved - p0).abs().max() > 0, "no step was taken under autocast"
    rtol = LOSS_RTOL.get(name, DEFAULT_LOSS_RTOL)
    for t, (a, b) in enumerate(zip(l32, l16), start=1):
        assert abs(a - b) <= rtol * abs(a), f"{name}: step {t} loss {b} under autocast vs {a} in float32"
    assert l16[-1] < l16[0], f"{name}: the loss did not fall under autocast ({l16})"


# ------------------------------------------------------------------ SyncBatchNorm under autocast
WORLD = 2


def _rank_input(rank):
    """Rank 0: mean 0, rank 1: mean 1.5 per channel (local statistics differ from the global ones)."""
    g = torch.Generator().manual_seed(10 + rank)
    return (torch.randn(6, 4, 5, 5, generator=g) * (1 + rank) + 1.5 * rank).to(torch.bfloat16)


def _syncbn_worker(rank, store, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4, momentum=1.0)))  # running = batch stats
        assert isinstance(bn[0], SyncBatchNorm)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = bn(_rank_input(rank))
        if rank == 0:
            with open(path, "w") as f:
                json.dump(
                    {
                        "mean": bn[0].running_mean.tolist(),
                        "var": bn[0].running_var.tolist(),
                        "buffer_dtype": str(bn[0].running_mean.dtype),
                        "out_dtype": str(out.dtype),
                        "finite": bool(torch.isfinite(out).all()),
                    },
                    f,
                )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _reference_stats():
    """float64 statistics of the global batch of bf16 inputs (mean, unbiased variance per channel)."""
    x = torch.cat([_rank_input(r) for r in range(WORLD)]).double()
    dims = (0, 2, 3)
    return x.mean(dims), x.var(dims, unbiased=True)


def _float32_bn_stats():
    """What one process's nn.BatchNorm2d computes from the same global batch under autocast."""
    bn = nn.BatchNorm2d(4, momentum=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bn(torch.cat([_rank_input(r) for r in range(WORLD)]))
    return bn.running_mean.double(), bn.running_var.double()


@pytest.fixture(scope="module")
def syncbn_stats(tmp_path_factory):
    d = tmp_path_factory.mktemp("syncbn")
    path = d / "stats.json"
    mp.spawn(_syncbn_worker, args=(str(d / "store"), str(path)), nprocs=WORLD, join=True)
    return json.loads(path.read_text())


def test_syncbn_statistics_under_autocast_are_the_global_batch_statistics(syncbn_stats):
    """Global statistics (not rank 0's own), finite, buffers stay float32. Accuracy is bf16's:
    the sums and the variance are computed in the input dtype (bf16, 8 significant bits), so each
    statistic is within 2^-7 relative (+ 2^-7 of the channel's spread for the mean) of the
    float64 statistics of the same inputs; rank 0's local mean is ~0.75 away from the global one."""
    ref_mean, ref_var = _reference_stats()
    mean, var = (
        torch.tensor(syncbn_stats["mean"], dtype=torch.float64),
        torch.tensor(syncbn_stats["var"], dtype=torch.float64),
    )
    assert syncbn_stats["buffer_dtype"] == "torch.float32" and syncbn_stats["finite"]
    tol = 2.0**-7
    assert ((mean - ref_mean).abs() <= tol * (ref_mean.abs() + ref_var.sqrt())).all(), (mean, ref_mean)
    assert ((var - ref_var).abs() <= tol * ref_var).all(), (var, ref_var)
    local = _rank_input(0).double().mean((0, 2, 3))
    assert ((local - ref_mean).abs() > 0.5).all()  # the check above could tell local from global


@pytest.mark.xfail(
    strict=True,
    reason="SyncBatchNorm computes its statistics in the input dtype (bf16 under autocast); "
    "nn.BatchNorm2d computes them in float32. Remove the xfail when SyncBatchNorm upcasts.",
)
def test_syncbn_statistics_under_autocast_are_as_accurate_as_float32_batchnorm(syncbn_stats):
    ref_mean, ref_var = _reference_stats()
    m32, v32 = _float32_bn_stats()
    err32 = max(((m32 - ref_mean).abs() / ref_var.sqrt()).max().item(), ((v32 - ref_var).abs() / ref_var).max().item())
    mean, var = (
        torch.tensor(syncbn_stats["mean"], dtype=torch.float64),
        torch.tensor(syncbn_stats["var"], dtype=torch.float64),
    )
    err = max(((mean - ref_mean).abs() / ref_var.sqrt()).max().item(), ((var - ref_var).abs() / ref_var).max().item())
    assert err32 < 1e-5
    assert err <= 10 * max(err32, 1e-6), f"SyncBatchNorm under autocast: {err:.2e} vs nn.BatchNorm2d {err32:.2e}"
