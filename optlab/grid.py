"""Ablation grids: a TOML spec -> the cartesian product of trials -> a resumable run.

Spec (see ``experiments/quickstart.toml``)::

    name = "quickstart"
    seeds = [0, 1]

    [run]                      # run settings shared by every trial (lists become axes)
    epochs = 4
    batch_size = 64
    lr_schedule = "cosine"

    [[setting]]                # task/model pairs (and per-pair run overrides)
    task = "digits"
    model = "cnn-bn"

    [[optimizer]]              # one block per optimizer; lists are axes, scalars fixed
    name = "sgd-ph"
    lr = [0.05, 0.1]
    hessian_momentum = [0.0, 0.9]

Trials = settings x seeds x (for each optimizer block, the product of its axes)
x the run-setting axes. A trial's id is a hash of its full configuration, so
re-running a grid runs exactly the trials that have no result yet.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import sys
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import api, registry
from .hparams import unknown_name
from .selection import AxisRange, Observation, extension_configs, select
from .store import Store
from .train import RUN_KEYS, RunConfig
from .trial import environment, run_trial

__all__ = [
    "GridSpec",
    "GridInterrupted",
    "Trial",
    "load_spec",
    "expand",
    "tuning_trials",
    "evaluation_trials",
    "select_configs",
    "extension_trials",
    "observations",
    "search_domains",
    "run_grid",
    "grid_status",
    "SpecError",
    "environment",
    "run_trial",
]

TOP_KEYS = (
    "name",
    "description",
    "seeds",
    "run",
    "setting",
    "optimizer",
    "results",
    "protocol",
    "search",
    "executor",
    "sinks",
    "targets",
)
RUN_AXES = tuple(k for k in RUN_KEYS if k not in ("optimizer", "hparams", "seed"))
BLOCK_KEYS = ("name", "label")  # an [[optimizer]] block's own keys; the rest are hyperparameter axes
PROTOCOL_KEYS = ("evaluation_seeds", "select", "extend_edges")
SELECT_METRICS = {"val_acc": "max", "val_loss": "min"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: first evaluation seed when ``evaluation_seeds`` is a count (far from the usual tuning seeds 0, 1, 2, ...)
EVAL_SEED_BASE = 1000
#: part of every trial id: trials run before validation splits existed (data version 1) have other ids
DATA_VERSION = 2


class SpecError(ValueError):
    pass


@dataclass
class GridSpec:
    name: str
    path: Path | None
    text: str
    data: dict

    @property
    def protocol(self) -> dict | None:
        """The two-stage protocol (``[protocol]``), resolved; None for a one-stage grid."""
        p = self.data.get("protocol")
        if p is None:
            return None
        seeds = p.get("evaluation_seeds", 20)
        if isinstance(seeds, int):
            seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + seeds))
        return {
            "evaluation_seeds": seeds,
            "select": p.get("select", "val_acc"),
            "extend_edges": p.get("extend_edges", 0),
        }

    @property
    def targets(self) -> dict:
        """The ``[targets]`` table, parsed (:func:`optlab.targets.parse_targets`): ``{workload: TargetSpec}``."""
        from .targets import parse_targets

        return parse_targets(str(self.path or "<spec>"), self.data.get("targets"))


@dataclass(frozen=True)
class Trial:
    id: str
    config: dict
    arm: str = ""  # the [[optimizer]] block's label (default: the optimizer's name)
    stage: str = "tuning"  # "tuning" or "evaluation"
    selection: dict | None = None
    extension: dict | None = None  # added by the grid extension: {"round", "axis", "side", "from"}

    @property
    def label(self) -> str:
        c = self.config
        hp = ",".join(f"{k}={v}" for k, v in sorted(c["hparams"].items()))
        stage = " [eval]" if self.stage == "evaluation" else ""
        if self.extension:
            stage = f" [extension {self.extension['round']}: {self.extension['axis']}]"
        procs = f" nproc={c['nproc']}" if c.get("nproc", 1) != 1 else ""
        return f"{self.arm or c['optimizer']}[{hp}] {c['task']}/{c['model']} seed={c['seed']}{procs}{stage}"


def trial_id(config: dict) -> str:
    canon = json.dumps({**config, "_data_version": DATA_VERSION}, sort_keys=True, default=str)
    return hashlib.sha1(canon.encode()).hexdigest()[:16]


def _type_error(where: str, key: str, value, expected: str) -> SpecError:
    return SpecError(f"{where}.{key}: expected {expected}, got {type(value).__name__} {value!r}")


def load_spec(path_or_text: str | Path, *, is_text: bool = False) -> GridSpec:
    if is_text:
        text, path = str(path_or_text), None
    else:
        path = Path(path_or_text)
        if not path.exists():
            raise SpecError(f"grid spec {path} not found")
        if path.is_dir():
            raise SpecError(f"grid spec {path} is a directory; pass a .toml file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(f"grid spec {path} is not UTF-8 text ({exc.reason})") from exc
    where = str(path) if path else "<spec>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where}: invalid TOML: {exc}") from exc
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise SpecError(f"{where}: " + unknown_name("key", unknown[0], TOP_KEYS, valid_label="Valid top-level keys"))
    for key, typ, words in (
        ("name", str, "a string"),
        ("description", str, "a string"),
        ("results", str, "a directory path (string)"),
        ("run", dict, "a [run] table"),
        ("protocol", dict, "a [protocol] table"),
        ("search", dict, "a [search] table"),
        ("executor", dict, "an [executor] table"),
        ("sinks", dict, "a [sinks] table"),
        ("setting", list, "[[setting]] tables"),
        ("optimizer", list, "[[optimizer]] tables"),
    ):
        if key in data and not isinstance(data[key], typ):
            raise _type_error(where, key, data[key], words)
    for key in ("setting", "optimizer"):
        for i, block in enumerate(data.get(key, [])):
            if not isinstance(block, dict):
                raise _type_error(where, f"{key}[{i}]", block, f"a [[{key}]] table")
    name = data.get("name") or (path.stem if path else "grid")
    if not NAME_RE.match(name) or ".." in name:
        raise SpecError(
            f"{where}.name: invalid grid name {name!r}: a name is 1-100 letters, digits, '.', '_' or '-' "
            "(no '/', no '..'), starting with a letter or digit; results go to results/<name>/ -- "
            "to write elsewhere, set the `results` key to a directory"
        )
    seeds = data.get("seeds", [0])
    if not (isinstance(seeds, list) or isinstance(seeds, int)) or isinstance(seeds, bool):
        raise _type_error(where, "seeds", seeds, "a list of integers >= 0 (the tuning seeds)")
    _check_protocol(where, data.get("protocol"), seeds)
    _check_scaleout(where, data)
    from .targets import parse_targets

    try:
        parse_targets(where, data.get("targets"))
    except ValueError as exc:
        raise SpecError(str(exc)) from exc
    return GridSpec(name, path, text, data)


def _check_scaleout(where: str, data: dict) -> None:
    """``[search]``, ``[executor]`` and ``[sinks]``: unknown names and options named with the valid ones."""
    from .search import SearchError, parse_search

    try:
        parse_search(where, data.get("search"))
    except SearchError as exc:
        raise SpecError(str(exc)) from exc
    ex = data.get("executor")
    if ex is not None:
        _executor_from_table(f"{where}.executor", ex, build=False)
    sinks = data.get("sinks")
    if sinks is not None:
        from .sinks import SinkError, check_sinks

        try:
            check_sinks(sinks, f"{where}.sinks")
        except SinkError as exc:
            raise SpecError(str(exc)) from exc


def _executor_from_table(
    where: str, table: dict, name: str | None = None, extra: dict | None = None, build: bool = True
):
    """The executor of an ``[executor]`` table (``name`` plus options), ``name``/``extra`` overriding it."""
    from .executors import ExecutorError, check_executor_options, make_executor

    table = dict(table or {})
    spec_name = table.pop("name", "local")
    if not isinstance(spec_name, str):
        raise SpecError(
            f"{where}.name: expected a string (one of {', '.join(sorted(registry.items('executor')))}), "
            f"got {spec_name!r}"
        )
    chosen = name or spec_name
    options = table if chosen == spec_name else {}  # the spec's options belong to the spec's executor
    options = {**options, **(extra or {})}
    try:
        if not build:
            check_executor_options(chosen, options, where)
            return None
        return make_executor(chosen, where=where, **options)
    except (ExecutorError, registry.RegistryError) as exc:
        msg = str(exc)
        raise SpecError(msg if msg.startswith(where) else f"{where}.name: {msg}") from exc


def _check_protocol(where: str, p: dict | None, tuning_seeds) -> None:
    if p is None:
        return
    unknown = [k for k in p if k not in PROTOCOL_KEYS]
    if unknown:
        raise SpecError(
            f"{where}.protocol.{unknown[0]}: " + unknown_name("key", unknown[0], PROTOCOL_KEYS, show_name=False)
        )
    seeds = p.get("evaluation_seeds", 20)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 2:
            raise SpecError(
                f"{where}.protocol.evaluation_seeds: invalid count {seeds}; expected >= 2 "
                "(a paired comparison needs seeds; >= 20 where effects are small)"
            )
        seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + seeds))
    elif not (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise SpecError(
            f"{where}.protocol.evaluation_seeds: expected a count >= 2 or a list of integers >= 0, got {seeds!r}"
        )
    tuning = tuning_seeds if isinstance(tuning_seeds, list) else [tuning_seeds]
    shared = sorted(set(seeds) & {s for s in tuning if isinstance(s, int)})
    if shared:
        raise SpecError(
            f"{where}.protocol.evaluation_seeds: seeds {shared} are also tuning seeds; evaluation "
            "needs fresh seeds (that is what makes the comparison unbiased)"
        )
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{where}.protocol.evaluation_seeds: duplicate seeds in {seeds}")
    ext = p.get("extend_edges", 0)
    if not isinstance(ext, int) or isinstance(ext, bool) or ext < 0:
        raise SpecError(
            f"{where}.protocol.extend_edges: invalid {ext!r}; expected an integer >= 0 (rounds of extending "
            "the grid beyond a selection on its edge; 0 = off)"
        )
    sel = p.get("select", "val_acc")
    if sel not in SELECT_METRICS:
        raise SpecError(
            f"{where}.protocol.select: invalid {sel!r}; expected one of {', '.join(SELECT_METRICS)} "
            "(final-epoch validation metric, mean over tuning seeds)"
        )


LIST_VALUED = ("milestones", "betas")  # settings whose value is a list: write [[...], [...]] for an axis


def _axis(where: str, key: str, value) -> list:
    vals = value if isinstance(value, list) else [value]
    if key in LIST_VALUED and isinstance(value, list) and value and not isinstance(value[0], list):
        vals = [value]
    if not vals:
        raise SpecError(f"{where}.{key}: empty axis (give at least one value)")
    return vals


def search_settings(spec: GridSpec):
    """The spec's ``[search]`` table, resolved (:class:`optlab.search.SearchSettings`)."""
    from .search import SearchError, parse_search

    try:
        return parse_search(str(spec.path) if spec.path else "<spec>", spec.data.get("search"))
    except SearchError as exc:
        raise SpecError(str(exc)) from exc


