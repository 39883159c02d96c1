"""The run configuration: :class:`RunConfig` (everything that defines one training run) and its checks."""

from __future__ import annotations

import math
from dataclasses import Field, asdict, dataclass, field, fields

from optlab import api
from optlab.optim.hparams import unknown_name
from optlab.plugin import registry

__all__ = ["RunConfig", "RUN_KEYS", "OMIT_AT_DEFAULT", "SCHEDULES", "lr_factor", "cli_fields"]

SCHEDULES = ("constant", "multistep", "cosine")


def _cli(help: str, **argparse_options) -> dict:
    """Field metadata: the field is an ``optlab train`` option ``--<name>`` with this help."""
    return {"cli": {"help": help, **argparse_options}}


def cli_fields() -> list[tuple[Field, dict]]:
    """``(field, argparse options)`` of every :class:`RunConfig` field ``optlab train`` exposes, in order."""
    return [(f, f.metadata["cli"]) for f in fields(RunConfig) if "cli" in f.metadata]


@dataclass
class RunConfig:
    """Everything that defines a training run (hyperparameters of the optimizer in ``hparams``)."""

    task: str = field(default="digits", metadata=_cli("registered task (`optlab plugins` lists them)"))
    model: str = field(default="cnn-bn", metadata=_cli("registered model"))
    optimizer: str = field(default="sgd-ph", metadata=_cli("preset or baseline"))
    hparams: dict = field(default_factory=dict)
    seed: int = field(default=0, metadata=_cli("seed of initialization, shuffling and estimators", type=int))
    epochs: int = field(default=10, metadata=_cli("training epochs", type=int))
    batch_size: int = field(default=64, metadata=_cli("mini-batch size", type=int))
    lr_schedule: str = field(
        default="constant", metadata=_cli("learning-rate schedule over epochs", choices=list(SCHEDULES))
    )
    milestones: list | None = field(  # epochs; default for multistep: [epochs/2, 3*epochs/4]
        default=None,
        metadata=_cli(
            "multistep: epochs where lr is multiplied by 0.1 (default: epochs/2, 3*epochs/4)", type=float, nargs="*"
        ),
    )
    gamma: float = 0.1
    warmup_epochs: float = field(default=0.0, metadata=_cli("linear lr warmup (epochs)", type=float))
    decouple: bool = field(default=False, metadata=_cli("weight-normalize conv/linear layers"))
    engine: str = field(
        default="autograd",
        metadata=_cli("HVP engine: autograd double backward, or torch.func jvp(grad)", choices=["autograd", "func"]),
    )
    task_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    device: str = field(default="cpu", metadata=_cli("torch device, e.g. cuda"))
    compile: bool = field(  # plain steps compiled, refresh steps eager (optlab.optim.compiled)
        default=False,
        metadata=_cli("torch.compile the model: plain steps compiled, curvature-refresh steps eager (default: off)"),
    )
    nproc: int = field(  # processes of one trial (DDP via torchrun); batch_size is the global batch
        default=1,
        metadata=_cli(
            "processes for this run: DistributedDataParallel launched with torchrun (gloo on CPU); "
            "--batch-size is the global batch, each process trains on batch_size/nproc of it",
            type=int,
        ),
    )
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
        """Check every setting (:meth:`validate_run`), the optimizer's name and ``lr``; marks the
        configuration :attr:`checked`, so it is not checked again on its way to the training loop."""
        self.validate_run()
        if not isinstance(self.optimizer, str):
            raise registry.RegistryError(unknown_name("optimizer", self.optimizer, api.optimizer_names()))
        api.optimizer_entry(self.optimizer)  # unknown or ambiguous: an error naming the choices
        lr = self.hparams.get("lr")
        if lr is not None and (
            not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr < 0 or not math.isfinite(lr)
        ):
            raise ValueError(f"invalid lr={lr!r}; expected a finite number >= 0")
        if self.nproc > 1:
            self._check_data_parallel()
        self._checked = True
        return self

    @property
    def checked(self) -> bool:
        """Whether :meth:`validate` passed on this object (a dict -> ``from_dict`` boundary starts unchecked)."""
        return getattr(self, "_checked", False)

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
