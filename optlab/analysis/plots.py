"""Seaborn figures. Every function takes a DataFrame from :mod:`optlab.analysis.data`
and returns a matplotlib ``Figure`` (compose them in notebooks; ``save`` writes PNG+SVG)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .data import SELECT_METRIC, WITHIN, best_configs, hparam_columns, selected_trials, sensitivity  # noqa: E402

__all__ = [
    "heatmaps",
    "sensitivity_plot",
    "training_curves",
    "cost_bars",
    "profile_plot",
    "expected_max_plot",
    "save",
    "STYLE",
]

STYLE = {"style": "whitegrid", "context": "notebook", "palette": "colorblind"}
METRIC_LABELS = {
    "final_test_acc": "final test accuracy",
    "best_test_acc": "best test accuracy",
    "final_val_acc": "final validation accuracy",
    "best_val_acc": "best validation accuracy",
    "final_val_loss": "final validation loss",
    "val_acc": "validation accuracy",
    "final_test_loss": "final test loss",
    "final_train_loss": "final train loss",
    "test_acc": "test accuracy",
    "train_loss": "train loss",
    "test_loss": "test loss",
}


def _label(m: str) -> str:
    return METRIC_LABELS.get(m, m.replace("_", " "))


def _fig(nrows, ncols, w=4.6, h=3.8, **kw):
    sns.set_theme(**STYLE)
    return plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, **kw)


def save(fig, path_stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg``; returns both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(out[0], dpi=130, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
    return out


def heatmaps(
    trials: pd.DataFrame, x: str = "lr", y: str = "weight_decay", metric: str = SELECT_METRIC, mode: str | None = None
):
    """One heatmap per optimizer (and task/model) of ``metric`` (validation, tuning seeds) over ``x`` x ``y``.

    Each cell is the configuration :func:`best_configs` selects among those with
    that ``x``, ``y`` (other axes at their best on ``metric``); one colour scale
    for all panels; the optimizer's selected configuration is outlined. Cells
    show the seed-mean and (n) when seeds are missing.
    """
    for c in (x, y):
        if c not in trials:
            raise KeyError(f"heatmaps: no column {c!r}; grid axes: {', '.join(hparam_columns(trials))}")
    df = trials[trials[x].notna() & trials[y].notna()]
    s = best_configs(df, metric=metric, mode=mode, within=[*WITHIN, x, y])
    chosen = best_configs(df, metric=metric, mode=mode).set_index(list(WITHIN))
    panels = list(s.groupby(list(WITHIN), observed=True))
    ncols = min(3, max(1, len(panels)))
    nrows = math.ceil(len(panels) / ncols) if panels else 1
    fig, axes = _fig(nrows, ncols)
    vmin, vmax = (s["mean"].min(), s["mean"].max()) if len(s) else (0, 1)
    for ax, (key, g) in zip(axes.flat, panels):
        table = g.pivot(index=y, columns=x, values="mean").sort_index(ascending=False)
        nmat = g.pivot(index=y, columns=x, values="n").reindex_like(table)
        annot = table.map(lambda v: f"{v:.3f}" if pd.notna(v) else "")
        full = int(s["n_seeds"].max())
        annot = annot.where(nmat >= full, annot + nmat.map(lambda n: f"\n(n={int(n)})" if pd.notna(n) else ""))
        sns.heatmap(
            table,
            ax=ax,
            vmin=vmin,
            vmax=vmax,
            cmap="viridis",
            annot=annot,
            fmt="",
            cbar=True,
            cbar_kws={"label": _label(metric)},
            linewidths=0.5,
            annot_kws={"fontsize": 8},
        )
        pick = chosen.loc[key]
        r, c = list(table.index).index(pick[y]), list(table.columns).index(pick[x])
        ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="red", lw=2.5))
        task, model, opt = key
        ax.set_title(f"{opt} -- {task}/{model}")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"{_label(metric)} (tuning seeds) over {x} x {y}; other axes at their best on it; "
        "red: the selected configuration",
        y=1.02,
    )
    fig.tight_layout()
    return fig


def sensitivity_plot(
    trials: pd.DataFrame,
    axis: str,
    metric: str = SELECT_METRIC,
    mode: str | None = None,
    aggregate: str = "best",
    log_x: bool | None = None,
):
    """``metric`` (validation, tuning seeds) vs one axis per optimizer, mean with a 95 % CI band over seeds
    (:func:`sensitivity`: other axes at their best on ``metric``, or averaged)."""
    sens = sensitivity(trials, axis, metric=metric, mode=mode, aggregate=aggregate)
    problems = list(sens.groupby(["task", "model"], observed=True))
    fig, axes = _fig(1, max(1, len(problems)), w=5.2)
    numeric = pd.api.types.is_numeric_dtype(sens[axis])  # e.g. estimator or schedule names: categories
    if log_x is None:
        vals = sens[axis].astype(float) if numeric else None
        log_x = numeric and bool((vals > 0).all() and vals.max() / max(vals.min(), 1e-300) >= 50)
    for ax, ((task, model), g) in zip(axes.flat, problems):
        for opt, h in g.groupby("arm", observed=True):
            h = h.sort_values(axis)
            xs = h[axis].astype(float) if numeric else h[axis].astype(str)
            ys, ci = h["mean"], h["ci95"].fillna(0)
            ax.plot(xs, ys, marker="o", label=str(opt))
            ax.fill_between(xs, ys - ci, ys + ci, alpha=0.2)
        if log_x:
            ax.set_xscale("log")
        if metric.endswith("_acc"):  # CI bands of few seeds can pass 1: keep the axis in range
            lo = float((g["mean"] - g["ci95"].fillna(0)).min())
            ax.set_ylim(max(0.0, lo - 0.01), min(1.005, float((g["mean"] + g["ci95"].fillna(0)).max()) + 0.01))
        ax.set_xlabel(axis)
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{task}/{model}")
        ax.legend(title="optimizer", fontsize=8)
    how = "other axes at their best on it" if aggregate == "best" else "averaged over other axes"
    fig.suptitle(f"Sensitivity to {axis}: {_label(metric)}, tuning seeds ({how}; band: 95 % CI over seeds)", y=1.02)
    fig.tight_layout()
    return fig


def training_curves(
    epochs: pd.DataFrame, trials: pd.DataFrame, x: str = "epoch", metric: str = SELECT_METRIC, mode: str | None = None
):
    """Test accuracy and train loss against ``x`` (``epoch`` or ``wall_time``) for each
    optimizer's configuration selected on ``metric`` (validation): mean over the seeds
    that stand for it (evaluation seeds where there are any, :func:`selected_trials`)
    with a band of ±1.96 standard errors (a normal-approximation 95 % interval; no bootstrap per point)."""
    best = best_configs(trials, metric=metric, mode=mode)
    sel = selected_trials(trials, best)
    ids = set(sel.loc[sel["status"] != "failed", "trial_id"])
    stages = sorted(set(sel["from_stage"]))
    df = epochs[epochs["trial_id"].isin(ids)].copy()
    problems = sorted({(str(t), str(m)) for t, m in zip(best["task"], best["model"])})
    fig, axes = _fig(2, max(1, len(problems)), w=5.2, h=3.4)
    for j, (task, model) in enumerate(problems):
        sub = df[(df["task"] == task) & (df["model"] == model)].copy()
        sub["optimizer"] = sub["arm"].astype(str)
        if x == "wall_time":  # seeds differ in time: bin to the per-epoch mean time
            sub["wall_time"] = sub.groupby(["optimizer", "epoch"])["wall_time"].transform("mean")
        for i, (y, lab) in enumerate((("test_acc", "test accuracy"), ("train_loss", "train loss"))):
            ax = axes[i, j]
            sns.lineplot(data=sub, x=x, y=y, hue="optimizer", errorbar=("se", 1.96), ax=ax, marker="o", markersize=4)
            ax.set_ylabel(lab)
            ax.set_xlabel("wall-clock time (s)" if x == "wall_time" else "epoch")
            if y == "train_loss":
                ax.set_yscale("log")
            ax.set_title(f"{task}/{model}" if i == 0 else "")
    fig.suptitle(
        f"Training curves vs {'time' if x == 'wall_time' else 'epoch'} (configuration selected on "
        f"{_label(metric)}; {' + '.join(stages)} seeds; band: mean ± 1.96 SE over seeds)",
        y=1.02,
    )
    fig.tight_layout()
    return fig


def cost_bars(trials: pd.DataFrame):
    """Mean per-epoch time split into forward-backward, curvature and update, per optimizer."""
    cols = {"time_forward_backward": "forward-backward", "time_curvature": "curvature", "time_update": "update"}
    df = trials[trials["status"] != "failed"]
    g = df.groupby(["task", "model", "arm"], observed=True)[list(cols)].mean().reset_index()
    g["label"] = g["arm"].astype(str) + "\n" + g["task"].astype(str) + "/" + g["model"].astype(str)
    fig, axes = _fig(1, 1, w=max(5.0, 1.3 * len(g) + 2), h=4.0)
    ax = axes[0, 0]
    bottom = np.zeros(len(g))
    for c, lab in cols.items():
        ax.bar(g["label"], g[c].fillna(0), bottom=bottom, label=lab)
        bottom += g[c].fillna(0).to_numpy()
    for xi, total in enumerate(bottom):
        ax.text(xi, total, f"{total:.2f}s", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds per epoch (mean over trials)")
    ax.legend(title="phase")
    ax.set_title("Per-epoch cost by phase")
    fig.tight_layout()
    return fig


def profile_plot(profile: pd.DataFrame):
    """Dolan-Moré performance profile (from ``performance_profile``)."""
    fig, axes = _fig(1, 1, w=5.5)
    ax = axes[0, 0]
    for opt, g in profile.groupby("arm", observed=True):
        ax.step(g["tau"], g["rho"], where="post", label=str(opt))
    ax.set_xlabel("tau (cost ratio to the best optimizer)")
    ax.set_ylabel("fraction of problems within tau")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(title="optimizer")
    ax.set_title("Performance profile")
    fig.tight_layout()
    return fig


def expected_max_plot(curve: pd.DataFrame):
    """Expected best validation score vs configurations tried, per optimizer (from
    :func:`optlab.analysis.compare.expected_max_curve`; Dodge et al. 2019); dotted line: the
    smallest budget of the task/model, where optimizers compare at equal budget."""
    problems = list(curve.groupby(["task", "model"], observed=True))
    fig, axes = _fig(1, max(1, len(problems)), w=5.2)
    for ax, ((task, model), g) in zip(axes.flat, problems):
        g = g.assign(optimizer=g["arm"].astype(str))
        sns.lineplot(data=g, x="n", y="expected_max", hue="optimizer", marker="o", markersize=4, ax=ax)
        ax.axvline(g.loc[g["budget_matched"], "n"].min(), color="grey", ls=":", lw=1.5)
        if g["n"].max() >= 20:
            ax.set_xscale("log")
        ax.set_xlabel("configurations tried (n)")
        ax.set_ylabel(f"expected best {_label(str(g['selected_on'].iloc[0]))}")
        ax.set_title(f"{task}/{model}")
    fig.suptitle("Expected maximum over n random configurations (Dodge et al. 2019); dotted: equal budget", y=1.02)
    fig.tight_layout()
    return fig
