"""Seaborn figures. Every function takes a DataFrame from :mod:`optlab.analysis.data`
and returns a matplotlib ``Figure`` (compose them in notebooks; ``save`` writes PNG+SVG)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .data import (  # noqa: E402
    SELECT_METRIC,
    WITHIN,
    best_configs,
    cost_per_epoch,
    hparam_columns,
    selected_trials,
    sensitivity,
)

__all__ = [
    "heatmaps",
    "sensitivity_plot",
    "training_curves",
    "cost_bars",
    "profile_plot",
    "expected_max_plot",
    "save",
    "STYLE",
    "arm_palette",
    "log_spaced",
    "metric_range",
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


def metric_label(m: str) -> str:
    return METRIC_LABELS.get(m, m.replace("_", " "))


# ---------------------------------------------------------------------------- colours, axes, ranges
_CB = sns.color_palette("colorblind", 10)
#: built-in optimizers keep one colour in every figure of every report
FIXED_COLORS = {
    "sgd": _CB[0],
    "sgd-ph": _CB[1],
    "sgd-scaled": _CB[2],
    "sgd-frozen": _CB[3],
    "sgd-ph-reference": _CB[4],
    "adahessian": _CB[5],
    "sophia": _CB[6],
    "torch-sgd": _CB[7],
    "torch-adamw": _CB[8],
    "pto-adahessian": _CB[9],
}
#: the order in which other labels take the colour-blind colours no built-in of the set holds: most
#: distinct from the usual blue / orange / green / vermillion of sgd, sgd-ph and the controls first
_FREE_ORDER = (4, 9, 7, 5, 6, 8, 1, 0, 2, 3)
#: after the colour-blind colours no built-in of the set uses: seaborn's "dark" and "pastel" ones
EXTRA_COLORS = sns.color_palette("dark", 10) + sns.color_palette("pastel", 10)


def arm_palette(labels: Iterable) -> dict[str, tuple]:
    """One colour per optimizer / arm label, the same in every figure of a results set.

    Built-in names have fixed colours in every report (:data:`FIXED_COLORS`, seaborn's
    colour-blind palette). Other labels (``label = "sgd-ph-every50"``), in sorted order, take
    the colour-blind colours no built-in of ``labels`` holds, then :data:`EXTRA_COLORS`; so pass
    every arm of the results set (the categories of ``trials["arm"]``, as the figures do) and
    all its figures agree; a report with the same arms gets the same colours."""
    names = sorted({str(x) for x in labels})
    out = {n: FIXED_COLORS[n] for n in names if n in FIXED_COLORS}
    used = set(out.values())
    pool = [_CB[i] for i in _FREE_ORDER if _CB[i] not in used] + EXTRA_COLORS
    custom = [n for n in names if n not in out]
    for i, n in enumerate(custom):
        out[n] = pool[i % len(pool)]
    return out


def _palette_of(df: pd.DataFrame, column: str = "arm") -> dict[str, tuple]:
    """The palette of every arm of ``df``'s results set (all categories, also filtered-out ones)."""
    col = df[column]
    labels = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col.unique()
    return arm_palette(labels)


def log_spaced(values) -> bool:
    """True when the distinct values are positive and closer to a geometric than to an
    arithmetic progression (lr 0.03/0.1/0.3, 1e-4/1e-3/1e-2): such an axis is drawn in log scale.

    Two values: log when their ratio is >= 10. Three or more: log when the coefficient of
    variation of the log-gaps is smaller than that of the plain gaps (and the values span a
    ratio >= 3)."""
    v = np.unique(np.asarray([float(x) for x in values if x is not None and np.isfinite(float(x))]))
    if len(v) < 2 or v[0] <= 0:
        return False
    if v[-1] / v[0] < 3:
        return False
    if len(v) == 2:
        return bool(v[-1] / v[0] >= 10)
    lin, lg = np.diff(v), np.diff(np.log(v))
    return bool(lg.std() / lg.mean() < lin.std() / lin.mean())


