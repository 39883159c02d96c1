"""The conformance kit for plugin authors (import it in your own tests).

``check_estimator`` / ``check_stepper`` / ``check_selector`` run an item on the
tiny float64 problems of :mod:`optlab.plugin.kit_problems` under what the item declares
(``requires``) and compare it with dense references -- the checks every
built-in passes. The problems and references are re-exported here. :mod:`.parts` checks
selectors, steppers and estimators; :mod:`.items` tasks, models and a whole plugin.
"""

from __future__ import annotations

from ..plugin.kit_problems import (
    PROBLEMS,
    Problem,
    block_slices,
    dense_ggn,
    dense_hessian,
    empirical_fisher_reference,
    fd_hessian,
    flat,
    make_problem,
    output_hessian,
    unflat,
)
from .items import ItemCheck, check_model, check_plugin, check_task
from .parts import (
    ESTIMATOR_TARGETS,
    SELECTOR_PROBLEMS,
    check_estimator,
    check_selector,
    check_stepper,
    check_stepper_formula,
)

__all__ = [
    "check_estimator",
    "ESTIMATOR_TARGETS",
    "SELECTOR_PROBLEMS",
    "check_stepper",
    "check_stepper_formula",
    "check_task",
    "check_model",
    "check_plugin",
    "ItemCheck",
    "check_selector",
    "Problem",
    "PROBLEMS",
    "make_problem",
    "dense_hessian",
    "fd_hessian",
    "dense_ggn",
    "flat",
    "unflat",
    "block_slices",
    "output_hessian",
    "empirical_fisher_reference",
]
