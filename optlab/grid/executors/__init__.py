"""Executors: where a grid's trials run (contract in :mod:`.base`; built-ins ``local``, ``ray``,
``submitit``) and their registry lookups (:func:`make_executor`)."""

from __future__ import annotations

import inspect

from optlab.optim.hparams import unknown_name
from optlab.plugin import registry

from .base import AbandonRunning, Executor, ExecutorError
from .local import LocalExecutor
from .ray import RayExecutor
from .submitit import SubmititExecutor

__all__ = [
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "SubmititExecutor",
    "EXECUTORS",
    "make_executor",
    "executor_options",
    "check_executor_options",
    "ExecutorError",
    "AbandonRunning",
]

# ------------------------------------------------------------------ registry
EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor, "submitit": SubmititExecutor}


def executor_options(cls) -> dict:
    """The options an executor class takes (its constructor's keyword arguments and defaults)."""
    return {
        n: p.default
        for n, p in inspect.signature(cls).parameters.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_executor_options(name: str, options: dict, where: str = "executor") -> type:
    """The registered executor class ``name``, after checking that it takes every key of ``options``."""
    cls = registry.get("executor", name)
    valid = executor_options(cls)
    for k in options:
        if k not in valid:
            raise ExecutorError(
                f"{where}.{k}: " + unknown_name(f"option of executor {name!r}", k, valid, show_name=False)
            )
    return cls


def make_executor(name: str, where: str = "executor", **options) -> Executor:
    """The registered executor ``name`` built with ``options``; unknown names/options are named with the valid ones."""
    cls = check_executor_options(name, options, where)
    try:
        return cls(**options)
    except ExecutorError as exc:
        raise ExecutorError(f"{where}: {exc}") from exc
