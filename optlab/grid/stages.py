"""The two-stage protocol over a spec's trials: tuning observations, the validation-selected
configuration of every (task, model, arm) (:func:`select_configs`, by the one rule
:func:`optlab.grid.protocol.select`), the grid extension beyond edges (:func:`extension_trials`)
and the evaluation-stage trials on fresh seeds (:func:`evaluation_trials`). Everything is
recomputed from the stored results, so a rerun adds exactly the same trials."""

from __future__ import annotations

import math

from . import protocol
from .checks import LIST_VALUED, SELECT_DIRECTIONS, SpecError, check_optimizer_builds
from .protocol import AxisRange, Observation, config_key, extension_configs, selection_key
from .spec import BLOCK_KEYS, GridSpec, search_settings
from .trial import Trial, trial_id

__all__ = ["observations", "select_configs", "search_domains", "extension_trials", "evaluation_trials"]


def observations(tuning: list[Trial], records: dict[str, dict], metric: str = "val_acc") -> list[Observation]:
    """The tuning trials as :func:`select` sees them: per trial its cell (:func:`selection_key`), its
    configuration's label, seed, final ``metric`` (None unless it finished ``ok`` with a finite value;
    also None for a trial without a record yet) and its hyperparameters."""
    out = []
    for t in tuning:
        r = records.get(t.id)
        v = r["metrics"][-1].get(metric) if r and r["status"] == "ok" and r["metrics"] else None
        out.append(
            Observation(
                selection_key(t.config, t.arm),
                config_key(t.config),
                t.config["seed"],
                float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None,
                dict(t.config.get("hparams", {})),
            )
        )
    return out


def select_configs(
    tuning: list[Trial], records: dict[str, dict], metric: str = "val_acc", domains: dict | None = None
) -> dict:
    """The validation-selected configuration of every (task, model, arm), by :func:`select` (the one rule).

    Returns ``{key: {"config", "score", "configs_tried", "tuning_seeds", "complete", "selection"}}``:
    ``config`` the winner's run config without the seed (None if nothing finished), ``complete``
    False while some tuning trial of that key has no valid result, ``selection`` the
    :class:`Selection` (eligibility, ties, edges). Test metrics are never read.
    """
    by_label = {config_key(t.config): t.config for t in tuning}
    complete: dict[tuple, bool] = {}
    for t in tuning:
        key = selection_key(t.config, t.arm)
        complete[key] = complete.get(key, True) and t.id in records
    keys = {selection_key(t.config, t.arm) for t in tuning}
    doms = {k: domains[k[2]] for k in keys if k[2] in domains} if domains else None
    # through the module, so the rule is the one function every caller reaches (and a test can watch)
    sel = protocol.select(observations(tuning, records, metric), SELECT_DIRECTIONS[metric], domains=doms)
    out = {}
    for key, s in sel.items():
        out[key] = {
            "config": {k: v for k, v in by_label[s.config].items() if k != "seed"} if s.config else None,
            "score": s.score,
            "configs_tried": s.n_configs,
            "tuning_seeds": list(s.seeds),
            "complete": complete[key],
            "selection": s,
        }
    return out


def search_domains(spec: GridSpec) -> dict[str, dict]:
    """Per arm, the search domain of every sampled numeric axis (``[search]`` other than ``grid``):
    an :class:`AxisRange` for ``uniform``/``log_uniform``/``int_uniform``, the
    values of a ``choice``; edges of these axes are read against the domain, not the values drawn."""
    from .search import Choice, IntUniform, LogUniform, SearchError, Uniform, parse_space

    search = search_settings(spec)
    if search.sampler == "grid":
        return {}
    out: dict[str, dict] = {}
    for bi, block in enumerate(spec.data.get("optimizer") or []):
        hp_block = {k: v for k, v in block.items() if k not in BLOCK_KEYS}
        try:
            space = parse_space(f"<spec>.optimizer[{bi}]", hp_block, search.sampler, LIST_VALUED)
        except SearchError:
            continue
        arm = block.get("label", block.get("name"))
        dom = out.setdefault(arm, {})
        for k, d in space.items():
            if isinstance(d, (Uniform, IntUniform)):
                dom[k] = AxisRange(float(d.low), float(d.high))
            elif isinstance(d, LogUniform):
                dom[k] = AxisRange(d.low, d.high, log=True)
            elif isinstance(d, Choice):
                dom[k] = list(d.values)
    return out


