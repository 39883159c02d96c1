"""The ``ray`` executor: one Ray core task per trial."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence

from .base import ExecutorError, check_positive_int, require_extra, run_trial_job, trial_outcome

__all__ = ["RayExecutor"]


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
        check_positive_int("num_cpus", num_cpus, allow_none=True)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ExecutorError(f"invalid max_retries={max_retries!r}; expected an integer >= 0")
        check_positive_int("object_store_mb", object_store_mb)
        self.address, self.cpus_per_trial, self.gpus_per_trial = address, cpus_per_trial, gpus_per_trial
        self.num_cpus, self.max_retries, self.object_store_mb = num_cpus, max_retries, object_store_mb
        require_extra("ray", "ray")

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
            task = ray.remote(run_trial_job).options(
                num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial, max_retries=self.max_retries
            )
            pending = {task.remote(root, t, threads): t for t in trials}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    t = pending.pop(ref)
                    yield trial_outcome(t, lambda: ray.get(ref))
        finally:
            if started_here:
                ray.shutdown()
            if tmp:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
