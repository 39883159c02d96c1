"""optlab.analysis: results -> tidy frames -> selection on validation -> comparisons -> figures -> reports."""

from .compare import budgets, comparisons, expected_max_curve, paired_comparison
from .data import (
    best_configs,
    expected_trials,
    hparam_columns,
    load,
    performance_profile,
    selected_trials,
    selection_table,
    sensitivity,
    summarize,
)

__all__ = [
    "load",
    "summarize",
    "best_configs",
    "selected_trials",
    "selection_table",
    "sensitivity",
    "performance_profile",
    "hparam_columns",
    "expected_trials",
    "budgets",
    "expected_max_curve",
    "comparisons",
    "paired_comparison",
    "stats",
    "plots",
    "report",
]


def __getattr__(name):
    if name in ("stats", "plots", "report"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
