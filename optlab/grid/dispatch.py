"""Dispatch of a grid's trials to an executor: what is left to do, progress, sinks."""

from __future__ import annotations

import os
import sys
import warnings

from optlab.store import Store

from .executors.base import Executor
from .sinks import Sink
from .spec import GridSpec, SpecError
from .trial import Trial, resolved_names

__all__ = ["GridInterrupted", "todo_trials", "Reporter", "dispatch"]


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a grid run; ``counts`` says what finished (everything written stays valid)."""

    def __init__(self, counts: dict):
        super().__init__("grid run interrupted")
        self.counts = counts


def _check_same_items(t: Trial, rec: dict, cache: dict) -> None:
    """A stored trial counts as done only if its names still resolve to the plugins' items that ran it
    (its record's ``resolved``; records without it predate qualified names and are taken as they are)."""
    then = rec.get("resolved")
    if not then:
        return
    key = (t.config["optimizer"], t.config["task"], t.config["model"])
    if key not in cache:
        cache[key] = resolved_names(t.config)
    now = cache[key]
    changed = {k: (then[k], now[k]) for k in now if k in then and then[k] != now[k]}
    if changed:
        what = "; ".join(f"{k} {t.config[k]!r} ran as {a!r} but now resolves to {b!r}" for k, (a, b) in changed.items())
        raise SpecError(
            f"trial {t.id} ({t.label}) is stored, but {what}. Write the qualified name in the spec "
            f"(e.g. {next(iter(changed.values()))[1]!r}) to run it, or use another results directory."
        )


def todo_trials(store: Store, trials: list[Trial], done: dict[str, dict], retry_failed: bool) -> list[Trial]:
    todo: list[Trial] = []
    cache: dict = {}
    for t in trials:
        if t.id in done:
            _check_same_items(t, done[t.id], cache)
            if retry_failed and done[t.id]["status"] == "failed":
                store.quarantine(store.trials / f"{t.id}.json", "failed; rerun by --retry-failed")
                todo.append(t)
            continue
        todo.append(t)
    return todo


class Reporter:
    """Progress of a grid run: a tqdm bar on a terminal; otherwise (a log file, CI, a pipe) one line per
    finished trial, no carriage returns. Also feeds each finished trial's stored record to the sinks."""

    def __init__(self, spec: GridSpec, store: Store, total: int, initial: int, progress: bool, sinks: list[Sink]):
        from tqdm.auto import tqdm

        self.store, self.total, self.n, self.sinks = store, total, initial, sinks
        self.counts: dict = {}
        # the bar is drawn on stderr (tqdm), so it is stderr that must be a terminal
        self.tty = sys.stderr.isatty() and os.environ.get("OPTLAB_NO_PROGRESS") != "1"
        self.lines = progress and not self.tty
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=f"grid {spec.name}",
            unit="trial",
            disable=not (progress and self.tty),
            dynamic_ncols=True,
        )
        self._sink_errors: set[str] = set()

    def finished(self, trial: Trial, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        self.n += 1
        self.bar.update(1)
        self.bar.set_postfix(self.counts, refresh=False)
        rec = None
        if status in ("ok", "diverged", "failed") and (self.sinks or self.lines):
            try:
                rec = self.store.read(trial.id)
            except (OSError, ValueError):
                rec = None
        if self.lines:
            secs = f"  {rec['finished'] - rec['started']:.1f}s" if rec and rec.get("started") else ""
            print(f"[{self.n}/{self.total}] {status:<8} {trial.label}{secs}", flush=True)
        if rec is not None:
            self.to_sinks(rec)

    def to_sinks(self, rec: dict) -> None:
        for sink in self.sinks:
            try:
                sink.write(rec)
            except Exception as exc:  # a sink never stops a grid: the store has the result
                key = type(sink).__name__
                if key not in self._sink_errors:
                    self._sink_errors.add(key)
                    warnings.warn(
                        f"sink {key} failed ({type(exc).__name__}: {exc}); the store still has every "
                        "result: rerun `optlab grid run` to replay it into the sinks",
                        RuntimeWarning,
                        stacklevel=2,
                    )

    def grow(self, n: int) -> None:
        """``n`` more trials than the total announced (the grid extension adds them as it goes)."""
        self.total += n
        self.bar.total = self.total
        self.bar.refresh()

    def skipped(self, n: int) -> None:
        self.n += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                pass


def dispatch(store: Store, todo: list[Trial], ex: Executor, threads: int | None, rep: Reporter) -> None:
    if not todo:
        return
    by_id = {t.id: t for t in todo}
    for tid, status in ex.run(str(store.root), todo, threads):
        rep.finished(by_id[tid], status)
