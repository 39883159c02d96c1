"""Results -> tidy pandas frames, seed statistics, validation-based selection.

Two rooms: :mod:`.frames` loads results into ``(epochs, trials)`` (:func:`load`) and tabulates them;
:mod:`.selection` computes seed statistics and selects on validation metrics
(:func:`best_configs`, :func:`sensitivity`: tuning-stage trials only, through the grid runner's
one rule :func:`optlab.grid.protocol.select`); test metrics are reported for what validation
selected. Every public name of both is importable from here.
"""

from __future__ import annotations

import warnings

from .frames import (
    ID_COLS,
    METRICS,
    REPORT_METRIC,
    RUN_COLS,
    SELECT_METRIC,
    WITHIN,
    MetricError,
    SelectionBiasWarning,
    config_description,
    cost_per_epoch,
    expected_trials,
    hparam_columns,
    load,
)
from .selection import (
    best_configs,
    cell_mask,
    direction,
    performance_profile,
    select_cells,
    selected_trials,
    selection_metric,
    selection_table,
    sensitivity,
    summarize,
)

__all__ = [
    "load",
    "summarize",
    "best_configs",
    "select_cells",
    "selection_table",
    "sensitivity",
    "performance_profile",
    "hparam_columns",
    "cost_per_epoch",
    "expected_trials",
    "selection_metric",
    "selected_trials",
    "cell_mask",
    "direction",
    "config_description",
    "MetricError",
    "SelectionBiasWarning",
    "SELECT_METRIC",
    "REPORT_METRIC",
    "WITHIN",
    "ID_COLS",
    "RUN_COLS",
    "METRICS",
]


def __getattr__(name: str):
    if name == "SelectionMismatchWarning":  # deprecated: one selection function, nothing to mismatch
        warnings.warn(
            "optlab.analysis.data.SelectionMismatchWarning is deprecated and never raised: the grid runner and "
            "the analysis select through one function (optlab.grid.protocol.select); it will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return _SelectionMismatchWarning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _SelectionMismatchWarning(UserWarning):
    """Deprecated (never raised): evaluation trials of another configuration than validation selects."""
