"""The two-stage comparison protocol: each (task, model, arm) selects its configuration on the
tuning seeds' validation metric (:func:`select_configs`), then runs it on fresh evaluation seeds
(:func:`evaluation_trials`). See ``docs/analysis.md`` for the protocol and its verdicts.
"""

from __future__ import annotations

import json
import math

from .spec import SELECT_DIRECTIONS, GridSpec
from .trial import Trial, trial_id

__all__ = ["selection_key", "config_key", "select_configs", "evaluation_trials"]


def selection_key(config: dict, arm: str) -> tuple[str, str, str]:
    """What one selection is made within: (task, model, arm)."""
    return config["task"], config["model"], arm


def config_key(config: dict) -> str:
    """A configuration across seeds: everything in the run config but the seed."""
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


def select_configs(tuning: list[Trial], records: dict[str, dict], metric: str = "val_acc") -> dict:
    """The validation-selected configuration of every (task, model, arm).

    Score of a configuration: mean over its tuning seeds of the final-epoch ``metric``
    (``val_acc`` maximised, ``val_loss`` minimised). Eligible: configurations whose seeds all
    finished ``ok``; if none is, those with at least one ``ok`` seed (mean over those). Ties go
    to the smallest :func:`config_key`. Test metrics are never read.

    Returns ``{key: {"config", "score", "configs_tried", "tuning_seeds", "complete"}}``;
    ``complete`` is False while some tuning trial of that key has no valid result.
    """
    sign = 1.0 if SELECT_DIRECTIONS[metric] == "max" else -1.0
    groups: dict[tuple, dict[str, list]] = {}
    for t in tuning:
        groups.setdefault(selection_key(t.config, t.arm), {}).setdefault(config_key(t.config), []).append(t)
    out = {}
    for key, configs in groups.items():
        complete = all(t.id in records for ts in configs.values() for t in ts)
        scored = []
        for label, ts in configs.items():
            vals, all_ok = [], True
            for t in ts:
                r = records.get(t.id)
                v = r["metrics"][-1].get(metric) if r and r["status"] == "ok" and r["metrics"] else None
                if isinstance(v, (int, float)) and math.isfinite(v):
                    vals.append(float(v))
                else:
                    all_ok = False
            if vals:
                scored.append((all_ok, sign * sum(vals) / len(vals), label, ts[0].config, sum(vals) / len(vals)))
        seeds = sorted({t.config["seed"] for ts in configs.values() for t in ts})
        if not scored:
            out[key] = {
                "config": None,
                "score": None,
                "configs_tried": len(configs),
                "tuning_seeds": seeds,
                "complete": complete,
            }
            continue
        eligible = [x for x in scored if x[0]] or scored
        best = min(eligible, key=lambda x: (-x[1], x[2]))
        out[key] = {
            "config": {k: v for k, v in best[3].items() if k != "seed"},
            "score": best[4],
            "configs_tried": len(configs),
            "tuning_seeds": seeds,
            "complete": complete,
        }
    return out


def evaluation_trials(spec: GridSpec, tuning: list[Trial], records: dict[str, dict]) -> tuple[list[Trial], list[str]]:
    """Evaluation-stage trials: each (task, model, arm)'s validation-selected configuration on the
    protocol's fresh evaluation seeds. Returns ``(trials, waiting)``: ``waiting`` names the keys whose
    tuning is not finished (their evaluation trials are not known yet)."""
    proto = spec.protocol
    if proto is None:
        return [], []
    sel = select_configs(tuning, records, proto.select)
    trials, waiting = [], []
    for key, s in sel.items():
        if not s["complete"]:
            waiting.append("/".join(key))
            continue
        if s["config"] is None:
            continue  # every tuning trial failed: nothing to evaluate (the report shows the failures)
        selection = {
            "metric": f"final_{proto.select}",
            "tuning_seeds": s["tuning_seeds"],
            "score": s["score"],
            "configs_tried": s["configs_tried"],
            "config": config_key({**s["config"], "seed": 0}),
        }
        for seed in proto.evaluation_seeds:
            c = {**s["config"], "seed": seed}
            trials.append(Trial(trial_id(c), c, arm=key[2], stage="evaluation", selection=selection))
    return trials, waiting


def __getattr__(name: str):
    if name == "config_label":  # the machine key was called a label before issue 22
        import warnings

        warnings.warn(
            "optlab.grid.protocol.config_label is deprecated: it is config_key (a machine key, not a label)",
            DeprecationWarning,
            stacklevel=2,
        )
        return config_key
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
