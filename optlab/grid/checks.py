"""Checks of a grid spec's values that name the bad key: the ``[protocol]`` table, an axis's values,
an optimizer's hyperparameters (built once on a tiny model); and :class:`SpecError`, what they raise."""

from __future__ import annotations

import json
import warnings

from optlab import api
from optlab.optim.hparams import unknown_name

__all__ = [
    "SpecError",
    "check_protocol",
    "axis_values",
    "check_optimizer_builds",
    "PROTOCOL_KEYS",
    "SELECT_DIRECTIONS",
    "EVAL_SEED_BASE",
    "LIST_VALUED",
]

PROTOCOL_KEYS = ("evaluation_seeds", "select", "extend_edges")
#: the metrics ``[protocol] select`` may name, and whether each is maximised or minimised
SELECT_DIRECTIONS = {"val_acc": "max", "val_loss": "min"}
#: first evaluation seed when ``evaluation_seeds`` is a count (far from the usual tuning seeds 0, 1, 2, ...)
EVAL_SEED_BASE = 1000


class SpecError(ValueError):
    """A grid spec that cannot run; the message names the key (``<spec>.optimizer[0].lr: ...``)."""


def check_protocol(where: str, p: dict | None, tuning_seeds) -> None:
    """The ``[protocol]`` table: known keys, fresh and distinct evaluation seeds (a count >= 2 or a
    list), ``extend_edges`` an integer >= 0, ``select`` a key of :data:`SELECT_DIRECTIONS`."""
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
    if sel not in SELECT_DIRECTIONS:
        raise SpecError(
            f"{where}.protocol.select: invalid {sel!r}; expected one of {', '.join(SELECT_DIRECTIONS)} "
            "(final-epoch validation metric, mean over tuning seeds)"
        )


LIST_VALUED = ("milestones", "betas")  # settings whose value is a list: write [[...], [...]] for an axis


def axis_values(where: str, key: str, value) -> list:
    """The values of an axis: a list, or one value (a list-valued setting's list is one value)."""
    vals = value if isinstance(value, list) else [value]
    if key in LIST_VALUED and isinstance(value, list) and value and not isinstance(value[0], list):
        vals = [value]
    if not vals:
        raise SpecError(f"{where}.{key}: empty axis (give at least one value)")
    return vals


#: (optimizer, hyperparameters) already built successfully in this process
BUILT_OK: set[str] = set()


def check_optimizer_builds(where: str, name: str, hp: dict) -> None:
    """Build the optimizer on a tiny BatchNorm model: every bad value fails here, named.

    A combination that built once is not built again (``expand`` checks every grid cell,
    and most cells of a large grid repeat a combination already seen)."""
    key = json.dumps([name, hp], sort_keys=True, default=repr)
    if key in BUILT_OK:
        return
    from torch import nn

    probe = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            api.optimizer(name, probe, **hp)
    except (ValueError, TypeError, ImportError) as exc:
        raise SpecError(f"{where}: {exc}") from exc
    BUILT_OK.add(key)
