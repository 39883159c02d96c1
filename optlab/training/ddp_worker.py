"""One process of a multi-process trial: what ``torch.distributed.run`` starts ``nproc`` times.

``python -m optlab.training.ddp_worker JOB.json`` (started by :func:`optlab.training.launch.launch_trial`):
joins the process group (gloo on CPU, NCCL on CUDA with process r on ``cuda:r``), runs
:func:`optlab.training.loop.train` with this process's :class:`optlab.optim.ddp.RankContext`,
and writes its result to ``rank<r>.json`` beside the job. Rank 0 also appends each
epoch's metrics row to ``events.jsonl`` (the launcher hands it to ``on_epoch``).

Exit status: 0 when training ended (``ok`` or ``diverged``), 1 when it failed -- torchrun
then stops the other processes, which may be waiting in a collective for this one --
and 75 when the launching process is gone (:func:`watch_launcher`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from optlab.store import SCHEMA_VERSION, atomic_write, pid_alive

from .config import RunConfig
from .loop import train
from .ranks import RankContext

__all__ = ["main", "watch_launcher"]

#: exit status of a process whose launcher is gone (EX_TEMPFAIL: rerun to resume)
LAUNCHER_GONE = 75


def watch_launcher(launcher_pid: int, interval: float = 0.5) -> threading.Thread:
    """Exit this process (status :data:`LAUNCHER_GONE`) as soon as the launching process or this
    process's parent (torchrun) is gone, e.g. after ``kill -9``: an orphaned trial would go on
    writing the checkpoint a rerun resumes from."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent or not pid_alive(launcher_pid):
                sys.stderr.write("optlab.training.ddp_worker: the launching process is gone; exiting\n")
                os._exit(LAUNCHER_GONE)

    t = threading.Thread(target=watch, name="optlab-launcher-watch", daemon=True)
    t.start()
    return t


def _train(job: dict, events: Path, rank: int) -> dict:
    """Join the process group and train this process's replica; rank 0 appends rows to ``events``."""
    cfg = RunConfig.from_dict(job["config"])
    torch.set_num_threads(job["threads"])
    backend, device = "gloo", torch.device("cpu")
    if cfg.device == "cuda":
        backend, device = "nccl", torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend)

    def send(row: dict) -> None:
        with open(events, "a") as f:
            f.write(json.dumps(row) + "\n")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train(
            cfg,
            checkpoint=job["checkpoint"],
            progress=False,
            on_epoch=send if rank == 0 else None,
            ranks=RankContext(rank, dist.get_world_size(), device),
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m optlab.training.ddp_worker JOB.json (started by optlab.training.launch)\n")
        return 2
    job_path = Path(args[0])
    job = json.loads(job_path.read_text())
    watch_launcher(job["launcher_pid"])
    rank = int(os.environ["RANK"])
    try:
        res = _train(job, job_path.parent / "events.jsonl", rank)
    except Exception as exc:  # set-up failed (no such GPU, no process group): a result all the same
        res = {
            "schema_version": SCHEMA_VERSION,
            "config": job["config"],
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=20),
            "metrics": [],
        }
    atomic_write(job_path.parent / f"rank{rank}.json", json.dumps(res, default=str))
    if res["status"] == "failed":
        sys.stderr.write(f"optlab.training.ddp_worker rank {rank}: {res['error']}\n")
        sys.stderr.flush()
        os._exit(1)  # peers may wait in a collective for this process: torchrun stops them
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the result is on disk; skipping interpreter teardown (torch's) saves seconds per trial


if __name__ == "__main__":
    sys.exit(main())
