"""``optlab diagnose``: is the partial Hessian diagonal? Estimator errors and costs."""

from __future__ import annotations

from pathlib import Path

from .common import HelpFormatter, add_model_args, build_model


def cmd_diagnose(args) -> int:
    import torch

    from ..diagnostics import READING_GUIDE, diagnose, plot_diagnostics

    torch.manual_seed(args.seed)
    task, model = build_model(args)
    model = model.double() if args.float64 else model
    x, y = task.x_train[: args.batch_size], task.y_train[: args.batch_size]
    if args.float64:
        x = x.double()
    if args.warmup_steps:
        from ..api import optimizer

        opt = optimizer("sgd", model, lr=0.05)
        g = torch.Generator().manual_seed(args.seed)
        for _i, (xb, yb) in zip(range(args.warmup_steps), task.train_batches(args.batch_size, g)):
            opt.zero_grad()
            task.loss_fn(model(xb.to(x.dtype)), yb).backward()
            opt.step()
    df = diagnose(
        model,
        (x, y),
        loss_fn=task.loss_fn,
        selector=args.selector,
        max_block=args.max_block,
        engine=args.engine,
        seed=args.seed,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"diagnose_{args.task}_{args.model}"
    df.to_csv(out / f"{stem}.csv", index=False)
    fig = plot_diagnostics(df)
    fig.savefig(out / f"{stem}.png", dpi=120, bbox_inches="tight")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 12, "display.float_format", "{:.3g}".format):
        cols = ["tensor", "size", "offdiag_frob_mass", "neg_diag_frac"] + [
            c for c in df.columns if c.endswith("_relerr")
        ]
        print(df[cols].to_string(index=False))
    print(READING_GUIDE)
    print(f"wrote {out / (stem + '.csv')} and {out / (stem + '.png')}")
    return 0


def add_diagnose_parser(sub) -> None:
    sp = sub.add_parser(
        "diagnose", formatter_class=HelpFormatter, help="is the partial Hessian diagonal? estimator errors and costs"
    )
    add_model_args(sp)
    sp.add_argument("--batch-size", type=int, default=128, help="samples in the measured batch")
    sp.add_argument("--selector", default="channelwise", help="which parameters' blocks to measure")
    sp.add_argument("--max-block", type=int, default=4096, help="skip tensors larger than this (dense block cost)")
    sp.add_argument("--engine", default="autograd", choices=["autograd", "func"], help="HVP engine")
    sp.add_argument("--seed", type=int, default=0, help="seed of model init and estimators")
    sp.add_argument("--warmup-steps", type=int, default=0, help="SGD steps before measuring")
    sp.add_argument("--float64", action="store_true", help="measure in float64")
    sp.add_argument("--out", default="reports/diagnose", help="folder for the CSV and figure")
    sp.set_defaults(fn=cmd_diagnose)
