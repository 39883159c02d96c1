"""Ablation grids: a TOML spec -> the cartesian product of trials -> a resumable run.

Spec (see ``experiments/quickstart.toml``)::

    name = "quickstart"
    seeds = [0, 1]

    [run]                      # run settings shared by every trial (lists become axes)
    epochs = 4
    batch_size = 64
    lr_schedule = "cosine"

    [[setting]]                # task/model pairs (and per-pair run overrides)
    task = "digits"
    model = "cnn-bn"

    [[optimizer]]              # one block per optimizer; lists are axes, scalars fixed
    name = "sgd-ph"
    lr = [0.05, 0.1]
    hessian_momentum = [0.0, 0.9]

Trials = settings x seeds x (for each optimizer block, the product of its axes)
x the run-setting axes. A trial's id is a hash of its full configuration, so
re-running a grid runs exactly the trials that have no result yet.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import time
import tomllib
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from . import api, registry
from .hparams import closest
from .store import Store
from .train import RUN_KEYS, RunConfig, train

__all__ = ["GridSpec", "Trial", "load_spec", "expand", "run_grid", "grid_status", "SpecError", "environment"]

TOP_KEYS = ("name", "description", "seeds", "run", "setting", "optimizer", "results")
RUN_AXES = tuple(k for k in RUN_KEYS if k not in ("optimizer", "hparams", "seed"))


class SpecError(ValueError):
    pass


@dataclass
class GridSpec:
    name: str
    path: Path | None
    text: str
    data: dict


@dataclass(frozen=True)
class Trial:
    id: str
    config: dict

    @property
    def label(self) -> str:
        c = self.config
        hp = ",".join(f"{k}={v}" for k, v in sorted(c["hparams"].items()))
        return f"{c['optimizer']}[{hp}] {c['task']}/{c['model']} seed={c['seed']}"


def trial_id(config: dict) -> str:
    canon = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(canon.encode()).hexdigest()[:16]


def load_spec(path_or_text: str | Path, *, is_text: bool = False) -> GridSpec:
    if is_text:
        text, path = str(path_or_text), None
    else:
        path = Path(path_or_text)
        if not path.exists():
            raise SpecError(f"grid spec {path} not found")
        text = path.read_text(encoding="utf-8")
    where = str(path) if path else "<spec>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where}: invalid TOML: {exc}") from exc
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}.{closest(unknown[0], TOP_KEYS)} "
                        f"Valid top-level keys: {', '.join(TOP_KEYS)}.")
    name = data.get("name") or (path.stem if path else "grid")
    return GridSpec(name, path, text, data)


LIST_VALUED = ("milestones", "betas")  # settings whose value is a list: write [[...], [...]] for an axis


def _axis(where: str, key: str, value) -> list:
    vals = value if isinstance(value, list) else [value]
    if key in LIST_VALUED and isinstance(value, list) and value and not isinstance(value[0], list):
        vals = [value]
    if not vals:
        raise SpecError(f"{where}.{key}: empty axis (give at least one value)")
    return vals


def expand(spec: GridSpec) -> list[Trial]:
    """All trials of ``spec``, validated (unknown axes, bad values name their key)."""
    d = spec.data
    where = str(spec.path) if spec.path else "<spec>"
    seeds = _axis(where, "seeds", d.get("seeds", [0]))
    for s in seeds:
        if not isinstance(s, int) or s < 0:
            raise SpecError(f"{where}.seeds: invalid seed {s!r}; expected integers >= 0")
    run = dict(d.get("run", {}))
    settings = d.get("setting") or [{}]
    if not isinstance(settings, list):
        raise SpecError(f"{where}.setting: expected [[setting]] tables")
    blocks = d.get("optimizer")
    if not blocks or not isinstance(blocks, list):
        raise SpecError(f"{where}: no [[optimizer]] block; add at least one, e.g.\n[[optimizer]]\nname = \"sgd-ph\"")
    trials: list[Trial] = []
    seen: set[str] = set()
    for si, setting in enumerate(settings):
        merged = {**run, **setting}
        for k in merged:
            if k not in RUN_AXES:
                raise SpecError(f"{where}.{'setting[%d]' % si if k in setting else 'run'}.{k}: unknown run setting."
                                f"{closest(k, RUN_AXES)} Valid: {', '.join(RUN_AXES)}.")
        run_axes = {k: _axis(f"{where}.run", k, v) for k, v in merged.items()}
        for bi, block in enumerate(blocks):
            bwhere = f"{where}.optimizer[{bi}]"
            if "name" not in block:
                raise SpecError(f"{bwhere}: missing 'name' (one of {', '.join(api.optimizer_names())})")
            oname = block["name"]
            if oname not in api.optimizer_names():
                valid = api.optimizer_names()
                raise SpecError(f"{bwhere}.name: unknown optimizer {oname!r}.{closest(oname, valid)} "
                                f"Valid: {', '.join(valid)}.")
            hp_axes = {k: _axis(bwhere, k, v) for k, v in block.items() if k != "name"}
            known = api.preset_hparams(oname)
            fn = (registry.items("preset").get(oname) or registry.items("baseline")[oname]).item
            open_kw = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
            for k in hp_axes:
                if k not in known and not open_kw:
                    raise SpecError(f"{bwhere}.{k}: unknown axis for {oname}.{closest(k, known)} "
                                    f"Valid: {', '.join(known)}.")
                if k not in known:  # an option the preset forwards (e.g. to its estimator): try it alone
                    _check_hparams(f"{bwhere}.{k}: {oname}", oname, {k: hp_axes[k][0]})
            keys = list(run_axes) + list(hp_axes)
            for combo in itertools.product(*run_axes.values(), *hp_axes.values()):
                runv = dict(zip(keys[:len(run_axes)], combo[:len(run_axes)]))
                hp = dict(zip(keys[len(run_axes):], combo[len(run_axes):]))
                _check_hparams(bwhere, oname, hp)
                for seed in seeds:
                    cfg = RunConfig.from_dict({**runv, "optimizer": oname, "hparams": hp, "seed": seed})
                    try:
                        cfg.validate()
                    except (ValueError, KeyError) as exc:
                        raise SpecError(f"{bwhere}: {exc}") from exc
                    c = cfg.to_dict()
                    tid = trial_id(c)
                    if tid not in seen:
                        seen.add(tid)
                        trials.append(Trial(tid, c))
    return trials


def _check_hparams(where: str, name: str, hp: dict) -> None:
    """Build the optimizer on a tiny BatchNorm model: every bad value fails here, named."""
    from torch import nn
    probe = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            api.optimizer(name, probe, **hp)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}: {exc}") from exc
    except ImportError as exc:
        raise SpecError(f"{where}: {exc}") from exc


def environment() -> dict:
    """Package versions, git revision, host, threads: stored with every trial."""
    import torch
    return {**_static_environment(), "torch_threads": torch.get_num_threads()}


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict:
    """What cannot change within a process (read once: it runs git twice)."""
    import importlib.metadata as md

    import torch
    versions = {}
    for pkg in ("optlab", "torch", "numpy", "pandas", "pluggy", "scikit-learn", "mnist1d", "pytorch_optimizer"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        rev, dirty = None, None
    return {"versions": versions, "python": sys.version.split()[0], "git_revision": rev, "git_dirty": dirty,
            "host": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


# ------------------------------------------------------------------ running
def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    os.environ["OPTLAB_NO_PROGRESS"] = "1"


def run_trial(root: str, trial: Trial, threads: int | None = None) -> tuple[str, str]:
    """Run one trial into the store (claim, train with checkpoints, write, release)."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    store = Store(root)
    if store.has(trial.id):
        return trial.id, "exists"
    if not store.claim(trial.id):
        return trial.id, "busy"
    try:
        if store.has(trial.id):  # finished by someone else between the check and the claim
            return trial.id, "exists"
        started = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = train(trial.config, checkpoint=store.checkpoint(trial.id), progress=False)
        res.update(id=trial.id, started=started, finished=time.time(), env=environment())
        store.write(trial.id, res)
        try:
            store.checkpoint(trial.id).unlink()
        except FileNotFoundError:
            pass
        return trial.id, res["status"]
    finally:
        store.release(trial.id)


