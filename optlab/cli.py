"""``optlab`` command line: plugins, explain, train, grid run/status, diagnose, report."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

from . import progress


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _kv(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: expected KEY=VALUE, got {item!r} (e.g. --hp hessian_momentum=0.99)")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = _value(v)
    return out


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive number, e.g. 0.005")
    return v


def _probability(text: str) -> float:
    v = _positive(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number in (0, 1), e.g. 0.05")
    return v


def _summary(item) -> str:
    """The first paragraph of an item's docstring, on one line (what ``optlab plugins`` shows)."""
    doc = inspect.getdoc(item) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    return text[:-2] + "." if text.endswith("::") else text  # reST literal-block marker


def cmd_plugins(args) -> int:
    from .plugin import registry

    if args.check is not None:
        return _check_plugins(args.check or None)
    errors = registry.load_errors()
    rows = [
        (kind, name, e.plugin, _summary(e.item))
        for kind in registry.KINDS
        for name, e in sorted(registry.items(kind).items(), key=lambda ne: (ne[1].name, ne[0]))
    ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    indent = sum(w) + 6
    # descriptions wrap at word boundaries to the terminal (80 columns when not a terminal), never cut
    width = max(shutil.get_terminal_size((100, 24)).columns, indent + 30)
    print(f"{'kind'.ljust(w[0])}  {'name'.ljust(w[1])}  {'plugin'.ljust(w[2])}  description")
    for r in rows:
        lines = textwrap.wrap(r[3], width - indent, break_long_words=False, break_on_hyphens=False) or ["-"]
        print(f"{r[0].ljust(w[0])}  {r[1].ljust(w[1])}  {r[2].ljust(w[2])}  {lines[0]}")
        for line in lines[1:]:
            print(" " * indent + line)
    clashes = registry.clashes()
    if clashes:
        print("\nclashes: several plugins provide these short names; use a qualified name <plugin>:<item>")
        for (kind, short), choices in clashes.items():
            print(f"  {kind} {short!r}: {', '.join(choices)}")
    if getattr(args, "hparams", False):
        _print_optimizer_hparams(width)
    for e in errors:
        print(f"warning: {e}", file=sys.stderr)
    return 0


def _check_plugins(name: str | None) -> int:
    """``optlab plugins --check [NAME]``: the conformance kit on plugin NAME's items (default: every
    plugin but the built-ins); exit 1 when an item fails or was rejected at load."""
    import warnings

    from .optim.hparams import unknown_name
    from .plugin import registry
    from .testing import check_plugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rejections are reported below as failures
        loaded = registry.plugin_names()
        rejected = registry.rejected()
    known = sorted(set(loaded) | {p for p, *_ in rejected})
    if name is not None and name not in known:
        print(f"optlab plugins --check: {unknown_name('plugin', name, known)}", file=sys.stderr)
        return 2
    names = [name] if name else [p for p in known if p != "builtins"]
    if not names:
        print("no plugin besides the built-ins is installed (check them with `optlab plugins --check builtins`)")
        return 0
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for plugin in names:
        print(f"plugin {plugin}:")
        results = check_plugin(plugin)
        width = max((len(r.name) for r in results), default=0)
        for r in results:
            counts[r.status] += 1
            print(f"  {r.status.upper():4}  {r.kind:9}  {r.name.ljust(width)}  {r.detail}")
        if not results:
            print("  (registers no item)")
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} not checked")
    return 1 if counts["fail"] else 0


def _print_optimizer_hparams(width: int) -> None:
    """``optlab plugins --hparams``: each optimizer's entry (kind, step protocol, declared defaults)."""
    from .api import optimizer_entry, optimizer_names

    print("\noptimizer hyperparameters (defaults; '...': also forwards options to its parts):")
    for name in optimizer_names():
        entry = optimizer_entry(name)
        hps = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items()) + (", ..." if entry.open_hparams else "")
        graph = "; steps need a double-backward graph" if entry.create_graph else ""
        text = f"{name} ({entry.kind}{graph}): {hps}"
        for line in textwrap.wrap(text, width - 4, subsequent_indent="    ", break_long_words=False):
            print("  " + line)


