"""The report's building blocks and its descriptive sections (budgets, overview, spec,
environment, summary, heatmaps, sensitivity, curves, cost, profile, problems): one function
per section, each reading the loaded results (:class:`ReportInputs`). The verdict and its
details are in :mod:`optlab.analysis.verdict`; :mod:`optlab.analysis.report` orders and renders them."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from optlab.store import Store, StoreError

from .compare import budgets, expected_max_curve
from .data import (
    WITHIN,
    SelectionBiasWarning,
    best_configs,
    config_description,
    cost_per_epoch,
    expected_trials,
    hparam_columns,
    load,
    performance_profile,
    sensitivity,
    summarize,
)
from .plots import (
    cost_bars,
    expected_max_plot,
    heatmaps,
    metric_label,
    profile_plot,
    sensitivity_plot,
    training_curves,
)
from .plots import save as save_figure

AXES_ORDER = ["lr", "weight_decay", "hessian_momentum", "tau", "eps", "every", "momentum"]


def fmt_value(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}"
    if isinstance(v, (bool,)):
        return "yes" if v else "no"
    return str(v)


def frame_table(df: pd.DataFrame, cols: list[str] | None = None, rename: dict | None = None) -> pd.DataFrame:
    df = df[[c for c in (cols or df.columns) if c in df]].copy()
    df = df.map(fmt_value) if len(df) else df
    return df.rename(columns=rename or {})


class Section:
    def __init__(self, title: str, text: str = ""):
        self.title, self.text = title, text
        self.warnings: list[str] = []  # shown loudly, before the tables
        self.tables: list[tuple[str, pd.DataFrame]] = []
        self.figures: list[tuple[str, str, str]] = []  # (caption, png path, svg path)
        self.pre: str | None = None


def environment_rows(records: list[dict]) -> dict[str, set]:
    """Every environment field recorded with the trials -> the set of its values."""
    env_rows: dict[str, set] = {}
    for r in records:
        env = r.get("env") or {}
        for k in ("git_revision", "git_dirty", "host", "platform", "python", "torch_threads", "device"):
            env_rows.setdefault(k, set()).add(str(env.get(k)))
        for pkg, v in (env.get("versions") or {}).items():
            env_rows.setdefault(pkg, set()).add(v)
        env_rows.setdefault("schema_version", set()).add(str(r.get("schema_version", "1 (legacy)")))
        for pkg, v in (r.get("plugins") or {}).items():
            env_rows.setdefault(f"plugin {pkg}", set()).add(str(v))
    return env_rows


def environment_note(env_rows: dict[str, set]) -> str:
    """What the environment table says: one environment, or which recorded fields differ."""
    differ = sorted(k for k, v in env_rows.items() if len(v) > 1)
    if not differ:
        return "Values recorded with the trials; every trial ran in the same environment."
    return (
        "Values recorded with the trials. Trials ran in different environments: "
        + ", ".join(f"`{k}`" for k in differ)
        + (" differs" if len(differ) == 1 else " differ")
        + " (several values in a row; column `same in all trials`)."
    )


@dataclass
class ReportInputs:
    """What every section reads: the loaded results and the report's choices."""

    results: Path
    store: Store
    records: list[dict]
    invalid: list
    epochs: pd.DataFrame
    trials: pd.DataFrame
    axes: list[str]
    fig_dir: Path
    select: str
    metric: str

    @property
    def sel_lab(self) -> str:
        return metric_label(self.select)

    def figure(self, sec: Section, fig, name: str, caption: str) -> None:
        png, svg = save_figure(fig, self.fig_dir / name)
        plt.close(fig)
        sec.figures.append((caption, str(png), str(svg)))


def load_inputs(results: Path, fig_dir: Path, select: str, metric: str) -> ReportInputs:
    store = Store(results)
    if not store.trials.is_dir():
        next(store.iter_results(), None)  # raises the "does not exist" / "not a results directory" error
    good, invalid = store.scan()  # files that do not validate are listed, never read (optlab.store.validate_record)
    records = list(good.values())
    if not records:
        raise StoreError(f"{results}: no completed trials to report on (trials/ is empty)")
    epochs, trials = load(records)
    fig_dir.mkdir(parents=True, exist_ok=True)
    return ReportInputs(
        results, store, records, invalid, epochs, trials, hparam_columns(trials), fig_dir, select, metric
    )


