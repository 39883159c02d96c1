"""The two-stage comparison protocol: the one selection rule and what it drives.

Each (task, model, arm) selects its configuration on the tuning seeds' validation metric
(:func:`select`, through :func:`select_configs`), a selection on an edge of its grid may extend
the grid (:func:`extension_trials`, ``[protocol] extend_edges``), then the selected configuration
runs on fresh evaluation seeds (:func:`evaluation_trials`); those stages over a spec's trials live
in :mod:`optlab.grid.stages`. The analysis (report, tables) selects with the same :func:`select`.
See ``docs/analysis.md`` for the protocol and its verdicts.

Both the grid runner (which configuration the evaluation stage runs) and the analysis
(what the report says was selected) call :func:`select`; nothing else chooses a
configuration. Pure functions over plain values: no torch, no pandas, no store.

**The rule.** Within one *cell* (task, model, arm -- or any key the caller groups by),
each configuration (identified by its label, :func:`optlab.grid.config_key`) has one
observation per tuning seed: the final-epoch validation metric, or nothing when the
trial did not finish ``ok`` with a finite value (diverged, failed, missing).

1. *Score* = the arithmetic mean of the finite values over the configuration's seeds,
   ``sum(values) / len(values)`` in seed order (the same float every caller computes).
2. *Eligible* = every seed of the configuration has a finite value **and** it has as many
   seeds as the cell's most complete configuration (equal seed counts: a configuration
   with fewer seeds has a noisier mean and more chances to win by luck).
3. The best score among the eligible configurations wins (``mode="max"`` for accuracies,
   ``"min"`` for losses). If no configuration is eligible, the best score among those
   with at least one finite value wins (``eligible=False`` says so).
4. *Ties*: scores within ``tol`` of the best (default 0: exactly equal) tie; the smallest
   label in string order wins, so the choice is deterministic and the same in every
   process. ``n_tied`` counts the tied configurations.

Test metrics are never an input: callers pass validation values only.

**Edges** (issue 20; Choi et al. 2019, "On Empirical Comparisons of Optimizers": rankings
flip with the search space). For every *tuned numeric axis* of a cell -- a hyperparameter
with at least two distinct numeric values among the configurations tried -- the selected
value is *on an edge* when it is the smallest (``side="low"``) or largest (``side="high"``)
value tried. For an axis sampled from a range ``[low, high]`` (``[search]``:
``uniform``/``log_uniform``/``int_uniform``) it is on an edge when it lies within the outer
tenth of the range, measured in the axis' own scale (``log`` for ``log_uniform``). A grid
axis on an edge gets an *extension proposal*: the next value(s) of its progression beyond
the edge -- geometric (ratio of the two outermost values on that side) when the values are
positive and closer to a geometric than to an arithmetic progression, else linear (their
difference); never below 0 when every value tried is >= 0, integers stay integers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Observation",
    "AxisRange",
    "Edge",
    "Selection",
    "select",
    "axis_edges",
    "progression",
    "next_values",
    "selection_rows",
    "extension_configs",
    "stability",
    "SELECTION_COLUMNS",
    "EDGE_FRACTION",
    "selection_key",
    "config_key",
]


def selection_key(config: dict, arm: str) -> tuple[str, str, str]:
    """What one selection is made within: (task, model, arm)."""
    return config["task"], config["model"], arm


def config_key(config: dict) -> str:
    """A configuration across seeds: everything in the run config but the seed."""
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


#: a sampled value within this fraction of the range from a bound (in the axis' scale) is on an edge
EDGE_FRACTION = 0.1


@dataclass(frozen=True)
class Observation:
    """One tuning trial as the rule sees it.

    ``key``: the cell (e.g. ``(task, model, arm)``); ``config``: the configuration's label
    (the same for all its seeds; the tie-break order); ``value``: the final validation
    metric, None when the trial did not finish ``ok`` with a finite value (or is missing);
    ``axes``: the configuration's hyperparameters (only numeric ones take part in edges)."""

    key: tuple
    config: str
    seed: int
    value: float | None
    axes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def finite(self) -> bool:
        v = self.value
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class AxisRange:
    """A sampled search range ``[low, high]``; ``log``: its scale is logarithmic (``log_uniform``)."""

    low: float
    high: float
    log: bool = False

    def position(self, x: float) -> float:
        """Where ``x`` lies in the range, 0 at ``low`` and 1 at ``high``, in the axis' own scale."""
        if self.log:
            return (math.log(x) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (x - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class Edge:
    """One tuned numeric axis of a selection.

    ``value``: the selected value; ``tried``: the distinct values tried in the cell (sorted);
    ``at_edge``/``side`` (``"low"``, ``"high"`` or None); ``kind``: ``"grid"`` (edges are the
    extreme values tried) or ``"range"`` (a sampled range: ``low``/``high`` its bounds);
    ``progression``: ``"geometric"``/``"linear"`` (grid axes); ``next_values``: the
    extension proposal beyond the edge (empty when not on an edge, for ranges, or when no
    valid value lies beyond: e.g. the low edge 0 of a non-negative axis)."""

    axis: str
    value: float
    tried: tuple[float, ...]
    at_edge: bool
    side: str | None
    kind: str = "grid"
    progression: str | None = None
    next_values: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        """In words, for a report: ``lr = 0.3 is the largest tried: the optimum may lie beyond``."""
        if not self.at_edge:
            return f"{self.axis} = {_num(self.value)} is inside the values tried"
        word = "largest" if self.side == "high" else "smallest"
        if self.kind == "range":
            bound = self.high if self.side == "high" else self.low
            return (
                f"{self.axis} = {_num(self.value)} is within the outer tenth of the sampled range "
                f"(bound {_num(bound)}): the optimum may lie beyond"
            )
        return f"{self.axis} = {_num(self.value)} is the {word} tried: the optimum may lie beyond"


@dataclass(frozen=True)
class Selection:
    """The configuration selected in one cell.

    ``config``: the winner's label (None when no configuration has a finite value);
    ``score``: its seed-mean; ``eligible``: chosen among fully-finished configurations;
    ``n_configs``: configurations tried (whatever their status); ``n_tied``: configurations
    tied with the winner; ``seeds``: the tuning seeds of the cell; ``full_seeds``: the seed
    count of the cell's most complete configuration; ``n_ok``: finite values of the winner;
    ``axes``: the winner's hyperparameters; ``edges``: one :class:`Edge` per tuned numeric axis."""

    key: tuple
    config: str | None
    score: float | None
    eligible: bool
    n_configs: int
    n_tied: int
    seeds: tuple[int, ...]
    full_seeds: int
    n_ok: int
    axes: Mapping[str, Any] = field(default_factory=dict)
    edges: tuple[Edge, ...] = ()

    @property
    def at_edge(self) -> bool:
        return any(e.at_edge for e in self.edges)

    def edge_text(self) -> str:
        """Every edge of this selection in words, ``; ``-separated (empty when none)."""
        return "; ".join(e.describe() for e in self.edges if e.at_edge)


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def select(
    observations: Iterable[Observation],
    mode: str = "max",
    tol: float = 0.0,
    domains: Mapping[tuple, Mapping[str, AxisRange | Sequence[float]]] | None = None,
    extend: int = 1,
) -> dict[tuple, Selection]:
    """The selected configuration of every cell of ``observations`` (the rule in the module doc).

    ``mode``: ``"max"`` or ``"min"``; ``tol``: tie tolerance (>= 0); ``domains``: per cell,
    per axis, the search domain when it is not simply the values tried -- an
    :class:`AxisRange` for a sampled range, or a sequence for the values a choice could
    take; ``extend``: how many values beyond an edge to propose."""
    if mode not in ("max", "min"):
        raise ValueError(f"invalid mode={mode!r}; expected 'max' (accuracies) or 'min' (losses)")
    if not (_numeric(tol) and tol >= 0):
        raise ValueError(f"invalid tol={tol!r}; expected a finite number >= 0")
    cells: dict[tuple, dict[str, list[Observation]]] = {}
    for o in observations:
        cells.setdefault(tuple(o.key), {}).setdefault(o.config, []).append(o)
    sign = 1.0 if mode == "max" else -1.0
    out = {}
    for key in cells:  # in order of first appearance: the order of the grid's arms
        configs = cells[key]
        full = max(len({o.seed for o in obs}) for obs in configs.values())
        scored = []  # (eligible, signed score, label, score, n_ok)
        for label in sorted(configs):
            obs = sorted(configs[label], key=lambda o: o.seed)
            vals = [float(o.value) for o in obs if o.finite]  # type: ignore[arg-type]
            if not vals:
                continue
            eligible = len(vals) == len(obs) and len({o.seed for o in obs}) == full
            mean = sum(vals) / len(vals)
            scored.append((eligible, sign * mean, label, mean, len(vals)))
        seeds = tuple(sorted({o.seed for obs in configs.values() for o in obs}))
        if not scored:
            out[key] = Selection(key, None, None, False, len(configs), 0, seeds, full, 0)
            continue
        pool = [s for s in scored if s[0]] or scored
        best = max(s[1] for s in pool)
        tied = [s for s in pool if best - s[1] <= tol]  # pool is in label order: tied[0] is the smallest
        win = tied[0]
        axes = dict(configs[win[2]][0].axes)
        edges = axis_edges(axes, [c[0].axes for c in configs.values()], (domains or {}).get(key), extend)
        out[key] = Selection(key, win[2], win[3], win[0], len(configs), len(tied), seeds, full, win[4], axes, edges)
    return out


def progression(values: Sequence[float]) -> str:
    """``"geometric"`` when the distinct values are positive and closer to a geometric than an
    arithmetic progression (two values: ratio >= 3; more: the log-gaps vary less, relative to
    their mean, than the plain gaps), else ``"linear"``."""
    v = sorted({float(x) for x in values})
    if len(v) < 2 or v[0] <= 0:
        return "linear"
    if len(v) == 2:
        return "geometric" if v[1] / v[0] >= 3 * (1 - 1e-9) else "linear"  # 0.3 / 0.1 = 2.9999999999999996
    lin = [b - a for a, b in zip(v, v[1:])]
    lg = [math.log(b) - math.log(a) for a, b in zip(v, v[1:])]

    def cv(xs):
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)) / m

    return "geometric" if cv(lg) <= cv(lin) else "linear"


