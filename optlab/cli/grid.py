"""``optlab grid run`` and ``optlab grid status``."""

from __future__ import annotations

import sys

from .common import HelpFormatter, key_values


def cmd_grid(args) -> int:
    """``optlab grid run SPEC`` or ``optlab grid status SPEC``."""
    from ..grid.spec import load_spec

    spec = load_spec(args.spec)
    if args.grid_cmd == "run":
        return _run(args, spec)
    return _status(args, spec)


#: ``optlab grid run`` flags that set an executor's option: flag -> (option, or per executor), executors
EXECUTOR_FLAGS = (
    ("address", "address", ("ray",)),
    ("partition", "partition", ("submitit",)),
    ("time_min", "time_min", ("submitit",)),
    ("gpus", {"ray": "gpus_per_trial", "submitit": "gpus_per_task"}, ("ray", "submitit")),
)


def executor_options(args, spec) -> dict:
    """The executor options of ``-E KEY=VALUE`` and the executor flags; a flag that does not apply to
    the chosen executor (``--executor``, else the spec's ``[executor]`` name, else local) is an error."""
    options = key_values(args.executor_option)
    chosen = args.executor or (spec.data.get("executor") or {}).get("name", "local")
    for flag, key, applies in EXECUTOR_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        if chosen not in applies:
            raise ValueError(
                f"--{flag.replace('_', '-')} applies to executor {' / '.join(applies)}, "
                f"not {chosen!r} (choose one with --executor)"
            )
        options[key[chosen] if isinstance(key, dict) else key] = value
    return options


def _run(args, spec) -> int:
    """Run the grid's missing trials; SIGTERM (a batch system's time limit, ``kill``) abandons the
    running ones, Ctrl-C interrupts: both say how to resume (exit 143 / 130)."""
    import signal

    from ..grid.dispatch import GridInterrupted
    from ..grid.executors import AbandonRunning
    from ..grid.run import run_grid

    options = executor_options(args, spec)

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


def _status(args, spec) -> int:
    """Counts per status (and of the evaluation stage), and the trial files that do not validate."""
    from ..grid.run import grid_status

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


def add_grid_parser(sub) -> None:
    sp = sub.add_parser("grid", formatter_class=HelpFormatter, help="run or inspect an ablation grid")
    gsub = sp.add_subparsers(dest="grid_cmd", required=True)
    add_grid_run_parser(gsub)
    g = gsub.add_parser("status", formatter_class=HelpFormatter, help="done/running/missing/failed counts")
    g.add_argument("spec", help="grid spec (TOML)")
    g.add_argument("--results", default=None, help="results directory (default results/<spec name>)")
    g.set_defaults(fn=cmd_grid)


def add_grid_run_parser(gsub) -> None:
    g = gsub.add_parser("run", formatter_class=HelpFormatter, help="run the missing trials of SPEC (resumable)")
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
