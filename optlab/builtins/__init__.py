"""optlab's built-in plugin: registered through the ``optlab`` entry point like any other."""

from __future__ import annotations

from optlab.plugin.hookspecs import hookimpl

from . import adaptive_steppers, eigenbasis, estimators, orthogonal, presets, relatives_presets, selectors, steppers


@hookimpl
def optlab_register_selectors(register):
    for name, factory in selectors.SELECTORS.items():
        register(name, factory)
    register("hidden_matrices", orthogonal.hidden_matrices)


@hookimpl
def optlab_register_estimators(register):
    for cls in estimators.ESTIMATORS:
        register(cls.name, cls)


@hookimpl
def optlab_register_steppers(register):
    for cls in steppers.STEPPERS + adaptive_steppers.STEPPERS + orthogonal.STEPPERS + eigenbasis.STEPPERS:
        register(cls.name, cls)


@hookimpl
def optlab_register_presets(register):
    for name, fn in {**presets.PRESETS, **relatives_presets.PRESETS}.items():
        register(name, fn)


@hookimpl
def optlab_register_tasks(register):
    from . import modular_arithmetic, tasks

    for name, fn in {**tasks.TASKS, **modular_arithmetic.TASKS}.items():
        register(name, fn)


@hookimpl
def optlab_register_models(register):
    from . import models, modular_arithmetic

    for name, fn in {**models.MODELS, **modular_arithmetic.MODELS}.items():
        register(name, fn)


@hookimpl
def optlab_register_baselines(register):
    from . import baselines

    for name, fn in baselines.BASELINES.items():
        register(name, fn)


@hookimpl
def optlab_register_executors(register):
    from optlab.grid import executors

    for name, cls in executors.EXECUTORS.items():
        register(name, cls)


@hookimpl
def optlab_register_sinks(register):
    from optlab.grid import sinks

    for name, cls in sinks.SINKS.items():
        register(name, cls)