def budgets_section(inp: ReportInputs) -> Section:
    """Configurations tried per arm, and the expected maximum after n of them."""
    bud = budgets(inp.trials)
    sec = Section(
        "Budgets and expected maximum",
        (
            "Configurations tried per optimizer while tuning (`configs`). A larger search finds a luckier "
            "best configuration, so optimizers tuned with unequal budgets are not compared fairly by their best "
            f"configurations. The expected maximum (Dodge et al. 2019) is the expected best {inp.sel_lab} (seed-mean, "
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
            frame_table(bud, ["task", "model", "arm", "optimizer", "configs", "seeds", "trials", "equal"]),
        )
    )
    curve = expected_max_curve(inp.trials, metric=inp.select)
    if len(curve):
        sec.tables.append(("Expected best validation score", frame_table(expected_max_rows(curve))))
        inp.figure(
            sec,
            expected_max_plot(curve),
            "expected_max",
            f"Expected best {inp.sel_lab} (tuning seeds) vs configurations tried; dotted line: equal budget.",
        )
    return sec


def expected_max_rows(curve: pd.DataFrame) -> pd.DataFrame:
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
    return pd.DataFrame(rows)


def overview_section(inp: ReportInputs) -> tuple[Section, list[dict], set]:
    """Status counts and the selected configurations; also ``(missing trials, live claims)``."""
    trials = inp.trials
    expected = expected_trials(inp.results)
    done = set(trials["trial_id"])
    missing = [t for t in (expected or []) if t["trial_id"] not in done]
    live = inp.store.live_claims()
    counts = trials["status"].astype(str).value_counts().to_dict()
    stages = trials["stage"].astype(str).value_counts().to_dict()
    total = len(expected) if expected is not None else len(trials)
    sec = Section(
        "Overview",
        f"{len(trials)} of {total} trials have results: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + (
            f"; {len(missing)} missing ({len([m for m in missing if m['trial_id'] in live])} running now)"
            if expected is not None
            else ""
        )
        + ". Stages: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stages.items()))
        + ".",
    )
    n_legacy = int(trials["legacy"].sum())
    if n_legacy:
        sec.warnings.append(
            f"{n_legacy} legacy trial(s) (no schema version 2 / no resolved hyperparameters): "
            "the hyperparameters they left unset are shown with today's preset defaults, which "
            "may differ from what they ran with (column `legacy`)."
        )
    add_selected_configs(sec, inp)
    return sec, missing, live


def add_selected_configs(sec: Section, inp: ReportInputs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionBiasWarning)
        best = best_configs(inp.trials, metric=inp.select, report=inp.metric)
    if not len(best):
        return
    cols = ["selected_on", "mean", "std", "n", "n_missing", "n_diverged", "eligible", "n_configs", "n_tied"]
    sec.tables.append(
        (
            f"Selected configuration per optimizer (on {inp.sel_lab}, tuning seeds; test reported for it)",
            frame_table(
                best,
                ["task", "model", "arm", "optimizer"] + inp.axes + cols + ["report_mean", "report_std"],
                rename={"mean": "val mean", "std": "val std", "report_mean": "test mean", "report_std": "test std"},
            ),
        )
    )
    sec.text += (
        " `val mean`: the selection score; `eligible`: every tuning seed finished ok (otherwise the "
        "best mean over finished seeds won); `n_tied`: configurations whose score tied with the winner "
        "(this replaces the old `tie` column: the first configuration label in sorted order wins, "
        "as in the grid runner); `test mean`: reported, never selected on."
    )


def spec_section(inp: ReportInputs) -> Section:
    spec = inp.results / "spec.toml"
    sec = Section("Grid specification")
    sec.pre = spec.read_text() if spec.exists() else "(no spec.toml in the results directory)"
    return sec


def environment_section(inp: ReportInputs) -> Section:
    env_rows = environment_rows(inp.records)
    sec = Section("Environment", environment_note(env_rows))
    sec.tables.append(
        (
            "",
            pd.DataFrame(
                [
                    {"item": k, "value": ", ".join(sorted(v)), "same in all trials": "yes" if len(v) == 1 else "NO"}
                    for k, v in env_rows.items()
                ]
            ),
        )
    )
    return sec


def summary_section(inp: ReportInputs) -> Section:
    summ = summarize(inp.trials, metric=inp.metric)
    sec = Section(
        "Summary over seeds",
        f"{metric_label(inp.metric).capitalize()} per configuration and stage "
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
                frame_table(
                    summ,
                    ["task", "model", "arm", "stage"]
                    + inp.axes
                    + ["mean", "std", "sem", "ci95", "n", "n_missing", "n_diverged", "n_failed"],
                ),
            )
        )
    return sec


def heatmap_section(inp: ReportInputs) -> Section | None:
    if not ("lr" in inp.axes and "weight_decay" in inp.axes):
        return None
    sec = Section("Learning rate x weight decay")
    inp.figure(
        sec,
        heatmaps(inp.trials, "lr", "weight_decay", metric=inp.select),
        "heatmap_lr_wd",
        f"{inp.sel_lab.capitalize()} (tuning seeds) over lr x weight decay, other axes at their best on it; "
        "one panel per optimizer, one colour scale; red: the configuration selected on it.",
    )
    return sec


