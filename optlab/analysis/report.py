"""``write_report(results, out)``: a self-contained HTML report (figures embedded, works
offline) and a Markdown version with the figures beside it."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import re
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from optlab.grid.protocol import SELECTION_COLUMNS
from optlab.store import Store, StoreError, atomic_write

from . import compare as C
from . import data as D
from . import plots as P
from . import stats as S

__all__ = ["write_report", "build_sections", "verdict_table"]

AXES_ORDER = ["lr", "weight_decay", "hessian_momentum", "tau", "eps", "every", "momentum"]


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}"
    if isinstance(v, (bool,)):
        return "yes" if v else "no"
    return str(v)


def _table(df: pd.DataFrame, cols: list[str] | None = None, rename: dict | None = None) -> pd.DataFrame:
    df = df[[c for c in (cols or df.columns) if c in df]].copy()
    df = df.map(_fmt) if len(df) else df
    return df.rename(columns=rename or {})


class _Section:
    def __init__(self, title: str, text: str = ""):
        self.title, self.text = title, text
        self.warnings: list[str] = []  # shown loudly, before the tables
        self.tables: list[tuple[str, pd.DataFrame]] = []
        self.figures: list[tuple[str, str, str]] = []  # (caption, png path, svg path)
        self.pre: str | None = None


def _units(metric: str) -> tuple[float, str]:
    """Scale and unit of differences of ``metric``: percentage points for accuracies, else as is."""
    return (100.0, " (pp)") if metric.endswith("_acc") else (1.0, "")


def verdict_table(cmp: pd.DataFrame) -> pd.DataFrame:
    """The report's first table from :func:`compare.comparisons` (accuracy differences in percentage points)."""
    if cmp.empty:
        return pd.DataFrame()
    k, unit = _units(cmp.attrs.get("metric", "final_test_acc"))

    def num(x: float, sign: str = "+") -> str:
        return "–" if not math.isfinite(x) else f"{k * x:{sign}.{2 if k == 100 else 4}f}"

    return pd.DataFrame(
        {
            "task": cmp["task"].astype(str) + "/" + cmp["model"].astype(str),
            "optimizer": cmp["arm"],
            "vs": cmp["reference"],
            f"Δ{unit}": cmp["mean_diff"].map(num),
            f"95 % CI{unit}": [f"[{num(lo)}, {num(hi)}]" for lo, hi in zip(cmp["ci_low"], cmp["ci_high"])],
            "verdict": cmp["verdict"],
            "seeds": cmp["n_pairs"],
            "budgets": [
                f"{a} vs {b}" + ("" if a == b else " (!)") for a, b in zip(cmp["budget"], cmp["reference_budget"])
            ],
            "p (Holm)": cmp["p_holm"].map(_fmt),
            "p TOST (Holm)": cmp["p_tost_holm"].map(_fmt),
            f"MDE{unit}": cmp["mde"].map(lambda x: num(x, "")),
            f"margin{unit}": cmp["margin"].map(lambda x: "±" + num(x, "")),
            "stage": [
                st + (" (selection-biased)" if b else "") for st, b in zip(cmp["stage"], cmp["selection_biased"])
            ],
            **(
                {"on an edge": [e or "–" for e in cmp["edges"]]}
                if "edges" in cmp and (cmp["arm_at_edge"] | cmp["reference_at_edge"]).any()
                else {}
            ),
        }
    )


