"""The report's sections on the measurements after the verdict and time to target: budgets, summary
over seeds, heatmaps, sensitivity, comparison details, curves, cost, performance profile.

Each takes the :class:`~.inputs.ReportInputs` (the loaded results, read once by
:func:`optlab.analysis.report.build_sections`) and returns its :class:`Section` (or None where
the results have nothing for it); :mod:`.status` holds the sections on what ran and where."""

from __future__ import annotations

import math

import pandas as pd

from ..compare import budgets, expected_max_curve
from ..data import (
    WITHIN,
    cost_per_epoch,
    performance_profile,
    sensitivity,
    summarize,
)
from ..plots import (
    cost_bars,
    expected_max_plot,
    heatmaps,
    metric_label,
    profile_plot,
    sensitivity_plot,
    training_curves,
)
from .format import Section, format_table
from .inputs import ReportInputs

#: sensitivity axes in this order first, then the others as found
AXES_ORDER = ["lr", "weight_decay", "hessian_momentum", "tau", "eps", "every", "momentum"]
#: which trials the curves and profile read
STAGE_WORDS = "evaluation seeds where present, else tuning seeds"


def budgets_section(inp: ReportInputs) -> Section:
    """Configurations tried per arm (unequal budgets warned about) and the expected-maximum curve."""
    trials, select, sel_lab, figure = inp.trials, inp.select, inp.select_label, inp.figure
    bud = budgets(trials)
    sec = Section(
        "Budgets and expected maximum",
        (
            "Configurations tried per optimizer while tuning (`configs`). A larger search finds a luckier "
            "best configuration, so optimizers tuned with unequal budgets are not compared fairly by their best "
            f"configurations. The expected maximum (Dodge et al. 2019) is the expected best {sel_lab} (seed-mean, "
            "tuning seeds) after n configurations drawn at random from those tried: compare optimizers at the same n "
            "(`n matched` = the smallest budget of the task/model)."
        ),
    )
    if not bud["equal"].all():
        uneq = bud[~bud["equal"]]
        sec.warnings.append(
            "Unequal tuning budgets: "
            + "; ".join(
                f"{t}/{m}: " + ", ".join(f"{o} {c}" for o, c in zip(g["arm"], g["configs"]))
                for (t, m), g in uneq.groupby(["task", "model"], observed=True)
            )
            + ". Read the expected maximum "
            "at equal n, not the best configurations."
        )
    sec.tables.append(
        (
            "Tuning budget",
            format_table(bud, ["task", "model", "arm", "optimizer", "configs", "extended", "seeds", "trials", "equal"]),
        )
    )
    if bud["extended"].any():
        sec.text += (
            " `extended`: configurations the grid extension (`[protocol] extend_edges`) added beyond an edge; "
            "they count in `configs` like any other configuration tried."
        )
    _add_expected_max(sec, trials, select, sel_lab, figure)
    return sec


def _add_expected_max(sec: Section, trials: pd.DataFrame, select: str, sel_lab: str, figure) -> None:
    """The expected best validation score after n configurations (Dodge et al. 2019): table and figure."""
    curve = expected_max_curve(trials, metric=select)
    if len(curve):
        rows = []
        for (t, m, o), g in curve.groupby(list(WITHIN), observed=True):
            matched = g.loc[g["budget_matched"], "expected_max"]
            rows.append(
                {
                    "task": t,
                    "model": m,
                    "arm": o,
                    "configs": g["configs"].iloc[0],
                    "n matched": int(g.loc[g["budget_matched"], "n"].iloc[0]) if len(matched) else math.nan,
                    "E[max] at n matched": matched.iloc[0] if len(matched) else math.nan,
                    "E[max] at n=1 (mean)": g["expected_max"].iloc[0],
                    "E[max] at own budget": g["expected_max"].iloc[-1],
                    "selected_on": g["selected_on"].iloc[0],
                }
            )
        sec.tables.append(("Expected best validation score", format_table(pd.DataFrame(rows))))
        figure(
            sec,
            expected_max_plot(curve),
            "expected_max",
            f"Expected best {sel_lab} (tuning seeds) vs configurations tried; dotted line: equal budget.",
        )


def summary_section(inp: ReportInputs) -> Section:
    """The report metric per configuration and stage over seeds (description, no selection)."""
    trials, axes, metric = inp.trials, inp.axes, inp.metric
    summ = summarize(trials, metric=metric)
    sec = Section(
        "Summary over seeds",
        f"{metric_label(metric).capitalize()} per configuration and stage "
        "(description only: nothing is selected here): mean, standard deviation, standard error and "
        "95 % confidence interval (Student t) over seeds that finished; "
        "`n_missing`/`n_diverged`/`n_failed` show cells that are incomplete -- they are never "
        "averaged silently over fewer seeds.",
    )
    if len(summ):
        summ = summ.sort_values(["task", "model", "stage", "mean"], ascending=[True, True, False, False])
        sec.tables.append(
            (
                "",
                format_table(
                    summ,
                    ["task", "model", "arm", "stage"]
                    + axes
                    + ["mean", "std", "sem", "ci95", "n", "n_missing", "n_diverged", "n_failed"],
                ),
            )
        )
    return sec