def _block_configs(
    spec: GridSpec, bi: int, bwhere: str, arm: str, hp_block: dict, optuna_configs: dict[int, list[dict]] | None
) -> list[dict]:
    """The hyperparameter configurations of one ``[[optimizer]]`` block under the spec's sampler."""
    from .search import SearchError, parse_space, sample_configs, stream_seed

    search = search_settings(spec)
    try:
        space = parse_space(bwhere, hp_block, search.sampler, LIST_VALUED)
        if search.sampler == "grid":
            return sample_configs(space, "grid")
        if search.sampler == "optuna":  # adaptive: the configurations asked so far (run_grid asks for more)
            return list((optuna_configs or {}).get(bi, []))
        return sample_configs(space, search.sampler, n=search.trials, seed=stream_seed(search.seed, bi, arm))
    except SearchError as exc:
        raise SpecError(str(exc)) from exc


def expand(spec: GridSpec, optuna_configs: dict[int, list[dict]] | None = None) -> list[Trial]:
    """All tuning-stage trials of ``spec``, validated (unknown axes, bad values name their key).

    The hyperparameter configurations of each ``[[optimizer]]`` block come from the spec's
    ``[search]`` sampler (:mod:`optlab.search`; default ``grid``, the product of the lists);
    for ``optuna`` they are the configurations its studies asked so far (``optuna_configs``,
    by block index; :func:`run_grid` asks for more). Evaluation-stage trials depend on the
    tuning results: see :func:`evaluation_trials`.
    """
    d = spec.data
    where = str(spec.path) if spec.path else "<spec>"
    seeds = _axis(where, "seeds", d.get("seeds", [0]))
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise SpecError(f"{where}.seeds: invalid seed {s!r}; expected integers >= 0")
    run = dict(d.get("run", {}))
    settings = d.get("setting") or [{}]
    blocks = d.get("optimizer")
    if not blocks:
        raise SpecError(f'{where}: no [[optimizer]] block; add at least one, e.g.\n[[optimizer]]\nname = "sgd-ph"')
    trials: list[Trial] = []
    seen: dict[str, str] = {}
    for si, setting in enumerate(settings):
        merged = {**run, **setting}
        for k in merged:
            if k not in RUN_AXES:
                table = f"setting[{si}]" if k in setting else "run"
                raise SpecError(f"{where}.{table}.{k}: " + unknown_name("run setting", k, RUN_AXES))
        run_axes = {k: _axis(f"{where}.run", k, v) for k, v in merged.items()}
        for combo in itertools.product(*run_axes.values()):  # run settings first: errors name their table
            runv = dict(zip(run_axes, combo))
            try:
                RunConfig.from_dict({**runv, "optimizer": "sgd"}).validate_run()
            except (ValueError, KeyError, TypeError) as exc:
                bad = next((k for k in runv if f"{k}=" in str(exc) or repr(k) in str(exc)), None)
                table = f"setting[{si}]" if bad in setting or (bad is None and setting) else "run"
                msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                raise SpecError(f"{where}.{table}: {msg}") from exc
        for bi, block in enumerate(blocks):
            bwhere = f"{where}.optimizer[{bi}]"
            if "name" not in block:
                raise SpecError(f"{bwhere}: missing 'name' (one of {', '.join(api.optimizer_names())})")
            oname = block["name"]
            if not isinstance(oname, str) or oname not in api.optimizer_names():
                raise SpecError(f"{bwhere}.name: " + unknown_name("optimizer", oname, api.optimizer_names()))
            arm = block.get("label", oname)
            if not isinstance(arm, str) or not NAME_RE.match(arm):
                raise SpecError(
                    f"{bwhere}.label: invalid label {arm!r}; expected 1-100 letters, digits, '.', '_' "
                    "or '-' (it names this optimizer arm in comparisons)"
                )
            hp_block = {k: v for k, v in block.items() if k not in BLOCK_KEYS}
            entry = api.optimizer_entry(oname)
            known = entry.hparams
            for k in hp_block:
                if k not in known and not entry.open_hparams:
                    raise SpecError(f"{bwhere}.{k}: " + unknown_name(f"axis for {oname}:", k, known))
            hp_configs = _block_configs(spec, bi, bwhere, arm, hp_block, optuna_configs)
            for k in hp_block:
                if k not in known and hp_configs:  # an option the preset forwards (e.g. to its estimator): alone
                    _check_hparams(f"{bwhere}.{k}: {oname}", oname, {k: hp_configs[0][k]})
            for runv, hp in itertools.product(
                [dict(zip(run_axes, c)) for c in itertools.product(*run_axes.values())], hp_configs
            ):
                hp = {k: hp[k] for k in hp_block}  # the block's order
                _check_hparams(bwhere, oname, hp)
                for seed in seeds:
                    cfg = RunConfig.from_dict({**runv, "optimizer": oname, "hparams": hp, "seed": seed})
                    try:
                        cfg.validate()
                    except (ValueError, KeyError) as exc:
                        raise SpecError(f"{bwhere}: {exc}") from exc
                    c = cfg.to_dict()
                    tid = trial_id(c)
                    if tid in seen:
                        if seen[tid] != arm:
                            raise SpecError(
                                f"{bwhere}: arm {arm!r} repeats a configuration of arm {seen[tid]!r} "
                                f"({Trial(tid, c).label}); give the arms different settings"
                            )
                        continue
                    seen[tid] = arm
                    trials.append(Trial(tid, c, arm=arm))
    return trials