def _verdict_section(
    trials: pd.DataFrame,
    baseline: str,
    controls,
    margin: float,
    alpha: float,
    select: str,
    metric: str,
    domains: dict | None = None,
) -> tuple[_Section, pd.DataFrame]:
    opts = sorted(trials["arm"].astype(str).unique())
    present = [c for c in controls if c in opts]
    sec = _Section(
        "Verdict",
        (
            f"Each optimizer against the baseline `{baseline}`"
            + (f" and the controls {', '.join(f'`{c}`' for c in present)}" if present else "")
            + f", per task/model. Δ = optimizer − reference of {P.metric_label(metric)}"
            + (" in percentage points (pp)" if _units(metric)[0] == 100 else "")
            + ", "
            f"paired by seed; each optimizer at the one configuration selected on {P.metric_label(select)} over its "
            f"tuning seeds. 95 % CI: BCa bootstrap over seeds ({S.DEFAULT_RESAMPLES} resamples, fixed seed). "
            f"Verdict: **better**/**worse** = paired t-test significant at α = {alpha} after Holm correction across "
            f"all comparisons of this table AND the CI excludes 0; **equivalent** = the equivalence test (TOST, "
            f"Holm-adjusted) puts the difference within ±{_units(metric)[0] * margin:g}"
            + (" pp" if _units(metric)[0] == 100 else "")
            + " (the margin, `--margin`); "
            "**inconclusive** = neither: the seeds cannot tell -- MDE is the smallest true difference this many "
            "seeds detect with 80 % power. Budgets: configurations each side tried while tuning."
        ),
    )
    if baseline not in opts:
        sec.warnings.append(
            f"No comparison: the baseline `{baseline}` is not in these results (optimizers: "
            f"{', '.join(opts)}); choose one with `--baseline`."
        )
        return sec, pd.DataFrame()
    missing = [c for c in controls if c not in opts]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cmp = C.comparisons(
            trials,
            baseline=baseline,
            controls=controls,
            margin=margin,
            alpha=alpha,
            select=select,
            metric=metric,
            domains=domains,
        )
    if cmp.empty:
        sec.warnings.append(f"No comparison: no task/model has both `{baseline}` and another optimizer.")
        return sec, cmp
    for w in caught:
        if issubclass(w.category, C.BudgetWarning):
            sec.warnings.append(str(w.message))
    edged = cmp[cmp["arm_at_edge"] | cmp["reference_at_edge"]]
    if len(edged):
        sec.warnings.append(
            "Selected on the edge of the tuning grid -- these verdicts may say more about the grid than about "
            "the optimizers (Choi et al. 2019): "
            + "; ".join(
                f"{r.task}/{r.model} {r.arm} vs {r.reference} ({r.verdict}): {r.edges}" for r in edged.itertuples()
            )
            + ". Widen the grid, or set `[protocol] extend_edges` to extend it automatically."
        )
    if (cmp["stage"] == "tuning").any():
        sec.warnings.append(
            "Selection-biased comparison: these results have no evaluation-stage trials (yet) for "
            + ", ".join(
                sorted(
                    set(cmp.loc[cmp["stage"] == "tuning", "arm"].astype(str))
                    | set(cmp.loc[cmp["stage"] == "tuning", "reference"].astype(str))
                )
            )
            + ", so the differences are measured on the same tuning seeds that selected each configuration "
            "(a winner's curse that favours the optimizer with the larger search). Add evaluation seeds to the "
            "grid spec for an unbiased comparison."
        )
    if cmp["selected_on"].str.contains("test").any():
        sec.warnings.append(
            "Selected on test: biased. Some results have no validation metric (legacy records); "
            "their configurations were selected on the test metric they are compared on."
        )
    if missing:
        sec.text += f" Controls not in these results: {', '.join(missing)}."
    sec.tables.append(("", verdict_table(cmp)))
    return sec, cmp


#: the CSV files written next to the report (``<name>.csv``)
CSV_FILES = ("verdicts", "selection", "time_to_target")
#: columns of ``verdicts.csv`` (docs/analysis.md, "CSV files")
VERDICT_COLUMNS = (
    "task",
    "model",
    "arm",
    "reference",
    "kind",
    "stage",
    "metric",
    "n_pairs",
    "mean",
    "reference_mean",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_wilcoxon",
    "p_holm",
    "p_tost",
    "p_tost_holm",
    "margin",
    "mde",
    "verdict",
    "budget",
    "reference_budget",
    "config",
    "reference_config",
    "arm_at_edge",
    "reference_at_edge",
    "edges",
)
#: columns of ``selection.csv`` after task, model, arm
SELECTION_CSV = (*SELECTION_COLUMNS, "stability")


def _spec_of(results: Path):
    """The grid spec stored with the results (``spec.toml``), or None (absent, or not loadable here)."""
    path = results / "spec.toml"
    if not path.exists():
        return None
    try:
        from optlab.grid import load_spec

        return load_spec(path)
    except Exception:  # a spec this optlab cannot read (a plugin is missing): no spec-derived extras
        return None


