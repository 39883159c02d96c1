"""optlab: compound optimizers assembled from plugins (selectors, curvature estimators, steppers).

opt = optlab.optimizer("sgd-ph", model, lr=0.1, momentum=0.9)
loss = opt.step(lambda: F.cross_entropy(model(x), y))
"""

from . import _moved  # installs the hook that keeps old module paths importable (with a warning)
from .api import estimator, explain, optimizer, optimizer_names, preset_hparams, preset_rules, selector, stepper
from .optim.hparams import HParam
from .optim.modeltools import decouple
from .optim.optimizer import RuleOptimizer
from .optim.rules import CurvatureEstimator, Rule, Schedule, Stepper, partition
from .optim.selectors import Selector, rest
from .plugin.hookspecs import hookimpl

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


def __getattr__(name: str):
    """``optlab.optim.hparams`` and the other old module paths, read as attributes (see :mod:`optlab._moved`)."""
    return _moved.old_attribute(name)


def diagnose(*args, **kwargs):
    """See :func:`optlab.diagnostics.diagnose`."""
    from .diagnostics import diagnose as _diagnose

    return _diagnose(*args, **kwargs)