def selection_key(config: dict, arm: str) -> tuple[str, str, str]:
    """What one selection is made within: (task, model, arm)."""
    return config["task"], config["model"], arm


def config_label(config: dict) -> str:
    """A configuration across seeds: everything in the run config but the seed."""
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


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
                config_label(t.config),
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
    by_label = {config_label(t.config): t.config for t in tuning}
    complete: dict[tuple, bool] = {}
    for t in tuning:
        key = selection_key(t.config, t.arm)
        complete[key] = complete.get(key, True) and t.id in records
    keys = {selection_key(t.config, t.arm) for t in tuning}
    doms = {k: domains[k[2]] for k in keys if k[2] in domains} if domains else None
    sel = select(observations(tuning, records, metric), SELECT_METRICS[metric], domains=doms)
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
    an :class:`~optlab.selection.AxisRange` for ``uniform``/``log_uniform``/``int_uniform``, the
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
    (:func:`optlab.selection.extension_configs`), on the same tuning seeds; proposals the optimizer
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
                    _check_hparams(where, s["config"]["optimizer"], hp)
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
    extended = {}
    for t in extra:
        extended.setdefault(selection_key(t.config, t.arm), set()).add(config_label(t.config))
    trials, waiting = [], []
    for key, s in sel.items():
        if not s["complete"] or key in extending:
            waiting.append("/".join(key))
            continue
        if s["config"] is None:
            continue  # every tuning trial failed: nothing to evaluate (the report shows the failures)
        selection = {
            "metric": f"final_{proto['select']}",
            "tuning_seeds": s["tuning_seeds"],
            "score": s["score"],
            "configs_tried": s["configs_tried"],
            "configs_extended": len(extended.get(key, ())),
            "config": config_label({**s["config"], "seed": 0}),
        }
        for seed in proto["evaluation_seeds"]:
            c = {**s["config"], "seed": seed}
            trials.append(Trial(trial_id(c), c, arm=key[2], stage="evaluation", selection=selection))
    return trials, waiting


