"""Results -> tidy pandas frames, seed statistics, best configurations, comparisons.

``load(results)`` returns ``(epochs, trials)``:

* ``epochs``: one row per trial x epoch -- identity columns (``trial_id, task,
  model, optimizer, seed, status, config``), one column per hyperparameter
  (flattened names; a preset's default filled in where the trial left it
  unset, NaN where it does not apply), run settings, and every metric;
* ``trials``: one row per trial -- final and best metrics, totals (wall time,
  HVPs, time split), ``diverged``/``failed`` flags and the error text.

``config`` identifies a configuration across seeds (everything but the seed).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from optlab.store import Store, StoreError

__all__ = ["load", "summarize", "best_configs", "sensitivity", "paired_comparison", "performance_profile",
           "hparam_columns", "expected_trials", "MetricError"]

ID_COLS = ["trial_id", "task", "model", "optimizer", "seed", "status", "config"]
RUN_COLS = ["epochs", "batch_size", "lr_schedule", "warmup_epochs", "decouple", "engine"]
METRICS = ["train_loss", "train_acc", "test_loss", "test_acc", "lr", "time_forward_backward", "time_curvature",
           "time_update", "time_epoch", "wall_time", "hvp_count", "vjp_count"]


class MetricError(KeyError):
    pass


def _preset_defaults(name: str) -> dict:
    try:
        from optlab import api
        return {k: v for k, v in api.preset_hparams(name).items() if isinstance(v, (int, float, str, bool))}
    except Exception:  # plugin not installed here: no defaults to fill in
        return {}


def _config_label(optimizer: str, hp: dict, run: dict) -> str:
    parts = [f"{k}={hp[k]}" for k in sorted(hp)]
    parts += [f"{k}={run[k]}" for k in RUN_COLS if k in run]
    return f"{optimizer}(" + ", ".join(parts) + ")"


def load(results: str | Path | Iterable[dict], skip_corrupt: bool = False,
         cache: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load a results directory (or an iterable of trial dicts) into ``(epochs, trials)``.

    A directory's frames are cached as Parquet in ``RESULTS/.cache`` (:mod:`optlab.results_cache`),
    rebuilt whenever a trial file is added, changed or removed; ``cache=False`` (or
    ``OPTLAB_NO_CACHE=1``) always builds from the JSON files.
    """
    if cache and isinstance(results, (str, Path)) and os.environ.get("OPTLAB_NO_CACHE") != "1" \
            and (Path(results) / "trials").is_dir():
        from optlab.results_cache import cached_frames
        from optlab.store import SCHEMA_VERSION
        return cached_frames(results, lambda: load(results, skip_corrupt, cache=False), key_of=load,
                             options={"skip_corrupt": skip_corrupt, "schema": SCHEMA_VERSION,
                                      "pandas": pd.__version__})
    if isinstance(results, (str, Path)):
        records = list(Store(results).iter_results(skip_corrupt=skip_corrupt))
        if not records:
            raise StoreError(f"{results}: no completed trials yet (trials/ is empty)")
    else:
        records = list(results)
        if not records:
            raise StoreError("no trials to load")
    defaults_cache: dict[str, dict] = {}
    erows, trows = [], []
    hp_names: set[str] = set()
    for r in records:
        try:
            cfg = r["config"]
            opt = cfg["optimizer"]
        except (KeyError, TypeError) as exc:
            raise StoreError(f"trial {r.get('id', '?')}: not an optlab trial record (missing {exc})") from exc
        if opt not in defaults_cache:
            defaults_cache[opt] = _preset_defaults(opt)
        hp = {**defaults_cache[opt], **{k: v for k, v in cfg.get("hparams", {}).items()}}
        hp = {k: (json.dumps(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in hp.items()}
        hp_names |= set(hp)
        run = {k: cfg.get(k) for k in RUN_COLS}
        ident = {"trial_id": r.get("id"), "task": cfg["task"], "model": cfg["model"], "optimizer": opt,
                 "seed": cfg.get("seed", 0), "status": r.get("status", "failed"),
                 "config": _config_label(opt, cfg.get("hparams", {}), run)}
        metrics = r.get("metrics") or []
        for m in metrics:
            erows.append({**ident, **hp, **run, **{k: m.get(k, np.nan) for k in METRICS}, "epoch": m.get("epoch")})
        ok_rows = [m for m in metrics if _finite(m.get("test_acc"))]
        last = metrics[-1] if metrics else {}
        best = max(ok_rows, key=lambda m: m["test_acc"]) if ok_rows else {}
        status = ident["status"]
        trows.append({
            **ident, **hp, **run,
            "epochs_run": len(metrics),
            "final_test_acc": last.get("test_acc", np.nan) if status == "ok" else np.nan,
            "final_test_loss": last.get("test_loss", np.nan) if status == "ok" else np.nan,
            "final_train_loss": last.get("train_loss", np.nan) if status == "ok" else np.nan,
            "final_train_acc": last.get("train_acc", np.nan) if status == "ok" else np.nan,
            "best_test_acc": best.get("test_acc", np.nan), "best_epoch": best.get("epoch", np.nan),
            "wall_time": sum(m.get("time_epoch", 0.0) for m in metrics),
            "time_forward_backward": _mean([m.get("time_forward_backward") for m in metrics]),
            "time_curvature": _mean([m.get("time_curvature") for m in metrics]),
            "time_update": _mean([m.get("time_update") for m in metrics]),
            "time_epoch": _mean([m.get("time_epoch") for m in metrics]),
            "hvp_count": sum(m.get("hvp_count", 0) or 0 for m in metrics),
            "diverged": status == "diverged", "failed": status == "failed", "error": r.get("error"),
            "host": (r.get("env") or {}).get("host"), "git_revision": (r.get("env") or {}).get("git_revision"),
        })
    trials = _dtypes(pd.DataFrame(trows), hp_names)
    epochs = _dtypes(pd.DataFrame(erows), hp_names) if erows else pd.DataFrame(columns=list(trials.columns) + METRICS)
    trials.attrs["hparams"] = sorted(hp_names)
    epochs.attrs["hparams"] = sorted(hp_names)
    return epochs, trials


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _mean(xs) -> float:
    xs = [x for x in xs if _finite(x)]
    return float(np.mean(xs)) if xs else np.nan


def _dtypes(df: pd.DataFrame, hp_names) -> pd.DataFrame:
    for c in ("task", "model", "optimizer", "status", "lr_schedule", "engine"):
        if c in df:
            df[c] = df[c].astype("category")
    for c in hp_names:
        if c in df and df[c].map(lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool)).all():
            df[c] = df[c].astype(float)
    if "seed" in df:
        df["seed"] = df["seed"].astype(int)
    return df


def hparam_columns(df: pd.DataFrame) -> list[str]:
    """Hyperparameter columns that vary in ``df`` (the grid's axes)."""
    names = df.attrs.get("hparams", [])
    return [c for c in names if c in df and df[c].nunique(dropna=True) > 1]


def expected_trials(results: str | Path) -> list[dict] | None:
    """The grid's trials (from ``RESULTS/spec.toml``), or None if the spec is not there."""
    spec_path = Path(results) / "spec.toml"
    if not spec_path.exists():
        return None
    from optlab.grid import load_spec, tuning_trials
    try:  # tuning_trials: for an optuna search, the configurations its studies asked
        return [{"trial_id": t.id, **t.config} for t in tuning_trials(load_spec(spec_path), results)]
    except Exception:
        return None


def _ci95(std: float, n: int) -> float:
    if n < 2 or not math.isfinite(std):
        return np.nan
    from scipy import stats
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def summarize(trials: pd.DataFrame, by: Sequence[str] | None = None, metric: str = "final_test_acc",
              expected_seeds: int | None = None) -> pd.DataFrame:
    """Mean, std, SEM and 95 % CI (Student t) over seeds per cell of ``by``.

    ``n`` counts the seeds that finished ``ok`` and enter the mean; ``n_diverged``,
    ``n_failed`` and ``n_missing`` (against ``expected_seeds``, default: the most
    seeds any cell has) make incomplete cells visible; ``complete`` is False for them.
    """
    if metric not in trials:
        raise MetricError(f"unknown metric {metric!r}; available: {', '.join(c for c in trials.columns if c.startswith(('final_', 'best_', 'time_', 'wall')))}")
    by = list(by) if by is not None else ["task", "model", "optimizer"] + hparam_columns(trials)
    df = trials.copy()
    for c in by:
        if c not in df:
            raise MetricError(f"unknown column {c!r} in by=")
    rows = []
    for key, g in df.groupby(by, observed=True, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ok = g[g["status"] == "ok"][metric].dropna()
        n, std = len(ok), float(ok.std(ddof=1)) if len(ok) > 1 else np.nan
        rows.append({**dict(zip(by, key)), "n": n, "n_seeds": g["seed"].nunique(),
                     "n_diverged": int(g["diverged"].sum()), "n_failed": int(g["failed"].sum()),
                     "mean": float(ok.mean()) if n else np.nan, "std": std,
                     "sem": std / math.sqrt(n) if n > 1 else np.nan, "ci95": _ci95(std, n),
                     "seeds": ",".join(map(str, sorted(g["seed"].unique())))})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    exp = expected_seeds or int(out["n_seeds"].max())
    out["n_missing"] = (exp - out["n_seeds"]).clip(lower=0)
    out["complete"] = (out["n"] == exp)
    out.attrs["metric"] = metric
    return out


def best_configs(trials: pd.DataFrame, metric: str = "final_test_acc", mode: str = "max",
                 within: Sequence[str] = ("task", "model", "optimizer"), tol: float = 1e-12) -> pd.DataFrame:
    """The best configuration per ``within`` cell by the seed-mean of ``metric``.

    Ties (means within ``tol``) are all returned with ``tie=True``; each row
    carries its seed spread (std, ci95, n). Cells with no finished seed are
    skipped; incomplete cells can win but show ``complete=False``.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"invalid mode={mode!r}; expected 'max' or 'min'")
    s = summarize(trials, by=list(within) + hparam_columns(trials), metric=metric)
    if s.empty:
        return s
    s = s[s["n"] > 0]
    rows = []
    for _, g in s.groupby(list(within), observed=True):
        best = g["mean"].max() if mode == "max" else g["mean"].min()
        winners = g[(g["mean"] - best).abs() <= tol].copy()
        winners["tie"] = len(winners) > 1
        rows.append(winners)
    out = pd.concat(rows, ignore_index=True) if rows else s.iloc[0:0]
    out.attrs["metric"] = metric
    return out


def cell_mask(trials: pd.DataFrame, row: pd.Series, cols: Sequence[str]) -> pd.Series:
    """Rows of ``trials`` whose ``cols`` equal ``row``'s (NaN matches NaN: an axis that does not apply)."""
    mask = pd.Series(True, index=trials.index)
    for c in cols:
        v = row[c]
        mask &= trials[c].isna() if (isinstance(v, float) and math.isnan(v)) else (trials[c] == v)
    return mask


def sensitivity(trials: pd.DataFrame, axis: str, metric: str = "final_test_acc", mode: str = "max",
                aggregate: str = "best") -> pd.DataFrame:
    """``metric`` as a function of ``axis`` per task/model/optimizer.

    ``aggregate="best"``: at each axis value, the other axes at their best
    (seed-mean); ``"mean"``: averaged over the other axes' settings.
    """
    if axis not in trials:
        raise MetricError(f"unknown axis {axis!r}; grid axes: {', '.join(hparam_columns(trials))}")
    if aggregate not in ("best", "mean"):
        raise ValueError(f"invalid aggregate={aggregate!r}; expected 'best' or 'mean'")
    df = trials[trials[axis].notna()]
    others = [c for c in hparam_columns(df) if c != axis]
    within = ["task", "model", "optimizer"]
    s = summarize(df, by=within + [axis] + others, metric=metric)
    if s.empty:
        return s
    s = s[s["n"] > 0]
    if aggregate == "mean":
        rows = []
        for key, g in s.groupby(within + [axis], observed=True):
            vals = df[cell_mask(df, pd.Series(dict(zip(within + [axis], key))), within + [axis])]
            seeds = vals[vals["status"] == "ok"].groupby("seed")[metric].mean()
            n, std = len(seeds), float(seeds.std(ddof=1)) if len(seeds) > 1 else np.nan
            rows.append({**dict(zip(within + [axis], key)), "mean": float(seeds.mean()), "std": std,
                         "ci95": _ci95(std, n), "n": n})
        return pd.DataFrame(rows)
    idx = s.groupby(within + [axis], observed=True)["mean"].idxmax() if mode == "max" else \
        s.groupby(within + [axis], observed=True)["mean"].idxmin()
    return s.loc[idx.values].reset_index(drop=True)


def paired_comparison(trials: pd.DataFrame, baseline: str = "sgd", metric: str = "final_test_acc",
                      mode: str = "max") -> pd.DataFrame:
    """Seed-paired differences (optimizer - baseline) at each one's best configuration.

    Per task/model: mean difference, its 95 % CI and a paired t-test p-value over
    the seeds both finished. Requires the baseline in the results.
    """
    from scipy import stats
    if baseline not in set(trials["optimizer"].astype(str)):
        raise MetricError(f"baseline {baseline!r} not in results; optimizers: "
                          f"{', '.join(sorted(trials['optimizer'].astype(str).unique()))}")
    best = best_configs(trials, metric=metric, mode=mode)
    best = best.drop_duplicates(subset=["task", "model", "optimizer"])
    axes = hparam_columns(trials)
    rows = []
    for (task, model), g in best.groupby(["task", "model"], observed=True):
        base = g[g["optimizer"] == baseline]
        if base.empty:
            continue
        bvals = trials[cell_mask(trials, base.iloc[0], ["task", "model", "optimizer"] + axes)]
        bseed = bvals[bvals["status"] == "ok"].set_index("seed")[metric]
        for _, row in g[g["optimizer"] != baseline].iterrows():
            vals = trials[cell_mask(trials, row, ["task", "model", "optimizer"] + axes)]
            oseed = vals[vals["status"] == "ok"].set_index("seed")[metric]
            common = sorted(set(bseed.index) & set(oseed.index))
            d = (oseed.loc[common] - bseed.loc[common]).astype(float)
            n = len(d)
            std = float(d.std(ddof=1)) if n > 1 else np.nan
            p = float(stats.ttest_rel(oseed.loc[common], bseed.loc[common]).pvalue) if n > 1 and std > 0 else np.nan
            rows.append({"task": task, "model": model, "optimizer": row["optimizer"], "baseline": baseline,
                         "n_pairs": n, "mean_diff": float(d.mean()) if n else np.nan, "std_diff": std,
                         "ci95": _ci95(std, n), "p_value": p, "setting": _axes_label(row, axes),
                         "baseline_setting": _axes_label(base.iloc[0], axes),
                         "config": vals["config"].iloc[0], "baseline_config": bvals["config"].iloc[0]})
    return pd.DataFrame(rows)


def _axes_label(row: pd.Series, axes: Sequence[str]) -> str:
    """The grid axes of one cell, e.g. ``lr=0.1, weight_decay=0.0005`` (NaN axes omitted)."""
    return ", ".join(f"{a}={row[a]:g}" if isinstance(row[a], float) else f"{a}={row[a]}"
                     for a in axes if not (isinstance(row[a], float) and math.isnan(row[a]))) or "-"


def performance_profile(trials: pd.DataFrame, metric: str = "final_test_acc", mode: str = "max",
                        taus: Sequence[float] | None = None) -> pd.DataFrame:
    """Dolan-Moré performance profiles over problems (task/model pairs).

    Cost per problem and optimizer: the best seed-mean error (``1 - metric`` for
    accuracies with ``mode="max"``, else the metric). ``rho(tau)`` is the
    fraction of problems where the optimizer's cost is within ``tau`` times the
    best optimizer's.
    """
    best = best_configs(trials, metric=metric, mode=mode).drop_duplicates(subset=["task", "model", "optimizer"])
    best = best.assign(cost=(1 - best["mean"]) if mode == "max" else best["mean"])
    best["problem"] = best["task"].astype(str) + "/" + best["model"].astype(str)
    ratios = []
    for _, g in best.groupby("problem"):
        m = g["cost"].min()
        for _, r in g.iterrows():
            ratios.append({"problem": r["problem"], "optimizer": r["optimizer"],
                           "ratio": r["cost"] / m if m > 0 else (1.0 if r["cost"] == m else np.inf)})
    rdf = pd.DataFrame(ratios)
    n_problems = rdf["problem"].nunique()
    taus = list(taus) if taus is not None else sorted(set([1.0] + list(np.linspace(1, max(2.0, rdf["ratio"].replace(np.inf, np.nan).max() * 1.05), 50))))
    rows = [{"optimizer": o, "tau": t, "rho": float((g["ratio"] <= t).sum() / n_problems)}
            for o, g in rdf.groupby("optimizer", observed=True) for t in taus]
    return pd.DataFrame(rows)
