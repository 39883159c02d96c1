"""optlab's built-in plugin: registered through the ``optlab`` entry point like any other."""
from __future__ import annotations

from optlab.hookspecs import hookimpl

from . import estimators, presets, selectors, steppers


@hookimpl
def optlab_register_selectors(register):
    for name, factory in selectors.SELECTORS.items():
        register(name, factory)


@hookimpl
def optlab_register_estimators(register):
    for cls in estimators.ESTIMATORS:
        register(cls.name, cls)


@hookimpl
def optlab_register_steppers(register):
    for cls in steppers.STEPPERS:
        register(cls.name, cls)


@hookimpl
def optlab_register_presets(register):
    for name, fn in presets.PRESETS.items():
        register(name, fn)
