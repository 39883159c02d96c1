"""Ablation grids: a TOML spec -> trials -> a resumable run (see :mod:`optlab.grid.spec` for the spec).

The package's public names are its API (``from optlab.grid import run_grid`` is the way to
import them); the modules by job:

- :mod:`~optlab.grid.spec` -- parse and check a spec (:func:`load_spec`), expand it into trials;
- :mod:`~optlab.grid.trial` -- :class:`Trial`, its id, :func:`~optlab.grid.trial.run_trial`;
- :mod:`~optlab.grid.checks` -- value checks of a spec that name the bad key, :class:`SpecError`;
- :mod:`~optlab.grid.protocol` -- the one selection rule on validation (edges, extension proposals);
- :mod:`~optlab.grid.stages` -- the protocol over a spec's trials: selection, extension, evaluation trials;
- :mod:`~optlab.grid.dispatch` -- what is left to run, progress, sinks;
- :mod:`~optlab.grid.adaptive` -- Optuna rounds;
- :mod:`~optlab.grid.run` -- :func:`run_grid` and :func:`grid_status`;
- :mod:`~optlab.grid.search`, :mod:`~optlab.grid.sinks`, :mod:`~optlab.grid.executors`.
"""

from __future__ import annotations

import warnings

from .dispatch import GridInterrupted
from .protocol import config_key, select, selection_key
from .run import default_results_dir, grid_status, run_grid, tuning_trials
from .spec import SELECT_DIRECTIONS, GridSpec, SpecError, expand, load_spec, search_settings
from .stages import evaluation_trials, extension_trials, search_domains, select_configs
from .trial import Trial, trial_id

__all__ = [
    "GridSpec",
    "GridInterrupted",
    "Trial",
    "load_spec",
    "expand",
    "tuning_trials",
    "evaluation_trials",
    "select_configs",
    "select",
    "extension_trials",
    "search_domains",
    "run_grid",
    "grid_status",
    "SpecError",
    "config_key",
    "selection_key",
    "trial_id",
    "search_settings",
    "default_results_dir",
    "SELECT_DIRECTIONS",
]

#: names ``optlab.grid`` re-exported before it became a package, and where they live now
_MOVED = {"environment": "optlab.grid.trial", "run_trial": "optlab.grid.trial"}
#: names renamed by issue 22: old name -> (new name, why)
_RENAMED = {
    "config_label": ("config_key", "a machine key, not a label"),
    "SELECT_METRICS": ("SELECT_DIRECTIONS", "a dict metric -> direction, not the selection metric"),
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        warnings.warn(
            f"optlab.grid.{name} is deprecated; import it from {_MOVED[name]}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    if name in _RENAMED:
        new, why = _RENAMED[name]
        warnings.warn(f"optlab.grid.{name} is deprecated: it is {new} ({why})", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'optlab.grid' has no attribute {name!r}")
