"""One training run: task + model + optimizer, per-epoch metrics, checkpoints, divergence.

``train(RunConfig(...))`` returns a result dict ``{status, error, metrics, config,
...}``; ``status`` is ``ok``, ``diverged`` (non-finite loss: stopped early, metrics
so far kept) or ``failed`` (an exception; its text kept). With a checkpoint path
the run saves its full state after every epoch (atomically) and resumes from it,
reaching the same final metrics as an uninterrupted run. With ``nproc > 1`` the run
is launched on that many processes with ``torch.distributed.run`` (:mod:`optlab.launch`),
each training a DistributedDataParallel replica on its shard of every global batch
(:class:`optlab.distributed.RankContext`).
"""

from __future__ import annotations

import io
import math
import os
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import api, registry
from .closures import TIMED_PHASES, StepAccounting
from .distributed import RankContext
from .hparams import unknown_name, validate
from .launch import TrialLost, launch_trial
from .store import SCHEMA_VERSION, atomic_write
from .tasks import make_model, make_task

__all__ = ["RunConfig", "train", "RUN_KEYS", "lr_factor", "use_task_loss"]

SCHEDULES = ("constant", "multistep", "cosine")


@dataclass
class RunConfig:
    """Everything that defines a training run (hyperparameters of the optimizer in ``hparams``)."""

    task: str = "digits"
    model: str = "cnn-bn"
    optimizer: str = "sgd-ph"
    hparams: dict = field(default_factory=dict)
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr_schedule: str = "constant"
    milestones: list | None = None  # epochs; default for multistep: [epochs/2, 3*epochs/4]
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    decouple: bool = False
    engine: str = "autograd"
    task_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    device: str = "cpu"
    compile: bool = False  # torch.compile the model: plain steps compiled, refresh steps eager (optlab.compiled)
    nproc: int = 1  # processes of one trial (DDP via torchrun); batch_size is the global batch
    eval_every_steps: int | None = None  # also evaluate validation every N steps (time to target); None: per epoch

    def to_dict(self) -> dict:
        """The settings as a dict; keys added after trial ids existed are left out at their
        default (:data:`OMIT_AT_DEFAULT`), so the id of every earlier configuration is unchanged."""
        d = asdict(self)
        for k, default in OMIT_AT_DEFAULT.items():
            if d.get(k) == default and type(d.get(k)) is type(default):
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        unknown = [k for k in d if k not in RUN_KEYS]
        if unknown:
            raise KeyError(unknown_name("run setting", unknown[0], RUN_KEYS))
        return cls(**d)

    def validate_run(self) -> RunConfig:
        """Check the run settings (everything but the optimizer and its hyperparameters)."""

        def num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        def integer(x, lo):
            return isinstance(x, int) and not isinstance(x, bool) and x >= lo

        for kind, name in (("task", self.task), ("model", self.model)):
            if not isinstance(name, str):
                raise ValueError(f"invalid {kind}={name!r}; expected a registered {kind} name (a string)")
            registry.get(kind, name)
        checks = [
            ("epochs", lambda: integer(self.epochs, 1), "an integer >= 1"),
            ("batch_size", lambda: integer(self.batch_size, 2), "an integer >= 2"),
            ("seed", lambda: integer(self.seed, 0), "an integer >= 0"),
            ("lr_schedule", lambda: self.lr_schedule in SCHEDULES, "one of " + ", ".join(SCHEDULES)),
            (
                "milestones",
                lambda: (
                    self.milestones is None
                    or (isinstance(self.milestones, list) and all(num(m) and m >= 0 for m in self.milestones))
                ),
                "a list of epochs (numbers >= 0)",
            ),
            ("gamma", lambda: num(self.gamma) and 0 < self.gamma <= 1, "a number in (0, 1]"),
            (
                "warmup_epochs",
                lambda: num(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
                f"a number in [0, epochs={self.epochs!r})",
            ),
            ("decouple", lambda: isinstance(self.decouple, bool), "true or false"),
            ("compile", lambda: isinstance(self.compile, bool), "true or false"),
            ("engine", lambda: self.engine in ("autograd", "func"), "'autograd' or 'func'"),
            ("task_options", lambda: isinstance(self.task_options, dict), "a table of task options"),
            ("model_options", lambda: isinstance(self.model_options, dict), "a table of model options"),
            ("hparams", lambda: isinstance(self.hparams, dict), "a table of hyperparameters"),
            ("device", lambda: isinstance(self.device, str), "a torch device string such as 'cpu' or 'cuda'"),
            ("nproc", lambda: integer(self.nproc, 1), "an integer >= 1 (processes of one trial)"),
            (
                "eval_every_steps",
                lambda: self.eval_every_steps is None or integer(self.eval_every_steps, 1),
                "an integer >= 1 (evaluate validation every N optimizer steps) or unset (once per epoch)",
            ),
            (
                "batch_size",
                lambda: self.batch_size % self.nproc == 0,
                lambda: (
                    f"a multiple of nproc={self.nproc!r}: each of the {self.nproc} processes trains on an equal "
                    f"shard of every global batch (e.g. batch_size={_round_down(self.batch_size, self.nproc)})"
                ),
            ),
            (
                "device",
                lambda: self.nproc == 1 or self.device in ("cpu", "cuda"),
                f"'cpu' or 'cuda' with nproc={self.nproc!r} (process r of a multi-process trial uses cuda:r)",
            ),
        ]
        for key, ok, valid in checks:  # in order, lazily: a later check may rely on an earlier one
            if not ok():
                valid = valid() if callable(valid) else valid  # a message that is safe only after earlier checks
                raise ValueError(f"invalid {key}={getattr(self, key)!r}; expected {valid}")
        return self

    def validate(self) -> RunConfig:
        self.validate_run()
        if not isinstance(self.optimizer, str) or self.optimizer not in api.optimizer_names():
            raise registry.RegistryError(unknown_name("optimizer", self.optimizer, api.optimizer_names()))
        lr = self.hparams.get("lr")
        if lr is not None and (
            not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr < 0 or not math.isfinite(lr)
        ):
            raise ValueError(f"invalid lr={lr!r}; expected a finite number >= 0")
        if self.nproc > 1:
            self._check_data_parallel()
        return self

    def _check_data_parallel(self) -> None:
        """What cannot run under DistributedDataParallel fails before any process starts."""
        entry = api.optimizer_entry(self.optimizer)
        if entry.takes_engine and self.engine == "func":
            raise ValueError(
                f"invalid engine='func' with nproc={self.nproc}: torch.func transforms bypass "
                "DistributedDataParallel, so curvature would not be averaged over the processes; "
                "expected engine='autograd' (or nproc=1)"
            )
        if entry.create_graph:
            raise ValueError(
                f"optimizer {self.optimizer!r} cannot run with nproc={self.nproc}: it reads a double-backward "
                "graph from p.grad on every step, which DistributedDataParallel cannot carry. Use nproc=1, or an "
                "optlab preset that averages curvature over processes itself (e.g. 'adahessian', 'sophia')"
            )


def _round_down(n: int, k: int) -> int:
    """The largest multiple of ``k`` that is <= ``n`` (at least ``k``)."""
    return k * max(1, n // k)


RUN_KEYS = tuple(RunConfig.__dataclass_fields__)
#: run settings newer than the trial-id scheme: absent from ``to_dict`` (hence from the id) at these values
OMIT_AT_DEFAULT = {"compile": False, "nproc": 1, "eval_every_steps": None}


def lr_factor(cfg: RunConfig, epoch: float) -> float:
    """Learning-rate multiplier at fractional ``epoch``: linear warmup, then the schedule."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (epoch + 1e-12) / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - cfg.warmup_epochs) / span)))
    if cfg.lr_schedule == "multistep":
        ms = cfg.milestones if cfg.milestones is not None else [cfg.epochs / 2, 3 * cfg.epochs / 4]
        return cfg.gamma ** sum(epoch >= m for m in ms)
    return 1.0


def _atomic_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "data_generator", "torch_rng", "metrics", "epoch")


def load_checkpoint(path: Path, device) -> dict | None:
    """The checkpoint at ``path``, loaded with ``weights_only=True`` (tensors and plain containers only:
    a pickled object cannot run code), or None if it cannot be loaded safely or is malformed -- then the
    file is moved aside (``<name>.rejected-<time>``) with a warning and the run starts from scratch."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ck, dict) or any(k not in ck for k in CHECKPOINT_KEYS):
            raise ValueError(f"not an optlab checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
        return ck
    except Exception as exc:  # unpickling refused, truncated zip, wrong shape: never executed, never fatal
        _reject_checkpoint(path, exc)
        return None


def _reject_checkpoint(path: Path, exc: BaseException) -> Path:
    """Move an unusable checkpoint aside (kept for inspection) and warn; the run restarts from scratch."""
    dest = path.with_name(f"{path.name}.rejected-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, dest)
    text = str(exc).strip()
    reason = text.splitlines()[0][:300] if text else ""
    warnings.warn(
        f"checkpoint {path} could not be used ({type(exc).__name__}: {reason}); moved to {dest.name}, "
        "the run restarts from scratch",
        RuntimeWarning,
        stacklevel=3,
    )
    return dest


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
    launched with torchrun (:func:`optlab.launch.launch_trial`); a process of it that dies without
    a result (killed) raises :class:`optlab.launch.TrialLost`: nothing is recorded, the checkpoint
    stays, and the same call resumes from it. ``ranks`` is set by :mod:`optlab.ddp_worker`.
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
        cfg.validate()
        if launcher and cfg.nproc > 1:
            result = launch_trial(cfg, checkpoint=checkpoint, on_epoch=on_epoch)
            result["wall_time"] = time.perf_counter() - t_start  # process start-up included
            return result
        if ranks.world != cfg.nproc:
            raise ValueError(f"nproc={cfg.nproc} but this trial runs on {ranks.world} processes")
        _run(cfg, result, Path(checkpoint) if checkpoint else None, progress, on_epoch, ranks)
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


def _build(cfg: RunConfig, device, ranks: RankContext):
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
    return task, model, net, opt, sched, data_gen, iters


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


def _run(cfg: RunConfig, result: dict, ckpt_path: Path | None, progress: bool, on_epoch, ranks: RankContext) -> None:
    """The training loop. Every optimizer (preset or baseline) takes the same forward-only
    closure ``opt.step(lambda: (loss, outputs))`` and keeps the same accounting
    (:class:`optlab.closures.StepAccounting`), read per epoch into the metrics. ``ranks``:
    this process's part of a multi-process trial (a no-op for one process)."""
    device = ranks.device if ranks.device is not None else torch.device(cfg.device)
    task, model, net, opt, sched, data_gen, iters = _build(cfg, device, ranks)
    start = 0
    # rank 0 alone reads (and may reject) the checkpoint; every rank resumes from what it read
    had_checkpoint, ck = ranks.from_writer(
        lambda: (
            (True, load_checkpoint(ckpt_path, device))
            if ckpt_path is not None and ckpt_path.exists()
            else (False, None)
        )
    )
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            data_gen.set_state(ck["data_generator"])
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
                _reject_checkpoint(ckpt_path, exc)
            task, model, net, opt, sched, data_gen, iters = _build(cfg, device, ranks)
            ck = None
    result["checkpoint_rejected"] = had_checkpoint and ck is None
    if ck is not None:
        result["metrics"] = ck["metrics"]
        start = result["resumed_from_epoch"] = ck["epoch"]
    result.update(describe_optimizer(cfg, opt))
    result["num_params"] = sum(p.numel() for p in model.parameters())
    if ranks.distributed:
        result["distributed"] = ranks.describe()
    accounting: StepAccounting = opt  # type: ignore[assignment]  # api.optimizer gives every optimizer it
    # the optimizer holds the eager model (parameters, checkpoints); training forwards go through the
    # compiled one; refresh steps (and every step of a create_graph baseline) run it eagerly (optlab.compiled)
    forward = torch.compile(net) if cfg.compile else net  # net: the model, or its DDP wrapper
    wall = result["metrics"][-1]["wall_time"] if result["metrics"] else 0.0
    result["steps_per_epoch"] = iters
    evals = None
    if cfg.eval_every_steps:
        result["evaluations"] = list(ck.get("evaluations") or []) if ck is not None else []
        evals = StepEvaluations(
            cfg.eval_every_steps, result["evaluations"], ck.get("train_seconds", 0.0) if ck is not None else 0.0
        )
    for epoch in range(start, cfg.epochs):
        t_epoch = time.perf_counter()
        t0 = dict(accounting.timings)
        h0, v0 = accounting.hvp_count, accounting.vjp_count
        if evals is not None:
            evals.start_epoch(sum(int(m.get("hvp_count") or 0) for m in result["metrics"]))
        step = epoch * iters
        loss_sum, correct, seen, diverged = 0.0, 0, 0, False
        bar = _progress(
            iters, f"{cfg.optimizer} {cfg.task}/{cfg.model} s{cfg.seed} ep {epoch + 1}/{cfg.epochs}", progress
        )
        for xb, yb in task.train_batches(cfg.batch_size, data_gen):
            x, y = xb[ranks.shard(cfg.batch_size)], yb[ranks.shard(cfg.batch_size)]  # this process's shard
            holder: dict[str, torch.Tensor] = {}

            def closure(x=x, y=y, holder=holder):
                out = holder["out"] = forward(x)
                return task.loss_fn(out, y), out

            loss = opt.step(closure)
            sched.step()
            step_loss, step_correct, step_seen = ranks.sum(  # the global batch's (every process agrees)
                [float(loss) * y.shape[0], int((holder["out"].detach().argmax(-1) == y).sum()), y.shape[0]]
            )
            if not math.isfinite(step_loss):
                diverged = True
                break
            loss_sum += step_loss
            correct += int(step_correct)
            seen += int(step_seen)
            step += 1
            if evals is not None:
                evals.after_step(step, iters, accounting.hvp_count - h0, lambda: _evaluate(model, task, "val", ranks))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.close()
        spent = {k: accounting.timings[k] - t0[k] for k in TIMED_PHASES}
        nan2 = (float("nan"), float("nan"))
        secs = evals.seconds() if evals is not None else 0.0
        t_eval = time.perf_counter()
        val_loss, val_acc = nan2 if diverged else _evaluate(model, task, "val", ranks)
        if evals is not None and not diverged:
            evals.add(step, step / iters, secs, evals.hvps + accounting.hvp_count - h0, val_loss, val_acc)
        test_loss, test_acc = nan2 if diverged else _evaluate(model, task, "test", ranks)
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
            "lr": opt.param_groups[0]["lr"],
            "lrs": {g.get("rule", f"group{i}"): g["lr"] for i, g in enumerate(opt.param_groups)},
            "time_forward_backward": spent["forward_backward"],
            "time_curvature": spent["curvature"],
            "time_update": spent["update"],
            "time_epoch": epoch_time,
            "wall_time": wall,
            "hvp_count": accounting.hvp_count - h0,
            "vjp_count": accounting.vjp_count - v0,
        }
        result["metrics"].append(row)
        if on_epoch is not None:
            on_epoch(row)
        if diverged:
            result["status"] = "diverged"
            result["error"] = f"non-finite loss in epoch {epoch + 1}"
            return
        if ckpt_path is not None and ranks.is_writer:
            _atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "data_generator": data_gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "metrics": result["metrics"],
                    "epoch": epoch + 1,
                    **(
                        {"evaluations": result["evaluations"], "train_seconds": evals.train_seconds}
                        if evals is not None
                        else {}
                    ),
                },
                ckpt_path,
            )
    result["status"] = "ok"