def _tidy(x: float, integer: bool) -> float:
    """Float noise off a proposed value (0.3 * 3 = 0.8999999999999999 -> 0.9); integers stay integers."""
    return int(round(x)) if integer else float(f"{x:.10g}")


def next_values(tried: Sequence[float], side: str, n: int = 1) -> tuple[float, ...]:
    """The next ``n`` values of ``tried``'s progression beyond its ``side`` (``"low"``/``"high"``).

    Geometric: ratio r of the two outermost values on that side (x_n * r, x_n * r^2, ...
    upward; x_1 / r, ... downward); linear: their difference d. Empty when fewer than two
    values were tried, or when the next value would be negative while every value tried is
    >= 0 (e.g. below a weight decay of 0). Integer axes propose integers (at least one apart)."""
    if side not in ("low", "high"):
        raise ValueError(f"invalid side={side!r}; expected 'low' or 'high'")
    v = sorted({x for x in tried})
    if len(v) < 2 or n < 1:
        return ()
    integer = all(isinstance(x, int) for x in v)
    kind = progression(v)
    out: list[float] = []
    cur = float(v[-1] if side == "high" else v[0])
    nxt = float(v[-2] if side == "high" else v[1])
    for _ in range(n):
        if kind == "geometric":
            r = cur / nxt
            new = cur * r
        else:
            new = cur + (cur - nxt)
        if integer:
            new = round(new)
            if new == cur:
                new = cur + (1 if side == "high" else -1)
        if v[0] >= 0 and new < 0 or (v[0] > 0 and kind == "geometric" and new <= 0):
            break
        out.append(_tidy(new, integer))
        nxt, cur = cur, float(new)
    return tuple(out)


