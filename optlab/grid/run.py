"""Run a grid (:func:`run_grid`: tuning stage, adaptive rounds, evaluation stage; resumable)
and report its state (:func:`grid_status`)."""

from __future__ import annotations

from pathlib import Path

from optlab.store import Store

from .adaptive import optuna_rounds, optuna_studies, optuna_total
from .dispatch import GridInterrupted, Reporter, dispatch, todo_trials
from .protocol import selection_key
from .spec import GridSpec, SpecError, build_executor, expand, load_spec
from .stages import evaluation_trials, extension_trials
from .trial import Trial

__all__ = ["run_grid", "grid_status", "tuning_trials", "default_results_dir"]


def default_results_dir(spec: GridSpec) -> Path:
    return Path(spec.data.get("results") or Path("results") / spec.name)


def run_grid(
    spec: GridSpec | str | Path,
    *,
    workers: int | None = None,
    results: str | Path | None = None,
    retry_failed: bool = False,
    threads: int | None = None,
    progress: bool = True,
    executor: str | None = None,
    executor_options: dict | None = None,
) -> dict:
    """Run every missing trial of ``spec``; returns counts by outcome.

    Trials run on the spec's ``[executor]`` (default ``local``) or ``executor`` with
    ``executor_options`` (:mod:`optlab.grid.executors`; ``workers`` is the local pool's size).
    Every finished trial is mirrored into the spec's ``[sinks]`` (:mod:`optlab.grid.sinks`), and
    trials already in the store are replayed into them first, so sinks catch up after a crash.

    With a ``[protocol]``, the tuning stage runs first; with ``extend_edges``, selections on an edge
    of their grid extend it (:func:`~optlab.grid.protocol.extension_trials`); then each (task, model,
    arm)'s configuration selected on validation (:func:`~optlab.grid.protocol.select_configs`) runs on
    the fresh evaluation seeds. Every stage is resumable: rerunning skips what is done.
    """
    if not isinstance(spec, GridSpec):
        spec = load_spec(spec)
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ValueError(f"invalid workers={workers!r}; expected an integer >= 1")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"invalid threads={threads!r}; expected an integer >= 1")
    ex = _executor(spec, executor, executor_options, workers)
    search = spec.search
    store = Store(results or default_results_dir(spec)).init(spec.text)
    studies = optuna_studies(spec, store, search) if search.sampler == "optuna" else None
    trials = expand(spec, {bi: s.configs() for bi, s in studies.items()} if studies else None)
    quarantined = store.quarantine_corrupt()
    done, _ = store.scan()
    todo = todo_trials(store, trials, done, retry_failed)
    proto = spec.protocol
    n_eval = len({selection_key(t.config, t.arm) for t in trials}) * len(proto.evaluation_seeds) if proto else 0
    threads = threads or ex.default_threads()
    counts: dict = {"skipped_complete": len(trials) - len(todo)}
    if quarantined:
        counts["quarantined"] = len(quarantined)
    sinks = _sinks(spec, store)
    total = (optuna_total(spec, search) if studies else len(trials)) + n_eval
    rep = Reporter(spec, store, total, len(trials) - len(todo), progress, sinks)
    try:
        for rec in done.values():  # sinks catch up with the store (each skips trials it already holds)
            rep.to_sinks(rec)
        dispatch(store, todo, ex, threads, rep)
        if studies:  # adaptive search: rounds of asked configurations until every block's budget is spent
            trials = optuna_rounds(spec, store, studies, search, ex, threads, rep, retry_failed)
        if proto is not None and proto["extend_edges"]:
            _run_extensions(spec, store, trials, ex, threads, rep, retry_failed, counts)
        if proto is not None:
            _run_evaluation(spec, store, trials, ex, threads, rep, retry_failed, counts)
    except KeyboardInterrupt as exc:
        rep.close()
        raise GridInterrupted(_merge(counts, rep.counts, store)) from exc
    finally:
        rep.close()
    return _merge(counts, rep.counts, store)


def _executor(spec: GridSpec, executor: str | None, executor_options: dict | None, workers: int | None):
    """The executor: the spec's ``[executor]``, or ``executor`` with ``executor_options``; ``workers``
    sizes the local pool (an error for another executor)."""
    chosen = executor or spec.executor.name
    extra = dict(executor_options or {})
    if workers is not None:
        if chosen != "local":
            raise ValueError(
                f"--workers sizes the local process pool; executor {chosen!r} takes its parallelism "
                "from its own options (ray: the cluster's CPUs / cpus_per_trial; submitit: "
                "array_parallelism)"
            )
        extra["workers"] = workers
    return build_executor(f"{spec.where}.executor", spec.executor, name=executor, extra=extra)


