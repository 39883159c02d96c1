"""Wall time of one small trial on 1 process vs ``nproc`` processes (torchrun + DDP, gloo).

    python benchmarks/nproc_wall.py                          # digits / cnn-bn / sgd-ph, 3 epochs, 3 rounds
    python benchmarks/nproc_wall.py --nproc 2 --epochs 5 --rounds 5 --model mlp-bn

Each round runs the same configuration with ``nproc=1`` and ``nproc=N`` in turn (so machine
load hits both alike) through :func:`optlab.training.loop.train`, with the machine's cores split
evenly (``--threads / N`` torch threads per process; default: all cores). Reported per setting, medians over rounds:

* wall: ``train()``'s wall time, process start-up included (torchrun and N Python processes
  importing torch for ``nproc > 1``);
* training: the sum of the epochs' times (forward, backward, curvature, update, evaluation);
* start-up: wall - training (building the task and model; for ``nproc > 1`` also launching);
* per step: training time / steps.

The numbers are checked for equality as they go: both settings must reach the same final
metrics (float32 here, so to ~1e-4; the float64 tests in tests/test_nproc.py pin 1e-6).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from optlab.training.config import RunConfig
from optlab.training.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--task", default="digits")
    ap.add_argument("--model", default="cnn-bn")
    ap.add_argument("--optimizer", default="sgd-ph")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in all (split by nproc)")
    args = ap.parse_args()
    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    torch.set_num_threads(args.threads)
    rows: dict[int, list[dict]] = {1: [], args.nproc: []}
    for r in range(args.rounds):
        finals = {}
        for n in rows:
            cfg = RunConfig(
                task=args.task,
                model=args.model,
                optimizer=args.optimizer,
                epochs=args.epochs,
                batch_size=args.batch_size,
                nproc=n,
            )
            res = train(cfg, progress=False)
            assert res["status"] == "ok", res["error"]
            training = sum(m["time_epoch"] for m in res["metrics"])
            steps = args.epochs * _steps(cfg)
            rows[n].append({"wall": res["wall_time"], "training": training, "per_step": training / steps})
            finals[n] = res["metrics"][-1]["train_loss"]
            print(f"round {r + 1} nproc={n}: wall {res['wall_time']:.1f}s, training {training:.1f}s", flush=True)
        a, b = finals.values()
        assert abs(a - b) < 1e-3 * max(1.0, abs(a)), finals
    print(
        f"\n{args.task}/{args.model}/{args.optimizer}, {args.epochs} epochs, batch {args.batch_size}, "
        f"{os.cpu_count()} cores, {args.threads} threads in all, load average {os.getloadavg()[0]:.1f}; "
        f"medians of {args.rounds} rounds"
    )
    print(f"{'nproc':>5}  {'wall s':>8}  {'training s':>10}  {'start-up s':>10}  {'per step ms':>11}")
    for n, rs in rows.items():
        wall = statistics.median(x["wall"] for x in rs)
        tr = statistics.median(x["training"] for x in rs)
        step = statistics.median(x["per_step"] for x in rs)
        print(f"{n:>5}  {wall:>8.1f}  {tr:>10.1f}  {wall - tr:>10.1f}  {1000 * step:>11.1f}")


def _steps(cfg: RunConfig) -> int:
    from optlab.training.tasks import make_task

    return make_task(cfg.task, seed=cfg.seed, **cfg.task_options).num_train_batches(cfg.batch_size)


if __name__ == "__main__":
    main()
