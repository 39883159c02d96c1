"""Step cost under DistributedDataParallel: each preset vs DDP + torch.optim.SGD (not a test).

Two gloo ranks on this machine (CPU), one thread each, a small BatchNorm CNN,
a different batch per rank. Every optimizer runs the same number of steps;
steps are split into *plain* (no curvature refresh: DDP's reducer, the cost to
beat is ``loss.backward(); SGD.step()``) and *refresh* (no_sync + graph +
HVPs + explicit all-reduces). Optimizers take turns step by step (same machine load); reported: median wall
time per step (rank 0, after a barrier, so both ranks start together) and its ratio to the median
DDP + torch SGD step.

    .venv/bin/python benchmarks/ddp_step_cost.py [--steps 60] [--every 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import optlab

PRESETS = {
    "sgd": {},
    "sgd-ph": dict(every=None),
    "sgd-ph-reference": {},  # refreshes one tensor every step
    "adahessian": dict(every=None),
    "sophia": dict(every=None),
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def worker(rank: int, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    steppers = {}  # name -> (step function, "does this step refresh?")
    model = DDP(make_model())
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def torch_step(model=model):
        sgd.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sgd.step()

    steppers["DDP + torch.optim.SGD"] = (torch_step, lambda: False)
    for name, hp in PRESETS.items():
        hp = {k: (args.every if v is None else v) for k, v in hp.items()}
        m = DDP(make_model())
        opt = optlab.optimizer(name, m, seed=0, lr=0.01, **hp)

        def step(opt=opt, m=m):
            opt.step(lambda: (F.cross_entropy(out := m(x), y), out))

        steppers[name] = (step, lambda opt=opt: bool(opt._refreshing(opt._plan())))

    times = {name: {"plain": [], "refresh": []} for name in steppers}
    for i in range(args.warmup + args.steps):  # interleaved: every optimizer sees the same machine load
        for name, (step_fn, is_refresh) in steppers.items():
            r = is_refresh()
            dist.barrier()
            t0 = time.perf_counter()
            step_fn()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name]["refresh" if r else "plain"].append(dt)
    rows = {
        name: {
            "plain": statistics.median(t["plain"]) if t["plain"] else float("nan"),
            "refresh": statistics.median(t["refresh"]) if t["refresh"] else float("nan"),
            "n_refresh": len(t["refresh"]),
        }
        for name, t in times.items()
    }

    if rank == 0:
        base = rows["DDP + torch.optim.SGD"]["plain"]
        print(
            f"2 gloo ranks, 1 thread each, batch {args.batch}/rank, {args.steps} timed steps "
            f"(+{args.warmup} warm-up), refresh every {args.every} (sgd-ph-reference: every step, one tensor)"
        )
        print(f"{'optimizer':24s} {'plain ms':>9s} {'ratio':>7s} {'refresh ms':>11s} {'ratio':>7s} {'#refresh':>9s}")
        for name, r in rows.items():
            print(
                f"{name:24s} {1e3 * r['plain']:9.2f} {r['plain'] / base:7.3f} {1e3 * r['refresh']:11.2f} "
                f"{r['refresh'] / base:7.3f} {r['n_refresh']:9d}"
            )
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per optimizer (default 60)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    ap.add_argument("--every", type=int, default=5, help="curvature refresh interval (default 5)")
    ap.add_argument("--batch", type=int, default=64, help="samples per rank (default 64)")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, args), nprocs=2, join=True)


if __name__ == "__main__":
    main()