_BUILT_OK: set[str] = set()  # (optimizer, hyperparameters) already built successfully in this process


def _check_hparams(where: str, name: str, hp: dict) -> None:
    """Build the optimizer on a tiny BatchNorm model: every bad value fails here, named.

    A combination that built once is not built again (``expand`` checks every grid cell,
    and most cells of a large grid repeat a combination already seen)."""
    key = json.dumps([name, hp], sort_keys=True, default=repr)
    if key in _BUILT_OK:
        return
    from torch import nn

    probe = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            api.optimizer(name, probe, **hp)
    except (ValueError, TypeError, ImportError) as exc:
        raise SpecError(f"{where}: {exc}") from exc
    _BUILT_OK.add(key)


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a grid run; ``counts`` says what finished (everything written stays valid)."""

    def __init__(self, counts: dict):
        super().__init__("grid run interrupted")
        self.counts = counts


def default_results_dir(spec: GridSpec) -> Path:
    return Path(spec.data.get("results") or Path("results") / spec.name)


def _todo(store: Store, trials: list[Trial], done: dict[str, dict], retry_failed: bool) -> list[Trial]:
    todo = []
    for t in trials:
        if t.id in done:
            if retry_failed and done[t.id]["status"] == "failed":
                store.quarantine(store.trials / f"{t.id}.json", "failed; rerun by --retry-failed")
                todo.append(t)
            continue
        todo.append(t)
    return todo


class _Reporter:
    """Progress of a grid run: a tqdm bar on a terminal; otherwise (a log file, CI, a pipe) one line per
    finished trial, no carriage returns. Also feeds each finished trial's stored record to the sinks."""

    def __init__(self, spec: GridSpec, store: Store, total: int, initial: int, progress: bool, sinks: list):
        from tqdm.auto import tqdm

        self.store, self.total, self.n, self.sinks = store, total, initial, sinks
        self.counts: dict = {}
        self.tty = sys.stdout.isatty() and os.environ.get("OPTLAB_NO_PROGRESS") != "1"
        self.lines = progress and not self.tty
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=f"grid {spec.name}",
            unit="trial",
            disable=not (progress and self.tty),
            dynamic_ncols=True,
        )
        self._sink_errors: set[str] = set()

    def finished(self, trial: Trial, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        self.n += 1
        self.bar.update(1)
        self.bar.set_postfix(self.counts, refresh=False)
        rec = None
        if status in ("ok", "diverged", "failed") and (self.sinks or self.lines):
            try:
                rec = self.store.read(trial.id)
            except (OSError, ValueError):
                rec = None
        if self.lines:
            secs = f"  {rec['finished'] - rec['started']:.1f}s" if rec and rec.get("started") else ""
            print(f"[{self.n}/{self.total}] {status:<8} {trial.label}{secs}", flush=True)
        if rec is not None:
            self.to_sinks(rec)

    def to_sinks(self, rec: dict) -> None:
        for sink in self.sinks:
            try:
                sink.write(rec)
            except Exception as exc:  # a sink never stops a grid: the store has the result
                key = type(sink).__name__
                if key not in self._sink_errors:
                    self._sink_errors.add(key)
                    warnings.warn(
                        f"sink {key} failed ({type(exc).__name__}: {exc}); the store still has every "
                        "result: rerun `optlab grid run` to replay it into the sinks",
                        RuntimeWarning,
                        stacklevel=2,
                    )

    def grow(self, n: int) -> None:
        """``n`` more trials than the total announced (the grid extension adds them as it goes)."""
        self.total += n
        self.bar.total = self.total
        self.bar.refresh()

    def skipped(self, n: int) -> None:
        self.n += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                pass


def _run_trials(store: Store, todo: list[Trial], ex, threads: int | None, rep: _Reporter) -> None:
    if not todo:
        return
    by_id = {t.id: t for t in todo}
    for tid, status in ex.run(str(store.root), todo, threads):
        rep.finished(by_id[tid], status)


def run_grid(
    spec: GridSpec | str | Path,
    *,
    workers: int | None = None,
    results: str | Path | None = None,
    retry_failed: bool = False,
    threads: int | None = None,
    progress: bool = True,
    executor: str | None = None,
    executor_options: dict | None = None,
) -> dict:
    """Run every missing trial of ``spec``; returns counts by outcome.

    Trials run on the spec's ``[executor]`` (default ``local``) or ``executor`` with
    ``executor_options`` (:mod:`optlab.executors`; ``workers`` is the local pool's size).
    Every finished trial is mirrored into the spec's ``[sinks]`` (:mod:`optlab.sinks`), and
    trials already in the store are replayed into them first, so sinks catch up after a crash.

    With a ``[protocol]``, the tuning stage runs first; then each (task, model, arm)'s
    configuration selected on validation (:func:`select_configs`) runs on the fresh
    evaluation seeds. Both stages are resumable: rerunning skips what is done.
    """
    if not isinstance(spec, GridSpec):
        spec = load_spec(spec)
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ValueError(f"invalid workers={workers!r}; expected an integer >= 1")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"invalid threads={threads!r}; expected an integer >= 1")
    where = f"{spec.path or '<spec>'}.executor"
    table = spec.data.get("executor") or {}
    chosen = executor or table.get("name", "local")
    extra = dict(executor_options or {})
    if workers is not None:
        if chosen != "local":
            raise ValueError(
                f"--workers sizes the local process pool; executor {chosen!r} takes its parallelism "
                "from its own options (ray: the cluster's CPUs / cpus_per_trial; submitit: "
                "array_parallelism)"
            )
        extra["workers"] = workers
    ex = _executor_from_table(where, table, name=executor, extra=extra)
    search = search_settings(spec)
    store = Store(results or default_results_dir(spec)).init(spec.text)
    studies = _optuna_studies(spec, store, search) if search.sampler == "optuna" else None
    trials = expand(spec, {bi: s.configs() for bi, s in studies.items()} if studies else None)
    quarantined = store.quarantine_corrupt()
    done, _ = store.scan()
    todo = _todo(store, trials, done, retry_failed)
    proto = spec.protocol
    n_eval = len({selection_key(t.config, t.arm) for t in trials}) * len(proto["evaluation_seeds"]) if proto else 0
    threads = threads or ex.default_threads()
    counts: dict = {"skipped_complete": len(trials) - len(todo)}
    if quarantined:
        counts["quarantined"] = len(quarantined)
    from .sinks import SinkError, make_sinks

    try:
        sinks = make_sinks(store.root, spec.data.get("sinks"), f"{spec.path or '<spec>'}.sinks")
    except SinkError as exc:
        raise SpecError(str(exc)) from exc
    total = (_optuna_total(spec, search) if studies else len(trials)) + n_eval
    rep = _Reporter(spec, store, total, len(trials) - len(todo), progress, sinks)
    try:
        for rec in done.values():  # sinks catch up with the store (each skips trials it already holds)
            rep.to_sinks(rec)
        _run_trials(store, todo, ex, threads, rep)
        if studies:  # adaptive search: rounds of asked configurations until every block's budget is spent
            trials = _optuna_tuning(spec, store, studies, search, ex, threads, rep, retry_failed)
        if proto is not None and proto["extend_edges"]:
            _run_extensions(spec, store, trials, ex, threads, rep, retry_failed, counts)
        if proto is not None:
            done, _ = store.scan()
            etrials, waiting = evaluation_trials(spec, trials, done)
            etodo = _todo(store, etrials, done, retry_failed)
            counts["skipped_complete"] += len(etrials) - len(etodo)
            rep.skipped(len(etrials) - len(etodo))
            _run_trials(store, etodo, ex, threads, rep)
            if waiting:
                counts["evaluation_waiting"] = ", ".join(waiting)
    except KeyboardInterrupt as exc:
        rep.close()
        raise GridInterrupted(_merge(counts, rep.counts, store)) from exc
    finally:
        rep.close()
    return _merge(counts, rep.counts, store)