def sensitivity_section(inp: ReportInputs) -> Section | None:
    axes = inp.axes
    sens_axes = [a for a in AXES_ORDER if a in axes] + [a for a in axes if a not in AXES_ORDER]
    if not sens_axes:
        return None
    sec = Section(
        "Sensitivity",
        f"Each axis with the other axes at their best on {inp.sel_lab} (tuning "
        "seeds, seed-mean); band: 95 % CI. `test mean` is reported for the same configurations.",
    )
    for a in sens_axes:
        try:
            s = sensitivity(inp.trials, a, metric=inp.select, report=inp.metric)
        except (KeyError, ValueError):
            continue
        if s.empty or s.groupby(list(WITHIN), observed=True)[a].nunique().max() < 2:  # no arm varies it
            continue
        inp.figure(
            sec,
            sensitivity_plot(inp.trials, a, metric=inp.select),
            f"sensitivity_{a}",
            f"Sensitivity to {a}: {inp.sel_lab}, tuning seeds, selected on it.",
        )
        sec.tables.append(
            (
                f"{a}",
                frame_table(
                    s,
                    ["task", "model", "arm", a, "selected_on", "mean", "ci95", "n", "report_mean"],
                    rename={"mean": "val mean", "report_mean": "test mean"},
                ),
            )
        )
    return sec


STAGE_WORD = "evaluation seeds where present, else tuning seeds"


def curves_section(inp: ReportInputs) -> Section:
    sel_lab = inp.sel_lab
    sec = Section("Training curves", f"Each optimizer's configuration selected on {sel_lab}; curves over {STAGE_WORD}.")
    inp.figure(
        sec,
        training_curves(inp.epochs, inp.trials, x="epoch", metric=inp.select),
        "curves_epoch",
        f"Against epochs (selected on {sel_lab}; {STAGE_WORD}).",
    )
    inp.figure(
        sec,
        training_curves(inp.epochs, inp.trials, x="wall_time", metric=inp.select),
        "curves_time",
        f"Against wall-clock time (selected on {sel_lab}; {STAGE_WORD}).",
    )
    return sec


def cost_section(inp: ReportInputs) -> Section:
    sec = Section(
        "Cost",
        "Mean seconds per epoch by phase, as recorded by the runner (trials that did not fail): "
        "forward-backward, curvature and update inside the optimizer step, `time_other` the rest of the "
        "epoch (evaluation, batching), so the phases add up to `time_epoch`, the bar's total. "
        "`hvp_per_epoch`: Hessian-vector products per epoch.",
    )
    inp.figure(sec, cost_bars(inp.trials), "cost", "Seconds per epoch by phase; label: total and HVPs per epoch.")
    sec.tables.append(("", frame_table(cost_per_epoch(inp.trials))))
    return sec


def profile_section(inp: ReportInputs) -> Section | None:
    if inp.trials.groupby(["task", "model"], observed=True).ngroups <= 1:
        return None
    sec = Section(
        "Performance profile",
        f"Dolan-Moré profile of {metric_label(inp.metric)} error across task/model "
        f"problems, each optimizer at its configuration selected on {inp.sel_lab} ({STAGE_WORD}).",
    )
    profile = performance_profile(inp.trials, metric=inp.select, report=inp.metric)
    inp.figure(sec, profile_plot(profile), "profile", "")
    return sec


def problems_section(inp: ReportInputs, missing: list[dict], live: set) -> Section:
    bad = inp.trials[inp.trials["status"] != "ok"]
    sec = Section("Missing, failed and diverged trials")
    rows = [
        {
            "trial": r["trial_id"],
            "status": r["status"],
            "stage": r["stage"],
            "config": r["config"],
            "seed": r["seed"],
            "error": (r["error"] or "")[:200],
        }
        for _, r in bad.iterrows()
    ]
    rows += [
        {
            "trial": m["trial_id"],
            "status": "running" if m["trial_id"] in live else "missing",
            "stage": m.get("stage", "tuning"),
            "config": config_description(m.get("arm") or m["optimizer"], m["hparams"], m),
            "seed": m["seed"],
            "error": "",
        }
        for m in missing
    ]
    rows += [
        {
            "trial": exc.path.stem,
            "status": "invalid file",
            "stage": "",
            "config": exc.path.name,
            "seed": "",
            "error": exc.problem[:200] + " (the next `optlab grid run` quarantines it and reruns the trial)",
        }
        for exc in inp.invalid
    ]
    if rows:
        sec.tables.append(("", pd.DataFrame(rows)))
    else:
        sec.text = "None: every trial of the grid finished ok."
    return sec