def _search_domains(spec) -> dict | None:
    if spec is None:
        return None
    from optlab.grid import search_domains

    try:
        return search_domains(spec)
    except Exception:
        return None


def _time_to_target_section(
    records: list[dict], selected: set, spec, baseline: str, figure
) -> tuple[_Section, pd.DataFrame]:
    """Time to target (AlgoPerf) of each arm's selected configuration (the ``selected`` trial ids:
    evaluation seeds where present): per trial the first evaluation reaching the workload's target;
    censored trials counted; k of n; paired censoring-aware test; profile and score."""
    from . import time_to_target as T

    sec = _Section(
        "Time to target",
        "How soon each arm's selected configuration reaches the workload's target on the validation metric "
        "(AlgoPerf; docs/analysis.md 2b; evaluation seeds where present): per trial the first evaluation at or beyond the target, in optimizer **steps** (the primary unit), epochs, "
        "seconds and gradient-equivalents (`cost` = steps + 2 x HVPs). A trial that never reaches it is "
        "**censored** (`inf`): counted, never dropped. An arm reaches a workload when at least k of its n seeds "
        "do (default k = floor(n/2) + 1); its time there is the k-th smallest seed time. Paired test: Wilcoxon "
        "signed-rank on seed-paired step differences with unreached = +inf (ranks handle censoring exactly), Holm "
        "across rows. Profile: share of workloads within tau x the fastest arm's time; score = area under it on "
        f"[1, {T.TAU_MAX:g}] / {T.TAU_MAX - 1:g}.",
    )
    empty = pd.DataFrame(columns=list(T.TTT_COLUMNS))
    targets = spec.targets if spec is not None else {}
    if not targets:
        sec.warnings.append(
            'No targets: the spec has no `[targets]` table (e.g. `default = {from_arm = "sgd"}` or '
            '`"task/model" = {metric = "val_acc", value = 0.9}`), so nothing is timed.'
        )
        return sec, empty
    used = T.comparison_records(records, selected)
    resolved = T.resolve_targets(used, targets)
    if not resolved:
        sec.warnings.append("No workload of these results has a target it can use (a `from_arm` arm is missing).")
        return sec, empty
    rows = pd.DataFrame(T.trial_times(used, resolved))
    ks = {w: spec_.k for w, (spec_, _) in resolved.items()}
    summ = pd.DataFrame(T.arm_summary(rows.to_dict("records"), ks))
    hosts = {str((r.get("env") or {}).get("host")) for r in used}
    sec.text += " Seconds: " + (
        f"every trial ran on one machine ({next(iter(hosts))}), under whatever load it had: compare steps first."
        if len(hosts) == 1
        else f"trials ran on {len(hosts)} machines ({', '.join(sorted(hosts))}): seconds are not comparable."
    )
    if (summ["stage"] != "evaluation").any():
        sec.warnings.append(
            "Selection-biased: some arms have no evaluation-stage trials, so their times come from the tuning seeds "
            "that selected them: " + ", ".join(sorted(set(summ.loc[summ["stage"] != "evaluation", "arm"]))) + "."
        )
    targets_txt = "; ".join(
        f"{w}: {spec_.metric} {'>=' if spec_.mode == 'max' else '<='} {v:.4g}"
        + (f" (median final {spec_.metric} of `{spec_.from_arm}`)" if spec_.from_arm else "")
        for w, (spec_, v) in resolved.items()
    )
    sec.text += f" Targets: {targets_txt}."
    summ_show = summ.assign(
        reached=[
            f"{'yes' if r else 'no'} ({a}/{n}, k={k})"
            for r, a, n, k in zip(summ["reached"], summ["n_reached"], summ["n"], summ["k"])
        ]
    )
    sec.tables.append(
        (
            "Per arm: seeds reached, censored, and times (inf = not reached)",
            _table(
                summ_show,
                [
                    "workload",
                    "arm",
                    "stage",
                    "reached",
                    "n_censored",
                    "time_step",
                    "median_step",
                    "median_epoch",
                    "median_seconds",
                    "median_cost",
                ],
                rename={"time_step": "time (k-th seed, steps)", "median_step": "median steps"},
            ),
        )
    )
    paired = pd.DataFrame(T.paired_against(rows.to_dict("records"), baseline, "step"))
    if len(paired):
        sec.tables.append(
            (
                f"Against the baseline `{baseline}` (steps; n_only_a: only the arm reached, n_only_b: only the baseline)",
                _table(
                    paired,
                    [
                        "workload",
                        "arm",
                        "reference",
                        "n",
                        "n_both",
                        "n_only_a",
                        "n_only_b",
                        "n_neither",
                        "median_diff",
                        "p_value",
                        "p_holm",
                        "faster",
                    ],
                ),
            )
        )
    times = T.profile_from_summary(summ.to_dict("records"), "step")
    taus = [1 + (T.TAU_MAX - 1) * i / 300 for i in range(301)]
    rho = T.performance_profile(times, taus)
    prof = pd.DataFrame([{"arm": a, "tau": t, "rho": v} for a, vs in rho.items() for t, v in zip(taus, vs)])
    score = T.profile_score(times)
    sec.tables.append(
        (
            f"Performance profile score over {len(times)} workload(s) (area under rho on [1, {T.TAU_MAX:g}], steps)",
            _table(
                pd.DataFrame(
                    [
                        {"arm": a, "score": v, "workloads reached": int(summ.loc[summ["arm"] == a, "reached"].sum())}
                        for a, v in sorted(score.items(), key=lambda kv: -kv[1])
                    ]
                )
            ),
        )
    )
    figure(
        sec,
        P.time_to_target_plot(rows, prof),
        "time_to_target",
        "Share of an arm's seeds at the target by each step (censored seeds stay in the denominator; legend: "
        "reached/n), and the performance profile over time to target.",
    )
    return sec, rows[list(T.TTT_COLUMNS)]


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


