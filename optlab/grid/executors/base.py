"""Where trials run: the executor contract and what every backend shares.

An executor takes the trials of a grid that have no result yet and runs each one
as ``optlab.grid.trial.run_trial(root, trial, threads)`` -- somewhere: a local process
pool, a Ray task, a SLURM job. That call claims the trial in the store
(``O_CREAT|O_EXCL`` lock file), trains with per-epoch checkpoints, writes the
result atomically (``os.replace`` of an fsynced file) and releases the claim.

**How results reach the store.** Always through the filesystem: the process that
ran the trial writes ``RESULTS/trials/<id>.json`` itself. What travels back to the
driver is only ``(trial_id, status)``. So ``RESULTS`` must be a path every worker
sees at the same name (one machine; NFS/Lustre/GPFS on a cluster). The driver
never holds results in memory, which is what makes ``kill -9`` of the driver
safe: a trial is either a complete file, or it is not there and the next run
does it (resuming from its checkpoint). A trial whose claim is held by a live
process elsewhere comes back ``busy`` and is left to that process.

Contract (what a plugin's executor class implements; :class:`Executor` declares it)::

    class MyExecutor:
        name = "mine"
        def __init__(self, **options): ...          # options from [executor] / CLI flags
        def default_threads(self) -> int: ...       # torch threads per trial when none are given
        def run(self, root: str, trials, threads):  # -> iterator of (trial_id, status)
            ...

``run`` yields one ``(trial_id, status)`` per trial as it finishes, in
completion order; status is what ``run_trial`` returned (``ok``, ``diverged``,
``failed``, ``exists``, ``busy``) or ``error`` when the backend lost the trial
(worker or job died: no result was written; a rerun does it). ``run`` must not
write to the store. Executors are registered with the ``optlab_register_executors``
hook (``docs/plugin-hooks.md``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from optlab.grid.trial import Trial

__all__ = [
    "Executor",
    "ExecutorError",
    "AbandonRunning",
    "run_trial_job",
    "trial_outcome",
    "check_positive_int",
    "require_extra",
]


@runtime_checkable
class Executor(Protocol):
    """Where a grid's trials run (the module docstring has the full contract). Constructed as
    ``cls(**options)`` with the ``[executor]`` table's options; ``run`` must not write to the store."""

    name: ClassVar[str]

    def default_threads(self) -> int:
        """Torch threads per trial when ``optlab grid run --threads`` is not given."""
        ...

    def run(self, root: str, trials: Sequence[Trial], threads: int | None = None) -> Iterator[tuple[str, str]]:
        """Run each trial as :func:`optlab.grid.trial.run_trial` into the store at ``root``;
        yield ``(trial_id, status)`` per trial as it finishes."""
        ...


class ExecutorError(ValueError):
    pass


def run_trial_job(root: str, trial, threads: int | None):
    """The unit of work on every backend (a module-level function: picklable by reference)."""
    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    from optlab.grid.trial import run_trial

    return run_trial(root, trial, threads)


def check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ExecutorError(f"invalid {name}={value!r}; expected an integer >= 1")


class AbandonRunning(KeyboardInterrupt):
    """Stop now: running trials are abandoned (not waited for) -- what SIGTERM to ``optlab grid run`` raises."""


def trial_outcome(trial, result_fn) -> tuple[str, str]:
    try:
        return tuple(result_fn())
    except Exception as exc:  # the backend lost the trial (worker died, job cancelled): nothing was written
        print(f"optlab: trial {trial.id} lost by the executor: {type(exc).__name__}: {exc}", file=sys.stderr)
        return trial.id, "error"


def require_extra(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ExecutorError(
            f"this executor needs the '{module}' package: pip install 'optlab[{extra}]' "
            "(with -c constraints.txt to keep the CPU torch)"
        )
