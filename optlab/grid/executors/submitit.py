"""The ``submitit`` executor: one SLURM job per trial (a job array) through submitit."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import ExecutorError, check_positive_int, require_extra, run_trial_job, trial_outcome

__all__ = ["SubmititExecutor"]


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
        check_positive_int("time_min", time_min)
        check_positive_int("cpus_per_task", cpus_per_task)
        check_positive_int("array_parallelism", array_parallelism)
        if not isinstance(gpus_per_task, int) or gpus_per_task < 0:
            raise ExecutorError(f"invalid gpus_per_task={gpus_per_task!r}; expected an integer >= 0")
        if slurm is not None and not isinstance(slurm, dict):
            raise ExecutorError(f"invalid slurm={slurm!r}; expected a table of extra #SBATCH parameters")
        self.cluster, self.folder, self.partition = cluster, folder, partition
        self.time_min, self.gpus_per_task, self.cpus_per_task = time_min, gpus_per_task, cpus_per_task
        self.mem_gb, self.array_parallelism, self.slurm, self.poll_s = mem_gb, array_parallelism, slurm or {}, poll_s
        require_extra("submitit", "slurm")

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
            jobs = ex.map_array(run_trial_job, [root] * len(trials), trials, [threads] * len(trials))
            yield from self._wait(dict(zip(jobs, trials)))
            return
        # local / debug: submitit starts every job at once, so keep at most `slots` running here
        slots = min(self.array_parallelism, max(1, (os.cpu_count() or 1) // self.cpus_per_task))
        queue = list(trials)
        pending: dict = {}
        while queue or pending:
            while queue and len(pending) < slots:
                t = queue.pop(0)
                pending[ex.submit(run_trial_job, root, t, threads)] = t
            yield from self._wait(pending, first_only=True)

    def _wait(self, pending: dict, first_only: bool = False) -> Iterator[tuple[str, str]]:
        """Yield finished jobs' outcomes (all of them, or at least one when ``first_only``)."""
        while pending:
            done = [j for j in pending if j.done()]
            for j in done:
                t = pending.pop(j)
                yield trial_outcome(t, j.result)
            if done and first_only:
                return
            if pending and not done:
                time.sleep(self.poll_s)
