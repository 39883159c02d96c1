"""The ``submitit`` executor: one SLURM job per trial (a job array) through submitit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import ExecutorError, check_positive_int, require_extra, run_trial_job, trial_outcome

__all__ = ["SubmititExecutor", "JobLost", "slurm_queue_states", "SLURM_FINAL_STATES"]

#: SLURM job states after which a job never runs again (``squeue --states=all`` still lists such a job
#: for ``MinJobAge`` seconds, 300 by default, before the controller forgets it).
SLURM_FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


class JobLost(RuntimeError):
    """A SLURM job ended (cancelled, killed, its node failed) without writing its result."""


def _raiser(exc: Exception):
    def raise_it():
        raise exc

    return raise_it


def slurm_queue_states(job_ids: Sequence[str], timeout_s: float = 30.0) -> dict[str, str] | str:
    """The states the SLURM controller holds for the jobs ``job_ids`` (plain or array job ids), every
    array task listed on its own (``"123_4"``), from one ``squeue -h -r -t all -j ...`` call. A job the
    controller no longer knows (ended more than ``MinJobAge`` ago) is absent. Returns the reason as a
    string when ``squeue`` cannot answer (not installed, controller down, time-out)."""
    cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(cmd[:1])}: {type(exc).__name__}: {exc}"
    if out.returncode != 0:
        # slurm_load_jobs refuses a single id it does not know: that job has left the controller
        if "invalid job id" in out.stderr.lower():
            return {}
        return f"squeue exited {out.returncode}: {out.stderr.strip()[-300:]}"
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition(" ")
        if job_id:
            states[job_id] = state.strip().upper()
    return states


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

    The driver polls every ``poll_s`` seconds (default 1): a job is finished when
    its result file exists or submitit's ``sacct`` lookup says so. On a cluster
    without accounting (no slurmdbd: ``sacct`` fails, the state stays
    ``UNKNOWN``) the jobs are looked up with one ``squeue -h -r -t all -j ...``
    call per poll instead; a job that has left the queue, or is listed in a final
    state (``CANCELLED``, ``FAILED``, ``TIMEOUT``, ``NODE_FAIL``, ...), without a
    result file on two polls in a row is *lost*: ``run`` yields it as ``error``
    (and says so on stderr), as the local pool does for a dead worker. Nothing the
    job wrote is lost: a rerun does the trial again from its last checkpoint.
    When ``squeue`` itself cannot answer, the driver keeps waiting for the
    result files.
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
        """Yield finished jobs' outcomes (all of them, or at least one when ``first_only``).

        Every ``poll_s`` seconds: a job is done when submitit says so (its result file, or its
        ``sacct`` state). SLURM jobs whose state submitit does not know (``UNKNOWN``: ``sacct``
        fails without accounting, or does not list them) are looked up in the queue instead, with
        one ``squeue`` call for all of them (:func:`slurm_queue_states`); a job that has left the
        queue, or sits there in a final state, without a result file on two polls in a row is lost
        (cancelled, killed, node failure): it comes back ``error`` and the next run does the trial
        again, resuming from its last checkpoint.
        """
        gone_once: set = set()  # jobs seen out of the queue without a result on the previous poll
        warned: set[str] = set()
        while pending:
            done = [j for j in pending if j.done()]
            for j in done:
                t = pending.pop(j)
                gone_once.discard(j)
                yield trial_outcome(t, j.result)
            if done and first_only:
                return
            if not pending or done:
                continue
            lost = self._lost_slurm_jobs(pending, gone_once, warned)
            for j, why in lost.items():
                t = pending.pop(j)
                yield trial_outcome(t, _raiser(JobLost(f"SLURM job {j.job_id} {why} without a result")))
            if lost and first_only:
                return
            if pending and not lost:
                time.sleep(self.poll_s)

    @staticmethod
    def _lost_slurm_jobs(pending: dict, gone_once: set, warned: set[str]) -> dict:
        """The SLURM jobs of ``pending`` that ended without a result (job -> why), seen on two polls in a
        row (``gone_once`` carries the first sighting): a job the scheduler no longer lists, or lists in a
        final state, and whose result file is still absent. Only jobs whose submitit state is
        ``UNKNOWN`` are looked up; when ``squeue`` cannot answer, nothing is declared lost."""
        import submitit

        unknown = [
            j
            for j in pending
            if isinstance(j, submitit.SlurmJob) and j.watcher.get_state(j.job_id, mode="cache").upper() == "UNKNOWN"
        ]
        if not unknown:
            gone_once.clear()
            return {}
        states = slurm_queue_states(sorted({j.job_id.split("_")[0] for j in unknown}))
        if isinstance(states, str):  # squeue failed: say so once, keep waiting
            if states not in warned:
                warned.add(states)
                print(f"optlab: cannot look SLURM jobs up ({states}); waiting for their result files", file=sys.stderr)
            return {}
        lost, gone_now = {}, set()
        for j in unknown:
            state = states.get(j.job_id)
            if state is not None and state not in SLURM_FINAL_STATES:
                continue  # pending, running, completing, ...
            if j.paths.result_pickle.exists():
                continue  # it finished: j.done() sees it on the next poll
            gone_now.add(j)
            if j in gone_once:
                lost[j] = f"ended ({state})" if state else "left the queue"
        gone_once.clear()
        gone_once.update(gone_now - set(lost))
        return lost