def metric_range(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take: accuracies in [0, 1], losses, times and counts >= 0."""
    m = metric.lower()
    if m.endswith("acc") or "_acc" in m or "accuracy" in m:
        return 0.0, 1.0
    if "loss" in m or m.startswith(("time", "wall")) or m.endswith("count"):
        return 0.0, math.inf
    return -math.inf, math.inf


def _band(ax, xs, lo, hi, metric: str, color, alpha: float = 0.2) -> None:
    """A confidence band clipped to the metric's range (a CI of few seeds can pass 1 or 0)."""
    a, b = metric_range(metric)
    ax.fill_between(xs, np.clip(lo, a, b), np.clip(hi, a, b), alpha=alpha, color=color, linewidth=0)


def _legend_outside(ax, title: str, **kw):
    """A legend right of the axes: it never covers bars or lines."""
    return ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


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
            cbar_kws={"label": metric_label(metric)},
            linewidths=0.5,
            annot_kws={"fontsize": 8},
        )
        pick = chosen.loc[key]
        row_i, col_i = list(table.index).index(pick[y]), list(table.columns).index(pick[x])
        ax.add_patch(plt.Rectangle((col_i, row_i), 1, 1, fill=False, edgecolor="red", lw=2.5))
        task, model, opt = key
        ax.set_title(f"{opt} -- {task}/{model}")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"{metric_label(metric)} (tuning seeds) over {x} x {y}; other axes at their best on it; "
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
        log_x = numeric and log_spaced(sens[axis])
    colors = _palette_of(trials)
    for ax, ((task, model), g) in zip(axes.flat, problems):
        for opt, h in g.groupby("arm", observed=True):
            h = h.sort_values(axis)
            xs = h[axis].astype(float) if numeric else h[axis].astype(str)
            ys, ci = h["mean"].to_numpy(float), h["ci95"].fillna(0).to_numpy(float)
            ax.plot(xs, ys, marker="o", label=str(opt), color=colors[str(opt)])
            _band(ax, xs, ys - ci, ys + ci, metric, colors[str(opt)], alpha=0.2 if g["arm"].nunique() <= 3 else 0.1)
        if log_x:
            ax.set_xscale("log")
            ax.set_xticks(sorted(g[axis].astype(float).unique()))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(axis + (" (log scale)" if log_x else ""))
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{task}/{model}")
    if problems:  # one legend: the colours are the same in every panel
        _legend_outside(axes.flat[len(problems) - 1], "optimizer", fontsize=8)
    how = "other axes at their best on it" if aggregate == "best" else "averaged over other axes"
    fig.suptitle(
        f"Sensitivity to {axis}: {metric_label(metric)}, tuning seeds ({how}; band: 95 % CI over seeds)", y=1.02
    )
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
    colors = _palette_of(trials)
    for j, (task, model) in enumerate(problems):
        sub = df[(df["task"] == task) & (df["model"] == model)].copy()
        sub["optimizer"] = sub["arm"].astype(str)
        if x == "wall_time":  # seeds differ in time: bin to the per-epoch mean time
            sub["wall_time"] = sub.groupby(["optimizer", "epoch"])["wall_time"].transform("mean")
        for i, (y, lab) in enumerate((("test_acc", "test accuracy"), ("train_loss", "train loss"))):
            ax = axes[i, j]
            for opt, h in sub.groupby("optimizer", sort=True):
                st = h.groupby(x)[y].agg(["mean", "std", "count"]).sort_index()
                half = 1.96 * (st["std"] / np.sqrt(st["count"])).fillna(0).to_numpy(float)
                m = st["mean"].to_numpy(float)
                ax.plot(st.index, m, marker="o", markersize=4, label=opt, color=colors[opt])
                _band(ax, st.index, m - half, m + half, y, colors[opt])
            ax.set_ylabel(lab)
            ax.set_xlabel("wall-clock time (s)" if x == "wall_time" else "epoch")
            if y == "train_loss":
                ax.set_yscale("log")
            ax.set_title(f"{task}/{model}" if i == 0 else "")
            if j == len(problems) - 1:
                _legend_outside(ax, "optimizer", fontsize=8)
    fig.suptitle(
        f"Training curves vs {'time' if x == 'wall_time' else 'epoch'} (configuration selected on "
        f"{metric_label(metric)}; {' + '.join(stages)} seeds; band: mean ± 1.96 SE over seeds)",
        y=1.02,
    )
    fig.tight_layout()
    return fig


COST_PHASES = {
    "time_forward_backward": "forward-backward",
    "time_curvature": "curvature",
    "time_update": "update",
    "time_other": "other (evaluation, data)",
}

#: phases are drawn in greys (curvature hatched), so no phase shares a colour with an optimizer
PHASE_STYLE = {
    "time_forward_backward": ("#4a4a4a", None),
    "time_curvature": ("#8a8a8a", "///"),
    "time_update": ("#b8b8b8", None),
    "time_other": ("#dedede", None),
}


def cost_bars(trials: pd.DataFrame):
    """Mean seconds per epoch per optimizer, stacked by phase (:func:`~optlab.analysis.data.cost_per_epoch`:
    forward-backward, curvature, update, and the rest of the epoch), one panel per task/model;
    each bar's total is the table's ``time_epoch``, annotated with it and the HVPs per epoch."""
    g = cost_per_epoch(trials)
    problems = list(g.groupby(["task", "model"], observed=True))
    most = max((len(h) for _, h in problems), default=1)
    fig, axes = _fig(1, max(1, len(problems)), w=max(4.0, 0.9 * most + 1.2), h=4.2)
    top = float(np.nanmax(g["time_epoch"])) * 1.22 if len(g) else 1.0
    for j, (ax, ((task, model), h)) in enumerate(zip(axes.flat, problems)):
        labels = h["arm"].astype(str).tolist()
        bottom = np.zeros(len(h))
        for c, lab in COST_PHASES.items():
            face, hatch = PHASE_STYLE[c]
            ax.bar(labels, h[c].fillna(0), bottom=bottom, label=lab, color=face, hatch=hatch, edgecolor="white")
            bottom += h[c].fillna(0).to_numpy()
        for xi, (total, hvp) in enumerate(zip(h["time_epoch"], h["hvp_per_epoch"])):
            text = f"{total:.2f}s" + (f"\n{hvp:.3g} HVP" if hvp and np.isfinite(hvp) else "")
            ax.text(xi, total, text, ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, top)
        ax.set_title(f"{task}/{model}")
        ax.set_ylabel("seconds per epoch (mean over trials)" if j == 0 else "")
        ax.tick_params(axis="x", labelrotation=30)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")
    if problems:
        _legend_outside(axes.flat[len(problems) - 1], "phase")
    fig.suptitle("Per-epoch cost by phase (bar total = time_epoch; label: total, HVPs per epoch)", y=1.02)
    fig.tight_layout()
    return fig


