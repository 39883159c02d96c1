"""Tasks: in-memory data sets with a loss, batched deterministically."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from optlab.optim.hparams import unknown_name

__all__ = ["Task", "make_task", "make_model", "build_model", "split_validation", "VAL_SEED", "DEFAULT_VAL_FRACTION"]

#: seed of every validation carve: the split is a property of the data set, not of the run
VAL_SEED = 0
DEFAULT_VAL_FRACTION = 0.2


def split_validation(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = VAL_SEED):
    """Carve a stratified validation split from ``(x, y)``: ``(x_train, y_train, x_val, y_val)``.

    Per class c with n_c samples, round(fraction * n_c) of them (at least one when
    n_c > 1) go to validation, chosen by a permutation from a generator seeded
    with ``seed`` -- the same split on every machine and for every run seed.
    """
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise ValueError(f"invalid val_fraction={fraction!r}; expected a number in (0, 1)")
    g = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    val_idx = []
    for c in torch.unique(y_cpu, sorted=True):
        idx = (y_cpu == c).nonzero().flatten()
        k = int(round(fraction * len(idx)))
        k = max(k, 1) if len(idx) > 1 else 0
        val_idx.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val = torch.cat(val_idx).sort().values if val_idx else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(y_cpu), dtype=torch.bool)
    mask[val] = False
    val, train = val.to(y.device), mask.nonzero().flatten().to(y.device)
    return x[train], y[train], x[val], y[val]


@dataclass
class Task:
    """A classification task held as tensors: train, validation and test splits.

    Fields:

    * ``x_train, y_train`` -- what the optimizer trains on (mini-batches from
      :meth:`train_batches`); ``x_val, y_val`` -- selection (best configurations,
      early choices) reads only these; ``x_test, y_test`` -- only reported. A task
      function may leave ``x_val``/``y_val`` as ``None``: :func:`make_task` then carves
      a stratified split from the training data (:func:`split_validation`).
    * ``num_classes`` -- size of the model's output; with ``input_shape`` (a property,
      ``x_train.shape[1:]``) it forms ``info``, what model constructors receive.
    * ``loss_fn(outputs, y, reduction="mean")`` -- the training loss (also called with
      ``reduction="sum"`` for evaluation); ``loss`` -- its name, ``"cross_entropy"`` or
      ``"mse"``, which the runner passes to estimators that declare a ``loss``
      hyperparameter (the Gauss-Newton family; :func:`optlab.training.loop.use_task_loss`).
    * ``augment(x, generator)`` -- optional, applied to each training batch; draw only
      from ``generator``.
    * ``meta`` -- a free-form dict for the task's own descriptive information (source,
      licence, preprocessing notes); optlab stores it and reads nothing from it.
      Keyword-only (since 0.2.0; at 0.1.0 it came before ``x_val``, a tenth positional
      argument is still taken as ``meta`` with a ``DeprecationWarning``).

    The task function's ``seed`` drives only run-level randomness (e.g. random
    augmentation streams or a procedurally generated data set that should vary per
    run); train/val/test splits should be fixed (the built-ins use fixed split seeds),
    so every seed of a grid sees the same data and seeds differ in initialization and
    batch order, which the runner seeds itself.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    loss_fn: Callable = F.cross_entropy
    loss: str = "cross_entropy"
    augment: Callable | None = None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    meta: dict = field(default_factory=dict, kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.x_val, dict) and self.y_val is None:  # 0.1.0 order: ..., augment, meta
            warnings.warn(
                f"Task {self.name!r}: a tenth positional argument is taken as meta (its place at optlab 0.1.0); "
                "pass it by keyword, Task(..., meta={...}): positionally it will be x_val from optlab 0.3.0",
                DeprecationWarning,
                stacklevel=3,
            )
            self.meta, self.x_val = self.x_val, None
        if not isinstance(self.meta, dict):
            raise TypeError(f"Task {self.name!r}: meta must be a dict, got {type(self.meta).__name__} {self.meta!r}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def info(self) -> dict:
        return {"input_shape": self.input_shape, "num_classes": self.num_classes, "name": self.name}

    def to(self, device) -> Task:
        for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            if getattr(self, k) is not None:
                setattr(self, k, getattr(self, k).to(device))
        return self

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
        """Shuffled mini-batches; the last incomplete batch is dropped (BatchNorm needs > 1 sample)."""
        n = self.x_train.shape[0]
        perm = torch.randperm(n, generator=generator).to(self.x_train.device)
        for s in range(0, n - batch_size + 1, batch_size):
            idx = perm[s : s + batch_size]
            x = self.x_train[idx]
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, self.y_train[idx]

    def num_train_batches(self, batch_size: int) -> int:
        return self.x_train.shape[0] // batch_size

    def eval_batches(self, split: str, batch_size: int = 1000) -> Iterator[tuple]:
        """Batches of ``split`` ("train", "val" or "test") in order."""
        splits = {
            "train": (self.x_train, self.y_train),
            "val": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }
        if split not in splits:
            raise ValueError(unknown_name("split", split, splits))
        x, y = splits[split]
        if x is None:
            raise ValueError(f"task {self.name!r} has no validation split")
        for s in range(0, x.shape[0], batch_size):
            yield x[s : s + batch_size], y[s : s + batch_size]


def make_task(name: str, seed: int = 0, **options) -> Task:
    """Build task ``name``; every task gets a validation split.

    A task function that declares ``val_fraction`` carves its own (before computing
    normalization statistics, as the built-ins do); for one that does not, the
    split is carved here from its training data (``val_fraction`` option, default
    ``DEFAULT_VAL_FRACTION``).
    """
    import inspect

    from optlab.plugin import registry

    entry = registry.entry("task", name)
    fn = entry.item
    fraction = options.get("val_fraction", DEFAULT_VAL_FRACTION)
    if "val_fraction" not in inspect.signature(fn).parameters:
        options.pop("val_fraction", None)
    with registry.owned_by(entry.plugin):
        task = fn(seed=seed, **options)
    if task.x_val is None:
        task.x_train, task.y_train, task.x_val, task.y_val = split_validation(task.x_train, task.y_train, fraction)
    return task


def make_model(name: str, task_info: dict, **options):
    """Build model ``name`` (short or qualified) for a task's ``info``.

    The runner passes ``decouple=<bool>``. A model function that does not accept it (the 0.1.0
    contract was ``fn(task_info, **options)`` with the task's own options only) is called without
    it, and optlab applies :func:`optlab.decouple` to the model it returns when it is true.
    """
    from optlab.plugin import registry

    entry = registry.entry("model", name)
    with registry.owned_by(entry.plugin):
        return build_model(entry.item, task_info, **options)


def build_model(fn: Callable, task_info: dict, **options):
    """``fn(task_info, **options)``, passing ``decouple=`` only if ``fn`` takes it (see :func:`make_model`)."""
    import inspect

    from optlab.optim.modeltools import decouple as _decouple

    apply_decouple = False
    if "decouple" in options:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # no signature (a builtin): pass it as documented
            params = None
        takes = params is None or any(p.name == "decouple" or p.kind == p.VAR_KEYWORD for p in params)
        if not takes:
            apply_decouple = bool(options.pop("decouple"))
    model = fn(task_info, **options)
    return _decouple(model) if apply_decouple else model
