"""Regenerate the comparison tables of docs/evidence.md from the grids' results.

    optlab grid run experiments/paper-ablation.toml --workers 2
    optlab grid run experiments/hessian-momentum.toml --workers 2
    optlab grid run experiments/rederive-mnist1d.toml --workers 2
    optlab grid run experiments/modular-arithmetic.toml --workers 2
    python analysis/evidence.py [--results results]

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


def issue20(results: Path, baseline: str) -> str:
    """Verdicts (with edges), selections (with edges and stability) and time to target of one grid."""
    import tempfile

    import pandas as pd

    from optlab.analysis.report import write_report

    out = Path(tempfile.mkdtemp())
    write_report(results, out, baseline=baseline)
    v = pd.read_csv(out / "verdicts.csv")
    s = pd.read_csv(out / "selection.csv")
    t = pd.read_csv(out / "time_to_target.csv")
    parts = []
    if len(v):
        v = v.assign(**{k: (100 * v[k]).round(2) for k in ("mean_diff", "ci_low", "ci_high", "mde")})
        cols = ["task", "arm", "reference", "mean_diff", "ci_low", "ci_high", "n_pairs", "verdict", "budget"]
        parts.append(_md(v[cols + ["reference_budget", "edges"]]))
    cols = ["arm", "axis", "value", "tried", "at_edge", "side", "next_values", "stability"]
    parts.append(_md(s[cols]))
    if len(t):
        g = t.groupby("arm")
        summary = pd.DataFrame(
            {
                "n": g.size(),
                "reached": g["reached"].sum(),
                "median step": g["step"].median(),
                "median seconds": g["seconds"].median().round(1),
                "target": g["target"].first().round(4),
            }
        ).reset_index()
        parts.append(_md(summary))
    return "\n\n".join(parts)


def _md(df) -> str:
    try:
        return df.to_markdown(index=False)
    except ImportError:  # tabulate not installed
        return df.to_string(index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="folder holding the grids' results (default: results)")
    args = ap.parse_args()
    root = Path(args.results)
    warnings.simplefilter("ignore")
    for name, baseline in (("rederive-mnist1d", "sgd"), ("modular-arithmetic", "torch-adamw")):
        if (root / name / "trials").is_dir():
            print(f"## {name}: verdicts (pp), selections, time to target\n")
            print(issue20(root / name, baseline) + "\n")
    if not (root / "paper-ablation" / "trials").is_dir():
        return
    print("## SGD-PH vs SGD-M and the controls (pp)\n")
    print(table(root / "paper-ablation", "sgd", ["sgd-scaled", "sgd-frozen"]))
    print("\n## Refresh schedules against each other (pp)\n")
    print(table(root / "paper-ablation", "sgd-ph-every1", ["sgd-ph-paper"], ("sgd-ph-every50", "sgd-ph-paper")))
    if not (root / "hessian-momentum" / "trials").is_dir():
        return
    print("\n## Hessian momentum, paper schedule (pp)\n")
    print(
        table(
            root / "hessian-momentum",
            "sgd-ph-paper",
            ["sgd"],
            ("sgd-ph-paper-hm0", "sgd-ph-paper-hm0.5", "sgd-ph-paper-hm0.99"),
        )
    )


if __name__ == "__main__":
    main()
