"""Results -> tidy pandas frames: ``load(results)`` returns ``(epochs, trials)``.

* ``epochs``: one row per trial x epoch -- identity columns (``trial_id, task,
  model, optimizer, seed, status, stage, config``), one column per
  hyperparameter (flattened names; NaN where it does not apply), run settings,
  and every metric;
* ``trials``: one row per trial -- final and best metrics (validation and
  test), totals (wall time, HVPs, time split), ``diverged``/``failed`` flags,
  the error text, ``stage``, ``schema_version`` and ``legacy``.

Hyperparameters a trial left unset are filled from the record's own
``hparams_resolved`` (what the optimizer ran with, schema 2). Only records
without it (``legacy=True``) get today's preset defaults -- which may differ
from what they ran with. ``config`` identifies a configuration across seeds and
stages (everything but the seed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from optlab.grid.protocol import config_key
from optlab.progress import track
from optlab.store import Store, StoreError

__all__ = [
    "load",
    "hparam_columns",
    "cost_per_epoch",
    "expected_trials",
    "config_description",
    "MetricError",
    "SelectionBiasWarning",
    "SELECT_METRIC",
    "REPORT_METRIC",
    "WITHIN",
]


ID_COLS = ["trial_id", "task", "model", "optimizer", "arm", "seed", "status", "stage", "config", "config_key"]
RUN_COLS = ["epochs", "batch_size", "lr_schedule", "warmup_epochs", "decouple", "engine"]
METRICS = [
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "time_forward_backward",
    "time_curvature",
    "time_update",
    "time_epoch",
    "wall_time",
    "hvp_count",
    "vjp_count",
]
#: what selection reads by default, and what is reported for the selected configurations
SELECT_METRIC = "final_val_acc"
REPORT_METRIC = "final_test_acc"
#: one selection (and one side of a comparison) per task, model and optimizer arm
WITHIN = ("task", "model", "arm")


class MetricError(KeyError):
    pass


class SelectionBiasWarning(UserWarning):
    """A selection had to read test metrics (legacy results without validation metrics)."""


def _preset_defaults(name: str) -> dict:
    try:
        from optlab import api

        return {k: v for k, v in api.optimizer_entry(name).defaults.items() if isinstance(v, (int, float, str, bool))}
    except Exception:  # plugin not installed here: no defaults to fill in
        return {}


def config_description(optimizer: str, hp: dict, run: dict) -> str:
    """A configuration for people: ``arm(lr=0.1, weight_decay=0.0005, epochs=8, ...)``."""
    parts = [f"{k}={hp[k]}" for k in sorted(hp)]
    parts += [f"{k}={run[k]}" for k in RUN_COLS if k in run]
    return f"{optimizer}(" + ", ".join(parts) + ")"


def _scalars(hp: dict) -> dict:
    return {k: v for k, v in hp.items() if v is None or isinstance(v, (int, float, str, bool, list, tuple))}


def load(
    results: str | Path | Iterable[dict], skip_corrupt: bool = False, cache: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load a results directory (or an iterable of trial dicts) into ``(epochs, trials)``.

    A directory's frames are cached as Parquet in ``RESULTS/.cache`` (:mod:`optlab.analysis.cache`),
    rebuilt whenever a trial file is added, changed or removed; ``cache=False`` (or
    ``OPTLAB_NO_CACHE=1``) always builds from the JSON files.
    """
    if (
        cache
        and isinstance(results, (str, Path))
        and os.environ.get("OPTLAB_NO_CACHE") != "1"
        and (Path(results) / "trials").is_dir()
    ):
        from optlab.analysis.cache import cached_frames
        from optlab.store import SCHEMA_VERSION

        return cached_frames(
            results,
            lambda: load(results, skip_corrupt, cache=False),
            key_of=load,
            options={"skip_corrupt": skip_corrupt, "schema": SCHEMA_VERSION, "pandas": pd.__version__},
        )
    records = _records(results, skip_corrupt)
    defaults_cache: dict[str, dict] = {}
    erows, trows = [], []
    hp_names: set[str] = set()
    for r in track(records, desc="tabulating trials", unit="trials"):
        ident, hp, run, legacy = _trial_identity(r, defaults_cache)
        hp_names |= set(hp)
        metrics = r.get("metrics") or []
        for m in metrics:
            erows.append({**ident, **hp, **run, **{k: m.get(k, np.nan) for k in METRICS}, "epoch": m.get("epoch")})
        trows.append({**ident, **hp, **run, **_trial_results(r, metrics, ident["status"], legacy)})
    trials = _dtypes(pd.DataFrame(trows), hp_names)
    epochs = _dtypes(pd.DataFrame(erows), hp_names) if erows else pd.DataFrame(columns=list(trials.columns) + METRICS)
    trials.attrs["hparams"] = sorted(hp_names)
    epochs.attrs["hparams"] = sorted(hp_names)
    return epochs, trials


