"""Step time of a ``torch.compile``-d model vs the eager model, for ``sgd`` and ``sgd-ph`` (not a test).

The model is a deep, narrow BatchNorm MLP (``--depth`` blocks of Linear -> BatchNorm1d -> GELU,
width ``--width``) at a small batch: many small kernels, which is where inductor's fusion of
the element-wise ops and its lower per-op overhead can matter on a CPU. Every step is a
forward-only closure ``opt.step(lambda: loss_fn(model(x), y))``; with ``sgd-ph`` at ``every``
(default 50) one step in ``every`` refreshes curvature and runs eagerly (optlab.optim.compiled), so it
is reported separately. Eager and compiled runs take turns step by step (same machine load);
reported: median milliseconds per step of each kind and the ratio compiled / eager (< 1: the
compiled model is faster), plus the one-off compile time (first compiled step).

Inductor on CPU needs a C++ compiler (g++ / clang); the script stops with a message without one.

    .venv/bin/python benchmarks/compile_speedup.py [--steps 200] [--every 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import optlab


def make_model(width: int, depth: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(width if i else 64, width), nn.BatchNorm1d(width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


def measure(name: str, args) -> dict:
    hp = dict(lr=0.05, **({"every": args.every} if name == "sgd-ph" else {}))
    eager_model, comp_model = make_model(args.width, args.depth), make_model(args.width, args.depth)
    compiled = torch.compile(comp_model)
    runs = {
        "eager": (eager_model, optlab.optimizer(name, eager_model, seed=0, **hp)),
        "compiled": (compiled, optlab.optimizer(name, compiled, seed=0, **hp)),
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 64, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    times: dict[tuple[str, bool], list[float]] = {}
    compile_s = 0.0
    for step in range(args.steps + args.warmup):
        for kind, (model, opt) in runs.items():
            refresh = opt.needs_graph()
            t0 = time.perf_counter()
            opt.step(lambda model=model: F.cross_entropy(model(x), y))
            dt = time.perf_counter() - t0
            if kind == "compiled" and step < args.warmup:
                compile_s += dt
            if step >= args.warmup:
                times.setdefault((kind, refresh), []).append(dt)
    out = {"compile_s": compile_s}
    for refresh in (False, True):
        e, c = times.get(("eager", refresh)), times.get(("compiled", refresh))
        if e and c:
            me, mc = statistics.median(e), statistics.median(c)
            out["refresh" if refresh else "plain"] = (len(e), 1e3 * me, 1e3 * mc, mc / me)
    e_all = [t for (k, _), ts in times.items() if k == "eager" for t in ts]
    c_all = [t for (k, _), ts in times.items() if k == "compiled" for t in ts]
    out["all (mean)"] = (len(e_all), 1e3 * statistics.fmean(e_all), 1e3 * statistics.fmean(c_all), 0.0)
    out["all (mean)"] = (*out["all (mean)"][:3], out["all (mean)"][2] / out["all (mean)"][1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured first steps (the compile happens here)")
    ap.add_argument("--every", type=int, default=50, help="sgd-ph curvature refresh interval")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.device == "cpu" and shutil.which("g++") is None and shutil.which("clang++") is None:
        raise SystemExit("torch.compile's inductor backend needs a C++ compiler on CPU (g++ or clang++); none found")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.device}, {args.threads} thread(s); MLP {args.depth} x "
        f"(Linear {args.width} -> BatchNorm1d -> GELU), batch {args.batch}; {args.steps} measured steps, "
        f"sgd-ph every={args.every}"
    )
    print(f"{'optimizer':10} {'steps':>12} {'n':>5} {'eager ms':>9} {'compiled ms':>12} {'compiled/eager':>15}")
    for name in ("sgd", "sgd-ph"):
        res = measure(name, args)
        for kind in ("plain", "refresh", "all (mean)"):
            if kind in res:
                n, me, mc, ratio = res[kind]
                print(f"{name:10} {kind:>12} {n:5d} {me:9.3f} {mc:12.3f} {ratio:15.2f}")
        print(f"{name:10} {'compile (s)':>12} {'':5} {'':9} {res['compile_s']:12.1f}")


if __name__ == "__main__":
    main()
