"""Optimizer comparisons under the two-stage protocol: budgets, expected maximum, verdicts.

Protocol (docs/analysis.md): each optimizer's configuration is selected on
validation over its tuning seeds (:func:`optlab.analysis.data.best_configs`);
the selected configurations run again on fresh evaluation seeds; comparisons
pair those seeds and read the test metric. Without evaluation-stage trials the
comparison falls back to the tuning seeds that did the selecting and says it is
selection-biased.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import pandas as pd

from . import stats
from .data import REPORT_METRIC, SELECT_METRIC, WITHIN, best_configs, direction, selected_trials, selection_metric

__all__ = [
    "budgets",
    "expected_max_curve",
    "comparisons",
    "paired_comparison",
    "BudgetWarning",
    "DEFAULT_MARGIN",
    "DEFAULT_CONTROLS",
]

#: equivalence margin for accuracies: 0.5 percentage points (docs/analysis.md says why)
DEFAULT_MARGIN = 0.005
DEFAULT_CONTROLS = ("sgd-scaled", "sgd-frozen")


class BudgetWarning(UserWarning):
    """Optimizers compared after tuning over different numbers of configurations."""


def budgets(trials: pd.DataFrame) -> pd.DataFrame:
    """Tuning budget per task/model/arm (an ``[[optimizer]]`` block: its ``label``, default the
    optimizer's name): ``configs`` tried (distinct configurations with a tuning-stage trial, whatever
    their status; configurations the grid extension added count like any other), ``extended`` (of
    those, added by ``[protocol] extend_edges``), ``trials`` and ``seeds``; ``equal`` is False where
    arms of the same task/model had different budgets."""
    tun = trials[trials["stage"] == "tuning"]
    if "extension_round" not in tun:
        tun = tun.assign(extension_round=float("nan"))
    out = (
        tun.groupby(list(WITHIN), observed=True)
        .agg(
            optimizer=("optimizer", "first"),
            configs=("config_key", "nunique"),
            trials=("trial_id", "size"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    ext = tun[tun["extension_round"].notna()].groupby(list(WITHIN), observed=True)["config_key"].nunique()
    out["extended"] = [int(ext.get(tuple(k), 0)) for k in out[list(WITHIN)].itertuples(index=False)]
    out["equal"] = out.groupby(["task", "model"], observed=True)["configs"].transform("nunique") == 1
    return out


def expected_max_curve(trials: pd.DataFrame, metric: str = SELECT_METRIC) -> pd.DataFrame:
    """Expected best seed-mean ``metric`` (validation) after ``n`` configurations drawn at random from
    the ones each optimizer tried (:func:`stats.expected_max`, Dodge et al. 2019), n = 1..budget.

    Scores are configuration seed-means over ok tuning seeds; a configuration with no
    ok seed has no score and is left out (``scored`` < ``configs`` then). ``budget_matched``
    marks n = the smallest budget of the task/model: the column to compare optimizers at.
    """
    tun = trials[trials["stage"] == "tuning"]
    rows = []
    for key, cell in tun.groupby(list(WITHIN), observed=True, sort=True):
        used = selection_metric(cell, metric)
        scores = cell[cell["status"] == "ok"].groupby("config_key")[used].mean().dropna()
        if scores.empty:
            continue
        ns = list(range(1, len(scores) + 1))
        curve = stats.expected_max(scores.to_numpy(), ns)
        rows += [
            {
                **dict(zip(WITHIN, key)),
                "n": int(n),
                "expected_max": float(e),
                "configs": cell["config_key"].nunique(),
                "scored": len(scores),
                "selected_on": used,
            }
            for n, e in zip(ns, curve)
        ]
    out = pd.DataFrame(rows)
    if len(out):
        smallest = out.groupby(["task", "model"], observed=True)["scored"].transform("min")
        out["budget_matched"] = out["n"] == smallest
    return out


def _pairs(optimizers: Sequence[str], baseline: str, controls: Sequence[str]):
    """(optimizer, reference, kind): every optimizer vs the baseline and each control; controls vs the baseline."""
    for o in optimizers:
        for ref in [baseline, *controls]:
            if o == ref or o == baseline or (o in controls and ref != baseline):
                continue
            yield o, ref, "baseline" if ref == baseline else "control"


def comparisons(
    trials: pd.DataFrame,
    baseline: str = "sgd",
    controls: Sequence[str] = DEFAULT_CONTROLS,
    metric: str = REPORT_METRIC,
    select: str = SELECT_METRIC,
    margin: float = DEFAULT_MARGIN,
    alpha: float = 0.05,
    mode: str | None = None,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    ci_method: str = "BCa",
    seed: int = 0,
    domains: dict | None = None,
) -> pd.DataFrame:
    """Each optimizer arm against the baseline and the controls, per task/model: one row a comparison.

    ``baseline`` and ``controls`` name arms (an unlabelled ``[[optimizer]]`` block's arm is the
    optimizer's name); column ``arm`` is the compared arm, ``optimizer`` its preset.

    Configurations are selected on ``select`` (validation, tuning seeds); the
    difference ``optimizer - reference`` of ``metric`` (test) is paired by seed
    over the trials :func:`data.selected_trials` picks (evaluation seeds when both
    sides have them; ``stage`` says which, ``selection_biased`` is True otherwise).
    Columns: ``n_pairs``, ``mean_diff``, bootstrap ``ci_low``/``ci_high``
    (``ci_method``, ``n_resamples``, fixed ``seed``), ``p_value`` (paired t),
    ``p_wilcoxon``, ``p_holm`` (Holm over all rows), ``p_tost`` / ``p_tost_holm``
    (equivalence within +-``margin``), ``mde`` (alpha, power 0.8), budgets and
    ``verdict`` (:func:`stats.verdict` on the Holm-adjusted p-values; "better" is higher for
    accuracies, lower for losses). ``mode`` is the selection's direction (None: from ``select``'s name).
    Controls absent from the results are skipped; a missing baseline is an error.
    Unequal tuning budgets raise a :class:`BudgetWarning`. ``arm_at_edge``/``reference_at_edge``
    say whether a side's selected value of a tuned axis is the smallest or largest tried, and
    ``edges`` says which in words (``domains``: per arm, the ranges of sampled axes).
    """
    present = sorted(trials["arm"].astype(str).unique())
    if baseline not in present:
        raise KeyError(f"baseline {baseline!r} not in results; optimizer arms: {', '.join(present)}")
    if not margin > 0:
        raise ValueError(f"invalid margin={margin!r}; expected a positive number (0.005 = 0.5 pp)")
    controls = [c for c in controls if c in present]
    best = best_configs(trials, metric=select, mode=mode, report=metric, domains=domains)
    sel = selected_trials(trials, best)
    bud = budgets(trials).set_index(list(WITHIN))["configs"]
    test = {"margin": margin, "alpha": alpha, "n_resamples": n_resamples, "ci_method": ci_method, "seed": seed}
    rows = []
    for (task, model), g in best.groupby(["task", "model"], observed=True, sort=True):
        here = [str(a) for a in g["arm"]]
        cell = sel[(sel["task"] == task) & (sel["model"] == model)]
        for arm, ref, kind in _pairs(here, baseline, controls):
            if ref in here:
                rows.append(_comparison_row(g, cell, bud, arm, ref, kind, metric, test))
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = stats.holm(out["p_value"].to_numpy())
    out["p_tost_holm"] = stats.holm(out["p_tost"].to_numpy())
    out["verdict"] = _verdicts(out, alpha, higher_is_better=direction(metric) == "max")
    unequal = out[~out["budget_equal"]]
    if len(unequal):
        warnings.warn(
            BudgetWarning(
                "unequal tuning budgets (configurations tried): "
                + "; ".join(
                    f"{r.task}/{r.model} {r.arm} {r.budget} vs {r.reference} {r.reference_budget}"
                    for r in unequal.itertuples()
                )
                + " -- the larger search has more chances to win by luck; "
                "compare at equal budget with expected_max_curve"
            ),
            stacklevel=2,
        )
    out.attrs.update(
        margin=margin, alpha=alpha, baseline=baseline, controls=list(controls), metric=metric, select=select
    )
    return out


def _verdicts(out: pd.DataFrame, alpha: float, higher_is_better: bool) -> list[str]:
    """:func:`stats.verdict` of every comparison row, on its Holm-adjusted p-values."""
    return [
        stats.verdict(
            r.mean_diff,
            (r.ci_low, r.ci_high),
            r.p_holm,
            r.p_tost_holm,
            alpha=alpha,
            higher_is_better=higher_is_better,
        )
        for r in out.itertuples()
    ]


def _comparison_row(
    best: pd.DataFrame, cell: pd.DataFrame, bud: pd.Series, arm: str, ref: str, kind: str, metric: str, test: dict
) -> dict:
    """One comparison of a task/model (``best``: its selected configurations, ``cell``: the trials that
    stand for them): ``metric`` paired by seed over the seeds both sides finished (:func:`stats.paired`
    with the options ``test``), the stage read, budgets, configurations and edges."""
    task, model = best["task"].iloc[0], best["model"].iloc[0]
    side = {a: cell[cell["arm"] == a] for a in (arm, ref)}
    per_seed = {
        a: s[s["status"] == "ok"].dropna(subset=[metric]).groupby("seed")[metric].mean() for a, s in side.items()
    }
    common = sorted(set(per_seed[arm].index) & set(per_seed[ref].index))
    x, y = per_seed[arm].loc[common].to_numpy(), per_seed[ref].loc[common].to_numpy()
    r = stats.paired(x, y, **test)
    evaluated = all(set(s["from_stage"]) == {"evaluation"} for s in side.values())
    pick = {a: best[best["arm"] == a].iloc[0] for a in (arm, ref)}
    b_arm, b_ref = int(bud.get((task, model, arm), 0)), int(bud.get((task, model, ref), 0))
    return {
        "task": task,
        "model": model,
        "arm": arm,
        "optimizer": pick[arm]["optimizer"],
        "reference": ref,
        "kind": kind,
        "metric": metric,
        "stage": "evaluation" if evaluated else "tuning",
        "selection_biased": not evaluated or any(bool(p["selection_biased"]) for p in pick.values()),
        "selected_on": ", ".join(sorted({p["selected_on"] for p in pick.values()})),
        "n_pairs": r.n,
        "seeds": ",".join(map(str, common)),
        "n_unpaired": len(set(side[arm]["seed"]) | set(side[ref]["seed"])) - len(common),
        "mean": float(x.mean()) if common else math.nan,
        "reference_mean": float(y.mean()) if common else math.nan,
        "mean_diff": r.mean_diff,
        "sd_diff": r.sd_diff,
        "ci_low": r.ci_low,
        "ci_high": r.ci_high,
        "ci_method": f"{r.ci_method} bootstrap, {test['n_resamples']} resamples",
        "p_value": r.p_t,
        "p_wilcoxon": r.p_wilcoxon,
        "p_tost": r.p_tost,
        "margin": test["margin"],
        "mde": r.mde,
        "budget": b_arm,
        "reference_budget": b_ref,
        "budget_equal": b_arm == b_ref,
        "config": pick[arm]["config"],
        "reference_config": pick[ref]["config"],
        "arm_at_edge": bool(pick[arm]["at_edge"]),
        "reference_at_edge": bool(pick[ref]["at_edge"]),
        "edges": "; ".join(f"{a}: {pick[a]['edges']}" for a in (arm, ref) if pick[a]["at_edge"]),
    }


def paired_comparison(
    trials: pd.DataFrame,
    baseline: str = "sgd",
    metric: str = REPORT_METRIC,
    mode: str | None = None,
    select: str = SELECT_METRIC,
    **kw,
) -> pd.DataFrame:
    """Every optimizer against ``baseline`` only (:func:`comparisons` without controls)."""
    return comparisons(trials, baseline=baseline, controls=(), metric=metric, select=select, mode=mode, **kw)