def _run_extensions(
    spec: GridSpec, store: Store, trials: list[Trial], ex, threads, rep: _Reporter, retry_failed, counts
):
    """Extension rounds (:func:`extension_trials`) until none is left to run: each pass runs the trials
    the stored results call for; a pass that gets no new result (held by another live process) stops."""
    known: set[str] = set()
    while True:
        done, _ = store.scan()
        extra, _ = extension_trials(spec, trials, done)
        todo = _todo(store, extra, done, retry_failed)
        fresh = [t for t in extra if t.id not in known]
        counts["skipped_complete"] += len(fresh) - len([t for t in todo if t.id not in known])
        known |= {t.id for t in extra}
        if not todo:
            counts["extension_trials"] = len(extra)
            return
        rep.grow(len(todo))
        _run_trials(store, todo, ex, threads, rep)
        after, _ = store.scan()
        if not any(t.id in after for t in todo):
            counts["extension_trials"] = len(extra)
            return


def _optuna_spaces(spec: GridSpec) -> dict[int, tuple[str, dict, list[str]]]:
    """``{block index: (arm, search space, hparam keys in block order)}`` for the optuna sampler."""
    from .search import SearchError, parse_space

    where = str(spec.path) if spec.path else "<spec>"
    out = {}
    for bi, block in enumerate(spec.data.get("optimizer") or []):
        hp_block = {k: v for k, v in block.items() if k not in BLOCK_KEYS}
        try:
            space = parse_space(f"{where}.optimizer[{bi}]", hp_block, "optuna", LIST_VALUED)
        except SearchError as exc:
            raise SpecError(str(exc)) from exc
        out[bi] = (block.get("label", block.get("name")), space, list(hp_block))
    return out


