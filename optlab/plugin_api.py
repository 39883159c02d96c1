"""The plugin contract: the one module a plugin imports from.

    from optlab.plugin_api import Stepper, HParam, nonneg, hookimpl, check_stepper

Every name in ``__all__`` is versioned with optlab (semantic versioning, ``CHANGELOG.md``):
it is removed or changed incompatibly only after one minor release in which using it raises
a ``DeprecationWarning`` naming its replacement, and then no earlier than the next minor
release before 1.0 (the next major release from 1.0 on). Names being retired are listed in
:data:`DEPRECATED` with their replacement and the release that removes them. A plugin declares
the optlab versions it supports in its own ``pyproject.toml``: ``dependencies = ["optlab>=0.2,<0.3"]``.

What each group is for:

* hooks -- :data:`hookimpl` marks a plugin's functions; :mod:`optlab.hookspecs` (``hookspecs``)
  documents each hook (``docs/plugin-hooks.md``). Items have qualified names
  ``<plugin>:<item>`` (:data:`SEP`); an ambiguous short name raises :class:`AmbiguousName`.
* parts -- :class:`Stepper`, :class:`CurvatureEstimator`, :class:`Selector` and their
  ``ClassVar`` flags (``name``, ``hparams``; steppers ``needs_curvature``, ``needs_loss``,
  ``needs_schedule``, ``requires``; estimators ``stochastic``, ``target``, ``requires``),
  composed into :class:`Rule` s with a :class:`Schedule`; :func:`selector`, :func:`estimator`,
  :func:`stepper` look registered parts up by name in a preset.
* what parts receive -- an estimator's ``ctx`` is a :class:`CurvatureContext`; a stepper gets
  ``params, grads, states, group`` and keywords ``curvature``, ``rule_step`` (and ``loss``,
  ``schedule`` when it declares ``needs_loss`` / ``needs_schedule``), see :meth:`Stepper.step`.
* hyperparameters -- :class:`HParam` and the declaration helpers (``nonneg(0.1)``, ...),
  ``PART_DEFAULT`` / :func:`defaults_from` / :func:`given` for presets.
* tasks and models -- :class:`Task` (a task function returns one), :func:`split_validation`,
  :func:`decouple` (what a model function applies for ``decouple=True``).
* testing -- the conformance kit (:func:`check_estimator`, :func:`check_stepper`,
  :func:`check_selector`) and its tiny problems and dense references.
* records -- a sink's ``write(record)`` receives a trial record of :data:`SCHEMA_VERSION`
  (checked by :func:`record_problem`; statuses :data:`STATUSES`).
"""

from __future__ import annotations

import warnings
from typing import Any

from .api import estimator, selector, stepper
from .optim.hparams import (
    PART_DEFAULT,
    HParam,
    choice,
    defaults_from,
    given,
    nonneg,
    optional,
    positive,
    positive_int,
    unit_interval,
    unknown_name,
    validate,
)
from .optim.hvp import CurvatureContext
from .optim.modeltools import decouple
from .optim.rules import REQUIREMENTS, CurvatureEstimator, EstimateError, Rule, Schedule, Stepper, check_estimate
from .optim.selectors import (
    NORM_TYPES,
    Rest,
    Selector,
    by_predicate,
    is_norm_affine,
    is_weight_norm_scale,
    named_parameters_with_owner,
    rest,
)
from .plugin import hookspecs
from .plugin.hookspecs import hookimpl
from .plugin.registration import PluginError
from .plugin.registry import SEP, AmbiguousName, RegistryError
from .store import SCHEMA_VERSION, STATUSES, record_problem
from .testing import (
    ESTIMATOR_TARGETS,
    PROBLEMS,
    ItemCheck,
    Problem,
    block_slices,
    check_estimator,
    check_model,
    check_plugin,
    check_selector,
    check_stepper,
    check_stepper_formula,
    check_task,
    dense_ggn,
    dense_hessian,
    empirical_fisher_reference,
    fd_hessian,
    flat,
    make_problem,
    output_hessian,
    unflat,
)
from .training.tasks import DEFAULT_VAL_FRACTION, VAL_SEED, Task, split_validation

__all__ = [
    # hooks and names
    "hookimpl",
    "hookspecs",
    "SEP",
    "AmbiguousName",
    "RegistryError",
    "PluginError",
    # parts and rules
    "Stepper",
    "CurvatureEstimator",
    "Selector",
    "Rest",
    "rest",
    "by_predicate",
    "is_norm_affine",
    "is_weight_norm_scale",
    "named_parameters_with_owner",
    "NORM_TYPES",
    "Rule",
    "Schedule",
    "REQUIREMENTS",
    "selector",
    "estimator",
    "stepper",
    # what parts receive
    "CurvatureContext",
    "check_estimate",
    "EstimateError",
    # hyperparameters
    "HParam",
    "nonneg",
    "positive",
    "unit_interval",
    "choice",
    "positive_int",
    "optional",
    "validate",
    "unknown_name",
    "PART_DEFAULT",
    "defaults_from",
    "given",
    # tasks and models
    "Task",
    "split_validation",
    "VAL_SEED",
    "DEFAULT_VAL_FRACTION",
    "decouple",
    # the conformance kit
    "check_estimator",
    "check_stepper",
    "check_selector",
    "check_stepper_formula",
    "check_task",
    "check_model",
    "check_plugin",
    "ItemCheck",
    "ESTIMATOR_TARGETS",
    "Problem",
    "PROBLEMS",
    "make_problem",
    "dense_hessian",
    "fd_hessian",
    "dense_ggn",
    "output_hessian",
    "empirical_fisher_reference",
    "block_slices",
    "flat",
    "unflat",
    # what a sink sees
    "SCHEMA_VERSION",
    "STATUSES",
    "record_problem",
    # this module's own bookkeeping
    "DEPRECATED",
]

#: ``{name: (replacement, deprecated since, removed in)}`` -- names of the contract being retired.
#: Each stays importable from here, with a ``DeprecationWarning`` naming the replacement, until the
#: release that removes it. Contract parts that are not module names (a keyword, a positional
#: place) are listed in ``CHANGELOG.md`` and warn where they are used.
DEPRECATED: dict[str, tuple[str, str, str]] = {
    # "validate" means one thing (check values, raise naming the bad one); this returns a reason instead
    "validate_record": ("optlab.plugin_api.record_problem", "0.2.0", "0.3.0"),
}

_RETIRED: dict[str, Any] = {"validate_record": record_problem}  # name -> object, for DEPRECATED names not defined above


def __getattr__(name: str) -> Any:
    if name in DEPRECATED and name in _RETIRED:
        replacement, since, removed = DEPRECATED[name]
        warnings.warn(
            f"optlab.plugin_api.{name} is deprecated since optlab {since} and will be removed in {removed}; "
            f"use {replacement}",
            DeprecationWarning,
            stacklevel=2,
        )
        return _RETIRED[name]
    raise AttributeError(f"module 'optlab.plugin_api' has no attribute {name!r}")
