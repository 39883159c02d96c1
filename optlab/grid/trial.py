"""One trial of a grid: :class:`Trial` and its id, and :func:`run_trial`, which runs it into the
results store with the :func:`environment` recorded with it.

Every executor backend (:mod:`optlab.grid.executors`) runs ``run_trial`` wherever the trial goes;
it sits below them and below the rest of :mod:`optlab.grid`, so none imports another for it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from optlab.store import CorruptRecord, Store
from optlab.training.config import RunConfig
from optlab.training.launch import TrialLost
from optlab.training.loop import train

__all__ = ["Trial", "trial_id", "run_trial", "environment", "resolved_names"]

#: part of every trial id: trials run before validation splits existed (data version 1) have other ids
DATA_VERSION = 2


@dataclass(frozen=True)
class Trial:
    """One run of a grid. ``config`` is the run configuration as the store and the id see it
    (:meth:`RunConfig.to_dict`); ``run`` is the checked :class:`RunConfig` itself, carried from
    where the trial was built to :func:`run_trial` (``None``: built from ``config`` when needed)."""

    id: str
    config: dict
    arm: str = ""  # the [[optimizer]] block's label (default: the optimizer's name)
    stage: str = "tuning"  # "tuning" or "evaluation"
    selection: dict | None = None
    extension: dict | None = None  # added by the grid extension: {"round", "axis", "side", "from"}
    run: RunConfig | None = field(default=None, compare=False, repr=False)

    def run_config(self) -> RunConfig:
        """The trial's :class:`RunConfig` (checked where the trial was built; else from ``config``)."""
        return self.run if self.run is not None else RunConfig.from_dict(self.config)

    @property
    def label(self) -> str:
        c = self.config
        hp = ",".join(f"{k}={v}" for k, v in sorted(c["hparams"].items()))
        stage = " [eval]" if self.stage == "evaluation" else ""
        if self.extension:
            stage = f" [extension {self.extension['round']}: {self.extension['axis']}]"
        procs = f" nproc={c['nproc']}" if c.get("nproc", 1) != 1 else ""
        return f"{self.arm or c['optimizer']}[{hp}] {c['task']}/{c['model']} seed={c['seed']}{procs}{stage}"


def trial_id(config: dict) -> str:
    canon = json.dumps({**config, "_data_version": DATA_VERSION}, sort_keys=True, default=str)
    return hashlib.sha1(canon.encode()).hexdigest()[:16]


def resolved_names(config: dict) -> dict[str, str]:
    """The qualified names (``<plugin>:<item>``) that ``config``'s optimizer, task and model resolve
    to in this process. A trial's record stores them under ``resolved``; its id stays computed from
    the names as written, and :func:`optlab.grid.run_grid` refuses to reuse a stored trial whose
    names now resolve to other plugins' items. Unknown or ambiguous names raise ``RegistryError``."""
    from optlab.api import OPTIMIZER_KINDS
    from optlab.plugin import registry

    return {
        "optimizer": registry.qualify(OPTIMIZER_KINDS, config["optimizer"]),
        "task": registry.qualify("task", config["task"]),
        "model": registry.qualify("model", config["model"]),
    }


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
        path = store.trials / f"{trial.id}.json"
        if path.exists():  # present but does not validate: keep it for inspection, rerun
            try:
                store.read(trial.id)
            except CorruptRecord as exc:
                store.quarantine(path, exc.problem)
        started = time.time()
        from optlab.plugin.registry import RegistryError

        try:
            resolved: dict | None = resolved_names(trial.config)
        except RegistryError:  # unknown or ambiguous here: train records the failure and its reason
            resolved = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                res = train(trial.run_config(), checkpoint=store.checkpoint(trial.id), progress=False)
            except TrialLost as exc:  # a process of a multi-process trial was killed: no record, checkpoint kept
                print(f"optlab: trial {trial.id} lost: {exc}", file=sys.stderr)
                return trial.id, "error"
        res.update(
            id=trial.id,
            arm=trial.arm or trial.config["optimizer"],
            stage=trial.stage,
            started=started,
            finished=time.time(),
            env=environment(),
        )
        if resolved is not None:
            res["resolved"] = resolved
        if trial.selection is not None:
            res["selection"] = trial.selection
        if trial.extension is not None:
            res["extension"] = trial.extension
        store.write(trial.id, res)
        try:
            store.checkpoint(trial.id).unlink()
        except FileNotFoundError:
            pass
        return trial.id, res["status"]
    finally:
        store.release(trial.id)


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

    def git(*args: str) -> str:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=here).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        rev, dirty = None, None
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "git_revision": rev,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


# ------------------------------------------------------------------ running
