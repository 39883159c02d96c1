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

import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from optlab import api
from optlab.optim.hparams import unknown_name
from optlab.plugin import registry
from optlab.training.config import RUN_KEYS, RunConfig

from .checks import (  # the constants and SpecError stay importable from here
    EVAL_SEED_BASE,
    LIST_VALUED,
    PROTOCOL_KEYS,
    SELECT_DIRECTIONS,
    SpecError,
    axis_values,
    check_optimizer_builds,
    check_protocol,
)
from .search import SearchError, SearchSettings, parse_search, parse_space
from .trial import Trial, trial_id

__all__ = [
    "GridSpec",
    "ProtocolSettings",
    "ExecutorTable",
    "SpecError",
    "load_spec",
    "expand",
    "search_settings",
    "build_executor",
    "SELECT_DIRECTIONS",
    "PROTOCOL_KEYS",
    "EVAL_SEED_BASE",
    "LIST_VALUED",
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
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: an arm's default label is its optimizer's name, which may be qualified (``fisher:sgd-ef``)
ARM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


@dataclass(frozen=True)
class ProtocolSettings:
    """The two-stage protocol (``[protocol]``), resolved: fresh evaluation seeds and the validation
    metric each arm's configuration is selected on (a key of :data:`SELECT_DIRECTIONS`)."""

    evaluation_seeds: list[int]
    select: str = "val_acc"
    extend_edges: int = 0  # rounds of extending the grid beyond a selection on its edge (0: off)

    def __getitem__(self, key: str):  # mapping access, as code written against the former dict reads it
        return getattr(self, key)


@dataclass(frozen=True)
class ExecutorTable:
    """The spec's ``[executor]`` table: the executor's name and the options given for it (checked)."""

    name: str = "local"
    options: dict = field(default_factory=dict)


@dataclass
class GridSpec:
    """A grid spec, parsed once: the raw TOML (``data``, what the store keeps) and its tables as typed
    fields, resolved and checked at construction -- ``search``, ``executor``, ``sinks`` (``[(sink class,
    options)]``), ``protocol`` (None for a one-stage grid); ``seeds``, ``run``, ``settings`` and
    ``blocks`` (the ``[[optimizer]]`` tables) are checked value by value where trials are built
    (:func:`expand`), which names the bad key."""

    name: str
    path: Path | None
    text: str
    data: dict
    search: SearchSettings = field(init=False)
    executor: ExecutorTable = field(init=False)
    sinks: list = field(init=False)
    protocol: ProtocolSettings | None = field(init=False)
    _spaces: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        where = self.where
        try:
            self.search = parse_search(where, self.data.get("search"))
        except SearchError as exc:
            raise SpecError(str(exc)) from exc
        self.executor = _executor_table(f"{where}.executor", self.data.get("executor"))
        self.sinks = _sinks(f"{where}.sinks", self.data.get("sinks"))
        self.protocol = _protocol(self.data.get("protocol"))

    @property
    def targets(self) -> dict:
        """The ``[targets]`` table, parsed (:func:`optlab.grid.targets.parse_targets`): ``{workload: TargetSpec}``."""
        from .targets import parse_targets

        return parse_targets(self.where, self.data.get("targets"))

    @property
    def where(self) -> str:
        """How messages name this spec: its path, or ``<spec>`` for a spec given as text."""
        return str(self.path) if self.path else "<spec>"

    @property
    def seeds(self):
        return self.data.get("seeds", [0])

    @property
    def run(self) -> dict:
        return dict(self.data.get("run", {}))

    @property
    def settings(self) -> list[dict]:
        return self.data.get("setting") or [{}]

    @property
    def blocks(self) -> list[dict]:
        return self.data.get("optimizer") or []

    def block_space(self, bi: int) -> dict:
        """The search space of ``[[optimizer]]`` block ``bi`` under the spec's sampler, parsed once."""
        if bi not in self._spaces:
            hp_block = {k: v for k, v in self.blocks[bi].items() if k not in BLOCK_KEYS}
            try:
                self._spaces[bi] = parse_space(
                    f"{self.where}.optimizer[{bi}]", hp_block, self.search.sampler, LIST_VALUED
                )
            except SearchError as exc:
                raise SpecError(str(exc)) from exc
        return self._spaces[bi]


def _protocol(p: dict | None) -> ProtocolSettings | None:
    if p is None:
        return None
    seeds = p.get("evaluation_seeds", 20)
    if isinstance(seeds, int):
        seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + seeds))
    return ProtocolSettings(seeds, p.get("select", "val_acc"), p.get("extend_edges", 0))