def _sinks(spec: GridSpec, store: Store) -> list:
    """The spec's ``[sinks]``, built on the store (their options were checked when the spec was loaded)."""
    from .sinks import SinkError

    try:
        return [cls(store.root, **opts) for cls, opts in spec.sinks]
    except SinkError as exc:
        raise SpecError(str(exc)) from exc


def _run_evaluation(
    spec: GridSpec, store: Store, trials: list[Trial], ex, threads, rep: Reporter, retry_failed, counts
) -> None:
    """The evaluation stage: each (task, model, arm)'s configuration selected on validation, on the fresh
    evaluation seeds (:func:`~optlab.grid.protocol.evaluation_trials`); cells still tuning wait."""
    done, _ = store.scan()
    etrials, waiting = evaluation_trials(spec, trials, done)
    etodo = todo_trials(store, etrials, done, retry_failed)
    counts["skipped_complete"] += len(etrials) - len(etodo)
    rep.skipped(len(etrials) - len(etodo))
    dispatch(store, etodo, ex, threads, rep)
    if waiting:
        counts["evaluation_waiting"] = ", ".join(waiting)


def _run_extensions(
    spec: GridSpec, store: Store, trials: list[Trial], ex, threads, rep: Reporter, retry_failed, counts
) -> None:
    """Extension rounds (:func:`~optlab.grid.protocol.extension_trials`) until none is left to run:
    each pass runs the trials the stored results call for; a pass that gets no new result (held by
    another live process) stops."""
    known: set[str] = set()
    while True:
        done, _ = store.scan()
        extra, _ = extension_trials(spec, trials, done)
        todo = todo_trials(store, extra, done, retry_failed)
        fresh = [t for t in extra if t.id not in known]
        counts["skipped_complete"] += len(fresh) - len([t for t in todo if t.id not in known])
        known |= {t.id for t in extra}
        if not todo:
            counts["extension_trials"] = len(extra)
            return
        rep.grow(len(todo))
        dispatch(store, todo, ex, threads, rep)
        after, _ = store.scan()
        if not any(t.id in after for t in todo):
            counts["extension_trials"] = len(extra)
            return


def tuning_trials(spec: GridSpec, results: str | Path) -> list[Trial]:
    """The tuning trials of ``spec`` known for the results directory ``results``: :func:`expand`,
    and for ``optuna`` search the configurations its studies there have asked so far."""
    search = spec.search
    if search.sampler != "optuna":
        return expand(spec)
    studies = optuna_studies(spec, Store(results), search, create=False)
    return expand(spec, {bi: s.configs() for bi, s in studies.items()})


def _merge(counts: dict, finished: dict, store: Store) -> dict:
    out = dict(counts)
    for k, v in finished.items():
        out[k] = out.get(k, 0) + v
    out["results"] = str(store.root)
    return out


def _count(trials: list[Trial], good: dict, bad_ids: set, live: set) -> dict:
    out = {"total": len(trials), "ok": 0, "diverged": 0, "failed": 0, "running": 0, "missing": 0, "invalid": 0}
    for t in trials:
        if t.id in good:
            out[good[t.id]["status"]] += 1
        elif t.id in live:
            out["running"] += 1
        elif t.id in bad_ids:
            out["invalid"] += 1
        else:
            out["missing"] += 1
    return out


def grid_status(spec: GridSpec | str | Path, results: str | Path | None = None) -> dict:
    """Counts of done / diverged / failed / running / missing / invalid trials of ``spec``.

    The top-level counts are the tuning stage's (the whole grid without a protocol);
    ``evaluation`` holds the evaluation stage's (``waiting``: keys whose tuning is unfinished,
    so their selected configuration is not known yet); ``invalid_files`` names every trial
    file that does not validate.
    """
    if not isinstance(spec, GridSpec):
        spec = load_spec(spec)
    store = Store(results or default_results_dir(spec))
    trials = tuning_trials(spec, store.root)
    good, bad = store.scan()
    live = store.live_claims()
    bad_ids = {exc.path.stem for exc in bad}
    extra, _ = extension_trials(spec, trials, good)
    out: dict = {**_count(trials + extra, good, bad_ids, live), "results": str(store.root)}
    if extra:
        out["extension"] = len(extra)
    if spec.protocol is not None:
        etrials, waiting = evaluation_trials(spec, trials, good)
        ev = _count(etrials, good, bad_ids, live)
        ev["total"] = len({selection_key(t.config, t.arm) for t in trials}) * len(spec.protocol.evaluation_seeds)
        ev["missing"] = ev["total"] - sum(ev[k] for k in ("ok", "diverged", "failed", "running", "invalid"))
        ev["waiting"] = waiting
        out["evaluation"] = ev
    out["invalid_files"] = [f"{exc.path.name}: {exc.problem}" for exc in bad]
    return out
