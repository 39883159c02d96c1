"""Hyperparameter search: spaces per hyperparameter and samplers with an equal budget per optimizer.

A search space is written in an ``[[optimizer]]`` block of a spec, one entry per
hyperparameter::

    lr = {log_uniform = [1e-3, 1.0]}     # exp(U(log a, log b))
    momentum = {uniform = [0.8, 0.99]}    # U(a, b)
    refresh = {int_uniform = [1, 10]}     # integers a..b, each equally likely
    hessian_momentum = {choice = [0.0, 0.9]}
    weight_decay = 5e-4                   # fixed
    tau = [0.1, 1.0]                      # a list: an axis for `grid`, a choice for the others

and a ``[search]`` table picks the sampler::

    [search]
    sampler = "halton"   # grid | random | halton | optuna
    trials = 16          # configurations per optimizer block (every optimizer gets the same budget)
    seed = 0

* ``grid`` -- the cartesian product of the lists (today's behaviour; no distributions).
* ``random`` -- independent draws (``numpy.random.Generator``).
* ``halton`` -- a scrambled Halton sequence (``scipy.stats.qmc.Halton``), quasi-random and
  space-filling as in AlgoPerf's tuning rulesets (Kasimbeg et al. 2024; Halton 1964), mapped
  through each dimension's inverse CDF.
* ``optuna`` -- TPE (Bergstra et al. 2011; ``optuna.samplers.TPESampler``), asked in rounds
  of ``batch`` configurations per optimizer block, told the objective of each: the final-epoch
  ``metric`` (default ``val_acc``, ``direction = "maximize"``; never a test metric) averaged
  over the configuration's seeds and settings; a configuration with no finite value
  (diverged / failed everywhere) is told as failed and counts against the budget. The
  study lives in SQLite (``RESULTS/optuna.db``) and a rerun resumes it: finished trials
  count against the budget, trials asked but never told (driver killed) are asked again
  with the same parameters. Pruning is off (``pruning = true`` would enable a median
  pruner for samplers that report per-epoch values; the runner reports only final values).

Every sampler is deterministic given ``seed``; each optimizer block draws from its own
stream (seeded by ``seed`` and the block's index and name), so adding an optimizer does
not change the configurations of the others.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optlab.optim.hparams import unknown_name

__all__ = [
    "Uniform",
    "LogUniform",
    "IntUniform",
    "Choice",
    "SAMPLERS",
    "SearchError",
    "SearchSettings",
    "parse_space",
    "parse_search",
    "sample_configs",
    "OptunaSearch",
]

SAMPLERS = ("grid", "random", "halton", "optuna")
SEARCH_KEYS = ("sampler", "trials", "seed", "metric", "direction", "batch", "pruning")


class SearchError(ValueError):
    pass


# -------------------------------------------------------------- dimensions
@dataclass(frozen=True)
class Uniform:
    """U(low, high)."""

    low: float
    high: float

    def from_unit(self, u: float) -> float:
        return float(self.low + u * (self.high - self.low))


@dataclass(frozen=True)
class LogUniform:
    """exp(U(log low, log high)): equal mass per decade."""

    low: float
    high: float

    def from_unit(self, u: float) -> float:
        return float(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))


@dataclass(frozen=True)
class IntUniform:
    """Integers low..high (inclusive), each with probability 1/(high-low+1)."""

    low: int
    high: int

    def from_unit(self, u: float) -> int:
        return int(min(self.high, self.low + math.floor(u * (self.high - self.low + 1))))


@dataclass(frozen=True)
class Choice:
    """One of ``values``, each with probability 1/len(values)."""

    values: tuple

    def from_unit(self, u: float):
        return self.values[min(len(self.values) - 1, int(math.floor(u * len(self.values))))]


Dimension = Uniform | LogUniform | IntUniform | Choice
KINDS = {"uniform": Uniform, "log_uniform": LogUniform, "int_uniform": IntUniform, "choice": Choice}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_dimension(where: str, key: str, value) -> Dimension | None:
    """A ``{kind = ...}`` table -> a dimension; anything else -> None (a fixed value or a list)."""
    if not isinstance(value, dict):
        return None
    if len(value) != 1:
        raise SearchError(
            f"{where}.{key}: a search dimension is one of {{{' | '.join(f'{k} = ...' for k in KINDS)}}}; got {value!r}"
        )
    ((kind, arg),) = value.items()
    if kind not in KINDS:
        raise SearchError(f"{where}.{key}: " + unknown_name("distribution", kind, KINDS))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise SearchError(f"{where}.{key}: choice needs a non-empty list of values; got {arg!r}")
        return Choice(tuple(arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(_number(a) for a in arg) and arg[0] < arg[1]):
        raise SearchError(f"{where}.{key}: {kind} needs [low, high] with low < high; got {arg!r}")
    if kind == "log_uniform" and arg[0] <= 0:
        raise SearchError(f"{where}.{key}: log_uniform needs 0 < low < high; got {arg!r}")
    if kind == "int_uniform":
        if not all(isinstance(a, int) for a in arg):
            raise SearchError(f"{where}.{key}: int_uniform needs integer bounds; got {arg!r}")
        return IntUniform(int(arg[0]), int(arg[1]))
    return KINDS[kind](float(arg[0]), float(arg[1]))


def parse_space(where: str, block: dict, sampler: str, list_valued: Sequence[str] = ()) -> dict[str, Any]:
    """An optimizer block (without ``name``) -> ``{hparam: Dimension | fixed value}``.

    A list is an axis: for ``grid`` it stays a list of values, for the other samplers it
    becomes a ``Choice``. Keys in ``list_valued`` take a list as one value (``betas``).
    """
    space: dict[str, Any] = {}
    for key, value in block.items():
        dim = parse_dimension(where, key, value)
        if dim is not None:
            if sampler == "grid":
                raise SearchError(
                    f"{where}.{key}: sampler 'grid' needs explicit values (a list); "
                    f"a distribution needs [search] sampler = 'random', 'halton' or 'optuna'"
                )
            space[key] = dim
        elif isinstance(value, list) and not (key in list_valued and value and not isinstance(value[0], list)):
            if not value:
                raise SearchError(f"{where}.{key}: empty axis (give at least one value)")
            space[key] = list(value) if sampler == "grid" else Choice(tuple(value))
        else:
            space[key] = value
    return space


@dataclass(frozen=True)
class SearchSettings:
    sampler: str = "grid"
    trials: int | None = None
    seed: int = 0
    metric: str = "val_acc"
    direction: str = "maximize"
    batch: int = 1
    pruning: bool = False


def parse_search(where: str, table: dict | None) -> SearchSettings:
    """The spec's ``[search]`` table, validated (unknown keys named with the valid ones)."""
    table = dict(table or {})
    for k in table:
        if k not in SEARCH_KEYS:
            raise SearchError(f"{where}.search.{k}: " + unknown_name("key", k, SEARCH_KEYS, show_name=False))
    s = SearchSettings(**table)
    if s.sampler not in SAMPLERS:
        raise SearchError(f"{where}.search.sampler: " + unknown_name("sampler", s.sampler, SAMPLERS))
    if s.sampler != "grid" and (not isinstance(s.trials, int) or isinstance(s.trials, bool) or s.trials < 1):
        raise SearchError(
            f"{where}.search.trials: sampler {s.sampler!r} needs a per-optimizer budget, "
            f"an integer >= 1; got {s.trials!r}"
        )
    if s.sampler == "grid" and s.trials is not None:
        raise SearchError(
            f"{where}.search.trials: sampler 'grid' runs the whole product; drop 'trials' "
            "or pick sampler = 'random' / 'halton' / 'optuna'"
        )
    if not isinstance(s.seed, int) or s.seed < 0:
        raise SearchError(f"{where}.search.seed: invalid seed {s.seed!r}; expected an integer >= 0")
    if s.direction not in ("maximize", "minimize"):
        raise SearchError(f"{where}.search.direction: invalid {s.direction!r}; expected 'maximize' or 'minimize'")
    if not isinstance(s.batch, int) or s.batch < 1:
        raise SearchError(f"{where}.search.batch: invalid {s.batch!r}; expected an integer >= 1")
    if not isinstance(s.pruning, bool):
        raise SearchError(f"{where}.search.pruning: expected true or false; got {s.pruning!r}")
    return s