def _records(results: str | Path | Iterable[dict], skip_corrupt: bool) -> list[dict]:
    """The trial records of a results directory, or of an iterable of records; none is an error."""
    if isinstance(results, (str, Path)):
        records = list(Store(results).iter_results(skip_corrupt=skip_corrupt))
        if not records:
            raise StoreError(f"{results}: no completed trials yet (trials/ is empty)")
    else:
        records = list(results)
        if not records:
            raise StoreError("no trials to load")
    return records


def _trial_identity(r: dict, defaults_cache: dict[str, dict]) -> tuple[dict, dict, dict, bool]:
    """``(identity columns, hyperparameters, run settings, legacy)`` of one record; a legacy record
    (no ``hparams_resolved``) gets today's preset defaults, which may not be what it ran with."""
    try:
        cfg = r["config"]
        opt = cfg["optimizer"]
    except (KeyError, TypeError) as exc:
        raise StoreError(f"trial {r.get('id', '?')}: not an optlab trial record (missing {exc})") from exc
    resolved = r.get("hparams_resolved")
    legacy = not isinstance(resolved, dict)
    if legacy:
        if opt not in defaults_cache:
            defaults_cache[opt] = _preset_defaults(opt)
        resolved = defaults_cache[opt]
    hp = {**_scalars(resolved), **cfg.get("hparams", {})}
    hp = {k: (json.dumps(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in hp.items()}
    run = {k: cfg.get(k) for k in RUN_COLS}
    arm = r.get("arm") or opt
    ident = {
        "trial_id": r.get("id"),
        "task": cfg["task"],
        "model": cfg["model"],
        "optimizer": opt,
        "arm": arm,
        "seed": cfg.get("seed", 0),
        "status": r.get("status", "failed"),
        "stage": r.get("stage", "tuning"),
        "config": config_description(arm, cfg.get("hparams", {}), run),
        "config_key": config_key(cfg),
    }
    return ident, hp, run, legacy


def _trial_results(r: dict, metrics: list[dict], status: str, legacy: bool) -> dict:
    """One trial's row after its identity: final and best metrics, totals, flags, provenance."""
    last = metrics[-1] if metrics and status == "ok" else {}
    best_test = _best_epoch(metrics, "test_acc")
    best_val = _best_epoch(metrics, "val_acc")
    selection = r.get("selection") or {}
    env = r.get("env") or {}
    return {
        "schema_version": int(r.get("schema_version", 1)),
        "legacy": legacy,
        "epochs_run": len(metrics),
        **{
            f"final_{k}": last.get(k, np.nan)
            for k in ("val_acc", "val_loss", "test_acc", "test_loss", "train_loss", "train_acc")
        },
        "best_val_acc": best_val.get("val_acc", np.nan),
        "best_val_epoch": best_val.get("epoch", np.nan),
        "test_acc_at_best_val": best_val.get("test_acc", np.nan),
        "best_test_acc": best_test.get("test_acc", np.nan),
        "best_epoch": best_test.get("epoch", np.nan),
        "wall_time": sum(m.get("time_epoch", 0.0) for m in metrics),
        "time_forward_backward": _mean([m.get("time_forward_backward") for m in metrics]),
        "time_curvature": _mean([m.get("time_curvature") for m in metrics]),
        "time_update": _mean([m.get("time_update") for m in metrics]),
        "time_epoch": _mean([m.get("time_epoch") for m in metrics]),
        "hvp_count": sum(m.get("hvp_count", 0) or 0 for m in metrics),
        "hvp_per_epoch": _mean([m.get("hvp_count") for m in metrics]),
        "diverged": status == "diverged",
        "failed": status == "failed",
        "error": r.get("error"),
        "selection_config": selection.get("config"),
        "extension_round": (r.get("extension") or {}).get("round", np.nan),
        "selection_metric": selection.get("metric"),
        "plugins": ", ".join(f"{k}={v}" for k, v in sorted((r.get("plugins") or {}).items())) or None,
        "host": env.get("host"),
        "git_revision": env.get("git_revision"),
    }


def _best_epoch(metrics: list[dict], key: str) -> dict:
    """The epoch with the highest finite ``key`` (first one on ties), or {}."""
    rows = [m for m in metrics if _finite(m.get(key))]
    return max(rows, key=lambda m: m[key]) if rows else {}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _mean(xs) -> float:
    xs = [x for x in xs if _finite(x)]
    return float(np.mean(xs)) if xs else np.nan


def _dtypes(df: pd.DataFrame, hp_names) -> pd.DataFrame:
    for c in ("task", "model", "optimizer", "arm", "status", "lr_schedule", "engine"):
        if c in df:
            df[c] = df[c].astype("category")
    for c in hp_names:
        if c in df and df[c].map(lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool)).all():
            df[c] = df[c].astype(float)
    if "seed" in df:
        df["seed"] = df["seed"].astype(int)
    return df


def cost_per_epoch(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean cost of one epoch per task, model and arm, over trials that did not fail.

    ``time_epoch`` is the recorded epoch time; ``time_forward_backward``, ``time_curvature``
    and ``time_update`` its phases inside the optimizer step; ``time_other`` the remainder
    (evaluation on validation and test, data batching, the loop) so that the phases add up
    to ``time_epoch``; ``hvp_per_epoch`` the Hessian-vector products of one epoch
    (``hvp_count`` of a trial is its total over all epochs)."""
    phases = ["time_forward_backward", "time_curvature", "time_update"]
    df = trials[trials["status"].astype(str) != "failed"]
    g = (
        df.groupby(["task", "model", "arm"], observed=True)[["time_epoch", *phases, "hvp_per_epoch"]]
        .mean()
        .reset_index()
    )
    g["time_other"] = (g["time_epoch"] - g[phases].fillna(0).sum(axis=1)).clip(lower=0.0)
    return g[["task", "model", "arm", "time_epoch", *phases, "time_other", "hvp_per_epoch"]]


def hparam_columns(df: pd.DataFrame) -> list[str]:
    """Hyperparameter columns that vary in ``df`` (the grid's axes)."""
    names = df.attrs.get("hparams", [])
    return [c for c in names if c in df and df[c].nunique(dropna=True) > 1]


def expected_trials(results: str | Path) -> list[dict] | None:
    """The grid's trials (from ``RESULTS/spec.toml``): the tuning stage, and the evaluation-stage trials
    already determined by finished tuning (as ``grid status`` counts them); None without a spec."""
    spec_path = Path(results) / "spec.toml"
    if not spec_path.exists():
        return None
    from optlab.grid.run import tuning_trials
    from optlab.grid.spec import load_spec
    from optlab.grid.stages import evaluation_trials

    try:  # tuning_trials: for an optuna search, the configurations its studies asked
        spec = load_spec(spec_path)
        trials = tuning_trials(spec, results)
        if spec.protocol is not None:
            good, _ = Store(results).scan()
            trials += evaluation_trials(spec, trials, good)[0]
        return [{"trial_id": t.id, "arm": t.arm or t.config["optimizer"], "stage": t.stage, **t.config} for t in trials]
    except Exception:  # a spec this optlab cannot expand (e.g. a plugin is missing): no expectations
        return None
