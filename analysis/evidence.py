"""Regenerate the comparison tables of docs/evidence.md from the grids' results.

    optlab grid run experiments/paper-ablation.toml --workers 2
    optlab grid run experiments/hessian-momentum.toml --workers 2
    optlab grid run experiments/modular-arithmetic.toml --workers 2
    optlab grid run experiments/relatives-modular.toml --workers 2
    optlab grid run experiments/relatives-mnist1d.toml --workers 2
    python analysis/evidence.py [--results results] [--reports docs/evidence-reports]

Prints, as Markdown, the seed-paired comparisons (evaluation seeds, configurations selected on
validation, ±0.5 pp margin, Holm within each table) the page quotes: every arm against SGD-M and
the controls, the SGD-PH schedules against each other, and the Hessian-momentum arms against the
paper's default 0.9 and against SGD-M; for the issue-20 grids (wider tuning, time to target) the
verdicts with their edge flags, the selection table and the time-to-target summary. Results
directories that are absent are skipped.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from optlab.analysis import load
from optlab.analysis.compare import comparisons

COLS = [
    "task",
    "arm",
    "reference",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_holm",
    "p_tost_holm",
    "mde",
    "n_pairs",
    "verdict",
]


def table(results: Path, baseline: str, controls: list[str], arms: tuple[str, ...] | None = None) -> str:
    _, trials = load(results)
    c = comparisons(trials, baseline=baseline, controls=controls)
    if arms is not None:
        c = c[c["arm"].isin(arms)]
    c = c[COLS].copy()
    for k in ("mean_diff", "ci_low", "ci_high", "mde"):
        c[k] = (100 * c[k]).round(2)  # percentage points
    try:
        return c.to_markdown(index=False)
    except ImportError:  # tabulate not installed
        return c.to_string(index=False)


def issue20(results: Path, baseline: str, report_dir: Path | None = None) -> str:
    """Verdicts (with edges), selections (with edges and stability) and time to target of one grid.

    Writes the grid's full report to ``report_dir`` (default: a temporary folder) and reads back its
    CSVs, so every number here is one the report and its CSVs also show."""
    import tempfile

    import pandas as pd

    from optlab.analysis import time_to_target as ttt
    from optlab.analysis.report import write_report

    out = Path(report_dir) if report_dir else Path(tempfile.mkdtemp())
    write_report(results, out, baseline=baseline)
    v = pd.read_csv(out / "verdicts.csv")
    s = pd.read_csv(out / "selection.csv")
    t = pd.read_csv(out / "time_to_target.csv")
    parts = []
    if len(v):
        v = v.assign(**{k: (100 * v[k]).round(2) for k in ("mean_diff", "ci_low", "ci_high", "mde")})
        cols = ["task", "arm", "reference", "mean_diff", "ci_low", "ci_high", "n_pairs", "verdict", "budget"]
        parts.append(_md(v[cols + ["reference_budget", "p_holm", "p_tost_holm", "edges"]]))
    cols = ["task", "arm", "axis", "value", "tried", "at_edge", "side", "next_values", "stability"]
    parts.append(_md(s[cols]))
    if len(t):
        rows = t.to_dict("records")
        per_arm = ttt.arm_summary(rows)
        summary = pd.DataFrame(per_arm)
        keep = ["workload", "arm", "n", "n_reached", "k", "reached", "time_step", "median_step", "median_cost"]
        summary = summary[keep + ["median_seconds", "target"]].round({"median_seconds": 1, "target": 4})
        parts.append(_md(summary))
        paired = pd.DataFrame(ttt.paired_against(rows, baseline, "step"))
        if len(paired):
            parts.append(_md(paired.drop(columns=["unit"], errors="ignore").round(4)))
        score = ttt.profile_score(ttt.profile_from_summary(per_arm))
        parts.append(
            "profile score (steps, tau_max = 4): " + ", ".join(f"{a} {x:.3f}" for a, x in sorted(score.items()))
        )
    return "\n\n".join(parts)


def _md(df) -> str:
    try:
        return df.to_markdown(index=False)
    except ImportError:  # tabulate not installed
        return df.to_string(index=False)


#: (results folder, baseline arm) of every grid docs/evidence.md quotes, in the page's order
GRIDS = (
    ("modular-arithmetic", "torch-adamw"),
    ("relatives-modular", "torch-adamw"),
    ("paper-ablation", "sgd"),
    ("hessian-momentum", "sgd-ph-paper"),
    ("relatives-mnist1d", "sgd"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="folder holding the grids' results (default: results)")
    ap.add_argument(
        "--reports", default=None, help="also keep each grid's full report in REPORTS/<grid> (default: not kept)"
    )
    args = ap.parse_args()
    root = Path(args.results)
    warnings.simplefilter("ignore")
    for name, baseline in GRIDS:
        if (root / name / "trials").is_dir():
            print(f"## {name}: verdicts (pp), selections, time to target (baseline {baseline})\n")
            keep = Path(args.reports) / name if args.reports else None
            print(issue20(root / name, baseline, keep) + "\n")
    if (root / "paper-ablation" / "trials").is_dir():
        print("\n## Refresh schedules against each other (pp)\n")
        print(table(root / "paper-ablation", "sgd-ph-every1", ["sgd-ph-paper"], ("sgd-ph-every50", "sgd-ph-paper")))
    if (root / "hessian-momentum" / "trials").is_dir():
        print("\n## Hessian momentum, paper schedule, against SGD-M (pp)\n")
        print(
            table(
                root / "hessian-momentum",
                "sgd",
                [],
                ("sgd-ph-paper", "sgd-ph-paper-hm0", "sgd-ph-paper-hm0.5", "sgd-ph-paper-hm0.99"),
            )
        )


if __name__ == "__main__":
    main()