def build_sections(
    results: str | Path,
    fig_dir: Path,
    baseline: str = "sgd",
    controls=C.DEFAULT_CONTROLS,
    margin: float = C.DEFAULT_MARGIN,
    alpha: float = 0.05,
    select: str = D.SELECT_METRIC,
    metric: str = D.REPORT_METRIC,
    exports: dict | None = None,
) -> tuple[str, list[_Section]]:
    """The report's sections; ``exports`` (a dict), when given, receives the tables written as CSV:
    ``verdicts``, ``selection`` and ``time_to_target`` (DataFrames)."""
    results = Path(results)
    exports = {} if exports is None else exports
    store = Store(results)
    if not store.trials.is_dir():
        next(store.iter_results(), None)  # raises the "does not exist" / "not a results directory" error
    good, invalid = store.scan()  # files that do not validate are listed, never read (optlab.store.validate_record)
    records = list(good.values())
    if not records:
        raise StoreError(f"{results}: no completed trials to report on (trials/ is empty)")
    epochs, trials = D.load(records)
    axes = D.hparam_columns(trials)
    spec = _spec_of(results)
    domains = _search_domains(spec)
    sections: list[_Section] = []
    fig_dir.mkdir(parents=True, exist_ok=True)
    sel_lab = P.metric_label(select)

    def figure(sec: _Section, fig, name: str, caption: str) -> None:
        png, svg = P.save(fig, fig_dir / name)
        plt.close(fig)
        sec.figures.append((caption, str(png), str(svg)))

    # --- 1. the verdict
    sec, cmp = _verdict_section(trials, baseline, controls, margin, alpha, select, metric, domains)
    sections.append(sec)
    exports["verdicts"] = (
        cmp[[c for c in VERDICT_COLUMNS if c in cmp]] if len(cmp) else pd.DataFrame(columns=list(VERDICT_COLUMNS))
    )

    # --- 1b. time to target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.SelectionBiasWarning)
        chosen = D.selected_trials(trials, D.best_configs(trials, metric=select, report=metric))
    sec, ttt = _time_to_target_section(records, set(chosen["trial_id"]), spec, baseline, figure)
    exports["time_to_target"] = ttt
    sections.append(sec)

    # --- 2. budgets and the expected-maximum curve
    bud = C.budgets(trials)
    sec = _Section(
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
            _table(bud, ["task", "model", "arm", "optimizer", "configs", "extended", "seeds", "trials", "equal"]),
        )
    )
    if bud["extended"].any():
        sec.text += (
            " `extended`: configurations the grid extension (`[protocol] extend_edges`) added beyond an edge; "
            "they count in `configs` like any other configuration tried."
        )
    curve = C.expected_max_curve(trials, metric=select)
    if len(curve):
        rows = []
        for (t, m, o), g in curve.groupby(list(D.WITHIN), observed=True):
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
        sec.tables.append(("Expected best validation score", _table(pd.DataFrame(rows))))
        figure(
            sec,
            P.expected_max_plot(curve),
            "expected_max",
            f"Expected best {sel_lab} (tuning seeds) vs configurations tried; dotted line: equal budget.",
        )
    sections.append(sec)

    # --- overview / status and the selected configurations
    expected = D.expected_trials(results)
    done = set(trials["trial_id"])
    missing = [t for t in (expected or []) if t["trial_id"] not in done]
    live = store.live_claims()
    counts = trials["status"].astype(str).value_counts().to_dict()
    stages = trials["stage"].astype(str).value_counts().to_dict()
    total = len(expected) if expected is not None else len(trials)
    sec = _Section(
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.SelectionBiasWarning)
        best = D.best_configs(trials, metric=select, report=metric, domains=domains)
        seltab = D.selection_table(trials, metric=select, domains=domains)
    exports["selection"] = seltab[[c for c in ["task", "model", "arm", *SELECTION_CSV] if c in seltab]]
    if len(best):
        sec.tables.append(
            (
                f"Selected configuration per optimizer (on {sel_lab}, tuning seeds; test reported for it)",
                _table(
                    best,
                    ["task", "model", "arm", "optimizer"]
                    + axes
                    + [
                        "selected_on",
                        "mean",
                        "std",
                        "n",
                        "n_missing",
                        "n_diverged",
                        "eligible",
                        "n_configs",
                        "n_tied",
                        "at_edge",
                        "report_mean",
                        "report_std",
                    ],
                    rename={"mean": "val mean", "std": "val std", "report_mean": "test mean", "report_std": "test std"},
                ),
            )
        )
        sec.text += (
            " `val mean`: the selection score; `eligible`: every tuning seed finished ok (otherwise the "
            "best mean over finished seeds won); `n_tied`: configurations whose score tied with the winner "
            "(this replaces the old `tie` column: the first configuration label in sorted order wins, "
            "as in the grid runner); `at_edge`: a selected value is the smallest or largest tried on its axis "
            "(next table); `test mean`: reported, never selected on."
        )
    if len(seltab):
        sec.tables.append(
            (
                "Selection table: per tuned numeric axis, is the selected value on an edge of what was tried? "
                "(stability: share of 1000 bootstrap resamples of the tuning seeds selecting the same configuration)",
                _table(
                    seltab,
                    ["task", "model", "arm", "axis", "value", "tried", "at_edge", "side", "next_values", "stability"],
                    rename={"next_values": "next beyond the edge"},
                ),
            )
        )
        on_edge = seltab[seltab["at_edge"].astype(bool)]
        if len(on_edge):
            sec.warnings.append(
                "On an edge of the tuning grid: "
                + "; ".join(f"{r.task}/{r.model} {r.arm}: {r.edge_text}" for r in on_edge.itertuples())
                + "."
            )
    sections.append(sec)

    spec = results / "spec.toml"
    sec = _Section("Grid specification")
    sec.pre = spec.read_text() if spec.exists() else "(no spec.toml in the results directory)"
    sections.append(sec)

    env_rows = environment_rows(records)
    sec = _Section("Environment", environment_note(env_rows))
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
    sections.append(sec)

    # --- summary
    summ = D.summarize(trials, metric=metric)
    sec = _Section(
        "Summary over seeds",
        f"{P.metric_label(metric).capitalize()} per configuration and stage "
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
                _table(
                    summ,
                    ["task", "model", "arm", "stage"]
                    + axes
                    + ["mean", "std", "sem", "ci95", "n", "n_missing", "n_diverged", "n_failed"],
                ),
            )
        )
    sections.append(sec)

    # --- heatmaps and sensitivity
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.SelectionBiasWarning)
        if "lr" in axes and "weight_decay" in axes:
            sec = _Section("Learning rate x weight decay")
            figure(
                sec,
                P.heatmaps(trials, "lr", "weight_decay", metric=select),
                "heatmap_lr_wd",
                f"{sel_lab.capitalize()} (tuning seeds) over lr x weight decay, other axes at their best on it; "
                "one panel per optimizer, one colour scale; red: the configuration selected on it.",
            )
            sections.append(sec)
        sens_axes = [a for a in AXES_ORDER if a in axes] + [a for a in axes if a not in AXES_ORDER]
        if sens_axes:
            sec = _Section(
                "Sensitivity",
                f"Each axis with the other axes at their best on {sel_lab} (tuning "
                "seeds, seed-mean); band: 95 % CI. `test mean` is reported for the same configurations.",
            )
            for a in sens_axes:
                try:
                    s = D.sensitivity(trials, a, metric=select, report=metric)
                except (KeyError, ValueError):
                    continue
                if s.empty or s.groupby(list(D.WITHIN), observed=True)[a].nunique().max() < 2:  # no arm varies it
                    continue
                figure(
                    sec,
                    P.sensitivity_plot(trials, a, metric=select),
                    f"sensitivity_{a}",
                    f"Sensitivity to {a}: {sel_lab}, tuning seeds, selected on it.",
                )
                sec.tables.append(
                    (
                        f"{a}",
                        _table(
                            s,
                            ["task", "model", "arm", a, "selected_on", "mean", "ci95", "n", "report_mean"],
                            rename={"mean": "val mean", "report_mean": "test mean"},
                        ),
                    )
                )
            sections.append(sec)

        # --- comparison details
        sec = _Section(
            "Comparison details",
            "Every statistic behind the verdict table: paired t and Wilcoxon "
            "signed-rank p-values (unadjusted), Holm-adjusted p, TOST p, SD of the seed differences, "
            "the seeds paired and the configurations compared.",
        )
        if len(cmp):
            sec.tables.append(
                (
                    "",
                    _table(
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
        sections.append(sec)

        # --- curves, cost, profile
        stage_word = "evaluation seeds where present, else tuning seeds"
        sec = _Section(
            "Training curves", f"Each optimizer's configuration selected on {sel_lab}; curves over {stage_word}."
        )
        figure(
            sec,
            P.training_curves(epochs, trials, x="epoch", metric=select),
            "curves_epoch",
            f"Against epochs (selected on {sel_lab}; {stage_word}).",
        )
        figure(
            sec,
            P.training_curves(epochs, trials, x="wall_time", metric=select),
            "curves_time",
            f"Against wall-clock time (selected on {sel_lab}; {stage_word}).",
        )
        sections.append(sec)

        sec = _Section(
            "Cost",
            "Mean seconds per epoch by phase, as recorded by the runner (trials that did not fail): "
            "forward-backward, curvature and update inside the optimizer step, `time_other` the rest of the "
            "epoch (evaluation, batching), so the phases add up to `time_epoch`, the bar's total. "
            "`hvp_per_epoch`: Hessian-vector products per epoch.",
        )
        figure(sec, P.cost_bars(trials), "cost", "Seconds per epoch by phase; label: total and HVPs per epoch.")
        sec.tables.append(("", _table(D.cost_per_epoch(trials))))
        sections.append(sec)

        if trials.groupby(["task", "model"], observed=True).ngroups > 1:
            sec = _Section(
                "Performance profile",
                f"Dolan-Moré profile of {P.metric_label(metric)} error across task/model "
                f"problems, each optimizer at its configuration selected on {sel_lab} ({stage_word}).",
            )
            figure(sec, P.profile_plot(D.performance_profile(trials, metric=select, report=metric)), "profile", "")
            sections.append(sec)

    # --- problems
    bad = trials[trials["status"] != "ok"]
    sec = _Section("Missing, failed and diverged trials")
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
            "config": D.config_description(m.get("arm") or m["optimizer"], m["hparams"], m),
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
        for exc in invalid
    ]
    if rows:
        sec.tables.append(("", pd.DataFrame(rows)))
    else:
        sec.text = "None: every trial of the grid finished ok."
    sections.append(sec)

    title = f"optlab report: {results.name}"
    return title, sections


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #4C72B0;padding-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f2f5fa} td{white-space:nowrap} .tbl{overflow-x:auto;max-width:100%} td:first-child,th:first-child{text-align:left} tr:nth-child(even){background:#fafafa}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:12px} figure{margin:1em 0} img{max-width:100%}
figcaption{color:#555;font-size:13px} nav a{margin-right:1em} .meta{color:#666;font-size:13px}
.warn{background:#fff3cd;border-left:5px solid #d9534f;padding:.5em 1em}
"""


def _anchor(t: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in t.lower())


def write_report(
    results: str | Path, output: str | Path | None = None, title: str | None = None, **options
) -> list[Path]:
    """Write ``report.html`` (self-contained), ``report.md`` (+ ``figures/``) and ``verdicts.csv``,
    ``selection.csv``, ``time_to_target.csv`` (:data:`CSV_FILES`; columns: docs/analysis.md, "CSV
    files") into ``output``; returns the HTML and Markdown paths.

    ``options`` go to :func:`build_sections`: ``baseline``, ``controls``, ``margin``, ``alpha``,
    ``select`` (the validation metric selection reads), ``metric`` (the test metric compared)."""
    results = Path(results)
    out = Path(output) if output else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    exports: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto_title, sections = build_sections(results, out / "figures", exports=exports, **options)
    title = title or auto_title
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    h = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='meta'>generated {stamp} from <code>{html.escape(str(results))}</code></p><nav>",
    ]
    h += [f"<a href='#{_anchor(s.title)}'>{html.escape(s.title)}</a>" for s in sections]
    h.append("</nav>")
    md = [f"# {title}", "", f"_generated {stamp} from `{results}`_", ""]
    for s in sections:
        h.append(f"<h2 id='{_anchor(s.title)}'>{html.escape(s.title)}</h2>")
        md += [f"## {s.title}", ""]
        for w in s.warnings:
            h.append(f"<p class='warn'><b>WARNING</b>: {html.escape(w).replace('`', '')}</p>")
            md += [f"> **WARNING**: {_md_escape(w)}", ""]
        if s.text:
            h.append(f"<p>{_bold(html.escape(s.text)).replace('`', '')}</p>")
            md += [_md_escape(s.text), ""]
        if s.pre is not None:
            h.append(f"<pre>{html.escape(s.pre)}</pre>")
            fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", s.pre)), default=0))
            md += [f"{fence}toml", s.pre.rstrip(), fence, ""]
        # figures first: the picture reads at a glance, the table behind it gives the numbers
        for cap, png, _svg in s.figures:
            b64 = base64.b64encode(Path(png).read_bytes()).decode()
            h.append(
                f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
            md += [f"![{cap}](figures/{Path(png).name})", f"_{cap}_ ([SVG](figures/{Path(_svg).name}))", ""]
        for cap, t in s.tables:
            if cap:
                h.append(f"<h3>{html.escape(cap)}</h3>")
                md += [f"**{_md_escape(cap)}**", ""]
            h.append(f"<div class='tbl'>{t.to_html(index=False, escape=True, border=0)}</div>")
            md += [_md_table(t), ""]
    h.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write(html_path, "\n".join(h))
    atomic_write(md_path, "\n".join(md))
    for name in CSV_FILES:
        atomic_write(out / f"{name}.csv", exports.get(name, pd.DataFrame()).to_csv(index=False))
    return [html_path, md_path]


def _md_escape(text: str) -> str:
    """Markdown text with raw HTML neutralised (an error message may contain ``<script>``)."""
    return html.escape(str(text), quote=False)


def _bold(text: str) -> str:
    """``**word**`` -> ``<b>word</b>`` for the HTML version of a section text."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(empty)_"
    cols = [_md_escape(c) for c in df.columns]
    esc = lambda v: _md_escape(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
