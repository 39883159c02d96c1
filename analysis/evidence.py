"""Regenerate the comparison tables of docs/evidence.md from the grids' results.

    optlab grid run experiments/paper-ablation.toml --workers 2
    optlab grid run experiments/hessian-momentum.toml --workers 2
    python analysis/evidence.py [--results results]

Prints, as Markdown, the seed-paired comparisons (evaluation seeds, configurations selected on
validation, ±0.5 pp margin, Holm within each table) the page quotes: every arm against SGD-M and
the controls, the SGD-PH schedules against each other, and the Hessian-momentum arms against the
paper's default 0.9 and against SGD-M.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="folder holding the grids' results (default: results)")
    args = ap.parse_args()
    root = Path(args.results)
    warnings.simplefilter("ignore")
    print("## SGD-PH vs SGD-M and the controls (pp)\n")
    print(table(root / "paper-ablation", "sgd", ["sgd-scaled", "sgd-frozen"]))
    print("\n## Refresh schedules against each other (pp)\n")
    print(table(root / "paper-ablation", "sgd-ph-every1", ["sgd-ph-paper"], ("sgd-ph-every50", "sgd-ph-paper")))
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