def _executor_table(where: str, table: dict | None) -> ExecutorTable:
    """The ``[executor]`` table, its name and options checked against the registered executor."""
    if table is None:
        return ExecutorTable()
    table = dict(table)
    name = table.pop("name", "local")
    if not isinstance(name, str):
        raise SpecError(
            f"{where}.name: expected a string (one of {', '.join(sorted(registry.items('executor')))}), got {name!r}"
        )
    build_executor(where, ExecutorTable(name, table), build=False)
    return ExecutorTable(name, table)


def _sinks(where: str, table: dict | None) -> list:
    if table is None:
        return []
    from .sinks import SinkError, check_sinks

    try:
        return check_sinks(table, where)
    except SinkError as exc:
        raise SpecError(str(exc)) from exc


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
    check_protocol(where, data.get("protocol"), seeds)
    from .targets import parse_targets

    try:
        parse_targets(where, data.get("targets"))
    except ValueError as exc:
        raise SpecError(str(exc)) from exc
    return GridSpec(name, path, text, data)  # parses [search], [executor], [sinks] and [protocol]


def build_executor(
    where: str, table: ExecutorTable, name: str | None = None, extra: dict | None = None, build: bool = True
):
    """The executor of an ``[executor]`` table, ``name``/``extra`` overriding it (``build=False``: only check)."""
    from .executors import ExecutorError, check_executor_options, make_executor

    chosen = name or table.name
    options = table.options if chosen == table.name else {}  # the spec's options belong to the spec's executor
    options = {**options, **(extra or {})}
    try:
        if not build:
            check_executor_options(chosen, options, where)
            return None
        return make_executor(chosen, where=where, **options)
    except (ExecutorError, registry.RegistryError) as exc:
        msg = str(exc)
        raise SpecError(msg if msg.startswith(where) else f"{where}.name: {msg}") from exc


def search_settings(spec: GridSpec) -> SearchSettings:
    """The spec's ``[search]`` table, resolved (:class:`optlab.grid.search.SearchSettings`): ``spec.search``."""
    return spec.search


def _block_configs(
    spec: GridSpec, bi: int, bwhere: str, arm: str, hp_block: dict, optuna_configs: dict[int, list[dict]] | None
) -> list[dict]:
    """The hyperparameter configurations of one ``[[optimizer]]`` block under the spec's sampler."""
    from .search import block_seeds, sample_configs

    search = spec.search
    space = spec.block_space(bi)
    try:
        if search.sampler == "grid":
            return sample_configs(space, "grid")
        if search.sampler == "optuna":  # adaptive: the configurations asked so far (run_grid asks for more)
            return list((optuna_configs or {}).get(bi, []))
        seed = block_seeds(search.seed, spec.data.get("optimizer") or [])[bi]  # from content, not position
        return sample_configs(space, search.sampler, n=search.trials, seed=seed)
    except SearchError as exc:
        raise SpecError(str(exc)) from exc


