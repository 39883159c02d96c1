"""Adaptive search (``[search] sampler = "optuna"``): rounds of configurations asked from one
Optuna study per ``[[optimizer]]`` block, each told its configuration's mean final metric."""

from __future__ import annotations

import math

from optlab.store import Store

from .dispatch import dispatch, todo_trials
from .spec import BLOCK_KEYS, GridSpec, SpecError, expand
from .trial import Trial

__all__ = ["optuna_spaces", "optuna_studies", "optuna_total", "optuna_rounds"]


def optuna_spaces(spec: GridSpec) -> dict[int, tuple[str, dict, list[str]]]:
    """``{block index: (arm, search space, hparam keys in block order)}`` for the optuna sampler
    (each block's space parsed once, by :meth:`GridSpec.block_space`)."""
    out = {}
    for bi, block in enumerate(spec.blocks):
        keys = [k for k in block if k not in BLOCK_KEYS]
        out[bi] = (block.get("label", block.get("name")), spec.block_space(bi), keys)
    return out


def optuna_studies(spec: GridSpec, store: Store, search, create: bool = True) -> dict:
    """One Optuna study per optimizer block in ``RESULTS/optuna.db`` (created or resumed)."""
    from .search import OptunaSearch, SearchError, stream_seed

    db = store.root / "optuna.db"
    if not create and not db.exists():
        return {}
    out = {}
    for bi, (arm, space, _) in optuna_spaces(spec).items():
        try:
            out[bi] = OptunaSearch(
                space,
                db,
                f"{spec.name}/{bi}-{arm}",
                search.trials,
                seed=stream_seed(search.seed, bi, arm),
                direction=search.direction,
                batch=search.batch,
                pruning=search.pruning,
            )
        except SearchError as exc:
            raise SpecError(str(exc)) from exc
    return out


def optuna_total(spec: GridSpec, search) -> int:
    """Tuning trials once every study has spent its budget (trials per configuration x budget)."""
    from .search import sample_configs

    one = {bi: sample_configs(space, "random", n=1, seed=0) for bi, (_, space, _) in optuna_spaces(spec).items()}
    return len(expand(spec, one)) * search.trials


def optuna_rounds(spec: GridSpec, store: Store, studies: dict, search, ex, threads, rep, retry_failed) -> list[Trial]:
    """Ask each block's study for configurations, run their trials, tell each configuration's mean
    final ``search.metric`` (over its seeds and settings), until every budget is spent."""
    spaces = optuna_spaces(spec)
    while True:
        asked = {bi: s.ask() for bi, s in studies.items()}
        if not any(asked.values()):
            break
        round_trials = expand(spec, {bi: [hp for _, hp in a] for bi, a in asked.items()})
        done, _ = store.scan()
        dispatch(store, todo_trials(store, round_trials, done, retry_failed), ex, threads, rep)
        done, _ = store.scan()
        for bi, a in asked.items():
            arm, _, keys = spaces[bi]
            for number, hp in a:
                hp = {k: hp[k] for k in keys}
                ts = [t for t in round_trials if t.arm == arm and t.config["hparams"] == hp]
                if any(t.id not in done for t in ts):
                    continue  # held by another live process: its study trial stays open for a later run
                vals = [
                    r["metrics"][-1].get(search.metric)
                    for r in (done[t.id] for t in ts)
                    if r["status"] == "ok" and r["metrics"]
                ]
                vals = [float(v) for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
                studies[bi].tell(number, sum(vals) / len(vals) if vals else None)
    return expand(spec, {bi: s.configs() for bi, s in studies.items()})
