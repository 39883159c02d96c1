"""optlab: compound optimizers assembled from plugins (selectors, curvature estimators, steppers).

opt = optlab.optimizer("sgd-ph", model, lr=0.1, momentum=0.9)
loss = opt.step(lambda: F.cross_entropy(model(x), y))
"""

from .api import estimator, explain, optimizer, optimizer_names, preset_hparams, preset_rules, selector, stepper
from .hookspecs import hookimpl
from .hparams import HParam
from .modeltools import decouple
from .optimizer import RuleOptimizer
from .rules import CurvatureEstimator, Rule, Schedule, Stepper, partition
from .selectors import Selector, rest

try:  # the installed distribution's version (pyproject.toml), one source of truth
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("optlab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "optimizer",
    "explain",
    "selector",
    "estimator",
    "stepper",
    "preset_rules",
    "preset_hparams",
    "optimizer_names",
    "hookimpl",
    "HParam",
    "decouple",
    "RuleOptimizer",
    "CurvatureEstimator",
    "Rule",
    "Schedule",
    "Stepper",
    "partition",
    "Selector",
    "rest",
    "diagnose",
]


def diagnose(*args, **kwargs):
    """See :func:`optlab.diagnostics.diagnose`."""
    from .diagnostics import diagnose as _diagnose

    return _diagnose(*args, **kwargs)
