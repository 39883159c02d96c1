"""Summarize `optlab diagnose` CSVs into the table in docs/partial-hessian.md.

for tm in "digits cnn-bn" "mnist1d cnn1d" "digits mlp-bn" "digits resnet20"; do set -- $tm
  optlab diagnose --task $1 --model $2 --batch-size 64 --warmup-steps 50 --float64 --out docs/diagnostics
done
python benchmarks/partial_hessian_table.py docs/diagnostics
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def main(folder: str = "docs/diagnostics") -> None:
    rows = []
    for csv in sorted(Path(folder).glob("diagnose_*.csv")):
        df = pd.read_csv(csv)
        per = df[df["tensor"] != "(all selected)"]
        joint = df[df["tensor"] == "(all selected)"].iloc[0]
        ests = [c[:-7] for c in df.columns if c.endswith("_relerr")]
        row = {
            "model": csv.stem.replace("diagnose_", "").replace("_", " / ", 1),
            "tensors": len(per),
            "off-diag mass per tensor (median [min, max])": f"{per['offdiag_frob_mass'].median():.2f} [{per['offdiag_frob_mass'].min():.2f}, "  # noqa: E501
            f"{per['offdiag_frob_mass'].max():.2f}]",
            "off-diag mass, joint block": f"{joint['offdiag_frob_mass']:.2f}",
            "neg. diagonal entries": f"{joint['neg_diag_frac']:.2f}",
        }
        for e in ests:
            row[f"{e} rel. error"] = f"{joint[e + '_relerr']:.2f}"
            row[f"{e} products"] = int(joint[e + "_products"])
        row["exact_diag products"] = int(joint["exact_diag_products"])
        rows.append(row)
    out = pd.DataFrame(rows)
    cols = list(out.columns)
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in out.itertuples(index=False):
        print("| " + " | ".join(map(str, r)) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
