"""Where trials run: the executor contract and the built-in backends ``local``, ``ray``, ``submitit``.

An executor takes the trials of a grid that have no result yet and runs each one
as ``optlab.trial.run_trial(root, trial, threads)`` -- somewhere: a local process
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

Contract (what a plugin's executor class implements)::

    class MyExecutor:
        name = "mine"
        def __init__(self, **options): ...          # options from [executor] / CLI flags
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

import inspect
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "LocalExecutor",
    "RayExecutor",
    "SubmititExecutor",
    "EXECUTORS",
    "make_executor",
    "executor_options",
    "ExecutorError",
]


class ExecutorError(ValueError):
    pass


def _run_trial(root: str, trial, threads: int | None):
    """The unit of work on every backend (a module-level function: picklable by reference)."""
    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    from .trial import run_trial

    return run_trial(root, trial, threads)


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ExecutorError(f"invalid {name}={value!r}; expected an integer >= 1")


# ---------------------------------------------------------------------- local
class LocalExecutor:
    """Trials in this process (``workers=1``) or a pool of ``workers`` processes on this machine.

    The pool uses the ``forkserver`` start method: one clean server process
    imports torch and optlab once and workers fork from it (cheaper than
    ``spawn``'s import per worker, safer than forking a process that has torch
    threads running).
    """

    name = "local"

    def __init__(self, workers: int = 1):
        _positive_int("workers", workers)
        self.workers = workers

    def default_threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, root: str, trials: Sequence, threads: int | None = None) -> Iterator[tuple[str, str]]:
        threads = threads or self.default_threads()
        if self.workers == 1:
            import torch

            torch.set_num_threads(threads)
            for t in trials:
                yield _run_trial(root, t, threads)
            return
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from multiprocessing import get_context

        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(
            ["torch", "optlab.grid", "optlab.plugins.builtins", "optlab.plugins.tasks", "optlab.plugins.models"]
        )
        ex = ProcessPoolExecutor(
            max_workers=min(self.workers, max(1, len(trials))), mp_context=ctx, initializer=_pool_worker_init
        )
        todo = iter(trials)
        pending: dict = {}

        def hand_out():
            # at most `workers` trials in the pool at once: the pool moves submitted work into its call
            # queue ahead of time, and a queued trial (no longer cancellable) would start after Ctrl-C
            while len(pending) < self.workers and (t := next(todo, None)) is not None:
                pending[ex.submit(_run_trial, root, t, threads)] = t

        def drain(more: bool):
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                done = [(pending.pop(f), f) for f in finished]
                if more:
                    hand_out()
                for t, f in done:
                    if not f.cancelled():
                        yield _outcome(t, f.result)

        def abandon():  # terminate the workers now: no result written, claims go stale, checkpoints stay
            manager = getattr(ex, "_executor_manager_thread", None)
            previous = threading.excepthook

            def quiet(args, manager=manager, previous=previous):  # the pool's thread sees its workers die
                if args.thread is not manager:
                    previous(args)

            threading.excepthook = quiet
            for proc in list(getattr(ex, "_processes", {}).values()):
                proc.terminate()
            ex.shutdown(wait=False, cancel_futures=True)

        # Ctrl-C: the first stops handing out trials and waits for the running ones (their results
        # still come back); the second abandons them (their last epoch checkpoints stay) -- the driver
        # decides, the workers ignore SIGINT. AbandonRunning (SIGTERM from `optlab grid run`, e.g. a
        # batch system's time limit) abandons at once.
        try:
            hand_out()
            yield from drain(more=True)
        except AbandonRunning:
            abandon()
            raise
        except KeyboardInterrupt:
            for f in list(pending):
                if f.cancel():  # not started yet: never handed out
                    pending.pop(f)
            print(
                f"\ninterrupted: no new trials; waiting for {len(pending)} running trial(s) to finish "
                "(Ctrl-C again to abandon them -- their last epoch checkpoints are kept)",
                file=sys.stderr,
                flush=True,
            )
            try:
                yield from drain(more=False)
            except KeyboardInterrupt:
                abandon()
                raise
            ex.shutdown(wait=True)
            raise
        except BaseException:  # the consumer stopped early (GeneratorExit) or failed: leave nothing running
            abandon()
            raise
        ex.shutdown(wait=True)


class AbandonRunning(KeyboardInterrupt):
    """Stop now: running trials are abandoned (not waited for) -- what SIGTERM to ``optlab grid run`` raises."""


def _pool_worker_init() -> None:
    import signal

    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the driver decides


def _outcome(trial, result_fn) -> tuple[str, str]:
    try:
        return tuple(result_fn())
    except Exception as exc:  # the backend lost the trial (worker died, job cancelled): nothing was written
        print(f"optlab: trial {trial.id} lost by the executor: {type(exc).__name__}: {exc}", file=sys.stderr)
        return trial.id, "error"


# ------------------------------------------------------------------------ ray
class RayExecutor:
    """One Ray core task per trial, each requesting ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs.

    ``address`` connects to a running cluster (``"auto"``, ``"ray://host:10001"``,
    ``"host:6379"``); without it a local Ray instance is started for the run
    (``num_cpus`` of this machine's CPUs, default all) and shut down after.
    Every node must have optlab (and any plugin the grid uses) installed and see
    the results directory at the same path. Torch threads per trial default to
    ``cpus_per_trial``. Ray retries a task whose worker process died
    (``max_retries``); ``run_trial``'s claim keeps a retried trial from running twice.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        cpus_per_trial: float = 1,
        gpus_per_trial: float = 0,
        num_cpus: int | None = None,
        max_retries: int = 2,
        object_store_mb: int = 200,
    ):
        if address is not None and not isinstance(address, str):
            raise ExecutorError(f"invalid address={address!r}; expected a string such as 'auto' or 'ray://host:10001'")
        for key, v, lo in (("cpus_per_trial", cpus_per_trial, 0), ("gpus_per_trial", gpus_per_trial, 0)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < lo:
                raise ExecutorError(f"invalid {key}={v!r}; expected a number >= {lo}")
        _positive_int("num_cpus", num_cpus, allow_none=True)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ExecutorError(f"invalid max_retries={max_retries!r}; expected an integer >= 0")
        _positive_int("object_store_mb", object_store_mb)
        self.address, self.cpus_per_trial, self.gpus_per_trial = address, cpus_per_trial, gpus_per_trial
        self.num_cpus, self.max_retries, self.object_store_mb = num_cpus, max_retries, object_store_mb
        _require("ray", "ray")

    def default_threads(self) -> int:
        return max(1, int(self.cpus_per_trial))

    def run(self, root: str, trials: Sequence, threads: int | None = None) -> Iterator[tuple[str, str]]:
        import ray

        threads = threads or self.default_threads()
        started_here, tmp = False, None
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            else:
                # a private temp dir: never attach to (or disturb) another user's local Ray on this machine
                tmp = tempfile.mkdtemp(prefix="optlab-ray-")
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus or os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    _temp_dir=tmp,
                    object_store_memory=self.object_store_mb * 2**20,
                )
            started_here = True
        try:
            task = ray.remote(_run_trial).options(
                num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial, max_retries=self.max_retries
            )
            pending = {task.remote(root, t, threads): t for t in trials}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    t = pending.pop(ref)
                    yield _outcome(t, lambda: ray.get(ref))
        finally:
            if started_here:
                ray.shutdown()
            if tmp:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------- submitit
