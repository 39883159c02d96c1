"""Evidence for SGD-PH's default refresh schedule, from the refresh-interval grid.

    optlab grid run experiments/refresh-interval.toml --workers 2
    python benchmarks/refresh_evidence.py results/refresh-interval -o docs/refresh-interval

For every schedule (round-robin every step; all tensors every 1/10/50 steps with
rowsum_hvp or block_rademacher) and task: final test accuracy over seeds, the
seed-paired difference to per-step refresh (all tensors, every step) with a 95 % CI
and a paired t-test, and the HVPs per epoch. Writes a Markdown table and a figure.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from optlab.analysis import load
from optlab.analysis import plots as P


def label(r) -> str:
    if r["optimizer"] != "sgd-ph":
        return str(r["optimizer"])
    if r["schedule"] == "round_robin":
        return "round-robin, every step (paper)"
    return f"all tensors every {int(r['every'])}, {r['estimator']}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", default="results/refresh-interval")
    ap.add_argument("-o", "--out", default="docs/refresh-interval")
    args = ap.parse_args()
    _, t = load(args.results)
    t = t[t["status"] == "ok"].copy()
    t["schedule_label"] = t.apply(label, axis=1)
    ref_label = "all tensors every 1, rowsum_hvp"
    rows = []
    for task, g in t.groupby("task", observed=True):
        ref = g[g["schedule_label"] == ref_label].set_index("seed")["final_test_acc"]
        for lab, h in g.groupby("schedule_label"):
            acc = h.set_index("seed")["final_test_acc"]
            common = sorted(set(acc.index) & set(ref.index))
            d = acc.loc[common] - ref.loc[common]
            n = len(d)
            sd = d.std(ddof=1) if n > 1 else float("nan")
            ci = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
            p = stats.ttest_rel(acc.loc[common], ref.loc[common]).pvalue if n > 1 and sd > 0 else float("nan")
            rows.append({"task": task, "schedule": lab, "seeds": len(acc), "acc_mean": acc.mean(),
                         "acc_std": acc.std(ddof=1), "diff_vs_every_step": d.mean(), "diff_ci95": ci, "p_paired": p,
                         "hvps_per_epoch": h["hvp_count"].mean() / h["epochs_run"].mean(),
                         "curvature_s_per_epoch": h["time_curvature"].mean(),
                         "epoch_s": h["time_epoch"].mean()})
    df = pd.DataFrame(rows).sort_values(["task", "hvps_per_epoch"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = df.copy()
    for c in ("acc_mean", "acc_std", "diff_vs_every_step", "diff_ci95"):
        fmt[c] = fmt[c].map(lambda v: f"{v:+.4f}" if c.startswith("diff") else f"{v:.4f}")
    fmt["p_paired"] = fmt["p_paired"].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    for c in ("hvps_per_epoch", "curvature_s_per_epoch", "epoch_s"):
        fmt[c] = fmt[c].map(lambda v: f"{v:.1f}" if c == "hvps_per_epoch" else f"{v:.2f}")
    md = ["| " + " | ".join(fmt.columns) + " |", "|" + "---|" * len(fmt.columns)]
    md += ["| " + " | ".join(map(str, r)) + " |" for r in fmt.itertuples(index=False)]
    (out / "table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(**P.STYLE)
    fig, axes = plt.subplots(1, t["task"].nunique(), figsize=(6.5 * t["task"].nunique(), 4.2), squeeze=False)
    for ax, (task, g) in zip(axes[0], t.groupby("task", observed=True)):
        order = df[df["task"] == task]["schedule"].tolist()
        sns.pointplot(data=g, y="schedule_label", x="final_test_acc", order=order, errorbar=("ci", 95), ax=ax,
                      linestyle="none", capsize=0.2)
        sns.stripplot(data=g, y="schedule_label", x="final_test_acc", order=order, ax=ax, alpha=0.4, color="gray")
        ax.set_title(f"{task}: final test accuracy (mean, 95 % CI; dots: seeds)")
        ax.set_ylabel("")
        ax.set_xlabel("final test accuracy")
    fig.tight_layout()
    P.save(fig, out / "accuracy")
    print(f"wrote {out / 'table.md'} and {out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