def axis_edges(
    selected: Mapping[str, Any],
    tried: Iterable[Mapping[str, Any]],
    domains: Mapping[str, AxisRange | Sequence[float]] | None = None,
    extend: int = 1,
) -> tuple[Edge, ...]:
    """The :class:`Edge` of every tuned numeric axis of ``selected`` among the configurations ``tried``."""
    tried = list(tried)
    domains = domains or {}
    out = []
    for axis in sorted(selected):
        x = selected[axis]
        if not _numeric(x):
            continue
        vals = sorted({t[axis] for t in tried if axis in t and _numeric(t[axis])})
        dom = domains.get(axis)
        if isinstance(dom, AxisRange):
            pos = dom.position(float(x))
            side = "low" if pos < EDGE_FRACTION else "high" if pos > 1 - EDGE_FRACTION else None
            out.append(Edge(axis, x, tuple(vals), side is not None, side, "range", None, (), dom.low, dom.high))
            continue
        if dom is not None:  # a choice: its edges are the extreme values it offers
            vals = sorted({v for v in dom if _numeric(v)} | set(vals))
        if len(vals) < 2:
            continue  # a fixed value: not tuned
        side = "low" if x == vals[0] else "high" if x == vals[-1] else None
        proposal = next_values(vals, side, extend) if side else ()
        out.append(Edge(axis, x, tuple(vals), side is not None, side, "grid", progression(vals), proposal))
    return tuple(out)