def default_results_dir(spec: GridSpec) -> Path:
    return Path(spec.data.get("results") or Path("results") / spec.name)


def run_grid(spec: GridSpec | str | Path, *, workers: int = 1, results: str | Path | None = None,
             retry_failed: bool = False, threads: int | None = None, progress: bool = True) -> dict:
    """Run every missing trial of ``spec``; returns counts by outcome."""
    if not isinstance(spec, GridSpec):
        spec = load_spec(spec)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"invalid workers={workers!r}; expected an integer >= 1")
    trials = expand(spec)
    store = Store(results or default_results_dir(spec)).init(spec.text)
    done = store.ids()
    todo = []
    for t in trials:
        if t.id in done:
            if retry_failed and store.read(t.id).get("status") == "failed":
                (store.trials / f"{t.id}.json").unlink()
                todo.append(t)
            continue
        todo.append(t)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    counts: dict[str, int] = {"skipped_complete": len(trials) - len(todo)}
    from tqdm.auto import tqdm
    bar = tqdm(total=len(trials), initial=len(trials) - len(todo), desc=f"grid {spec.name}", unit="trial",
               disable=not progress or os.environ.get("OPTLAB_NO_PROGRESS") == "1", dynamic_ncols=True)

    def note(status: str) -> None:
        counts[status] = counts.get(status, 0) + 1
        bar.update(1)
        bar.set_postfix({k: v for k, v in counts.items() if k != "skipped_complete"}, refresh=False)

    try:
        if workers == 1:
            _init_worker(threads)
            for t in todo:
                bar.set_description(f"grid {spec.name}: {t.label}"[:70])
                note(run_trial(str(store.root), t)[1])
        else:
            # forkserver: one clean server process imports torch/optlab once, workers fork from it
            # (cheaper than spawn's import per worker, safer than forking a process with torch threads)
            ctx = get_context("forkserver")
            ctx.set_forkserver_preload(["torch", "optlab.grid", "optlab.plugins.builtins",
                                        "optlab.plugins.tasks", "optlab.plugins.models"])
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                     initializer=_init_worker, initargs=(threads,)) as ex:
                pending = {ex.submit(run_trial, str(store.root), t) for t in todo}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        note(f.result()[1])
    finally:
        bar.close()
    counts["results"] = str(store.root)
    return counts


def grid_status(spec: GridSpec | str | Path, results: str | Path | None = None) -> dict:
    """Counts of done / diverged / failed / running / missing trials of ``spec``."""
    if not isinstance(spec, GridSpec):
        spec = load_spec(spec)
    trials = expand(spec)
    store = Store(results or default_results_dir(spec))
    ids, live = store.ids(), store.live_claims()
    out = {"total": len(trials), "ok": 0, "diverged": 0, "failed": 0, "running": 0, "missing": 0,
           "results": str(store.root)}
    for t in trials:
        if t.id in ids:
            out[store.read(t.id).get("status", "failed")] += 1
        elif t.id in live:
            out["running"] += 1
        else:
            out["missing"] += 1
    return out
