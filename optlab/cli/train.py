"""``optlab train``: one training run with per-epoch metrics."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from .common import HelpFormatter, add_option_args, key_values

#: shortcuts of ``optlab train`` for common hyperparameters (the rest through ``--hp KEY=VALUE``)
TRAIN_HPARAM_FLAGS = ("lr", "momentum", "weight-decay", "hessian-momentum", "tau", "eps")


def cmd_train(args) -> int:
    """One training run: per-epoch lines on stdout; resumes from ``--checkpoint``; ``--out`` the result."""
    from ..training.launch import TrialLost
    from ..training.loop import train

    cfg = run_config(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"invalid --threads {args.threads}; expected an integer >= 1")
        import torch

        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            # the per-batch bar only on a terminal: in a log, the per-epoch lines alone
            res = train(cfg, checkpoint=args.checkpoint, on_epoch=print_epoch, progress=sys.stderr.isatty())
        except KeyboardInterrupt:
            where = (
                f"the last finished epoch is saved in {args.checkpoint}; rerun the same command to resume"
                if args.checkpoint
                else "no --checkpoint was given, so nothing was saved"
            )
            print(f"\ninterrupted: {where}", file=sys.stderr)
            return 130
        except TrialLost as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    _print_resumed(res, args.checkpoint, cfg.epochs)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {args.out}")
    print(f"status: {res['status']}" + (f" ({res['error']})" if res["error"] else ""))
    return 0 if res["status"] != "failed" else 1


def run_config(args):
    """The :class:`~optlab.training.config.RunConfig` of ``optlab train``'s arguments: one per field
    that declares ``cli`` metadata, the hyperparameter shortcuts and ``--hp``, the task/model options."""
    from ..training.config import RunConfig, cli_fields

    hp = key_values(args.hp)
    for key in TRAIN_HPARAM_FLAGS:
        v = getattr(args, key.replace("-", "_"))
        if v is not None:
            hp[key.replace("-", "_")] = v
    return RunConfig(
        **{f.name: getattr(args, f.name) for f, _ in cli_fields()},
        hparams=hp,
        task_options=key_values(args.task_option),
        model_options=key_values(args.model_option),
    )


def print_epoch(row: dict) -> None:
    """One epoch's line: losses, accuracies, learning rate(s), time by phase, HVPs."""
    lrs = row.get("lrs") or {}
    lr = (
        f"lr {row['lr']:.4g}"
        if len(set(lrs.values())) <= 1
        else "lr " + " ".join(f"{k}={v:.4g}" for k, v in lrs.items())
    )  # every rule's lr
    print(
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
        f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  {lr}  "
        f"time {row['time_epoch']:.2f}s (fb {row['time_forward_backward']:.2f} curv "
        f"{row['time_curvature']:.2f} upd {row['time_update']:.2f})  hvps {row['hvp_count']}"
    )


def _print_resumed(res: dict, checkpoint: str | None, epochs: int) -> None:
    """What a checkpoint contributed: every epoch already (nothing trained), or the epoch resumed after."""
    done = res.get("resumed_from_epoch")
    if done is not None and done >= epochs:
        print(
            f"checkpoint {checkpoint} already holds all {epochs} epochs of this configuration: nothing "
            "was trained. Its last epoch:",
        )
        print_epoch(res["metrics"][-1])
        print(f"(delete {checkpoint} or pass another --checkpoint to train again)")
    elif done:
        print(f"resumed from {checkpoint} after epoch {done}/{epochs}")


def add_train_parser(sub) -> None:
    """``optlab train``: one option per :class:`~optlab.training.config.RunConfig` field that declares
    ``cli`` metadata (flag ``--<field-name>``, default and help from the declaration)."""
    from ..training.config import cli_fields

    sp = sub.add_parser("train", formatter_class=HelpFormatter, help="one training run with per-epoch metrics")
    for f, cli in cli_fields():
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            sp.add_argument(flag, action="store_true", help=cli["help"])
            continue
        kw = {k: v for k, v in cli.items() if k in ("type", "choices", "nargs", "help")}
        sp.add_argument(flag, default=f.default, **kw)
    add_option_args(sp)
    for key in TRAIN_HPARAM_FLAGS:
        sp.add_argument(
            f"--{key}", type=float, default=None, help=f"{key.replace('-', '_')} (unset: the optimizer's default)"
        )
    sp.add_argument("--hp", action="append", metavar="KEY=VALUE", help="any other hyperparameter, JSON value")
    sp.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, all cores; with --nproc N, each process gets threads/N)",
    )
    sp.add_argument("--checkpoint", help="checkpoint file: saved every epoch, resumed from if present")
    sp.add_argument("--out", help="write the result (config, metrics, status) as JSON")
    sp.set_defaults(fn=cmd_train)
