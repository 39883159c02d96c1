"""Launch one trial on several processes with ``torch.distributed.run`` (torchrun).

:func:`optlab.training.loop.train` calls :func:`launch_trial` for a configuration with
``nproc > 1``. It writes the job (configuration, checkpoint path) into a temporary
directory and runs, as a child process::

    python -m torch.distributed.run --standalone --nproc-per-node N -m optlab.training.ddp_worker JOB.json

``--standalone`` rendezvouses on a free local port, so trials of a grid can run side by
side. Each of the N processes (:mod:`optlab.training.ddp_worker`) trains a DistributedDataParallel
replica on its shard of every global batch (CPU: gloo; ``device = "cuda"``: NCCL, process
r on ``cuda:r``); rank 0 alone writes the checkpoint, streams each epoch's metrics row
back (the caller's ``on_epoch`` sees them as they come) and writes the result, which
:func:`launch_trial` returns -- the same dict a one-process run returns, plus
``distributed`` (processes, backend, whether BatchNorm was synchronized).

**When a process dies.** torchrun stops the others as soon as one exits abnormally. A
process that raised (a bad value, a preset that cannot run under DDP) leaves its result:
the trial is ``failed`` with that error. A process killed from outside leaves none, and
the others fail only because their peer vanished; then no result is made up:
:class:`TrialLost` is raised, the checkpoint of the last finished epoch stays, and the
next run resumes from it (the grid counts the trial as ``error`` and reruns it). The
processes of a trial exit when the launching process disappears (``kill -9`` included):
each watches it (:func:`optlab.training.ddp_worker.watch_launcher`), so nothing is left behind
to race a rerun for the checkpoint.

Ctrl-C: a launcher that handles SIGINT (``optlab train``) lets torchrun and the workers
stop on it too; a launcher that ignores it (a grid's pool worker, where the driver
decides) starts them ignoring it, so a first Ctrl-C lets the trial finish.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = ["launch_trial", "TrialLost", "torchrun_command"]

#: the module each torchrun process runs
WORKER_MODULE = "optlab.training.ddp_worker"
#: an error text that means "a peer process went away", not "this configuration fails"
PEER_LOST = re.compile(
    r"Connection (reset|closed) by peer|gloo/transport|DistNetworkError|DistBackendError|Broken pipe|"
    r"NCCL communicator was aborted|launching process is gone",
    re.IGNORECASE,
)


class TrialLost(RuntimeError):
    """A process of a multi-process trial died without a result (killed, out of memory).

    Nothing was recorded; the checkpoint of the last finished epoch stays and the same
    call (or ``optlab grid run``) resumes from it."""


def torchrun_command(nproc: int, job: Path, *, handle_sigint: bool = True) -> list[str]:
    """The command that starts the ``nproc`` processes of a trial (what a user could type)."""
    signals = "SIGTERM,SIGINT,SIGHUP,SIGQUIT" if handle_sigint else "SIGTERM,SIGHUP,SIGQUIT"
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        f"--signals-to-handle={signals}",
        "-m",
        WORKER_MODULE,
        str(job),
    ]


def _environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)  # torchrun would otherwise set 1 and say so
    env["OPTLAB_NO_PROGRESS"] = "1"
    if "GLOO_SOCKET_IFNAME" not in env and sys.platform.startswith("linux"):
        names = {name for _, name in socket.if_nameindex()}
        if "lo" in names:  # one machine: the processes talk over loopback, whatever the host name resolves to
            env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to torchrun (it stops its workers), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Events:
    """Metric rows rank 0 appends to ``events.jsonl``, handed to ``on_epoch`` as complete lines arrive."""

    def __init__(self, path: Path, on_epoch: Callable[[dict], None] | None):
        self.path, self.on_epoch, self.pos = path, on_epoch, 0

    def pump(self) -> None:
        if self.on_epoch is None or not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.pos += end
        for line in data[:end].splitlines():
            self.on_epoch(json.loads(line))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def launch_trial(
    cfg: RunConfig,
    *,
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the validated configuration ``cfg`` (``cfg.nproc`` processes) and return its result.

    ``threads``: torch threads per process (default: this process's torch threads divided
    by ``nproc``, at least 1). Raises :class:`TrialLost` when a process died without a result.
    """
    import torch

    nproc = cfg.nproc
    threads = threads or max(1, torch.get_num_threads() // nproc)
    job_dir = Path(tempfile.mkdtemp(prefix="optlab-trial-"))
    try:
        job = job_dir / "job.json"
        job.write_text(
            json.dumps(
                {
                    "config": cfg.to_dict(),
                    "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
                    "threads": threads,
                    "launcher_pid": os.getpid(),
                }
            )
        )
        events = _Events(job_dir / "events.jsonl", on_epoch)
        log_path = job_dir / "torchrun.log"
        handle_sigint = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                torchrun_command(nproc, job, handle_sigint=handle_sigint),
                env=_environment(threads),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                while proc.poll() is None:
                    events.pump()
                    time.sleep(0.05)
                events.pump()
            finally:
                _stop(proc)
        return _collect(job_dir, nproc, proc.returncode, log_path)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _collect(job_dir: Path, nproc: int, returncode: int, log_path: Path) -> dict[str, Any]:
    """The trial's result from the processes' result files (see the module docstring)."""
    results = {}
    for r in range(nproc):
        path = job_dir / f"rank{r}.json"
        if path.exists():
            results[r] = json.loads(path.read_text())
    if 0 in results and (returncode == 0 or results[0]["status"] != "failed"):
        return results[0]
    for r, res in sorted(results.items()):  # a process that raised on its own: the configuration fails
        if res["status"] == "failed" and not PEER_LOST.search(res.get("error") or ""):
            if r != 0:
                res["error"] = f"process {r} of {nproc}: {res['error']}"
            return res
    missing = [r for r in range(nproc) if r not in results]
    raise TrialLost(
        f"process(es) {missing or sorted(results)} of this {nproc}-process trial ended without a result "
        f"(torchrun exit status {returncode}); nothing was recorded and the last finished epoch's "
        f"checkpoint is kept -- rerun to resume. torchrun's last lines:\n{_tail(log_path)}"
    )
