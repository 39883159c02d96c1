"""Seed statistics and validation-based selection over the tidy ``trials`` frame of :func:`load`.

**Selection** (:func:`best_configs`, :func:`sensitivity`) reads a validation metric of
tuning-stage trials only, through the one selection rule the grid runner uses too
(:func:`optlab.grid.protocol.select`); test metrics are reported for what validation selected.
:func:`summarize` describes every configuration over seeds and selects nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from optlab.grid.protocol import Observation, Selection, select, selection_rows, stability
from optlab.optim.hparams import unknown_name

from .frames import REPORT_METRIC, RUN_COLS, SELECT_METRIC, WITHIN, MetricError, SelectionBiasWarning, hparam_columns

__all__ = [
    "summarize",
    "direction",
    "selection_metric",
    "select_cells",
    "best_configs",
    "selection_table",
    "cell_mask",
    "selected_trials",
    "sensitivity",
    "performance_profile",
]


def _ci95(std: float, n: int) -> float:
    if n < 2 or not math.isfinite(std):
        return np.nan
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def summarize(
    trials: pd.DataFrame,
    by: Sequence[str] | None = None,
    metric: str = REPORT_METRIC,
    expected_seeds: int | None = None,
) -> pd.DataFrame:
    """Mean, std, SEM and 95 % CI (Student t) over seeds per cell of ``by``.

    ``by`` defaults to task, model, arm, optimizer, stage and the grid axes (tuning
    and evaluation seeds of one configuration are never pooled). ``n`` counts
    the seeds that finished ``ok`` and enter the mean; ``n_diverged``,
    ``n_failed`` and ``n_missing`` (against ``expected_seeds``, default: the most
    seeds any cell of the same stage has) make incomplete cells visible; ``complete`` is False for them.
    """
    _check_metric(trials, metric)
    by = list(by) if by is not None else [*WITHIN, "optimizer", "stage"] + hparam_columns(trials)
    for c in by:
        if c not in trials:
            raise MetricError("by=: " + unknown_name("column", c, list(trials.columns)))
    rows = []
    for key, g in trials.groupby(by, observed=True, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(by, key)),
                **_seed_stats(g, metric),
                "n_seeds": g["seed"].nunique(),
                "n_diverged": int(g["diverged"].sum()),
                "n_failed": int(g["failed"].sum()),
                "seeds": ",".join(map(str, sorted(g["seed"].unique()))),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    if expected_seeds:
        exp = expected_seeds
    elif "stage" in by:  # tuning and evaluation stages have their own seed lists
        exp = out.groupby("stage", observed=True)["n_seeds"].transform("max")
    else:
        exp = int(out["n_seeds"].max())
    out["n_missing"] = (exp - out["n_seeds"]).clip(lower=0)
    out["complete"] = out["n"] == exp
    out.attrs["metric"] = metric
    return out


def _seed_stats(g: pd.DataFrame, metric: str, prefix: str = "") -> dict:
    """Mean, std, SEM, Student-t 95 % CI half-width and n of ``metric`` over ``g``'s ok trials."""
    ok = g.loc[g["status"] == "ok", metric].dropna().astype(float)
    n, std = len(ok), float(ok.std(ddof=1)) if len(ok) > 1 else np.nan
    return {
        f"{prefix}mean": float(ok.mean()) if n else np.nan,
        f"{prefix}std": std,
        f"{prefix}sem": std / math.sqrt(n) if n > 1 else np.nan,
        f"{prefix}ci95": _ci95(std, n),
        f"{prefix}n": n,
    }


def _check_metric(trials: pd.DataFrame, metric: str) -> None:
    if metric not in trials:
        avail = [c for c in trials.columns if c.startswith(("final_", "best_", "time_", "wall", "test_acc_at"))]
        raise MetricError(unknown_name("metric", metric, avail, valid_label="Available"))


def direction(metric: str, mode: str | None = None) -> str:
    """``mode`` checked, or inferred from the metric's name: ``"min"`` for losses, else ``"max"``."""
    if mode is None:
        return "min" if "loss" in metric else "max"
    if mode not in ("max", "min"):
        raise ValueError(f"invalid mode={mode!r}; expected 'max', 'min' or None (from the metric's name)")
    return mode


