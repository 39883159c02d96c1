"""Time-to-target targets as a grid spec states them (``[targets]``), parsed once with the spec.

Read by :mod:`optlab.analysis.time_to_target`; kept below both the grid and the analysis so the
spec parser can validate a ``[targets]`` table without importing the analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TargetSpec", "parse_targets", "TARGET_KEYS", "TARGET_METRICS"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


#: keys of one ``[targets]`` entry
TARGET_KEYS = ("metric", "value", "from_arm", "k")
TARGET_METRICS = {"val_acc": "max", "val_loss": "min"}


@dataclass(frozen=True)
class TargetSpec:
    """A workload's target as the spec states it: ``metric`` (a validation metric) and either a fixed
    ``value`` or ``from_arm`` (the median final ``metric`` of that arm's seeds); ``k``: seeds that
    must reach (None: a strict majority)."""

    metric: str = "val_acc"
    value: float | None = None
    from_arm: str | None = None
    k: int | None = None

    @property
    def mode(self) -> str:
        return TARGET_METRICS[self.metric]


def parse_targets(where: str, table) -> dict[str, TargetSpec]:
    """A spec's ``[targets]`` table -> ``{workload: TargetSpec}``. Keys are ``"task/model"`` or
    ``"default"`` (every other workload); each value is a table with ``metric`` (``val_acc`` or
    ``val_loss``; default ``val_acc``), exactly one of ``value`` / ``from_arm``, and optionally ``k``::

        [targets]
        default = {from_arm = "sgd"}
        "modular-arithmetic/transformer-preln" = {metric = "val_acc", value = 0.9, k = 3}
    """
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ValueError(f"{where}.targets: expected a [targets] table, got {type(table).__name__} {table!r}")
    out = {}
    for name, entry in table.items():
        w = f"{where}.targets.{name}" if "/" not in name else f'{where}.targets."{name}"'
        if name != "default" and name.count("/") != 1:
            raise ValueError(f"{w}: invalid workload {name!r}; expected 'task/model' or 'default'")
        if not isinstance(entry, dict):
            raise ValueError(f'{w}: expected a table such as {{metric = "val_acc", value = 0.9}}, got {entry!r}')
        unknown = [k for k in entry if k not in TARGET_KEYS]
        if unknown:
            raise ValueError(f"{w}.{unknown[0]}: unknown key; valid keys: {', '.join(TARGET_KEYS)}")
        metric = entry.get("metric", "val_acc")
        if metric not in TARGET_METRICS:
            raise ValueError(
                f"{w}.metric: invalid {metric!r}; expected one of {', '.join(TARGET_METRICS)} (a validation metric)"
            )
        value, arm = entry.get("value"), entry.get("from_arm")
        if (value is None) == (arm is None):
            raise ValueError(f'{w}: give exactly one of value = <number> or from_arm = "<arm>"')
        if value is not None and not _finite(value):
            raise ValueError(f"{w}.value: invalid {value!r}; expected a finite number")
        if arm is not None and not isinstance(arm, str):
            raise ValueError(f"{w}.from_arm: invalid {arm!r}; expected an arm's label (a string)")
        k = entry.get("k")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"{w}.k: invalid {k!r}; expected an integer >= 1 (seeds that must reach the target)")
        out[name] = TargetSpec(metric, float(value) if value is not None else None, arm, k)
    return out