def extension_trials(spec: GridSpec, tuning: list[Trial], records: dict[str, dict]) -> tuple[list[Trial], set[tuple]]:
    """The tuning trials the protocol's ``extend_edges`` adds, and the keys still waiting for some.

    Per (task, model, arm), round r (1 .. ``extend_edges``) runs once every trial so far has a
    result: select (:func:`select_configs`); for each grid axis whose selected value is on an edge,
    the selected configuration with that axis at the next value of its progression beyond the edge
    (:func:`extension_configs`), on the same tuning seeds; proposals the optimizer
    rejects, or already tried, are dropped; no proposal ends the rounds. Everything is recomputed
    from the stored results, so a rerun (after a kill) adds exactly the same trials.
    """
    proto = spec.protocol
    limit = proto["extend_edges"] if proto else 0
    if not limit:
        return [], set()
    metric = proto["select"]
    domains = search_domains(spec)
    where = f"{spec.path or '<spec>'}.protocol.extend_edges"
    seen = {t.id: t.arm for t in tuning}
    groups: dict[tuple, list[Trial]] = {}
    for t in tuning:
        groups.setdefault(selection_key(t.config, t.arm), []).append(t)
    added: list[Trial] = []
    waiting: set[tuple] = set()
    for key, ts in groups.items():
        cur = list(ts)
        seeds = sorted({t.config["seed"] for t in ts})
        for rnd in range(1, limit + 1):
            if any(t.id not in records for t in cur):
                break
            s = select_configs(cur, records, metric, domains)[key]
            if s["config"] is None:
                break
            new = []
            for edge, hp in extension_configs(s["selection"]):
                try:
                    check_optimizer_builds(where, s["config"]["optimizer"], hp)
                except SpecError:
                    continue  # beyond what the optimizer accepts (e.g. momentum > 1)
                for seed in seeds:
                    c = {**s["config"], "hparams": hp, "seed": seed}
                    tid = trial_id(c)
                    if tid in seen:
                        continue
                    seen[tid] = key[2]
                    info = {"round": rnd, "axis": edge.axis, "side": edge.side, "from": edge.value}
                    new.append(Trial(tid, c, arm=key[2], extension=info))
            if not new:
                break
            cur += new
            added += new
        if any(t.id not in records for t in cur):
            waiting.add(key)
    return added, waiting


def evaluation_trials(spec: GridSpec, tuning: list[Trial], records: dict[str, dict]) -> tuple[list[Trial], list[str]]:
    """Evaluation-stage trials: each (task, model, arm)'s validation-selected configuration on the
    protocol's fresh evaluation seeds. Returns ``(trials, waiting)``: ``waiting`` names the keys whose
    tuning is not finished (their evaluation trials are not known yet)."""
    proto = spec.protocol
    if proto is None:
        return [], []
    extra, extending = extension_trials(spec, tuning, records)
    sel = select_configs(tuning + extra, records, proto["select"], search_domains(spec))
    extended: dict[tuple, set[str]] = {}
    for t in extra:
        extended.setdefault(selection_key(t.config, t.arm), set()).add(config_key(t.config))
    trials, waiting = [], []
    for key, s in sel.items():
        if not s["complete"] or key in extending:
            waiting.append("/".join(key))
            continue
        if s["config"] is None:
            continue  # every tuning trial failed: nothing to evaluate (the report shows the failures)
        selection = {
            "metric": f"final_{proto.select}",
            "tuning_seeds": s["tuning_seeds"],
            "score": s["score"],
            "configs_tried": s["configs_tried"],
            "configs_extended": len(extended.get(key, ())),
            "config": config_key({**s["config"], "seed": 0}),
        }
        for seed in proto.evaluation_seeds:
            c = {**s["config"], "seed": seed}
            trials.append(Trial(trial_id(c), c, arm=key[2], stage="evaluation", selection=selection))
    return trials, waiting