def heatmap_section(inp: ReportInputs) -> Section | None:
    """The selection metric over lr x weight decay (only when both are tuned)."""
    if not ("lr" in inp.axes and "weight_decay" in inp.axes):
        return None
    sec = Section("Learning rate x weight decay")
    inp.figure(
        sec,
        heatmaps(inp.trials, "lr", "weight_decay", metric=inp.select),
        "heatmap_lr_wd",
        f"{inp.select_label.capitalize()} (tuning seeds) over lr x weight decay, other axes at their best on it; "
        "one panel per optimizer, one colour scale; red: the configuration selected on it.",
    )
    return sec


def sensitivity_section(inp: ReportInputs) -> Section | None:
    """Each tuned axis with the others at their best: a figure and a table per axis some arm varies."""
    trials, axes, select, sel_lab = inp.trials, inp.axes, inp.select, inp.select_label
    sens_axes = [a for a in AXES_ORDER if a in axes] + [a for a in axes if a not in AXES_ORDER]
    if not sens_axes:
        return None
    sec = Section(
        "Sensitivity",
        f"Each axis with the other axes at their best on {sel_lab} (tuning "
        "seeds, seed-mean); band: 95 % CI. `test mean` is reported for the same configurations.",
    )
    for a in sens_axes:
        try:
            s = sensitivity(trials, a, metric=select, report=inp.metric)
        except (KeyError, ValueError):
            continue
        if s.empty or s.groupby(list(WITHIN), observed=True)[a].nunique().max() < 2:  # no arm varies it
            continue
        inp.figure(
            sec,
            sensitivity_plot(trials, a, metric=select),
            f"sensitivity_{a}",
            f"Sensitivity to {a}: {sel_lab}, tuning seeds, selected on it.",
        )
        sec.tables.append(
            (
                f"{a}",
                format_table(
                    s,
                    ["task", "model", "arm", a, "selected_on", "mean", "ci95", "n", "report_mean"],
                    rename={"mean": "val mean", "report_mean": "test mean"},
                ),
            )
        )
    return sec


def comparison_details_section(cmp: pd.DataFrame) -> Section:
    """Every statistic behind the verdict table."""
    sec = Section(
        "Comparison details",
        "Every statistic behind the verdict table: paired t and Wilcoxon "
        "signed-rank p-values (unadjusted), Holm-adjusted p, TOST p, SD of the seed differences, "
        "the seeds paired and the configurations compared.",
    )
    if len(cmp):
        sec.tables.append(
            (
                "",
                format_table(
                    cmp,
                    [
                        "task",
                        "model",
                        "arm",
                        "reference",
                        "stage",
                        "n_pairs",
                        "n_unpaired",
                        "mean",
                        "reference_mean",
                        "mean_diff",
                        "ci_low",
                        "ci_high",
                        "sd_diff",
                        "p_value",
                        "p_wilcoxon",
                        "p_holm",
                        "p_tost",
                        "p_tost_holm",
                        "mde",
                        "verdict",
                        "seeds",
                        "config",
                        "reference_config",
                    ],
                ),
            )
        )
    return sec


def curves_section(inp: ReportInputs) -> Section:
    """Training curves of each arm's selected configuration, against epochs and wall-clock time."""
    epochs, trials, select, sel_lab, figure = inp.epochs, inp.trials, inp.select, inp.select_label, inp.figure
    stage_word = STAGE_WORDS
    sec = Section("Training curves", f"Each optimizer's configuration selected on {sel_lab}; curves over {stage_word}.")
    figure(
        sec,
        training_curves(epochs, trials, x="epoch", metric=select),
        "curves_epoch",
        f"Against epochs (selected on {sel_lab}; {stage_word}).",
    )
    figure(
        sec,
        training_curves(epochs, trials, x="wall_time", metric=select),
        "curves_time",
        f"Against wall-clock time (selected on {sel_lab}; {stage_word}).",
    )
    return sec


def cost_section(inp: ReportInputs) -> Section:
    """Seconds per epoch by phase and HVPs per epoch."""
    trials, figure = inp.trials, inp.figure
    sec = Section(
        "Cost",
        "Mean seconds per epoch by phase, as recorded by the runner (trials that did not fail): "
        "forward-backward, curvature and update inside the optimizer step, `time_other` the rest of the "
        "epoch (evaluation, batching), so the phases add up to `time_epoch`, the bar's total. "
        "`hvp_per_epoch`: Hessian-vector products per epoch.",
    )
    figure(sec, cost_bars(trials), "cost", "Seconds per epoch by phase; label: total and HVPs per epoch.")
    sec.tables.append(("", format_table(cost_per_epoch(trials))))
    return sec


def profile_section(inp: ReportInputs) -> Section | None:
    """The Dolan-Moré performance profile across task/model problems (only with more than one)."""
    trials, metric = inp.trials, inp.metric
    if trials.groupby(["task", "model"], observed=True).ngroups <= 1:
        return None
    sec = Section(
        "Performance profile",
        f"Dolan-Moré profile of {metric_label(metric)} error across task/model "
        f"problems, each optimizer at its configuration selected on {inp.select_label} ({STAGE_WORDS}).",
    )
    inp.figure(sec, profile_plot(performance_profile(trials, metric=inp.select, report=metric)), "profile", "")
    return sec
