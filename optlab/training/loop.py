"""One training run: task + model + optimizer, per-epoch metrics, checkpoints, divergence.

``train(RunConfig(...))`` returns a result dict ``{status, error, metrics, config,
...}``; ``status`` is ``ok``, ``diverged`` (non-finite loss: stopped early, metrics
so far kept) or ``failed`` (an exception; its text kept). With a checkpoint path
the run saves its full state after every epoch (atomically) and resumes from it,
reaching the same final metrics as an uninterrupted run. With ``nproc > 1`` the run
is launched on that many processes with ``torch.distributed.run`` (:mod:`optlab.training.launch`),
each training a DistributedDataParallel replica on its shard of every global batch
(:class:`optlab.training.ranks.RankContext`).
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from optlab import api
from optlab.optim.closures import TIMED_PHASES, StepAccounting
from optlab.optim.hparams import validate
from optlab.plugin import registry
from optlab.store import SCHEMA_VERSION

from .checkpoint import load_checkpoint, reject_checkpoint, save_checkpoint
from .config import RunConfig, lr_factor
from .launch import TrialLost, launch_trial
from .ranks import RankContext
from .tasks import make_model, make_task

__all__ = ["train", "describe_optimizer", "use_task_loss"]


@torch.no_grad()
def _evaluate(model, task, split: str, ranks: RankContext) -> tuple[float, float]:
    """Mean loss and accuracy on ``split``; each process evaluates its shard of every batch."""
    model.eval()
    total, correct, n = 0.0, 0, 0
    for xb, yb in task.eval_batches(split):
        part = ranks.shard(yb.shape[0])
        x, y = xb[part], yb[part]
        if not y.shape[0]:
            continue
        out = model(x)
        total += float(task.loss_fn(out, y, reduction="sum"))
        correct += int((out.argmax(-1) == y).sum())
        n += y.shape[0]
    model.train()
    loss_sum, n_correct, n_seen = ranks.sum([total, correct, n])
    return loss_sum / n_seen, n_correct / n_seen


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    disable = not enabled or os.environ.get("OPTLAB_NO_PROGRESS") == "1"
    return tqdm(total=total, desc=desc, leave=False, disable=disable, dynamic_ncols=True)


def train(
    config: RunConfig | dict,
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    ranks: RankContext | None = None,
) -> dict[str, Any]:
    """Run one configuration; never raises for a failing run (status ``failed`` with the error).

    With ``nproc > 1`` (and no ``ranks``: this is not one of the trial's processes) the run is
    launched with torchrun (:func:`optlab.training.launch.launch_trial`); a process of it that dies without
    a result (killed) raises :class:`optlab.training.launch.TrialLost`: nothing is recorded, the checkpoint
    stays, and the same call resumes from it. ``ranks`` is set by :mod:`optlab.training.ddp_worker`.
    """
    cfg = RunConfig.from_dict(config) if isinstance(config, dict) else config
    launcher = ranks is None  # not one of a multi-process trial's processes
    ranks = ranks or RankContext()
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "config": cfg.to_dict(),
        "status": "running",
        "error": None,
        "metrics": [],
        "resumed_from_epoch": None,
    }
    t_start = time.perf_counter()
    try:
        if not cfg.checked:  # a grid trial's configuration was checked when the grid was expanded
            cfg.validate()
        if launcher and cfg.nproc > 1:
            result = launch_trial(cfg, checkpoint=checkpoint, on_epoch=on_epoch)
            result["wall_time"] = time.perf_counter() - t_start  # process start-up included
            return result
        if ranks.world != cfg.nproc:
            raise ValueError(f"nproc={cfg.nproc} but this trial runs on {ranks.world} processes")
        _train_epochs(cfg, result, Path(checkpoint) if checkpoint else None, progress, on_epoch, ranks)
    except (KeyboardInterrupt, TrialLost):
        raise
    except Exception as exc:  # recorded, not raised: a grid keeps going
        result["status"] = "failed"
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=20)
    result["wall_time"] = time.perf_counter() - t_start
    return result


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def describe_optimizer(cfg: RunConfig, opt) -> dict:
    """What the run actually used, so results describe themselves (schema version 2):
    ``hparams_resolved`` (the preset's or baseline's keyword hyperparameters with the
    defaults of the code that ran), ``rules`` (per rule: stepper, estimator, tensors,
    resolved group hyperparameters) and ``plugins`` (distribution -> version of every
    loaded optlab plugin)."""
    from importlib.metadata import entry_points

    entry = api.optimizer_entry(cfg.optimizer)
    resolved = {**entry.defaults, **cfg.hparams}
    rules = {}
    for g in opt.param_groups:
        if "rule" not in g:
            continue
        rule = opt.rules[g["rule"]]
        rules[g["rule"]] = {
            "stepper": rule.stepper.name,
            "estimator": rule.curvature.name if rule.curvature else None,
            "tensors": len(g["params"]),
            "hparams": {k: _jsonable(v) for k, v in g.items() if k not in ("params", "param_names", "rule")},
        }
    pm = registry.plugin_manager()
    plugins = {}
    for ep in entry_points(group="optlab"):
        if pm.get_plugin(ep.name) is not None and ep.dist is not None:
            plugins[ep.dist.name] = ep.dist.version
    return {
        "schema_version": SCHEMA_VERSION,
        "hparams_resolved": _jsonable(resolved),
        "rules": rules,
        "optimizer_plugin": entry.plugin,
        "plugins": plugins,
    }


def use_task_loss(opt: Any, task) -> None:
    """Tell every estimator that declares a ``loss`` hyperparameter (the Gauss-Newton family: the
    output Hessian depends on it) the loss the task computes, ``task.loss``. A rule that set
    ``loss`` explicitly to something else is an error naming both. Optimizers without rules
    (baselines) are left as they are."""
    for group in opt.param_groups:
        if "rule" not in group:
            continue
        rule = opt.rules[group["rule"]]
        spec = rule.curvature.hparams.get("loss") if rule.curvature is not None else None
        if spec is None:
            continue
        owner = f"rule {rule.name!r} (estimator {rule.curvature.name!r})"
        explicit = rule.hparams.get("loss")
        if explicit is not None and explicit != task.loss:
            raise ValueError(
                f"{owner}: loss={explicit!r}, but task {task.name!r} computes loss {task.loss!r}; "
                "drop the loss hyperparameter (it follows the task) or make them agree"
            )
        group["loss"] = validate(owner, "loss", task.loss, spec)


class _Parts(NamedTuple):
    """What one run trains: built by :func:`_build`, rebuilt when a checkpoint is rejected."""

    task: Any
    model: torch.nn.Module
    net: torch.nn.Module  # the module the training forward calls: the model, or its DDP wrapper
    opt: Any
    sched: Any
    data_gen: torch.Generator
    iters: int


def _build(cfg: RunConfig, device, ranks: RankContext) -> _Parts:
    """Fresh task, model, the module the training forward calls (the model, or its DDP wrapper:
    :meth:`RankContext.wrap`), optimizer, lr schedule and data generator of ``cfg`` (seeded)."""
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task, seed=cfg.seed, **cfg.task_options).to(device)
    model = make_model(cfg.model, task.info, decouple=cfg.decouple, **cfg.model_options).to(device)
    net = ranks.wrap(model)
    opt = api.optimizer(cfg.optimizer, net, engine=cfg.engine, seed=cfg.seed, **cfg.hparams)
    use_task_loss(opt, task)
    iters = task.num_train_batches(cfg.batch_size)
    if iters == 0:
        raise ValueError(
            f"batch_size={cfg.batch_size} exceeds the {task.x_train.shape[0]} training samples of {cfg.task}"
        )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(cfg, it / iters))
    data_gen = torch.Generator().manual_seed(cfg.seed)
    return _Parts(task, model, net, opt, sched, data_gen, iters)


def _resume(cfg: RunConfig, parts: _Parts, ckpt_path: Path | None, device, ranks: RankContext):
    """``(parts, checkpoint or None, whether a checkpoint file was there)``: ``parts`` restored from the
    checkpoint at ``ckpt_path``, or rebuilt fresh when it belongs to another configuration or is
    damaged (then set aside). Rank 0 alone reads (and may reject) the file; every rank resumes
    from what it read."""
    had_checkpoint, ck = ranks.from_writer(
        lambda: (
            (True, load_checkpoint(ckpt_path, device))
            if ckpt_path is not None and ckpt_path.exists()
            else (False, None)
        )
    )
    if ck is not None:
        try:
            parts.model.load_state_dict(ck["model"])
            parts.opt.load_state_dict(ck["optimizer"])
            parts.sched.load_state_dict(ck["scheduler"])
            parts.data_gen.set_state(ck["data_generator"])
            torch.set_rng_state(ck["torch_rng"])
            if (
                not isinstance(ck["metrics"], list)
                or not isinstance(ck["epoch"], int)
                or not 0 <= ck["epoch"] <= cfg.epochs
                or len(ck["metrics"]) != ck["epoch"]
            ):
                raise ValueError(f"epoch {ck['epoch']!r} and {len(ck['metrics'])} metric rows do not agree")
        except Exception as exc:  # a checkpoint of another configuration, or damaged: restart cleanly
            if ranks.is_writer:
                reject_checkpoint(ckpt_path, exc)
            parts = _build(cfg, device, ranks)
            ck = None
    return parts, ck, had_checkpoint


class StepEvaluations:
    """Validation every ``every`` optimizer steps and at every epoch's end, for time to target
    (:mod:`optlab.analysis.time_to_target`): one row per evaluation with ``step`` (global),
    ``epoch`` (``step / steps per epoch``), ``seconds`` (training time so far: every evaluation,
    epoch-end ones included, is left out, as AlgoPerf does), ``hvp_count`` (so far), ``val_loss``
    and ``val_acc``. ``train_seconds`` and the rows travel in the checkpoint, so a resumed run
    continues the same series."""

    def __init__(self, every: int, rows: list, train_seconds: float = 0.0):
        self.every, self.rows, self.train_seconds = every, rows, float(train_seconds)
        self.t0, self.eval_time, self.hvps = 0.0, 0.0, 0

    def start_epoch(self, hvps_before: int) -> None:
        self.t0, self.eval_time, self.hvps = time.perf_counter(), 0.0, int(hvps_before)

    def seconds(self) -> float:
        return self.train_seconds + (time.perf_counter() - self.t0) - self.eval_time

    def after_step(self, step: int, iters: int, hvps_in_epoch: int, evaluate) -> None:
        """After global step ``step``: evaluate when it is a multiple of ``every``."""
        if step % self.every == 0:
            secs = self.seconds()
            t = time.perf_counter()
            val_loss, val_acc = evaluate()
            self.eval_time += time.perf_counter() - t
            self.add(step, step / iters, secs, self.hvps + hvps_in_epoch, val_loss, val_acc)

    def add(self, step: int, epoch: float, seconds: float, hvps: int, val_loss: float, val_acc: float) -> None:
        if self.rows and self.rows[-1]["step"] == step:
            return  # the epoch's last step was already evaluated
        self.rows.append(
            {
                "step": step,
                "epoch": epoch,
                "seconds": seconds,
                "hvp_count": hvps,
                "val_loss": val_loss,
                "val_acc": val_acc,
            }
        )

    def end_epoch(self, seconds_in_epoch_training: float) -> None:
        self.train_seconds += seconds_in_epoch_training


def _train_epoch(
    cfg: RunConfig, parts: _Parts, forward, ranks: RankContext, bar, after_step=None
) -> tuple[float, int, int, bool]:
    """One pass over the training batches: ``(loss sum, correct, samples, diverged)`` of the global batches.
    Every optimizer takes the same forward-only closure ``opt.step(lambda: (loss, outputs))``;
    ``after_step()`` (optional) is called after every step that did not diverge."""
    loss_sum, correct, seen, diverged = 0.0, 0, 0, False
    for xb, yb in parts.task.train_batches(cfg.batch_size, parts.data_gen):
        x, y = xb[ranks.shard(cfg.batch_size)], yb[ranks.shard(cfg.batch_size)]  # this process's shard
        holder: dict[str, torch.Tensor] = {}

        def closure(x=x, y=y, holder=holder):
            out = holder["out"] = forward(x)
            return parts.task.loss_fn(out, y), out

        loss = parts.opt.step(closure)
        parts.sched.step()
        step_loss, step_correct, step_seen = ranks.sum(  # the global batch's (every process agrees)
            [float(loss) * y.shape[0], int((holder["out"].detach().argmax(-1) == y).sum()), y.shape[0]]
        )
        if not math.isfinite(step_loss):
            diverged = True
            break
        loss_sum += step_loss
        correct += int(step_correct)
        seen += int(step_seen)
        if after_step is not None:
            after_step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    bar.close()
    return loss_sum, correct, seen, diverged


def _checkpoint_state(parts: _Parts, metrics: list, epoch: int, evals: StepEvaluations | None = None) -> dict:
    """Everything a resumed run needs (:data:`optlab.training.checkpoint.CHECKPOINT_KEYS`; with step
    evaluations also their rows and the training seconds so far)."""
    extra = {"evaluations": evals.rows, "train_seconds": evals.train_seconds} if evals is not None else {}
    return {
        **extra,
        "model": parts.model.state_dict(),
        "optimizer": parts.opt.state_dict(),
        "scheduler": parts.sched.state_dict(),
        "data_generator": parts.data_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "metrics": metrics,
        "epoch": epoch,
    }


def _epoch_costs(opt, spent: dict, epoch_time: float, wall: float, hvps: int, vjps: int) -> dict:
    """An epoch row's learning rates (the first group's, and every rule's) and costs: seconds by phase,
    epoch and wall time, Hessian- and Jacobian-vector products."""
    return {
        "lr": opt.param_groups[0]["lr"],
        "lrs": {g.get("rule", f"group{i}"): g["lr"] for i, g in enumerate(opt.param_groups)},
        "time_forward_backward": spent["forward_backward"],
        "time_curvature": spent["curvature"],
        "time_update": spent["update"],
        "time_epoch": epoch_time,
        "wall_time": wall,
        "hvp_count": hvps,
        "vjp_count": vjps,
    }


def _step_evaluations(cfg: RunConfig, result: dict, ck: dict | None) -> StepEvaluations | None:
    """The evaluations every ``eval_every_steps`` steps (continuing a checkpoint's), or None when off."""
    if not cfg.eval_every_steps:
        return None
    result["evaluations"] = list(ck.get("evaluations") or []) if ck is not None else []
    return StepEvaluations(
        cfg.eval_every_steps, result["evaluations"], ck.get("train_seconds", 0.0) if ck is not None else 0.0
    )


def _describe_run(result: dict, cfg: RunConfig, model, opt, ranks: RankContext) -> None:
    """What the record says about the optimizer (resolved hyperparameters per rule), the model's size
    and, for a multi-process trial, its ranks."""
    result.update(describe_optimizer(cfg, opt))
    result["num_params"] = sum(p.numel() for p in model.parameters())
    if ranks.distributed:
        result["distributed"] = ranks.describe()


def _train_epochs(
    cfg: RunConfig, result: dict, ckpt_path: Path | None, progress: bool, on_epoch, ranks: RankContext
) -> None:
    """The training loop. Every optimizer (preset or baseline) takes the same forward-only
    closure ``opt.step(lambda: (loss, outputs))`` and keeps the same accounting
    (:class:`optlab.optim.closures.StepAccounting`), read per epoch into the metrics. ``ranks``:
    this process's part of a multi-process trial (a no-op for one process)."""
    device = ranks.device if ranks.device is not None else torch.device(cfg.device)
    parts, ck, had_checkpoint = _resume(cfg, _build(cfg, device, ranks), ckpt_path, device, ranks)
    start = 0
    result["checkpoint_rejected"] = had_checkpoint and ck is None
    if ck is not None:
        result["metrics"] = ck["metrics"]
        start = result["resumed_from_epoch"] = ck["epoch"]
    model, opt = parts.model, parts.opt
    _describe_run(result, cfg, model, opt, ranks)
    accounting: StepAccounting = opt  # type: ignore[assignment]  # api.optimizer gives every optimizer it
    # the optimizer holds the eager model (parameters, checkpoints); training forwards go through the
    # compiled one; refresh steps (and every step of a create_graph baseline) run it eagerly (optlab.optim.compiled)
    forward = torch.compile(parts.net) if cfg.compile else parts.net  # net: the model, or its DDP wrapper
    wall = result["metrics"][-1]["wall_time"] if result["metrics"] else 0.0
    iters = parts.iters
    result["steps_per_epoch"] = iters
    evals = _step_evaluations(cfg, result, ck)
    for epoch in range(start, cfg.epochs):
        t_epoch = time.perf_counter()
        t0 = dict(accounting.timings)
        h0, v0 = accounting.hvp_count, accounting.vjp_count
        bar = _progress(
            parts.iters, f"{cfg.optimizer} {cfg.task}/{cfg.model} s{cfg.seed} ep {epoch + 1}/{cfg.epochs}", progress
        )
        after_step = None
        step = [epoch * iters]
        if evals is not None:
            evals.start_epoch(sum(int(m.get("hvp_count") or 0) for m in result["metrics"]))

            def after_step(evals=evals, step=step, h0=h0):
                step[0] += 1
                evals.after_step(
                    step[0], iters, accounting.hvp_count - h0, lambda: _evaluate(model, parts.task, "val", ranks)
                )

        loss_sum, correct, seen, diverged = _train_epoch(cfg, parts, forward, ranks, bar, after_step)
        spent = {k: accounting.timings[k] - t0[k] for k in TIMED_PHASES}
        nan2 = (float("nan"), float("nan"))
        secs = evals.seconds() if evals is not None else 0.0
        t_eval = time.perf_counter()
        val_loss, val_acc = nan2 if diverged else _evaluate(model, parts.task, "val", ranks)
        if evals is not None and not diverged:
            end = epoch * iters + iters
            evals.add(end, end / iters, secs, evals.hvps + accounting.hvp_count - h0, val_loss, val_acc)
        test_loss, test_acc = nan2 if diverged else _evaluate(model, parts.task, "test", ranks)
        if not diverged and not (math.isfinite(test_loss) and math.isfinite(val_loss)):
            diverged = True
        epoch_time = time.perf_counter() - t_epoch
        wall += epoch_time
        if evals is not None:
            evals.end_epoch(t_eval - t_epoch - evals.eval_time)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen if seen and not diverged else float("nan"),
            "train_acc": correct / seen if seen else float("nan"),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            **_epoch_costs(opt, spent, epoch_time, wall, accounting.hvp_count - h0, accounting.vjp_count - v0),
        }
        result["metrics"].append(row)
        if on_epoch is not None:
            on_epoch(row)
        if diverged:
            result["status"] = "diverged"
            result["error"] = f"non-finite loss in epoch {epoch + 1}"
            return
        if ckpt_path is not None and ranks.is_writer:
            save_checkpoint(_checkpoint_state(parts, result["metrics"], epoch + 1, evals), ckpt_path)
    result["status"] = "ok"
