"""How large is SGD-PH's channel-wise step relative to SGD-M's?  (issue 10, claim 3)

    python benchmarks/step_multiplier.py [--seeds 3] [--epochs 8]

The diag-Newton update of a channel-wise entry is SGD-M's update (lr * momentum
buffer) times the step multiplier m = tau / (r(D_hat) + eps), with D_hat the
bias-corrected curvature EMA and r the rectification. With ``rectify_at="use"``
(optlab's default for stochastic estimators: average signed estimates, rectify
when dividing) an entry whose averaged estimate is near 0 gets m close to tau/eps
(= 10 at the defaults): a step 10x SGD-M's. With ``rectify_at="refresh"`` (the
paper: average |estimates|) D_hat is bounded away from 0 by the noise magnitude.

Trains digits/cnn-bn and mnist1d/cnn1d with ``sgd-ph`` (lr 0.1, wd 5e-4, cosine)
and records, at every step after the first refresh, the distribution of m over
all channel-wise entries; prints per configuration the share of (step, entry)
pairs with m > 1 (a step larger than SGD-M's), the median and the 99th percentile
of m, and the final validation/test accuracy, averaged over seeds.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from optlab.builtins.steppers import rectify
from optlab.training.config import RunConfig
from optlab.training.loop import _build, _evaluate

CONFIGS = {
    "default (block_rademacher/50, rectify_at=use)": {},
    "block_rademacher/50, rectify_at=refresh": {"rectify_at": "refresh"},
    "block_rademacher/50, rectify=clip floor=1e-3 (at use)": {"rectify": "clip", "floor": 1e-3},
    "paper schedule (rowsum_hvp, round-robin, every step)": {
        "estimator": "rowsum_hvp",
        "schedule": "round_robin",
        "every": 1,
    },
}


def multipliers(opt) -> torch.Tensor:
    out = []
    for g in opt.param_groups:
        if g.get("rule") != "channelwise":
            continue
        for p in g["params"]:
            st = opt.state.get(p, {})
            n = st.get("hessian_refreshes", 0)
            if not n:
                continue
            D = st["hessian"] / (1 - g["hessian_momentum"] ** n)
            r = rectify(D, g["rectify"], g["floor"], g["damping"]) if g["rectify_at"] == "use" else D
            out.append((g["tau"] / (r + g["eps"])).flatten())
    return torch.cat(out) if out else torch.zeros(0)


def run(task: str, model: str, hp: dict, seed: int, epochs: int) -> dict:
    cfg = RunConfig(
        task=task,
        model=model,
        optimizer="sgd-ph",
        seed=seed,
        epochs=epochs,
        batch_size=64,
        lr_schedule="cosine",
        hparams={"lr": 0.1, "weight_decay": 5e-4, **hp},
    )
    t, m, opt, sched, gen, _, _ = _build(cfg, torch.device("cpu"))
    ms = []
    for _ in range(epochs):
        for x, y in t.train_batches(cfg.batch_size, gen):
            opt.step(lambda: (t.loss_fn(out := m(x), y), out))
            sched.step()
            mult = multipliers(opt)
            if mult.numel():
                ms.append(mult)
    allm = torch.cat(ms).double()
    return {
        "share_gt1": float((allm > 1).double().mean()),
        "median": float(allm.median()),
        "p99": float(torch.quantile(allm[torch.randperm(len(allm))[:200_000]], 0.99)),
        "val_acc": _evaluate(m, t, "val")[1],
        "test_acc": _evaluate(m, t, "test")[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs per run (default 8)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print("| task | configuration | share of steps with m > 1 | median m | 99th pct m | val acc | test acc |")
    print("|---|---|---|---|---|---|---|")
    for task, model in (("digits", "cnn-bn"), ("mnist1d", "cnn1d")):
        for name, hp in CONFIGS.items():
            rs = [run(task, model, hp, s, args.epochs) for s in range(args.seeds)]
            avg = {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]}
            print(
                f"| {task} | {name} | {avg['share_gt1']:.3f} | {avg['median']:.3f} | {avg['p99']:.2f} | "
                f"{avg['val_acc']:.4f} | {avg['test_acc']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