def _build_model(args):
    from .training.tasks import make_model, make_task

    task = make_task(args.task, **_kv(getattr(args, "task_option", None)))
    model = make_model(args.model, task.info, decouple=args.decouple, **_kv(getattr(args, "model_option", None)))
    return task, model


def cmd_explain(args) -> int:
    from .api import explain, optimizer_entry

    entry = optimizer_entry(args.optimizer)
    if entry.kind == "baseline":  # no rules: every parameter goes to the one torch optimizer
        hps = {**entry.defaults, **_kv(args.hp)}
        entry.check_names(hps)
        print(
            f"{entry.name}: baseline from plugin {entry.plugin!r}, not built from rules: every trainable "
            f"parameter is updated by {_summary(entry.builder) or entry.name}\n"
            "hyperparameters: " + ", ".join(f"{k}={v!r}" for k, v in hps.items())
        )
        return 0
    _, model = _build_model(args)
    explain(model, args.optimizer, **_kv(args.hp))
    return 0


def cmd_train(args) -> int:
    from .training.config import RunConfig, cli_fields
    from .training.launch import TrialLost
    from .training.loop import train

    hp = _kv(args.hp)
    for key in TRAIN_HPARAM_FLAGS:
        v = getattr(args, key.replace("-", "_"))
        if v is not None:
            hp[key.replace("-", "_")] = v
    cfg = RunConfig(
        **{f.name: getattr(args, f.name) for f, _ in cli_fields()},
        hparams=hp,
        task_options=_kv(args.task_option),
        model_options=_kv(args.model_option),
    )

    def show(row):
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

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"invalid --threads {args.threads}; expected an integer >= 1")
        import torch

        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            # the per-batch bar only on a terminal: in a log, the per-epoch lines alone
            res = train(cfg, checkpoint=args.checkpoint, on_epoch=show, progress=sys.stderr.isatty())
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
    done = res.get("resumed_from_epoch")
    if done is not None and done >= cfg.epochs:
        print(
            f"checkpoint {args.checkpoint} already holds all {cfg.epochs} epochs of this configuration: nothing "
            "was trained. Its last epoch:",
        )
        show(res["metrics"][-1])
        print(f"(delete {args.checkpoint} or pass another --checkpoint to train again)")
    elif done:
        print(f"resumed from {args.checkpoint} after epoch {done}/{cfg.epochs}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {args.out}")
    print(f"status: {res['status']}" + (f" ({res['error']})" if res["error"] else ""))
    return 0 if res["status"] != "failed" else 1