#: the columns of :func:`selection_rows` (and of ``selection.csv``), in order
SELECTION_COLUMNS = (
    "config",
    "score",
    "eligible",
    "n_configs",
    "n_tied",
    "n_ok",
    "full_seeds",
    "tuning_seeds",
    "axis",
    "value",
    "tried",
    "at_edge",
    "side",
    "kind",
    "progression",
    "next_values",
    "edge_text",
)


def selection_rows(selections: Mapping[tuple, Selection], key_names: Sequence[str]) -> list[dict]:
    """The selection table: one row per (cell, tuned numeric axis) -- one row with ``axis`` None
    for a cell without a tuned numeric axis -- with the cell's ``key_names`` columns first,
    then :data:`SELECTION_COLUMNS`."""
    rows = []
    for key, s in selections.items():
        base = {
            **dict(zip(key_names, key)),
            "config": s.config,
            "score": s.score,
            "eligible": s.eligible,
            "n_configs": s.n_configs,
            "n_tied": s.n_tied,
            "n_ok": s.n_ok,
            "full_seeds": s.full_seeds,
            "tuning_seeds": " ".join(map(str, s.seeds)),
        }
        empty = dict.fromkeys(SELECTION_COLUMNS[8:], None) | {"at_edge": False}
        if not s.edges:
            rows.append({**base, **empty})
        for e in s.edges:
            rows.append(
                {
                    **base,
                    "axis": e.axis,
                    "value": e.value,
                    "tried": " ".join(_num(v) for v in e.tried),
                    "at_edge": e.at_edge,
                    "side": e.side,
                    "kind": e.kind,
                    "progression": e.progression,
                    "next_values": " ".join(_num(v) for v in e.next_values),
                    "edge_text": e.describe() if e.at_edge else "",
                }
            )
    return rows


def extension_configs(selection: Selection) -> list[tuple[Edge, dict]]:
    """The configurations one extension round adds to a cell: for every grid axis whose selected
    value is on an edge with a proposal, the selected configuration with that axis moved to the
    first proposed value beyond the edge (the other axes stay at their selected values: a line
    search from the winner, one configuration per edge axis). ``[(edge, hyperparameters)]``."""
    out = []
    for e in selection.edges:
        if e.at_edge and e.kind == "grid" and e.next_values:
            out.append((e, {**selection.axes, e.axis: e.next_values[0]}))
    return out


def stability(
    observations: Iterable[Observation], mode: str = "max", tol: float = 0.0, n_boot: int = 1000, seed: int = 0
) -> dict[tuple, float]:
    """How stable each cell's selection is: the share of ``n_boot`` bootstrap resamples of the cell's
    tuning seeds (drawn with replacement, the same draw for every configuration: seeds are paired)
    in which :func:`select` picks the same configuration as on all seeds. 1.0: every resample agrees;
    near 1 / configurations: the choice is a coin toss. Deterministic given ``seed``."""
    import random

    rng = random.Random(seed)
    cells: dict[tuple, list[Observation]] = {}
    for o in observations:
        cells.setdefault(tuple(o.key), []).append(o)
    full = select([o for obs in cells.values() for o in obs], mode, tol)
    out = {}
    for key, obs in sorted(cells.items(), key=lambda kv: tuple(map(str, kv[0]))):
        seeds = sorted({o.seed for o in obs})
        by_seed: dict[int, list[Observation]] = {}
        for o in obs:
            by_seed.setdefault(o.seed, []).append(o)
        same = 0
        for _ in range(n_boot):
            draw = [rng.choice(seeds) for _ in seeds]
            resampled = [Observation(key, o.config, j, o.value, o.axes) for j, s in enumerate(draw) for o in by_seed[s]]
            same += select(resampled, mode, tol)[key].config == full[key].config
        out[key] = same / n_boot if full[key].config is not None else math.nan
    return out