def selection_metric(cell: pd.DataFrame, metric: str) -> str:
    """The metric a selection within ``cell`` reads: ``metric``, or -- only for legacy
    results that have no validation metric -- its test counterpart (biased)."""
    ok = cell[cell["status"] == "ok"]
    test = metric.replace("val_", "test_", 1) if "val_" in metric else None
    if test and test in cell and ok[metric].isna().all() and ok[test].notna().any():
        return test
    return metric


def _observations(
    trials: pd.DataFrame, metric: str, within: Sequence[str], stage: str | None
) -> tuple[list[Observation], dict[tuple, str], dict[tuple, pd.DataFrame]]:
    """The ``stage`` trials as :func:`optlab.grid.protocol.select` sees them, the metric each cell reads
    (:func:`selection_metric`) and the cells themselves."""
    df = trials[trials["stage"] == stage] if stage else trials
    axes = [a for a in hparam_columns(trials) if a not in within]
    obs, used, cells = [], {}, {}
    for key, cell in df.groupby(list(within), observed=True, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        u = used[key] = selection_metric(cell, metric)
        cells[key] = cell
        for r in cell.to_dict("records"):
            v = r[u]
            ok = r["status"] == "ok" and isinstance(v, (int, float)) and math.isfinite(v)
            hp = {a: r[a] for a in axes if not (isinstance(r[a], float) and math.isnan(r[a]))}
            obs.append(Observation(key, r["config_key"], int(r["seed"]), float(v) if ok else None, hp))
    return obs, used, cells


def _domains_by_key(domains: dict | None, keys, within: Sequence[str]) -> dict | None:
    """Per-arm search domains (:func:`optlab.grid.search_domains`) -> per selection cell."""
    if not domains or "arm" not in within:
        return None
    i = list(within).index("arm")
    return {k: domains[str(k[i])] for k in keys if str(k[i]) in domains}


def select_cells(
    trials: pd.DataFrame,
    metric: str = SELECT_METRIC,
    mode: str | None = None,
    within: Sequence[str] = WITHIN,
    stage: str | None = "tuning",
    tol: float = 0.0,
    domains: dict | None = None,
) -> tuple[dict[tuple, Selection], list[Observation], dict[tuple, str], dict[tuple, pd.DataFrame]]:
    """``(selections, observations, metric read per cell, cells)``: every ``within`` cell's selection by
    the one rule (:func:`optlab.grid.protocol.select`, the grid runner's too); see :func:`best_configs`."""
    mode = direction(metric, mode)
    _check_metric(trials, metric)
    obs, used, cells = _observations(trials, metric, within, stage)
    sel = select(obs, mode, tol, _domains_by_key(domains, cells, within))
    return sel, obs, used, cells


def best_configs(
    trials: pd.DataFrame,
    metric: str = SELECT_METRIC,
    mode: str | None = None,
    within: Sequence[str] = WITHIN,
    report: str = REPORT_METRIC,
    stage: str | None = "tuning",
    tol: float = 0.0,
    domains: dict | None = None,
) -> pd.DataFrame:
    """The configuration selected in each ``within`` cell (task, model, arm), by the one selection rule
    (:func:`optlab.grid.protocol.select`) -- the function the grid runner's evaluation stage selects with.

    Among the ``stage`` trials of a cell, a configuration is *eligible* when all of its seeds
    finished ``ok`` (with a finite ``metric``) and it has as many seeds as the cell's most complete
    configuration. The eligible one with the best seed-mean of ``metric`` wins (``mode``: "max",
    "min", or None: min for losses); if none is eligible, the best mean over ok seeds; ties (within
    ``tol``) go to the smallest :func:`optlab.grid.config_key` (``config_key``; ``n_tied`` counts
    the configurations that tied). ``at_edge``/``edges``: the selected value of a tuned numeric
    axis is the smallest or largest tried (``domains``: per arm, the ranges of sampled axes,
    :func:`optlab.grid.search_domains`); the full table is :func:`selection_table`.

    ``metric`` is a validation metric by default; ``report`` (test) is only reported for the winner
    (``report_mean``/``report_std``/``report_ci95``). Cells of legacy results without validation
    metrics are selected on the test counterpart with a :class:`SelectionBiasWarning`
    (``selection_biased=True``, ``selected_on`` names the metric read).
    """
    _check_metric(trials, report)
    sel, _, used, cells = select_cells(trials, metric, mode, within, stage, tol, domains)
    axes = hparam_columns(trials)
    rows, biased = [], []
    for key, s in sel.items():
        u, cell = used[key], cells[key]
        if u != metric:
            biased.append("/".join(map(str, key)))
        if s.config is None:
            continue
        g = cell[cell["config_key"] == s.config].sort_values("seed")
        first = g.iloc[0]
        st = _seed_stats(g, u)
        st["mean"] = s.score  # the rule's score: summed in seed order, as the runner does
        keep = [c for c in axes + RUN_COLS if c in cell and c not in within]
        rows.append(
            {
                **dict(zip(within, key)),
                **({"optimizer": first["optimizer"]} if "optimizer" not in within else {}),
                **{c: first[c] for c in keep},
                "config": first["config"],
                "config_key": s.config,
                "stage": stage or "any",
                **st,
                "n_seeds": g["seed"].nunique(),
                "n_diverged": int(g["diverged"].sum()),
                "n_failed": int(g["failed"].sum()),
                "n_missing": int(s.full_seeds - g["seed"].nunique()),
                "complete": st["n"] == s.full_seeds,
                "eligible": s.eligible,
                "n_configs": s.n_configs,
                "n_tied": s.n_tied,
                "at_edge": s.at_edge,
                "edges": s.edge_text(),
                "selected_on": u,
                "selection_biased": u != metric,
                "report_metric": report,
                **_seed_stats(g, report, prefix="report_"),
            }
        )
    if biased:
        warnings.warn(
            SelectionBiasWarning(
                f"no validation metric {metric!r} in {', '.join(biased[:4])}"
                f"{f' and {len(biased) - 4} more' if len(biased) > 4 else ''} (legacy results): selected on "
                f"{metric.replace('val_', 'test_', 1)!r} instead -- selected on test: biased"
            ),
            stacklevel=2,
        )
    out = pd.DataFrame(rows)
    out.attrs.update(metric=metric, report=report, stage=stage)
    return out


def selection_table(
    trials: pd.DataFrame,
    metric: str = SELECT_METRIC,
    mode: str | None = None,
    within: Sequence[str] = WITHIN,
    stage: str | None = "tuning",
    tol: float = 0.0,
    domains: dict | None = None,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """The selection table: one row per selected configuration and tuned numeric axis
    (:func:`optlab.grid.protocol.selection_rows`: ``config, score, eligible, n_configs, n_tied, n_ok,
    full_seeds, tuning_seeds, axis, value, tried, at_edge, side, kind, progression, next_values,
    edge_text``) and ``stability``: the share of ``n_boot`` bootstrap resamples of the tuning seeds
    in which the rule picks the same configuration (:func:`optlab.grid.protocol.stability`; 0 = off)."""
    mode = direction(metric, mode)
    sel, obs, _, cells = select_cells(trials, metric, mode, within, stage, tol, domains)
    rows = selection_rows(sel, list(within))
    if n_boot:
        stab = stability(obs, mode, tol, n_boot=n_boot)
        for r in rows:
            r["stability"] = stab.get(tuple(r[c] for c in within), math.nan)
    out = pd.DataFrame(rows)
    if len(out):
        label = {k: cells[k].loc[cells[k]["config_key"] == s.config, "config"] for k, s in sel.items() if s.config}
        out["config"] = [
            label[k].iloc[0] if k in label and len(label[k]) else None
            for k in (tuple(r[c] for c in within) for r in rows)
        ]
    return out


def cell_mask(trials: pd.DataFrame, row: pd.Series, cols: Sequence[str]) -> pd.Series:
    """Rows of ``trials`` whose ``cols`` equal ``row``'s (NaN matches NaN: an axis that does not apply)."""
    mask = pd.Series(True, index=trials.index)
    for c in cols:
        v = row[c]
        mask &= trials[c].isna() if (isinstance(v, float) and math.isnan(v)) else (trials[c] == v)
    return mask


def selected_trials(trials: pd.DataFrame, selected: pd.DataFrame, within: Sequence[str] = WITHIN) -> pd.DataFrame:
    """The trials that stand for each selected configuration in comparisons and curves.

    Per ``within`` cell: its evaluation-stage trials (fresh seeds) if it has
    any, else the tuning trials of the selected ``config`` (whose seeds also
    chose it: selection-biased). Column ``from_stage`` says which. The runner
    selected the evaluated configuration with the same function as
    :func:`best_configs`, so the two agree on the same tuning results.
    """
    parts = []
    for _, row in selected.iterrows():
        cell = trials[cell_mask(trials, row, list(within))]
        ev = cell[cell["stage"] == "evaluation"]
        if len(ev):
            if row["config_key"] in set(ev["config_key"]):
                ev = ev[ev["config_key"] == row["config_key"]]
            parts.append(ev.assign(from_stage="evaluation"))
        else:
            parts.append(
                cell[(cell["stage"] == "tuning") & (cell["config_key"] == row["config_key"])].assign(
                    from_stage="tuning"
                )
            )
    return pd.concat(parts) if parts else trials.iloc[0:0].assign(from_stage=[])


def sensitivity(
    trials: pd.DataFrame,
    axis: str,
    metric: str = SELECT_METRIC,
    mode: str | None = None,
    aggregate: str = "best",
    report: str = REPORT_METRIC,
) -> pd.DataFrame:
    """``metric`` (validation, tuning stage) as a function of ``axis`` per task/model/optimizer.

    ``aggregate="best"``: at each axis value, the configuration that
    :func:`best_configs` selects among those with that value ("other axes at
    their best" -- on validation); ``"mean"``: averaged over the other axes'
    settings per seed. ``report_*`` columns give ``report`` (test) for the same trials.
    """
    if axis not in trials:
        raise MetricError(unknown_name("axis", axis, hparam_columns(trials), valid_label="Grid axes"))
    if aggregate not in ("best", "mean"):
        raise ValueError(f"invalid aggregate={aggregate!r}; expected 'best' or 'mean'")
    df = trials[trials[axis].notna() & (trials["stage"] == "tuning")]
    if aggregate == "best":
        return best_configs(df, metric=metric, mode=mode, within=[*WITHIN, axis], report=report)
    _check_metric(df, metric)
    rows = []
    keys = [*WITHIN, "optimizer", axis]
    for key, g in df.groupby(keys, observed=True):
        used = selection_metric(g, metric)
        ok = g[g["status"] == "ok"]
        per_seed = ok.groupby("seed")[list(dict.fromkeys([used, report]))].mean().assign(status="ok")
        rows.append(
            {
                **dict(zip(keys, key)),
                **_seed_stats(per_seed, used),
                **_seed_stats(per_seed, report, prefix="report_"),
                "selected_on": used,
            }
        )
    return pd.DataFrame(rows)


def performance_profile(
    trials: pd.DataFrame,
    metric: str = SELECT_METRIC,
    mode: str | None = None,
    taus: Sequence[float] | None = None,
    report: str = REPORT_METRIC,
) -> pd.DataFrame:
    """Dolan-Moré performance profiles over problems (task/model pairs).

    Each optimizer's configuration is selected on ``metric`` (validation);
    its cost per problem is the seed-mean of ``report`` (test) over the
    trials that stand for it (:func:`selected_trials`: evaluation seeds when
    there are any): ``1 - report`` for accuracies, the value for losses.
    ``rho(tau)`` is the fraction of problems where the arm's cost is within
    ``tau`` times the best arm's.
    """
    best = best_configs(trials, metric=metric, mode=mode, report=report)
    sel = selected_trials(trials, best)
    means = sel[sel["status"] == "ok"].groupby([*WITHIN, "optimizer"], observed=True)[report].mean().reset_index()
    means["cost"] = (1 - means[report]) if direction(report) == "max" else means[report]
    means["problem"] = means["task"].astype(str) + "/" + means["model"].astype(str)
    ratios = []
    for _, g in means.groupby("problem"):
        m = g["cost"].min()
        for _, r in g.iterrows():
            ratios.append(
                {
                    "problem": r["problem"],
                    "arm": r["arm"],
                    "optimizer": r["optimizer"],
                    "ratio": r["cost"] / m if m > 0 else (1.0 if r["cost"] == m else np.inf),
                }
            )
    rdf = pd.DataFrame(ratios)
    n_problems = rdf["problem"].nunique()
    if taus is None:
        top = max(2.0, rdf["ratio"].replace(np.inf, np.nan).max() * 1.05)
        taus = sorted(set([1.0] + list(np.linspace(1, top, 50))))
    rows = [
        {"arm": a, "optimizer": g["optimizer"].iloc[0], "tau": t, "rho": float((g["ratio"] <= t).sum() / n_problems)}
        for a, g in rdf.groupby("arm", observed=True)
        for t in taus
    ]
    return pd.DataFrame(rows)
