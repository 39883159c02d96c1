"""optlab.analysis: results -> tidy frames -> figures -> reports (pandas + seaborn)."""
from .data import (best_configs, expected_trials, hparam_columns, load, paired_comparison, performance_profile,
                   sensitivity, summarize)

__all__ = ["load", "summarize", "best_configs", "sensitivity", "paired_comparison", "performance_profile",
           "hparam_columns", "expected_trials", "plots", "report"]


def __getattr__(name):
    if name in ("plots", "report"):
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
