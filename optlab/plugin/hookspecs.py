"""The extension points of optlab, one hook per kind of plugin item.

A plugin is a module (or object) with functions marked ``@optlab.hookimpl``
whose names are the hooks below, exposed through the ``optlab`` entry-point
group in its ``pyproject.toml``::

    [project.entry-points.optlab]
    myplugin = "myplugin.plugin"

Each hook receives ``register``, a callable ``register(name, item)``; call it
once per item (a name must not contain ``:``). Every item has the qualified name
``<plugin>:<name>`` (``myplugin:my_stepper``), which always resolves; the short
name resolves when exactly one plugin provides it. Two plugins may register the
same short name: only *using* it is then an error, listing the qualified choices
(inside a plugin's own preset, task and model functions its own item wins). The
built-ins (``optlab.builtins``, qualified ``builtins:...``) use exactly
these hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("optlab")
hookimpl = pluggy.HookimplMarker("optlab")


@hookspec
def optlab_register_selectors(register):
    """Register parameter selectors.

    ``register(name, factory)``: ``factory(**options) -> optlab.optim.selectors.Selector``.

    Example::

        @hookimpl
        def optlab_register_selectors(register):
            register("convs", lambda: by_predicate(
                lambda name, p, owner: isinstance(owner, nn.Conv2d), "conv weights"))
    """


@hookspec
def optlab_register_estimators(register):
    """Register curvature estimators.

    ``register(name, cls)``: ``cls`` subclasses :class:`optlab.optim.rules.CurvatureEstimator`
    (``name``, ``hparams``, ``stochastic``, ``target``, ``requires``,
    ``estimate(ctx, indices, group, generator)`` returning ``{index: tensor shaped like
    the parameter}``). ``requires`` (e.g. ``{"engine": "func"}`` or
    ``{"closure": "loss_outputs"}``) is what validation and the conformance kit run it under.

    Example::

        @hookimpl
        def optlab_register_estimators(register):
            register("my_diag", MyDiagEstimator)
    """


@hookspec
def optlab_register_steppers(register):
    """Register steppers.

    ``register(name, cls)``: ``cls`` subclasses :class:`optlab.optim.rules.Stepper`
    (``name``, ``hparams``, ``needs_curvature``, ``needs_loss``, ``requires``,
    ``step(params, grads, states, group, *, curvature, rule_step)``, in place; with
    ``needs_loss = True`` also ``loss=``, the step's loss).

    Example::

        @hookimpl
        def optlab_register_steppers(register):
            register("signsgd", SignSGD)
    """


@hookspec
def optlab_register_presets(register):
    """Register presets (named optimizers).

    ``register(name, fn)``: ``fn(model, **hparams) -> list[optlab.Rule]``. The
    keyword arguments of ``fn`` are the preset's hyperparameters.

    Example::

        @hookimpl
        def optlab_register_presets(register):
            register("sign-ph", lambda model, lr=0.1: [Rule(...), Rule(...)])
    """


@hookspec
def optlab_register_tasks(register):
    """Register tasks (data sets with a loss).

    ``register(name, fn)``: ``fn(seed: int, **options) -> optlab.training.tasks.Task``.

    Example::

        @hookimpl
        def optlab_register_tasks(register):
            register("xor", make_xor_task)
    """


@hookspec
def optlab_register_models(register):
    """Register model constructors.

    ``register(name, fn)``: ``fn(task_info: dict, **options) -> nn.Module`` where
    ``task_info`` has ``input_shape``, ``num_classes`` and ``name``. The runner always
    passes ``decouple=<bool>``: accept it (``optlab.decouple(model)`` when true).

    Example::

        @hookimpl
        def optlab_register_models(register):
            register("tiny-mlp", lambda info, decouple=False: nn.Sequential(nn.Flatten(), nn.LazyLinear(info["num_classes"])))
    """


@hookspec
def optlab_register_baselines(register):
    """Register baseline optimizers that are not built from rules.

    ``register(name, fn)``: ``fn(model, **hparams) -> torch.optim.Optimizer``; its
    keyword arguments are the baseline's hyperparameters (see ``optlab.api.optimizer_entry``).
    The optimizer gets optlab's three step styles (``optlab.optim.closures.closure_mix_in``), so the
    runner calls ``opt.step(closure)`` with a forward-only closure as for every optimizer. Set
    ``fn.create_graph = True`` when its ``step`` reads ``p.grad`` built with a double-backward
    graph (AdaHessian-like optimizers): the gradient is then taken with ``create_graph=True``.

    Example::

        @hookimpl
        def optlab_register_baselines(register):
            register("adamw", lambda model, lr=1e-3: torch.optim.AdamW(model.parameters(), lr=lr))
    """


@hookspec
def optlab_register_executors(register):
    """Register grid executors (where trials run: a process pool, a cluster, a scheduler).

    ``register(name, cls)``: ``cls(**options)`` (options from the spec's ``[executor]``
    table or CLI flags) has ``run(root, trials, threads)`` yielding ``(trial_id, status)``
    as each trial finishes. Each trial must run as ``optlab.grid.trial.run_trial(root, trial,
    threads)`` in a process that sees ``root`` (results reach the store through the
    shared filesystem, never through the driver); ``status`` is what it returned, or
    ``"error"`` if the backend lost the trial. See :mod:`optlab.grid.executors`.

    Example::

        @hookimpl
        def optlab_register_executors(register):
            register("threads", ThreadPoolTrialExecutor)
    """


@hookspec
def optlab_register_sinks(register):
    """Register metric sinks (extra destinations for finished trials' metrics).

    ``register(name, cls)``: ``cls(root, **options)`` (options from the spec's
    ``[sinks.NAME]`` table) has ``write(record)``, called once per finished trial with
    the trial's stored JSON record, and ``close()``. The JSON store stays the source of
    truth: a sink only mirrors it, so a sink's ``write`` must tolerate the same trial
    twice. See :mod:`optlab.grid.sinks`.

    Example::

        @hookimpl
        def optlab_register_sinks(register):
            register("stdout", PrintFinalAccuracy)
    """