def _optuna_studies(spec: GridSpec, store: Store, search, create: bool = True) -> dict:
    """One Optuna study per optimizer block in ``RESULTS/optuna.db`` (created or resumed)."""
    from .search import OptunaSearch, SearchError, stream_seed

    db = store.root / "optuna.db"
    if not create and not db.exists():
        return {}
    out = {}
    for bi, (arm, space, _) in _optuna_spaces(spec).items():
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


def _optuna_total(spec: GridSpec, search) -> int:
    """Tuning trials once every study has spent its budget (trials per configuration x budget)."""
    from .search import sample_configs

    one = {bi: sample_configs(space, "random", n=1, seed=0) for bi, (_, space, _) in _optuna_spaces(spec).items()}
    return len(expand(spec, one)) * search.trials


def _optuna_tuning(spec: GridSpec, store: Store, studies: dict, search, ex, threads, rep, retry_failed) -> list[Trial]:
    """Ask each block's study for configurations, run their trials, tell each configuration's mean
    final ``search.metric`` (over its seeds and settings), until every budget is spent."""
    spaces = _optuna_spaces(spec)
    while True:
        asked = {bi: s.ask() for bi, s in studies.items()}
        if not any(asked.values()):
            break
        round_trials = expand(spec, {bi: [hp for _, hp in a] for bi, a in asked.items()})
        done, _ = store.scan()
        _run_trials(store, _todo(store, round_trials, done, retry_failed), ex, threads, rep)
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