def cmd_grid(args) -> int:
    from .grid.dispatch import GridInterrupted
    from .grid.run import grid_status, run_grid
    from .grid.spec import load_spec

    spec = load_spec(args.spec)
    if args.grid_cmd == "run":
        options = _kv(args.executor_option)
        chosen = args.executor or (spec.data.get("executor") or {}).get("name", "local")
        for flag, key, applies in (
            ("address", "address", ("ray",)),
            ("partition", "partition", ("submitit",)),
            ("time_min", "time_min", ("submitit",)),
            ("gpus", {"ray": "gpus_per_trial", "submitit": "gpus_per_task"}, ("ray", "submitit")),
        ):
            value = getattr(args, flag)
            if value is None:
                continue
            if chosen not in applies:
                raise ValueError(
                    f"--{flag.replace('_', '-')} applies to executor {' / '.join(applies)}, "
                    f"not {chosen!r} (choose one with --executor)"
                )
            options[key[chosen] if isinstance(key, dict) else key] = value
        import signal

        from .grid.executors import AbandonRunning

        def terminate(signum, frame):  # a batch system's time limit, `kill`: abandon running trials now
            raise AbandonRunning()

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            counts = run_grid(
                spec,
                workers=args.workers,
                results=args.results,
                retry_failed=args.retry_failed,
                threads=args.threads,
                executor=args.executor,
                executor_options=options,
            )
        except GridInterrupted as exc:
            terminated = isinstance(exc.__cause__, AbandonRunning)
            done = {k: v for k, v in exc.counts.items() if k not in ("results",)}
            how = "terminated (SIGTERM)" if terminated else "interrupted"
            print(f"grid {spec.name} {how} -> " + ", ".join(f"{k}: {v}" for k, v in done.items()), file=sys.stderr)
            print(
                f"Everything finished is saved in {exc.counts['results']}; resume with: optlab grid run {args.spec}"
                + (f" --results {args.results}" if args.results else ""),
                file=sys.stderr,
            )
            return 143 if terminated else 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        print("grid", spec.name, "->", ", ".join(f"{k}: {v}" for k, v in counts.items()))
        return 0
    st = grid_status(spec, results=args.results)
    print(
        f"grid {spec.name}: {st['total']} trials -- ok {st['ok']}, diverged {st['diverged']}, "
        f"failed {st['failed']}, running {st['running']}, missing {st['missing']}, invalid {st['invalid']}"
        f"  ({st['results']})"
    )
    ev = st.get("evaluation")
    if ev is not None:
        wait = f" (waiting for tuning of {', '.join(ev['waiting'])})" if ev["waiting"] else ""
        print(
            f"  evaluation stage: {ev['total']} trials -- ok {ev['ok']}, diverged {ev['diverged']}, failed "
            f"{ev['failed']}, running {ev['running']}, missing {ev['missing']}, invalid {ev['invalid']}"
            f"{wait}"
        )
    if st["invalid_files"]:
        print(
            f"{len(st['invalid_files'])} trial file(s) do not validate (the next `optlab grid run` moves them to "
            "quarantine/ and reruns their trials):"
        )
        for line in st["invalid_files"][:20]:
            print(f"  {line}")
        if len(st["invalid_files"]) > 20:
            print(f"  ... and {len(st['invalid_files']) - 20} more")
    return 0


def cmd_diagnose(args) -> int:
    import torch

    from .diagnostics import READING_GUIDE, diagnose, plot_diagnostics

    torch.manual_seed(args.seed)
    task, model = _build_model(args)
    model = model.double() if args.float64 else model
    x, y = task.x_train[: args.batch_size], task.y_train[: args.batch_size]
    if args.float64:
        x = x.double()
    if args.warmup_steps:
        from .api import optimizer

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