class SubmititExecutor:
    """One SLURM job per trial (a job array) through submitit.

    ``cluster``: ``"slurm"``, ``"local"`` (subprocesses on this machine, for
    testing a spec), ``"debug"`` (in this process) or ``None`` (SLURM when
    ``sbatch`` is on the PATH, else local). ``partition``, ``time_min`` (the job's
    time limit), ``gpus_per_task``, ``cpus_per_task``, ``mem_gb``,
    ``array_parallelism`` (jobs running at once; on ``local`` also capped at
    CPUs / ``cpus_per_task``) and ``slurm`` (extra
    ``#SBATCH`` parameters, e.g. ``{account = "lab"}``) map to submitit's SLURM
    parameters. Job logs and pickles go to ``folder`` (default
    ``RESULTS/submitit``), which like the results must be on a filesystem the
    compute nodes share. Jobs outlive the driver: killing the driver leaves them
    running, and a rerun sees their claims as ``busy`` until they finish.
    """

    name = "submitit"
    CLUSTERS = ("slurm", "local", "debug")

    def __init__(
        self,
        cluster: str | None = None,
        folder: str | None = None,
        partition: str | None = None,
        time_min: int = 60,
        gpus_per_task: int = 0,
        cpus_per_task: int = 1,
        mem_gb: float | None = None,
        array_parallelism: int = 256,
        slurm: dict | None = None,
        poll_s: float = 1.0,
    ):
        if cluster is not None and cluster not in self.CLUSTERS:
            raise ExecutorError(
                f"invalid cluster={cluster!r}; expected one of {', '.join(self.CLUSTERS)} "
                "(or leave it unset: SLURM when sbatch exists, else local)"
            )
        _positive_int("time_min", time_min)
        _positive_int("cpus_per_task", cpus_per_task)
        _positive_int("array_parallelism", array_parallelism)
        if not isinstance(gpus_per_task, int) or gpus_per_task < 0:
            raise ExecutorError(f"invalid gpus_per_task={gpus_per_task!r}; expected an integer >= 0")
        if slurm is not None and not isinstance(slurm, dict):
            raise ExecutorError(f"invalid slurm={slurm!r}; expected a table of extra #SBATCH parameters")
        self.cluster, self.folder, self.partition = cluster, folder, partition
        self.time_min, self.gpus_per_task, self.cpus_per_task = time_min, gpus_per_task, cpus_per_task
        self.mem_gb, self.array_parallelism, self.slurm, self.poll_s = mem_gb, array_parallelism, slurm or {}, poll_s
        _require("submitit", "slurm")

    def default_threads(self) -> int:
        return self.cpus_per_task

    def slurm_parameters(self) -> dict:
        """The ``#SBATCH`` parameters of each job (submitit's ``SlurmExecutor`` names)."""
        params = dict(
            job_name="optlab",
            time=self.time_min,
            nodes=1,
            ntasks_per_node=1,
            cpus_per_task=self.cpus_per_task,
            array_parallelism=self.array_parallelism,
        )
        if self.gpus_per_task:
            params["gpus_per_node"] = self.gpus_per_task
        if self.partition:
            params["partition"] = self.partition
        if self.mem_gb:
            params["mem"] = f"{self.mem_gb:g}GB"
        if self.slurm:
            params["additional_parameters"] = dict(self.slurm)
        return params

    def _executor(self, root: str):
        import shutil

        import submitit

        cluster = self.cluster or ("slurm" if shutil.which("sbatch") else "local")
        folder = (Path(self.folder) if self.folder else Path(root) / "submitit") / "%j"
        ex: submitit.SlurmExecutor | submitit.LocalExecutor | submitit.DebugExecutor
        if cluster == "slurm":
            ex = submitit.SlurmExecutor(folder=folder)
            ex.update_parameters(**self.slurm_parameters())
        elif cluster == "local":
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=self.time_min)
        else:
            ex = submitit.DebugExecutor(folder=folder)
        return ex

    def run(self, root: str, trials: Sequence, threads: int | None = None) -> Iterator[tuple[str, str]]:
        threads = threads or self.default_threads()
        trials = list(trials)
        if not trials:
            return
        import submitit

        ex = self._executor(root)
        if isinstance(ex, submitit.SlurmExecutor):
            # one job array; SLURM runs at most array_parallelism of it at once
            jobs = ex.map_array(_run_trial, [root] * len(trials), trials, [threads] * len(trials))
            yield from self._wait(dict(zip(jobs, trials)))
            return
        # local / debug: submitit starts every job at once, so keep at most `slots` running here
        slots = min(self.array_parallelism, max(1, (os.cpu_count() or 1) // self.cpus_per_task))
        queue = list(trials)
        pending: dict = {}
        while queue or pending:
            while queue and len(pending) < slots:
                t = queue.pop(0)
                pending[ex.submit(_run_trial, root, t, threads)] = t
            yield from self._wait(pending, first_only=True)

    def _wait(self, pending: dict, first_only: bool = False) -> Iterator[tuple[str, str]]:
        """Yield finished jobs' outcomes (all of them, or at least one when ``first_only``)."""
        while pending:
            done = [j for j in pending if j.done()]
            for j in done:
                t = pending.pop(j)
                yield _outcome(t, j.result)
            if done and first_only:
                return
            if pending and not done:
                time.sleep(self.poll_s)


# ------------------------------------------------------------------ registry
EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor, "submitit": SubmititExecutor}

_EXTRAS = {"ray": "ray", "submitit": "slurm", "optuna": "optuna"}


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ExecutorError(
            f"this executor needs the '{module}' package: pip install 'optlab[{extra}]' "
            "(with -c constraints.txt to keep the CPU torch)"
        )


def executor_options(cls) -> dict:
    """The options an executor class takes (its constructor's keyword arguments and defaults)."""
    return {
        n: p.default
        for n, p in inspect.signature(cls).parameters.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_executor_options(name: str, options: dict, where: str = "executor") -> type:
    """The registered executor class ``name``, after checking that it takes every key of ``options``."""
    from . import registry
    from .hparams import unknown_name

    cls = registry.get("executor", name)
    valid = executor_options(cls)
    for k in options:
        if k not in valid:
            raise ExecutorError(
                f"{where}.{k}: " + unknown_name(f"option of executor {name!r}", k, valid, show_name=False)
            )
    return cls


def make_executor(name: str, where: str = "executor", **options):
    """The registered executor ``name`` built with ``options``; unknown names/options are named with the valid ones."""
    cls = check_executor_options(name, options, where)
    try:
        return cls(**options)
    except ExecutorError as exc:
        raise ExecutorError(f"{where}: {exc}") from exc