def expand(spec: GridSpec, optuna_configs: dict[int, list[dict]] | None = None) -> list[Trial]:
    """All tuning-stage trials of ``spec``, validated (unknown axes, bad values name their key).

    The hyperparameter configurations of each ``[[optimizer]]`` block come from the spec's
    ``[search]`` sampler (:mod:`optlab.grid.search`; default ``grid``, the product of the lists);
    for ``optuna`` they are the configurations its studies asked so far (``optuna_configs``,
    by block index; :func:`run_grid` asks for more). Evaluation-stage trials depend on the
    tuning results: see :func:`evaluation_trials`.
    """
    where = spec.where
    seeds = axis_values(where, "seeds", spec.seeds)
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise SpecError(f"{where}.seeds: invalid seed {s!r}; expected integers >= 0")
    if not spec.blocks:
        raise SpecError(f'{where}: no [[optimizer]] block; add at least one, e.g.\n[[optimizer]]\nname = "sgd-ph"')
    trials: list[Trial] = []
    seen: dict[str, str] = {}  # trial id -> arm: a configuration repeated within an arm is one trial
    for si, setting in enumerate(spec.settings):
        run_axes = _run_axes(where, si, spec.run, setting)
        runs = [dict(zip(run_axes, c)) for c in itertools.product(*run_axes.values())]
        for bi, block in enumerate(spec.blocks):
            bwhere = f"{where}.optimizer[{bi}]"
            oname, arm, hp_block = _check_block(bwhere, block)
            hp_configs = _block_configs(spec, bi, bwhere, arm, hp_block, optuna_configs)
            known = api.optimizer_entry(oname).hparams
            for k in hp_block:
                if k not in known and hp_configs:  # an option the preset forwards (e.g. to its estimator): alone
                    check_optimizer_builds(f"{bwhere}.{k}: {oname}", oname, {k: hp_configs[0][k]})
            for runv, hp in itertools.product(runs, hp_configs):
                hp = {k: hp[k] for k in hp_block}  # the block's order
                check_optimizer_builds(bwhere, oname, hp)
                for seed in seeds:
                    trial = _trial(bwhere, arm, {**runv, "optimizer": oname, "hparams": hp, "seed": seed}, seen)
                    if trial is not None:
                        trials.append(trial)
    return trials


def _run_axes(where: str, si: int, run: dict, setting: dict) -> dict[str, list]:
    """The run-setting axes of ``[run]`` merged with ``setting[si]``, every combination checked (an error
    names the table it comes from)."""
    merged = {**run, **setting}
    for k in merged:
        if k not in RUN_AXES:
            table = f"setting[{si}]" if k in setting else "run"
            raise SpecError(f"{where}.{table}.{k}: " + unknown_name("run setting", k, RUN_AXES))
    run_axes = {k: axis_values(f"{where}.run", k, v) for k, v in merged.items()}
    for combo in itertools.product(*run_axes.values()):  # run settings first: errors name their table
        runv = dict(zip(run_axes, combo))
        try:
            RunConfig.from_dict({**runv, "optimizer": "sgd"}).validate_run()
        except (ValueError, KeyError, TypeError) as exc:
            bad = next((k for k in runv if f"{k}=" in str(exc) or repr(k) in str(exc)), None)
            table = f"setting[{si}]" if bad in setting or (bad is None and setting) else "run"
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise SpecError(f"{where}.{table}: {msg}") from exc
    return run_axes


def _check_block(bwhere: str, block: dict) -> tuple[str, str, dict]:
    """``(optimizer name, arm label, hyperparameter axes)`` of an ``[[optimizer]]`` block: the optimizer
    registered, the label a valid name, every axis a hyperparameter it declares (unless it forwards options)."""
    if "name" not in block:
        raise SpecError(f"{bwhere}: missing 'name' (one of {', '.join(api.optimizer_names())})")
    oname = block["name"]
    if not isinstance(oname, str):
        raise SpecError(f"{bwhere}.name: " + unknown_name("optimizer", oname, api.optimizer_names()))
    try:  # short or qualified (<plugin>:<name>); unknown or ambiguous names list the choices
        entry = api.optimizer_entry(oname)
    except registry.RegistryError as exc:
        raise SpecError(f"{bwhere}.name: {exc}") from exc
    arm = block.get("label", oname)
    if not isinstance(arm, str) or not (NAME_RE.match(arm) or ("label" not in block and ARM_RE.match(arm))):
        raise SpecError(
            f"{bwhere}.label: invalid label {arm!r}; expected 1-100 letters, digits, '.', '_' "
            "or '-' (it names this optimizer arm in comparisons)"
        )
    hp_block = {k: v for k, v in block.items() if k not in BLOCK_KEYS}
    for k in hp_block:
        if k not in entry.hparams and not entry.open_hparams:
            raise SpecError(f"{bwhere}.{k}: " + unknown_name(f"axis for {oname}:", k, entry.hparams))
    return oname, arm, hp_block


def _trial(bwhere: str, arm: str, config: dict, seen: dict[str, str]) -> Trial | None:
    """The trial of one configuration (its :class:`RunConfig` checked), or None when this arm already
    has it; another arm with the same configuration is an error."""
    cfg = RunConfig.from_dict(config)
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
        return None
    seen[tid] = arm
    return Trial(tid, c, arm=arm, run=cfg)
