"""``optlab report``: the HTML + Markdown report of a results directory, and its verdict table."""

from __future__ import annotations

from .common import HelpFormatter, positive_number, probability


def cmd_report(args) -> int:
    import warnings

    import pandas as pd

    from ..analysis import comparisons, load
    from ..analysis.report import verdict_table, write_report

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
    from ..analysis.report import CSV_FILES

    for p in [*paths, *(paths[0].parent / f"{name}.csv" for name in CSV_FILES)]:
        print(f"wrote {p}")
    return 0


def add_report_parser(sub) -> None:
    sp = sub.add_parser(
        "report",
        formatter_class=HelpFormatter,
        help="HTML + Markdown report of a results directory, led by the verdict table",
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
        type=positive_number,
        default=0.005,
        help="equivalence margin of the TOST verdict, in metric units (default: %(default)s = 0.5 "
        "percentage points of accuracy)",
    )
    sp.add_argument(
        "--alpha",
        type=probability,
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
