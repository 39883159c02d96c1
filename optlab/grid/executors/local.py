"""The ``local`` executor: trials in this process or a pool of processes on this machine."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence

from .base import AbandonRunning, check_positive_int, run_trial_job, trial_outcome

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Trials in this process (``workers=1``) or a pool of ``workers`` processes on this machine.

    The pool uses the ``forkserver`` start method: one clean server process
    imports torch and optlab once and workers fork from it (cheaper than
    ``spawn``'s import per worker, safer than forking a process that has torch
    threads running).
    """

    name = "local"

    def __init__(self, workers: int = 1):
        check_positive_int("workers", workers)
        self.workers = workers

    def default_threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, root: str, trials: Sequence, threads: int | None = None) -> Iterator[tuple[str, str]]:
        threads = threads or self.default_threads()
        if self.workers == 1:
            import torch

            torch.set_num_threads(threads)
            for t in trials:
                yield run_trial_job(root, t, threads)
            return
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from multiprocessing import get_context

        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(
            ["torch", "optlab.grid", "optlab.builtins", "optlab.builtins.tasks", "optlab.builtins.models"]
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
                pending[ex.submit(run_trial_job, root, t, threads)] = t

        def drain(more: bool):
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                done = [(pending.pop(f), f) for f in finished]
                if more:
                    hand_out()
                for t, f in done:
                    if not f.cancelled():
                        yield trial_outcome(t, f.result)

        # Ctrl-C: the first stops handing out trials and waits for the running ones (their results
        # still come back); the second abandons them (their last epoch checkpoints stay) -- the driver
        # decides, the workers ignore SIGINT. AbandonRunning (SIGTERM from `optlab grid run`, e.g. a
        # batch system's time limit) abandons at once. A second Ctrl-C may land anywhere (in the print,
        # before the wait starts): whatever leaves this block before the running trials came back
        # abandons them in `finally`, so the pool never outlives the driver.
        drained = False
        try:
            hand_out()
            yield from drain(more=True)
            drained = True
        except AbandonRunning:  # a KeyboardInterrupt, but no grace period: `finally` abandons at once
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
            yield from drain(more=False)
            drained = True
            raise
        finally:  # also when the consumer stopped early (GeneratorExit) or failed: leave nothing running
            if drained:
                ex.shutdown(wait=True)
            else:
                _abandon(ex)


def _abandon(ex) -> None:
    """Terminate the pool's workers now: no result written, claims go stale, checkpoints stay."""
    manager = getattr(ex, "_executor_manager_thread", None)
    previous = threading.excepthook

    def quiet(args, manager=manager, previous=previous):  # the pool's thread sees its workers die
        if args.thread is not manager:
            previous(args)

    threading.excepthook = quiet
    for proc in list(getattr(ex, "_processes", {}).values()):
        proc.terminate()
    ex.shutdown(wait=False, cancel_futures=True)


def _pool_worker_init() -> None:
    import signal

    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the driver decides