def cmd_report(args) -> int:
    import warnings

    import pandas as pd

    from .analysis import comparisons, load
    from .analysis.report import verdict_table, write_report

    controls = tuple(c.strip() for c in args.controls.split(",") if c.strip())
    options = dict(
        baseline=args.baseline,
        controls=controls,
        margin=args.margin,
        alpha=args.alpha,
        select=args.select,
        metric=args.metric,
    )
    paths = write_report(args.results, args.output, title=args.title, **options)
    _, trials = load(args.results, skip_corrupt=True)
    margin = f"{100 * args.margin:g} pp" if args.metric.endswith("_acc") else f"{args.margin:g}"
    print(
        f"verdict ({args.metric}, configurations selected on {args.select}; margin +-{margin}, "
        f"alpha {args.alpha}, Holm across comparisons):"
    )
    arms = trials["arm"] if "arm" in trials else trials["optimizer"]
    if args.baseline not in set(arms.astype(str)):
        print(
            f"  no comparison: baseline {args.baseline!r} is not in the results "
            f"(arms: {', '.join(sorted(arms.astype(str).unique()))})"
        )
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cmp = comparisons(trials, **options)
        with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
            print(verdict_table(cmp).to_string(index=False) if len(cmp) else "  (nothing to compare)")
        for w in {str(w.message) for w in caught if issubclass(w.category, UserWarning)}:
            print(f"WARNING: {w}")
    from .analysis.report import CSV_FILES

    for p in [*paths, *(paths[0].parent / f"{name}.csv" for name in CSV_FILES)]:
        print(f"wrote {p}")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, off switches)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``optlab`` argument parser (every option has a help text; tested): one function per subcommand."""
    p = argparse.ArgumentParser(
        prog="optlab", description="Compound optimizers assembled from plugins.", formatter_class=_Help
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="a plugin that fails to load, or an item that fails validation, is fatal "
        "(otherwise reported and skipped); same as OPTLAB_STRICT_PLUGINS=1",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_plugins_parser, _explain_parser, _train_parser, _grid_parser, _diagnose_parser, _report_parser):
        add(sub)
    return p


def _model_args(sp) -> None:
    """``--task``, ``--model``, ``--decouple`` and their options (explain, diagnose)."""
    sp.add_argument("--task", default="digits", help="registered task (`optlab plugins` lists them)")
    sp.add_argument("--model", default="cnn-bn", help="registered model")
    sp.add_argument("--decouple", action="store_true", help="weight-normalize conv/linear layers")
    _option_args(sp)


def _option_args(sp) -> None:
    sp.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        help="task option, JSON value (e.g. val_fraction=0.1); repeatable",
    )
    sp.add_argument(
        "--model-option",
        action="append",
        metavar="KEY=VALUE",
        help="model option, JSON value (e.g. width=32); repeatable",
    )


def _plugins_parser(sub) -> None:
    sp = sub.add_parser("plugins", formatter_class=_Help, help="list every registered plugin item and its plugin")
    sp.add_argument(
        "--hparams",
        action="store_true",
        help="also list every optimizer's hyperparameters with their defaults and its step protocol",
    )
    sp.add_argument(
        "--check",
        nargs="?",
        const="",
        metavar="NAME",
        help="run the conformance kit (optlab.testing) on plugin NAME's items -- every plugin but the "
        "built-ins without NAME -- and print what passes, fails and why (items rejected at load included); "
        "exit 1 if anything fails",
    )
    sp.set_defaults(fn=cmd_plugins)


def _explain_parser(sub) -> None:
    sp = sub.add_parser("explain", formatter_class=_Help, help="show which rule every parameter goes to")
    _model_args(sp)
    sp.add_argument("--optimizer", default="sgd-ph", help="preset or baseline")
    sp.add_argument("--hp", action="append", metavar="KEY=VALUE", help="hyperparameter, JSON value; repeatable")
    sp.set_defaults(fn=cmd_explain)


#: shortcuts of ``optlab train`` for common hyperparameters (the rest through ``--hp KEY=VALUE``)
TRAIN_HPARAM_FLAGS = ("lr", "momentum", "weight-decay", "hessian-momentum", "tau", "eps")


def _train_parser(sub) -> None:
    """``optlab train``: one option per :class:`~optlab.training.config.RunConfig` field that declares
    ``cli`` metadata (flag ``--<field-name>``, default and help from the declaration)."""
    from .training.config import cli_fields

    sp = sub.add_parser("train", formatter_class=_Help, help="one training run with per-epoch metrics")
    for f, cli in cli_fields():
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            sp.add_argument(flag, action="store_true", help=cli["help"])
            continue
        kw = {k: v for k, v in cli.items() if k in ("type", "choices", "nargs", "help")}
        sp.add_argument(flag, default=f.default, **kw)
    _option_args(sp)
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


def _grid_parser(sub) -> None:
    sp = sub.add_parser("grid", formatter_class=_Help, help="run or inspect an ablation grid")
    gsub = sp.add_subparsers(dest="grid_cmd", required=True)
    _grid_run_parser(gsub)
    g = gsub.add_parser("status", formatter_class=_Help, help="done/running/missing/failed counts")
    g.add_argument("spec", help="grid spec (TOML)")
    g.add_argument("--results", default=None, help="results directory (default results/<spec name>)")
    g.set_defaults(fn=cmd_grid)


def _grid_run_parser(gsub) -> None:
    g = gsub.add_parser("run", formatter_class=_Help, help="run the missing trials of SPEC (resumable)")
    g.add_argument("spec", help="grid spec (TOML), e.g. experiments/quickstart.toml")
    g.add_argument("--workers", type=int, default=None, help="local executor: parallel worker processes (default 1)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per trial (default: local cores/workers; ray cpus_per_trial; submitit cpus_per_task)",
    )
    g.add_argument(
        "--executor",
        default=None,
        help="where trials run: local (default), ray, submitit, or a "
        "plugin's executor; overrides the spec's [executor] name",
    )
    g.add_argument(
        "--address",
        default=None,
        help="ray: cluster address ('auto', 'ray://host:10001'); default a local Ray instance",
    )
    g.add_argument("--partition", default=None, help="submitit: SLURM partition")
    g.add_argument("--time-min", type=int, default=None, help="submitit: SLURM time limit per trial (minutes)")
    g.add_argument("--gpus", type=int, default=None, help="ray / submitit: GPUs per trial")
    g.add_argument(
        "-E",
        "--executor-option",
        action="append",
        metavar="KEY=VALUE",
        help="any other executor option, JSON value (e.g. -E cpus_per_trial=2)",
    )
    g.add_argument("--results", default=None, help="results directory (default results/<spec name>)")
    g.add_argument("--retry-failed", action="store_true", help="rerun trials whose status is failed")
    g.set_defaults(fn=cmd_grid)


def _diagnose_parser(sub) -> None:
    sp = sub.add_parser(
        "diagnose", formatter_class=_Help, help="is the partial Hessian diagonal? estimator errors and costs"
    )
    _model_args(sp)
    sp.add_argument("--batch-size", type=int, default=128, help="samples in the measured batch")
    sp.add_argument("--selector", default="channelwise", help="which parameters' blocks to measure")
    sp.add_argument("--max-block", type=int, default=4096, help="skip tensors larger than this (dense block cost)")
    sp.add_argument("--engine", default="autograd", choices=["autograd", "func"], help="HVP engine")
    sp.add_argument("--seed", type=int, default=0, help="seed of model init and estimators")
    sp.add_argument("--warmup-steps", type=int, default=0, help="SGD steps before measuring")
    sp.add_argument("--float64", action="store_true", help="measure in float64")
    sp.add_argument("--out", default="reports/diagnose", help="folder for the CSV and figure")
    sp.set_defaults(fn=cmd_diagnose)


def _report_parser(sub) -> None:
    sp = sub.add_parser(
        "report", formatter_class=_Help, help="HTML + Markdown report of a results directory, led by the verdict table"
    )
    sp.add_argument("results", help="results directory (written by `optlab grid run`)")
    sp.add_argument("-o", "--output", default=None, help="output directory (default: RESULTS/report)")
    sp.add_argument("--title", default=None, help="report title (default: from the results directory name)")
    sp.add_argument(
        "--baseline",
        default="sgd",
        help="arm every other one is compared with: an [[optimizer]] block's label, else its optimizer "
        "name (default: %(default)s)",
    )
    sp.add_argument(
        "--controls",
        default="sgd-scaled,sgd-frozen",
        help="comma-separated control arms (labels or optimizer names), compared with every arm; absent "
        "ones are skipped (default: %(default)s)",
    )
    sp.add_argument(
        "--margin",
        type=_positive,
        default=0.005,
        help="equivalence margin of the TOST verdict, in metric units (default: %(default)s = 0.5 "
        "percentage points of accuracy)",
    )
    sp.add_argument(
        "--alpha",
        type=_probability,
        default=0.05,
        help="significance level, Holm-corrected across the comparisons (default: %(default)s)",
    )
    sp.add_argument(
        "--select",
        default="final_val_acc",
        help="validation metric each optimizer's configuration is selected on (default: %(default)s)",
    )
    sp.add_argument(
        "--metric", default="final_test_acc", help="test metric the verdict compares (default: %(default)s)"
    )
    sp.set_defaults(fn=cmd_report)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.strict:
        from .plugin import registry

        os.environ["OPTLAB_STRICT_PLUGINS"] = "1"
        registry.reset()
    # progress of the long non-grid commands, on stderr only (optlab.progress); `grid run` has its own
    long_running = args.cmd in ("report", "diagnose") or getattr(args, "grid_cmd", None) == "status"
    try:
        with progress.reporting(long_running):
            return args.fn(args)
    except BrokenPipeError:
        # the reader went away (``optlab plugins | head``): stop quietly, as ``cat`` does; point stdout at
        # devnull so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, KeyError, TypeError, FileNotFoundError, ImportError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