# ---------------------------------------------------------------- sampling
def stream_seed(seed: int, index: int, name: str) -> int:
    """A per-optimizer-block seed: independent of the other blocks."""
    return int(np.random.SeedSequence([seed, index, zlib.crc32(name.encode())]).generate_state(1)[0])


def _dims(space: dict) -> list[str]:
    return [k for k, v in space.items() if isinstance(v, (Uniform, LogUniform, IntUniform, Choice))]


def sample_configs(space: dict, sampler: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """``n`` configurations from ``space`` (``grid``: the whole product, ``n`` ignored)."""
    fixed = {
        k: v for k, v in space.items() if k not in _dims(space) and not (sampler == "grid" and isinstance(v, list))
    }
    if sampler == "grid":
        axes = {k: v for k, v in space.items() if isinstance(v, list)}
        return [{**fixed, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]
    dims = _dims(space)
    if sampler == "random":
        rng = np.random.default_rng(seed)
        units = rng.random((n, len(dims)))
    elif sampler == "halton":
        from scipy.stats import qmc

        units = qmc.Halton(d=max(1, len(dims)), scramble=True, seed=seed).random(n)[:, : len(dims)]
    else:
        raise SearchError(
            f"sample_configs: sampler {sampler!r} is not a static sampler; valid: grid, random, halton "
            "(optuna is adaptive: use OptunaSearch)"
        )
    return [{**fixed, **{k: space[k].from_unit(float(u[j])) for j, k in enumerate(dims)}} for u in units]


# ------------------------------------------------------------------ optuna
class OptunaSearch:
    """One Optuna study (TPE) per optimizer block, persisted in SQLite and resumed.

    ``ask()`` returns up to ``batch`` configurations ``(number, hparams)``: first those
    asked by an earlier driver but never told (same parameters), then new ones, never
    more than ``budget`` in all. ``tell(number, value)`` records a finished configuration
    (``None``: failed / diverged without a finite metric).
    """

    def __init__(
        self,
        space: dict,
        storage: str | Path,
        study_name: str,
        budget: int,
        seed: int = 0,
        direction: Literal["maximize", "minimize"] = "maximize",
        batch: int = 1,
        pruning: bool = False,
    ):
        try:
            import optuna
        except ImportError as exc:
            raise SearchError(
                "sampler 'optuna' needs the 'optuna' package: pip install 'optlab[optuna]' (with -c constraints.txt)"
            ) from exc
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.space, self.budget, self.batch = optuna, space, budget, batch
        self.fixed = {k: v for k, v in space.items() if k not in _dims(space)}
        storage = str(storage)
        url = storage if "://" in storage else f"sqlite:///{Path(storage).resolve()}"
        self.study = optuna.create_study(
            storage=url,
            study_name=study_name,
            direction=direction,
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner() if pruning else optuna.pruners.NopPruner(),
        )
        # a resumed study must not replay the random stream of its first session (it would ask for the
        # same configurations again): seed by the history length -- still deterministic given seed + history
        n = len(self.study.get_trials(deepcopy=False))
        if n:
            self.study.sampler = optuna.samplers.TPESampler(
                seed=int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
            )
        self._handed: set[int] = set()

    def _distributions(self) -> dict:
        d = self.optuna.distributions
        out = {}
        for k in _dims(self.space):
            v = self.space[k]
            if isinstance(v, Uniform):
                out[k] = d.FloatDistribution(v.low, v.high)
            elif isinstance(v, LogUniform):
                out[k] = d.FloatDistribution(v.low, v.high, log=True)
            elif isinstance(v, IntUniform):
                out[k] = d.IntDistribution(v.low, v.high)
            else:
                out[k] = d.CategoricalDistribution(list(v.values))
        return out

    def counts(self) -> dict[str, int]:
        st = self.optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        return {
            "complete": sum(t.state == st.COMPLETE for t in trials),
            "failed": sum(t.state == st.FAIL for t in trials),
            "running": sum(t.state == st.RUNNING for t in trials),
        }

    def done(self) -> bool:
        c = self.counts()
        return c["complete"] + c["failed"] >= self.budget

    def ask(self) -> list[tuple[int, dict]]:
        st = self.optuna.trial.TrialState
        out: list[tuple[int, dict]] = []
        for frozen in self.study.get_trials(deepcopy=False, states=(st.RUNNING,)):
            if frozen.number not in self._handed and len(out) < self.batch:
                out.append((frozen.number, {**self.fixed, **frozen.params}))
        used = len(self.study.get_trials(deepcopy=False))
        dists = self._distributions()
        while len(out) < self.batch and used < self.budget:
            t = self.study.ask(dists)
            out.append((t.number, {**self.fixed, **t.params}))
            used += 1
        self._handed.update(n for n, _ in out)
        return out

    def tell(self, number: int, value: float | None) -> None:
        st = self.optuna.trial.TrialState
        if value is None or not math.isfinite(value):
            self.study.tell(number, state=st.FAIL)
        else:
            self.study.tell(number, float(value))

    def configs(self) -> list[dict]:
        """Every configuration the study has asked for (any state), in order."""
        return [{**self.fixed, **t.params} for t in self.study.get_trials(deepcopy=False)]

    def best(self) -> tuple[dict, float] | None:
        try:
            t = self.study.best_trial
        except ValueError:
            return None
        return {**self.fixed, **t.params}, t.value