def profile_plot(profile: pd.DataFrame):
    """Dolan-Moré performance profile (from ``performance_profile``)."""
    fig, axes = _fig(1, 1, w=5.5)
    ax = axes[0, 0]
    colors = _palette_of(profile)
    for opt, g in profile.groupby("arm", observed=True):
        ax.step(g["tau"], g["rho"], where="post", label=str(opt), color=colors[str(opt)])
    ax.set_xlabel("tau (cost ratio to the best optimizer)")
    ax.set_ylabel("fraction of problems within tau")
    ax.set_ylim(-0.02, 1.02)
    _legend_outside(ax, "optimizer")
    ax.set_title("Performance profile")
    fig.tight_layout()
    return fig


def expected_max_plot(curve: pd.DataFrame):
    """Expected best validation score vs configurations tried, per optimizer (from
    :func:`optlab.analysis.compare.expected_max_curve`; Dodge et al. 2019); dotted line: the
    smallest budget of the task/model, where optimizers compare at equal budget."""
    problems = list(curve.groupby(["task", "model"], observed=True))
    fig, axes = _fig(1, max(1, len(problems)), w=5.2)
    colors = _palette_of(curve)
    for ax, ((task, model), g) in zip(axes.flat, problems):
        g = g.assign(optimizer=g["arm"].astype(str))
        sns.lineplot(data=g, x="n", y="expected_max", hue="optimizer", palette=colors, marker="o", markersize=4, ax=ax)
        ax.get_legend().remove()  # one legend, right of the last panel
        ax.axvline(g.loc[g["budget_matched"], "n"].min(), color="grey", ls=":", lw=1.5)
        if g["n"].max() >= 20:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("configurations tried (n)")
        ax.set_ylabel(f"expected best {metric_label(str(g['selected_on'].iloc[0]))}")
        ax.set_title(f"{task}/{model}")
    if problems:
        _legend_outside(axes.flat[len(problems) - 1], "optimizer", fontsize=8)
    fig.suptitle("Expected maximum over n random configurations (Dodge et al. 2019); dotted: equal budget", y=1.02)
    fig.tight_layout()
    return fig


def time_to_target_plot(rows: pd.DataFrame, profile: pd.DataFrame | None = None, unit: str = "step"):
    """Time to target (:mod:`optlab.analysis.time_to_target`): per workload, the share of an arm's
    seeds that reached the target by each time (a step curve that ends below 1 when seeds never
    reached -- censored seeds stay in the denominator); with ``profile`` (columns ``arm``, ``tau``,
    ``rho``) a last panel with the performance profile over time to target."""
    from .time_to_target import reach_curve

    workloads = sorted(rows["workload"].unique())
    n = len(workloads) + (profile is not None and len(profile) > 0)
    fig, axes = _fig(1, max(1, n), w=4.8)
    colors = arm_palette(rows["arm"].unique())
    for ax, w in zip(axes.flat, workloads):
        g = rows[rows["workload"] == w]
        finite = g[unit][np.isfinite(g[unit])]
        top = float(g["horizon_step"].max() if unit == "step" else (finite.max() if len(finite) else 1.0))
        grid = np.linspace(0, top if np.isfinite(top) and top > 0 else 1.0, 200)
        for arm, ga in g.groupby("arm"):
            share = reach_curve(list(ga[unit]), list(grid))
            ax.step(
                grid, share, where="post", color=colors[str(arm)], label=f"{arm} ({int(ga['reached'].sum())}/{len(ga)})"
            )
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"{unit}s" if unit != "cost" else "gradient-equivalents")
        ax.set_ylabel("share of seeds at target")
        ax.set_title(f"{w}: {g['metric'].iloc[0]} >= {g['target'].iloc[0]:.4g}", fontsize=10)
        # below the panel (never over the curves): each arm with the seeds that reached / its seeds
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    if profile is not None and len(profile):
        ax = axes.flat[len(workloads)]
        for arm, g in profile.groupby("arm"):
            ax.step(g["tau"], g["rho"], where="post", color=colors.get(str(arm)), label=str(arm))
        ax.set_xlabel(f"tau ({unit}s to target / the fastest arm's)")
        ax.set_ylabel("share of workloads within tau")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Performance profile (time to target)", fontsize=10)
        _legend_outside(ax, "arm")
    fig.tight_layout()
    return fig