def tuning_trials(spec: GridSpec, results: str | Path) -> list[Trial]:
    """The tuning trials of ``spec`` known for the results directory ``results``: :func:`expand`,
    and for ``optuna`` search the configurations its studies there have asked so far."""
    search = search_settings(spec)
    if search.sampler != "optuna":
        return expand(spec)
    studies = _optuna_studies(spec, Store(results), search, create=False)
    return expand(spec, {bi: s.configs() for bi, s in studies.items()})


def _merge(counts: dict, finished: dict, store: Store) -> dict:
    out = dict(counts)
    for k, v in finished.items():
        out[k] = out.get(k, 0) + v
    out["results"] = str(store.root)
    return out


def _count(trials: list[Trial], good: dict, bad_ids: set, live: set) -> dict:
    out = {"total": len(trials), "ok": 0, "diverged": 0, "failed": 0, "running": 0, "missing": 0, "invalid": 0}
    for t in trials:
        if t.id in good:
            out[good[t.id]["status"]] += 1
        elif t.id in live:
            out["running"] += 1
        elif t.id in bad_ids:
            out["invalid"] += 1
        else:
            out["missing"] += 1
    return out


def grid_status(spec: GridSpec | str | Path, results: str | Path | None = None) -> dict:
    """Counts of done / diverged / failed / running / missing / invalid trials of ``spec``.

    The top-level counts are the tuning stage's (the whole grid without a protocol);
    ``evaluation`` holds the evaluation stage's (``waiting``: keys whose tuning is unfinished,
    so their selected configuration is not known yet); ``invalid_files`` names every trial
    file that does not validate.
    """
    if not isinstance(spec, GridSpec):
        spec = load_spec(spec)
    store = Store(results or default_results_dir(spec))
    trials = tuning_trials(spec, store.root)
    good, bad = store.scan()
    live = store.live_claims()
    bad_ids = {exc.path.stem for exc in bad}
    extra, _ = extension_trials(spec, trials, good)
    out: dict = {**_count(trials + extra, good, bad_ids, live), "results": str(store.root)}
    if extra:
        out["extension"] = len(extra)
    if spec.protocol is not None:
        etrials, waiting = evaluation_trials(spec, trials, good)
        ev = _count(etrials, good, bad_ids, live)
        ev["total"] = len({selection_key(t.config, t.arm) for t in trials}) * len(spec.protocol["evaluation_seeds"])
        ev["missing"] = ev["total"] - sum(ev[k] for k in ("ok", "diverged", "failed", "running", "invalid"))
        ev["waiting"] = waiting
        out["evaluation"] = ev
    out["invalid_files"] = [f"{exc.path.name}: {exc.problem}" for exc in bad]
    return out
